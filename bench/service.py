"""Load on the REST service: concurrent clients polling status and submitting studies while a
study samples in the background. Loopback only; bounded in clients, submissions and seconds.

Starts `hivemind serve` in a subprocess on 127.0.0.1 (a free port, retried if another process
takes it before the server binds it; a throwaway store and a mock
zoo, a random token), then measures, in the same run:

  baseline   status polls against an idle service (nothing sampling)
  loaded     status polls + list calls + study submissions while a study samples

and prints requests/s with p50/p99 latency per kind of request, plus the background study's
sampling rate alone and under the load (the service must not starve its own workers).

    .venv/bin/python bench/service.py --clients 16 --seconds 5 --max-submissions 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
ZOO = """
deployments:
  - {name: bench-bg, provider: mock, model: mock, max_concurrency: 8, options: {latency_s: 0.02}}
  - {name: bench-fast, provider: mock, model: mock, max_concurrency: 16, options: {diversity: 3}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """True once the server answers; False if it exited during start-up (e.g. its port was taken)."""
    deadline = time.time() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2) as probe:
        while time.time() < deadline:
            if proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if (await probe.get("/healthz")).status_code == 200:
                    return True
            await asyncio.sleep(0.1)
    raise SystemExit("the server did not come up")


async def start_server(
    workdir: Path, env: dict[str, str], log_path: Path, tries: int = 5
) -> tuple[subprocess.Popen, int]:
    """`hivemind serve` on a free port; picked again when it is taken before the server binds it."""
    for _ in range(tries):
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hivemind.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--store",
                    str(workdir / "store"),
                    "--zoo",
                    str(workdir / "zoo.yaml"),
                    "--token-env",
                    "HIVEMIND_BENCH_TOKEN",
                    "--no-scheduler",
                    "--log-level",
                    "warning",
                    "--workers",
                    "4",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if await wait_healthy(f"http://127.0.0.1:{port}", proc):
            return proc, port
        if "address already in use" not in log_path.read_text(errors="replace").lower():
            raise SystemExit(f"the server exited during start-up (log: {log_path})")
    raise SystemExit(f"no free port after {tries} tries")


async def wait_state(client: httpx.AsyncClient, study: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = (await client.get(f"/v1/studies/{study}")).json()
        if status["state"] in states:
            return status
        await asyncio.sleep(0.05)
    raise SystemExit(f"study {study} did not reach {states}")


async def drive(
    client: httpx.AsyncClient, clients: int, seconds: float, poll: str, max_submissions: int
) -> tuple[dict[str, list[float]], float, int]:
    """`clients` loops of requests for `seconds`; every 10th request of a client is a list call,
    and submissions (small studies) are spread over the run up to `max_submissions`."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors = 0
    submitted = 0
    deadline = time.perf_counter() + seconds
    every = seconds / max_submissions if max_submissions else None

    async def one(kind: str, method: str, url: str, **kwargs: object) -> None:
        nonlocal errors
        started = time.perf_counter()
        response = await client.request(method, url, **kwargs)
        latencies[kind].append(time.perf_counter() - started)
        if response.status_code >= 400:
            errors += 1

    async def poller(index: int) -> None:
        count = 0
        while time.perf_counter() < deadline:
            count += 1
            if count % 10 == 0:
                await one("list studies", "GET", "/v1/studies")
            else:
                await one("status poll", "GET", poll)

    async def submitter() -> None:
        nonlocal submitted
        while every is not None and submitted < max_submissions and time.perf_counter() < deadline:
            name = f"bench-sub-{submitted}-{secrets.token_hex(3)}"
            body = {
                "name": name,
                "query_set": "open-ended-v1",
                "deployments": ["bench-fast"],
                "samples": 2,
                "max_queries": 2,
                "analyze": False,
            }
            await one("submit study", "POST", "/v1/studies", json=body, headers={"Idempotency-Key": name})
            submitted += 1
            await asyncio.sleep(every)

    started = time.perf_counter()
    await asyncio.gather(*(poller(i) for i in range(clients)), submitter())
    return latencies, time.perf_counter() - started, errors


def report(label: str, latencies: dict[str, list[float]], elapsed: float, errors: int) -> None:
    total = sum(len(v) for v in latencies.values())
    print(f"{label:<9} all requests   n={total:6d}  {total / elapsed:8.1f} req/s   errors={errors}")
    for kind, values in sorted(latencies.items()):
        ms = np.asarray(values) * 1000
        print(
            f"{'':<9} {kind:<14} n={len(ms):6d}  {len(ms) / elapsed:8.1f} req/s   "
            f"p50={np.percentile(ms, 50):7.2f} ms   p99={np.percentile(ms, 99):7.2f} ms"
        )


async def main(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="hivemind-bench-service-"))
    (workdir / "zoo.yaml").write_text(ZOO)
    env = {**os.environ, "HIVEMIND_BENCH_TOKEN": token, "PYTHONPATH": str(REPO)}
    proc: subprocess.Popen | None = None
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    try:
        proc, port = await start_server(workdir, env, workdir / "server.log")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            await client.post(
                "/v1/studies",
                json={
                    "name": "bench-idle",
                    "query_set": "open-ended-v1",
                    "deployments": ["bench-fast"],
                    "samples": 2,
                    "analyze": False,
                },
            )
            await wait_state(client, "bench-idle", ("done",))
            print(
                f"service: 127.0.0.1:{port}, {args.clients} clients, {args.seconds:.0f} s per phase, "
                f"<= {args.max_submissions} submissions; mock study in the background"
            )

            idle = await drive(client, args.clients, args.seconds, "/v1/studies/bench-idle", 0)
            report("baseline", *idle)

            background = {
                "name": "bench-bg",
                "query_set": "open-ended-v1",
                "deployments": ["bench-bg"],
                "samples": args.background_samples,
                "analyze": False,
            }
            assert (await client.post("/v1/studies", json=background)).status_code == 202
            await wait_state(client, "bench-bg", ("sampling",))
            first = (await client.get("/v1/studies/bench-bg")).json()["total"]["ok"]
            t0 = time.perf_counter()
            await asyncio.sleep(min(args.seconds, 3.0))
            alone = ((await client.get("/v1/studies/bench-bg")).json()["total"]["ok"] - first) / (
                time.perf_counter() - t0
            )

            before = (await client.get("/v1/studies/bench-bg")).json()["total"]
            loaded = await drive(client, args.clients, args.seconds, "/v1/studies/bench-bg", args.max_submissions)
            after = (await client.get("/v1/studies/bench-bg")).json()["total"]
            report("loaded", *loaded)
            under = (after["ok"] - before["ok"]) / loaded[1]
            print(
                f"background sampling: {alone:8.1f} samples/s alone, {under:8.1f} samples/s under load "
                f"({after['ok']}/{after['planned']} sampled)"
            )
            if after["pending"] == 0:
                print("warning: the background study finished during the loaded phase; raise --background-samples")
            await client.post("/v1/studies/bench-bg/cancel")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, choices=range(1, 65), metavar="1..64")
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase (at most 60)")
    parser.add_argument("--max-submissions", type=int, default=20, choices=range(0, 201), metavar="0..200")
    parser.add_argument("--background-samples", type=int, default=100, help="samples per query of the background study")
    parser.add_argument("--keep", action="store_true", help="keep the store and server log")
    arguments = parser.parse_args()
    arguments.seconds = max(1.0, min(arguments.seconds, 60.0))
    asyncio.run(main(arguments))
