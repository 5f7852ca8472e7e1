"""The precision contract (issue 16): for each shipped encoder and the untrained base, per compute precision, the
minimum / mean cosine to float32 over the 2758 STS-B test sentences, STS-B Spearman, tokens/s, peak RSS, and the
roofline (the GEMM rate measured on the model's own layer shapes in the same process, the achieved FLOP rate of
encoding, their ratio).

Precisions: float32 (the reference), mixed (`dtype="mixed"`: float32 up to the massive-activation layer, bfloat16
products after), bfloat16 (weights and products), and two int8 experiments (torch dynamic quantisation of the
linear layers, per-tensor activation scales, VNNI on this CPU): every layer, or only the layers after mixed's split.
Each run is its own subprocess (peak RSS is per precision); precisions alternate per model so drift in machine
speed spreads over all of them.

    OMP_NUM_THREADS=2 python benchmarks/precision.py [--models smollm2-135m ...] [--limit N] [--batch-size 32]
Results: benchmarks/results/precision.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DATA, smollm2_skeleton, stsb_test_sentences, write_result

MODELS = ["smollm2-135m", "smollm2-135m-l2v-unsup", "smollm2-135m-l2v-sup"]
PRECISIONS = ["float32", "mixed", "bfloat16", "int8", "int8-after-split"]


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Start VmHWM (peak RSS) again from the current RSS (Linux: ``5`` to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _weights_bytes(model) -> int:
    """Bytes of every parameter and buffer; a dynamic-int8 linear layer counts its packed int8 weight and bias."""
    total = 0
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)
            continue
        if type(module).__name__ == "LinearPackedParams":
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            total += tensor.numel() * tensor.element_size()
    return total


def _gemm_rate(shapes: list[tuple[int, int]], rows: int, dtype, repeats: int = 5) -> float:
    """FLOP/s of ``x @ w.T`` on the model's linear shapes (in_features, out_features) with ``rows`` token rows."""
    import torch

    flops, seconds = 0.0, 0.0
    for k, n in shapes:
        x, w = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(x, w)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - began)
        flops += 2.0 * rows * k * n
        seconds += best
    return flops / seconds


