"""The training loop for every objective: deterministic, checkpointed, resumable, distributed, on accelerate.

* The loop knows no objective by name (``l2v.train.objectives``): it reads the objective's examples, draws global
  batches from its groups, and asks it for the loss of this process's slice.
* Hugging Face ``accelerate`` sets up the processes (``torchrun`` or ``accelerate launch``; gloo on CPU, nccl on
  GPU), wraps the encoder for bucketed DDP gradient sync, runs bf16 autocast (``mixed_precision: bf16``) and
  optional trackers (``trackers: [tensorboard]``) beside ``metrics.jsonl``; ``gradient_accumulation_steps``
  micro-batches make one optimizer step, synchronised once.
* Every micro-batch's randomness (MNTP masks, dropout) is drawn from a seed derived from (seed, micro-batch,
  rank), and the data order from (seed, epoch), so a run resumed from a checkpoint computes exactly the losses an
  uninterrupted run computes.
* A checkpoint (trainable weights, optimizer and scheduler state, step) is a folder written atomically every
  ``save_every`` steps, in safetensors and JSON, tied to the config and the adapters it started from;
  ``metrics.jsonl`` is cut back to the checkpoint on resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributed import gradients_unsynced
from ..errors import L2VError
from ..fileio import atomic_dir, atomic_path, write_json_atomic
from ..memory import steady_cpu_allocator
from .config import TrainConfig
from .lora import apply_lora
from .objectives import Objective, objective_class

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def _step_seed(config: TrainConfig, step: int, rank: int) -> int:
    return (config.seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


# ---------------------------------------------------------------------- batches
class BatchPlan:
    """Global batches of example indices, each from one dataset, reshuffled every epoch from the seed."""

    def __init__(self, groups: dict[str, list[int]], global_batch: int, seed: int):
        self.groups, self.global_batch, self.seed = groups, global_batch, seed
        self.per_epoch = sum(len(v) // global_batch for v in groups.values())
        if self.per_epoch == 0:
            biggest = max(len(v) for v in groups.values())
            raise L2VError(f"not enough training examples for one global batch of {global_batch} (largest dataset has {biggest})")
        small = sorted(name for name, members in groups.items() if len(members) < global_batch)
        if small:  # a batch is drawn from one dataset, so these never appear in training
            logger.warning("datasets %s have fewer examples than one global batch (%d) and are not trained on",
                           ", ".join(small), global_batch)
        self._cache: dict[int, list[list[int]]] = {}

    def _epoch(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            rng = np.random.default_rng(self.seed + epoch)
            batches = []
            for name in sorted(self.groups):
                members = rng.permutation(self.groups[name])
                batches += [members[i: i + self.global_batch].tolist() for i in range(0, len(members) - self.global_batch + 1, self.global_batch)]
            order = rng.permutation(len(batches))
            self._cache = {epoch: [batches[i] for i in order]}
        return self._cache[epoch]

    def batch(self, step: int) -> list[int]:
        return self._epoch(step // self.per_epoch)[step % self.per_epoch]


# "auto" picks eager attention on a CPU for bf16 training of texts up to this many tokens. Measured there on paired
# steps of SmolLM2 with LoRA and bf16 base weights, eager / SDPA step time 0.84 for MNTP 16 x 128 and 0.95 for
# SimCSE 32 x 64 (the SDPA flash kernel's bf16 backward is slow at these lengths); with float32 weights eager was
# 1.04x slower, and longer texts keep the model's default (eager attention keeps L x L weights per head).
EAGER_ON_CPU_UP_TO = 128


def training_attention(config: TrainConfig, device: torch.device | str | None) -> str | None:
    """The attention implementation training loads the model with (None: the model's default)."""
    if config.attn_implementation != "auto":
        return config.attn_implementation
    on_cpu = device is None or torch.device(device).type == "cpu"
    bf16 = config.dtype == "bfloat16" or config.mixed_precision == "bf16"
    return "eager" if on_cpu and bf16 and config.max_length <= EAGER_ON_CPU_UP_TO else None


def load_objective(config: TrainConfig, device: torch.device | str | None = None,
                   compute_device: torch.device | str | None = None) -> Objective:
    """The objective of ``config.stage`` with its examples read (first: bad data fails before any model loads)
    and its encoder loaded (the one loader of inference, with the LM head for MNTP), prepared and given LoRA.
    ``compute_device``: where the steps run, when the model is loaded elsewhere first (FSDP), else ``device``."""
    from ..encoder import Encoder

    objective = objective_class(config.stage)(config)
    where = compute_device if compute_device is not None else device
    if where is None or torch.device(where).type == "cpu":
        steady_cpu_allocator()
    encoder = Encoder.from_pretrained(
        config.model, adapters=config.adapters or None, merge_adapters=True, pooling=config.pooling,
        max_length=config.max_length, dtype=config.dtype, device=device, with_lm_head=objective.needs_lm_head,
        pooling_options=config.pooling_options,
        attn_implementation=training_attention(config, where),
    )
    objective.prepare(encoder)
    encoder.model = apply_lora(encoder.model, config)
    objective.compute_device = torch.device(where) if where is not None else None
    return objective


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused into one kernel over all tensors where torch has one for them instead of a loop over the ~400
    small LoRA tensors (the same update up to float rounding; the optimizer is under 1 % of a SmolLM2 step on a
    CPU either way, benchmarks/results/profile_step.md)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in parameters)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None)


def trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------- checkpoints
def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = sorted(p for p in folder.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())
    return complete[-1] if complete else None


def config_signature(config: TrainConfig) -> str:
    """What must not change between a checkpoint and its resumption (steps, output and cadence may)."""
    import dataclasses
    import hashlib

    from ..fileio import sha256_file

    values = dataclasses.asdict(config)
    # none of these changes a step beyond float rounding (FSDP and DDP checkpoints are the same files; the attention
    # kernel and LoRA's bf16 products round differently), so a run may resume across them
    for key in ("steps", "output", "save_every", "log_every", "encoder_max_length", "gradient_checkpointing", "trackers",
                "dev", "fsdp", "attn_implementation", "group_min_tokens"):
        values.pop(key)
    values["lora"].pop("compute_in_base_dtype")
    # the adapters trained on top of are named by their contents, not only their path: a retrained MNTP adapter
    # under the same folder must not be paired with a SimCSE checkpoint trained on the old one
    if config.adapters:  # (a stage without adapters keeps the signature it always had)
        values["adapter_contents"] = [
            {str(p.relative_to(folder)): sha256_file(p) for p in sorted(Path(folder).rglob("*.safetensors"))}
            for folder in config.adapters if Path(folder).is_dir()
        ]
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


FINISHED = "finished.json"


def _mark_finished(output: Path, config: TrainConfig) -> None:
    """Written after the final encoder: a rerun of the same config reuses the run without loading anything, also
    once its checkpoints are deleted (they are ~3x the adapter's size each)."""
    write_json_atomic({"steps": config.steps, "config_signature": config_signature(config)}, output / FINISHED)


