"""Pair classification (MRPC). Following MTEB: average precision (x100) of the cosine similarity as the score
for the positive class; also the best accuracy over thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from .data import read_pairs_with_labels


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores)
    labels_sorted = labels[order]
    positives_above = np.cumsum(labels_sorted)
    negatives_below = (1 - labels_sorted)[::-1].cumsum()[::-1]
    # threshold after position i: predict positive for the first i+1
    correct = positives_above + np.append(negatives_below[1:], 0)
    return float(max(correct.max(), (1 - labels).sum()) / len(labels))


def evaluate_pair_classification(model, path, instruction: str = "") -> dict:
    data = read_pairs_with_labels(path)
    left = model.encode(data.sentences1, instruction)
    right = model.encode(data.sentences2, instruction)
    cosine = (left * right).sum(axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1) + 1e-12)
    labels = np.asarray(data.scores, dtype=np.int64)
    return {
        "main_metric": "cosine_ap",
        "cosine_ap": 100 * float(average_precision_score(labels, cosine)),
        "cosine_accuracy": 100 * best_accuracy(cosine, labels),
        "n_examples": len(labels),
    }
