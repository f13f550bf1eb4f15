"""Reads on the REST service, idle and while it works: 40 studies (mock deployments, analysis on)
submitted at once, with `/v1/studies` and `/v1/studies/{name}` read 64 at a time throughout.
Loopback only; bounded in studies, clients, reads and seconds.

Starts `hivemind serve` in a subprocess on 127.0.0.1 (a free port, retried if another process
takes it before the server binds it; a throwaway store, a mock zoo, a random token), then
measures, in the same run:

  loaded   reads at `--clients` concurrency from the moment the studies are submitted until the
           last of them is done (every 10th read lists every study, the others read one study)
  idle     `--idle-reads` reads at the same concurrency once all of them are done

and prints p50/p99 latency per kind of read and overall, the studies' total time (first submit to
last done) and whether each study ended done with exactly its planned rows, no duplicate. With
`--before TREE` it first runs the same on another source tree (e.g. the code before a change:
`git archive ee29df6 | tar -x -C /tmp/before24`) and prints both side by side.

    .venv/bin/python bench/service.py                          # this tree
    .venv/bin/python bench/service.py --before /tmp/before24   # that tree, then this one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
ZOO = """
deployments:
  - {name: bench-a, provider: mock, model: mock, max_concurrency: 8, options: {diversity: 3, latency_s: 0.01}}
  - {name: bench-b, provider: mock, model: mock, max_concurrency: 8, options: {diversity: 6, style: varied, latency_s: 0.01}}
"""
DEPLOYMENTS = ["bench-a", "bench-b"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> bool:
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
    tree: Path, workdir: Path, env: dict[str, str], workers: int, tries: int = 5
) -> tuple[subprocess.Popen, int]:
    """`hivemind serve` from `tree` on a free port; picked again when taken before the server binds it."""
    log_path = workdir / "server.log"
    for _ in range(tries):
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hivemind.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
                + ["--store", str(workdir / "store"), "--zoo", str(workdir / "zoo.yaml")]
                + ["--token-env", "HIVEMIND_BENCH_TOKEN", "--no-scheduler", "--log-level", "warning"]
                + ["--workers", str(workers)],
                cwd=tree,
                env={**env, "PYTHONPATH": str(tree)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if await wait_healthy(f"http://127.0.0.1:{port}", proc):
            return proc, port
        if "address already in use" not in log_path.read_text(errors="replace").lower():
            raise SystemExit(f"the server exited during start-up (log: {log_path})")
    raise SystemExit(f"no free port after {tries} tries")


class Reader:
    """GETs through aiohttp (default: light enough that the client is not what is measured; an
    httpx client at 64 concurrency takes a core of this machine's two itself) or httpx."""

    def __init__(self, kind: str, url: str, headers: dict[str, str], connections: int) -> None:
        self.kind, self.url, self.headers, self.connections = kind, url, headers, connections

    async def __aenter__(self) -> Reader:
        if self.kind == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.connections)
            self.session: Any = aiohttp.ClientSession(
                self.url, headers=self.headers, connector=connector, timeout=aiohttp.ClientTimeout(60)
            )
        else:
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self.session = httpx.AsyncClient(base_url=self.url, limits=limits, timeout=60, headers=self.headers)
        return self

    async def __aexit__(self, *_: object) -> None:
        await (self.session.close() if self.kind == "aiohttp" else self.session.aclose())

    async def get(self, path: str) -> int:
        """The status of one GET, its body read."""
        if self.kind == "aiohttp":
            async with self.session.get(path) as response:
                await response.read()
                return int(response.status)
        return int((await self.session.get(path)).status_code)


