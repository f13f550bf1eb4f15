"""Planning and resuming a big study: time to the first request and peak memory, beside the
old eager plan, each measurement in a fresh process (peak RSS is the process's own).

1. eager: every `SampleRequest` of a 100K-sample study built up front as the old
   `plan_requests` did (the baseline; a 10M study costs ~100x its time and memory).
2. start: `sample_study` on a 10M-sample study (10,000 queries x 20 deployments x 50 samples)
   with an instant provider and a real SQLite store, stopped after `--seconds`: when the
   first request was sent, how many samples were committed, peak RSS.
3. resume: the same study again on the same store: every finished sample is looked up and
   skipped chunk by chunk before the first new request.

    .venv/bin/python bench/planning.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind.inputs.samples import Completion, Message, SampleRequest, sample_seed
from hivemind.inputs.spec import Deployment, Query, StudySpec
from hivemind.providers.base import Provider, register

QUERIES, DEPLOYMENTS, SAMPLES = 10_000, 20, 50


@register("bench-instant")
class Instant(Provider):
    """Answers at once and notes when it was first asked."""

    first_call: float | None = None

    async def generate(self, request: SampleRequest) -> Completion:
        if Instant.first_call is None:
            Instant.first_call = time.perf_counter()
        await asyncio.sleep(0)
        return Completion(text="Time is a river.", finish_reason="stop")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eager(queries: int) -> dict[str, float]:
    """The old eager plan, as `plan_requests` built it before plans were streamed."""
    spec = StudySpec(name="big", query_set="-", deployments=[f"d{i}" for i in range(DEPLOYMENTS)], samples=SAMPLES)
    qs = [Query(id=f"q{i:05d}", text=f"Write a short metaphor about thing number {i}.") for i in range(queries)]
    deployments = [Deployment(name=f"d{i}", provider="bench-instant", model="m") for i in range(DEPLOYMENTS)]
    started = time.perf_counter()
    requests = []
    for index in range(spec.samples):
        for query in qs:
            for deployment in deployments:
                for condition in spec.effective_conditions():
                    requests.append(
                        SampleRequest(
                            study=spec.name,
                            query_id=query.id,
                            deployment=deployment.name,
                            condition=condition.name,
                            sample_index=index,
                            seed=sample_seed(spec.seed, query.id, deployment.name, condition.name, index),
                            messages=(Message(role="user", content=query.text),),
                            params=deployment.params.merged(spec.params, condition.params),
                            deployment_identity=deployment.identity(),
                        )
                    )
    return {"requests": len(requests), "first_request_s": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def study_files(folder: Path) -> StudySpec:
    queries = folder / "queries.jsonl"
    if not queries.exists():
        queries.write_text(
            "".join(
                json.dumps({"id": f"q{i:05d}", "text": f"Write a short metaphor about thing number {i}."}) + "\n"
                for i in range(QUERIES)
            )
        )
        (folder / "zoo.yaml").write_text(
            "deployments:\n"
            + "".join(
                f"  - {{name: d{i}, provider: bench-instant, model: m, max_concurrency: 8}}\n"
                for i in range(DEPLOYMENTS)
            )
        )
    return StudySpec(
        name="big",
        query_set=str(queries),
        zoo=str(folder / "zoo.yaml"),
        deployments=[f"d{i}" for i in range(DEPLOYMENTS)],
        samples=SAMPLES,
    )


def sample_for(folder: Path, seconds: float) -> dict[str, float]:
    """`sample_study` on the 10M study for `seconds`, then stopped (cancelled) cleanly."""
    from hivemind.store.journal import Store
    from hivemind.study import sample_study

    spec = study_files(folder)
    with Store(folder / "store") as store:
        before = sum(p["ok"] for p in store.progress(spec.name).values()) if store.has_samples(spec.name) else 0
        started = time.perf_counter()

        async def bounded() -> None:
            try:
                await asyncio.wait_for(sample_study(spec, store, progress=False), seconds)
            except TimeoutError:
                pass

        asyncio.run(bounded())
        committed = sum(p["ok"] for p in store.progress(spec.name).values())
    first = Instant.first_call
    return {
        "requests": QUERIES * DEPLOYMENTS * SAMPLES,
        "already_done": before,
        "first_request_s": (first - started) if first else float("nan"),
        "committed_now": committed - before,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time of each 10M run")
    parser.add_argument("--eager-queries", type=int, default=100, help="queries in the eager baseline")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, *rest = args.worker
        result = eager(int(rest[0])) if mode == "eager" else sample_for(Path(rest[0]), float(rest[1]))
        print(json.dumps(result))
        return
    print("\n## planning: time to first request and peak RSS (each in a fresh process)")
    print(f"{'run':<44} {'requests':>11} {'first request':>14} {'committed':>10} {'peak RSS':>10}")
    base = measure("eager", str(args.eager_queries))
    print(
        f"{'old eager plan (baseline)':<44} {base['requests']:>11,} {base['first_request_s']:>13.1f}s "
        f"{'-':>10} {base['peak_rss_mb']:>8.0f}MB"
    )
    scale = QUERIES * DEPLOYMENTS * SAMPLES / base["requests"]
    print(
        f"{f'  same, extrapolated x{scale:.0f} to 10M':<44} {QUERIES * DEPLOYMENTS * SAMPLES:>11,} "
        f"{base['first_request_s'] * scale:>13.0f}s {'-':>10} {base['peak_rss_mb'] * scale / 1024:>8.1f}GB"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("lazy plan, fresh study", "lazy plan, resumed (skips the above)"):
            run = measure("sample", tmp, str(args.seconds))
            print(
                f"{label:<44} {run['requests']:>11,.0f} {run['first_request_s']:>13.2f}s "
                f"{run['committed_now']:>10,.0f} {run['peak_rss_mb']:>8.0f}MB"
            )


if __name__ == "__main__":
    main()
