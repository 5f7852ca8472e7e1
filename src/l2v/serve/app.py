"""An embedding server compatible with the OpenAI embeddings API, on FastAPI.

``POST /v1/embeddings`` takes ``{"input": str | [str], "model": ..., "encoding_format": "float"|"base64",
"dimensions": N}`` (plus l2v's ``instruction``, sent by the OpenAI client as ``extra_body``) and answers like
OpenAI, ``usage`` included. ``GET /health``, ``GET /v1/models`` and (optionally) a Prometheus ``/metrics``.

Every bad request is an OpenAI-style error object with a clear message naming the item: 400 invalid JSON,
401 missing or wrong bearer key, 404 unknown model, 413 too many texts / a text too long / a body too
large, 422 a wrong type, an empty text, an unknown encoding format, 503 (with an honest Retry-After) when the
server cannot answer in time, 504 when an admitted request still outlives its deadline (a model that suddenly
slowed down).

Admission is by expected wait: a request gets a deadline, the shorter of ``request_timeout`` and what the client
says it will wait (``X-Request-Timeout``, or the ``X-Stainless-Timeout`` the OpenAI client sends), and is refused
at once (503, reason ``overloaded``, Retry-After = when the queue will have drained enough) when the work queued
ahead of it cannot finish by then, by the batcher's running speed estimate. Memory is bounded in bytes: each
admitted request holds its body, its token lists and its expected response against ``max_pending_bytes`` (503,
reason ``memory``). A request whose client hangs up or whose deadline passes while it waits is taken out of the
queue before it reaches the model (499 / 504, counted). The model runs behind :class:`MicroBatcher`, by default
(``l2v serve``) in its own process (:class:`~l2v.serve.worker.ModelProcess`): a burst of connections then cannot
slow the model down, nor the speed estimate that admission trusts.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request  # at module level: FastAPI resolves the handlers' string annotations here
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers

from ..encoder import Encoder
from ..errors import L2VError
from .batcher import DeadlineExpired, MicroBatcher, Overloaded, QueueFull
from .worker import WorkerDied


@dataclass
class ServerSettings:
    model_name: str
    api_key: str | None = None
    max_texts_per_request: int = 2048  # OpenAI's own limit
    max_chars_per_text: int = 100_000
    max_body_bytes: int = 32 * 1024 * 1024
    max_queue_texts: int = 8192
    max_batch_tokens: int = 16384
    max_batch_texts: int = 512
    batching: bool = True
    max_wait_ms: float = 0.0
    request_timeout: float = 120.0  # the longest a request may take; a client may ask for less (X-Request-Timeout)
    max_pending_bytes: int = 512 * 1024 * 1024  # bodies, token lists and responses of admitted requests, together
    calibrate: bool = True  # time one batch at start: the speed estimate exists before the first burst
    truncate: bool = False  # False: a text over max_length tokens is a 413, as OpenAI answers
    metrics: bool = True


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers or {}


KNOWN_PATHS = {"/v1/embeddings", "/v1/models", "/health", "/metrics"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
               413: "invalid_request_error", 422: "invalid_request_error", 503: "server_error", 504: "server_error",
               500: "server_error"}


def _error_response(error: RequestError):
    body = {"error": {"message": error.message, "type": ERROR_TYPES.get(error.status, "invalid_request_error"),
                      "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


class _Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("l2v_requests", "HTTP requests by path and status", ["path", "status"], registry=self.registry)
        self.texts = Counter("l2v_texts", "texts embedded", registry=self.registry)
        self.tokens = Counter("l2v_tokens", "tokens embedded (usage.prompt_tokens)", registry=self.registry)
        self.disconnects = Counter("l2v_client_disconnects", "requests dropped because the client went away", registry=self.registry)
        self.latency = Histogram("l2v_request_seconds", "embedding request latency", registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.batches = Gauge("l2v_batches", "forward batches run by the micro-batcher", registry=self.registry)
        self.largest_batch = Gauge("l2v_largest_batch_texts", "most texts merged into one batch", registry=self.registry)
        self.queue = Gauge("l2v_queue_texts", "texts waiting for the model", registry=self.registry)
        self.wait = Gauge("l2v_queue_wait_seconds", "expected seconds before a new one-text request is answered", registry=self.registry)
        self.speed = Gauge("l2v_tokens_per_second", "the model's running speed estimate", registry=self.registry)
        self.pending = Gauge("l2v_pending_bytes", "bytes held by admitted requests (bodies, tokens, responses)", registry=self.registry)
        self.refusals = Counter("l2v_refusals", "requests refused with 503 by reason", ["reason"], registry=self.registry)
        self.expired = Gauge("l2v_expired_requests", "requests dropped unrun because their deadline passed in the queue", registry=self.registry)
        self.abandoned = Gauge("l2v_abandoned_requests", "requests dropped unrun because they were cancelled in the queue", registry=self.registry)


def _parse_request(raw: bytes, settings: ServerSettings, hidden_size: int) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply to be a valid request", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(422, f"the request body must be a JSON object, got {type(body).__name__}")
    known = {"input", "model", "encoding_format", "dimensions", "user", "instruction"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})", param=unknown[0])
    if "input" not in body:
        raise RequestError(422, "missing field 'input' (a string or a list of strings)", param="input")
    texts = body["input"]
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, list):
        raise RequestError(422, f"'input' must be a string or a list of strings, got {type(texts).__name__}", param="input")
    if not texts:
        raise RequestError(422, "'input' is an empty list; send at least one text", param="input")
    if len(texts) > settings.max_texts_per_request:
        raise RequestError(413, f"'input' has {len(texts)} texts; the limit is {settings.max_texts_per_request} per request",
                           param="input", code="too_many_inputs")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            kind = "token ids" if isinstance(text, (int, list)) else type(text).__name__
            raise RequestError(422, f"input[{index}] must be a string, got {kind} (token-id input is not supported)",
                               param=f"input[{index}]")
        if text == "":
            raise RequestError(422, f"input[{index}] is an empty string", param=f"input[{index}]")
        if len(text) > settings.max_chars_per_text:
            raise RequestError(413, f"input[{index}] has {len(text)} characters; the limit is {settings.max_chars_per_text}",
                               param=f"input[{index}]", code="text_too_long")
    model = body.get("model", settings.model_name)
    if model != settings.model_name:
        raise RequestError(404, f"model {model!r} is not served here; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise RequestError(422, f"encoding_format must be 'float' or 'base64', got {encoding_format!r}", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                   or not 1 <= dimensions <= hidden_size):
        raise RequestError(422, f"dimensions must be an integer from 1 to {hidden_size}, got {dimensions!r}", param="dimensions")
    instruction = body.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise RequestError(422, f"instruction must be a string, got {type(instruction).__name__}", param="instruction")
    if instruction is not None and len(instruction) > settings.max_chars_per_text:
        raise RequestError(413, f"instruction has {len(instruction)} characters; the limit is {settings.max_chars_per_text}",
                           param="instruction", code="text_too_long")
    return {"texts": texts, "encoding_format": encoding_format, "dimensions": dimensions, "instruction": instruction or None}


async def _client_disconnected(request: Request) -> None:
    """Returns when the client goes away. The body has been read, so the next ASGI message is the disconnect."""
    while True:
        try:
            message = await request.receive()
        except Exception:  # noqa: BLE001 - a broken receive channel means the client is gone as well
            return
        if message["type"] == "http.disconnect":
            return


TOKEN_BYTES = 100  # a queued token's share of its Tokenized lists (ids, masks: Python ints and list slots)


def _client_timeout(request: Request) -> float | None:
    """How long the client says it will wait: ``X-Request-Timeout`` (a bad value is a 400), else the OpenAI client's
    ``X-Stainless-Timeout`` (ignored when unreadable)."""
    raw = request.headers.get("x-request-timeout")
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise RequestError(400, f"X-Request-Timeout must be a positive number of seconds, got {raw!r}", code="invalid_timeout")
        return value
    try:
        value = float(request.headers.get("x-stainless-timeout", ""))
    except ValueError:
        return None
    return value if value > 0 and value != float("inf") else None


def _response_bytes(texts: int, dimensions: int, encoding_format: str) -> int:
    """About the size of the JSON answer: a float as text is up to ~22 characters, as base64 5.4 bytes."""
    return texts * (dimensions * (22 if encoding_format == "float" else 6) + 64) + 256


class _Guard:
    """The API key and body-size checks before a request reaches its handler, and the request counter by path and
    status after it: a plain ASGI middleware. (FastAPI's ``@app.middleware("http")`` wraps every request in a task
    group and memory streams of its own; at 10,000 concurrent connections that was memory the HTTP process held
    for nothing.)"""

    def __init__(self, app, settings: ServerSettings, metrics: "_Metrics | None"):
        self.app, self.settings, self.metrics = app, settings, metrics
        self.key = settings.api_key.encode() if settings.api_key is not None else None

    def _check(self, scope) -> RequestError | None:
        headers = Headers(scope=scope)
        if self.key is not None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("latin-1"), self.key):
                return RequestError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_body_bytes:
            return RequestError(413, f"the request body has {length} bytes; the limit is {self.settings.max_body_bytes}",
                                code="body_too_large")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}  # an exception before the response starts is the server error middleware's 500
        error = self._check(scope)
        try:
            if error is not None:
                status["code"] = error.status
                await _error_response(error)(scope, receive, send)
                return

            async def counted_send(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            await self.app(scope, receive, counted_send)
        finally:
            if self.metrics is not None:
                path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"  # bounded label values
                self.metrics.requests.labels(path, str(status["code"])).inc()


def create_app(encoder: Encoder, settings: ServerSettings, worker=None):
    """The FastAPI application serving ``encoder`` (its tokenizer; the forward passes run in ``worker``, a
    :class:`~l2v.serve.worker.ModelProcess` that the application closes at shutdown, when given); the micro-batcher
    starts and stops with it."""
    batcher = MicroBatcher(encoder, max_batch_tokens=settings.max_batch_tokens, max_batch_texts=settings.max_batch_texts,
                           max_queue_texts=settings.max_queue_texts, batching=settings.batching, max_wait_ms=settings.max_wait_ms,
                           calibrate=settings.calibrate, worker=worker)
    refusals: dict[str, int] = {}
    pending = {"bytes": 0}

    def refuse(reason: str, message: str, retry_after: int = 1) -> RequestError:
        refusals[reason] = refusals.get(reason, 0) + 1
        if metrics is not None:
            metrics.refusals.labels(reason).inc()
        return RequestError(503, message, code=reason, headers={"Retry-After": str(retry_after)})
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l2v-tokenize")  # HF tokenizers: one caller at a time
    metrics = _Metrics() if settings.metrics else None
    hidden_size = encoder.dimension
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()
        tokenizer_pool.shutdown(wait=False, cancel_futures=True)
        if worker is not None:
            worker.close()

    app = FastAPI(title="l2v embeddings", lifespan=lifespan)
    app.state.batcher, app.state.settings = batcher, settings

    app.add_middleware(_Guard, settings=settings, metrics=metrics)

    @app.get("/health")
    async def health():
        if not batcher.running:
            reason = "the model worker stopped"
            if worker is not None and not worker.alive:
                reason = f"the model process exited (exit code {worker.process.exitcode})"
            return JSONResponse({"status": "unavailable", "model": settings.model_name, "reason": reason}, status_code=503)
        speed = batcher.speed.tokens_per_second
        return {"status": "ok", "model": settings.model_name, "queue_texts": batcher.queued_texts,
                "queue_tokens": batcher.queued_tokens, "queue_wait_seconds": round(batcher.expected_wait(), 3),
                "tokens_per_second": round(speed, 1) if speed else None, "pending_bytes": pending["bytes"],
                "refusals": dict(refusals), "expired": batcher.stats.expired, "abandoned": batcher.stats.abandoned,
                "shed": batcher.stats.shed,
                "uptime_seconds": round(time.time() - started, 1)}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": int(started), "owned_by": "l2v"}]}

    if metrics is not None:
        @app.get("/metrics")
        async def prometheus_metrics():
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            metrics.batches.set(batcher.stats.batches)
            metrics.largest_batch.set(batcher.stats.largest_batch_texts)
            metrics.queue.set(batcher.queued_texts)
            metrics.wait.set(batcher.expected_wait())
            metrics.speed.set(batcher.speed.tokens_per_second or 0.0)
            metrics.pending.set(pending["bytes"])
            metrics.expired.set(batcher.stats.expired)
            metrics.abandoned.set(batcher.stats.abandoned)
            return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        begin = time.perf_counter()
        held = 0  # bytes this request holds against max_pending_bytes
        try:  # whatever happens, the bytes this request held are given back
            try:
                client_timeout = _client_timeout(request)
                timeout = min(settings.request_timeout, client_timeout) if client_timeout else settings.request_timeout
                deadline = time.monotonic() + timeout
                chunks, size = [], 0
                async for chunk in request.stream():  # capped as it arrives (a chunked upload has no Content-Length)
                    size += len(chunk)
                    if size > settings.max_body_bytes:
                        raise RequestError(413, f"the request body is over the limit of {settings.max_body_bytes} bytes",
                                           code="body_too_large")
                    chunks.append(chunk)
                parsed = _parse_request(b"".join(chunks), settings, hidden_size)
                count = len(parsed["texts"])
                if count > settings.max_queue_texts:
                    raise RequestError(413, f"'input' has {count} texts, more than the server's queue holds "
                                            f"({settings.max_queue_texts}); split the request", param="input", code="too_many_inputs")
                if batcher.queued_texts + count > settings.max_queue_texts:  # refuse early, before tokenising
                    raise refuse("queue_full", f"the server is busy ({batcher.queued_texts} texts queued); retry later")
                ahead = batcher.margin * batcher.expected_wait()
                if ahead > deadline - time.monotonic():  # the queue alone outlasts the deadline: refuse before tokenising
                    error = Overloaded(ahead, deadline - time.monotonic())
                    raise refuse("overloaded", f"the server is busy ({error}); retry later", error.retry_after)
                held = size + _response_bytes(count, parsed["dimensions"] or hidden_size, parsed["encoding_format"])
                if pending["bytes"] + held > settings.max_pending_bytes:
                    held = 0
                    raise refuse("memory", f"the server is busy (admitted requests hold {pending['bytes']} bytes, limit "
                                           f"{settings.max_pending_bytes}); retry later")
                pending["bytes"] += held
                loop = asyncio.get_running_loop()
                items = [(parsed["instruction"] or "", text) for text in parsed["texts"]]
                try:
                    tokenized = await loop.run_in_executor(tokenizer_pool, encoder.tokenize, items)
                except L2VError as error:  # e.g. an instruction that leaves no room for the text
                    raise RequestError(413, str(error), code="context_length_exceeded") from None
                if not settings.truncate:
                    for index, item in enumerate(tokenized):
                        if item.truncated:
                            raise RequestError(413, f"input[{index}] is longer than the model's {encoder.config.max_length} tokens "
                                                    "(start the server with --truncate to cut long texts)",
                                               param=f"input[{index}]", code="context_length_exceeded")
                token_bytes = TOKEN_BYTES * sum(len(item.input_ids) for item in tokenized)
                pending["bytes"] += token_bytes
                held += token_bytes
                try:
                    future = batcher.submit(tokenized, deadline=deadline)
                except Overloaded as error:
                    raise refuse("overloaded", f"the server is busy ({error}); retry later", error.retry_after) from None
                except QueueFull as error:
                    raise refuse("queue_full", f"the server is busy ({error}); retry later") from None
                except RuntimeError as error:
                    raise RequestError(503, f"the model worker is not running ({error})", code="unavailable") from None
                gone = asyncio.ensure_future(_client_disconnected(request))
                try:
                    done, _ = await asyncio.wait({future, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    gone.cancel()
                try:
                    if future not in done:
                        future.cancel()  # dropped before it reaches the model, if it has not yet
                        if gone in done:  # nobody is listening: free the queue, answer 499 for the logs
                            if metrics is not None:
                                metrics.disconnects.inc()
                            raise RequestError(499, "the client closed the connection", code="client_closed")
                        raise RequestError(504, f"the request took longer than {timeout:g} s", code="timeout")
                    vectors = future.result()
                except RequestError:
                    raise
                except DeadlineExpired:
                    raise RequestError(504, f"the request took longer than {timeout:g} s (dropped before the model ran it)",
                                       code="timeout") from None
                except Overloaded as error:  # admitted, then the model slowed: refused before it ran
                    raise refuse("overloaded", f"the server is busy ({error}); retry later", error.retry_after) from None
                except QueueFull as error:
                    raise RequestError(503, f"{error}; retry later", code="queue_full", headers={"Retry-After": "1"}) from None
                except WorkerDied as error:
                    raise RequestError(503, str(error), code="unavailable") from None
                except Exception as error:  # noqa: BLE001 - a model failure is this request's 500, not a crash
                    raise RequestError(500, f"encoding failed: {type(error).__name__}: {error}", code="encoding_failed") from None
            except RequestError as error:
                return _error_response(error)
            return _answer(vectors, parsed, tokenized, begin)
        finally:
            pending["bytes"] -= held

    def _answer(vectors, parsed, tokenized, begin):
        if parsed["dimensions"]:
            vectors = vectors[:, : parsed["dimensions"]]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = (vectors / np.maximum(norms, 1e-12)).astype("<f4")
        data = []
        for index, row in enumerate(vectors):
            embedding = base64.b64encode(row.tobytes()).decode("ascii") if parsed["encoding_format"] == "base64" else row.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(item.input_ids) for item in tokenized)
        if metrics is not None:
            metrics.texts.inc(len(tokenized))
            metrics.tokens.inc(tokens)
            metrics.latency.observe(time.perf_counter() - begin)
        return JSONResponse({"object": "list", "data": data, "model": settings.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return app


def serve(encoder: Encoder, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          worker=None) -> None:
    import uvicorn

    uvicorn.run(create_app(encoder, settings, worker=worker), host=host, port=port, log_level=log_level)
