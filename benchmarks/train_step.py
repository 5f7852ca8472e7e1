"""Training speed: one MNTP step and one SimCSE step, l2v versus the official llm2vec 0.2.3 training code.

Same model (the built-in SmolLM2-135M, bidirectional; float32 beside the official package, and bfloat16 base weights as the
shipped recipes train), same LoRA (r=16, alpha=32, dropout 0.05, all
projections), same batch (the very same token ids and MNTP masks, drawn once here from the shared Wikipedia
text), same optimizer (AdamW, lr 5e-5). Each library runs in its own subprocess (the official one in its own
venv), alternating, ``--repeats`` times; a step is forward + backward + optimizer step, timed after ``--warmup``
untimed steps (the step time still falls over the first two or three steps: allocations, kernel choices).
Printed: the loss with dropout off (it must agree: equal loss), median seconds per step, the ratio; against the
baseline also the paired ratio (each repeat's baseline run over the l2v run next to it, median over repeats),
which the machine's drift between runs disturbs less. A third
column is "today's l2v": the l2v of commit ``--baseline`` (the code that trained the shipped encoders, before
the step-time work of issue 15), run from a temporary git worktree, in each precision.

    python benchmarks/train_step.py [--repeats 3] [--steps 6] [--warmup 2] [--mntp-batch 16 --mntp-length 128]
                                    [--simcse-batch 32 --simcse-length 64] [--stages mntp,simcse]
                                    [--precisions float32,bfloat16] [--result train_step]
Results go to benchmarks/results/train_step.json (or RESULT.json with --result RESULT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DATA, model_folders, official_python, write_result


def sample_lines(path: Path, count: int, seed: int) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    return [lines[i] for i in rng.choice(len(lines), size=count, replace=False)]


def make_batches(folder: Path, args) -> dict:
    import torch

    from l2v import Encoder
    from l2v.bidirectional import model_family
    from l2v.train.mntp import MaskingConfig, mask_for_mntp, mask_token_id

    encoder = Encoder.from_pretrained(str(folder), max_length=args.mntp_length)
    tokenizer = encoder.tokenizer
    texts = sample_lines(DATA / "text" / "wikitext2_test_paragraphs.txt", args.mntp_batch, seed=1)
    tokenized = encoder.tokenize(texts)
    batch = encoder.collate(tokenized)
    special = batch["pooling_mask"].eq(0) & batch["attention_mask"].bool()
    mask_id = mask_token_id(tokenizer, model_family(encoder.model))
    corrupted, labels = mask_for_mntp(batch["input_ids"], batch["attention_mask"], special, mask_id,
                                      len(tokenizer), MaskingConfig(), torch.Generator().manual_seed(0))
    lengths = batch["attention_mask"].sum(1).tolist()
    mntp = {"max_length": args.mntp_length, "pad_id": tokenizer.pad_token_id,
            "items": [{"input_ids": corrupted[i, :n].tolist(), "labels": labels[i, :n].tolist()} for i, n in enumerate(lengths)]}
    encoder.config.max_length = args.simcse_length
    sentences = sample_lines(DATA / "text" / "wiki1m_subset.txt", args.simcse_batch, seed=2)
    simcse = {"max_length": args.simcse_length, "pad_id": tokenizer.pad_token_id,
              "items": [{"input_ids": t.input_ids} for t in encoder.tokenize(sentences)]}
    return {"mntp": mntp, "simcse": simcse}


# today's l2v when this work began (issues 14 and 15): the trainer that made the shipped encoders
BASELINE = "3098735"


def checkout(revision: str, target: Path) -> str:
    """The ``src`` folder of ``revision`` in a temporary git worktree (removed by git's worktree prune later)."""
    from _common import ROOT

    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(target), revision], check=True,
                   capture_output=True)
    return str(target / "src")


