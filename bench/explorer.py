"""Benchmark: the explorer at 10K and 100K responses: build time, page and data sizes, and
time to first paint / to an opened query in headless chromium (from disk).

Synthetic study as bench/analysis.py builds it (queries x 20 deployments x 10 samples, 384-d
clustered unit vectors), each response a ~80-word text (real answers are about that long),
the per-query similarity tables from the real `pair_similarity`, and about 1% of the pairs
as near-duplicates. `build_explorer` writes the page and its per-query data files; chromium
opens the page from disk, and the script's own marks time the list (`hivemind-list`) and an
opened query (`hivemind-query`), beside chromium's first contentful paint.

Baseline: the report alone (a single page, no data to load). Target (issue 20): the page stays
responsive at 100K: one index plus one query file loaded, never one page of hundreds of MB.

Run:
    .venv/bin/python bench/explorer.py            # 10K and 100K
    .venv/bin/python bench/explorer.py --quick    # 10K only
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

DEPLOYMENTS, SAMPLES = 20, 10
WORDS = "the a sea light tree river stone time quiet bright old new small city road night morning wind".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=(n, 80))
    return [" ".join(WORDS[i] for i in row) + "." for row in picks]


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one(n_queries: int, chromium: str | None) -> None:
    import polars as pl
    from analysis import make_study

    from hivemind.analysis.data import build_groups
    from hivemind.analysis.similarity import pair_similarity, query_similarity
    from hivemind.report.explorer import DATA, INDEX, PAGE, build_explorer

    responses, vectors = make_study(n_queries, DEPLOYMENTS, SAMPLES)
    responses = responses.with_columns(
        pl.Series("text", texts(responses.height)), (pl.lit("Query ") + pl.col("query_id")).alias("query_text")
    )
    pairs = pair_similarity(build_groups(responses), vectors)
    qsim = query_similarity(pairs)
    rng = np.random.default_rng(1)
    picks = responses.sample(fraction=0.01, seed=1)
    dups = picks.select("query_id", "condition", pl.col("row").alias("i")).with_columns(
        (pl.col("i") + SAMPLES).clip(0, responses.height - 1).alias("j"),
        pl.Series("cosine", rng.uniform(0.9, 1.0, picks.height)),
    )
    tables = {"pairs": pairs, "query_similarity": qsim, "near_duplicates": dups}
    directory = Path(tempfile.mkdtemp(prefix="hivemind-explorer-bench-"))
    try:
        t0 = time.perf_counter()
        build_explorer(
            directory,
            "bench",
            responses,
            vectors,
            tables,
            deployments=sorted(set(responses["deployment"].to_list())),
            conditions=["default"],
            baseline="default",
            threshold=0.9,
            embedder="synthetic",
            imported={},
        )
        built = time.perf_counter() - t0
        shards = sorted((directory / DATA / "q").glob("*.js"), key=lambda p: p.stat().st_size)
        print(
            f"{responses.height:>7} responses, {n_queries} queries: build {built:.1f} s; page "
            f"{(directory / PAGE).stat().st_size / 1024:.0f} KB, index {(directory / DATA / INDEX).stat().st_size / 1024:.0f} KB, "
            f"one query {shards[len(shards) // 2].stat().st_size / 1024:.0f} KB (median; largest "
            f"{shards[-1].stat().st_size / 1024:.0f} KB), all data {size(directory / DATA) / 2**20:.1f} MB in {len(shards)} files"
        )
        if chromium:
            paint(chromium, directory / PAGE)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def paint(chromium: str, page: Path) -> None:
    from hivemind.testing.browser import Browser

    with Browser(chromium) as browser:
        for label, hash_ in (("list", ""), ("list + query q0001 opened", "#q=q0001")):
            browser.open("about:blank")
            browser.open(page.as_uri() + hash_)
            mark = "hivemind-query" if hash_ else "hivemind-list"
            browser.wait(f"performance.getEntriesByName('{mark}').length > 0", timeout=120)
            fcp = browser.js("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null")
            at = browser.js(f"performance.getEntriesByName('{mark}')[0].startTime")
            fcp_text = f"{fcp:.0f} ms" if fcp else "-"
            print(f"        chromium, {label}: first contentful paint {fcp_text}, {mark} at {at:.0f} ms")
        browser.open("about:blank")
        browser.open(page.as_uri() + "#q=q0001")
        browser.wait("document.querySelectorAll('#detail [data-response]').length > 0", timeout=120)
        t0 = time.perf_counter()
        browser.js("document.querySelector('.tabs button[data-view=map]').click()")
        browser.wait("document.querySelectorAll('#mapsvg .pt').length > 0")
        print(
            f"        map of one query drawn in {1000 * (time.perf_counter() - t0):.0f} ms (incl. one DevTools round trip)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10K only")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        print("chromium is missing: sizes only")
    for n_queries in (50,) if args.quick else (50, 500):
        one(n_queries, chromium)


if __name__ == "__main__":
    main()
