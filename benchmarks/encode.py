"""Encoding speed: l2v versus the official llm2vec 0.2.3 on the built-in SmolLM2-135M, same machine, one run.

Encodes the 2758 STS-B test sentences (bidirectional, mean pooling, max length 512, batch size 32, float32)
with each library in its own subprocess, alternating the libraries so drift in machine speed hits both, and
prints tokens/s (real, unpadded tokens), the ratio and peak RSS. l2v runs in float32 and in its fast mode
(`dtype="mixed"`, what `--dtype auto` picks on a CPU with native bfloat16), both alternated with the official
package in every repeat; then once in plain bfloat16. Reports how close each l2v mode's embeddings are to float32.

    python benchmarks/encode.py [--repeats 2] [--limit N]
Results go to benchmarks/results/encode.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np

from _common import model_folders, official_python, run_worker, stsb_test_sentences, write_result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sentences (quick check)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    python = official_python()
    folder, legacy = model_folders()
    sentences = stsb_test_sentences()[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="l2v-bench-"))
    sentences_file = work / "sentences.txt"
    sentences_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    import sys

    runs = {"llm2vec": [], "l2v": [], "l2v-mixed": []}
    for repeat in range(args.repeats):
        for name in ("llm2vec", "l2v", "l2v-mixed"):
            if name == "llm2vec":
                result = run_worker(python, "llm2vec", legacy, sentences_file, work / "llm2vec.npy", args.batch_size)
            else:
                extra = ("--dtype=mixed",) if name == "l2v-mixed" else ()
                result = run_worker(sys.executable, "l2v", folder, sentences_file, work / f"{name}.npy", args.batch_size, *extra)
            runs[name].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {name:9s} {result['tokens_per_s']:8.1f} tokens/s  "
                  f"{result['seconds']:6.1f} s  peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)

    # The STS-B list repeats some sentences; l2v encodes repeats once (exact: embeddings are batch-invariant).
    # Also measure both libraries on the distinct sentences only, to show the gain without that.
    distinct = list(dict.fromkeys(sentences))
    distinct_file = work / "distinct.txt"
    distinct_file.write_text("\n".join(distinct) + "\n", encoding="utf-8")
    distinct_runs = {
        "llm2vec": run_worker(python, "llm2vec", legacy, distinct_file, work / "llm2vec_distinct.npy", args.batch_size),
        "l2v": run_worker(sys.executable, "l2v", folder, distinct_file, work / "l2v_distinct.npy", args.batch_size),
    }
    print(f"distinct sentences ({len(distinct)}): llm2vec {distinct_runs['llm2vec']['tokens_per_s']:.1f}, "
          f"l2v {distinct_runs['l2v']['tokens_per_s']:.1f} tokens/s", flush=True)
    bf16 = run_worker(sys.executable, "l2v", folder, sentences_file, work / "l2v_bf16.npy", args.batch_size, "--dtype=bfloat16")
    print(f"l2v bfloat16 {bf16['tokens_per_s']:8.1f} tokens/s", flush=True)
    official = statistics.median(r["tokens_per_s"] for r in runs["llm2vec"])
    ours = statistics.median(r["tokens_per_s"] for r in runs["l2v"])
    fast = statistics.median(r["tokens_per_s"] for r in runs["l2v-mixed"])
    mixed_agreement = cosine_rows(np.load(work / "l2v.npy"), np.load(work / "l2v-mixed.npy"))
    agreement = cosine_rows(np.load(work / "llm2vec.npy"), np.load(work / "l2v.npy"))
    bf16_agreement = cosine_rows(np.load(work / "l2v.npy"), np.load(work / "l2v_bf16.npy"))
    payload = {
        "what": "encode STS-B test sentences, SmolLM2-135M bidirectional mean pooling, float32, batch size %d" % args.batch_size,
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "sentences": len(sentences),
        "tokens": runs["l2v"][0]["tokens"],
        "llm2vec_tokens_per_s": official,
        "l2v_tokens_per_s": ours,
        "ratio_l2v_over_llm2vec": ours / official,
        "llm2vec_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["llm2vec"]),
        "l2v_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["l2v"]),
        "l2v_mixed_tokens_per_s": fast,
        "ratio_l2v_mixed_over_llm2vec": fast / official,
        "ratio_l2v_mixed_over_l2v_float32": fast / ours,
        "min_cosine_l2v_mixed_vs_float32": float(mixed_agreement.min()),
        "mean_cosine_l2v_mixed_vs_float32": float(mixed_agreement.mean()),
        "l2v_mixed_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["l2v-mixed"]),
        "l2v_bfloat16_tokens_per_s": bf16["tokens_per_s"],
        "ratio_l2v_bfloat16_over_llm2vec_float32": bf16["tokens_per_s"] / official,
        "min_cosine_l2v_vs_llm2vec_float32": float(agreement.min()),
        "min_cosine_l2v_bfloat16_vs_float32": float(bf16_agreement.min()),
        "mean_cosine_l2v_bfloat16_vs_float32": float(bf16_agreement.mean()),
        "distinct_sentences": len(distinct),
        "distinct_llm2vec_tokens_per_s": distinct_runs["llm2vec"]["tokens_per_s"],
        "distinct_l2v_tokens_per_s": distinct_runs["l2v"]["tokens_per_s"],
        "distinct_ratio_l2v_over_llm2vec": distinct_runs["l2v"]["tokens_per_s"] / distinct_runs["llm2vec"]["tokens_per_s"],
        "runs": runs,
    }
    path = write_result("encode", payload)
    print(f"\nllm2vec 0.2.3: {official:.1f} tokens/s   l2v: {ours:.1f} tokens/s   ratio {ours / official:.2f}x")
    print(f"distinct sentences only: ratio {payload['distinct_ratio_l2v_over_llm2vec']:.2f}x")
    print(f"l2v fast mode (mixed): {fast:.1f} tokens/s, {fast / official:.2f}x llm2vec, {fast / ours:.2f}x l2v float32, "
          f"cosine to float32 min {mixed_agreement.min():.5f}")
    print(f"l2v bfloat16: {bf16['tokens_per_s']:.1f} tokens/s ({bf16['tokens_per_s'] / official:.2f}x), "
          f"cosine to float32 min {bf16_agreement.min():.5f}")
    print(f"peak RSS: llm2vec {payload['llm2vec_peak_rss_mb']:.0f} MB, l2v {payload['l2v_peak_rss_mb']:.0f} MB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
