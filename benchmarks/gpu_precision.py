"""Issue 16 on a GPU: tokens/s of `Encoder.encode` per compute precision (float32, mixed, bfloat16, float16) and per
attention backend (sdpa, eager, flash_attention_2 where the flash-attn package is installed), with equality checks.

For each variant, over the 2758 STS-B test sentences (1379 pairs): real (unpadded) tokens per second after a
warm-up, padded tokens per real token (texts are length-sorted into token-budget batches), peak GPU memory next to
the weights' size, min / mean cosine to float32 + sdpa, and STS-B Spearman. Checks (the script exits non-zero if
one fails): eager and sdpa agree in float32 (min cosine >= 0.9999); every variant's min cosine to float32 is
reported and mixed must keep >= 0.999; a text's embedding is the same alone as inside the large batches (batch
invariance, min cosine >= 0.9999 in float32); `dtype="auto"` says what it picked.

    python benchmarks/gpu_precision.py OUT_JSON [--model smollm2-135m] [--limit N] [--batch-size 256]
Runs on CPU too (a try-out: `--limit 64 --device cpu`), where float16 and flash-attention are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import DATA  # noqa: E402


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=None, help="the first N pairs only (a try-out)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=65536, help="padded tokens per batch")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import torch

    from l2v import Encoder
    from l2v.batching import token_budget_batches

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [line.rstrip("\n").split("\t") for line in (DATA / "sts" / "stsb_test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    rows = rows[: args.limit]
    sentences = [r[0] for r in rows] + [r[1] for r in rows]
    gold = [float(r[2]) for r in rows]
    flash = importlib.util.find_spec("flash_attn") is not None
    variants = [("float32", "sdpa"), ("float32", "eager"), ("mixed", "sdpa"), ("bfloat16", "sdpa"), ("bfloat16", "eager")]
    if device.type == "cuda":
        variants += [("float16", "sdpa")]
        if flash:
            variants += [("bfloat16", "flash_attention_2"), ("float16", "flash_attention_2")]
    summary = {
        "model": args.model, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "sentences": len(sentences), "batch_size": args.batch_size,
        "max_tokens_per_batch": args.max_tokens, "flash_attn_installed": flash, "variants": [], "checks": {},
    }
    import transformers

    summary["transformers"] = transformers.__version__
    reference = None
    failures = []
    for dtype, attention in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        began = time.perf_counter()
        encoder = Encoder.from_pretrained(args.model, dtype=dtype, device=device, attn_implementation=attention)
        load_seconds = time.perf_counter() - began
        weights = sum(p.numel() * p.element_size() for p in encoder.model.parameters())
        tokenized = encoder.tokenize(sentences)
        real = sum(len(t.input_ids) for t in tokenized)
        batches = token_budget_batches([len(t.input_ids) for t in tokenized], args.batch_size, args.max_tokens)
        padded = sum(max(len(tokenized[i].input_ids) for i in b) * len(b) for b in batches)
        encoder.encode(sentences[: args.batch_size], batch_size=args.batch_size)  # warm-up (kernels, autotuning)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(3):
            began = time.perf_counter()
            vectors = encoder.encode(sentences, batch_size=args.batch_size, max_tokens_per_batch=args.max_tokens,
                                     convert_to="numpy")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - began)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        vectors = np.asarray(vectors, dtype=np.float64)
        normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        half = len(rows)
        record = {
            "dtype": dtype, "attention": attention, "precision": getattr(encoder, "precision_description", None),
            "load_seconds": round(load_seconds, 1), "seconds_best_of_3": round(min(seconds), 4),
            "tokens": real, "tokens_per_second": round(real / min(seconds)),
            "padded_per_real_token": round(padded / real, 3),
            "weights_mb": round(weights / 2**20, 1),
            "peak_gpu_mb": None if peak is None else round(peak / 2**20, 1),
            "peak_over_weights": None if peak is None else round(peak / weights, 2),
            "stsb_spearman": round(100 * spearman((normed[:half] * normed[half:]).sum(1), gold), 2),
        }
        if reference is None:
            reference = normed
            # batch invariance: the first 32 texts one at a time against their rows in the large batches
            alone = np.stack([np.asarray(encoder.encode([s], convert_to="numpy"), dtype=np.float64)[0] for s in sentences[:32]])
            alone /= np.linalg.norm(alone, axis=1, keepdims=True)
            invariance = float((alone * normed[:32]).sum(1).min())
            summary["checks"]["batch_invariance_min_cosine_float32"] = invariance
            if not invariance >= 0.9999:
                failures.append(f"batch invariance: min cosine {invariance}")
        cos = (normed * reference).sum(1)
        record.update({"cos_min_vs_float32_sdpa": round(float(cos.min()), 6), "cos_mean_vs_float32_sdpa": round(float(cos.mean()), 6)})
        if (dtype, attention) == ("float32", "eager") and not cos.min() >= 0.9999:
            failures.append(f"float32 eager vs sdpa: min cosine {cos.min()}")
        if dtype == "mixed" and not cos.min() >= 0.999:
            failures.append(f"mixed: min cosine {cos.min()}")
        if not all(math.isfinite(x) for x in vectors.ravel()[:1000]):
            failures.append(f"{dtype}/{attention}: non-finite embeddings")
        summary["variants"].append(record)
        print(json.dumps(record), flush=True)
        del encoder
    base = next(v for v in summary["variants"] if (v["dtype"], v["attention"]) == ("float32", "sdpa"))
    for record in summary["variants"]:
        record["speed_vs_float32_sdpa"] = round(record["tokens_per_second"] / base["tokens_per_second"], 2)
    auto = Encoder.from_pretrained(args.model, dtype="auto", device=device)
    summary["auto_picks"] = getattr(auto, "precision_description", None) or str(auto.dtype_choice)
    summary["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"auto picks: {summary['auto_picks']}")
    print("| dtype | attention | tokens/s | x fp32 | min cos | mean cos | STS-B | padded/real | peak GPU MB (x weights) |")
    for r in summary["variants"]:
        print(f"| {r['dtype']} | {r['attention']} | {r['tokens_per_second']} | {r['speed_vs_float32_sdpa']} | "
              f"{r['cos_min_vs_float32_sdpa']} | {r['cos_mean_vs_float32_sdpa']} | {r['stsb_spearman']} | "
              f"{r['padded_per_real_token']} | {r['peak_gpu_mb']} ({r['peak_over_weights']}) |")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
