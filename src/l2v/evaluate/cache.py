"""A persistent embedding cache: (model fingerprint, instruction, text) -> vector, in SQLite.

Repeated evaluation runs, and tasks that share texts, do not re-encode. Writes are transactions, so a crash
loses at most the batch being written, never the cache.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np


def _key(instruction: str, text: str) -> str:
    return hashlib.sha256(f"{len(instruction)}:{instruction}\x00{text}".encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(str(self.folder / "embeddings.sqlite"), timeout=60)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS embeddings (model TEXT, key TEXT, vector BLOB, PRIMARY KEY (model, key))"
        )
        self.connection.commit()

    def get_many(self, model: str, instruction: str, texts: list[str]) -> dict[str, np.ndarray]:
        found = {}
        keys = {_key(instruction, t): t for t in texts}
        items = list(keys.items())
        for start in range(0, len(items), 500):
            chunk = items[start: start + 500]
            placeholders = ",".join("?" * len(chunk))
            rows = self.connection.execute(
                f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({placeholders})",
                [model, *[k for k, _ in chunk]],
            ).fetchall()
            for key, blob in rows:
                found[keys[key]] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_many(self, model: str, instruction: str, texts: list[str], vectors: np.ndarray) -> None:
        with self.connection:
            self.connection.executemany(
                "INSERT OR REPLACE INTO embeddings (model, key, vector) VALUES (?, ?, ?)",
                [(model, _key(instruction, t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors)],
            )

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self.connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return self.connection.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", [model]).fetchone()[0]
