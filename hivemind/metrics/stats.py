"""Uncertainty and significance over queries: bootstrap, permutation, corrections.

The unit of resampling is always the query: pass one value (or one group)
per query. Seeds are explicit so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "permutation_test",
    "holm",
    "benjamini_hochberg",
]

Statistic = Callable[..., Any]


def _apply_rows(statistic: Statistic, samples: np.ndarray) -> np.ndarray:
    """statistic over each row of ``samples``; vectorised when it takes ``axis``."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples])


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
    """(estimate, lo, hi): percentile bootstrap CI of ``statistic(values)``.

    nan entries (queries where the metric is undefined) are dropped first.
    All resamples are drawn in one (n_boot, n) index matrix; ``statistic``
    is called with ``axis=1`` when it accepts it, else row by row.
    Returns nans for no data; a single value gives a zero-width interval.
    """
    x = _finite_1d(values)
    n = x.size
    if n == 0:
        return (float("nan"),) * 3
    est = float(statistic(x))
    if n == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = _apply_rows(statistic, x[idx])
    lo, hi = np.nanquantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return est, float(lo), float(hi)


def paired_bootstrap_diff(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    statistic: Statistic = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of ``statistic(a) - statistic(b)``, resampling pairs.

    ``a[i]`` and ``b[i]`` belong to the same query and are resampled
    together, which removes between-query variance from the interval.
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
    if n == 1:
        return est, est, est
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = _apply_rows(statistic, xa[idx]) - _apply_rows(statistic, xb[idx])
    lo, hi = np.nanquantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return est, float(lo), float(hi)


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
