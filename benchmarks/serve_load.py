"""Load test of `l2v serve` on loopback: N requests from C concurrent clients, with and without micro-batching.

Starts the real server (`python -m l2v.cli serve`) in a subprocess for each mode, waits for /health, sends
``--requests`` POST /v1/embeddings requests (one STS-B test sentence each, in a fixed order) from
``--concurrency`` asyncio clients, and reports throughput, p50/p99 latency, errors (must be 0) and the
server's peak RSS (VmHWM). Bounded: every request has a timeout and the whole run a deadline.

    python benchmarks/serve_load.py [--model smollm2-135m] [--requests 1000] [--concurrency 64]
Results go to benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from _common import stsb_test_sentences, write_result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    port = free_port()
    command = [sys.executable, "-m", "l2v.cli", "serve", "--model", args.model, "--served-name", "bench", "--port", str(port),
               "--batching" if batching else "--no-batching", "--max-queue", str(args.requests * 2)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
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
        httpx.post(f"{url}/v1/embeddings", json={"input": texts[:8], "model": "bench"}, timeout=120)  # warm-up
        deadline = time.perf_counter() + args.max_seconds
        result = asyncio.run(load(url, texts, args.concurrency, args.timeout, deadline))
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        batches = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("l2v_batches ")), None)
        largest = next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("l2v_largest_batch_texts ")), None)
        result.update({"batching": batching, "forward_batches": batches, "largest_batch_texts": largest,
                       "server_peak_rss_mb": round(peak_rss_mb(server.pid), 1)})
        return result
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="deadline for sending, per mode")
    args = parser.parse_args()
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
