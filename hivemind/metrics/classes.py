"""Equivalence classes of responses and their discrete entropy (NoveltyBench style)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import numpy.typing as npt

from hivemind.metrics.semantic import cosine_matrix

__all__ = ["equivalence_classes", "threshold_classes", "cosine_equivalence", "n_distinct", "semantic_entropy"]


def equivalence_classes(n_items: int, same: Callable[[int, int], bool]) -> list[int]:
    """Greedy partition of items 0..n-1; returns one class id per item.

    Item i joins the first existing class whose *first member* r satisfies
    ``same(r, i)``, else opens a new class (NoveltyBench). Comparing with the
    representative only keeps it O(n * classes) and deterministic for a
    non-transitive ``same`` (cosine threshold, NLI). Ids are 0, 1, ... in
    order of first appearance; ``max(ids) + 1`` is NoveltyBench's ``distinct``.
    """
    reps: list[int] = []
    out: list[int] = []
    for i in range(n_items):
        for c, r in enumerate(reps):
            if same(r, i):
                out.append(c)
                break
        else:
            reps.append(i)
            out.append(len(reps) - 1)
    return out


def threshold_classes(same: np.ndarray) -> list[int]:
    """`equivalence_classes` for a relation given as a boolean matrix (``same[r, i]``), e.g.
    ``cosine_matrix(X) >= t``: the same greedy partition, each item tested against every
    representative in one vectorised step instead of one Python call per pair."""
    reps: list[int] = []
    out: list[int] = []
    for i in range(same.shape[0]):
        hits = np.flatnonzero(same[reps, i]) if reps else np.zeros(0, np.int64)
        if hits.size:
            out.append(int(hits[0]))
        else:
            reps.append(i)
            out.append(len(reps) - 1)
    return out


def cosine_equivalence(X: npt.ArrayLike, threshold: float = 0.9) -> Callable[[int, int], bool]:
    """``same(i, j)`` that holds when cos(X_i, X_j) >= threshold.

    The threshold only means something for one embedder: calibrate it.
    """
    S = cosine_matrix(X)

    def same(i: int, j: int) -> bool:
        return bool(S[i, j] >= threshold)

    return same


def n_distinct(labels: Sequence[Hashable]) -> int:
    """Number of distinct classes (NoveltyBench ``distinct``)."""
    return len(set(labels))


def semantic_entropy(labels: Sequence[Hashable] | np.ndarray) -> float:
    """Discrete semantic entropy -sum_c p_c log p_c (nats) over class labels.

    0 when every response is in one class; log N when all differ.
    ``nan`` for no labels.
    """
    seq = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
    if not seq:
        return float("nan")
    counts = np.array(list(Counter(seq).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() + 0.0)
