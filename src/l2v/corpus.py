"""The corpus job: embed a large file into shards, resumably, on one process or many; and a quick exact search.

``embed_corpus`` reads ``.txt`` (one text per line), ``.jsonl`` (``{"text": ..., "id": ...}`` per line) or
``.parquet`` (columns ``text`` and optionally ``id``) as a stream, in two passes: the first checks every record
(so bad input is an error naming the line *before* anything is computed) and fingerprints the file, the second
encodes. Memory stays constant: one shard of texts at a time.

Output folder::

    job.json              what the shards are made of (model, input fingerprint, shard size, dtype, ...)
    shard-00000.npz       ``embeddings`` (N x dim, float32 or float16) and ``ids``, one file per shard
    ...
    manifest.json         written when every shard exists: shard list, counts, dimension

Every file is written to a temporary name and renamed, so a killed job leaves whole shards or none; running
the same command again skips finished shards and the result equals an uninterrupted run (an embedding does
not depend on its batch). A folder made by a different job (other model, input or settings) is refused.

Scale-out: under ``torchrun --nproc_per_node N`` (or any launcher setting ``RANK`` and ``WORLD_SIZE``) rank r
takes shards r, r+N, r+2N, ...; the last rank to finish writes the manifest. No process group is needed.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from typing import Callable

from .distributed import current_process
from .errors import InputFileError, L2VError
from .fileio import atomic_path, iter_json_records, iter_lines, weights_signature, write_json_atomic

JOB_FILE, MANIFEST_FILE = "job.json", "manifest.json"
FORMATS = (".txt", ".jsonl", ".parquet")
DTYPES = ("float32", "float16")


@dataclass
class CorpusJob:
    model: str
    input: str
    output: str
    shard_size: int = 10_000
    dtype: str = "float32"
    text_field: str = "text"
    id_field: str = "id"
    instruction: str | None = None
    normalize: bool = True
    max_length: int | None = None
    batch_size: int = 32
    truncate: bool = True  # False: a text over max_length tokens is an error naming its record
    device: str | None = None  # default: this rank's GPU (LOCAL_RANK) if there is one, else the CPU
    compute_dtype: str = "float32"

    def check(self) -> None:
        if self.shard_size < 1:
            raise L2VError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.dtype not in DTYPES:
            raise L2VError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if Path(self.input).suffix.lower() not in FORMATS:
            raise InputFileError(f"{self.input}: unsupported input format {Path(self.input).suffix or '(no extension)'!r}; "
                                 f"use {', '.join(FORMATS)}")
        if not Path(self.input).exists():
            raise InputFileError(f"input file not found: {self.input}")
        if Path(self.input).is_dir():
            raise InputFileError(f"input path is a folder, not a file: {self.input}")


# ---------------------------------------------------------------------- reading, as a stream
def iter_records(job: CorpusJob, digest=None) -> Iterator[tuple[object, str]]:
    """(id, text) for every record, checked; ids are the 0-based record number unless the input has ids."""
    path = Path(job.input)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for number, line in iter_lines(path, digest):
            if line == "":
                raise InputFileError(f"{path}: line {number} is empty (every line is a text to embed)")
            yield number - 1, line
    elif suffix == ".jsonl":
        index = 0
        for number, record in iter_json_records(path, digest, expect=f"a JSON object with {job.text_field!r}"):
            yield _checked(record.get(job.id_field, _NO_ID(index)), record, job, f"{path}: line {number}")
            index += 1
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is a dependency
            raise L2VError("reading .parquet needs pyarrow: pip install pyarrow") from None
        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # noqa: BLE001
            raise InputFileError(f"{path}: not a readable parquet file ({error})") from None
        columns = parquet.schema_arrow.names
        if job.text_field not in columns:
            raise InputFileError(f"{path}: no {job.text_field!r} column (columns: {', '.join(columns)})")
        wanted = [job.text_field] + ([job.id_field] if job.id_field in columns else [])
        if digest is not None:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        index = 0
        for batch in parquet.iter_batches(columns=wanted, batch_size=4096):
            for record in batch.to_pylist():
                value = record.get(job.id_field)
                yield _checked(_NO_ID(index) if value is None and job.id_field not in wanted else value, record, job,
                               f"{path}: row {index}")
                index += 1


INT64 = (-(2**63), 2**63 - 1)


class _NO_ID(int):
    """A record number standing in for a missing id (so the checking pass can tell the two apart)."""


def _checked(record_id, record: dict, job: CorpusJob, where: str) -> tuple[object, str]:
    if job.text_field not in record:
        raise InputFileError(f"{where} has no {job.text_field!r} field")
    text = record[job.text_field]
    if not isinstance(text, str):
        raise InputFileError(f"{where}: {job.text_field!r} must be a string, got {type(text).__name__}")
    if text == "":
        raise InputFileError(f"{where}: {job.text_field!r} is an empty string")
    if isinstance(record_id, bool) or not isinstance(record_id, (int, str)):
        raise InputFileError(f"{where}: {job.id_field!r} must be a string or an integer, got {type(record_id).__name__}")
    if isinstance(record_id, int) and not INT64[0] <= record_id <= INT64[1]:
        raise InputFileError(f"{where}: {job.id_field!r} {record_id} does not fit in 64 bits")
    return record_id, text


def scan(job: CorpusJob) -> dict:
    """The checking pass: record count, id kind, duplicate ids, and a fingerprint of the file's bytes.

    Ids come from the id field on every record or on none (then the record number); integers and strings are not
    mixed; a repeated id is an error (the check keeps an 8-byte hash per record)."""
    digest = hashlib.sha256()
    count, kinds, seen = 0, set(), set()
    with_id = None
    for record_id, _ in iter_records(job, digest):
        has_id = not isinstance(record_id, _NO_ID)
        if with_id is None:
            with_id = has_id
        elif has_id != with_id:
            raise InputFileError(f"{job.input}: record {count} {'has' if has_id else 'lacks'} an {job.id_field!r} field "
                                 f"while record 0 {'has' if with_id else 'lacks'} one; give every record an id, or none")
        kinds.add("int" if isinstance(record_id, int) else "str")
        if with_id:
            key = hashlib.blake2b(repr(record_id).encode(), digest_size=8).digest()
            if key in seen:
                raise InputFileError(f"{job.input}: record {count} repeats the id {record_id!r}")
            seen.add(key)
        count += 1
    if count == 0:
        raise InputFileError(f"{job.input}: no records to embed")
    if kinds == {"int", "str"}:
        raise InputFileError(f"{job.input}: ids mix integers and strings; use one kind")
    return {"records": count, "id_kind": "int" if kinds == {"int"} else "str", "input_sha256": digest.hexdigest()}


# ---------------------------------------------------------------------- the job
def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


def _rank_and_world(rank: int | None, world: int | None) -> tuple[int, int]:
    process = current_process()
    rank = process.rank if rank is None else rank
    world = process.world if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise L2VError(f"rank {rank} is not within a world of {world} processes")
    return rank, world


def _job_record(job: CorpusJob, scanned: dict, encoder) -> dict:
    from . import __version__

    return {
        "model": job.model, "encoder_config": asdict(encoder.config) | {"l2v_version": None},
        "weights": _weights_signature(job.model, encoder),
        "input": str(Path(job.input).resolve()), "input_sha256": scanned["input_sha256"], "records": scanned["records"],
        "id_kind": scanned["id_kind"], "shard_size": job.shard_size, "shards": math.ceil(scanned["records"] / job.shard_size),
        "dtype": job.dtype, "compute_dtype": job.compute_dtype, "text_field": job.text_field, "id_field": job.id_field, "instruction": job.instruction,
        "normalize": job.normalize, "dimension": encoder.dimension, "l2v_version": __version__,
    }


def _weights_signature(model: str, encoder) -> str:
    """Names, sizes and modification times of the weight files (the model folder, its base, its adapters), so shards
    of a model retrained in place are not mixed with new ones."""
    from .registry import resolve

    folders = {Path(resolve(model).location)}
    if encoder.config.base_model not in (".", model):
        folders.add(Path(resolve(encoder.config.base_model).location))
    folders |= {Path(f) for f in encoder.merged_adapter_folders}
    entries = [(str(folder), weights_signature(folder) if folder.is_dir() else "hub") for folder in sorted(folders)]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _check_same_job(existing: dict, wanted: dict, folder: Path) -> None:
    for key in wanted:
        if key in ("l2v_version", "input"):
            continue
        if existing.get(key) != wanted[key]:
            raise L2VError(f"{folder} holds shards of a different job ({key}: {existing.get(key)!r} there, {wanted[key]!r} now); "
                           "use another --output, or delete the folder to start over")


def embed_corpus(job: CorpusJob, rank: int | None = None, world: int | None = None, encoder=None,
                 show_progress: bool = True, log=print, on_shard_written: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) ``job``; returns the manifest if this process finished the last shard, else a status.
    ``on_shard_written(index)`` is called after each shard file is in place."""
    from tqdm.auto import tqdm

    from .encoder import Encoder

    job.check()
    rank, world = _rank_and_world(rank, world)
    output = Path(job.output)
    scanned = scan(job)  # bad input fails here, before any model is loaded or shard written
    if encoder is None:
        device = job.device
        if device is None:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{current_process().local_rank % torch.cuda.device_count()}"  # one GPU per rank
        encoder = Encoder.from_pretrained(job.model, max_length=job.max_length, device=device, dtype=job.compute_dtype)
    record = _job_record(job, scanned, encoder)
    output.mkdir(parents=True, exist_ok=True)
    if (output / JOB_FILE).exists():
        _check_same_job(json.loads((output / JOB_FILE).read_text(encoding="utf-8")), record, output)
    else:
        write_json_atomic(record, output / JOB_FILE)
    n_shards = record["shards"]
    mine = [i for i in range(n_shards) if i % world == rank]
    for stale in output.glob(".shard-*.tmp"):  # a temporary file left by a killed writer of one of my shards
        index = int(stale.name.split("-")[1].split(".")[0])
        if index % world == rank:
            stale.unlink(missing_ok=True)
    todo = {i for i in mine if not (output / _shard_name(i)).exists()}
    done_before = len(mine) - len(todo)
    if done_before and rank == 0:
        log(f"resuming: {done_before} of {len(mine)} shards already written")
    progress = tqdm(total=len(mine), initial=done_before, desc=f"shards (rank {rank})" if world > 1 else "shards",
                    disable=not show_progress)
    ids: list = []
    texts: list[str] = []
    truncated = 0
    begin = time.perf_counter()
    if todo:
        last = max(todo)
        for position, (record_id, text) in enumerate(iter_records(job)):
            shard = position // job.shard_size
            if shard > last:
                break
            if shard not in todo:
                continue
            ids.append(record_id)
            texts.append(text)
            end_of_shard = position == min((shard + 1) * job.shard_size, scanned["records"]) - 1
            if end_of_shard:
                tokenized = encoder.tokenize(texts, instruction=job.instruction)
                if not job.truncate:
                    for offset, item in enumerate(tokenized):
                        if item.truncated:
                            raise L2VError(f"record {shard * job.shard_size + offset} (id {ids[offset]!r}) is longer than "
                                           f"{encoder.config.max_length} tokens (drop --no-truncate to cut it)")
                truncated += sum(item.truncated for item in tokenized)
                vectors = encoder.embed_tokenized(tokenized, batch_size=job.batch_size, normalize=job.normalize).numpy()
                stored = vectors.astype(job.dtype)
                if not np.isfinite(stored).all():
                    raise L2VError(f"shard {shard}: embeddings overflow {job.dtype} (unnormalised values too large); "
                                   "use --dtype float32 or --normalize")
                id_array = np.asarray(ids, dtype=np.int64) if record["id_kind"] == "int" else np.asarray([str(i) for i in ids])
                _write_shard(output / _shard_name(shard), stored, id_array)
                ids, texts = [], []
                progress.update(1)
                if on_shard_written is not None:
                    on_shard_written(shard)
    progress.close()
    if truncated:
        log(f"{truncated} texts were longer than {encoder.config.max_length} tokens and were truncated")
    missing = [i for i in range(n_shards) if not (output / _shard_name(i)).exists()]
    if missing:
        return {"complete": False, "shards_missing": len(missing), "seconds": round(time.perf_counter() - begin, 2)}
    manifest = {**record, "complete": True,
                "shard_files": [{"file": _shard_name(i), "start": i * job.shard_size,
                                 "count": min(job.shard_size, scanned["records"] - i * job.shard_size)} for i in range(n_shards)]}
    write_json_atomic(manifest, output / MANIFEST_FILE)
    return manifest


