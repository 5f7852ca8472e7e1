"""Data for Recursive ROAR: SST (binary, from PTB trees) and bAbI tasks 1 and 2 (en-10k), as token-id sequences.

SST: the root label of each tree, neutral (2) dropped, 0-1 negative and 3-4 positive; sentences of more than
5 tokens are kept, as in the paper (train 6,579 / validation 848 / test 1,776). bAbI tasks 1 and 2 (en-10k): each question
with the statements of its story before it; the 10,000 training questions are split 85/15 with a seed into
train and validation; 1,000 test questions. Tokens are lower-cased; the vocabulary is built from the training
split, with ``[PAD]`` (0), ``[UNK]`` (1) and ``[MASK]`` (2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputFileError, L2VError

PAD, UNK, MASK = 0, 1, 2
SPECIALS = ["[PAD]", "[UNK]", "[MASK]"]
BABI_FILES = {
    "babi-1": "en-10k_qa1_single-supporting-fact",
    "babi-2": "en-10k_qa2_two-supporting-facts",
}
DATASETS = ("sst", *BABI_FILES)


@dataclass
class Split:
    tokens: list[list[int]]  # the sequence that is masked (the sentence, or the bAbI story)
    labels: np.ndarray
    questions: list[list[int]] | None = None  # bAbI: the question (never masked)

    def __len__(self) -> int:
        return len(self.tokens)

    def sample(self, count: int, seed: int = 0) -> "Split":
        """A seeded sample of ``count`` examples, kept in file order (the whole split when ``count`` covers it). Not the
        first ``count``: a split's file order can be skewed (the first 500 SST test sentences are 93 % one label).
        Always a copy."""
        keep = (np.arange(len(self)) if count >= len(self)
                else np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False)))
        return Split([self.tokens[i] for i in keep], np.asarray(self.labels)[keep],
                     [self.questions[i] for i in keep] if self.questions else None)


@dataclass
class RoarData:
    name: str
    vocabulary: list[str]
    classes: list[str]
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return self.splits["train"].questions is not None

    def signature(self) -> str:
        """sha256 of the vocabulary, classes and every split's token ids, labels and questions: a cached ROAR run is
        tied to the exact data it was computed on."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps([self.name, self.vocabulary, self.classes]).encode())
        for name, split in self.splits.items():
            digest.update(name.encode())
            for rows in (split.tokens, split.questions or []):
                digest.update(np.asarray([len(r) for r in rows], dtype=np.int64).tobytes())
                digest.update(np.asarray([t for r in rows for t in r], dtype=np.int64).tobytes())
            digest.update(np.asarray(split.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def limit(self, train: int | None = None, other: int | None = None) -> "RoarData":
        """A smaller copy (a seeded sample of each split, see ``Split.sample``), for micro runs and tests."""
        splits = {name: split.sample((train if name == "train" else other) or len(split)) for name, split in self.splits.items()}
        return RoarData(self.name, self.vocabulary, self.classes, splits)


class Vocabulary:
    def __init__(self, words: list[str]):
        self.words = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.index = {w: i for i, w in enumerate(self.words)}

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, UNK) for t in tokens]


_LEAF = re.compile(r"\((\d) ([^()]+)\)")


def read_sst_trees(path: Path, lower: bool = True) -> list[tuple[int, list[str]]]:
    if not path.exists():
        raise InputFileError(f"SST file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if not re.match(r"^\(\d ", line) or line.count("(") != line.count(")"):
            raise InputFileError(f"{path}: line {number} is not a PTB tree")
        rows.append((int(line[1]), [word.lower() if lower else word for _, word in _LEAF.findall(line)]))
    if not rows:
        raise InputFileError(f"{path}: no trees")
    return rows


def load_sst(folder: Path, min_tokens: int = 6) -> RoarData:
    raw = {}
    for split, file in (("train", "train.txt"), ("validation", "dev.txt"), ("test", "test.txt")):
        raw[split] = [(int(label > 2), tokens) for label, tokens in read_sst_trees(folder / file)
                      if label != 2 and len(tokens) >= min_tokens]
    vocabulary = Vocabulary([t for _, tokens in raw["train"] for t in tokens])
    splits = {name: Split([vocabulary.encode(t) for _, t in rows], np.array([label for label, _ in rows], dtype=np.int64))
              for name, rows in raw.items()}
    return RoarData("sst", vocabulary.words, ["negative", "positive"], splits)


def load_sst_texts(folder: Path, min_tokens: int = 6) -> dict[str, tuple[list[str], np.ndarray]]:
    """The same binary SST sentences as ``load_sst``, as text (tokens joined by spaces, case kept), for encoders."""
    result = {}
    for split, file in (("train", "train.txt"), ("validation", "dev.txt"), ("test", "test.txt")):
        rows = [(int(label > 2), " ".join(tokens)) for label, tokens in read_sst_trees(folder / file, lower=False)
                if label != 2 and len(tokens) >= min_tokens]
        result[split] = ([text for _, text in rows], np.array([label for label, _ in rows], dtype=np.int64))
    return result


def _babi_words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.?]", text.lower())


def read_babi(path: Path) -> list[tuple[list[str], list[str], str]]:
    """(story tokens, question tokens, answer) per question."""
    if not path.exists():
        raise InputFileError(f"bAbI file not found: {path}")
    questions, story = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        index, _, text = line.partition(" ")
        if not index.isdigit():
            raise InputFileError(f"{path}: line {number} does not start with a line number")
        if int(index) == 1:
            story = []
        if "\t" in text:
            parts = text.split("\t")
            if len(parts) < 2 or not parts[1].strip():
                raise InputFileError(f"{path}: line {number} is a question without an answer")
            questions.append(([w for sentence in story for w in sentence], _babi_words(parts[0]), parts[1].strip().lower()))
        else:
            story.append(_babi_words(text))
    if not questions:
        raise InputFileError(f"{path}: no questions")
    return questions


def load_babi(folder: Path, task: str, seed: int = 0, validation_fraction: float = 0.15) -> RoarData:
    if task not in BABI_FILES:
        raise L2VError(f"unknown bAbI task {task!r}; choose one of: {', '.join(BABI_FILES)}")
    stem = BABI_FILES[task]
    train_rows = read_babi(folder / f"{stem}_train.txt")
    test_rows = read_babi(folder / f"{stem}_test.txt")
    order = np.random.default_rng(seed).permutation(len(train_rows))
    cut = int(round(len(train_rows) * (1 - validation_fraction)))
    rows = {"train": [train_rows[i] for i in order[:cut]], "validation": [train_rows[i] for i in order[cut:]], "test": test_rows}
    vocabulary = Vocabulary([w for story, question, _ in rows["train"] for w in story + question])
    classes = sorted({answer for _, _, answer in train_rows})
    class_index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for name, items in rows.items():
        unknown = [a for _, _, a in items if a not in class_index]
        if unknown:
            raise InputFileError(f"{task} {name}: answer {unknown[0]!r} never occurs in training")
        splits[name] = Split([vocabulary.encode(s) for s, _, _ in items], np.array([class_index[a] for _, _, a in items]),
                             [vocabulary.encode(q) for _, q, _ in items])
    return RoarData(task, vocabulary.words, classes, splits)


def load(name: str, data_root: str | Path, seed: int = 0) -> RoarData:
    root = Path(data_root)
    if name == "sst":
        return load_sst(root / "sst_trees")
    if name in BABI_FILES:
        return load_babi(root / "babi", name, seed=seed)
    raise L2VError(f"unknown ROAR dataset {name!r}; choose one of: {', '.join(DATASETS)}")
