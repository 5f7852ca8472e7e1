"""The embedding server: OpenAI-compatible, micro-batched, bounded, authenticated; tested with real clients."""

import asyncio
import base64
import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from l2v.serve.app import ServerSettings, create_app

TEXTS = ["a man is playing a guitar", "paris", "she plays the piano every evening", "what is the capital of france ?"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(encoder, settings: ServerSettings, slow_seconds: float = 0.0, fail: bool = False, worker=None):
    """A real uvicorn server on loopback in a thread; ``slow_seconds`` delays each forward batch."""
    import uvicorn

    app = create_app(encoder, settings, worker=worker)
    batcher = app.state.batcher
    original = batcher._encode
    batcher.control = {"slow": slow_seconds, "fail": fail}  # a test may change them while the server runs

    def encode(items):
        if batcher.control["fail"]:
            raise RuntimeError("the model fell over")
        if batcher.control["slow"]:
            time.sleep(batcher.control["slow"])
        return original(items)

    batcher._encode = encode
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", batcher
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tiny_encoder):
    with running_server(tiny_encoder, ServerSettings(model_name="tiny", max_texts_per_request=8, max_chars_per_text=200)) as (url, batcher):
        yield url, batcher


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_openai_client_gets_the_l2v_embeddings(served, tiny_encoder):
    from openai import OpenAI

    url, _ = served
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    expected = tiny_encoder.encode(TEXTS)
    for encoding_format in ("float", "base64"):
        response = client.embeddings.create(model="tiny", input=TEXTS, encoding_format=encoding_format)
        got = np.array([d.embedding if encoding_format == "float" else np.frombuffer(base64.b64decode(d.embedding), "<f4")
                        for d in response.data])  # asked explicitly, base64 comes back as the string
        assert [d.index for d in response.data] == list(range(len(TEXTS)))
        assert cosines(got, expected).min() >= 0.99999
    default = client.embeddings.create(model="tiny", input=TEXTS)  # the client asks for base64 and decodes it
    assert cosines(np.array([d.embedding for d in default.data]), expected).min() >= 0.99999
    single = client.embeddings.create(model="tiny", input="paris")
    assert len(single.data) == 1 and cosines(single.data[0].embedding, expected[1]) >= 0.99999
    tokens = sum(len(t.input_ids) for t in tiny_encoder.tokenize(TEXTS))
    assert response.usage.prompt_tokens == tokens == response.usage.total_tokens
    assert response.model == "tiny"
    short = client.embeddings.create(model="tiny", input=TEXTS, dimensions=8)
    vectors = np.array([d.embedding for d in short.data])
    assert vectors.shape == (4, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert cosines(vectors, tiny_encoder.encode(TEXTS, truncate_dim=8)).min() >= 0.99999
    instructed = client.embeddings.create(model="tiny", input=TEXTS, extra_body={"instruction": "find the city"})
    assert cosines(np.array([d.embedding for d in instructed.data]), tiny_encoder.encode(TEXTS, instruction="find the city")).min() >= 0.99999
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_base64_is_little_endian_float32(served, tiny_encoder):
    url, _ = served
    body = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny", "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (32,) and cosines(vector, tiny_encoder.encode(["paris"])[0]) >= 0.99999


@pytest.mark.parametrize("payload, status, needle", [
    ({"input": [], "model": "tiny"}, 422, "empty list"),
    ({"input": ["paris", ""], "model": "tiny"}, 422, "input[1] is an empty string"),
    ({"input": ["paris", 3], "model": "tiny"}, 422, "input[1] must be a string"),
    ({"input": [[1, 2, 3]], "model": "tiny"}, 422, "token-id input is not supported"),
    ({"input": {"text": "paris"}, "model": "tiny"}, 422, "'input' must be a string or a list"),
    ({"model": "tiny"}, 422, "missing field 'input'"),
    ({"input": ["paris"] * 9, "model": "tiny"}, 413, "the limit is 8 per request"),
    ({"input": ["paris", "x" * 201], "model": "tiny"}, 413, "input[1] has 201 characters"),
    ({"input": ["paris"], "model": "gpt-4"}, 404, "'gpt-4' is not served here"),
    ({"input": ["paris"], "model": "tiny", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": ["paris"], "model": "tiny", "dimensions": 0}, 422, "dimensions must be an integer from 1 to 32"),
    ({"input": ["paris"], "model": "tiny", "dimensions": 33}, 422, "dimensions"),
    ({"input": ["paris"], "model": "tiny", "temperature": 1}, 422, "unknown field 'temperature'"),
    ({"input": ["paris"], "model": "tiny", "instruction": "x" * 201}, 413, "instruction has 201 characters"),
    ({"input": ["paris"], "model": "tiny", "instruction": 7}, 422, "instruction must be a string"),
])
def test_bad_requests_get_clear_errors(served, payload, status, needle):
    url, _ = served
    response = httpx.post(f"{url}/v1/embeddings", json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if needle:
        assert needle in error["message"]


def test_invalid_json_and_too_many_tokens(served, tiny_encoder):
    url, _ = served
    nested = httpx.post(f"{url}/v1/embeddings", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert nested.status_code == 400 and "nested too deeply" in nested.json()["error"]["message"]
    tiny_encoder.config.max_length, saved = 16, tiny_encoder.config.max_length
    try:
        crowded = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny", "instruction": "the cat " * 10})
    finally:
        tiny_encoder.config.max_length = saved
    assert crowded.status_code == 413 and "leaving no room for the text" in crowded.json()["error"]["message"]
    response = httpx.post(f"{url}/v1/embeddings", content=b'{"input": ["paris"', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(f"{url}/v1/embeddings", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert response.status_code == 400
    long_text = " ".join(["paris"] * 30)  # 30 tokens, within 200 characters
    tiny_encoder.config.max_length, saved = 16, tiny_encoder.config.max_length
    try:
        response = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris", long_text], "model": "tiny"})
    finally:
        tiny_encoder.config.max_length = saved
    assert response.status_code == 413 and "input[1] is longer than the model's 16 tokens" in response.json()["error"]["message"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # still up


def test_truncate_option_cuts_long_texts(tiny_encoder):
    long_text = " ".join(["paris"] * 40)
    tiny_encoder.config.max_length, saved = 16, tiny_encoder.config.max_length
    try:
        with running_server(tiny_encoder, ServerSettings(model_name="tiny", truncate=True)) as (url, _):
            response = httpx.post(f"{url}/v1/embeddings", json={"input": [long_text], "model": "tiny"})
            assert response.status_code == 200
            assert cosines(response.json()["data"][0]["embedding"], tiny_encoder.encode([long_text])[0]) >= 0.99999
            assert response.json()["usage"]["prompt_tokens"] == 16
    finally:
        tiny_encoder.config.max_length = saved


async def _concurrent_posts(url, bodies, headers=None):
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*[client.post(f"{url}/v1/embeddings", json=b, headers=headers) for b in bodies])


@pytest.mark.parametrize("batching", [True, False])
def test_micro_batching_merges_concurrent_requests_exactly(tiny_encoder, batching):
    bodies = [{"input": [TEXTS[i % 4], TEXTS[(i + 1) % 4]], "model": "tiny"} for i in range(24)]
    settings = ServerSettings(model_name="tiny", batching=batching)
    with running_server(tiny_encoder, settings, slow_seconds=0.05) as (url, batcher):
        responses = asyncio.run(_concurrent_posts(url, bodies))
        assert all(r.status_code == 200 for r in responses)
        for body, response in zip(bodies, responses):
            got = np.array([d["embedding"] for d in response.json()["data"]])
            assert cosines(got, tiny_encoder.encode(body["input"])).min() >= 0.99999
        assert batcher.stats.requests == 24
        if batching:
            assert batcher.stats.batches < 24 and batcher.stats.largest_batch_texts > 2
        else:
            assert batcher.stats.batches == 24 and batcher.stats.largest_batch_texts == 2


def test_full_queue_answers_503_with_retry_after_and_nothing_hangs(tiny_encoder):
    settings = ServerSettings(model_name="tiny", max_queue_texts=4, batching=False)
    with running_server(tiny_encoder, settings, slow_seconds=0.2) as (url, _):
        begin = time.time()
        responses = asyncio.run(_concurrent_posts(url, [{"input": TEXTS[:2], "model": "tiny"}] * 12))
        assert time.time() - begin < 30
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503}
        busy = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and "retry later" in r.json()["error"]["message"] for r in busy)


def test_request_larger_than_the_queue_is_413_not_an_endless_503(tiny_encoder):
    with running_server(tiny_encoder, ServerSettings(model_name="tiny", max_queue_texts=3)) as (url, _):
        response = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "model": "tiny"})
        assert response.status_code == 413 and "more than the server's queue holds (3)" in response.json()["error"]["message"]
        big = httpx.post(f"{url}/v1/embeddings", content=b'{"input": "' + b"a" * 40_000_000 + b'"}',
                         headers={"content-type": "application/json"})
        assert big.status_code == 413 and "body" in big.json()["error"]["message"]


def test_a_request_that_cannot_finish_in_time_is_refused_at_once(tiny_encoder):
    """The model is slow from the start (the calibration batch measures it): a request with a 0.2 s deadline is
    refused at once with 503 and Retry-After, not left to time out; the client's own shorter timeout counts too."""
    with running_server(tiny_encoder, ServerSettings(model_name="tiny", request_timeout=0.2), slow_seconds=1.0) as (url, batcher):
        begin = time.time()
        response = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
        assert time.time() - begin < 0.5, "refused at once, not after the deadline"
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1 and batcher.stats.texts == 0
        assert httpx.get(f"{url}/health").json()["refusals"] == {"overloaded": 1}
    with running_server(tiny_encoder, ServerSettings(model_name="tiny"), slow_seconds=1.0) as (url, _):
        short = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, headers={"X-Request-Timeout": "0.3"})
        assert short.status_code == 503 and short.json()["error"]["code"] == "overloaded"
        openai_client = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, headers={"X-Stainless-Timeout": "0.3"})
        assert openai_client.status_code == 503
        assert httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30).status_code == 200
        bad = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, headers={"X-Request-Timeout": "soon"})
        assert bad.status_code == 400 and "X-Request-Timeout must be a positive number" in bad.json()["error"]["message"]


