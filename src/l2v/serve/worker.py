"""The model in its own process, so that the server's HTTP work cannot slow it down.

With the model in a thread of the server's process, a burst of thousands of connections keeps the event loop busy
and the model thread waits for the interpreter lock between its operators: its batches became about 20 times slower
under a 10,000-client burst, and the speed estimate that admission relies on fell with them. :class:`ModelProcess`
loads the same encoder in a child process (``spawn``: a fresh interpreter, no forked thread pools) and runs the
micro-batcher's batches there; the server process keeps only the tokenizer side and talks to it over a pipe (token
ids in, float32 rows out). The child follows its parent: it exits when the pipe closes.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The model process is gone (killed, out of memory, crashed); the server cannot compute until restarted."""


def _main(connection, load: dict[str, Any], threads: int | None) -> None:  # pragma: no cover - runs in the child
    import torch

    from ..encoder import Encoder

    if threads:
        torch.set_num_threads(threads)
    try:
        encoder = Encoder.from_pretrained(**load)
    except BaseException as error:  # noqa: BLE001 - the parent reports it
        connection.send(("error", type(error).__name__, str(error)))
        return
    connection.send(("ready", encoder.dimension, None))
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):  # the server went away
            return
        if message is None:
            return
        items, batch_size, max_tokens = message
        try:
            vectors = encoder.embed_tokenized(items, batch_size=batch_size, max_tokens_per_batch=max_tokens, normalize=False)
            connection.send(("ok", vectors.numpy(), None))
        except Exception as error:  # noqa: BLE001 - this batch's requests get the error; the worker stays up
            connection.send(("error", type(error).__name__, str(error)))


class ModelProcess:
    """``Encoder.from_pretrained(**load)`` in a child process; :meth:`embed` runs one batch there (one caller at a
    time: the micro-batcher's single worker thread, which blocks on the pipe without holding the interpreter lock)."""

    def __init__(self, load: dict[str, Any], threads: int | None = None, start_timeout: float = 600.0):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.process = context.Process(target=_main, args=(child, load, threads), name="l2v-model", daemon=True)
        self.process.start()
        child.close()
        self._lock = threading.Lock()
        if not self._connection.poll(start_timeout):
            self.close()
            raise WorkerDied(f"the model process did not load {load.get('model')!r} within {start_timeout:g} s")
        try:
            kind, value, detail = self._connection.recv()
        except EOFError:
            self.process.join(5)
            raise WorkerDied(f"the model process exited while loading {load.get('model')!r} "
                             f"(exit code {self.process.exitcode})") from None
        if kind != "ready":
            self.close()
            raise WorkerDied(f"the model process could not load {load.get('model')!r}: {value}: {detail}")
        self.dimension = value

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def embed(self, items, batch_size: int, max_tokens_per_batch: int) -> np.ndarray:
        with self._lock:
            try:
                self._connection.send((list(items), batch_size, max_tokens_per_batch))
                kind, value, detail = self._connection.recv()
            except (EOFError, OSError, BrokenPipeError):
                self.process.join(1)
                raise WorkerDied(f"the model process is gone (exit code {self.process.exitcode})") from None
        if kind != "ok":
            raise RuntimeError(f"{value}: {detail}")
        return value

    def close(self) -> None:
        try:
            self._connection.send(None)
        except (OSError, BrokenPipeError, ValueError):
            pass
        self._connection.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
