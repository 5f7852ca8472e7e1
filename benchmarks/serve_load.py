"""Load test of `l2v serve` on loopback: N requests from C concurrent clients, with and without micro-batching.

Starts the real server (`python -m l2v.cli serve`) in a subprocess for each mode, waits for /health, sends
``--requests`` POST /v1/embeddings requests (one STS-B test sentence each, in a fixed order) from
``--concurrency`` asyncio clients, and reports throughput, p50/p99 latency, errors (must be 0) and the
server's peak RSS (VmHWM). Bounded: every request has a timeout and the whole run a deadline.

    python benchmarks/serve_load.py [--model smollm2-135m] [--requests 1000] [--concurrency 64]
Results go to benchmarks/results/serve_load.json.

Overload mode (issue 18): N clients at once, one request each, against the server's default limits, today's
server and the one at ``--before`` (a commit, run from a git worktree) in the same run; counts by status, p50/p99
of the 200s, throughput of the 200s, Retry-After values and peak RSS. Clients wait longer than the server's
timeout, so every answer is the server's own. Results go to benchmarks/results/serve_overload.json.

    python benchmarks/serve_load.py --overload 10000 --before aaec434 [--also="--http-nice 0" --also=--no-model-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from _common import stsb_test_sentences, write_result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's model process)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += _tree(int(child))
    return found


@contextlib.contextmanager
def sampled_rss(pid: int, every: float = 0.25):
    """Samples the summed RSS of the server's processes while the block runs; yields a dict whose "peak_mb" is the
    largest sum seen (the peak of the sum, which the per-process peaks cannot give)."""
    import threading

    seen, stop = {"peak_mb": 0.0}, threading.Event()

    def sample():
        while not stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                seen["peak_mb"] = max(seen["peak_mb"], sum(_rss_mb(p, "VmRSS:") for p in _tree(pid)))
            stop.wait(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of ``pid`` plus those of its descendants (the server's model process): the sum of each
    one's peak, an upper bound of the peak of their sum (the server's own peak is while it loads the weights it
    then releases)."""
    return sum(_rss_mb(p, "VmHWM:") for p in _tree(pid))


def peak_rss_by_process(pid: int) -> dict[str, float]:
    """Each server process's peak RSS (VmHWM), named by its command line's tail (HTTP process, model process, the
    multiprocessing resource tracker): which one a memory target is missed in."""
    found = {}
    for child in _tree(pid):
        with contextlib.suppress(OSError):
            words = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            name = " ".join(words[-2:]) if child != pid else "http (l2v serve)"
            found[f"{child}: {name[:60]}"] = round(_rss_mb(child, "VmHWM:"), 1)
    return found


async def raw_post(host: str, port: int, body: bytes, timeout: float) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 POST on its own connection, written and read by hand: at 10,000 concurrent clients a pooled
    client library spends more of the two cores than the server does, and that would be measured instead."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (host.encode(), len(body), body))
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        payload = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
        return status, headers, payload
    finally:
        writer.close()


