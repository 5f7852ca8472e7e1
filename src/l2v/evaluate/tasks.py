"""The task suite: the shared data sets by family, plus any user file in a documented format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import L2VError
from .classification import evaluate_classification
from .clustering import evaluate_clustering
from .pair_classification import evaluate_pair_classification
from .retrieval import evaluate_retrieval
from .sts import evaluate_sts
from .word_level import evaluate_word_level

FAMILIES = ("sts", "classification", "pair_classification", "retrieval", "clustering", "word_level")

# Tasks of the suite that MTEB has under another name: --instructions gives them the LLM2Vec authors' instruction
# for that MTEB task (l2v/data/llm2vec_mteb_instructions.json).
MTEB_NAMES = {"stsb": "STSBenchmark", "sickr": "SICK-R", "scifact": "SciFact", "emotion": "EmotionClassification"}
# Instructions for the other tasks, in the same style (the authors' list has none for them).
INSTRUCTIONS = {
    "sts": "Retrieve semantically similar text:",
    "pair_classification": "Retrieve text that is semantically similar to the given text:",
    "sst2": "Classify the sentiment expressed in the given movie review text:",
    "sst5": "Classify the sentiment expressed in the given movie review text:",
    "mr": "Classify the sentiment expressed in the given movie review text:",
    "cr": "Classify the sentiment expressed in the given customer review:",
    "subj": "Classify the given sentence as subjective or objective:",
    "mpqa": "Classify the opinion polarity of the given phrase:",
    "trec": "Classify the type of answer the given question asks for:",
}


_HASHES: dict[tuple, str] = {}


def _content_hash(path: Path) -> str | None:
    """sha256 of a file (or of a folder's files), memoised per (path, size, mtime) within a process."""
    import hashlib

    from ..fileio import sha256_file

    if not path.exists():
        return None
    members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for member in members:
        stat = member.stat()
        key = (str(member), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            _HASHES[key] = sha256_file(member)
        digest.update(str(member.relative_to(path) if path.is_dir() else member.name).encode())
        digest.update(_HASHES[key].encode())
    return digest.hexdigest()


@dataclass
class Task:
    name: str
    family: str
    split: str
    files: list[Path]
    run: Callable = field(repr=False)  # (model, instruction) -> metrics dict
    instruction_key: str = ""

    options: dict = field(default_factory=dict)

    def signature(self) -> str:
        """Files (absolute path and content hash) and protocol options: a finished result is reused only when all
        of them are unchanged. Contents, not modification times: a data folder copied or re-mounted with new
        times still matches."""
        import hashlib
        import json

        files = []
        for path in self.files:
            path = Path(path).resolve()
            files.append([str(path), _content_hash(path)])
        return hashlib.sha256(json.dumps([files, self.options], sort_keys=True, default=str).encode()).hexdigest()[:16]

    def instruction(self, enabled: bool) -> str:
        if not enabled:
            return ""
        from ..llm2vec_format import mteb_instructions

        authors = mteb_instructions().get(MTEB_NAMES.get(self.instruction_key) or MTEB_NAMES.get(self.name, ""))
        return authors or INSTRUCTIONS.get(self.instruction_key) or INSTRUCTIONS.get(self.name) or INSTRUCTIONS.get(self.family, "")


@dataclass
class TaskOptions:
    """Protocol knobs the CLI exposes; the defaults follow MTEB and the LLM2Vec paper."""

    samples_per_label: int | None = 16
    word_train_sentences: int | None = None
    probe_layer: int = -1
    probe_subword: str = "mean"
    probe_read_previous: bool = False

    def word(self) -> dict:
        return {"layer": self.probe_layer, "subword": self.probe_subword, "read_previous": self.probe_read_previous,
                "max_train_sentences": self.word_train_sentences}


def _classification(name, data, train, test, options):
    files = [data / "classification" / train] + ([data / "classification" / test] if test else [])
    return Task(name, "classification", "test" if test else "cross-validation", files,
                lambda m, i, f=files: evaluate_classification(m, f[0], f[1] if len(f) > 1 else None, instruction=i,
                                                              samples_per_label=options.samples_per_label))


def default_tasks(data: Path, options: TaskOptions | None = None) -> list[Task]:
    options = options or TaskOptions()
    data = Path(data)
    word = data / "word_level"
    scifact = data / "retrieval" / "scifact"
    tasks = [
        Task("stsb", "sts", "test", [data / "sts" / "stsb_test.tsv"], lambda m, i: evaluate_sts(m, data / "sts" / "stsb_test.tsv", i)),
        Task("sickr", "sts", "test", [data / "sts" / "sickr_test.tsv"], lambda m, i: evaluate_sts(m, data / "sts" / "sickr_test.tsv", i)),
        _classification("sst2", data, "sst2_train.tsv", "sst2_test.tsv", options),
        _classification("sst5", data, "sst5_train.tsv", "sst5_test.tsv", options),
        _classification("trec", data, "trec_train.tsv", "trec_test.tsv", options),
        _classification("emotion", data, "emotion_train.tsv", "emotion_test.tsv", options),
        _classification("mr", data, "mr.tsv", None, options),
        _classification("cr", data, "cr.tsv", None, options),
        _classification("subj", data, "subj.tsv", None, options),
        _classification("mpqa", data, "mpqa.tsv", None, options),
        Task("mrpc", "pair_classification", "test", [data / "pair_classification" / "mrpc_test.tsv"],
             lambda m, i: evaluate_pair_classification(m, data / "pair_classification" / "mrpc_test.tsv", i)),
        Task("scifact", "retrieval", "test", [scifact / "corpus.jsonl"], lambda m, i: evaluate_retrieval(m, scifact, "test", i)),
        Task("trec_clusters", "clustering", "test", [data / "classification" / "trec_test.tsv"],
             lambda m, i: evaluate_clustering(m, data / "classification" / "trec_test.tsv", i), "trec"),
        Task("emotion_clusters", "clustering", "test", [data / "classification" / "emotion_test.tsv"],
             lambda m, i: evaluate_clustering(m, data / "classification" / "emotion_test.tsv", i), "emotion"),
    ]
    for tag in ("pos", "chunk", "ner"):
        tasks.append(Task(f"conll2003_{tag}", "word_level", "test", [word / "conll2003_train.jsonl", word / "conll2003_test.jsonl"],
                          lambda m, i, t=tag: evaluate_word_level(m, word / "conll2003_train.jsonl", word / "conll2003_test.jsonl",
                                                                  tag=t, **options.word())))
    for task in tasks:
        task.options = dict(options.__dict__)
    return tasks


def user_task(spec: str, options: TaskOptions | None = None) -> Task:
    """``FAMILY:PATH[:PATH2]``: sts:FILE, classification:FILE (k-fold) or classification:TRAIN:TEST,
    pair_classification:FILE, retrieval:BEIR_DIR, clustering:FILE, word_level:TRAIN:TEST[:TAG]."""
    family, _, rest = spec.partition(":")
    parts = [p for p in rest.split(":") if p]
    if family not in FAMILIES or not parts:
        raise L2VError(f"--file {spec!r}: expected FAMILY:PATH with FAMILY one of {', '.join(FAMILIES)}")
    options = options or TaskOptions()
    paths = [Path(p) for p in parts]
    tag = None
    if family == "word_level" and len(parts) == 3:
        tag, paths = parts[2], paths[:2]
    for path in paths:
        if not path.exists():
            raise L2VError(f"--file {spec!r}: {path} not found")
    name = f"{family}:{paths[-1].name}"
    if family == "sts":
        run = lambda m, i: evaluate_sts(m, paths[0], i)  # noqa: E731
    elif family == "classification":
        run = lambda m, i: evaluate_classification(m, paths[0], paths[1] if len(paths) > 1 else None, instruction=i,  # noqa: E731
                                                   samples_per_label=options.samples_per_label)
    elif family == "pair_classification":
        run = lambda m, i: evaluate_pair_classification(m, paths[0], i)  # noqa: E731
    elif family == "retrieval":
        run = lambda m, i: evaluate_retrieval(m, paths[0], "test", i)  # noqa: E731
    elif family == "clustering":
        run = lambda m, i: evaluate_clustering(m, paths[0], i)  # noqa: E731
    else:
        if len(paths) != 2:
            raise L2VError(f"--file {spec!r}: word_level needs TRAIN:TEST[:TAG]")
        run = lambda m, i: evaluate_word_level(m, paths[0], paths[1], tag=tag or "pos", **options.word())  # noqa: E731
    task = Task(name, family, "user", paths, run)
    task.options = dict(options.__dict__)
    return task


def select_tasks(names: list[str], data: Path | None, files: list[str], options: TaskOptions | None = None) -> list[Task]:
    tasks: list[Task] = []
    if names:
        if data is None:
            raise L2VError("--tasks needs --data DIR (the folder with sts/, classification/, ...)")
        if not Path(data).is_dir():
            raise L2VError(f"--data {data}: folder not found")
        available = default_tasks(Path(data), options)
        for name in names:
            chosen = [t for t in available if t.family == name or t.name == name]
            if not chosen:
                known = sorted({t.family for t in available} | {t.name for t in available})
                raise L2VError(f"unknown task {name!r}; choose from: {', '.join(known)}")
            for task in chosen:
                missing = [str(f) for f in task.files if not f.exists()]
                if missing:
                    raise L2VError(f"task {task.name}: data file not found: {missing[0]}")
                if task not in tasks:
                    tasks.append(task)
    for spec in files:
        task = user_task(spec, options)
        taken = {t.name for t in tasks}
        if task.name in taken:  # two user files with the same name in different folders
            task.name = f"{task.name}#{sum(1 for n in taken if n.split('#')[0] == task.name) + 1}"
        tasks.append(task)
    if not tasks:
        raise L2VError("no tasks: pass --tasks (with --data) and/or --file FAMILY:PATH")
    return tasks