def test_a_model_that_slows_down_suddenly_gets_504_and_failure_gets_500(tiny_encoder):
    settings = ServerSettings(model_name="tiny", request_timeout=0.5)
    with running_server(tiny_encoder, settings) as (url, batcher):
        batcher.control["slow"] = 2.0  # after the calibration measured it fast: admitted, then too slow
        response = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
        assert response.status_code == 504 and "longer than 0.5 s" in response.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 200
    with running_server(tiny_encoder, ServerSettings(model_name="tiny"), fail=True) as (url, _):
        response = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
        assert response.status_code == 500 and "the model fell over" in response.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(tiny_encoder):
    """One request holds the model for 1.5 s (the estimate, from a fast calibration, admits a second one with a 0.5 s
    deadline): the second expires in the queue, is answered 504 and never reaches the model; /metrics counts it."""
    settings = ServerSettings(model_name="tiny", batching=False)
    with running_server(tiny_encoder, settings) as (url, batcher):
        batcher.control["slow"] = 1.5
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
            time.sleep(0.3)
            second = pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": TEXTS, "model": "tiny"},
                                 headers={"X-Request-Timeout": "0.5"}, timeout=30)
            assert first.result().status_code == 200 and second.result().status_code == 504
        deadline = time.time() + 10
        while (batcher.queued_texts or batcher._in_flight) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        assert batcher.stats.texts == 1 and batcher.stats.expired == 1  # the expired request's 4 texts never ran
        text = httpx.get(f"{url}/metrics").text
        assert "l2v_expired_requests 1.0" in text and "l2v_queue_wait_seconds" in text and "l2v_tokens_per_second" in text


