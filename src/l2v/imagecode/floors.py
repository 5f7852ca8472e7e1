"""What a model gets without looking at the images, from the description files alone.

* random: 1 in 10 (MRR: the mean of 1/1 .. 1/10);
* majority: the training split's most frequent target index (ties: the lowest) predicted for every dev
  description; also by kind (the majority of video sets and of static sets apart);
* text only: a logistic-regression classifier of the target index from an l2v embedding of the description
  (scikit-learn; it sees no image). Target indices are not uniform (in the training file indices 2-7 are each
  the target about twice as often as 0 or 9), so a floor a little above 10 % needs no image at all.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ..fileio import atomic_path, write_json_atomic
from .data import CANDIDATES, Example, load_split
from .evaluate import Record, texts_of
from .report import summarize

RANDOM_MRR = sum(1.0 / r for r in range(1, CANDIDATES + 1)) / CANDIDATES


def _majority(examples: list[Example]) -> int:
    counts = Counter(e.target for e in examples)
    return min(counts, key=lambda index: (-counts[index], index))


def _records(examples: list[Example], scores: np.ndarray) -> list[Record]:
    return [Record(e.set_name, e.position, e.target, [float(s) for s in row]) for e, row in zip(examples, scores)]


def _one_hot(indices: list[int]) -> np.ndarray:
    scores = np.zeros((len(indices), CANDIDATES))
    scores[np.arange(len(indices)), indices] = 1.0
    return scores


def _row(summary: dict) -> dict:
    return {"accuracy": summary["accuracy"], "mrr": summary["mrr"],
            "per_source": {k: v["accuracy"] for k, v in summary["per_source"].items()}}


def compute_floors(data: str | Path, encoder: str | None = "smollm2-135m", limit_train: int | None = None,
                   limit_valid: int | None = None, seed: int = 0, batch_size: int = 32, max_length: int = 128,
                   log: Callable[[str], None] = print) -> dict:
    """The floors on the dev split (``valid``), trained on ``train``; ``encoder=None`` skips the text classifier."""
    train = load_split(data, "train")
    valid = load_split(data, "valid", limit_valid, seed)
    result: dict = {
        "dev_descriptions": len(valid), "train_descriptions": len(train),
        "dev_counts": summarize(_records(valid, np.zeros((len(valid), CANDIDATES))))["counts"],
        "random": {"accuracy": {k: 10.0 for k in ("all", "video", "static")},
                   "mrr": {k: round(RANDOM_MRR, 4) for k in ("all", "video", "static")},
                   "note": "expected value: 1 in 10 candidates"},
    }
    overall = _majority(train)
    by_kind = {kind: _majority([e for e in train if e.static == kind]) for kind in (False, True)}
    # scores that rank the majority first and the rest by training frequency, so MRR is defined
    frequency = Counter(e.target for e in train)
    ladder = np.array([frequency[i] for i in range(CANDIDATES)], dtype=float) / (10 * len(train))
    majority_scores = np.tile(ladder, (len(valid), 1)) + _one_hot([overall] * len(valid))
    result["majority"] = {**_row(summarize(_records(valid, majority_scores))), "index": overall,
                          "train_target_counts": {str(i): frequency[i] for i in range(CANDIDATES)}}
    kind_scores = []
    for e in valid:
        kind_frequency = Counter(t.target for t in train if t.static == e.static)
        kind_scores.append(np.array([kind_frequency[i] for i in range(CANDIDATES)], dtype=float) / (10 * len(train)))
    kind_scores = np.stack(kind_scores) + _one_hot([by_kind[e.static] for e in valid])
    result["majority_by_kind"] = {**_row(summarize(_records(valid, kind_scores))),
                                  "index": {"video": by_kind[False], "static": by_kind[True]}}
    if encoder:
        result["text_only"] = text_only(train, valid, encoder, limit_train, seed, batch_size, max_length, log)
    return result


def text_only(train: list[Example], valid: list[Example], encoder: str, limit_train: int | None, seed: int,
              batch_size: int, max_length: int, log: Callable[[str], None]) -> dict:
    import time

    from sklearn.linear_model import LogisticRegression

    from ..encoder import Encoder
    from .data import subsample

    fit_on = subsample(train, limit_train, seed)
    model = Encoder.from_pretrained(encoder, max_length=max_length)
    began = time.perf_counter()
    log(f"text-only floor: embedding {len(fit_on)} training and {len(valid)} dev descriptions with {encoder}")
    train_x = model.encode(texts_of(fit_on), batch_size=batch_size, normalize=True)
    valid_x, stats = model.encode(texts_of(valid), batch_size=batch_size, normalize=True, return_stats=True)
    seconds = time.perf_counter() - began
    classifier = LogisticRegression(max_iter=2000, C=1.0)
    classifier.fit(train_x, [e.target for e in fit_on])
    probabilities = np.zeros((len(valid), CANDIDATES))
    probabilities[:, classifier.classes_] = classifier.predict_proba(valid_x)
    row = _row(summarize(_records(valid, probabilities)))
    return {**row, "encoder": encoder, "max_length": max_length, "train_descriptions_used": len(fit_on),
            "dev_truncated": stats.truncated, "embedding_seconds": round(seconds, 1),
            "classifier": "sklearn LogisticRegression(C=1.0, max_iter=2000) on L2-normalised embeddings"}


def floors_markdown(result: dict) -> str:
    lines = [f"ImageCoDe floors on the dev split ({result['dev_descriptions']} descriptions; "
             f"{result['dev_counts']['video']} video, {result['dev_counts']['static']} static), without images:", "",
             "| floor | all | video | static | MRR (all) |", "|---|---|---|---|---|"]
    names = {"random": "random (expected)", "majority": "majority target index (train)",
             "majority_by_kind": "majority index per kind (train)", "text_only": "text-only classifier"}
    for key, label in names.items():
        if key not in result:
            continue
        row = result[key]
        if key == "majority":
            label += f": {row['index']}"
        if key == "majority_by_kind":
            label += f": video {row['index']['video']}, static {row['index']['static']}"
        if key == "text_only":
            label += f" ({row['encoder']}, {row['train_descriptions_used']} training descriptions)"
        acc = row["accuracy"]
        lines.append(f"| {label} | {acc['all']} | {acc['video']} | {acc['static']} | {row['mrr']['all']} |")
    return "\n".join(lines) + "\n"


def write_floors(result: dict, output: str | Path) -> None:
    output = Path(output)
    write_json_atomic(result, output)
    with atomic_path(output.with_suffix(".md")) as tmp:
        tmp.write_text(floors_markdown(result), encoding="utf-8")

