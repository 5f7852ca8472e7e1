"""``l2v convert``: the whole LLM2Vec recipe from one YAML file, MNTP -> merge -> SimCSE (-> supervised) ->
saved encoder -> evaluation report. Each stage is an ordinary resumable training run in its own folder, so
rerunning the command after an interruption continues where it stopped.

    name: smollm2-135m-l2v-unsup
    model: smollm2-135m
    output: runs/smollm2-l2v-unsup
    stages:
      mntp: {data: {train: ...}, steps: 300, ...}      # any training-config keys except stage/model/output
      simcse: {data: {train: ...}, steps: 300, ...}      # simcse and/or supervised
      supervised: {...}
    evaluate: {tasks: [sts], data: ../shared/data}       # optional

Each stage trains a fresh LoRA on top of the merged adapters of the stages before it: supervised alone trains
on MNTP (the paper's supervised recipe); with both, MNTP -> SimCSE -> supervised. The last stage is the encoder.

A stage runs in ``OUTPUT/<stage>`` unless it names its own ``output``: two recipes that share a stage (the
unsupervised and the supervised one share MNTP) point it at one folder, and the second finds it finished and
reuses it. The trainer refuses a folder written with a different config, so a shared folder cannot silently
mix two recipes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..errors import L2VError
from .config import TrainConfig, from_mapping, read_yaml, validate
from .runner import TimeLimitReached, is_finished, latest_checkpoint, train

CONVERT_KEYS = {"name", "model", "output", "stages", "evaluate"}
# The LLM2Vec recipe, in order: each stage trains on the merged adapters of the stages before it
RECIPE = ("mntp", "simcse", "supervised")


def load_convert_config(path: str | Path) -> dict:
    path = Path(path)
    values = read_yaml(path)
    unknown = set(values) - CONVERT_KEYS
    if unknown:
        raise L2VError(f"{path}: unknown config key {sorted(unknown)[0]!r} (known: {', '.join(sorted(CONVERT_KEYS))})")
    for key in ("model", "output", "stages"):
        if key not in values:
            raise L2VError(f"{path}: missing config key {key!r}")
    stages = values["stages"] or {}
    unknown_stages = set(stages) - set(RECIPE)
    if unknown_stages:
        raise L2VError(f"{path}: unknown stage {sorted(unknown_stages)[0]!r} (stages: {', '.join(RECIPE)})")
    if "mntp" not in stages or not ({"simcse", "supervised"} & set(stages)):
        raise L2VError(f"{path}: stages needs mntp and at least one of simcse, supervised")
    configs = {}
    output = Path(values["output"])
    below: list[str] = []  # the adapters every later stage trains on top of, merged in this order
    for stage in RECIPE:
        if stage not in stages:
            continue
        stage_values = dict(stages[stage] or {})
        for reserved in ("stage", "model", "adapters"):
            if reserved in stage_values:
                raise L2VError(f"{path}: stages.{stage}.{reserved} is set by convert; remove it")
        stage_output = Path(stage_values.pop("output", None) or output / stage)
        configs[stage] = from_mapping(TrainConfig, {**stage_values, "stage": stage, "model": values["model"],
                                              "output": str(stage_output), "adapters": list(below)}, f"stages.{stage}", str(path))
        validate(configs[stage], str(path), prefix=f"stages.{stage}.")
        # MNTP -> SimCSE -> supervised: with both contrastive stages, supervised starts from MNTP + SimCSE
        below.append(str(stage_output / "encoder" / "adapter"))
    evaluate = values.get("evaluate") or None
    if evaluate is not None:
        unknown = set(evaluate) - {"tasks", "data", "files"}
        if unknown:
            raise L2VError(f"{path}: unknown config key evaluate.{sorted(unknown)[0]!r}")
    return {"name": values.get("name") or output.name, "output": output, "stages": configs, "evaluate": evaluate}


def _evaluation_tasks(spec: dict) -> list:
    from ..evaluate import select_tasks

    tasks = spec.get("tasks") or []
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    return select_tasks(tasks, Path(spec["data"]) if spec.get("data") else None, list(spec.get("files") or []))


def _steps_done(output: Path) -> int:
    """The step of a stage's latest checkpoint (0 before its first)."""
    checkpoint = latest_checkpoint(output)
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0


def convert(path: str | Path, show_progress: bool = True, log=print, time_limit: float | None = None) -> Path:
    """Run the recipe at ``path``; ``time_limit``: seconds for the training stages of this call (each stage gets
    what the ones before it left; see :func:`train`): the run stops with :class:`TimeLimitReached` at a checkpoint,
    and calling again resumes it. The final evaluation is not limited."""
    from ..fileio import atomic_dir
    from .data import load_texts, load_triples

    deadline = None if time_limit is None else time.monotonic() + time_limit

    plan = load_convert_config(path)
    output: Path = plan["output"]
    # Every stage's data and the evaluation tasks are read before the first step: a bad SimCSE file or task name
    # fails now, not after MNTP has trained. A stage already trained with the same config is skipped (MNTP's
    # 26M words of Wikipedia take minutes and gigabytes to read for nothing).
    for config in plan["stages"].values():
        if not is_finished(Path(config.output), config):
            (load_triples if config.stage == "supervised" else load_texts)(config.data)
    selected = _evaluation_tasks(plan["evaluate"]) if plan["evaluate"] else None
    encoders = {}
    trained_here = False  # a stage trained in this call: with no time left, the next one waits for the next call
    for stage, config in plan["stages"].items():
        log(f"== {stage} -> {config.output}")
        finished = is_finished(Path(config.output), config)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if left == 0.0 and trained_here and not finished:
            raise TimeLimitReached(Path(config.output), _steps_done(Path(config.output)), config.steps)
        encoders[stage] = train(config, show_progress=show_progress, log=log, time_limit=left)
        trained_here = trained_here or not finished
    final_stage = "supervised" if "supervised" in encoders else "simcse"
    final = output / "encoder"
    with atomic_dir(final, overwrite=True) as tmp:
        shutil.copytree(encoders[final_stage], tmp, dirs_exist_ok=True)
    log(f"encoder: {final}")
    if selected is not None:
        from ..evaluate import run_evaluation

        models = [str(final), str(encoders["mntp"])]
        run_evaluation(models, selected, output / "eval", log=log)
        log(f"evaluation report: {output / 'eval' / 'results.md'}")
    return final
