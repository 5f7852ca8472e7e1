"""Real weights in the published LLM2Vec layout: SmolLM2-135M with l2v's shipped MNTP and supervised adapters.

The adapters of the built-in ``smollm2-135m-l2v-sup`` are written as the authors' hub repos hold theirs
(l2v.llm2vec_format.write_checkpoint / write_adapter: an ``-mntp`` folder naming the base, a second adapter folder).
Then, on the 2758 STS-B test sentences:

1. the official llm2vec 0.2.3 (its own venv, each sentence alone) against l2v loading the same two folders with
   ``Encoder.from_pretrained(mntp, adapters=second)`` (batches of 32): plain, and the first 400 with the authors'
   STS instruction;
2. the official package loading ``l2v export smollm2-135m-l2v-sup --format llm2vec`` against the built-in encoder.

    python benchmarks/llm2vec_smollm2.py [--limit N]
Writes benchmarks/results/llm2vec_smollm2.json. Target: min cosine >= 0.9999 everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import model_folders, stsb_test_sentences, write_result
from llm2vec_checkpoints import run_official

INSTRUCTION = "Retrieve semantically similar text:"
NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cosine(a: np.ndarray, b: np.ndarray) -> dict:
    values = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min_cosine": float(values.min()), "mean_cosine": float(values.mean()), "below_0.9999": int((values < 0.9999).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    from l2v import Encoder
    from l2v.export import export
    from l2v.llm2vec_format import legacy_config, read_json, write_adapter, write_checkpoint
    from l2v.registry import trained_encoder_folder

    sentences = stsb_test_sentences()[: args.limit]
    instructed = sentences[:400]
    work = Path(tempfile.mkdtemp(prefix="l2v-llm2vec-smollm2-"))
    _, legacy_base = model_folders("smollm2-135m")
    shipped = trained_encoder_folder("smollm2-135m-l2v-sup")
    saved = read_json(shipped / "l2v_config.json")
    mntp_adapter, sup_adapter = (shipped / saved["merged_adapters"][0]).resolve(), (shipped / saved["adapters"]).resolve()
    mntp = write_checkpoint(work / "LLM2Vec-SmolLM2-135M-mntp", base=str(legacy_base), base_config=legacy_config(read_json(legacy_base / "config.json")),
                            adapter=mntp_adapter, tokenizer=legacy_base, name_or_path=NAME)
    second = write_adapter(work / "LLM2Vec-SmolLM2-135M-mntp-supervised", adapter=sup_adapter, base=str(mntp))
    builtin = Encoder.from_pretrained("smollm2-135m-l2v-sup")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no chat template is known for SmolLM2: none, as llm2vec does
        exported = export(builtin, work / "exported", format="llm2vec")
        ours = Encoder.from_pretrained(mntp, adapters=str(second))
    job = dict(pooling="mean", max_length=512, doc_max_length=400, load=True)
    jobs = [{"id": "published", "checkpoint": str(mntp), "adapter": str(second), "instruction": "", "texts": sentences, **job},
            {"id": "published-instruction", "checkpoint": str(mntp), "adapter": str(second), "instruction": INSTRUCTION, "texts": instructed, **job},
            {"id": "exported", "checkpoint": str(exported), "adapter": None, "instruction": "", "texts": sentences, **job}]
    start = time.perf_counter()
    official, _ = run_official(jobs, work)
    official_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours_plain = ours.encode(sentences, batch_size=32, normalize=False)
    ours_instructed = ours.encode(instructed, instruction=INSTRUCTION, batch_size=32, normalize=False)
    builtin_plain = builtin.encode(sentences, batch_size=32, normalize=False)
    l2v_seconds = time.perf_counter() - start
    payload = {
        "what": "SmolLM2-135M + l2v's MNTP and supervised adapters in the published llm2vec layout; official llm2vec 0.2.3 "
                "(each sentence alone) vs l2v (batches of 32), STS-B test sentences, mean pooling",
        "sentences": len(sentences),
        "published_layout_plain": cosine(official["published"], ours_plain),
        "published_layout_with_instruction": {"instruction": INSTRUCTION, "sentences": len(instructed),
                                              **cosine(official["published-instruction"], ours_instructed)},
        "export_llm2vec_vs_builtin_encoder": cosine(official["exported"], builtin_plain),
        "published_layout_vs_builtin_encoder": cosine(ours_plain, builtin_plain),
        "official_seconds_all_jobs": round(official_seconds, 1),
        "l2v_seconds_all_encodes": round(l2v_seconds, 1),
    }
    path = write_result("llm2vec_smollm2", payload)
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    worst = min(v["min_cosine"] for v in payload.values() if isinstance(v, dict))
    if worst < 0.9999:
        sys.exit(1)


if __name__ == "__main__":
    main()