def _write_shard(path: Path, embeddings: np.ndarray, ids: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, embeddings=embeddings, ids=ids)
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------------- reading the result
def load_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).exists():
        if (folder / JOB_FILE).exists():
            job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
            present = len(list(folder.glob("shard-*.npz")))
            raise L2VError(f"{folder} is unfinished ({present} of {job['shards']} shards); rerun the same embed-corpus command")
        raise L2VError(f"{folder} has no {MANIFEST_FILE}; is it an embed-corpus output folder?")
    return json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))


def iter_shards(folder: str | Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(embeddings, ids) per shard, in record order, for handing to a vector index."""
    folder = Path(folder)
    for entry in load_manifest(folder)["shard_files"]:
        with np.load(folder / entry["file"], allow_pickle=False) as data:
            yield data["embeddings"], data["ids"]


def search(folder: str | Path, queries: list[str], top_k: int = 10, instruction: str | None = None,
           encoder=None) -> list[list[tuple[float, object]]]:
    """Exact cosine top-k over every shard: a list of (score, id), best first, per query."""
    from .encoder import Encoder

    if top_k < 1:
        raise L2VError(f"--top-k must be at least 1, got {top_k}")
    if not queries:
        raise L2VError("give at least one query")
    for index, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise L2VError(f"query {index} is empty")
    manifest = load_manifest(folder)
    if encoder is None:
        config = manifest["encoder_config"]
        encoder = Encoder.from_pretrained(manifest["model"], pooling=config["pooling"], max_length=config["max_length"],
                                          bidirectional=config["bidirectional"])
    query_vectors = encoder.encode(queries, instruction=instruction).astype(np.float32)
    heaps: list[list] = [[] for _ in queries]
    counter = 0
    for embeddings, ids in iter_shards(folder):
        matrix = embeddings.astype(np.float32)
        if not manifest["normalize"]:
            matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        scores = query_vectors @ matrix.T
        keep = min(top_k, scores.shape[1])
        best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        for row, heap in enumerate(heaps):
            for column in best[row]:
                counter += 1
                item = (float(scores[row, column]), -counter, ids[column].item())
                if len(heap) < top_k:
                    heapq.heappush(heap, item)
                else:
                    heapq.heappushpop(heap, item)
    return [[(score, record_id) for score, _, record_id in sorted(heap, reverse=True)] for heap in heaps]


def texts_of(folder: str | Path, record_ids) -> dict:
    """The texts of the given record ids, read back from the job's input file (checked unchanged since it was
    embedded, so texts and ids match)."""
    import hashlib

    manifest = load_manifest(folder)
    wanted = set(record_ids)
    job = CorpusJob(model=manifest["model"], input=manifest["input"], output=str(folder),
                    text_field=manifest["text_field"], id_field=manifest["id_field"])
    if not Path(job.input).exists():
        raise L2VError(f"the input file {job.input} of {folder} is gone; its texts cannot be shown")
    digest = hashlib.sha256()
    texts = {}
    for record_id, text in iter_records(job, digest):
        key = record_id if manifest["id_kind"] == "int" else str(record_id)
        if key in wanted:
            texts[key] = text
    if digest.hexdigest() != manifest["input_sha256"]:
        raise L2VError(f"{job.input} changed since it was embedded into {folder}; its texts would not match the ids")
    return texts