def test_retry_after_grows_with_the_work_queued_ahead(tiny_encoder):
    import threading

    from l2v.serve.batcher import MicroBatcher, Overloaded

    async def scenario():
        batcher = MicroBatcher(tiny_encoder, calibrate=False, batching=False)
        release = threading.Event()
        batcher._encode = lambda items: (release.wait(10), np.zeros((len(items), 4), dtype=np.float32))[1]
        await batcher.start()
        batcher.speed.observe(100, 1.0)  # 0.01 s per token
        items = tiny_encoder.tokenize(["a sentence of several tokens for the queue"])
        tokens = len(items[0].input_ids)
        futures = [batcher.submit(items)]  # no deadline: always admitted
        await asyncio.sleep(0.05)  # now running, the model blocked
        retry = []
        for _ in range(3):
            futures += [batcher.submit(items) for _ in range(20)]
            with pytest.raises(Overloaded) as refused:
                batcher.submit(items, deadline=time.monotonic() + 0.5)
            retry.append(refused.value.retry_after)
        assert retry[0] < retry[1] < retry[2]
        assert abs(refused.value.expected - batcher.margin * 0.01 * tokens * 62) < 0.05 * tokens  # 61 queued + itself
        admitted = batcher.submit(items, deadline=time.monotonic() + 100)  # enough time: admitted
        release.set()
        await asyncio.wait_for(asyncio.gather(*futures, admitted), 30)
        await batcher.stop()

    asyncio.run(scenario())