async def read_load(
    reader: Reader, names: list[str], clients: int, until: asyncio.Event, max_reads: int
) -> tuple[dict[str, list[float]], float, int]:
    """`clients` loops of reads until `until` is set or `max_reads` were made; every 10th lists."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors, made = 0, 0
    rng = random.Random(7)

    async def loop() -> None:
        nonlocal errors, made
        while not until.is_set() and made < max_reads:
            made += 1
            kind, url = ("list", "/v1/studies") if made % 10 == 0 else ("one", f"/v1/studies/{rng.choice(names)}")
            started = time.perf_counter()
            status = await reader.get(url)
            latencies[kind].append(time.perf_counter() - started)
            errors += status >= 500

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies, time.perf_counter() - started, errors


def summarise(latencies: dict[str, list[float]], elapsed: float, errors: int) -> dict[str, float]:
    every = np.asarray([v for values in latencies.values() for v in values]) * 1000
    out = {"n": float(len(every)), "rps": len(every) / elapsed, "errors": float(errors)}
    out |= {"p50": float(np.percentile(every, 50)), "p99": float(np.percentile(every, 99))}
    for kind, values in latencies.items():
        ms = np.asarray(values) * 1000
        out[f"{kind}_p50"], out[f"{kind}_p99"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    return out


def check_rows(store: Path, names: list[str], planned: int) -> list[str]:
    """Studies whose rows are not exactly the planned ones (each once, all successful)."""
    bad = []
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        for name in names:
            n, keys, ok = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT query_id || '|' || deployment || '|' || condition || '|' || "
                "sample_index), SUM(error IS NULL) FROM samples WHERE study = ?",
                (name,),
            ).fetchone()
            if not n == keys == ok == planned:
                bad.append(f"{name}: {n} rows, {keys} keys, {ok} ok (planned {planned})")
    return bad


async def run_once(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    """One full measurement against the code in `tree`."""
    token = secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="hivemind-bench-service-"))
    (workdir / "zoo.yaml").write_text(ZOO)
    env = {**os.environ, "HIVEMIND_BENCH_TOKEN": token, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc: subprocess.Popen | None = None
    names = [f"bench-{i:02d}" for i in range(args.studies)]
    planned = args.queries * len(DEPLOYMENTS) * args.samples
    headers = {"Authorization": f"Bearer {token}"}
    try:
        proc, port = await start_server(tree, workdir, env, args.workers)
        url = f"http://127.0.0.1:{port}"
        async with (
            Reader(args.client, url, headers, args.clients + 8) as client,
            httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as monitor,
        ):
            body = {"query_set": "open-ended-v1", "deployments": DEPLOYMENTS, "samples": args.samples}
            body |= {"max_queries": args.queries, "analyze": True}
            done = asyncio.Event()
            t0 = time.perf_counter()
            finished_at: float | None = None
            posted = await asyncio.gather(*(monitor.post("/v1/studies", json={**body, "name": n}) for n in names))
            assert all(r.status_code == 202 for r in posted), [r.text for r in posted if r.status_code != 202][:3]

            async def watch() -> None:
                nonlocal finished_at
                deadline = t0 + args.max_seconds
                while time.perf_counter() < deadline:
                    states = [s["state"] for s in (await monitor.get("/v1/studies")).json()["studies"]]
                    if len(states) == len(names) and all(s in ("done", "failed", "cancelled") for s in states):
                        finished_at = time.perf_counter()
                        break
                    await asyncio.sleep(0.5)
                done.set()

            loaded, _ = await asyncio.gather(read_load(client, names, args.clients, done, 10**9), watch())
            if finished_at is None:
                raise SystemExit(f"the studies did not finish in {args.max_seconds:.0f} s (raise --max-seconds)")
            states = {s["name"]: s["state"] for s in (await monitor.get("/v1/studies")).json()["studies"]}
            idle = await read_load(client, names, args.clients, asyncio.Event(), args.idle_reads)
        return {
            "loaded": summarise(*loaded),
            "idle": summarise(*idle),
            "total_s": finished_at - t0,
            "not_done": sorted(n for n, s in states.items() if s != "done"),
            "bad_rows": check_rows(workdir / "store", names, planned),
        }
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"kept {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def print_result(label: str, result: dict[str, object]) -> None:
    print(f"== {label}")
    for phase in ("idle", "loaded"):
        r = result[phase]
        assert isinstance(r, dict)
        print(
            f"  {phase:<6} reads n={r['n']:6.0f} {r['rps']:7.1f}/s  p50={r['p50']:7.1f} ms  p99={r['p99']:7.1f} ms"
            f"  (one study p99={r.get('one_p99', float('nan')):7.1f} ms, list p99={r.get('list_p99', float('nan')):7.1f}"
            f" ms)  5xx={r['errors']:.0f}"
        )
    print(f"  studies' total time {result['total_s']:.1f} s; not done: {result['not_done'] or 'none'}")
    print(f"  rows: {'; '.join(result['bad_rows']) if result['bad_rows'] else 'every study exactly its planned rows'}")  # type: ignore[arg-type]


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.studies} studies x {args.queries} queries x {len(DEPLOYMENTS)} mock deployments x "
        f"{args.samples} samples, analysis on; {args.clients} concurrent readers ({args.client}); "
        f"--workers {args.workers}"
    )
    results = []
    if args.before is not None:
        results.append((f"before ({args.before})", await run_once(args.before.resolve(), args)))
        print_result(*results[-1])
    results.append(("this tree", await run_once(REPO, args)))
    print_result(*results[-1])
    if len(results) == 2:
        (_, b), (_, a) = results
        print("== before -> after")
        for phase in ("idle", "loaded"):
            pb, pa = b[phase], a[phase]
            assert isinstance(pb, dict) and isinstance(pa, dict)
            print(
                f"  {phase:<6} p50 {pb['p50']:7.1f} -> {pa['p50']:7.1f} ms   p99 {pb['p99']:7.1f} -> {pa['p99']:7.1f} ms"
            )
        print(f"  studies' total time {b['total_s']:.1f} -> {a['total_s']:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=40, choices=range(1, 201), metavar="1..200")
    parser.add_argument("--queries", type=int, default=4, help="queries per study (of open-ended-v1)")
    parser.add_argument("--samples", type=int, default=4, help="samples per query and deployment")
    parser.add_argument("--clients", type=int, default=64, choices=range(1, 129), metavar="1..128")
    parser.add_argument("--idle-reads", type=int, default=2000)
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp", help="the readers' HTTP client")
    parser.add_argument("--workers", type=int, default=2, help="hivemind serve --workers")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound on the loaded phase")
    parser.add_argument("--before", type=Path, default=None, help="another source tree to measure first")
    parser.add_argument("--keep", action="store_true", help="keep the stores and server logs")
    asyncio.run(main(parser.parse_args()))
