"""The ensemble curve's simultaneous band over k (issue 26: per-k intervals not adjusted).

A curve has one pointwise 95% interval per k; the chance that *some* k misses grows with the
number of k (21% of null studies showed a k whose interval excluded 0). The band
(diff_band_lo, diff_band_hi) covers every k at once with 95%.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import t as student_t

from hivemind.metrics.stats import simultaneous_band
from hivemind.testing.simulate import Design, null_design, simulate


def _curve(design: Design, seed: int, n_boot: int = 300) -> pl.DataFrame:
    from hivemind.analysis import build_groups, ensemble_curves, ensemble_per_query

    responses, vectors = simulate(design, seed)
    per_query = ensemble_per_query(build_groups(responses), vectors, draws=4, seed=seed)
    return ensemble_curves(per_query, n_boot=n_boot, n_perm=1, seed=seed)


def test_band_holds_the_pointwise_interval_and_is_wider_where_k_vary() -> None:
    curve = _curve(Design(queries=20, deployments=3, k=6, takes=(0.6, 0.6, 0.6)), seed=1)
    assert {"diff_band_lo", "diff_band_hi"} <= set(curve.columns)
    for row in curve.iter_rows(named=True):
        assert row["diff_band_lo"] <= row["diff_lo"] <= row["diff"] <= row["diff_hi"] <= row["diff_band_hi"]
    spread = curve.filter(pl.col("k") > 1)
    band = (spread["diff_band_hi"] - spread["diff_band_lo"]).to_numpy()
    pointwise = (spread["diff_hi"] - spread["diff_lo"]).to_numpy()
    assert np.all(band > pointwise)
    at_1 = curve.filter(pl.col("k") == 1)  # one response: no diversity in either arm
    assert (at_1["diff_band_lo"] == 0.0).all() and (at_1["diff_band_hi"] == 0.0).all()


def test_simultaneous_band_covers_every_column_at_once() -> None:
    """10 independent columns, 20 rows: t intervals per column miss somewhere ~40% of the time."""
    rng = np.random.default_rng(0)
    reps, n, p = 200, 20, 10
    misses_band = misses_pointwise = 0
    for r in range(reps):
        X = rng.standard_normal((n, p)) * np.linspace(0.5, 2.0, p)
        _, lo, hi = simultaneous_band(X, n_boot=500, seed=r)
        misses_band += bool(np.any((lo > 0) | (hi < 0)))
        half = student_t.ppf(0.975, n - 1) * X.std(axis=0, ddof=1) / np.sqrt(n)
        mean = X.mean(axis=0)
        misses_pointwise += bool(np.any((mean - half > 0) | (mean + half < 0)))
    assert misses_pointwise / reps > 0.25
    assert misses_band / reps <= 0.10  # nominal 5%; 200 reps: Wilson upper bound ~0.09


def test_band_keeps_the_family_wise_error_of_null_ensembles() -> None:
    """Deployments alike: the true difference is 0 at every k. Some k's pointwise interval
    excludes 0 in more studies than the band does, and the band stays near 5%."""
    design = null_design(queries=12, deployments=3, k=6)
    pointwise = band = 0
    studies = 40
    for seed in range(studies):
        curve = _curve(design, seed).filter((pl.col("metric") == "mean_distance") & (pl.col("k") > 1))
        pointwise += bool(((curve["diff_lo"] > 0) | (curve["diff_hi"] < 0)).any())
        band += bool(((curve["diff_band_lo"] > 0) | (curve["diff_band_hi"] < 0)).any())
    assert band <= pointwise
    assert band / studies <= 0.15


def test_summary_and_report_label_the_band_simultaneous() -> None:
    from hivemind.analysis import analyze_responses
    from hivemind.analysis.summary import parse_summary
    from hivemind.report.sections import ensemble_section, headline

    responses, vectors = simulate(Design(queries=12), seed=0)
    result = analyze_responses(responses, vectors, lexical=False, n_boot=200, n_perm=50)
    assert "simultaneous band" in result.summary["interval_rule"]
    assert "family-wise 95%" in result.summary["interval_rule"]
    ens = result.summary["headline"]["ensemble_at_k_star"]
    assert ens["diff_band_lo"] <= ens["diff_lo"] <= ens["diff_hi"] <= ens["diff_band_hi"]
    summary = parse_summary({**result.summary, "study": "sim"})
    card = headline(summary)
    assert "pointwise 95% CI" in card and "simultaneous band over k (family-wise 95%)" in card
    assert "family-wise 95%" in ensemble_section(summary, result.tables)


def test_a_band_over_a_handful_of_queries_is_unbounded_never_a_huge_number() -> None:
    """With 3 queries, 1 in 9 resamples draws one query thrice (no spread, se* = 0): more than
    alpha of the bootstrap-t maxima are infinite, so no finite band holds; lo/hi are nan, and
    never a number such as -4e298 or the pointwise interval standing in for the band."""
    from hivemind.metrics.stats import simultaneous_band

    rng = np.random.default_rng(5)
    X = rng.normal(0.1, 0.05, size=(3, 4))
    means, lo, hi = simultaneous_band(X, n_boot=500, seed=1)
    assert np.allclose(means, X.mean(axis=0))
    assert np.isnan(lo).all() and np.isnan(hi).all()
    more = rng.normal(0.1, 0.05, size=(30, 4))
    _, lo, hi = simultaneous_band(more, n_boot=500, seed=1)
    assert np.isfinite(lo).all() and (hi - lo < 1).all()
