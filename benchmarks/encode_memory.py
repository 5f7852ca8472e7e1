"""Encoding memory on a CPU with long texts: what the row-chunked feed-forward blocks (l2v/memory.py) and the CPU's
per-forward token cap (``l2v.encoder.CPU_FORWARD_TOKENS``) save, and what they cost in time.

64 English Wikipedia paragraphs of more than 400 words (504-512 tokens after truncation), batch size 32, SmolLM2-135M
in the chosen dtype; each configuration in its own process (peak RSS is per process): the rise of the peak RSS
over the RSS after loading and a two-text warm-up, the seconds of one pass, and the largest difference of any
embedding to the first configuration's (the changes must not move a number).

    python benchmarks/encode_memory.py [--dtype mixed] [--texts 64]
Writes benchmarks/results/encode_memory.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, write_result

CONFIGURATIONS = {  # name -> (feed-forward chunk rows, CPU forward token cap)
    "whole blocks, batches up to 16,384 positions (before)": (0, None),
    "feed-forward in 512-row chunks, batches up to 16,384": (512, None),
    "feed-forward in 512-row chunks, forwards up to 4,096 (default)": (512, 4096),
}


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(dtype: str, texts_file: str, rows: int, cap: int, out: str) -> None:
    import numpy as np

    import l2v.encoder
    from l2v import Encoder
    from l2v.memory import chunk_feed_forward

    texts = json.loads(Path(texts_file).read_text())
    l2v.encoder.CPU_FORWARD_TOKENS = cap or None
    encoder = Encoder.from_pretrained("smollm2-135m", dtype=dtype)
    chunk_feed_forward(encoder.model, rows or None)
    tokenized = encoder.tokenize(texts)
    encoder.embed_tokenized(tokenized[:2], batch_size=2)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here
    began = time.perf_counter()
    vectors = encoder.embed_tokenized(tokenized, batch_size=32, max_tokens_per_batch=16384, normalize=False)
    seconds = time.perf_counter() - began
    np.save(out, vectors.numpy())
    print(json.dumps({"peak_rise_mb": round(_status("VmHWM") - before, 1), "seconds": round(seconds, 2),
                      "tokens": sum(len(t.input_ids) for t in tokenized)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="mixed")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        dtype, texts_file, rows, cap, out = args.worker
        worker(dtype, texts_file, int(rows), int(cap), out)
        return
    import numpy as np

    source = DATA / "text" / "unlabeled" / "wikipedia_en_WikiTasks_2021.txt.gz"
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        texts = []
        for line in handle:
            if len(line.split()) > 400:
                texts.append(line.strip())
                if len(texts) == args.texts:
                    break
    work = Path(tempfile.mkdtemp(prefix="l2v-encode-memory-"))
    (work / "texts.json").write_text(json.dumps(texts))
    rows, reference = [], None
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    for name, (chunk, cap) in CONFIGURATIONS.items():
        out = work / f"{len(rows)}.npy"
        done = subprocess.run([sys.executable, __file__, "--worker", args.dtype, str(work / "texts.json"), str(chunk),
                               str(cap or 0), str(out)], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        record = {"configuration": name, **json.loads(done.stdout.strip().splitlines()[-1])}
        vectors = np.load(out)
        reference = vectors if reference is None else reference
        record["max_abs_difference_to_first"] = float(np.abs(vectors - reference).max())
        rows.append(record)
        print(json.dumps(record), flush=True)
    payload = {"date": time.strftime("%Y-%m-%d"), "dtype": args.dtype, "texts": len(texts), "batch_size": 32,
               "threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}
    write_result("encode_memory", payload)
    print("| configuration | peak rise MB | seconds | max difference to the first |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['configuration']} | {r['peak_rise_mb']:.0f} | {r['seconds']:.1f} | {r['max_abs_difference_to_first']:.1g} |")


if __name__ == "__main__":
    main()
