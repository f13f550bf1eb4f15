"""Sampler throughput against a fixed-latency OpenAI-compatible server, beside its limits.

The server (`bench/latency_server.py`, its own process) answers every request after `--latency`
seconds and costs almost nothing per request, like vLLM or a hosted API seen from the client.
For each concurrency C this prints, in one run:

- the ideal rate C / latency,
- a raw asyncio socket client (hand-written HTTP/1.1 keep-alive): the client-side ceiling,
- candidate HTTP clients: one `httpx.AsyncClient`, several pooled httpx clients (16
  connections each), one bare `aiohttp.ClientSession` (the `openai` provider's transport),
- hivemind's sampler end to end (lazy plan, retries armed, every sample committed to SQLite
  before it counts) with the `openai` provider and with the `litellm` provider,

each as samples/s and as a ratio to min(ideal, raw client). Figures are the best of `--rounds`
alternating rounds, which damps noise from other processes on a shared machine.

    .venv/bin/python bench/http_sampling.py                 # C = 64 and 256, 100 ms
    .venv/bin/python bench/http_sampling.py --quick         # fewer requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import

from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec
from hivemind.providers.openai import chat_body
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import iter_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store
from hivemind.testing.openai_server import free_port

SERVER = Path(__file__).resolve().parent / "latency_server.py"
QUERIES = [Query(id=f"q{i}", text=f"Write a metaphor about thing {i}.") for i in range(10)]


@contextmanager
def latency_server(latency: float) -> Iterator[tuple[str, int]]:
    """Start the fixed-latency server in its own process; yields (host, port)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port), "--latency", str(latency)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"latency server did not start: {line!r}")
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(timeout=10)


