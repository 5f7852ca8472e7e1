"""Training data: texts (MNTP, SimCSE) and (query, positive, negative) triples (supervised), from local files
or Hugging Face dataset names. Everything is validated before training starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError, L2VError
from ..fileio import iter_json_records, read_texts
from .config import DataConfig


@dataclass
class Triple:
    query: str
    positive: str
    negative: str | None = None
    instruction: str = ""
    dataset: str = "default"


def train_files(config: DataConfig) -> list[str]:
    """``data.train`` as a list of files (one path or several)."""
    return [config.train] if isinstance(config.train, str) else list(config.train or [])


def load_texts(config: DataConfig) -> list[str]:
    """The non-empty texts of every ``data.train`` file in order (or of the hub dataset), without those shorter than
    ``min_words`` words, cut to ``max_examples``."""
    if config.train:
        texts = [t for path in train_files(config) for t in read_texts(path, field=config.text_field) if t.strip()]
        source = ", ".join(train_files(config))
    else:
        texts = [t for t in _hub_column(config, config.text_field) if isinstance(t, str) and t.strip()]
        source = config.hub
    if config.min_words:
        texts = [t for t in texts if len(t.split()) >= config.min_words]
    if config.max_examples:
        texts = texts[: config.max_examples]
    if not texts:
        raise InputFileError(f"{source}: no non-empty texts to train on"
                             + (f" with at least {config.min_words} words" if config.min_words else ""))
    return texts


def _triple(record: dict, where: str) -> Triple:
    """One training triple from a record (a JSONL line or a hub row); ``where`` names it in errors. ``negative``,
    ``instruction`` and ``dataset`` may be absent or null; every present field must be a string."""
    for key in ("query", "positive"):
        if key not in record:
            raise InputFileError(f"{where} has no {key!r} field")
    values = {}
    for key, default in (("query", None), ("positive", None), ("negative", None), ("instruction", ""), ("dataset", "default")):
        value = record.get(key)
        if value is None:
            value = default
        elif not isinstance(value, str):
            raise InputFileError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        values[key] = value
    if values["query"] is None or values["positive"] is None:
        raise InputFileError(f"{where}: 'query' and 'positive' must be strings, got null")
    return Triple(**values)


def load_triples(config: DataConfig) -> list[Triple]:
    if config.hub:
        import datasets

        rows = datasets.load_dataset(config.hub, split=config.hub_split)
        triples = [_triple(row, f"dataset {config.hub}: row {number}") for number, row in enumerate(rows, start=1)]
    else:
        triples = [_triple(record, f"{path}: line {number}") for path in map(Path, train_files(config))
                   for number, record in iter_json_records(path, skip_blank=True)]
    if config.max_examples:
        triples = triples[: config.max_examples]
    if not triples:
        raise InputFileError(f"{', '.join(train_files(config)) or config.hub}: no training triples")
    with_negative = {t.negative is not None for t in triples}
    if len(with_negative) > 1:
        raise L2VError(f"{', '.join(train_files(config)) or config.hub}: either every triple has a 'negative' or none does")
    return triples


def _hub_column(config: DataConfig, column: str) -> list:
    import datasets

    rows = datasets.load_dataset(config.hub, split=config.hub_split)
    if column not in rows.column_names:
        raise L2VError(f"dataset {config.hub}: no column {column!r} (columns: {rows.column_names})")
    return rows[column]
