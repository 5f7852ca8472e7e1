"""Retrieval over a BEIR folder: exact cosine search over the whole corpus, queries optionally with an
instruction (documents never get one). Metrics from pytrec_eval, the implementation MTEB and BEIR use:
nDCG@10 (main), recall@100 and MRR@10 (x100)."""

from __future__ import annotations

import numpy as np

from .data import read_beir


def exact_search(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, indices) by cosine for each query; embeddings are expected L2-normalised."""
    k = min(k, corpus.shape[0])
    all_scores, all_indices = [], []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start: start + chunk] @ corpus.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        all_indices.append(np.take_along_axis(top, order, axis=1))
        all_scores.append(np.take_along_axis(top_scores, order, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_indices)


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict:
    import pytrec_eval  # imported here: training's dev evaluation needs none of it

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "recip_rank"})
    # MRR@10: pytrec_eval's recip_rank over the run cut to its top 10
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    per_query = evaluator.evaluate(run)
    per_query_10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    queries = list(qrels)
    return {
        "ndcg_at_10": 100 * float(np.mean([per_query[q]["ndcg_cut_10"] for q in queries])),
        "recall_at_100": 100 * float(np.mean([per_query[q]["recall_100"] for q in queries])),
        "mrr_at_10": 100 * float(np.mean([per_query_10[q]["recip_rank"] for q in queries])),
    }


def evaluate_retrieval(model, folder, split: str = "test", query_instruction: str = "", top_k: int = 100) -> dict:
    data = read_beir(folder, split)
    doc_ids = list(data.corpus)
    query_ids = list(data.queries)
    corpus = model.encode([data.corpus[d] for d in doc_ids], "")
    queries = model.encode([data.queries[q] for q in query_ids], query_instruction)
    scores, indices = exact_search(queries, corpus, top_k)
    run = {q: {doc_ids[j]: float(s) for j, s in zip(indices[i], scores[i])} for i, q in enumerate(query_ids)}
    metrics = retrieval_metrics(data.qrels, run)
    return {"main_metric": "ndcg_at_10", **metrics, "n_examples": len(query_ids), "corpus_size": len(doc_ids)}
