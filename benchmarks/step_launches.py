"""How many operator calls one training step makes: on a GPU each is (at least) one kernel launch with its host-side
dispatch, and for a 135M model a step's time there is those launches, not the arithmetic (benchmarks/results/gpu/
README.md: 2.5-3.3 s per paper MNTP step on an H200 where one plain forward and backward of the batch took 0.1 s).

Counts come from torch's profiler on this CPU, on a *skeleton* of SmolLM2-135M: its 30 layers, heads, vocabulary
and tokenizer, but a hidden size of 36, so the arithmetic is small and the same code runs (LoRA r=16 on every
projection, bf16 weights, the paper recipes' batches of real text: MNTP 32 texts of up to 512 tokens of Wikipedia,
SimCSE 128 sentences of up to 128 tokens, two views). LoRA dropout is set to 0 for the count: on a CPU it is drawn
by several small operations per projection (``l2v.train.lora.Dropout``), on a GPU it is one fused kernel, i.e. one
more call per adapted projection per forward (210 on SmolLM2; added to the table's LoRA rows as such).

Rows: the step as the CPU runs it (length groups of >= 256 padded positions), as a GPU runs it now (one group up to
65,536 positions, ``l2v.batching.group_min_tokens``), and a plain forward + backward of the padded batch through
the model without LoRA (every weight trainable), the 0.1 s reference measured on the GPU. Counted: operator calls
that are not views (view, reshape, transpose, expand, slicing ... launch nothing), in forward (with the loss),
backward, and clip + fused AdamW (the last not compared: on a CPU fused AdamW is a loop over tensors, on a GPU a
few multi-tensor kernels). Nested calls count too (``linear`` and the ``mm`` inside it), as each is host-side work.
And the host seconds of a one-group step where the arithmetic is ~0 (texts cut to 8 tokens: the calls are the same),
per call: a floor for a GPU step, before the launches themselves.

    python benchmarks/step_launches.py [--steps 3]
Writes benchmarks/results/step_launches.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _common import DATA, smollm2_skeleton, write_result

VIEWS = {"aten::view", "aten::as_strided", "aten::t", "aten::transpose", "aten::reshape", "aten::slice",
         "aten::select", "aten::resolve_conj", "aten::resolve_neg", "aten::empty", "aten::empty_strided",
         "aten::_unsafe_view", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::alias", "aten::detach",
         "aten::lift_fresh", "aten::_reshape_alias", "aten::permute", "aten::split", "aten::chunk", "aten::narrow",
         "aten::unbind", "aten::contiguous", "aten::is_nonzero", "aten::result_type", "aten::size", "aten::numel"}
STAGES = {
    "mntp": {"batch_size": 32, "max_length": 512, "data": "text/unlabeled/wikipedia_en_WikiTasks_2021.txt.gz"},
    "simcse": {"batch_size": 128, "max_length": 128, "data": "text/wiki1m_subset.txt"},
}


def calls(profiler) -> int:
    return sum(e.count for e in profiler.key_averages() if e.key.startswith("aten::") and e.key not in VIEWS)


def measure(stage: str, model: Path, work: Path, min_tokens: int | None, steps: int, max_length: int | None = None) -> dict:
    import torch
    import yaml
    from torch.profiler import ProfilerActivity, profile

    from l2v.train.config import load_config
    from l2v.train.runner import BatchPlan, load_objective, make_optimizer, trainable_parameters

    setting = STAGES[stage]
    plain = min_tokens is None
    config = {"stage": stage, "model": str(model), "output": str(work / "out"), "dtype": "bfloat16",
              "data": {"train": str(DATA / setting["data"]), "min_words": 5, "max_examples": 4000},
              "batch_size": setting["batch_size"], "max_length": max_length or setting["max_length"], "steps": 10,
              "group_min_tokens": min_tokens or 1 << 30, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
              "contrastive": {"attention_dropout": 0.3}}
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    config = load_config(path)
    torch.manual_seed(0)
    objective = load_objective(config)
    encoder = objective.encoder
    encoder.train()
    if plain:  # no LoRA: the base projections back in place, every weight trained
        encoder.model = encoder.model.unload()
        for parameter in encoder.model.parameters():
            parameter.requires_grad_(True)
    parameters = list(trainable_parameters(encoder).values())
    optimizer = make_optimizer(parameters, config)
    plan = BatchPlan(objective.groups(), config.batch_size, config.seed)
    groups: list[int] = []

    def forward(features, *args, **kwargs):
        groups[-1] += 1
        return encoder(features, *args, **kwargs)

    def step(index: int, profiled: bool = False) -> dict:
        batch = [objective.examples[i] for i in plan.batch(index)]
        groups.append(0)
        phases, counts = {}, {}
        for phase in ("forward", "backward", "optimizer"):
            context = profile(activities=[ProfilerActivity.CPU]) if profiled else contextlib.nullcontext()
            began = time.perf_counter()
            with context:
                if phase == "forward":
                    loss = objective.loss(forward, batch, index)
                elif phase == "backward":
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                else:
                    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                    optimizer.step()
            phases[phase] = time.perf_counter() - began
            if profiled:
                counts[phase] = calls(context)
        return {"seconds": phases, "calls": counts}

    step(0)
    timed = [step(i + 1) for i in range(steps)]
    counted = step(steps + 1, profiled=True)
    row = {"stage": stage, "row": "plain forward+backward, no LoRA" if plain else f"LoRA, groups >= {min_tokens} positions",
           "max_length": config.max_length,
           "group_min_tokens": min_tokens, "groups_per_step": groups[1:], "calls": counted["calls"],
           "calls_per_step": sum(counted["calls"].values()),
           "cpu_seconds_median": {k: round(statistics.median(t["seconds"][k] for t in timed), 3) for k in counted["calls"]}}
    if not plain:
        adapted = sum(1 for name, _ in encoder.model.named_modules() if name.endswith("lora_A"))
        row["gpu_dropout_calls_added"] = adapted * groups[-1]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="l2v-launches-"))
    model = smollm2_skeleton(work / "skeleton")
    rows = [measure(stage, model, work / f"{stage}-{tokens}", tokens, args.steps)
            for stage in STAGES for tokens in (256, 65536, None)]
    # host time per operator call where the arithmetic is ~0: the one-group step with texts cut to 8 tokens (the
    # same calls as at full length: one group's calls do not depend on its length)
    short = [measure(stage, model, work / f"{stage}-{tokens}-short", tokens, args.steps, max_length=8)
             for stage in STAGES for tokens in (65536, None)]
    for stage in STAGES:
        mine = {r["group_min_tokens"]: r for r in rows if r["stage"] == stage}
        for row in short:
            if row["stage"] == stage:
                seconds = row["cpu_seconds_median"]["forward"] + row["cpu_seconds_median"]["backward"]
                calls_ = row["calls"]["forward"] + row["calls"]["backward"]
                mine[row["group_min_tokens"]]["host_seconds_at_8_tokens"] = round(seconds, 3)
                mine[row["group_min_tokens"]]["host_microseconds_per_call"] = round(1e6 * seconds / calls_, 1)
        plain = mine[None]["calls"]["forward"] + mine[None]["calls"]["backward"]
        for tokens in (256, 65536):
            row = mine[tokens]
            row["gpu_forward_backward_calls"] = row["calls"]["forward"] + row["calls"]["backward"] + row["gpu_dropout_calls_added"]
            row["x_plain"] = round(row["gpu_forward_backward_calls"] / plain, 2)
        mine[None]["gpu_forward_backward_calls"] = plain
    payload = {"machine": f"{platform.machine()}, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
               "model": "SmolLM2-135M skeleton (30 layers, 9/3 heads, vocabulary 49152, hidden 36)", "rows": rows,
               "short_rows": short}
    write_result("step_launches", payload)
    print("| stage | step | groups per step | forward + backward calls (GPU: + dropout kernels) | x plain | host s at 8 tokens (us per call) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        host = f"{r['host_seconds_at_8_tokens']:.3f} ({r['host_microseconds_per_call']:.0f})" if "host_seconds_at_8_tokens" in r else "-"
        print(f"| {r['stage']} | {r['row']} | {statistics.median(r['groups_per_step']):g} | {r['gpu_forward_backward_calls']:,} | "
              f"{r.get('x_plain', 1):.1f} | {host} |")
    print("(optimizer phase, clip + fused AdamW over the LoRA tensors, not counted: on a CPU fused AdamW runs per tensor, "
          "on a GPU it is a few multi-tensor kernels)")


if __name__ == "__main__":
    main()
