"""Embedding-space similarity and diversity (see shared METRICS.md).

All functions take float arrays of row vectors (one response per row) and
re-normalise rows themselves, so callers may pass raw embeddings. They are
pure: no model, no I/O. Results are Python floats; ``nan`` marks a quantity
that is undefined for the input (e.g. a mean over zero pairs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "EIGEN_EPS",
    "normalize_rows",
    "cosine_matrix",
    "mean_pairwise_similarity",
    "mean_cross_similarity",
    "embedding_diversity",
    "vendi_score",
    "nearest_neighbour_model_counts",
    "intra_inter_gap",
    "nli_diversity",
]

ArrayLike = npt.ArrayLike
EIGEN_EPS: float = 1e-12
"""Eigenvalues of K/n are clipped at this floor (Karouzos et al. protocol)."""


def _as_2d(X: ArrayLike) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {arr.shape}")
    return arr


NORMALISE_BLOCK_ROWS = 65536
"""Rows a corpus-wide step normalises at once (float64: 200 MB at 384-d), where a float64 copy
of a 1M-row corpus is 3 GB. Row by row the result is the same for any block size."""


def normalize_rows(X: ArrayLike) -> np.ndarray:
    """Return ``X`` with unit-L2 rows (float64), so dot products are cosines.

    Embedders usually normalise already, but caches, averaging or float16
    round-trips break that silently; every metric here calls this first.
    Zero rows stay zero (cosine with them is 0) instead of becoming nan.
    """
    arr = _as_2d(X)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0.0, norms, 1.0)


def cosine_matrix(X: ArrayLike, Y: ArrayLike | None = None) -> np.ndarray:
    """Cosine similarity of every row of ``X`` with every row of ``Y`` (default ``X``)."""
    A = normalize_rows(X)
    B = A if Y is None else normalize_rows(Y)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"dimension mismatch: {A.shape[1]} vs {B.shape[1]}")
    S: np.ndarray = np.clip(A @ B.T, -1.0, 1.0)
    return S


def mean_pairwise_similarity(X: ArrayLike) -> float:
    """Intra-set similarity: mean cosine over pairs i < j (self-pairs excluded).

    Self-pairs are always 1 and would inflate the mean (the INFINITY-CHAT
    heatmap diagonal did). ``nan`` for fewer than two rows.
    """
    A = normalize_rows(X)
    n = A.shape[0]
    if n < 2:
        return float("nan")
    S = np.clip(A @ A.T, -1.0, 1.0)
    iu = np.triu_indices(n, k=1)
    return float(S[iu].mean())


def mean_cross_similarity(X: ArrayLike, Y: ArrayLike) -> float:
    """Inter-set similarity: mean cosine over all ``|X| x |Y|`` cross pairs."""
    A = normalize_rows(X)
    B = normalize_rows(Y)
    if A.shape[0] == 0 or B.shape[0] == 0:
        return float("nan")
    return float(cosine_matrix(A, B).mean())


def embedding_diversity(X: ArrayLike) -> float:
    """``1 - mean_pairwise_similarity`` (the SBERT diversity of Karouzos et al.)."""
    return 1.0 - mean_pairwise_similarity(X)


def _renyi_exp_entropy(w: np.ndarray, q: float) -> float:
    """exp of the order-q entropy of eigenvalues ``w`` (already clipped)."""
    if q == 1.0:
        return float(np.exp(-np.sum(w * np.log(w))))
    # For q != 1 a clipped floor of 1e-12 would add (1e-12)**q per null
    # eigenvalue (large for q < 1, and different for primal and dual);
    # treat those as exact zeros instead.
    p = w[w > EIGEN_EPS]
    if p.size == 0:
        return float("nan")
    if math.isinf(q):
        return float(1.0 / p.max())
    if q == 0.0:
        return float(p.size)
    return float(np.exp(np.log(np.sum(p**q)) / (1.0 - q)))


def vendi_score(X: ArrayLike, q: float = 1.0) -> float:
    """Vendi score: effective number of distinct items in ``X``.

    exp of the order-``q`` (Renyi; q=1 Shannon, q=inf min-entropy) entropy
    of the eigenvalues of ``K/n``, ``K`` the cosine Gram matrix (K_ii = 1).
    Eigenvalues are clipped at 1e-12 as in Karouzos et al. When n > d the
    d x d dual ``X^T X / n`` (same nonzero spectrum) is used, so cost is
    bounded by the embedding dimension. Range [1, n]: compare at equal n.
    ``nan`` for an empty input.
    """
    if isinstance(q, str):  # accept vendi-score's "inf" spelling
        q = float(q)
    A = normalize_rows(X)
    n, d = A.shape
    if n == 0:
        return float("nan")
    M = (A.T @ A) / n if n > d else (A @ A.T) / n
    w = np.linalg.eigvalsh(M)
    w = np.clip(w, EIGEN_EPS, None)
    return _renyi_exp_entropy(w, float(q))


def _nearest_in_rows(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k smallest keys, ascending, ties in index order: the first k
    of a stable argsort of each row, without sorting whole rows (a partition finds each row's
    k-th key; only the keys up to it, ties included, are sorted)."""
    n, m = keys.shape
    if k >= m:
        return np.argsort(keys, axis=1, kind="stable")[:, :k]
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1 : k]
    rows, cols = np.nonzero(keys <= kth)  # row-major: columns ascending within a row
    order = np.lexsort((cols, keys[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n))
    take = starts[:, None] + np.arange(k)[None, :]  # every row has >= k keys up to its k-th
    return cols[take]


def nearest_neighbour_model_counts(X: ArrayLike, labels: Sequence[Any] | np.ndarray, j_max: int) -> np.ndarray:
    """Mean number of distinct source models among each response's j nearest.

    For each response i, rank the *other* responses to the same query by
    cosine (descending; ties broken by index), and count distinct labels
    among the first j. Returns the average over responses for j = 1..j_max
    (index j-1). A value near j means neighbours come from different models:
    the hivemind signature. Entries with j > n - 1 are ``nan``.
    """
    if j_max < 1:
        raise ValueError("j_max must be >= 1")
    A = normalize_rows(X)
    n = A.shape[0]
    lab = np.asarray(labels)
    if lab.shape[0] != n:
        raise ValueError(f"{n} vectors but {lab.shape[0]} labels")
    out = np.full(j_max, np.nan)
    if n < 2:
        return out
    codes = np.unique(lab, return_inverse=True)[1].reshape(-1)
    k = min(j_max, n - 1)
    S = A @ A.T
    np.fill_diagonal(S, -np.inf)
    neigh = codes[_nearest_in_rows(-S, k)]  # (n, k)
    seen = np.zeros((n, int(codes.max()) + 1), dtype=bool)
    counts = np.zeros((n, k))
    running = np.zeros(n)
    rows = np.arange(n)
    for col in range(k):
        c = neigh[:, col]
        running += ~seen[rows, c]
        seen[rows, c] = True
        counts[:, col] = running
    out[:k] = counts.mean(axis=0)
    return out


def intra_inter_gap(X: ArrayLike, labels: Sequence[Any] | np.ndarray) -> float:
    """Hivemind gap of one query: mean_m intra(m) - mean_{m != m'} inter(m, m').

    Positive when a model's samples resemble each other more than other
    models' samples; near 0 (or below) is the hivemind. Models with fewer
    than two responses have no intra value and are skipped in that mean;
    ``nan`` if fewer than two models. Usable as a ``permutation_test``
    statistic.
    """
    A = normalize_rows(X)
    lab = np.asarray(labels)
    if lab.shape[0] != A.shape[0]:
        raise ValueError(f"{A.shape[0]} vectors but {lab.shape[0]} labels")
    names = np.unique(lab)
    if names.size < 2:
        return float("nan")
    S = np.clip(A @ A.T, -1.0, 1.0)
    idx = [np.flatnonzero(lab == m) for m in names]
    intra = []
    for ii in idx:
        if ii.size >= 2:
            block = S[np.ix_(ii, ii)]
            intra.append((block.sum() - np.trace(block)) / (ii.size * (ii.size - 1)))
    inter = [S[np.ix_(idx[a], idx[b])].mean() for a in range(len(idx)) for b in range(a + 1, len(idx))]
    if not intra:
        return float("nan")
    return float(np.mean(intra) - np.mean(inter))


def nli_diversity(texts: Sequence[str], pair_scorer: Callable[[str, str], tuple[float, float]]) -> float:
    """NLI (logical) diversity: ``1 - mean over pairs of sim(a, b)``.

    ``sim(a, b) = ((e_ab - c_ab) + (e_ba - c_ba)) / 2`` where ``pair_scorer(
    premise, hypothesis)`` returns (P(entail), P(contradict)). NLI is not
    symmetric, hence both directions. The scorer is injected so no model is
    downloaded here. Range [0, 2]; ``nan`` for fewer than two texts.
    """
    n = len(texts)
    if n < 2:
        return float("nan")
    sims: list[float] = []
    for i in range(n):
        for j in range(i + 1, n):
            e_ab, c_ab = pair_scorer(texts[i], texts[j])
            e_ba, c_ba = pair_scorer(texts[j], texts[i])
            sims.append(((e_ab - c_ab) + (e_ba - c_ba)) / 2.0)
    return 1.0 - float(np.mean(sims))
