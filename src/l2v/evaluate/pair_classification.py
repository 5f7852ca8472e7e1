"""Pair classification (MRPC). Following MTEB: average precision (x100) of the cosine similarity as the score
for the positive class; also the best accuracy over thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from .data import read_pairs_with_labels
from .sts import pair_cosines


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best accuracy of "positive if score >= t" over thresholds t; tied scores are never split."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    positives_above = np.cumsum(sorted_labels)  # true positives when the first i+1 are called positive
    negatives_total = (1 - labels).sum()
    negatives_above = np.arange(1, len(labels) + 1) - positives_above
    correct = positives_above + (negatives_total - negatives_above)
    # only cut where the next score differs (or after the last)
    valid = np.append(sorted_scores[:-1] != sorted_scores[1:], True)
    best = correct[valid].max() if valid.any() else 0
    return float(max(best, negatives_total) / len(labels))


def evaluate_pair_classification(model, path, instruction: str = "") -> dict:
    data = read_pairs_with_labels(path)
    cosine = pair_cosines(model, data.sentences1, data.sentences2, instruction)
    labels = np.asarray(data.scores, dtype=np.int64)
    return {
        "main_metric": "cosine_ap",
        "cosine_ap": 100 * float(average_precision_score(labels, cosine)),
        "cosine_accuracy": 100 * best_accuracy(cosine, labels),
        "n_examples": len(labels),
    }
