"""Supervised training triples built from the *training* splits of the local data sets (never a test split):

* STS-B train and SICK-R train: pairs scored high are (query, positive); a hard negative is a sentence paired
  with the query at a low score if there is one, else a sentence from a low-scored pair;
* MRPC train: paraphrase pairs (label 1); a hard negative is a non-paraphrase partner of the query if any,
  else a sentence from a non-paraphrase pair;
* SciFact train: each claim with a relevant abstract; the hard negative is an abstract from the same corpus
  that is not relevant to the claim.

Pairs that also occur in a test split (the public files share a few: 7 in STS-B, 49 in SICK-R) are dropped,
as positives and as hard negatives, so evaluation on those tests stays clean. Each triple carries its data set's instruction (on the query side only) and its data set name, so a batch is
drawn from one data set. Users with internet can point a config at a Hugging Face data set (e.g. the public
E5 mix) instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluate.data import read_beir, read_pairs_with_labels, read_sts
from ..fileio import atomic_path

INSTRUCTIONS = {
    "stsb": "Retrieve semantically similar text",
    "sickr": "Retrieve semantically similar text",
    "mrpc": "Retrieve text that is semantically similar to the given text",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
}
# (positive if score >= high, negative if score <= low), on each data set's own scale
THRESHOLDS = {"stsb": (4.0, 1.5), "sickr": (4.0, 2.0)}


def _pairs_to_triples(name, first, second, scores, high, low, rng, exclude=frozenset()) -> list[dict]:
    negatives_of: dict[str, list[str]] = {}
    low_pool = []
    for a, b, score in zip(first, second, scores):
        if score <= low and (a, b) not in exclude and (b, a) not in exclude:  # a test pair is no training signal
            negatives_of.setdefault(a, []).append(b)
            negatives_of.setdefault(b, []).append(a)
            low_pool += [a, b]
    triples = []
    for a, b, score in zip(first, second, scores):
        if score < high or a == b or (a, b) in exclude or (b, a) in exclude:
            continue
        def usable(n):  # not the pair itself, and not a pair of a test split (even one drawn at random)
            return n not in (a, b) and (a, n) not in exclude and (n, a) not in exclude

        candidates = [n for n in negatives_of.get(a, []) if usable(n)]
        if candidates:
            negative = candidates[int(rng.integers(len(candidates)))]
        else:
            negative = low_pool[int(rng.integers(len(low_pool)))]
            while not usable(negative):
                negative = low_pool[int(rng.integers(len(low_pool)))]
        triples.append({"query": a, "positive": b, "negative": negative, "instruction": INSTRUCTIONS[name], "dataset": name})
    return triples


def build_triples(data: str | Path, seed: int = 0) -> list[dict]:
    data = Path(data)
    rng = np.random.default_rng(seed)
    triples: list[dict] = []
    for name in ("stsb", "sickr"):
        sts = read_sts(data / "sts" / f"{name}_train.tsv")
        test = read_sts(data / "sts" / f"{name}_test.tsv")
        high, low = THRESHOLDS[name]
        triples += _pairs_to_triples(name, sts.sentences1, sts.sentences2, sts.scores, high, low, rng,
                                     frozenset(zip(test.sentences1, test.sentences2)))
    mrpc = read_pairs_with_labels(data / "pair_classification" / "mrpc_train.tsv")
    mrpc_test = read_pairs_with_labels(data / "pair_classification" / "mrpc_test.tsv")
    triples += _pairs_to_triples("mrpc", mrpc.sentences1, mrpc.sentences2, mrpc.scores, 1, 0, rng,
                                 frozenset(zip(mrpc_test.sentences1, mrpc_test.sentences2)))
    scifact = read_beir(data / "retrieval" / "scifact", "train")
    test_claims = set(read_beir(data / "retrieval" / "scifact", "test").queries.values())
    doc_ids = list(scifact.corpus)
    for query_id, relevant in scifact.qrels.items():
        if scifact.queries[query_id] in test_claims:
            continue
        for doc_id in relevant:
            negative = doc_ids[int(rng.integers(len(doc_ids)))]
            while negative in relevant:
                negative = doc_ids[int(rng.integers(len(doc_ids)))]
            triples.append({"query": scifact.queries[query_id], "positive": scifact.corpus[doc_id],
                            "negative": scifact.corpus[negative], "instruction": INSTRUCTIONS["scifact"], "dataset": "scifact"})
    return triples


def write_triples(triples: list[dict], output: str | Path) -> Path:
    output = Path(output)
    with atomic_path(output) as tmp:
        tmp.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in triples), encoding="utf-8")
    return output
