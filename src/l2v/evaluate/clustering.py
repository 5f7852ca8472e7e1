"""Clustering, following MTEB: mini-batch k-means with k = the number of gold labels (batch size 500) on the
embeddings, V-measure (x100) against the labels; the mean and standard deviation over several seeds."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import v_measure_score

from .data import read_labelled_texts


def evaluate_clustering(model, path, instruction: str = "", seeds: int = 5) -> dict:
    texts, labels = read_labelled_texts(path)
    x = model.encode(texts, instruction)
    k = len(set(labels))
    scores = []
    for seed in range(seeds):
        kmeans = MiniBatchKMeans(n_clusters=k, batch_size=500, n_init="auto", random_state=seed)
        scores.append(v_measure_score(labels, kmeans.fit_predict(x)))
    scores = np.array(scores) * 100
    return {"main_metric": "v_measure", "v_measure": float(scores.mean()), "v_measure_std": float(scores.std()),
            "n_examples": len(texts), "n_clusters": k, "seeds": seeds}
