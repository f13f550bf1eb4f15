"""Calibration: do the study's intervals and tests hold their nominal levels? (issue 26)

Simulated studies built straight from vectors (`hivemind.testing.simulate`: per query a topic,
per deployment its own take, per sample noise, one direction shared by every answer), analysed
by the library's own functions on the headline's footing (`complete_queries`). True values come
from one large simulated study (`--truth-queries`, default 20,000 queries) of the same design.
Every figure is a rate over `--studies` studies with its 95% Wilson interval (Monte Carlo error):

1. null rejection rate of the gap's permutation test (deployments alike: gap 0) at 5%;
2. coverage of the 95% intervals of intra, inter, gap, random-pair baseline and hivemind gap at
   12 and 40 queries;
3. a missing deployment (the most distinct of four, absent from 40% of the queries): bias and
   coverage of the gap on the complete queries (the headline) vs the old mixture over every
   query with two deployments or more;
4. ensemble curves of alike deployments (true difference 0 at every k, 3 deployments, K = 6,
   12 queries): share of studies where some k excludes 0, pointwise intervals vs the band.

Run:
    .venv/bin/python bench/calibration.py            # 300 studies per cell: about 8 minutes on 2 shared cores
    .venv/bin/python bench/calibration.py --quick    # 40 studies per cell, smaller truth: under a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from hivemind.analysis import (  # noqa: E402
    build_groups,
    ensemble_curves,
    ensemble_per_query,
    gap_tests,
    hivemind_gap,
    pair_similarity,
    query_similarity,
    random_pair_baseline,
)
from hivemind.analysis.baseline import query_sums  # noqa: E402
from hivemind.analysis.data import complete_queries, on_footing  # noqa: E402
from hivemind.testing.simulate import Design, null_design, simulate  # noqa: E402

ALTERNATIVE = Design(takes=(0.6, 0.6, 0.6, 0.6))
MISSING = Design(queries=100, takes=(0.6, 0.6, 0.6, 1.2), missing={3: 0.4})
ENSEMBLE_NULL = null_design(queries=12, deployments=3, k=6)


def wilson(hits: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """(rate, lo, hi) in percent: the Wilson score interval of a binomial rate."""
    if n == 0:
        return (float("nan"),) * 3
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * p, 100 * (centre - half), 100 * (centre + half)


def figures(design: Design, seed: int, n_boot: int, n_perm: int, ensemble: bool = False) -> dict[str, Any]:
    """One simulated study's headline figures, as `analyze_responses` puts them together."""
    responses, vectors = simulate(design, seed)
    groups = build_groups(responses)
    pairs = pair_similarity(groups, vectors)
    query_sim = query_similarity(pairs)
    complete = complete_queries(pairs.filter(pl.col("kind") == "intra"), arm="deployment_a")
    keys = set(complete.select("condition", "query_id").iter_rows())
    complete_groups = [g for g in groups if (g.condition, g.query_id) in keys]
    out: dict[str, Any] = {}
    head = gap_tests(on_footing(query_sim, complete), complete_groups, vectors, n_boot, n_perm, seed).row(0, named=True)
    for name in ("intra", "inter", "gap"):
        out[name] = (head[name], head[f"{name}_lo"], head[f"{name}_hi"])
    out["p"] = head["p_permutation"]
    if design.missing:  # the old headline: every query with two deployments or more
        old = gap_tests(query_sim, groups, vectors, n_boot, 1, seed).row(0, named=True)
        out["gap_mixture"] = (old["gap"], old["gap_lo"], old["gap_hi"])
    sums = query_sums(responses, vectors)
    base = random_pair_baseline(responses, vectors, n_pairs=100, seed=seed, n_boot=n_boot, sums=sums)
    row = base.row(0, named=True)
    out["baseline"] = (row["similarity"], row["ci_lo"], row["ci_hi"])
    per_query = on_footing(ensemble_per_query(complete_groups, vectors, draws=8, seed=seed), complete)
    hg = hivemind_gap(per_query, complete_groups, base, n_boot=n_boot, seed=seed, sums=sums).row(0, named=True)
    out["hivemind_gap"] = (hg["hivemind_gap"], hg["ci_lo"], hg["ci_hi"])
    if ensemble:
        curve = ensemble_curves(per_query, n_boot=n_boot, n_perm=1, seed=seed)
        curve = curve.filter((pl.col("metric") == "mean_distance") & (pl.col("k") > 1))
        out["pointwise_miss"] = bool(((curve["diff_lo"] > 0) | (curve["diff_hi"] < 0)).any())
        out["band_miss"] = bool(((curve["diff_band_lo"] > 0) | (curve["diff_band_hi"] < 0)).any())
    return out


