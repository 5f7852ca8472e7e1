"""Encode a list of sentences with either l2v or the official llm2vec package, in this process, and report.

Run by the benchmarks in a subprocess so each library gets its own interpreter (and venv) and its own
peak-RSS reading: ``python _worker.py {l2v|llm2vec} MODEL_FOLDER SENTENCES.txt OUT.npy BATCH_SIZE [--bidirectional 0|1]``.
Prints one JSON line: seconds, real tokens, tokens/s, peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def main() -> None:
    library, folder, sentences_file, out_file, batch_size = sys.argv[1:6]
    bidirectional = "--causal" not in sys.argv
    threads = [a for a in sys.argv if a.startswith("--threads=")]
    dtype = ([a.split("=", 1)[1] for a in sys.argv if a.startswith("--dtype=")] or ["float32"])[0]
    import torch

    if threads:
        torch.set_num_threads(int(threads[0].split("=")[1]))
    batch_size = int(batch_size)
    with open(sentences_file, encoding="utf-8") as handle:
        sentences = handle.read().split("\n")
    if sentences and sentences[-1] == "":
        sentences.pop()
    if library == "llm2vec":
        from llm2vec import LLM2Vec

        model = LLM2Vec.from_pretrained(
            folder, enable_bidirectional=bidirectional, pooling_mode="mean", max_length=512, torch_dtype=torch.float32
        )
        tokenizer = model.tokenizer
        encode = lambda: model.encode(sentences, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)  # noqa: E731
    else:
        from l2v import Encoder

        model = Encoder.from_pretrained(folder, bidirectional=bidirectional, pooling="mean", max_length=512, dtype=dtype)
        tokenizer = model.tokenizer
        encode = lambda: model.encode(sentences, batch_size=batch_size, normalize=False)  # noqa: E731
    tokens = sum(len(ids) for ids in tokenizer(sentences, truncation=True, max_length=512)["input_ids"])
    # warm-up on a few sentences (first-call allocations), then the timed run
    if library == "llm2vec":
        model.encode(sentences[:8], batch_size=batch_size, show_progress_bar=False)
    else:
        model.encode(sentences[:8], batch_size=batch_size)
    start = time.perf_counter()
    embeddings = np.asarray(encode(), dtype=np.float32)
    seconds = time.perf_counter() - start
    np.save(out_file, embeddings)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"library": library, "dtype": dtype, "batch_size": batch_size, "sentences": len(sentences), "tokens": tokens,
                      "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_mb}))


if __name__ == "__main__":
    main()
