"""Semantic textual similarity. Following MTEB's STS protocol: the main score is the Spearman correlation
(x100) between the cosine similarity of the two sentences' embeddings and the gold score."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from .data import read_sts


def pair_cosines(model, first: list[str], second: list[str], instruction: str = "") -> np.ndarray:
    """Cosine similarity of each (first[i], second[i]) pair of texts."""
    left = model.encode(first, instruction)
    right = model.encode(second, instruction)
    return (left * right).sum(axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1) + 1e-12)


def evaluate_sts(model, path, instruction: str = "") -> dict:
    data = read_sts(path)
    cosine = pair_cosines(model, data.sentences1, data.sentences2, instruction)
    gold = np.asarray(data.scores, dtype=np.float64)
    return {
        "main_metric": "cosine_spearman",
        "cosine_spearman": 100 * float(spearmanr(cosine, gold).statistic),
        "cosine_pearson": 100 * float(pearsonr(cosine, gold).statistic),
        "n_examples": len(gold),
    }
