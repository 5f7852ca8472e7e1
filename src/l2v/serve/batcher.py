"""Dynamic micro-batching: requests that arrive while the model is busy are merged into one forward pass.

The model runs in one worker thread (which may hand each batch to a :class:`~l2v.serve.worker.ModelProcess`, the
model in its own process, so the server's HTTP work cannot slow it down). When it frees up, the batcher takes every queued request that fits the
token budget (and the text cap) and encodes them together; a request larger than the budget runs alone. No
request waits for a batch to fill (``max_wait_ms`` can add a short wait, off by default): under light load a
request is encoded at once, under heavy load batches grow by themselves. Because an l2v embedding does not
depend on its batch, merging is exact.

Limits keep the server responsive. Admission is by expected wait: the batcher keeps a running estimate of its
own speed (seconds per token, from its recent batches, first measured by a calibration batch at start) and
refuses a request whose work, behind everything queued and running, cannot finish before its deadline
(:class:`Overloaded`, with the seconds after which it could: the server's 503 and Retry-After). The queue also
holds at most ``max_queue_texts`` texts (:class:`QueueFull`). A request that is cancelled (client gone) or whose
deadline has passed is dropped before it reaches the model, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..encoder import Encoder, Tokenized

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher's queue cannot take the request now; retry later."""

    retry_after = 1


class Overloaded(QueueFull):
    """The work queued ahead of a request (plus its own) cannot finish before its deadline."""

    def __init__(self, expected: float, available: float):
        super().__init__(f"the work queued ahead would take about {expected:.1f} s and this request may wait {available:.1f} s")
        self.expected, self.available = expected, available
        # when enough of the queue will have drained for the same request to finish in time
        self.retry_after = max(1, math.ceil(expected - available))


class DeadlineExpired(Exception):
    """A queued request's deadline passed before the model reached it; it was never computed."""