def run(python: str, library: str, stage: str, folder: Path, batch_file: Path, steps: int, warmup: int, *extra: str,
        pythonpath: str | None = None) -> dict:
    command = [python, str(Path(__file__).parent / "_train_worker.py"), library, stage, str(folder), str(batch_file), str(steps),
               f"--warmup={warmup}", *extra]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath:
        command.append(f"--source={pythonpath}")
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.exit(f"{library} {stage} worker failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mntp-batch", type=int, default=16)
    parser.add_argument("--mntp-length", type=int, default=128)
    parser.add_argument("--simcse-batch", type=int, default=32)
    parser.add_argument("--simcse-length", type=int, default=64)
    parser.add_argument("--stages", default="mntp,simcse")
    parser.add_argument("--baseline", default=BASELINE,
                        help="the l2v commit to time as 'today's l2v' (checked out into a temporary worktree)")
    parser.add_argument("--result", default="train_step", help="results file name under benchmarks/results/ (.json)")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="l2v base-weight precisions to time (the official package runs in float32 only)")
    args = parser.parse_args()
    python = official_python()
    folder, legacy = model_folders()
    work = Path(tempfile.mkdtemp(prefix="l2v-train-bench-"))
    baseline_src = checkout(args.baseline, work / "baseline")
    batches = make_batches(folder, args)
    results = {}
    for stage in args.stages.split(","):
        batch_file = work / f"{stage}.json"
        batch_file.write_text(json.dumps(batches[stage]))
        items = batches[stage]["items"]
        real = sum(len(i["input_ids"]) for i in items)
        columns = {"llm2vec": (python, "llm2vec", legacy, (), None)}
        for precision in args.precisions.split(","):
            tag = "" if precision == "float32" else f" {precision}"
            columns[f"l2v@{args.baseline[:7]}{tag}"] = (sys.executable, "l2v", folder, (f"--dtype={precision}",), baseline_src)
            columns[f"l2v{tag}"] = (sys.executable, "l2v", folder, (f"--dtype={precision}",), None)
        runs = {name: [] for name in columns}
        for repeat in range(args.repeats):
            order = list(columns) if repeat % 2 == 0 else list(reversed(columns))
            for name in order:
                python_, library, model_folder, extra, pythonpath = columns[name]
                result = run(python_, library, stage, model_folder, batch_file, args.steps, args.warmup, *extra,
                             pythonpath=pythonpath)
                runs[name].append(result)
                print(f"{stage} {name}: {result['median_step_seconds']:.2f} s/step, loss (no dropout) {result['eval_loss']:.5f}", flush=True)
        median = {name: statistics.median(s for r in rs for s in r["step_seconds"]) for name, rs in runs.items()}
        speedups = {name: round(median["llm2vec"] / seconds, 3) for name, seconds in median.items()}
        versus_baseline, paired = {}, {}
        for precision in args.precisions.split(","):
            tag = "" if precision == "float32" else f" {precision}"
            old, new = runs[f"l2v@{args.baseline[:7]}{tag}"], runs[f"l2v{tag}"]
            versus_baseline[precision] = round(median[f"l2v@{args.baseline[:7]}{tag}"] / median[f"l2v{tag}"], 3)
            ratios = [a["median_step_seconds"] / b["median_step_seconds"] for a, b in zip(old, new)]
            paired[precision] = {"median": round(statistics.median(ratios), 3), "per_repeat": [round(r, 3) for r in ratios]}
        losses = {name: rs[0]["eval_loss"] for name, rs in runs.items()}
        results[stage] = {
            "batch": len(items), "max_length": batches[stage]["max_length"], "real_tokens": real,
            "padded_tokens_one_batch": len(items) * max(len(i["input_ids"]) for i in items),
            "median_step_seconds": median, "speedup_vs_llm2vec": speedups,
            "speedup_vs_baseline_l2v": versus_baseline, "paired_speedup_vs_baseline_l2v": paired,
            "baseline_commit": args.baseline,
            "loss_no_dropout": losses,
            "loss_gap_float32": abs(losses["l2v"] - losses["llm2vec"]) if "l2v" in losses else None,
            "trainable_parameters": {name: rs[0]["trainable_parameters"] for name, rs in runs.items()},
            "peak_rss_mb": {name: max(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()},
            "runs": runs,
        }
        print(f"== {stage}: " + ", ".join(f"{n} {m:.2f} s/step" for n, m in median.items())
              + f"; l2v vs {args.baseline[:7]}: {versus_baseline}, paired {paired}", flush=True)
    path = write_result(args.result, {
        "model": "smollm2-135m (bidirectional, LoRA r=16; base weights float32 or as the column says)", "steps_timed_per_run": args.steps,
        "warmup_steps_per_run": args.warmup, "repeats": args.repeats,
        "results": results, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    })
    subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")], capture_output=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
