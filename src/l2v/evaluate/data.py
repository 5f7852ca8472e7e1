"""Readers for the evaluation formats. A malformed file is an :class:`InputFileError` naming the file and line.

Formats (UTF-8, first line a header, one TAB between fields, no quoting):
  STS                  sentence1, sentence2, score
  classification       text, label
  pair classification  sentence1, sentence2, label (0/1)
  retrieval            a BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
                       qrels/<split>.tsv (query-id, corpus-id, score)
  word level           JSONL, one sentence a line: {"tokens": [...], "pos": [...], "chunk": [...], "ner": [...]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputFileError
from ..fileio import iter_json_records, read_lines


def read_tsv(path: str | Path, columns: list[str]) -> list[list[str]]:
    """The ``columns`` of a headed TSV, in that order (other columns are ignored); errors name the line."""
    path = Path(path)
    lines = read_lines(path)
    if not lines:
        raise InputFileError(f"{path}: empty file; expected a header line: {chr(9).join(columns)}")
    header = lines[0].split("\t")
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputFileError(f"{path}: line 1: header {header} has no column {missing[0]!r} (needs {columns})")
    index = [header.index(c) for c in columns]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise InputFileError(f"{path}: line {number}: expected {len(header)} TAB-separated fields, found {len(fields)}")
        rows.append([fields[i] for i in index])
    if not rows:
        raise InputFileError(f"{path}: no data rows after the header")
    return rows


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputFileError(f"{path}: line {line}: {column} {value!r} is not a number") from None


@dataclass
class PairsWithScores:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]


def read_sts(path: str | Path) -> PairsWithScores:
    path = Path(path)
    rows = read_tsv(path, ["sentence1", "sentence2", "score"])
    scores = [_number(r[2], path, i + 2, "score") for i, r in enumerate(rows)]
    return PairsWithScores([r[0] for r in rows], [r[1] for r in rows], scores)


def read_pairs_with_labels(path: str | Path) -> PairsWithScores:
    path = Path(path)
    rows = read_tsv(path, ["sentence1", "sentence2", "label"])
    labels = []
    for i, r in enumerate(rows):
        if r[2] not in ("0", "1"):
            raise InputFileError(f"{path}: line {i + 2}: label must be 0 or 1, got {r[2]!r}")
        labels.append(int(r[2]))
    return PairsWithScores([r[0] for r in rows], [r[1] for r in rows], labels)


def read_labelled_texts(path: str | Path) -> tuple[list[str], list[str]]:
    rows = read_tsv(path, ["text", "label"])
    return [r[0] for r in rows], [r[1] for r in rows]


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    records = []
    for number, record in iter_json_records(path, skip_blank=True):
        missing = [key for key in required if key not in record]
        if missing:
            raise InputFileError(f"{path}: line {number} has no {missing[0]!r} field")
        records.append(record)
    if not records:
        raise InputFileError(f"{path}: no records")
    return records


@dataclass
class RetrievalData:
    corpus: dict[str, str]  # doc id -> "title text" (BEIR convention: title and text joined by a space)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def read_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    folder = Path(folder)
    corpus = {}
    for record in read_jsonl(folder / "corpus.jsonl", ("_id", "text")):
        title = (record.get("title") or "").strip()
        corpus[str(record["_id"])] = f"{title} {record['text']}".strip() if title else record["text"]
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    rows = read_tsv(qrels_path, ["query-id", "corpus-id", "score"])
    qrels: dict[str, dict[str, int]] = {}
    for i, (query_id, doc_id, score) in enumerate(rows, start=2):
        if query_id not in queries:
            raise InputFileError(f"{qrels_path}: line {i}: query-id {query_id!r} is not in queries.jsonl")
        if doc_id not in corpus:
            raise InputFileError(f"{qrels_path}: line {i}: corpus-id {doc_id!r} is not in corpus.jsonl")
        qrels.setdefault(query_id, {})[doc_id] = int(_number(score, qrels_path, i, "score"))
    return RetrievalData(corpus, {q: queries[q] for q in qrels}, qrels)


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: dict[str, list[str]]


def read_conll_jsonl(path: str | Path, tag_names: tuple[str, ...] = ("pos", "chunk", "ner")) -> list[TaggedSentence]:
    path = Path(path)
    sentences = []
    for number, record in enumerate(read_jsonl(path, ("tokens",)), start=1):
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens) or not tokens:
            raise InputFileError(f"{path}: record {number}: 'tokens' must be a non-empty list of strings")
        tags = {}
        for name in tag_names:
            if name in record:
                if len(record[name]) != len(tokens):
                    raise InputFileError(f"{path}: record {number}: {len(record[name])} {name} tags for {len(tokens)} tokens")
                tags[name] = [str(t) for t in record[name]]
        sentences.append(TaggedSentence(tokens, tags))
    return sentences
