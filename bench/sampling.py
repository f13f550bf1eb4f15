"""Sampler throughput and local-model speed, each beside its baseline in the same run.

1. samples/s of hivemind's sampler (openai provider, retries armed, every sample committed to
   SQLite) against a local OpenAI-compatible HTTP server, vs a bare httpx loop with the same
   concurrency against the same server.
2. tokens/s of each local GGUF model through hivemind's llamacpp provider (model in a worker
   process, requests over a pipe) vs llama-cpp-python called directly in this process with the
   same prompt, parameters, threads and load settings (weight repacking off and the same
   OpenMP spin count in both).
3. tokens/s of each composite deployment of the zoo beside its components' own speeds, their
   sum and the serial limit 1 / sum(1 / speed_i) (`bench/composite.py`, one process each).

    .venv/bin/python bench/sampling.py            # full
    .venv/bin/python bench/sampling.py --quick    # smaller counts
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec
from hivemind.inputs.zoo import load_zoo
from hivemind.providers.gguf import resolve_gguf
from hivemind.providers.llamacpp import (
    DEFAULT_TEMPLATE,
    extra_buffer_types,
    render_prompt,
    sampling_kwargs,
)
from hivemind.providers.openai import chat_body
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import plan_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store
from hivemind.testing.openai_server import free_port


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hivemind.testing.openai_server", "--port", str(port)])
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("stub server did not start")


def study_requests(n: int, deployment: Deployment) -> tuple[StudySpec, list[Query], list]:
    spec = StudySpec(
        name="bench",
        query_set="-",
        deployments=[deployment.name],
        samples=n // 10,
        params=SamplingParams(temperature=1.0, max_tokens=16),
    )
    queries = [Query(id=f"q{i}", text=f"Write a metaphor about thing {i}.") for i in range(10)]
    return spec, queries, plan_requests(spec, queries, [deployment])


async def hivemind_rate(base: str, concurrency: int, n: int) -> float:
    deployment = Deployment(name="stub", provider="openai", model="stub", api_base=base, max_concurrency=concurrency)
    spec, queries, requests = study_requests(n, deployment)
    provider = create_provider(deployment)
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        store.register_study(spec, queries, [deployment])
        started = time.perf_counter()
        report = await Sampler(store, {"stub": provider}, progress=False).run(requests)
        elapsed = time.perf_counter() - started
    await provider.aclose()
    assert sum(report.succeeded.values()) == len(requests), report
    return len(requests) / elapsed


async def bare_httpx_rate(base: str, concurrency: int, n: int) -> float:
    deployment = Deployment(name="stub", provider="openai", model="stub", api_base=base)
    _, _, requests = study_requests(n, deployment)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        queue = list(requests)

        async def worker() -> None:
            while queue:
                request = queue.pop()
                response = await client.post("/chat/completions", json=chat_body("stub", request))
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(requests) / (time.perf_counter() - started)


def bench_sampler(n: int) -> None:
    server, base = start_server()
    try:
        asyncio.run(bare_httpx_rate(base, 8, 200))  # warm up the server
        print(f"\n## sampler vs bare httpx ({n} samples per run, local OpenAI-compatible server)")
        print(f"{'concurrency':>11} {'hivemind/s':>11} {'httpx/s':>9} {'ratio':>6}")
        for concurrency in (1, 16, 64, 256):
            ours = asyncio.run(hivemind_rate(base, concurrency, n))
            bare = asyncio.run(bare_httpx_rate(base, concurrency, n))
            print(f"{concurrency:>11} {ours:>11.0f} {bare:>9.0f} {ours / bare:>6.2f}")
    finally:
        server.terminate()
        server.wait()


async def hivemind_tokens(deployment: Deployment, requests: list) -> tuple[int, float]:
    """Through the provider: the first request starts the worker and loads the model (not timed)."""
    provider = create_provider(deployment)
    try:
        await provider.generate(requests[0])
        started, tokens = time.perf_counter(), 0
        for request in requests:
            tokens += (await provider.generate(request)).completion_tokens or 0
        return tokens, time.perf_counter() - started
    finally:
        await provider.aclose()


_DIRECT: dict[str, Any] = {}


def direct_tokens(deployment: Deployment, requests: list) -> tuple[int, float]:
    """llama-cpp-python as a user would call it: its own `Llama`, loaded and called on this thread,
    with as many threads as hivemind gives it (its default is half the cores) and, like hivemind,
    without weight repacking (`use_extra_bufts=False`; with it, AMX CPUs crash)."""
    from llama_cpp import Llama

    options = deployment.options
    if deployment.name not in _DIRECT:
        with extra_buffer_types(bool(options.get("weight_repacking", False))):
            _DIRECT[deployment.name] = Llama(
                model_path=str(resolve_gguf(options, deployment.name)),
                n_ctx=int(options.get("n_ctx", 2048)),
                chat_format=options.get("chat_format"),
                n_threads=os.cpu_count(),
                verbose=False,
            )
    model = _DIRECT[deployment.name]
    started, tokens = time.perf_counter(), 0
    for request in requests:
        kwargs = sampling_kwargs(request)
        if options.get("mode", "chat") == "chat":
            out = model.create_chat_completion(messages=[m.model_dump() for m in request.messages], **kwargs)
        else:
            out = model.create_completion(render_prompt(request, DEFAULT_TEMPLATE), **kwargs)
        tokens += out["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started


def local_worker(mode: str, name: str, samples: int) -> None:
    """One measurement in a fresh process: only this model is loaded, so nothing else competes."""
    deployment = load_zoo().get(name).model_copy(update={"params": SamplingParams(max_tokens=48, temperature=1.0)})
    _, _, requests = study_requests(samples * 10, deployment)
    requests = requests[:samples]
    if mode == "hivemind":
        tokens, seconds = asyncio.run(hivemind_tokens(deployment, requests))
    else:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")  # as in hivemind's workers: same OpenMP spin
        direct_tokens(deployment, requests[:1])
        tokens, seconds = direct_tokens(deployment, requests)
    print(tokens / seconds)


def bench_local_models(samples: int, rounds: int) -> None:
    print(
        f"\n## local models: tokens/s through hivemind vs llama-cpp-python directly "
        f"({samples} samples, 48 tokens max, best of {rounds} alternating runs, each in a fresh process)"
    )
    print(f"{'deployment':<30} {'hivemind tok/s':>14} {'direct tok/s':>12} {'ratio':>6}")
    for deployment in load_zoo().select(None):
        best = {"hivemind": 0.0, "direct": 0.0}
        for _ in range(rounds):
            for mode in ("hivemind", "direct"):
                out = subprocess.run(
                    [sys.executable, __file__, "--local-worker", mode, deployment.name, str(samples)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                best[mode] = max(best[mode], float(out.stdout.strip().splitlines()[-1]))
        ours, bare = best["hivemind"], best["direct"]
        print(f"{deployment.name:<30} {ours:>14.1f} {bare:>12.1f} {ours / bare:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    parser.add_argument("--skip-local", action="store_true", help="only the HTTP sampler benchmark")
    parser.add_argument("--skip-http", action="store_true", help="only the local-model benchmark")
    parser.add_argument("--skip-composite", action="store_true", help="leave out the composite deployments")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating runs per local model (best kept; more on a shared machine)"
    )
    parser.add_argument("--local-worker", nargs=3, metavar=("MODE", "NAME", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.local_worker:
        mode, name, samples = args.local_worker
        local_worker(mode, name, int(samples))
        return
    if not args.skip_http:
        bench_sampler(500 if args.quick else 2000)
    if not args.skip_local:
        bench_local_models(3 if args.quick else 8, args.rounds)
    if not args.skip_composite:
        bench_composites(16 if args.quick else 32)


def bench_composites(tokens: int) -> None:
    """Each composite in a fresh process (only its components loaded), as bench/composite.py runs it."""
    script = Path(__file__).resolve().parent / "composite.py"
    names = [d.name for d in load_zoo().deployments if d.provider == "composite"]
    print(f"\n## composites: tokens/s beside their components' own speeds ({tokens} tokens per prompt)")
    for name in names:
        out = subprocess.run(
            [sys.executable, str(script), "--tokens", str(tokens), name], capture_output=True, text=True, check=True
        )
        print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
