"""The hivemind gap's interval resamples its reference distance too (issue 26).

hivemind_gap = mean realized / (D_ref - mean single), D_ref = 1 - the random-pair baseline, a
mean over pairs of *different* queries. Holding D_ref fixed ignores its own uncertainty; the
interval now recomputes D_ref from the same resampled queries (`QuerySums`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hivemind.analysis.baseline import QuerySums, query_sums
from hivemind.metrics.stats import query_bootstrap_ci
from hivemind.testing.simulate import Design, simulate


def _sums(seed: int = 0, queries: int = 7) -> tuple[QuerySums, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(queries):
        Y = rng.standard_normal((int(rng.integers(2, 6)), 5)) + rng.standard_normal(5)
        blocks.append(Y / np.linalg.norm(Y, axis=1, keepdims=True))
    sums = QuerySums(
        [f"q{q}" for q in range(queries)],
        np.array([b.sum(axis=0) for b in blocks]),
        np.array([float(len(b)) for b in blocks]),
    )
    return sums, blocks


def _cross_mean(blocks: list[np.ndarray]) -> float:
    """Brute force: the mean cosine over every pair of responses to different queries."""
    sims = [float(x @ y) for a, b in itertools.combinations(blocks, 2) for x in a for y in b]
    return float(np.mean(sims))


def test_query_sums_give_the_cross_query_mean_and_its_jackknife() -> None:
    sums, blocks = _sums()
    assert sums.similarity(np.ones((1, len(blocks))))[0] == pytest.approx(_cross_mean(blocks))
    loo = sums.leave_one_out()
    for i in range(len(blocks)):
        assert loo[i] == pytest.approx(_cross_mean(blocks[:i] + blocks[i + 1 :]))
    # a query drawn twice: its copies pair with every other query twice, never with each other
    W = np.ones((1, len(blocks)))
    W[0, 0] = 2.0
    doubled = [blocks[0]] + blocks
    sims = [
        float(x @ y)
        for i, j in itertools.combinations(range(len(doubled)), 2)
        if {i, j} != {0, 1}
        for x in doubled[i]
        for y in doubled[j]
    ]
    assert sums.similarity(W)[0] == pytest.approx(float(np.mean(sims)))


def test_query_bootstrap_ci_of_a_mean_holds_95_percent_at_12_queries() -> None:
    rng = np.random.default_rng(1)
    hits, reps = 0, 300
    for r in range(reps):
        x = rng.exponential(size=12)
        _, lo, hi = query_bootstrap_ci(lambda W, x=x: W @ x / W.sum(axis=1), 12, n_boot=1000, seed=r)
        hits += lo <= 1.0 <= hi
    assert 0.90 <= hits / reps <= 0.99


def _gap_rows(design: Design, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    from hivemind.analysis import build_groups, ensemble_per_query, hivemind_gap, random_pair_baseline

    responses, vectors = simulate(design, seed)
    groups = build_groups(responses)
    per_query = ensemble_per_query(groups, vectors, draws=8, seed=seed)
    sums = query_sums(responses, vectors)
    baseline = random_pair_baseline(responses, vectors, n_boot=300, sums=sums)
    fixed = hivemind_gap(per_query, groups, baseline, n_boot=500, seed=seed).row(0, named=True)
    joint = hivemind_gap(per_query, groups, baseline, n_boot=500, seed=seed, sums=sums).row(0, named=True)
    return fixed, joint


def test_interval_carries_the_reference_distance_uncertainty() -> None:
    """Per-query values that barely vary, over queries from two far-apart themes: the fixed-D_ref
    interval is nearly a point, while D_ref itself moves with the share of each theme drawn."""
    from hivemind.analysis.ensemble import gap_share_ci

    rng = np.random.default_rng(2)
    n, dim = 20, 6
    themes = np.eye(dim)[:2] * 3.0
    blocks = []
    for q in range(n):
        Y = themes[q % 2] + rng.standard_normal((4, dim))
        blocks.append(Y / np.linalg.norm(Y, axis=1, keepdims=True))
    sums = QuerySums([f"q{q}" for q in range(n)], np.array([b.sum(axis=0) for b in blocks]), np.full(n, 4.0))
    d_ref = 1.0 - float(sums.similarity(np.ones((1, n)))[0])
    realized = 0.1 + 1e-4 * rng.standard_normal(n)
    single = 0.05 + 1e-4 * rng.standard_normal(n)
    queries = sums.query_ids
    est_f, lo_f, hi_f = gap_share_ci(realized, single, d_ref, 1000, 0)
    est_j, lo_j, hi_j = gap_share_ci(realized, single, d_ref, 1000, 0, sums, queries)
    assert est_j == pytest.approx(est_f) == pytest.approx(realized.mean() / (d_ref - single.mean()))
    assert lo_j <= est_j <= hi_j
    assert hi_j - lo_j > 10 * (hi_f - lo_f)


def test_interval_widens_when_the_reference_distance_is_noisy() -> None:
    """Simulated studies whose queries fall in two themes: the cross-query similarity depends on
    which themes a sample of queries holds, so D_ref is noisy; a fixed D_ref leaves that out."""
    design = Design(queries=40, clusters=2, theme=3.0, common=0.3)
    ratios = []
    for seed in range(8):
        fixed, joint = _gap_rows(design, seed)
        assert joint["hivemind_gap"] == pytest.approx(fixed["hivemind_gap"])  # same estimate
        assert joint["ci_lo"] <= joint["hivemind_gap"] <= joint["ci_hi"]
        ratios.append((joint["ci_hi"] - joint["ci_lo"]) / (fixed["ci_hi"] - fixed["ci_lo"]))
    assert np.mean(ratios) > 1.1  # 1.29 here; ~1.4 over 30 studies at theme 2


def test_interval_is_not_inflated_when_the_reference_is_steady() -> None:
    fixed, joint = _gap_rows(Design(queries=40), seed=3)
    ratio = (joint["ci_hi"] - joint["ci_lo"]) / (fixed["ci_hi"] - fixed["ci_lo"])
    assert 0.6 < ratio < 1.3
