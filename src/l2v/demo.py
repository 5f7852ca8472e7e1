"""The first thing a user runs: what LLM2Vec does, on shipped sentences.

The same queries and paraphrase pairs go through the causal decoder, the same decoder made bidirectional but
untrained, and the trained LLM2Vec encoder: the nearest sentence of each query, and for each paraphrase pair
the margin between the pair's similarity and the mean similarity of its first sentence to the other sentences
(positive: the encoder tells a paraphrase from an unrelated sentence).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

DEFAULT_MODELS = ("smollm2-135m@causal", "smollm2-135m", "smollm2-135m-l2v-sup")
LABELS = {"smollm2-135m@causal": "causal decoder (untrained)", "smollm2-135m": "bidirectional (untrained)",
          "smollm2-135m-l2v-sup": "LLM2Vec encoder (MNTP + supervised)"}


@dataclass
class ModelResult:
    spec: str
    label: str
    description: str
    seconds: float
    neighbours: list[list[tuple[float, int]]]  # per query: (cosine, sentence index), best first
    margins: list[float]  # per paraphrase pair
    hits: int  # queries whose nearest sentence belongs to the pair they ask about


@dataclass
class DemoResult:
    sentences: list[str]
    queries: list[str]
    answers: list[int]  # the pair each query asks about
    models: list[ModelResult] = field(default_factory=list)


def demo_data() -> tuple[list[str], list[str], list[int]]:
    data = resources.files("l2v") / "data"
    sentences = [line for line in (data / "demo_sentences.txt").read_text(encoding="utf-8").splitlines() if line]
    queries, answers = [], []
    for line in (data / "demo_queries.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            query, _, pair = line.partition("\t")
            queries.append(query)
            answers.append(int(pair))
    return sentences, queries, answers


def run_demo(models: list[str] | tuple[str, ...] = DEFAULT_MODELS, pooling: str | None = None, top_k: int = 2) -> DemoResult:
    """Encode the demo sentences and queries with each model (``NAME[@causal]``)."""
    from .encoder import Encoder
    from .evaluate.runner import parse_model_spec

    sentences, queries, answers = demo_data()
    result = DemoResult(sentences, queries, answers)
    for spec in models:
        name, options = parse_model_spec(spec)
        start = time.perf_counter()
        encoder = Encoder.from_pretrained(name, **{"pooling": pooling, **options})
        corpus, query_vectors = encoder.encode(sentences), encoder.encode(queries)
        seconds = time.perf_counter() - start
        scores = query_vectors @ corpus.T
        neighbours = [[(float(row[i]), int(i)) for i in row.argsort()[::-1][:top_k]] for row in scores]
        similarity = corpus @ corpus.T
        margins = []
        for i in range(0, len(sentences) - 1, 2):
            others = [similarity[i, j] for j in range(len(sentences)) if j not in (i, i + 1)]
            margins.append(float(similarity[i, i + 1] - np.mean(others)))
        hits = sum(near[0][1] // 2 == pair for near, pair in zip(neighbours, answers))
        info = encoder.info()
        description = (f"{info['family']}, {info['parameters']:,} parameters, attention "
                       f"{'bidirectional' if info['bidirectional_verified'] else 'causal'}, pooling {info['pooling']}")
        result.models.append(ModelResult(spec, LABELS.get(spec, spec), description, seconds, neighbours, margins, hits))
        del encoder
    return result