async def burst(url: str, texts: list[str], timeout: float) -> dict:
    """Every text at once, one request per client on its own connection; each answer counted by status."""
    import json as _json

    host, port = url.rsplit("/", 1)[-1].split(":")
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    retry_after: list[int] = []

    async def client(text: str) -> None:
        begin = time.perf_counter()
        try:
            status, headers, payload = await raw_post(host, int(port), _json.dumps({"input": text, "model": "bench"}).encode(), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            statuses[type(error).__name__] = statuses.get(type(error).__name__, 0) + 1
            return
        key = str(status)
        if status == 200 and len(_json.loads(payload)["data"]) != 1:
            key = "malformed"
        statuses[key] = statuses.get(key, 0) + 1
        if key == "200":
            latencies.append(time.perf_counter() - begin)
        elif "retry-after" in headers:
            retry_after.append(int(headers["retry-after"]))

    begin = time.perf_counter()
    await asyncio.gather(*[client(text) for text in texts])
    wall = time.perf_counter() - begin
    latencies.sort()
    done = len(latencies)

    def quantile(q: float) -> float:
        return round(latencies[min(done - 1, int(q * done))], 2) if done else float("nan")

    # throughput of the 200s: over the time until the last 200 arrived (waiting for refusals is not serving)
    last_ok = latencies[-1] if latencies else float("nan")
    return {"clients": len(texts), "by_status": dict(sorted(statuses.items())), "wall_seconds": round(wall, 1),
            "ok_per_second": round(done / last_ok, 2) if done else 0.0, "p50_s": quantile(0.50), "p99_s": quantile(0.99),
            "non_200_with_retry_after": len(retry_after), "non_200": len(texts) - done,
            "retry_after_s": {"min": min(retry_after), "median": statistics.median(retry_after), "max": max(retry_after)} if retry_after else None}


@contextlib.contextmanager
def running_server(args, extra: list[str], source: Path | None = None):
    """`l2v serve` in a subprocess (from ``source``'s tree when given), healthy and warmed up; yields (url, process)
    and stops it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "l2v.cli", "serve", "--model", args.model, "--served-name", "bench", "--port", str(port), *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if source is not None:  # another l2v's source tree first on the path
        env["PYTHONPATH"] = f"{source / 'src'}:{env.get('PYTHONPATH', '')}"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.time()
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - start > 300:
                sys.exit("the server did not come up within 300 s")
            time.sleep(0.5)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def run_overload(args, texts: list[str], source: Path | None, extra: list[str] | None = None) -> dict:
    with running_server(args, list(extra or []), source) as (url, server):
        httpx.post(f"{url}/v1/embeddings", json={"input": texts[:8], "model": "bench"}, timeout=120)  # warm-up
        with sampled_rss(server.pid) as rss:
            result = asyncio.run(burst(url, texts, args.timeout))
        result["server_processes"] = len(_tree(server.pid))
        result["server_rss_mb_during_burst"] = round(rss["peak_mb"], 1)  # peak of the processes' summed RSS
        result["server_peak_rss_mb"] = round(peak_rss_mb(server.pid), 1)
        result["server_peak_rss_mb_by_process"] = peak_rss_by_process(server.pid)
        health = httpx.get(f"{url}/health", timeout=10).json()
        result["server_health"] = {k: v for k, v in health.items() if k not in ("model", "uptime_seconds")}
        return result


def overload(args) -> None:
    sentences = stsb_test_sentences()
    texts = [sentences[i % len(sentences)] for i in range(args.overload)]
    results = {}
    worktree = None
    if args.before:
        worktree = Path(tempfile.mkdtemp(prefix="l2v-before-")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], check=True, capture_output=True)
    try:
        runs = [("now", None, [])]
        for variant in args.also:  # today's server with other flags, e.g. "--http-nice 0" or "--no-model-process"
            runs.append((f"now, {variant}", None, variant.split()))
        if worktree:
            runs.append((f"before ({args.before})", worktree, []))
        for name, source, extra in runs:
            print(f"== {name}: {args.overload} clients at once", flush=True)
            results[name] = run_overload(args, texts, source, extra)
            print(json.dumps(results[name]), flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], capture_output=True)
    path = write_result("serve_overload", {
        "model": args.model, "clients": args.overload, "client_timeout_s": args.timeout, "server": "default limits",
        "results": results, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    })
    print(f"wrote {path}")


async def load(url: str, texts: list[str], concurrency: int, timeout: float, deadline: float) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < len(texts) and time.perf_counter() < deadline:
            text = texts[next_index]
            next_index += 1
            begin = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/embeddings", json={"input": text, "model": "bench"}, timeout=timeout)
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    continue
                if len(response.json()["data"]) != 1:
                    errors["malformed"] = errors.get("malformed", 0) + 1
                    continue
            except httpx.HTTPError as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - begin)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    begin = time.perf_counter()
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
    wall = time.perf_counter() - begin
    latencies.sort()
    done = len(latencies)

    def quantile(q: float) -> float:
        return latencies[min(done - 1, int(q * done))] * 1000 if done else float("nan")

    return {"requests": len(texts), "ok": done, "errors": sum(errors.values()), "error_kinds": errors,
            "unsent": len(texts) - next_index, "wall_seconds": round(wall, 2),
            "requests_per_second": round(done / wall, 2), "p50_ms": round(quantile(0.50), 1), "p99_ms": round(quantile(0.99), 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if done else None}


def run_mode(args, texts: list[str], batching: bool) -> dict:
    extra = ["--batching" if batching else "--no-batching", "--max-queue", str(args.requests * 2)]
    with running_server(args, extra) as (url, server):
        httpx.post(f"{url}/v1/embeddings", json={"input": texts[:8], "model": "bench"}, timeout=120)  # warm-up
        deadline = time.perf_counter() + args.max_seconds
        result = asyncio.run(load(url, texts, args.concurrency, args.timeout, deadline))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        batches = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("l2v_batches ")), None)
        largest = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("l2v_largest_batch_texts ")), None)
        result.update({"batching": batching, "forward_batches": batches, "largest_batch_texts": largest,
                       "server_peak_rss_mb": round(peak_rss_mb(server.pid), 1)})
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="deadline for sending, per mode")
    parser.add_argument("--overload", type=int, default=0, help="N clients at once, one request each (overload mode)")
    parser.add_argument("--before", default=None, help="overload mode: also run the server of this commit")
    parser.add_argument("--also", action="append", default=[], metavar="FLAGS",
                        help="overload mode: also run today's server with these `l2v serve` flags (repeatable)")
    args = parser.parse_args()
    if args.overload:
        if args.timeout <= 120:
            args.timeout = 150.0  # longer than the server's default 120 s: every answer is the server's
        overload(args)
        return
    sentences = stsb_test_sentences()
    texts = [sentences[i % len(sentences)] for i in range(args.requests)]
    results = {}
    for batching in (True, False):
        mode = "micro-batching" if batching else "one request per forward pass"
        print(f"== {mode}", flush=True)
        results[mode] = run_mode(args, texts, batching)
        print({k: v for k, v in results[mode].items() if k != "error_kinds"}, flush=True)
    on, off = results["micro-batching"], results["one request per forward pass"]
    ratio = on["requests_per_second"] / off["requests_per_second"] if off["requests_per_second"] else float("nan")
    print(f"throughput with micro-batching / without: {ratio:.2f}x; errors {on['errors']} / {off['errors']}")
    path = write_result("serve_load", {
        "model": args.model, "requests": args.requests, "concurrency": args.concurrency, "results": results,
        "throughput_ratio_batching_vs_not": round(ratio, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
