"""Dynamic micro-batching: requests that arrive while the model is busy are merged into one forward pass.

The model runs in one worker thread. When it frees up, the batcher takes every queued request that fits the
token budget (and the text cap) and encodes them together; a request larger than the budget runs alone. No
request waits for a batch to fill (``max_wait_ms`` can add a short wait, off by default): under light load a
request is encoded at once, under heavy load batches grow by themselves. Because an l2v embedding does not
depend on its batch, merging is exact.

Limits keep the server responsive: the queue holds at most ``max_queue_texts`` texts (beyond that,
:class:`QueueFull`, which the server turns into 503 with Retry-After), and a cancelled request (timeout or
client gone) is dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..encoder import Encoder, Tokenized


class QueueFull(Exception):
    """The batcher's queue cannot take the request now; retry later."""


@dataclass
class _Job:
    items: list[Tokenized]
    future: asyncio.Future
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(item.input_ids) for item in self.items)


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    requests: int = 0
    largest_batch_texts: int = 0


class MicroBatcher:
    def __init__(self, encoder: Encoder, *, max_batch_tokens: int = 16384, max_batch_texts: int = 512,
                 max_queue_texts: int = 8192, batching: bool = True, max_wait_ms: float = 0.0, batch_size: int = 64):
        self.encoder = encoder
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_queue_texts = max_queue_texts
        self.batching = batching
        self.max_wait = max_wait_ms / 1000.0
        self.batch_size = batch_size
        self.stats = BatcherStats()
        self._queue: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._queued_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2v-model")

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="l2v-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in [*self._in_flight, *self._queue]:
            if not job.future.done():
                job.future.set_exception(QueueFull("the server is shutting down"))
        self._queue.clear()
        self._in_flight = []
        self._queued_texts = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, items: list[Tokenized]) -> asyncio.Future:
        """Queue ``items``; the future resolves to a float32 array (one un-normalised row per item)."""
        if self._task is None or self._task.done():
            raise RuntimeError("the micro-batcher is not running")
        if self._queued_texts + len(items) > self.max_queue_texts:
            raise QueueFull(f"the queue holds {self._queued_texts} texts (limit {self.max_queue_texts})")
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._queued_texts += len(items)
        self._wakeup.set()
        return job.future

    def _take(self) -> list[_Job]:
        jobs = [self._queue.popleft()]
        tokens, texts = jobs[0].tokens, len(jobs[0].items)
        while self.batching and self._queue:
            nxt = self._queue[0]
            if tokens + nxt.tokens > self.max_batch_tokens or texts + len(nxt.items) > self.max_batch_texts:
                break
            jobs.append(self._queue.popleft())
            tokens += nxt.tokens
            texts += len(nxt.items)
        self._queued_texts -= texts
        return jobs

    def _encode(self, items: list[Tokenized]) -> np.ndarray:
        vectors = self.encoder.embed_tokenized(items, batch_size=self.batch_size,
                                               max_tokens_per_batch=self.max_batch_tokens, normalize=False)
        return vectors.numpy()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.batching and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)
            jobs = [job for job in self._take() if not job.future.done()]  # timed out or abandoned: skip
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            self._in_flight = jobs
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, items)
            except Exception as error:  # noqa: BLE001 - the requests get the error, the server stays up
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self._in_flight = []
            self.stats.batches += 1
            self.stats.texts += len(items)
            self.stats.requests += len(jobs)
            self.stats.largest_batch_texts = max(self.stats.largest_batch_texts, len(items))
            offset = 0
            for job in jobs:
                count = len(job.items)
                if not job.future.done():
                    job.future.set_result(vectors[offset: offset + count])
                offset += count
