"""Uncertainty and significance over queries: bootstrap, permutation, corrections.

The unit of resampling is always the query: pass one value (or one group)
per query. Seeds are explicit so a report is reproducible. Intervals are BCa ones from
`scipy.stats.bootstrap`, expanded for few queries (`expanded_alpha`); the permutation tests
are one-sided (the alternative is named in each docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "bootstrap_ci",
    "expanded_alpha",
    "paired_bootstrap_diff",
    "query_bootstrap_ci",
    "simultaneous_band",
    "permutation_test",
    "holm",
    "benjamini_hochberg",
]

Statistic = Callable[..., Any]


BCA_MAX_N = 20_000
"""Above this many queries the intervals are percentile ones: BCa's jackknife costs n^2 and its
correction, like the expansion's, shrinks as 1/n."""


def expanded_alpha(n: int, alpha: float) -> float:
    """The tail area that makes a bootstrap interval of n values as wide as a t interval.

    A bootstrap interval of the mean of n values is about z_{1-alpha/2} sqrt((n-1)/n) s/sqrt(n)
    wide each side, narrower than the t interval t_{n-1, 1-alpha/2} s/sqrt(n): at 12 queries
    it covers ~91% at a nominal 95%. Hesterberg's expansion (Hesterberg 2015, "What teachers
    should know about the bootstrap", "expanded percentile interval") asks the bootstrap for
    the tail alpha' = 2 Phi(-sqrt(n / (n - 1)) t_{n-1, 1-alpha/2}) instead (0.0215 at n = 12,
    0.0405 at 40, -> alpha as n grows).
    """
    from scipy.stats import norm, t

    if n < 3:
        return alpha
    return float(2.0 * norm.sf(np.sqrt(n / (n - 1.0)) * t.ppf(1.0 - alpha / 2.0, n - 1)))


def _takes_axis(statistic: Statistic, sample: np.ndarray) -> bool:
    """Whether ``statistic(batch, axis=-1)`` gives one value per row (vectorised)."""
    try:
        out = np.asarray(statistic(np.vstack([sample, sample]), axis=-1), dtype=np.float64)
    except TypeError:
        return False
    return out.shape == (2,)


