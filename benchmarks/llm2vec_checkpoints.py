"""The published LLM2Vec checkpoints through l2v, checked against the official llm2vec 0.2.3 offline.

The hub is unreachable here, so tests/llm2vec_replicas.py builds faithful replicas of every published layout
(Llama-3, Llama-3.1 with llama3 rope scaling, Llama-3.2, Mistral, Llama-2, Sheared-LLaMA; plus the Gemma-2 and
Qwen2 template keys) from tiny random weights. For each replica, pooling mode and with / without an instruction,
the official package (its own venv) encodes each text alone; l2v loads the same folders with
``Encoder.from_pretrained(mntp, adapters=second)``. Compared: the token ids and pooled positions (every replica),
and the embeddings (cosine; the replicas llm2vec can load bidirectionally: not Gemma-2, which 0.2.3 does not
support, nor Qwen2, which it leaves causal under eager/SDPA attention).

    python benchmarks/llm2vec_checkpoints.py [--write-fixture]
Writes benchmarks/results/llm2vec_checkpoints.{json,md}; ``--write-fixture`` stores the official outputs (and the
replica tokenizers) in tests/data/llm2vec_replicas for the CI test tests/test_llm2vec_format.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import ROOT, official_python, write_result

sys.path.insert(0, str(ROOT / "tests"))
import llm2vec_replicas as replicas  # noqa: E402


def run_official(jobs: list[dict], work: Path) -> tuple[dict, dict]:
    (work / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    out = work / "official.npz"
    completed = subprocess.run([official_python(), str(Path(__file__).parent / "_llm2vec_worker.py"), str(work / "jobs.json"), str(out)],
                               capture_output=True, text=True, env={"TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin"})
    if completed.returncode != 0:
        sys.exit(f"official worker failed:\n{completed.stderr[-4000:]}")
    embeddings = dict(np.load(out))
    layouts = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    return embeddings, layouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-fixture", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="l2v-llm2vec-checkpoints-"))
    built = {key: replicas.build_replica(key, work / "replicas") for key in replicas.REPLICAS}
    jobs = []
    for case in replicas.cases():
        paths = built[case["replica"]]
        jobs.append({"id": replicas.case_id(case), "checkpoint": paths["mntp"], "adapter": paths["second"], "pooling": case["pooling"],
                     "instruction": case["instruction"], "texts": replicas.TEXTS, "load": replicas.REPLICAS[case["replica"]].official,
                     **replicas.SETTINGS})
    official, official_layouts = run_official(jobs, work)
    rows = []
    for case in replicas.cases():
        case_key = replicas.case_id(case)
        alone, batch, tokenized = replicas.l2v_outputs(built[case["replica"]], case)
        ids_equal = all(item.input_ids == lay["input_ids"] for item, lay in zip(tokenized, official_layouts[case_key]))
        positions_equal = all(replicas.l2v_positions(item, case["pooling"]) == replicas.official_positions(lay, case["pooling"])
                              for item, lay in zip(tokenized, official_layouts[case_key]))
        row = {"case": case_key, "token_ids_equal": ids_equal, "pooled_positions_equal": positions_equal,
               "batch_vs_alone_max_abs": float(np.abs(alone - batch).max())}
        if case_key in official:
            a, b = official[case_key], alone
            zero = np.linalg.norm(a, axis=1) == 0  # llm2vec's weighted_mean of an empty text (weights all 0)
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(min=1e-30)
            row.update(min_cosine=float(cosine[~zero].min()), max_abs_difference=float(np.abs(a - b)[~zero].max()),
                       official_zero_vectors=int(zero.sum()))
        rows.append(row)
    compared = [r for r in rows if "min_cosine" in r]
    payload = {
        "what": "l2v vs official llm2vec 0.2.3 on replicas of the published checkpoint layouts (each text alone on the official side)",
        "texts_per_case": len(replicas.TEXTS), "cases": len(rows), "cases_with_embeddings": len(compared),
        "all_token_ids_equal": all(r["token_ids_equal"] for r in rows),
        "all_pooled_positions_equal": all(r["pooled_positions_equal"] for r in rows),
        "min_cosine": min(r["min_cosine"] for r in compared),
        "official_zero_vectors": sum(r["official_zero_vectors"] for r in compared),
        "note": "llm2vec returns a zero vector for an empty text under weighted_mean when no template wraps it (its "
                "weights are all 0); l2v pools every token there; those rows are left out of min_cosine",
        "rows": rows,
        "digests": {key: paths["digest"] for key, paths in built.items()},
    }
    write_result("llm2vec_checkpoints", payload)
    lines = ["| replica | pooling | instruction | token ids | pooled positions | min cosine (vs official) | batch vs alone (max abs) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        replica, pooling, instr = r["case"].split("|")
        cos = (f"{r['min_cosine']:.7f}" + (f" ({r['official_zero_vectors']} zero vector from llm2vec)" if r.get("official_zero_vectors") else "")) if "min_cosine" in r else "not loadable by llm2vec 0.2.3" if replica.startswith("gemma2") else "llm2vec stays causal"
        lines.append(f"| {replica} | {pooling} | {instr} | {'equal' if r['token_ids_equal'] else 'DIFFER'} | "
                     f"{'equal' if r['pooled_positions_equal'] else 'DIFFER'} | {cos} | {r['batch_vs_alone_max_abs']:.1e} |")
    (ROOT / "benchmarks" / "results" / "llm2vec_checkpoints.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({k: v for k, v in payload.items() if k not in ("rows", "digests")}, indent=2))
    if args.write_fixture:
        fixture = replicas.FIXTURE
        (fixture / "tokenizers").mkdir(parents=True, exist_ok=True)
        for kind in replicas.TOKENIZERS:
            target = fixture / "tokenizers" / kind
            if not (target / "tokenizer.json").exists():
                shutil.copytree(work / "replicas" / "tokenizers" / kind, target)
        np.savez_compressed(fixture / "official_embeddings.npz", **official)
        (fixture / "official_layouts.json").write_text(json.dumps(official_layouts) + "\n", encoding="utf-8")
        (fixture / "digests.json").write_text(json.dumps(payload["digests"], indent=2) + "\n", encoding="utf-8")
        print(f"wrote the fixture to {fixture}")
    if not (payload["all_token_ids_equal"] and payload["all_pooled_positions_equal"] and payload["min_cosine"] >= 0.9999):
        sys.exit(1)


if __name__ == "__main__":
    main()