def study(n: int, deployment: Deployment) -> StudySpec:
    return StudySpec(
        name="bench",
        query_set="-",
        deployments=[deployment.name],
        samples=max(1, n // len(QUERIES)),
        params=SamplingParams(temperature=1.0, max_tokens=16),
    )


def request_body() -> bytes:
    deployment = Deployment(name="d", provider="openai", model="latency", api_base="http://x")
    first = next(iter_requests(study(10, deployment), QUERIES, deployment))
    return json.dumps(chat_body("latency", first)).encode()


async def _run_workers(
    concurrency: int, n: int, one: Callable[[int], Awaitable[None]], max_seconds: float = 6.0
) -> float:
    """Run up to `n` calls of `one(worker)` over `concurrency` workers, stopping new calls after
    `max_seconds` (slow clients would take minutes); returns completed calls/s."""
    left, done = n, 0
    deadline = time.perf_counter() + max_seconds

    async def worker(index: int) -> None:
        nonlocal left, done
        while left > 0 and time.perf_counter() < deadline:
            left -= 1
            await one(index)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done / (time.perf_counter() - started)


async def raw_rate(host: str, port: int, concurrency: int, n: int) -> float:
    """Hand-written HTTP/1.1 over asyncio streams, one keep-alive connection per worker."""
    body = request_body()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    connections = [await asyncio.open_connection(host, port) for _ in range(concurrency)]

    async def one(index: int) -> None:
        reader, writer = connections[index]
        writer.write(head + body)
        header = await reader.readuntil(b"\r\n\r\n")
        length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        json.loads(await reader.readexactly(length))["choices"][0]["message"]["content"]

    try:
        return await _run_workers(concurrency, n, one)
    finally:
        for _, writer in connections:
            writer.close()


async def httpx_rate(base: str, concurrency: int, n: int, clients: int = 1) -> float:
    """`clients` httpx.AsyncClient pools sharing `concurrency` connections between them."""
    import httpx

    body = request_body()
    per_client = max(1, concurrency // clients)
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    pool = [httpx.AsyncClient(base_url=base, limits=limits, timeout=60) for _ in range(clients)]

    async def one(index: int) -> None:
        response = await pool[index % clients].post(
            "/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        response.raise_for_status()
        response.json()["choices"][0]["message"]["content"]

    try:
        return await _run_workers(concurrency, n, one)
    finally:
        for client in pool:
            await client.aclose()


async def aiohttp_rate(base: str, concurrency: int, n: int) -> float:
    """One aiohttp.ClientSession with a connection pool of `concurrency`."""
    import aiohttp

    body = request_body()
    url = f"{base}/chat/completions"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), headers={"content-type": "application/json"}
    )

    async def one(_: int) -> None:
        async with session.post(url, data=body) as response:
            response.raise_for_status()
            json.loads(await response.read())["choices"][0]["message"]["content"]

    try:
        return await _run_workers(concurrency, n, one)
    finally:
        await session.close()


async def sampler_rate(base: str, concurrency: int, n: int, provider: str = "openai") -> float:
    """hivemind's sampler end to end: lazy plan, retries armed, every sample committed first."""
    model = "latency" if provider == "openai" else "openai/latency"
    deployment = Deployment(name="latency", provider=provider, model=model, api_base=base, max_concurrency=concurrency)
    spec = study(n, deployment)
    providers = {deployment.name: create_provider(deployment)}
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        store.register_study(spec, QUERIES, [deployment])
        started = time.perf_counter()
        report = await Sampler(store, providers, progress=False).run(
            {deployment.name: iter_requests(spec, QUERIES, deployment)}
        )
        elapsed = time.perf_counter() - started
        committed = store.progress(spec.name)[deployment.name]["ok"]
    await providers[deployment.name].aclose()
    if committed != report.sampled or report.failed:
        raise RuntimeError(f"sampler lost or failed samples: {report}")
    return report.sampled / elapsed


def bench(
    latency: float, concurrencies: list[int], per_connection: int, rounds: int, litellm: bool, httpx: bool = True
) -> None:
    with latency_server(latency) as (host, port):
        base = f"http://{host}:{port}/v1"
        asyncio.run(raw_rate(host, port, 8, 80))  # warm up
        print(
            f"\n## samples/s against a fixed-latency server ({latency * 1000:.0f} ms, own process), "
            f"best of {rounds} rounds"
        )
        print(f"{'C':>5} {'candidate':<34} {'req/s':>8} {'/ limit':>8}")
        for concurrency in concurrencies:
            n = per_connection * concurrency
            candidates: dict[str, Callable[[], Awaitable[float]]] = {
                "raw asyncio socket client": lambda: raw_rate(host, port, concurrency, n),
                "httpx, one AsyncClient": lambda: httpx_rate(base, concurrency, n),
                f"httpx, {max(1, concurrency // 16)} clients x 16 connections": lambda: httpx_rate(
                    base, concurrency, n, clients=max(1, concurrency // 16)
                ),
                "aiohttp, one ClientSession": lambda: aiohttp_rate(base, concurrency, n),
                "hivemind sampler, openai provider": lambda: sampler_rate(base, concurrency, n),
            }
            if not httpx:
                candidates = {k: v for k, v in candidates.items() if not k.startswith("httpx")}
            if litellm:  # its ceiling is far lower: fewer requests keep the run short
                small = min(n, 4 * concurrency)
                candidates["hivemind sampler, litellm provider"] = lambda: sampler_rate(
                    base, concurrency, small, "litellm"
                )
            best = {name: 0.0 for name in candidates}
            for _ in range(rounds):
                for name, measure in candidates.items():
                    best[name] = max(best[name], asyncio.run(measure()))
            ideal = concurrency / latency
            limit = min(ideal, best["raw asyncio socket client"])
            print(f"{concurrency:>5} {'ideal C / latency':<34} {ideal:>8.0f} {ideal / limit:>8.2f}")
            for name, rate in best.items():
                print(f"{concurrency:>5} {name:<34} {rate:>8.0f} {rate / limit:>8.2f}")
            sampler = best["hivemind sampler, openai provider"] / best["raw asyncio socket client"]
            print(f"{concurrency:>5} {'=> sampler / raw client':<34} {'':>8} {sampler:>8.2f}  (target >= 0.80)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.1, help="server latency in seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="10 requests per connection, not 30")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-httpx", action="store_true", help="leave out the httpx candidates (slow)")
    args = parser.parse_args()
    bench(
        args.latency,
        args.concurrency,
        10 if args.quick else 30,
        args.rounds,
        not args.skip_litellm,
        not args.skip_httpx,
    )


if __name__ == "__main__":
    main()