def is_finished(output: Path, config: TrainConfig) -> bool:
    """Whether ``output`` holds a finished run of ``config`` (its marker, same steps and config signature)."""
    from ..encoder import CONFIG_NAME

    marker = output / FINISHED
    if not marker.exists() or not (output / "encoder" / CONFIG_NAME).exists():
        return False
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return record.get("steps") == config.steps and record.get("config_signature") == config_signature(config)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whole on the CPU; an FSDP shard (DTensor) is gathered from every process (a collective: every
    process calls it, in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().cpu().contiguous()


def _like(value: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out as ``parameter``: this process's shard of it when the parameter is sharded."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(parameter, DTensor) and tuple(value.shape) == tuple(parameter.shape):
        return distribute_tensor(value.to(parameter.device), parameter.device_mesh, parameter.placements)
    return value.to(parameter.device)


def _save_checkpoint(output: Path, step: int, config: TrainConfig, world: int, trainable: dict, optimizer, scheduler,
                     keep: int = 2, seconds: float = 0.0, rank: int = 0) -> Path:
    """Write a checkpoint folder (atomically) holding whole tensors, however they are sharded: with FSDP every
    process calls this (the shards are gathered), and process 0 writes."""
    from safetensors.torch import save_file

    target = output / CHECKPOINTS / f"step-{step:08d}"
    weights = {name: _whole(p) for name, p in trainable.items()}
    names = {id(p): name for name, p in trainable.items()}
    optimizer_tensors, optimizer_scalars = {}, {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for key, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value):
                    optimizer_tensors[f"{names[id(parameter)]}::{key}"] = _whole(value)
                else:
                    optimizer_scalars[f"{names[id(parameter)]}::{key}"] = value
    if rank != 0:
        return target
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        if optimizer_tensors:
            save_file(optimizer_tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "seconds": round(seconds, 3),  # training time up to this step, over every part of the run
            "config_signature": config_signature(config),
            "world": world,
            "scheduler": scheduler.state_dict(),
            "optimizer_scalars": optimizer_scalars,
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    old = sorted(p for p in (output / CHECKPOINTS).iterdir() if p.name.startswith("step-"))
    for stale in old[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def restore_trainable(folder: Path, trainable: dict) -> None:
    """Copy a checkpoint's ``trainable.safetensors`` into ``trainable`` (name -> parameter, shards included), refusing
    a checkpoint of other parameters."""
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    if set(weights) != set(trainable):
        raise L2VError(f"{folder}: checkpoint does not match the model (different trainable parameters)")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(_like(weights[name], parameter))


def _step_device(parameter: torch.nn.Parameter, optimizer: torch.optim.Optimizer) -> torch.device:
    """Where torch's AdamW keeps a parameter's ``step`` count: beside the parameter when its group is fused or
    capturable (the fused CUDA kernel refuses a CPU count: resuming a GPU run failed so), on the CPU otherwise."""
    group = next(g for g in optimizer.param_groups if any(p is parameter for p in g["params"]))
    return parameter.device if (group.get("fused") or group.get("capturable")) else torch.device("cpu")


def _load_checkpoint(folder: Path, config: TrainConfig, world: int, trainable: dict, optimizer, scheduler) -> tuple[int, float]:
    """Restore a checkpoint; returns (its step, the training seconds it took to reach it)."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if state.get("config_signature") != config_signature(config):
        raise L2VError(f"{folder} was written with a different config (only steps, output, save_every, log_every, "
                       "encoder_max_length and gradient_checkpointing may change when resuming); use a new output folder or restore the config")
    if state.get("world", 1) != world:
        raise L2VError(f"{folder} was written by {state.get('world', 1)} process(es), this run has {world}: the global "
                       "batch and the data order would change; resume with the same --nproc_per_node")
    restore_trainable(folder, trainable)
    tensors = load_file(str(folder / "optimizer.safetensors")) if (folder / "optimizer.safetensors").exists() else {}
    for name, parameter in trainable.items():
        entry = {}
        for key, value in tensors.items():
            owner, _, field_name = key.rpartition("::")
            if owner == name:
                entry[field_name] = _like(value, parameter) if field_name != "step" else \
                    value.to(dtype=torch.float32, device=_step_device(parameter, optimizer))
        for key, value in state["optimizer_scalars"].items():
            owner, _, field_name = key.rpartition("::")
            if owner == name:
                entry[field_name] = value
        if entry:
            optimizer.state[parameter] = entry
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        group.update(saved)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"]), float(state.get("seconds", 0.0))


def truncate_metrics(path: Path, step: int) -> None:
    """Cut ``path`` (JSON lines with a "step") back to ``step``."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by the crash
            continue
        if record.get("step", step + 1) <= step:
            kept.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def dev_scores(encoder, paths: list[str], max_length: int) -> dict[str, float]:
    """Spearman x100 of cosine on each STS file (named by its stem), the encoder in eval mode at ``max_length``."""
    from scipy.stats import spearmanr

    from ..evaluate.data import read_sts

    was_training, saved_length = encoder.training, encoder.config.max_length
    encoder.eval()
    encoder.config.max_length = max_length
    scores = {}
    try:
        for path in paths:
            data = read_sts(path)
            left = encoder.encode(data.sentences1, normalize=True)
            right = encoder.encode(data.sentences2, normalize=True)
            scores[Path(path).name.split(".")[0]] = round(100 * float(spearmanr((left * right).sum(axis=1), data.scores).statistic), 3)
    finally:
        encoder.config.max_length = saved_length
        encoder.train(was_training)
    return scores


def loss_curve(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(png_path.parent.name)
    figure.tight_layout()
    with atomic_path(png_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------- the loop
def _fsdp_settings(config: TrainConfig):
    """accelerate's FSDP settings (``accelerate launch --use_fsdp --fsdp_...`` writes them as FSDP_* variables) when
    the run is sharded (``fsdp: true`` or that launch), else None."""
    if not (config.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")):
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise L2VError(f"l2v trains with FSDP2 (fully_shard), not FSDP version {version}: launch with --fsdp_version 2 "
                       "(or set fsdp: true in the config and launch with torchrun)")
    return FullyShardedDataParallelPlugin(fsdp_version=2)


def _accelerator(config: TrainConfig, output: Path, trackers: list | None):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    log_with = list(config.trackers) + list(trackers or [])
    # The processes, devices, reductions and trackers are accelerate's; the sharding is l2v's (_shard), which
    # accelerate's own FSDP path would refuse on CPU processes and which must keep the LM head whole.
    saved = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        return Accelerator(
            cpu=not torch.cuda.is_available(),
            # autocast is applied around each loss by the loop (below), not by the accelerator: its state is one per
            # process, and the stages of one `l2v convert` may ask for different precisions
            log_with=log_with or None,
            project_dir=str(output),
            # buffers (rotary tables) are the same on every rank: no broadcast before each forward
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
    finally:
        if saved is not None:
            os.environ["ACCELERATE_USE_FSDP"] = saved


def _shard(encoder, settings, device: torch.device, world: int) -> None:
    """FSDP2 (``fully_shard``) over the processes, in place: each decoder layer (the backbone's ``_no_split_modules``,
    or accelerate's ``--fsdp_transformer_layer_cls_to_wrap``) is one shard group, the rest of the encoder the root
    group, each moved to ``device`` as it is sharded. A frozen LM head (MNTP) stays whole on every process: the
    objective calls it outside the encoder's forward. Parameters become DTensor shards: build the optimizer after."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    backbone = encoder.model.get_base_model() if hasattr(encoder.model, "get_base_model") else encoder.model
    layers = set(settings.transformer_cls_names_to_wrap or getattr(backbone, "_no_split_modules", None) or [])
    options = {"mesh": mesh, "reshard_after_forward": settings.reshard_after_forward,
               "offload_policy": settings.cpu_offload if isinstance(settings.cpu_offload, OffloadPolicy) else OffloadPolicy()}
    if encoder.lm_head is not None:
        encoder.lm_head.to(device)
        options["ignored_params"] = set(encoder.lm_head.parameters())
    for module in list(encoder.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, **options)
    fully_shard(encoder, **options)


class TimeLimitReached(L2VError):
    """A run stopped at its time limit, checkpointed after ``step`` of ``steps``; the same command resumes it."""

    def __init__(self, output: Path, step: int, steps: int):
        self.output, self.step, self.steps = Path(output), step, steps
        where = (f"after step {step} of {steps} (checkpoint saved)" if step else
                 f"before its first step of {steps} (nothing trained yet)")
        super().__init__(f"{output}: stopped at the time limit {where}; run the same command again to resume")


def room_for_another_step(elapsed: float, time_limit: float, step_seconds: list[float], save_seconds: float,
                          evaluation_seconds: float = 0.0) -> bool:
    """Whether, ``elapsed`` seconds into a call allowed ``time_limit``, one more step (as slow as the slowest of
    ``step_seconds``, the last few steps' own time, with a fifth more), what follows it (a dev evaluation when one is
    due, ``evaluation_seconds``) and a checkpoint (``save_seconds``) still end in time."""
    return elapsed + 1.2 * max(step_seconds, default=0.0) + save_seconds + evaluation_seconds <= time_limit


def train(config: TrainConfig, show_progress: bool = True, log=print, on_step_end: Callable[[int], None] | None = None,
          trackers: list | None = None, time_limit: float | None = None) -> Path:
    """Train ``config`` (resuming from its latest checkpoint) and write ``OUTPUT/encoder``; returns that folder.

    ``on_step_end(step)`` is called after each optimizer step (and checkpoint); ``trackers`` adds accelerate trackers
    (names or ``GeneralTracker`` objects) to the config's. ``time_limit``: seconds this call may take, counted from
    its start (loading included): after a step, if the next one (timed by the slowest of the last five, with a fifth
    more), a dev evaluation due after it and a checkpoint would not end in time (:func:`room_for_another_step`),
    the run checkpoints and raises :class:`TimeLimitReached`; calling again with the same config resumes it. At
    least one step runs per call, so a limit shorter than load plus one step still makes progress (and is exceeded
    by that much)."""
    called = time.monotonic()
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                   or not math.isfinite(time_limit) or time_limit < 0):
        raise L2VError(f"time_limit must be a number of seconds >= 0, not {time_limit!r}")
    output = Path(config.output)
    if is_finished(output, config):
        log(f"{output / 'encoder'} is already trained ({config.steps} steps, same config): reusing it")
        return output / "encoder"
    accelerator = _accelerator(config, output, trackers)
    rank, world = accelerator.process_index, accelerator.num_processes
    settings = _fsdp_settings(config)
    sharded = settings is not None
    torch.manual_seed(config.seed)
    # with FSDP the base is read into CPU memory and each process's shards are moved to its device by the sharding
    objective = load_objective(config, device="cpu" if sharded else accelerator.device, compute_device=accelerator.device)
    encoder = objective.encoder
    accumulation = config.gradient_accumulation_steps
    plan = BatchPlan(objective.groups(), config.batch_size * world, config.seed)
    output.mkdir(parents=True, exist_ok=True)
    if sharded:  # FSDP2: parameters become shards (DTensors) on this process's device
        if encoder.config.base_model == ".":
            raise L2VError(f"fsdp: {config.model} holds full weights without a base to refer to, and a sharded run writes "
                           "its adapters beside a base reference; train from the base model (adapters: [...]) instead")
        _shard(encoder, settings, accelerator.device, world)
    trainable = trainable_parameters(encoder)
    parameters = list(trainable.values())
    optimizer = make_optimizer(parameters, config)

    def schedule(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        remaining = max(config.steps - config.warmup_steps, 1)
        return max(0.0, 1.0 - (step - config.warmup_steps) / remaining)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # DDP (several processes) around the encoder's forward; objectives call it. A sharded encoder syncs itself.
    model = encoder if sharded else accelerator.prepare_model(encoder, device_placement=False)
    # bf16 autocast of the forward (and of a GradCache objective's replays); weights and optimizer stay as loaded
    autocast = torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    metrics_path, dev_path = output / "metrics.jsonl", output / "dev.jsonl"
    start, trained_before = 0, 0.0
    checkpoint = latest_checkpoint(output)
    if checkpoint is not None:
        start, trained_before = _load_checkpoint(checkpoint, config, world, trainable, optimizer, scheduler)
        if rank == 0:
            truncate_metrics(metrics_path, start)
            truncate_metrics(dev_path, start)
        from ..encoder import CONFIG_NAME

        if start >= config.steps and (output / "encoder" / CONFIG_NAME).exists():
            # finished before (the encoder is written after the last checkpoint): nothing to rewrite. Two recipes
            # sharing this stage, started together, both found it finished and raced rewriting its encoder.
            if rank == 0:
                _mark_finished(output, config)  # (a run finished before the marker existed)
                log(f"{output / 'encoder'} is already trained ({start} steps): reusing it")
            return output / "encoder"
        if rank == 0:
            log(f"resuming from {checkpoint} (step {start})")
    elif rank == 0:
        metrics_path.unlink(missing_ok=True)
        dev_path.unlink(missing_ok=True)

    def evaluate_dev(done: int) -> None:
        """Dev scores after ``done`` steps (rank 0, the others wait; with FSDP every process runs the sharded
        forward, rank 0 writes), timed apart from training."""
        nonlocal evaluation_seconds, last_evaluation
        if not config.dev.sts:
            return
        if rank == 0 or sharded:
            began = time.perf_counter()
            trained = trained_before + began - begin - evaluation_seconds
            scores = dev_scores(encoder, config.dev.sts, config.encoder_max_length)
            last_evaluation = time.perf_counter() - began
            evaluation_seconds += last_evaluation
            record = {"step": done, "seconds": round(trained, 3), **scores}
        if rank == 0:
            with open(dev_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            log(f"dev after step {done}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        if world > 1:
            accelerator.wait_for_everyone()

    if rank == 0:
        import dataclasses

        write_json_atomic(dataclasses.asdict(config), output / "config.json")
    tracking = bool(config.trackers or trackers)
    if tracking:
        accelerator.init_trackers(output.name, config=_flat(config))
    encoder.train()
    progress = tqdm(total=config.steps, initial=start, desc=f"{config.stage}", disable=not show_progress or rank != 0)
    begin, evaluation_seconds, last_evaluation = time.perf_counter(), 0.0, None
    if start == 0:
        evaluate_dev(0)
    # for the time limit: the last steps' own seconds (without evaluations and checkpoints), the last checkpoint's
    recent_steps, last_save = [], None
    for step in range(start, config.steps):
        step_began, evaluated_before, this_save = time.perf_counter(), evaluation_seconds, 0.0
        optimizer.zero_grad(set_to_none=True)
        micro_losses = []
        for micro in range(accumulation):
            index = step * accumulation + micro  # with one micro-batch per step: the step itself
            seed = _step_seed(config, index, rank)
            torch.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
            indices = plan.batch(index)[rank * config.batch_size:(rank + 1) * config.batch_size]
            batch = [objective.examples[i] for i in indices]
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else gradients_unsynced(model), autocast:
                loss = objective.loss(model, batch, seed)
            if loss.requires_grad and not objective.owns_backward:
                with contextlib.nullcontext() if last else gradients_unsynced(model):
                    loss.backward()
            micro_losses.append(loss.detach().float())
        if accumulation > 1:  # the mean over micro-batches, as one batch of them all would give
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad /= accumulation
        local = torch.stack(micro_losses).mean()
        reported = float(accelerator.reduce(local.to(accelerator.device), reduction="mean")) if world > 1 else float(local)
        if not math.isfinite(reported):
            raise L2VError(f"loss is {reported} at step {step + 1}; lower the learning rate or check the data")
        if config.max_grad_norm:  # (over FSDP shards: the norm of the whole gradient)
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        done = step + 1
        progress.update(1)
        progress.set_postfix(loss=f"{reported:.4f}")
        # training seconds so far, over every resumed part of the run, without dev evaluations
        seconds = trained_before + time.perf_counter() - begin - evaluation_seconds
        record = {"step": done, "loss": reported, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3)}
        if rank == 0 and (done % config.log_every == 0 or done == config.steps):
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if tracking:
            accelerator.log({"loss": reported, "lr": record["lr"]}, step=done)
        if done == config.steps or (config.dev.every and done % config.dev.every == 0):
            evaluate_dev(done)  # before the checkpoint: a run killed after it has its dev line
        saved = done % config.save_every == 0 or done == config.steps
        if (rank == 0 or sharded) and saved:
            save_began = time.perf_counter()
            _save_checkpoint(output, done, config, world, trainable, optimizer, scheduler, seconds=seconds, rank=rank)
            this_save = last_save = time.perf_counter() - save_began
        if world > 1:
            accelerator.wait_for_everyone()
        if on_step_end is not None:
            on_step_end(done)
        own = time.perf_counter() - step_began - (evaluation_seconds - evaluated_before) - this_save
        recent_steps = [*recent_steps[-4:], own]
        if time_limit is not None and done < config.steps:
            following = done + 1
            # not measured yet in this call: as long as a step (a LoRA checkpoint is usually shorter)
            save = last_save if last_save is not None else max(recent_steps)
            if following == config.steps:
                save *= 2  # its checkpoint and the encoder's folder
            due = bool(config.dev.sts) and (following == config.steps or bool(config.dev.every and following % config.dev.every == 0))
            evaluation = (last_evaluation if last_evaluation is not None else max(recent_steps)) if due else 0.0
            stop = not room_for_another_step(time.monotonic() - called, time_limit, recent_steps, save, evaluation)
            if world > 1:  # every process stops at the same step (their clocks differ a little)
                stop = bool(accelerator.reduce(torch.tensor(float(stop), device=accelerator.device), reduction="sum") > 0)
            if stop:
                if (rank == 0 or sharded) and not saved:
                    _save_checkpoint(output, done, config, world, trainable, optimizer, scheduler, seconds=seconds, rank=rank)
                if world > 1:
                    accelerator.wait_for_everyone()
                progress.close()
                if tracking:
                    accelerator.end_training()
                raise TimeLimitReached(output, done, config.steps)
    progress.close()
    if tracking:
        accelerator.end_training()
    final = output / "encoder"
    # with FSDP the trained weights are gathered whole from the shards (every process takes part) and written
    gathered = {name: _whole(p) for name, p in trainable.items()} if sharded else None
    if rank == 0:
        # the saved encoder truncates at the inference length, not at the (often short) training length
        encoder.config.max_length = config.encoder_max_length
        encoder.save(final, overwrite=True, trained_state=gathered)
        _mark_finished(output, config)
        if metrics_path.exists():
            loss_curve(metrics_path, output / "loss.png")
        log(f"wrote {final} (load it with Encoder.from_pretrained({str(final)!r}))")
    if world > 1:
        accelerator.wait_for_everyone()
    return final


def _flat(config: TrainConfig) -> dict:
    """The config as flat scalars, for trackers' hyper-parameter tables."""
    import dataclasses

    flat: dict = {}

    def walk(prefix: str, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", dataclasses.asdict(config))
    return flat