class SpeedEstimate:
    """How long a forward batch takes: ``factor * (batch_seconds + tokens * seconds_per_token)``. The two costs (a
    fixed one per batch, which dominates one short text on a CPU, and one per token) come from two calibration
    batches at start; ``factor`` follows every batch's measured time over its predicted time (an exponentially
    weighted mean per batch), so a model that slows down - other work on the machine, the server's own HTTP work
    under a burst - is seen after a batch or two."""

    def __init__(self, smoothing: float = 0.3):
        self.batch_seconds = 0.0
        self.seconds_per_token: float | None = None
        self.factor = 1.0
        self.smoothing = smoothing

    def calibrate(self, small: tuple[int, float], large: tuple[int, float]) -> None:
        """From two timed batches, (tokens, seconds) each: one short text and a few dozen."""
        (n1, t1), (n2, t2) = small, large
        self.seconds_per_token = max((t2 - t1) / (n2 - n1), 0.0) if n2 > n1 else 0.0
        if self.seconds_per_token == 0.0:  # no per-token cost measurable: charge the batch by its tokens instead
            self.seconds_per_token = t2 / max(n2, 1)
        self.batch_seconds = max(0.0, t1 - self.seconds_per_token * n1)
        self.factor = 1.0

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        if self.seconds_per_token is None:  # not calibrated: the first batch sets the scale
            self.seconds_per_token = seconds / tokens
            return
        predicted = self.batch_seconds + tokens * self.seconds_per_token
        if predicted > 0:
            self.factor = (1 - self.smoothing) * self.factor + self.smoothing * seconds / predicted

    def seconds_for(self, tokens: int, batches: int = 1) -> float:
        if self.seconds_per_token is None:
            return 0.0
        return self.factor * (batches * self.batch_seconds + tokens * self.seconds_per_token)

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens per second of a full batch (the fixed cost spread thin)."""
        return None if not self.seconds_per_token else 1.0 / (self.factor * self.seconds_per_token)


@dataclass
class _Job:
    items: list[Tokenized]
    future: asyncio.Future
    deadline: float = math.inf  # time.monotonic() by which the answer is due
    tokens: int = field(init=False)

    def __post_init__(self):
        self.tokens = sum(len(item.input_ids) for item in self.items)


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    requests: int = 0
    largest_batch_texts: int = 0
    expired: int = 0  # dropped unrun: the deadline passed while queued
    shed: int = 0  # refused after admission: the speed estimate fell and they could no longer finish in time
    abandoned: int = 0  # dropped unrun: cancelled while queued before its deadline (the client went away)


class MicroBatcher:
    def __init__(self, encoder: Encoder, *, max_batch_tokens: int = 16384, max_batch_texts: int = 512,
                 max_queue_texts: int = 8192, batching: bool = True, max_wait_ms: float = 0.0, batch_size: int = 64,
                 calibrate: bool = True, admission_margin: float = 1.25, worker=None):
        self.encoder = encoder
        self.worker = worker  # a ModelProcess computing the batches, or None: the encoder in this process
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_queue_texts = max_queue_texts
        self.batching = batching
        self.max_wait = max_wait_ms / 1000.0
        self.batch_size = batch_size
        self.stats = BatcherStats()
        self.speed = SpeedEstimate()
        self.calibrate = calibrate
        self.margin = admission_margin  # expected seconds are scaled by this before they are compared with a deadline
        self._queue: deque[_Job] = deque()
        self._in_flight: list[_Job] = []
        self._in_flight_since = 0.0
        self._in_flight_tokens = 0
        self._queued_texts = 0
        self._queued_tokens = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2v-model")

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def expected_wait(self, tokens: int = 0, texts: int = 1) -> float:
        """Seconds from now until a new job of ``tokens`` (``texts``) would be done: the rest of the running batch,
        the batches the queue will make, its own."""
        running = 0.0
        if self._in_flight:
            running = max(0.0, self.speed.seconds_for(self._in_flight_tokens) - (time.monotonic() - self._in_flight_since))
        if self.batching:
            batches = max(math.ceil((self._queued_tokens + tokens) / self.max_batch_tokens),
                          math.ceil((self._queued_texts + texts) / self.max_batch_texts), 1)
        else:
            batches = len(self._queue) + 1
        return running + self.speed.seconds_for(self._queued_tokens + tokens, batches)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and (self.worker is None or self.worker.alive)

    async def start(self) -> None:
        """Start the worker; with ``calibrate``, first time a one-text batch and a batch of a few dozen short texts
        (after a warm-up), so the speed estimate exists before the first burst of requests."""
        self._wakeup = asyncio.Event()
        if self.calibrate:
            items = self.encoder.tokenize(["A calibration sentence of about the length of a typical query, "
                                           f"number {i}, for the speed estimate." for i in range(32)])
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, self._encode, items)  # the first call pays one-time costs
                timed = []
                for batch in (items[:1], items):
                    began = time.perf_counter()
                    await loop.run_in_executor(self._executor, self._encode, batch)
                    timed.append((sum(len(i.input_ids) for i in batch), time.perf_counter() - began))
                self.speed.calibrate(*timed)
            except Exception as error:  # noqa: BLE001 - requests will see the failure; the estimate starts empty
                logger.warning("the calibration batch failed (%s: %s); the speed estimate starts from the first request",
                               type(error).__name__, error)
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
        self._queued_texts = self._queued_tokens = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, items: list[Tokenized], deadline: float = math.inf) -> asyncio.Future:
        """Queue ``items``, due by ``deadline`` (``time.monotonic()``); the future resolves to a float32 array (one
        un-normalised row per item). :class:`Overloaded` when they could not be done in time, :class:`QueueFull`
        when the queue holds too many texts."""
        if not self.running:
            raise RuntimeError("the micro-batcher is not running" if self.worker is None or self.worker.alive
                               else f"the model process exited (exit code {self.worker.process.exitcode})")
        if self._queued_texts + len(items) > self.max_queue_texts:
            raise QueueFull(f"the queue holds {self._queued_texts} texts (limit {self.max_queue_texts})")
        job = _Job(list(items), asyncio.get_running_loop().create_future(), deadline)
        if math.isfinite(deadline):
            expected = self.margin * self.expected_wait(job.tokens, len(job.items))
            available = deadline - time.monotonic()
            if expected > available:
                raise Overloaded(expected, available)
        self._queue.append(job)
        self._queued_texts += len(items)
        self._queued_tokens += job.tokens
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
        self._queued_tokens -= tokens
        return jobs

    def _encode(self, items: list[Tokenized]) -> np.ndarray:
        if self.worker is not None:
            return self.worker.embed(items, self.batch_size, self.max_batch_tokens)
        vectors = self.encoder.embed_tokenized(items, batch_size=self.batch_size,
                                               max_tokens_per_batch=self.max_batch_tokens, normalize=False)
        return vectors.numpy()

    def _shed(self) -> None:
        """After the speed estimate changed: refuse (:class:`Overloaded`) the queued jobs that can no longer finish
        by their deadline, so their clients hear it now and the model never spends time on them. Jobs are run in
        order, so each one's finish is the batches of all the queue before it plus its own."""
        if not self._queue or self.speed.seconds_per_token is None:
            return
        now, ahead_tokens, ahead_texts, kept = time.monotonic(), 0, 0, deque()
        for position, job in enumerate(self._queue):
            if job.future.done():
                kept.append(job)  # dropped when taken, counted there
                continue
            tokens, texts = ahead_tokens + job.tokens, ahead_texts + len(job.items)
            batches = (max(math.ceil(tokens / self.max_batch_tokens), math.ceil(texts / self.max_batch_texts), 1)
                       if self.batching else position + 1)
            expected = self.margin * self.speed.seconds_for(tokens, batches)
            if math.isfinite(job.deadline) and now + expected > job.deadline:
                job.future.set_exception(Overloaded(expected, job.deadline - now))
                self.stats.shed += 1
                self._queued_texts -= len(job.items)
                self._queued_tokens -= job.tokens
                continue
            ahead_tokens, ahead_texts = tokens, texts
            kept.append(job)
        self._queue = kept

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.batching and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)
            jobs, now = [], time.monotonic()
            for job in self._take():  # cancelled (client gone) or past its deadline: never computed
                if job.future.done():  # its handler gave up: at its deadline (expired) or for a client gone
                    if job.deadline <= now:
                        self.stats.expired += 1
                    else:
                        self.stats.abandoned += 1
                elif job.deadline <= now:
                    self.stats.expired += 1
                    job.future.set_exception(DeadlineExpired("the request's deadline passed while it was queued"))
                else:
                    jobs.append(job)
            if not jobs:
                continue
            items = [item for job in jobs for item in job.items]
            self._in_flight, self._in_flight_since = jobs, time.monotonic()
            self._in_flight_tokens = sum(job.tokens for job in jobs)
            try:
                began = time.perf_counter()
                vectors = await loop.run_in_executor(self._executor, self._encode, items)
                self.speed.observe(self._in_flight_tokens, time.perf_counter() - began)
            except Exception as error:  # noqa: BLE001 - the requests get the error, the server stays up
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            finally:
                self._in_flight = []
            self._shed()
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
