"""Benchmark: one study in a single process vs on a local Ray instance, per step, same results.

Steps, each timed both ways in this run (Ray's figure beside the single-process baseline):

* sample: a mock study (latency-bound deployments, `latency_s` per call); Ray calls each
  deployment's actor. Physical limit: requests x latency / concurrency per deployment (the
  deployments run side by side), printed beside both.
* embed: all-MiniLM-L6-v2 (loaded on the driver before timing) into an empty cache; on Ray the
  forward passes run on Ray Data actors (each loads the model: counted). Limit: local / CPUs.
* analyze: `analyze_store` with every embedding cached, in one process vs `RayExecutor` (per-query
  analyses and pair searches as Ray tasks). Limit: the driver-only part plus the parallel part
  divided by the CPUs. The tables are compared and must be identical.

Then the expected scaling on a real cluster, simulated: the analysis partitioned into N shards
(the shards `RayExecutor` would send to N CPUs) and each shard timed alone in this process; the
cluster's wall time is about driver part + slowest shard (plus transfer, not simulated).

Run:
    .venv/bin/python bench/scale.py            # 60 queries x 4 deployments x 8 samples
    .venv/bin/python bench/scale.py --quick    # 20 queries x 3 deployments x 4 samples
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import yaml  # noqa: E402

from hivemind.executors import Executor  # noqa: E402
from hivemind.executors.ray_analysis import shard_bounds  # noqa: E402
from hivemind.inputs.spec import StudySpec  # noqa: E402
from hivemind.pipeline import CACHE_FILE, analyze_store  # noqa: E402
from hivemind.store.journal import Store  # noqa: E402
from hivemind.study import run_study  # noqa: E402
from hivemind.vectors.embed import Embedder, EmbeddingCache, embed_texts  # noqa: E402

LATENCY_S = 0.02
CONCURRENCY = 4


class ShardTimer(Executor):
    """The local executor, timing its per-query and pair-search seams; with `shards`, each
    per-query analysis runs shard by shard (as Ray would split it) and every shard is timed."""

    def __init__(self, shards: int = 1) -> None:
        self.shards = shards
        self.parallel_s = 0.0
        self.shard_s = [0.0] * shards

    def map_groups(self, fn: Callable[..., pl.DataFrame], groups: list[Any], *args: Any, **kwargs: Any) -> pl.DataFrame:
        sizes = [sum(r.size for r in g.rows) or 1 for g in groups]
        frames = []
        for s, (a, b) in enumerate(shard_bounds(sizes, self.shards)):
            started = time.perf_counter()
            frames.append(fn(groups[a:b], *args, **kwargs))
            elapsed = time.perf_counter() - started
            self.shard_s[s] += elapsed
            self.parallel_s += elapsed
        return pl.concat(frames, how="vertical")

    def pair_search(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        started = time.perf_counter()
        out = super().pair_search(*args, **kwargs)
        elapsed = time.perf_counter() - started
        self.parallel_s += elapsed  # sharded on Ray; counted as one block here
        self.shard_s = [t + elapsed / self.shards for t in self.shard_s]  # even split, idealised
        return out


def timed(step: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = step()
    return time.perf_counter() - started, out


def tables(directory: Path) -> dict[str, pl.DataFrame]:
    return {p.stem: pl.read_parquet(p) for p in sorted(directory.glob("*.parquet"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    args = parser.parse_args()
    queries, deployments, samples = (20, 3, 4) if args.quick else (60, 4, 8)
    work = Path(tempfile.mkdtemp(prefix="hivemind-scale-"))
    zoo = work / "zoo.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": f"mock-{i}",
                        "provider": "mock",
                        "model": "mock",
                        "max_concurrency": CONCURRENCY,
                        "options": {
                            "latency_s": LATENCY_S,
                            "diversity": 2 + 2 * i,
                            **({"style": "varied"} if i % 2 else {}),
                        },
                    }
                    for i in range(deployments)
                ]
            }
        )
    )
    spec = StudySpec(
        name="scale",
        query_set="open-ended-v1",
        deployments=[f"mock-{i}" for i in range(deployments)],
        samples=samples,
        max_queries=queries,
        zoo=str(zoo),
    )
    n_requests = queries * deployments * samples
    limit = queries * samples * LATENCY_S / CONCURRENCY
    print(
        f"study: {queries} queries x {deployments} deployments x {samples} samples = {n_requests} requests; "
        f"{args.cpus} CPUs for Ray (machine shared: ratios, not absolute times)"
    )

    from hivemind.executors.ray import RayExecutor

    ray_started_s, executor = timed(lambda: RayExecutor(num_cpus=args.cpus))
    try:
        local_s, _ = timed(lambda: run_study(spec, work / "local", progress=False))
        ray_s, _ = timed(lambda: run_study(spec, work / "ray", progress=False, executor=executor))
        with Store(work / "local") as a, Store(work / "ray") as b:
            same_rows = (
                a.samples_frame("scale")
                .drop("latency_s", "created_at")
                .equals(b.samples_frame("scale").drop("latency_s", "created_at"))
            )
        print(f"start Ray    {ray_started_s:7.2f} s (once per run)")
        print(
            f"sample       local {local_s:7.2f} s | ray {ray_s:7.2f} s | limit {limit:.2f} s "
            f"(latency-bound) | same rows: {same_rows}"
        )

        embedder = Embedder(device="cpu", progress=False)
        _ = embedder.model  # loaded before the clock starts
        with Store(work / "local") as store:
            texts = store.samples_frame("scale")["text"].drop_nulls().to_list()
        embed_s, ours = timed(lambda: embed_texts(texts, embedder, EmbeddingCache(work / "local" / CACHE_FILE)))
        embed_ray_s, theirs = timed(
            lambda: embed_texts(texts, executor.embedder(embedder), EmbeddingCache(work / "ray" / CACHE_FILE))
        )
        print(
            f"embed        local {embed_s:7.2f} s | ray {embed_ray_s:7.2f} s | limit {embed_s / args.cpus:.2f} s "
            f"(CPU-bound / {args.cpus}) | {len(texts)} texts | same vectors: {bool((ours == theirs).all())}"
        )

        analyze_store(work / "local", embedder=embedder)  # warm-up (imports, first calls), untimed
        timer = ShardTimer(1)
        local_a, out_local = timed(lambda: analyze_store(work / "local", embedder=embedder, executor=timer))
        ray_a, out_ray = timed(lambda: analyze_store(work / "ray", embedder=embedder, executor=executor))
        ours, theirs = tables(out_local.directory), tables(out_ray.directory)
        same = ours.keys() == theirs.keys() and all(ours[k].equals(theirs[k]) for k in ours)
        driver = local_a - timer.parallel_s
        print(
            f"analyze      local {local_a:7.2f} s | ray {ray_a:7.2f} s | limit {driver + timer.parallel_s / args.cpus:.2f} s "
            f"(driver {driver:.2f} s + parallel {timer.parallel_s:.2f} s / {args.cpus}) | same tables: {same}"
        )

        print("\nexpected scaling (simulated: the analysis split into N shards, each shard timed alone):")
        print(
            f"{'N':>4} {'driver s':>9} {'slowest shard s':>16} {'sum of shards s':>16} {'expected wall s':>16} {'speed-up':>9}"
        )
        one_shard = None
        for n in (1, 2, 4, 8, 16):
            sim = ShardTimer(n)
            total, _ = timed(lambda: analyze_store(work / "local", embedder=embedder, executor=sim))
            driver_n = total - sim.parallel_s
            wall = driver_n + max(sim.shard_s)
            one_shard = one_shard or wall
            print(
                f"{n:>4} {driver_n:>9.2f} {max(sim.shard_s):>16.2f} {sim.parallel_s:>16.2f} {wall:>16.2f} "
                f"{one_shard / wall:>8.2f}x"
            )
    finally:
        executor.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
