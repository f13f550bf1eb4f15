"""Benchmark: a whole study end to end - sample -> embed -> index -> analyse -> report.

A synthetic study of `--queries` x 20 mock deployments x 50 samples (default 100 queries =
100,000 responses; `--quick`: 10 queries = 10,000) runs through hivemind's own doors:
`run_study` (the mock provider: the real sampler, SQLite store and Parquet export, no network),
`analyze_store` (embedding with the study's sentence-transformers model, cached; every
analysis, the FAISS near-duplicate searches included; the tables and summary written), and
`write_report`. Each step's seconds and share of the total are printed, so the next
bottleneck is always visible. The analysis step is split into embedding, the corpus-wide
near-duplicate index search and the rest by timing those functions inside it.

Run:
    .venv/bin/python bench/pipeline.py --quick          # 10K responses
    .venv/bin/python bench/pipeline.py                  # 100K (embedding dominates on CPU)
    .venv/bin/python bench/pipeline.py --index ivf      # approximate corpus-wide index
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

DEPLOYMENTS, SAMPLES = 20, 50
TOPICS = ("time", "the sea", "a city at night", "friendship", "winter", "a lost key", "the moon", "silence")


def write_study(directory: Path, n_queries: int, embedder: str) -> Path:
    """A query file, a zoo of mock deployments (different diversities) and the study spec."""
    queries = directory / "queries.jsonl"
    with queries.open("w") as out:
        for q in range(n_queries):
            topic = TOPICS[q % len(TOPICS)]
            out.write(
                json.dumps(
                    {"id": f"q{q:05d}", "text": f"Write a short metaphor about {topic} ({q}).", "category": "creative"}
                )
                + "\n"
            )
    zoo = directory / "zoo.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": f"mock-{d:02d}",
                        "provider": "mock",
                        "model": "mock",
                        "max_concurrency": 64,
                        "options": {"diversity": 1 + d % 8, "style": "varied" if d % 2 else "echo"},
                    }
                    for d in range(DEPLOYMENTS)
                ]
            }
        )
    )
    spec = directory / "study.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "query_set": str(queries),
                "zoo": str(zoo),
                "samples": SAMPLES,
                "deployments": [f"mock-{d:02d}" for d in range(DEPLOYMENTS)],
                "embedder": embedder,
            }
        )
    )
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100, help="queries (x 20 deployments x 50 samples)")
    parser.add_argument("--quick", action="store_true", help="10 queries: 10,000 responses")
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2")
    parser.add_argument(
        "--index", choices=("exact", "ivf"), default="exact", help="corpus-wide near-duplicate index (ivf: approximate)"
    )
    parser.add_argument("--no-lexical", action="store_true", help="skip the lexical metrics")
    args = parser.parse_args()
    n_queries = 10 if args.quick else args.queries

    import hivemind.analysis.run as analysis_run
    from hivemind import analysis, embed, pipeline
    from hivemind.study import run_study

    inner: dict[str, float] = {}

    def timed(module: Any, name: str, label: str) -> None:
        fn = getattr(module, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inner[label] = inner.get(label, 0.0) + time.perf_counter() - start

        setattr(module, name, wrapper)

    timed(embed, "embed_texts", "embed")
    timed(analysis_run, "corpus_near_duplicates", "index (corpus-wide near-duplicates)")
    original = analysis_run.analyze_responses

    def analyze(*a: Any, **k: Any) -> Any:  # the flag, through the public function's option
        return original(*a, **{**k, "corpus_index": args.index})

    analysis.analyze_responses = analyze  # analyze_store imports it from here when called

    steps: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_study(Path(tmp), n_queries, args.embedder)
        start = time.perf_counter()
        study = run_study(spec, Path(tmp) / "store", progress=False)
        steps["sample (mock provider, store, Parquet)"] = time.perf_counter() - start
        start = time.perf_counter()
        outputs = pipeline.analyze_store(Path(tmp) / "store", lexical=not args.no_lexical)
        analysed = time.perf_counter() - start
        steps["embed"] = inner.get("embed", 0.0)
        steps["index (corpus-wide near-duplicates)"] = inner.get("index (corpus-wide near-duplicates)", 0.0)
        steps["analyse (everything else, tables written)"] = (
            analysed - steps["embed"] - steps["index (corpus-wide near-duplicates)"]
        )
        start = time.perf_counter()
        pipeline.write_report(Path(tmp) / "store")
        steps["report"] = time.perf_counter() - start
        n = outputs.summary.get("n_responses")
        planned = study.sampling.planned
    total = sum(steps.values())
    print(
        f"end to end: {n_queries} queries x {DEPLOYMENTS} mock deployments x {SAMPLES} samples = {planned:,} "
        f"requests, {n:,} responses analysed, corpus index {args.index}, lexical "
        f"{'off' if args.no_lexical else 'on'}: {total:.1f} s"
    )
    for name, seconds in steps.items():
        print(f"  {name:<45} {seconds:8.1f} s  {seconds / total:6.1%}")
    print(f"slowest step: {max(steps, key=steps.__getitem__)}")


if __name__ == "__main__":
    main()