def test_admitted_requests_are_bounded_in_bytes(tiny_encoder):
    settings = ServerSettings(model_name="tiny", max_pending_bytes=20_000)
    with running_server(tiny_encoder, settings) as (url, _):
        small = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
        assert small.status_code == 200
        big = httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"] * 200, "model": "tiny"}, timeout=30)
        assert big.status_code == 503 and big.json()["error"]["code"] == "memory" and big.headers["retry-after"] == "1"
        health = httpx.get(f"{url}/health").json()
        assert health["pending_bytes"] == 0 and health["refusals"] == {"memory": 1}
        assert 'l2v_refusals_total{reason="memory"} 1.0' in httpx.get(f"{url}/metrics").text


def test_a_request_whose_client_hangs_up_never_reaches_the_model(tiny_encoder):
    """While the model is busy, a client sends a request and closes the connection: its texts are dropped from
    the queue (the model encodes only the first request's), the disconnect is counted, the server keeps serving."""
    import json as _json

    settings = ServerSettings(model_name="tiny", batching=False)
    with running_server(tiny_encoder, settings, slow_seconds=1.0) as (url, batcher):
        port = int(url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(httpx.post, f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30)
            time.sleep(0.3)  # the first request is in the model now
            body = _json.dumps({"input": TEXTS, "model": "tiny"}).encode()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(0.3)  # queued behind the first
            assert busy.result().status_code == 200
        deadline = time.time() + 10
        time.sleep(0.1)
        while (batcher.queued_texts or batcher._in_flight) and time.time() < deadline:  # any batch still running ends
            time.sleep(0.05)
        assert batcher.stats.texts == 1 and batcher.stats.requests == 1  # the hung-up request's 4 texts never ran
        assert "l2v_client_disconnects_total 1.0" in httpx.get(f"{url}/metrics").text
        assert httpx.post(f"{url}/v1/embeddings", json={"input": ["paris"], "model": "tiny"}, timeout=30).status_code == 200


def test_api_key_is_required_on_every_route(tiny_encoder):
    from openai import AuthenticationError, OpenAI

    with running_server(tiny_encoder, ServerSettings(model_name="tiny", api_key="s3cret")) as (url, _):
        for path in ("/health", "/metrics", "/v1/models"):
            assert httpx.get(f"{url}{path}").status_code == 401
        assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert httpx.get(f"{url}/health", headers={"Authorization": "Bearer"}).status_code == 401
        assert httpx.post(f"{url}/v1/embeddings", json={"input": "paris", "model": "tiny"}).status_code == 401
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="wrong").embeddings.create(model="tiny", input="paris")
        response = OpenAI(base_url=f"{url}/v1", api_key="s3cret").embeddings.create(model="tiny", input="paris")
        assert len(response.data[0].embedding) == 32


