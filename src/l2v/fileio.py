"""Atomic writes and input readers shared by the CLI and the library.

Everything a user computed is written to a temporary file in the destination folder and renamed into
place, so a crash never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputFileError


def _fsync(path: Path, tree: bool = True) -> None:
    """Flush a file, or every file under a folder and the folder itself (``tree=False``: the folder's own entries
    only), to disk: a rename is only atomic on a power loss if what it renames is already there."""
    paths = [*path.rglob("*"), path] if tree and path.is_dir() else [path]
    for item in paths:
        try:
            fd = os.open(item, os.O_RDONLY)
        except FileNotFoundError:  # renamed or removed meanwhile (another writer's temporary file)
            continue
        try:
            os.fsync(fd)
        except OSError:  # some file systems refuse fsync on folders
            pass
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it onto ``destination`` on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes files private; outputs should read like any other
        _fsync(tmp_path)
        os.replace(tmp_path, destination)
        _fsync(destination.parent, tree=False)  # the rename itself; not every file beside it
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(destination: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``destination``; rename it onto ``destination`` on success."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished folder should read like any other
    try:
        yield tmp
        _fsync(tmp)
        if destination.exists():
            if not overwrite:
                raise FileExistsError(f"{destination} already exists")
            old = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(destination, old)
            os.replace(tmp, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, destination)
        _fsync(destination.parent, tree=False)  # the rename itself; not every file beside it
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_npy_atomic(array: np.ndarray, destination: str | os.PathLike) -> None:
    with atomic_path(destination) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(obj, destination: str | os.PathLike) -> None:
    with atomic_path(destination) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_binary(path: Path):
    """A file's bytes; a ``.gz`` file's decompressed bytes."""
    if path.suffix.lower() == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


def _numbered(handle, path: Path) -> Iterator[tuple[int, bytes]]:
    """``enumerate`` over a file's lines from 1, with a damaged gzip stream named as the file's fault."""
    import gzip
    import zlib

    number = 0
    try:
        for number, raw in enumerate(handle, start=1):
            yield number, raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise InputFileError(f"{path}: not a complete gzip file after line {number} ({error})") from None


def iter_lines(path: str | os.PathLike, digest=None) -> Iterator[tuple[int, str]]:
    """Stream ``(line number, text)`` from a UTF-8 file, one line at a time (LF or CRLF; a final newline ends the
    last line, it does not start a new one); a ``.gz`` file is decompressed as it is read. ``digest`` (a hashlib object), when given, sees every byte read.
    A line that is not UTF-8 is an error naming the file, the line and the byte."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"input file not found: {path}")
    if path.is_dir():
        raise InputFileError(f"input path is a folder, not a file: {path}")
    with _open_binary(path) as handle:
        for number, raw in _numbered(handle, path):
            if digest is not None:
                digest.update(raw)
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            try:
                yield number, line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputFileError(
                    f"{path}: line {number} is not valid UTF-8 (byte {error.start}: {line[error.start:error.start + 1]!r})"
                ) from None


def read_lines(path: str | os.PathLike) -> list[str]:
    """Every line of a UTF-8 file (see ``iter_lines``)."""
    return [line for _, line in iter_lines(path)]


def iter_json_records(path: str | os.PathLike, digest=None, skip_blank: bool = False,
                      expect: str = "a JSON object") -> Iterator[tuple[int, dict]]:
    """Stream ``(line number, object)`` from a JSONL file. A blank line is skipped (``skip_blank``) or an error;
    a line that is not JSON, or not an object, is an error naming the file and line (``expect`` says what a line
    should hold, e.g. "a JSON object with 'text'")."""
    for number, line in iter_lines(path, digest):
        if not line.strip():
            if skip_blank:
                continue
            raise InputFileError(f"{path}: line {number} is empty; every line must be {expect}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputFileError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise InputFileError(f"{path}: line {number} must be {expect}, got {type(record).__name__}")
        yield number, record


def weights_signature(folder: str | os.PathLike) -> list:
    """(relative path, size, modification time) of the weight and config files under ``folder`` ([] when it is not
    a folder, e.g. a hub name): results computed with a model are tied to the files they came from."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in {".safetensors", ".json"}
    )


def read_texts(path: str | os.PathLike, field: str = "text") -> list[str]:
    """Read texts from ``.txt`` (one per line, empty lines kept) or ``.jsonl`` (``{"text": ...}`` per line), either
    of them possibly gzip-compressed (``.txt.gz``, ``.jsonl.gz``)."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    suffix = suffixes[-2] if len(suffixes) >= 2 and suffixes[-1] == ".gz" else path.suffix.lower()
    if suffix not in {".txt", ".jsonl"}:
        raise InputFileError(f"{path}: unsupported input format {path.suffix or '(no extension)'!r}; use .txt or .jsonl "
                             "(optionally .gz)")
    if suffix == ".txt":
        return read_lines(path)
    texts = []
    for number, record in iter_json_records(path, expect=f"a JSON object with {field!r}"):
        if field not in record:
            raise InputFileError(f"{path}: line {number} has no {field!r} field")
        if not isinstance(record[field], str):
            raise InputFileError(
                f"{path}: line {number}: {field!r} must be a string, got {type(record[field]).__name__}"
            )
        texts.append(record[field])
    return texts
