"""Anchor: l2v's embeddings equal the official llm2vec 0.2.3 package's on the same model.

Built-in SmolLM2-135M, bidirectional attention, mean pooling, untrained. The official package encodes each of
the 2758 STS-B test sentences alone (batch size 1: its unambiguous output); l2v encodes them in its usual
length-sorted batches of 32. Target: cosine >= 0.9999 for every sentence.

    python benchmarks/anchor_llm2vec.py [--limit N] [--write-fixture]
``--write-fixture`` stores the first 24 sentences and the official embeddings in tests/data/ for the test
``tests/test_smollm2.py::test_matches_official_llm2vec_reference``.
Results go to benchmarks/results/anchor_llm2vec.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import ROOT, model_folders, official_python, run_worker, stsb_test_sentences, write_result

FIXTURE_SIZE = 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args()
    folder, legacy = model_folders()
    sentences = stsb_test_sentences()[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="l2v-anchor-"))
    sentences_file = work / "sentences.txt"
    sentences_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    official = run_worker(official_python(), "llm2vec", legacy, sentences_file, work / "official.npy", 1)
    ours = run_worker(sys.executable, "l2v", folder, sentences_file, work / "l2v.npy", 32)
    a, b = np.load(work / "official.npy"), np.load(work / "l2v.npy")
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    payload = {
        "what": "cosine between l2v (batch 32) and official llm2vec 0.2.3 (batch 1) embeddings, SmolLM2-135M bi+mean",
        "sentences": len(sentences),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "sentences_below_0.9999": int((cosine < 0.9999).sum()),
        "max_abs_difference": float(np.abs(a - b).max()),
        "official_seconds": official["seconds"],
        "l2v_seconds": ours["seconds"],
    }
    path = write_result("anchor_llm2vec", payload)
    print(json.dumps(payload, indent=2))
    if args.write_fixture:
        data = ROOT / "tests" / "data"
        (data / "llm2vec_reference_sentences.txt").write_text("\n".join(sentences[:FIXTURE_SIZE]) + "\n", encoding="utf-8")
        np.save(data / "llm2vec_reference_embeddings.npy", a[:FIXTURE_SIZE].astype(np.float32))
        print(f"wrote the reference fixture ({FIXTURE_SIZE} sentences) to {data}")
    print(f"wrote {path}")
    if payload["sentences_below_0.9999"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
