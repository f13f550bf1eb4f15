"""Batch sampling's own overhead: a study sampled through the OpenAI Batch API protocol against
the loopback batch server (which answers at once), beside the floor every sampled row pays, the
store's own `record_many` of the same rows in one transaction, and the same study sampled live
through an instant mock provider (what the sampler's own path costs).

What the batch path adds on top of that floor: journaling each request before upload, building
and uploading the JSONL, polling, downloading and parsing the output file, and committing the
rows with the batch marked ingested. The server runs in this process (its JSON work shares the
GIL), so the figure is an upper bound on the client's cost. A real batch takes minutes to hours
at the provider; this measures only what hivemind spends.

    .venv/bin/python bench/batches.py [--queries 1000] [--samples 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hivemind.inputs.samples import Completion
from hivemind.inputs.spec import Deployment, Query, StudySpec
from hivemind.sampling.requests import iter_requests
from hivemind.store.journal import Store
from hivemind.study import run_study
from hivemind.testing.batch_server import BatchScript, serve


def batched(root: Path, n_queries: int, samples: int) -> tuple[float, int]:
    """Seconds to sample the study through batches, and how many batches it took."""
    with serve(BatchScript(polls_to_finish=0)) as (base, script):
        queries = [{"id": f"q{i}", "text": f"Write a metaphor about time, number {i}."} for i in range(n_queries)]
        (root / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
        deployment = {"name": "hosted", "provider": "openai", "model": "gpt-4o-mini", "api_base": f"{base}/v1"}
        deployment |= {"batch": True, "options": {"batch_poll_s": 0.05}}
        (root / "zoo.yaml").write_text(yaml.safe_dump({"deployments": [deployment]}))
        spec = {"name": "b", "query_set": str(root / "q.jsonl"), "zoo": str(root / "zoo.yaml")}
        spec |= {"deployments": ["hosted"], "samples": samples, "params": {"max_tokens": 64}}
        (root / "spec.yaml").write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        summary = run_study(root / "spec.yaml", root / "store", progress=False).summary()
        elapsed = time.perf_counter() - started
        assert summary["succeeded"] == {"hosted": n_queries * samples}, summary
        return elapsed, len(script.batches)


def live(root: Path, n_queries: int, samples: int) -> float:
    """Seconds to sample the same study live through an instant mock provider (the sampler's path)."""
    (root / "live").mkdir()
    (root / "live" / "zoo.yaml").write_text(
        yaml.safe_dump(
            {"deployments": [{"name": "hosted", "provider": "mock", "model": "mock", "max_concurrency": 64}]}
        )
    )
    spec = {"name": "b", "query_set": str(root / "q.jsonl"), "zoo": str(root / "live" / "zoo.yaml")}
    spec |= {"deployments": ["hosted"], "samples": samples, "params": {"max_tokens": 64}}
    (root / "live" / "spec.yaml").write_text(yaml.safe_dump(spec))
    started = time.perf_counter()
    summary = run_study(root / "live" / "spec.yaml", root / "live" / "store", progress=False).summary()
    assert summary["succeeded"] == {"hosted": n_queries * samples}, summary
    return time.perf_counter() - started


def floor(root: Path, n_queries: int, samples: int) -> float:
    """Seconds for the store to commit the same rows in one transaction."""
    queries = [Query(id=f"q{i}", text=f"Write a metaphor about time, number {i}.") for i in range(n_queries)]
    deployment = Deployment(name="hosted", provider="mock", model="mock")
    spec = StudySpec(name="f", query_set="-", deployments=["hosted"], samples=samples)
    completion = Completion(text="Time is a river (1).", finish_reason="stop", prompt_tokens=12, completion_tokens=7)
    with Store(root / "floor") as store:
        store.register_study(spec, queries, [deployment])
        outcomes = [(r, completion, None, 1.0, 1) for r in iter_requests(spec, queries, deployment)]
        started = time.perf_counter()
        store.record_many(outcomes)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    rows = args.queries * args.samples
    with tempfile.TemporaryDirectory() as tmp:
        seconds, batches = batched(Path(tmp), args.queries, args.samples)
        sampled = live(Path(tmp), args.queries, args.samples)
        base = floor(Path(tmp), args.queries, args.samples)
    print(f"{rows:,} requests through {batches} batch(es): {seconds:.1f} s ({rows / seconds:,.0f} rows/s), whole study")
    print(
        f"baseline, the same study live through an instant mock provider: {sampled:.1f} s ({rows / sampled:,.0f} rows/s)"
    )
    print(f"floor, the store committing the same rows in one transaction: {base:.1f} s ({rows / base:,.0f} rows/s)")
    print(f"batch path / live path: {seconds / sampled:.2f}x; / floor: {seconds / base:.1f}x")


if __name__ == "__main__":
    main()
