"""Headline figures stand on the complete queries (issue 26, reproductions 1 and 2).

A query that lacks a deployment has a gap over fewer deployments and an ensemble "mixed" arm
drawn from fewer deployments; averaging it into the headline (or letting it set k*) changes
what the numbers measure. Synthetic equicorrelated vectors (tests/test_analysis.py) make the
true values exact.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.test_analysis import FAST, Design


def four_with_a_distinct_one(missing_on: set[int], queries: int = 10, k: int = 4) -> Design:
    """a, b, c share each query's centre (cosine 0.6 within and across); d has its own centre.

    On a query with all four: intra 0.6, inter (3 pairs at 0.6, 3 at 0) 0.3, gap 0.3. On a
    query without d: inter 0.6, gap 0: mixing such queries in pulls the gap towards 0.
    """
    d = Design(dim=2048)
    for q in range(queries):
        centre = d.arm(f"q{q}", "a", k, 0.6)
        d.arm(f"q{q}", "b", k, 0.6, centre=centre)
        d.arm(f"q{q}", "c", k, 0.6, centre=centre)
        if q not in missing_on:
            d.arm(f"q{q}", "d", k, 0.6)
    return d


def test_headline_gap_stands_on_the_queries_every_deployment_answered() -> None:
    from hivemind.analysis import analyze_responses

    responses, X = four_with_a_distinct_one(missing_on={1, 4, 7, 8}).prepared()
    result = analyze_responses(responses, X, lexical=False, **FAST)
    h = result.summary["headline"]
    # old code: 0.3 * 6/10 + 0 * 4/10 = 0.18 over "10 queries"
    assert h["gap"]["estimate"] == pytest.approx(0.3, abs=1e-6)
    assert h["intra_similarity"]["estimate"] == pytest.approx(0.6, abs=1e-6)
    assert h["inter_similarity"]["estimate"] == pytest.approx(0.3, abs=1e-6)
    assert h["n_queries"] == 6
    footing = result.summary["footing"]["default"]
    assert footing["queries_analysed"] == 10 and footing["queries_complete"] == 6
    assert footing["missing"] == {"d": 4}
    assert any("6 of 10 queries" in w and "d on 4" in w and "headline" in w for w in result.summary["warnings"])
    # the hivemind gap and the ensemble curve stand on the same six queries
    assert h["hivemind_gap"]["n_queries"] == 6 and h["hivemind_gap"]["k_star"] == 4
    assert footing["queries_ensemble_curve"] == 6


def test_one_sparse_query_does_not_move_k_star_or_another_k_mixed_arm() -> None:
    from hivemind.analysis import analyze_responses

    d = Design(dim=2048)
    for q in range(6):
        for dep in "abcd":
            d.arm(f"q{q}", dep, 4, 0.3)
    d.arm("sparse", "a", 4, 0.3)  # answered by 2 of 4 deployments
    d.arm("sparse", "b", 4, 0.3)
    responses, X = d.prepared()
    result = analyze_responses(responses, X, lexical=False, **FAST)
    hg = result.summary["headline"]["hivemind_gap"]
    assert hg["k_star"] == 4  # old code: 2, set by the one sparse query
    assert hg["n_queries"] == 6
    curve = result.tables["ensemble"].filter(pl.col("metric") == "mean_distance")
    assert set(curve["n_queries"].to_list()) == {6}
    at_4 = curve.filter(pl.col("k") == 4).row(0, named=True)
    assert at_4["n_deployments_used"] == 4
    # the mixed arm at k = 4 is the mean over the six complete queries only
    per_query = result.tables["ensemble_per_query"].filter(
        (pl.col("k") == 4) & (pl.col("arm") == "mixed") & (pl.col("query_id") != "sparse")
    )
    assert at_4["mixed"] == pytest.approx(float(np.mean(per_query["mean_distance"].to_numpy())))


def test_n_deployments_used_is_the_fewest_any_query_drew_from() -> None:
    from hivemind.analysis import build_groups, ensemble_curves, ensemble_per_query

    d = Design(dim=2048)
    for q in range(3):
        for dep in "abcd":
            d.arm(f"q{q}", dep, 4, 0.3)
    d.arm("sparse", "a", 4, 0.3)
    d.arm("sparse", "b", 4, 0.3)
    responses, X = d.prepared()
    per_query = ensemble_per_query(build_groups(responses), X, draws=4)
    curve = ensemble_curves(per_query, **FAST).filter((pl.col("metric") == "mean_distance") & (pl.col("k") == 4))
    assert curve["n_deployments_used"][0] == 2  # old code claimed 4 while one query drew from 2


def test_complete_queries_takes_the_deployments_under_test() -> None:
    from hivemind.analysis.data import complete_queries

    table = pl.DataFrame(
        {
            "condition": ["c"] * 5,
            "query_id": ["q1", "q1", "q1", "q2", "q2"],
            "deployment": ["A", "B", "ref", "A", "B"],
            "k": [3, 3, 3, 3, 3],
        }
    )
    assert complete_queries(table)["query_id"].to_list() == ["q1"]  # q2 lacks ref
    assert complete_queries(table, under_test={"A", "B"})["query_id"].to_list() == ["q1", "q2"]


def _nn_headline(shared: bool) -> dict[str, object]:
    from hivemind.analysis import analyze_responses

    d = Design(dim=2048)
    for q in range(3):
        centre = d.arm(f"q{q}", "a", 4, 0.9)
        for dep in "bcd":
            d.arm(f"q{q}", dep, 4, 0.9, centre=centre if shared else None)
    responses, X = d.prepared()
    X = X + 0.01 * np.random.default_rng(0).standard_normal(X.shape).astype(np.float32)  # no tied cosines
    return analyze_responses(responses, X, lexical=False, **FAST).summary["headline"]["nn_distinct_deployments"]


def test_nearest_neighbour_headline_is_at_j_equal_k_and_tells_designs_apart() -> None:
    """Issue reproduction: with D K - 1 < 50 the last j is every other response, where the count is
    D by construction; identical and fully separated deployments both read "4.0 of 4" there."""
    apart, alike = _nn_headline(shared=False), _nn_headline(shared=True)
    assert apart["j"] == alike["j"] == 4  # K
    assert apart["of"] == 4 and apart["most"] == 4 and apart["least"] == 1
    assert apart["estimate"] == pytest.approx(2.0)  # 3 own responses, then one from elsewhere
    assert alike["estimate"] > 2.5  # neighbours drawn from every deployment