def _int8_rate(shapes: list[tuple[int, int]], rows: int, repeats: int = 5) -> float:
    import torch

    flops, seconds = 0.0, 0.0
    for k, n in shapes:
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n, bias=False)),
                                                       {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(rows, k)
        layer(x)
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            layer(x)
            best = min(best, time.perf_counter() - began)
        flops += 2.0 * rows * k * n
        seconds += best
    return flops / seconds


def _warm_libraries(dtype: str, work: Path) -> None:
    """Load and use a tiny random model of the SmolLM2 family (its config and tokenizer, hidden size 36, 2 layers)
    the way the measured one is loaded, then drop it: the libraries and one-time state any first load brings into a
    process (tokenizers, the family's modules, peft, the CPU kernels' set-up) are then in the baseline, and the
    measured peak is what the model itself and its encoding add."""
    import shutil

    import peft  # noqa: F401  (trained encoders merge their adapters with it)

    from l2v import Encoder
    from l2v.memory import release_free_memory

    folder = smollm2_skeleton(work / f"warm-{os.getpid()}", num_hidden_layers=2)
    encoder = Encoder.from_pretrained(str(folder), dtype=dtype)
    encoder.encode(["A warm-up sentence.", "Another, somewhat longer, warm-up sentence for the kernels."], batch_size=2)
    del encoder
    shutil.rmtree(folder, ignore_errors=True)
    release_free_memory()


def worker(model: str, precision: str, sentences_file: str, out_file: str, batch_size: int) -> None:
    import torch

    import transformers.modeling_utils  # noqa: F401  library code every load imports (about 140 MB): not the model's

    from l2v import Encoder
    from l2v.precision import decoder_layers, massive_activation_layer

    sentences = Path(sentences_file).read_text(encoding="utf-8").split("\n")[:-1]
    dtype = precision if precision in ("float32", "mixed", "bfloat16") else "float32"
    cold_mb = _rss_mb("VmRSS")  # the interpreter, torch and transformers' loading code, before any model
    _warm_libraries(dtype, Path(out_file).parent)
    before_load_mb = _rss_mb("VmRSS")  # ... and what any load and encode of this family brings in, once per process
    began = time.perf_counter()
    encoder = Encoder.from_pretrained(model, dtype=dtype, merge_adapters=True)
    load_seconds = time.perf_counter() - began
    layers = decoder_layers(encoder.model)
    split = encoder.precision.float32_layers if encoder.precision is not None else None
    if precision.startswith("int8"):
        if precision == "int8-after-split":  # mixed's split, found as mixed finds it (without its check)
            features = encoder.collate(encoder.tokenize(sentences[:64]))
            with torch.inference_mode():
                _, output = encoder(features, output_hidden_states=True)
            split = massive_activation_layer(list(output.hidden_states), features["attention_mask"])
        else:
            split = 0
        for index in range(split, len(layers)):
            layers[index] = torch.ao.quantization.quantize_dynamic(layers[index], {torch.nn.Linear}, dtype=torch.qint8)
    tokenized = encoder.tokenize(sentences)
    tokens = sum(len(t.input_ids) for t in tokenized)
    encoder.embed_tokenized(tokenized[:batch_size], batch_size=batch_size)  # warm-up
    # the peak while encoding, apart from loading's transients (a float32 load cast to bfloat16): reset VmHWM
    reset = _reset_peak_rss()
    began = time.perf_counter()
    vectors = encoder.embed_tokenized(tokenized, batch_size=batch_size, normalize=False).numpy()
    seconds = time.perf_counter() - began
    encoding_peak_mb = _peak_rss_mb() if reset else float("nan")
    np.save(out_file, vectors)
    # roofline: the model's own linear shapes, rows = the mean tokens of one batch (texts are length-sorted)
    first = layers[0]
    shapes = [(m.in_features, m.out_features) for m in first.modules() if isinstance(m, torch.nn.Linear)]
    if not shapes:  # a quantised first layer: read the shapes from the float model's config instead
        shapes = [(m.in_features, m.out_features) for m in layers[-1].modules() if hasattr(m, "in_features")]
    rows = max(1, round(tokens / max(1, -(-len(sentences) // batch_size))))
    rate32 = _gemm_rate(shapes, rows, torch.float32)
    rate16 = _gemm_rate(shapes, rows, torch.bfloat16)
    rate8 = _int8_rate(shapes, rows) if precision.startswith("int8") else None
    total = len(layers)
    low = 0 if split is None else total - split  # layers computed in the faster type
    if precision == "float32":
        low = 0
    elif precision == "bfloat16":
        low = total
    fast_rate = rate8 if precision.startswith("int8") else rate16
    share = low / total  # of the linear FLOPs (every layer has the same shapes)
    machine_rate = 1.0 / ((1 - share) / rate32 + share / fast_rate)  # the rate the layer mix could reach
    config = encoder.model.config
    hidden = int(config.hidden_size)
    per_token_params = sum(2 * k * n for k, n in shapes) / 2 * total  # multiply-adds of the decoder per token
    attention = sum(4 * len(t.input_ids) ** 2 * hidden * total for t in tokenized)  # QK^T and AV, real tokens
    achieved = (2 * per_token_params * tokens + attention) / seconds
    print(json.dumps({
        "model": model, "precision": precision, "computes_in": encoder.precision_description if dtype != "float32" or precision == "float32" else f"int8 dynamic from layer {split}",
        "float32_layers": (total - low), "layers": total, "tokens": tokens, "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1), "load_seconds": round(load_seconds, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "weights_mb": round(_weights_bytes(encoder) / 2**20, 1),
        "rss_before_load_mb": round(before_load_mb, 1), "encoding_peak_rss_mb": round(encoding_peak_mb, 1),
        # what the model and its encoding add to the process, over the weights' size (the issue's <= 1.3x); the
        # libraries a first load brings in (tokenizers, the family's modules, peft, kernels' one-time state) apart
        "encoding_peak_over_weights": round((encoding_peak_mb - before_load_mb) / (_weights_bytes(encoder) / 2**20), 2),
        "rss_before_any_load_mb": round(cold_mb, 1), "library_warmup_mb": round(before_load_mb - cold_mb, 1),
        "encoding_peak_over_weights_with_libraries": round((encoding_peak_mb - cold_mb) / (_weights_bytes(encoder) / 2**20), 2),
        "gemm_rate_gflops": {"float32": round(rate32 / 1e9, 1), "bfloat16": round(rate16 / 1e9, 1),
                             **({"int8": round(rate8 / 1e9, 1)} if rate8 else {})},
        "machine_rate_gflops": round(machine_rate / 1e9, 1), "achieved_gflops": round(achieved / 1e9, 1),
        "share_of_machine_rate": round(achieved / machine_rate, 3),
    }))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).correlation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS)
    parser.add_argument("--limit", type=int, default=None, help="the first N sentences only (a quick look)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--result", default="precision", help="results file name under benchmarks/results/")
    parser.add_argument("--worker", nargs=4, metavar=("MODEL", "PRECISION", "SENTENCES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.batch_size)
        return
    sentences = stsb_test_sentences()[: args.limit]
    rows = [line.rstrip("\n").split("\t") for line in (DATA / "sts" / "stsb_test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    pairs = len(rows) if args.limit is None else 0
    gold = [float(r[2]) for r in rows]
    work = Path(tempfile.mkdtemp(prefix="l2v-precision-"))
    sentences_file = work / "sentences.txt"
    sentences_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    for model in args.models:
        vectors = {}
        for precision in args.precisions:
            out = work / f"{model}-{precision}.npy"
            command = [sys.executable, __file__, "--worker", model, precision, str(sentences_file), str(out),
                       "--batch-size", str(args.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"{model} {precision} failed:\n{done.stderr[-3000:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            vectors[precision] = np.load(out)
            normed = vectors[precision] / np.linalg.norm(vectors[precision], axis=1, keepdims=True)
            if "float32" in vectors:
                ref = vectors["float32"] / np.linalg.norm(vectors["float32"], axis=1, keepdims=True)
                cos = (normed * ref).sum(1)
                record.update({"cos_min": round(float(cos.min()), 5), "cos_mean": round(float(cos.mean()), 6)})
            if pairs:
                half = len(rows)
                record["stsb_spearman"] = round(100 * spearman((normed[:half] * normed[half:]).sum(1), gold), 2)
            results.append(record)
            print(json.dumps(record), flush=True)
    by_model = {}
    for record in results:
        by_model.setdefault(record["model"], {})[record["precision"]] = record
    for model, records in by_model.items():
        base = records.get("float32")
        for record in records.values():
            if base:
                record["speed_vs_float32"] = round(record["tokens_per_second"] / base["tokens_per_second"], 2)
                if "stsb_spearman" in record and "stsb_spearman" in base:
                    record["stsb_minus_float32"] = round(record["stsb_spearman"] - base["stsb_spearman"], 2)
    lines = ["| model | precision | min cos | mean cos | STS-B | tokens/s | x float32 | peak RSS MB | weights MB | "
             "encoding peak over weights | GEMM rate of the mix (GFLOP/s) | achieved | share |", "|" + "---|" * 13]
    for record in results:
        lines.append(f"| {record['model']} | {record['precision']} | {record.get('cos_min', '')} | {record.get('cos_mean', '')} | "
                     f"{record.get('stsb_spearman', '')} | {record['tokens_per_second']} | {record.get('speed_vs_float32', '')} | "
                     f"{record['peak_rss_mb']} | {record['weights_mb']} | {record['encoding_peak_over_weights']} | "
                     f"{record['machine_rate_gflops']} | "
                     f"{record['achieved_gflops']} | {record['share_of_machine_rate']} |")
    table = "\n".join(lines)
    print(table)
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
               "threads": os.environ.get("OMP_NUM_THREADS"), "sentences": len(sentences), "batch_size": args.batch_size,
               "results": results}
    write_result(args.result, payload)
    (Path(__file__).parent / "results" / f"{args.result}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