def test_metrics_count_requests_texts_and_batches(served):
    url, _ = served

    def counted(text: str, labels: str) -> float:
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"l2v_requests_total{{{labels}}}")), 0.0)

    keys = ('path="/v1/embeddings",status="200"', 'path="/v1/embeddings",status="400"', 'path="other",status="404"')
    before = httpx.get(f"{url}/metrics").text  # the server is shared by this module's tests: count differences
    httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "model": "tiny"})
    assert httpx.get(f"{url}/no/such/path").status_code == 404
    assert httpx.post(f"{url}/v1/embeddings", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400
    text = httpx.get(f"{url}/metrics").text
    assert [counted(text, key) - counted(before, key) for key in keys] == [1, 1, 1]  # unknown paths share "other"
    texts_line = next(line for line in text.splitlines() if line.startswith("l2v_texts_total"))
    assert float(texts_line.split()[-1]) >= 4
    assert "l2v_request_seconds_bucket" in text and "l2v_queue_texts" in text


def test_serve_binds_loopback_by_default():
    from typer.main import get_command

    from l2v.cli import app

    serve = get_command(app).commands["serve"]
    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_queued_requests_are_refused_early_when_the_model_slows_down(tiny_encoder):
    """Five requests admitted by a fast estimate; the model then takes 0.4 s a batch: after the first slow batch
    the estimate follows, and the queued requests that can no longer finish by their 1.5 s deadline are refused
    (Overloaded, the server's 503) before it, never computed; the ones that can finish are served."""
    from l2v.serve.batcher import MicroBatcher, Overloaded

    async def scenario():
        batcher = MicroBatcher(tiny_encoder, calibrate=False, batching=False)
        batcher._encode = lambda items: (time.sleep(0.4), np.zeros((len(items), 4), dtype=np.float32))[1]
        await batcher.start()
        batcher.speed.observe(100, 0.01)  # looks fast: 0.1 ms per token
        items = tiny_encoder.tokenize(["a short request"])
        begin = time.monotonic()
        futures = [batcher.submit(items, deadline=begin + 1.5) for _ in range(6)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        answered = time.monotonic() - begin
        await batcher.stop()
        return results, answered, batcher.stats

    results, answered, stats = asyncio.run(scenario())
    served = [r for r in results if isinstance(r, np.ndarray)]
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(served) >= 2 and len(refused) >= 2 and len(served) + len(refused) == 6, results
    assert stats.texts == len(served) and stats.shed == len(refused) and stats.expired == 0
    assert answered < 1.5 + 0.2  # everyone heard by the deadline


def test_the_model_in_its_own_process_gives_the_same_embeddings_and_a_dead_one_is_a_clear_503(tiny_llama_folder, tiny_encoder):
    """``l2v serve``'s default: the forward passes run in a spawned process holding its own copy of the encoder,
    the server's copy only tokenizes (loaded with weights=False: built on the meta device, no weights read). Same
    tokens, dimension and vectors as in-process; a killed worker turns into 503 'unavailable' with the exit code, on
    requests and on /health, instead of hanging or a 500."""
    from l2v import Encoder
    from l2v.errors import L2VError
    from l2v.serve.worker import ModelProcess

    tokenizing = Encoder.from_pretrained(str(tiny_llama_folder), weights=False)
    assert {p.device.type for p in tokenizing.model.parameters()} == {"meta"}
    assert tokenizing.dimension == tiny_encoder.dimension and tokenizing.config == tiny_encoder.config
    assert [t.input_ids for t in tokenizing.tokenize(TEXTS)] == [t.input_ids for t in tiny_encoder.tokenize(TEXTS)]
    for weightless in (tokenizing, Encoder.from_pretrained(str(tiny_llama_folder))):
        if weightless is not tokenizing:
            weightless.release_weights()
        with pytest.raises(L2VError, match="no weights here"):
            weightless.encode(["the weights are not here"])
    worker = ModelProcess({"model": str(tiny_llama_folder)}, threads=1)
    try:
        with running_server(tokenizing, ServerSettings(model_name="tiny"), worker=worker) as (url, batcher):
            with httpx.Client(base_url=url, timeout=30) as client:
                answer = client.post("/v1/embeddings", json={"input": TEXTS}).json()
                served = np.array([row["embedding"] for row in answer["data"]])
                expected = tiny_encoder.encode(TEXTS, normalize=True)
                assert np.allclose(served, expected, atol=1e-5)
                assert client.get("/health").json()["status"] == "ok"
                worker.process.kill()
                worker.process.join(10)
                response = client.post("/v1/embeddings", json={"input": "after the worker died"})
                assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
                assert "exit code" in response.json()["error"]["message"]
                health = client.get("/health")
                assert health.status_code == 503 and "exit code" in health.json()["reason"]
    finally:
        worker.close()


def test_l2v_serve_runs_the_model_in_a_child_process_at_a_higher_priority(tiny_llama_folder):
    """The real command: the HTTP process lowers its own CPU priority (--http-nice, default 10) after starting the
    model process, which keeps the priority it was started with; embeddings come back from the child."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    port = _free_port()
    command = [sys.executable, "-m", "l2v.cli", "serve", "--model", str(tiny_llama_folder), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the server did not come up"
            time.sleep(0.3)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": TEXTS[:2]}, timeout=30).json()
        assert len(answer["data"]) == 2
        children = [int(c) for task in Path(f"/proc/{server.pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert os.getpriority(os.PRIO_PROCESS, server.pid) == min(base + 10, 19)
        niceness = {os.getpriority(os.PRIO_PROCESS, child) for child in children}
        assert base in niceness  # the model process (beside multiprocessing's resource tracker)
    finally:
        server.terminate()
        server.wait(timeout=30)
