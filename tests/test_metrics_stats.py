"""Bootstrap, permutation test and multiple-testing corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hivemind.metrics import (
    benjamini_hochberg,
    bootstrap_ci,
    holm,
    intra_inter_gap,
    paired_bootstrap_diff,
    permutation_test,
)

# --- bootstrap -------------------------------------------------------------------


def test_bootstrap_ci_covers_mean_and_is_reproducible() -> None:
    x = np.random.default_rng(0).normal(loc=0.7, scale=0.1, size=80)
    est, lo, hi = bootstrap_ci(x)
    assert est == pytest.approx(x.mean())
    assert lo < est < hi
    # percentile CI of the mean ~ mean +- 1.96 * se
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def _coverage(draw: object, truth: float, n: int, trials: int = 600) -> float:
    rng = np.random.default_rng(12)
    covered = 0
    for t in range(trials):
        x = draw(rng, n)  # type: ignore[operator]
        _, lo, hi = bootstrap_ci(x, n_boot=1000, seed=t)
        covered += lo <= truth <= hi
    return covered / trials


@pytest.mark.parametrize("n", [12, 40])
def test_bootstrap_ci_holds_95_percent_with_few_queries(n: int) -> None:
    """Issue 26 reproduction: percentile intervals covered 91-92% at 12 queries, 93-94% at 40.

    600 studies: a Monte Carlo standard error of 0.9 points around 95%."""
    normal = _coverage(lambda rng, k: rng.normal(size=k), 0.0, n)
    assert 0.92 <= normal <= 0.975, normal
    skewed = _coverage(lambda rng, k: rng.gamma(4.0, size=k), 4.0, n)  # skewed, as similarities near 1
    assert 0.92 <= skewed <= 0.975, skewed


def test_paired_bootstrap_diff_holds_95_percent_at_12_queries() -> None:
    rng = np.random.default_rng(5)
    covered, trials = 0, 600
    for t in range(trials):
        base = rng.normal(size=12)
        a, b = base + rng.normal(scale=0.1, size=12), base + 0.05 + rng.normal(scale=0.1, size=12)
        _, lo, hi = paired_bootstrap_diff(a, b, n_boot=1000, seed=t)
        covered += lo <= -0.05 <= hi
    assert 0.93 <= covered / trials <= 0.975


def test_bootstrap_ci_coverage() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    trials = 200
    for t in range(trials):
        x = rng.normal(size=40)
        _, lo, hi = bootstrap_ci(x, n_boot=500, seed=t)
        covered += lo <= 0.0 <= hi
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_ci_drops_nan_and_handles_edge_sizes() -> None:
    x = np.array([0.2, np.nan, 0.4, 0.6, np.nan])
    est, lo, hi = bootstrap_ci(x)
    assert est == pytest.approx(0.4)
    assert 0.2 <= lo <= est <= hi <= 0.6
    assert bootstrap_ci([0.5, np.nan]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan]))


def test_bootstrap_ci_statistic_without_axis() -> None:
    x = np.arange(21, dtype=float)
    est, lo, hi = bootstrap_ci(x, statistic=lambda v: float(np.median(v)), n_boot=300)
    assert est == 10.0 and lo < 10.0 < hi
    assert bootstrap_ci(x, statistic=np.median, n_boot=300) == (est, lo, hi)


def test_paired_bootstrap_diff_uses_pairing() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(scale=1.0, size=100)  # large between-query variance
    a = base + 0.1 + rng.normal(scale=0.02, size=100)
    b = base.copy()
    est, lo, hi = paired_bootstrap_diff(a, b)
    assert est == pytest.approx(a.mean() - b.mean())
    assert 0.0 < lo < est < hi  # a small shift is detected because pairs move together
    _, ulo, uhi = paired_bootstrap_diff(rng.permutation(a), b)  # pairing broken
    assert (hi - lo) * 5 < (uhi - ulo)
    a2 = a.copy()
    a2[3] = np.nan
    b2 = b.copy()
    b2[7] = np.nan
    keep = np.ones(100, bool)
    keep[[3, 7]] = False
    assert paired_bootstrap_diff(a2, b2)[0] == pytest.approx(a[keep].mean() - b[keep].mean())
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0, 2.0], [1.0])


# --- permutation test ---------------------------------------------------------------


def _queries(signal: float, n_queries: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_queries):
        shared = rng.normal(size=16)
        vecs = [shared + signal * rng.normal(size=16) + 0.5 * rng.normal(size=(4, 16)) for _ in range(3)]
        groups.append((np.vstack(vecs), np.repeat(["m1", "m2", "m3"], 4)))
    return groups


def test_permutation_small_p_when_labels_matter() -> None:
    p = permutation_test(_queries(1.0, 5, seed=0), intra_inter_gap, n_perm=199, seed=0)
    assert p == pytest.approx(1 / 200)  # +1 correction: never exactly 0


def test_permutation_large_p_when_labels_do_not_matter() -> None:
    p = permutation_test(_queries(0.0, 5, seed=1), intra_inter_gap, n_perm=199, seed=0)
    assert p > 0.1
    assert 0.0 < p <= 1.0


def test_permutation_shuffles_within_groups_only() -> None:
    # labels perfectly separate two queries, so shuffling across queries would
    # change the statistic; within-query shuffling never does -> p = 1.
    g1 = (np.zeros((4, 2)), np.array(["a", "a", "a", "a"]))
    g2 = (np.zeros((4, 2)), np.array(["b", "b", "b", "b"]))

    def stat(v: np.ndarray, lab: np.ndarray) -> float:
        return float((lab == "a").sum())

    assert permutation_test([g1, g2], stat, n_perm=50) == 1.0


# --- multiple testing ---------------------------------------------------------------


def test_holm_hand_computed() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005,0.01,0.03,0.04 -> 4*,3*,2*,1* = .02,.03,.06,.04 -> cummax .02,.03,.06,.06
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert np.allclose(out[[0, 2]], [0.02, 0.02]) and math.isnan(out[1])


def test_benjamini_hochberg_hand_computed() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: .005*4/1=.02, .01*4/2=.02, .03*4/3=.04, .04*4/4=.04
    assert np.allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    # monotone: rank 2's raw .04*3/2 = .06 is lowered to rank 3's .045*3/3
    assert np.allclose(benjamini_hochberg([0.001, 0.04, 0.045]), [0.003, 0.045, 0.045])
    assert np.allclose(benjamini_hochberg([0.8, 0.9]), [0.9, 0.9])
    assert benjamini_hochberg([2.0]).max() <= 1.0
    assert np.all(benjamini_hochberg(p) <= holm(p) + 1e-15)
