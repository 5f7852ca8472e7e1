"""Training data: texts (MNTP, SimCSE) and (query, positive, negative) triples (supervised), from local files
or Hugging Face dataset names. Everything is validated before training starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, L2VError
from ..evaluate.data import read_jsonl
from ..fileio import read_texts
from .config import DataConfig


@dataclass
class Triple:
    query: str
    positive: str
    negative: str | None = None
    instruction: str = ""
    dataset: str = "default"


def load_texts(config: DataConfig) -> list[str]:
    if config.train:
        texts = [t for t in read_texts(config.train, field=config.text_field) if t.strip()]
        source = config.train
    else:
        texts = [t for t in _hub_column(config, config.text_field) if isinstance(t, str) and t.strip()]
        source = config.hub
    if config.max_examples:
        texts = texts[: config.max_examples]
    if not texts:
        raise InputFileError(f"{source}: no non-empty texts to train on")
    return texts


def load_triples(config: DataConfig) -> list[Triple]:
    if config.hub:
        import datasets

        rows = datasets.load_dataset(config.hub, split=config.hub_split)
        triples = [Triple(r["query"], r["positive"], r.get("negative"), r.get("instruction", ""), r.get("dataset", "default")) for r in rows]
    else:
        path = Path(config.train)
        triples = []
        for number, record in enumerate(read_jsonl(path, ("query", "positive")), start=1):
            if not isinstance(record["query"], str) or not isinstance(record["positive"], str):
                raise InputFileError(f"{path}: record {number}: 'query' and 'positive' must be strings")
            negative = record.get("negative")
            if negative is not None and not isinstance(negative, str):
                raise InputFileError(f"{path}: record {number}: 'negative' must be a string")
            triples.append(Triple(record["query"], record["positive"], negative, str(record.get("instruction", "")),
                                  str(record.get("dataset", "default"))))
    if config.max_examples:
        triples = triples[: config.max_examples]
    if not triples:
        raise InputFileError(f"{config.train or config.hub}: no training triples")
    with_negative = {t.negative is not None for t in triples}
    if len(with_negative) > 1:
        raise L2VError(f"{config.train or config.hub}: either every triple has a 'negative' or none does")
    return triples


def _hub_column(config: DataConfig, column: str) -> list:
    import datasets

    rows = datasets.load_dataset(config.hub, split=config.hub_split)
    if column not in rows.column_names:
        raise L2VError(f"dataset {config.hub}: no column {column!r} (columns: {rows.column_names})")
    return rows[column]