def truth(design: Design, queries: int) -> dict[str, float]:
    """The design's true values: the estimates of one study of `queries` queries, all answered."""
    big = Design(**{**design.__dict__, "queries": queries, "missing": {}})
    f = figures(big, seed=10_000_019, n_boot=2, n_perm=1)
    return {name: float(f[name][0]) for name in ("intra", "inter", "gap", "baseline", "hivemind_gap")}


def coverage(rows: list[dict[str, Any]], name: str, value: float) -> tuple[float, float, float]:
    hits = sum(1 for r in rows if r[name][1] is not None and r[name][1] <= value <= r[name][2])
    return wilson(hits, len(rows))


def fmt(rate: tuple[float, float, float]) -> str:
    return f"{rate[0]:.1f} [{rate[1]:.1f}, {rate[2]:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 studies per cell, 4,000-query truth (under a minute)")
    parser.add_argument("--studies", type=int, default=None, help="studies per cell (default 300; 40 quick)")
    parser.add_argument("--truth-queries", type=int, default=None, help="queries of the truth run (20,000)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--n-perm", type=int, default=200)
    args = parser.parse_args()
    studies = args.studies or (40 if args.quick else 300)
    truth_queries = args.truth_queries or (4000 if args.quick else 20000)
    nb, npm = args.n_boot, args.n_perm
    start = time.perf_counter()
    print(
        f"{studies} studies per cell, B = {nb} bootstrap resamples, {npm} permutations, truth from {truth_queries} queries"
    )

    null = [figures(null_design(), s, nb, npm) for s in range(studies)]
    print(
        f"\n1. gap permutation test, deployments alike (40 queries): rejects at 5%: "
        f"{fmt(wilson(sum(r['p'] < 0.05 for r in null), studies))}%"
    )

    true = truth(ALTERNATIVE, truth_queries)
    print(
        "\n2. coverage of the 95% intervals (%, Wilson 95%), 4 deployments, K = 4; true values: "
        + ", ".join(f"{k} {v:.4f}" for k, v in true.items())
    )
    names = ("intra", "inter", "gap", "baseline", "hivemind_gap")
    print("| queries | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for queries in (12, 40):
        design = Design(**{**ALTERNATIVE.__dict__, "queries": queries})
        rows = [figures(design, 1000 + s, nb, 1) for s in range(studies)]
        print(f"| {queries} | " + " | ".join(fmt(coverage(rows, n, true[n])) for n in names) + " |")

    true_m = truth(MISSING, truth_queries)
    rows = [figures(MISSING, 2000 + s, nb, 1) for s in range(studies)]
    print(
        f"\n3. the most distinct of 4 deployments missing from 40% of {MISSING.queries} queries; true gap "
        f"{true_m['gap']:.4f}"
    )
    for name, label in (("gap", "complete queries (headline)"), ("gap_mixture", "old mixture (>= 2 deployments)")):
        est = np.array([r[name][0] for r in rows])
        print(
            f"   {label}: mean {est.mean():.4f}, bias {est.mean() - true_m['gap']:+.4f}, "
            f"covers {fmt(coverage(rows, name, true_m['gap']))}%"
        )
    print(f"   hivemind gap on complete queries covers {fmt(coverage(rows, 'hivemind_gap', true_m['hivemind_gap']))}%")

    rows = [figures(ENSEMBLE_NULL, 3000 + s, nb, 1, ensemble=True) for s in range(studies)]
    k = ENSEMBLE_NULL.k
    print(
        f"\n4. ensemble curves, alike deployments (3, K = {k}, {ENSEMBLE_NULL.queries} queries, k = 2..{k}): "
        "some k excludes the true difference 0"
    )
    print(f"   pointwise intervals: {fmt(wilson(sum(r['pointwise_miss'] for r in rows), studies))}%")
    print(f"   simultaneous band:   {fmt(wilson(sum(r['band_miss'] for r in rows), studies))}%")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