def _interval(
    data: tuple[np.ndarray, ...],
    statistic: Statistic,
    vectorized: bool,
    n_boot: int,
    alpha: float,
    seed: int,
) -> tuple[float, float]:
    """(lo, hi) by `scipy.stats.bootstrap`: BCa at the expanded level (`expanded_alpha`).

    Resamples are drawn by ``np.random.default_rng(seed)`` (one seed, one interval, as
    before). Degenerate resamples (BCa undefined, e.g. every value equal) fall back to the
    percentile interval of the same resamples.
    """
    import warnings

    from scipy.stats import bootstrap

    n = data[0].size
    level = 1.0 - expanded_alpha(n, alpha)
    method = "BCa" if n <= BCA_MAX_N else "percentile"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DegenerateDataWarning / nan statistics: handled below
        res = bootstrap(
            data,
            statistic,
            n_resamples=n_boot,
            vectorized=vectorized,
            paired=len(data) > 1,
            confidence_level=level,
            method=method,
            rng=np.random.default_rng(seed),
            batch=max(1, min(n_boot, 2_000_000 // max(n, 1))),
        )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        boots = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        tail = (1.0 - level) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = (float(v) for v in np.nanquantile(boots, [tail, 1.0 - tail]))
    return lo, hi


def _finite_1d(values: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[~np.isnan(arr)]


def bootstrap_ci(
    values: npt.ArrayLike,
    statistic: Statistic = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi): bootstrap CI of ``statistic(values)`` over queries.

    BCa (bias-corrected and accelerated) through `scipy.stats.bootstrap`, at the level
    expanded for few values (`expanded_alpha`): percentile intervals covered 91-92% at 12
    queries and 93-94% at 40; this one holds 95% (bench/calibration.py). Above `BCA_MAX_N`
    values, percentile. nan entries (queries where the metric is undefined) are dropped first.
    ``statistic`` is called with ``axis=-1`` when it accepts it, else value set by value.
    Returns nans for no data; a single value (or all equal) gives a zero-width interval.
    """
    x = _finite_1d(values)
    n = x.size
    if n == 0:
        return (float("nan"),) * 3
    est = float(statistic(x))
    if n == 1 or np.ptp(x) == 0.0:
        return est, est, est
    lo, hi = _interval((x,), statistic, _takes_axis(statistic, x), n_boot, alpha, seed)
    return est, lo, hi


def paired_bootstrap_diff(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    statistic: Statistic = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of ``statistic(a) - statistic(b)``, resampling pairs.

    ``a[i]`` and ``b[i]`` belong to the same query and are resampled together, which removes
    between-query variance from the interval; BCa at the expanded level, as `bootstrap_ci`.
    Pairs where either side is nan are dropped.
    """
    xa = np.asarray(a, dtype=np.float64).reshape(-1)
    xb = np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"paired inputs differ in length: {xa.size} vs {xb.size}")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    xa, xb = xa[keep], xb[keep]
    n = xa.size
    if n == 0:
        return (float("nan"),) * 3
    est = float(statistic(xa)) - float(statistic(xb))
    if n == 1 or np.ptp(xa - xb) == 0.0:
        return est, est, est
    vectorized = _takes_axis(statistic, xa)

    def diff(u: np.ndarray, v: np.ndarray, axis: int = -1) -> Any:
        if vectorized:
            return np.asarray(statistic(u, axis=axis)) - np.asarray(statistic(v, axis=axis))
        return float(statistic(u)) - float(statistic(v))

    lo, hi = _interval((xa, xb), diff, vectorized, n_boot, alpha, seed)
    return est, lo, hi


def _resample_counts(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """(m, n) bootstrap weights: how often each of n queries is drawn in each of m resamples."""
    draws = rng.integers(0, n, size=(m, n))
    offsets = (draws + np.arange(m)[:, None] * n).ravel()
    return np.bincount(offsets, minlength=m * n).reshape(m, n).astype(np.float64)


def query_bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    jackknife: Callable[[], np.ndarray] | None = None,
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of a statistic of n queries given as a function of query weights.

    ``statistic(W)`` takes weights W (m, n) - how often each query is drawn - and returns one
    value per row; ``W = 1`` gives the estimate. Everything the statistic is built from (a
    numerator and a denominator, several sums) is then resampled by the *same* draws of
    queries, which a bootstrap of one value per query cannot do (e.g. the hivemind gap, whose
    reference distance is a sum over pairs of queries). BCa at the expanded level, as
    `bootstrap_ci`; the acceleration from the jackknife (``jackknife()``: the n leave-one-out
    values, by default ``statistic`` at the weights 1 - e_i, in batches). Above `BCA_MAX_N`
    queries, or where BCa is undefined, the percentile interval of the same resamples.
    Resamples with a nan statistic are left out; nans without any finite resample.
    """
    import warnings

    from scipy.special import ndtr, ndtri

    est = float(np.asarray(statistic(np.ones((1, n))), dtype=np.float64)[0])
    if n == 0 or not np.isfinite(est):
        return (float("nan"),) * 3
    if n == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, 2_000_000 // n))
    parts = [statistic(_resample_counts(rng, n, min(batch, n_boot - s))) for s in range(0, n_boot, batch)]
    boots = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return (float("nan"),) * 3
    if np.ptp(boots) == 0.0:
        return est, est, est
    tail = expanded_alpha(n, alpha) / 2.0
    quantiles = np.array([tail, 1.0 - tail])
    if n <= BCA_MAX_N:
        if jackknife is not None:
            jack = np.asarray(jackknife(), dtype=np.float64)
        else:
            step = max(1, 2_000_000 // n)
            jack = np.concatenate(
                [np.asarray(statistic(1.0 - np.eye(n)[s : s + step]), dtype=np.float64) for s in range(0, n, step)]
            )
        u = np.nanmean(jack) - jack
        den = 6.0 * np.nansum(u**2) ** 1.5
        share = (np.sum(boots < est) + 0.5 * np.sum(boots == est)) / boots.size
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            accel = np.nansum(u**3) / den
            z0 = ndtri(share)
            z = ndtri(quantiles)
            adjusted = ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
        if np.all(np.isfinite(adjusted)):
            quantiles = adjusted
    lo, hi = (float(v) for v in np.quantile(boots, quantiles))
    return est, lo, hi


DEGENERATE_T = 1e300
"""The studentized statistic of a resample with no spread (its standard error 0)."""


def simultaneous_band(
    values: npt.ArrayLike, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimates, lo, hi): a band covering the means of all columns at once, with 1 - alpha.

    ``values`` is (queries, points): one row per query, one column per point of a curve (e.g.
    the ensemble difference at each k); rows with a nan are left out. Per-point 95% intervals
    each miss 5% of the time, so a curve of many points shows some point excluding the truth
    far more often; the band is the studentized max-statistic (bootstrap-t) one: queries are
    resampled once for all columns, each resample's largest |mean* - mean| / se* over the
    columns is taken (se* the resample's own standard error), and its 1 - alpha quantile c
    gives mean +- c se at every column. Columns with no spread (e.g. k = 1, where both arms
    are 0) get a zero-width band and do not enter the maximum. Where more than alpha of the
    resamples have no spread (a handful of queries), the band is unbounded: lo and hi are nan.
    """
    X = np.asarray(values, dtype=np.float64)
    X = X[~np.isnan(X).any(axis=1)]
    n, p = X.shape
    nan = np.full(p, np.nan)
    if n == 0:
        return nan, nan, nan
    means = X.mean(axis=0)
    if n < 2:
        return means, means.copy(), means.copy()

    def stderr(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(m2 - m1**2, 0.0, None) * n / (n - 1.0) / n)

    se = stderr(means, (X**2).mean(axis=0))
    live = se > 1e-12 * np.maximum(1.0, np.abs(means))
    if not live.any():
        return means, means.copy(), means.copy()
    Xl, ml = X[:, live], means[live]
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, 2_000_000 // n))
    maxima = []
    for s in range(0, n_boot, batch):
        W = _resample_counts(rng, n, min(batch, n_boot - s)) / n
        m1, m2 = W @ Xl, W @ (Xl**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(m1 - ml) / stderr(m1, m2)
        maxima.append(np.max(np.nan_to_num(t, nan=0.0, posinf=DEGENERATE_T), axis=1))  # no spread: off the scale
    c = float(np.quantile(np.concatenate(maxima), 1.0 - alpha))
    if c >= DEGENERATE_T:
        # more than alpha of the resamples drew queries with no spread at all (a handful of
        # queries): the bootstrap-t band is unbounded there, so none is given
        return means, np.where(live, np.nan, means), np.where(live, np.nan, means)
    half = np.where(live, c * se, 0.0)
    return means, means - half, means + half


def permutation_test(
    groups: Sequence[tuple[np.ndarray, np.ndarray]],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_perm: int = 2000,
    seed: int = 0,
) -> float:
    """One-sided p-value that labels carry no signal, by within-group shuffling.

    Each group is one query's ``(vectors, labels)``. The observed statistic
    is ``statistic(vectors, labels)`` averaged over groups (nan groups
    ignored); each permutation shuffles labels *within* every group (so no
    response moves to another query) and recomputes the average.
    ``p = (1 + #{perm >= observed}) / (1 + n_perm)``: never 0, valid at any
    n_perm. A tiny tolerance counts float-equal permutations as ``>=``.
    """
    if not groups:
        return float("nan")
    rng = np.random.default_rng(seed)
    prepared = [(np.asarray(v), np.asarray(lab)) for v, lab in groups]

    def avg(label_sets: Sequence[np.ndarray]) -> float:
        vals = [float(statistic(v, lab)) for (v, _), lab in zip(prepared, label_sets, strict=True)]
        return float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")

    observed = avg([lab for _, lab in prepared])
    if np.isnan(observed):
        return float("nan")
    tol = 1e-12 * max(1.0, abs(observed))
    hits = 0
    for _ in range(n_perm):
        perm = avg([rng.permutation(lab) for _, lab in prepared])
        if perm >= observed - tol:
            hits += 1
    return (1.0 + hits) / (1.0 + n_perm)


def holm(pvalues: npt.ArrayLike) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), monotone, <= 1.

    ``p_adj(k) = max_{i <= k} min(1, (m - i + 1) p(i))`` in ascending order,
    returned in the input order. nan entries stay nan and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def benjamini_hochberg(pvalues: npt.ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), monotone, <= 1.

    ``p_adj(k) = min_{i >= k} (m / i) p(i)`` in ascending order, returned
    in the input order. nan entries stay nan and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = m / np.arange(1, m + 1) * p[order]
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out
