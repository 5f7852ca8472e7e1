"""Where a training step's time goes: one MNTP step (16 x 128) and one SimCSE step (32 x 64, two views) on the
built-in SmolLM2-135M with the shipped recipes' settings (LoRA r=16 on every projection, dropout 0.05; SimCSE
attention dropout 0.3), through l2v's own objective and loop pieces.

Phases are timed with wall clocks around the step's parts (data: tokenise + mask; forward; backward; optimizer);
inside, torch's profiler attributes self CPU time to operator families: matrix products (split into the
decoder's projections, attention and the vocabulary head), LoRA dropout, normalisation, activation, softmax /
cross-entropy, element-wise, copies. One warm-up step first; then ``--steps`` timed steps (median), one of them
profiled.

    python benchmarks/profile_step.py [--steps 3] [--threads N] [--variants fp32,bf16-weights,bf16-autocast]
Writes benchmarks/results/profile_step.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import DATA, RESULTS, write_result

VARIANTS = {
    "fp32": {"dtype": "float32", "mixed_precision": "no"},
    "bf16-weights": {"dtype": "bfloat16", "mixed_precision": "no"},  # what the shipped recipes used
    "bf16-autocast": {"dtype": "float32", "mixed_precision": "bf16"},  # fp32 master weights, bf16 matrix products
}


def family(name: str, shapes) -> str:
    """The operator family a profiler row belongs to."""
    lowered = name.lower()
    if any(k in lowered for k in ("mm", "linear", "matmul", "baddbmm", "bmm")):
        flat = str(shapes)
        if "49152" in flat:
            return "matmul: vocabulary head"
        return "matmul: decoder projections"
    if "scaled_dot_product" in lowered or "attention" in lowered or "softmax" in lowered and "log" not in lowered:
        return "attention kernel / softmax"
    if "dropout" in lowered or "bernoulli" in lowered:
        return "dropout (LoRA inputs, attention)"
    if "norm" in lowered or "rsqrt" in lowered or "pow" in lowered:
        return "RMS norm"
    if "silu" in lowered or "sigmoid" in lowered:
        return "activation"
    if "log_softmax" in lowered or "nll" in lowered or "cross_entropy" in lowered:
        return "loss (log-softmax, NLL)"
    if any(k in lowered for k in ("copy", "to_copy", "clone", "contiguous", "cat", "index", "gather", "scatter", "embedding")):
        return "copies, indexing, embedding"
    if any(k in lowered for k in ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt", "maximum")):
        return "optimizer arithmetic"
    if any(k in lowered for k in ("mul", "add", "sub", "div", "neg", "cos", "sin", "exp", "where", "fill", "zero", "sum", "mean")):
        return "element-wise"
    return "other"


def write_config(folder: Path, stage: str, variant: dict) -> Path:
    import yaml

    texts = DATA / "text" / ("wikitext2_test_paragraphs.txt" if stage == "mntp" else "wiki1m_subset.txt")
    config = {"stage": stage, "model": "smollm2-135m", "output": str(folder / "out"), "data": {"train": str(texts)},
              "batch_size": 16 if stage == "mntp" else 32, "max_length": 128 if stage == "mntp" else 64,
              "steps": 10, "learning_rate": 1e-4, "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, **variant}
    if stage == "simcse":
        config["contrastive"] = {"temperature": 0.05, "attention_dropout": 0.3}
    path = folder / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def profile(stage: str, variant_name: str, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from l2v.train.config import load_config
    from l2v.train.runner import BatchPlan, _step_seed, load_objective, trainable_parameters

    folder = Path(tempfile.mkdtemp(prefix=f"l2v-profile-{stage}-"))
    config = load_config(write_config(folder, stage, VARIANTS[variant_name]))
    torch.manual_seed(config.seed)
    objective = load_objective(config)
    encoder = objective.encoder
    encoder.train()
    parameters = list(trainable_parameters(encoder).values())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    plan = BatchPlan(objective.groups(), config.batch_size, config.seed)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    phases: dict[str, list[float]] = defaultdict(list)
    tokens = 0

    def step(index: int, profiler=None) -> float:
        nonlocal tokens
        seed = _step_seed(config, index, 0)
        torch.manual_seed(seed)
        batch = [objective.examples[i] for i in plan.batch(index)]
        times = {}
        begin = time.perf_counter()
        if stage == "mntp":  # data: tokenise and mask; the loss then runs the grouped forward + LM head
            from l2v.train.mntp import mntp_loss_grouped

            items = objective.mask(batch, seed)
            tokens = sum(len(ids) for ids, _ in items)
            times["data (tokenise, mask)"] = time.perf_counter() - begin
            begin = time.perf_counter()
            with autocast:
                loss = mntp_loss_grouped(encoder, encoder.lm_head, items, encoder.tokenizer.pad_token_id, encoder.logit_softcap)
        else:
            from l2v.train.simcse import simcse_loss

            tokenized = encoder.tokenize(batch)
            tokens = sum(len(t.input_ids) for t in tokenized)
            times["data (tokenise, mask)"] = time.perf_counter() - begin
            begin = time.perf_counter()
            with autocast:
                loss = simcse_loss(encoder, encoder.collate, tokenized, objective.contrastive_temperature(), gather=False)
        times["forward (incl. loss)"] = time.perf_counter() - begin
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        times["backward"] = time.perf_counter() - begin
        begin = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        times["optimizer (clip + AdamW)"] = time.perf_counter() - begin
        for key, value in times.items():
            phases[key].append(value)
        return sum(times.values())

    step(0)  # warm-up
    totals = [step(i + 1) for i in range(steps)]
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        step(steps + 1)
    by_family: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages(group_by_input_shape=True):
        by_family[family(event.key, event.input_shapes)] += event.self_cpu_time_total / 1e6
    profiled_total = sum(by_family.values())
    return {
        "stage": stage, "variant": variant_name, **VARIANTS[variant_name],
        "batch": config.batch_size, "max_length": config.max_length, "real_tokens": tokens,
        "median_step_seconds": statistics.median(totals),
        "phases_median_seconds": {k: statistics.median(v[1:]) for k, v in phases.items()},
        "operator_families_share": {k: round(v / profiled_total, 4) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        "profiled_step_cpu_seconds": profiled_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", default="fp32,bf16-weights,bf16-autocast")
    parser.add_argument("--stages", default="mntp,simcse")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for stage in args.stages.split(","):
        for variant in args.variants.split(","):
            row = profile(stage, variant, args.steps)
            print(json.dumps(row, indent=1), flush=True)
            rows.append(row)
    payload = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_result("profile_step", payload)
    lines = ["| stage | variant | s/step | data | forward | backward | optimizer | top operator families (share of profiled CPU time) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        phase = row["phases_median_seconds"]
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(row["operator_families_share"].items())[:5])
        lines.append(f"| {row['stage']} {row['batch']}x{row['max_length']} | {row['variant']} | {row['median_step_seconds']:.2f} | "
                     f"{phase['data (tokenise, mask)']:.2f} | {phase['forward (incl. loss)']:.2f} | {phase['backward']:.2f} | "
                     f"{phase['optimizer (clip + AdamW)']:.2f} | {top} |")
    (RESULTS / "profile_step.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
