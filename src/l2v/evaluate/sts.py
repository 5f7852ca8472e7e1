"""Semantic textual similarity. Following MTEB's STS protocol: the main score is the Spearman correlation
(x100) between the cosine similarity of the two sentences' embeddings and the gold score."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from .data import read_sts


def evaluate_sts(model, path, instruction: str = "") -> dict:
    data = read_sts(path)
    left = model.encode(data.sentences1, instruction)
    right = model.encode(data.sentences2, instruction)
    cosine = (left * right).sum(axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1) + 1e-12)
    gold = np.asarray(data.scores, dtype=np.float64)
    return {
        "main_metric": "cosine_spearman",
        "cosine_spearman": 100 * float(spearmanr(cosine, gold).statistic),
        "cosine_pearson": 100 * float(pearsonr(cosine, gold).statistic),
        "n_examples": len(gold),
    }
