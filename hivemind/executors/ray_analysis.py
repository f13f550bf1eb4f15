"""Analyses and near-duplicate search as Ray tasks, with the single-process results exactly.

* `map_groups`: an analysis whose rows each depend on one query (pair similarity, verbatim
  overlap, diversity, quality) runs on contiguous shards of the query groups; the shards'
  tables are concatenated in order, which is the table one call over all groups builds.
  Analyses that draw random numbers in one stream across queries (ensemble draws) and the
  bootstraps over queries stay on the driver: sharding them would change what a seed means.
* `sharded_pairs`: `near_duplicate_pairs` split over tasks. Within queries, whole queries go
  to shards. Over the corpus, the rows are cut into S blocks and every block pair (a <= b) is a
  task: FAISS indexes block b (on a GPU of the cluster when there is one and `use_gpu` allows)
  and searches it with block a. Similarities are the canonical
  float64-accumulated cosines (`hivemind.vectors.index.exact_cosines`), so the merged pair set and
  its values are those of one search.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl

_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _apply(fn: Callable[..., pl.DataFrame], groups: list[Any], *args: Any, **kwargs: Any) -> pl.DataFrame:
    return fn(groups, *args, **kwargs)


def shard_bounds(sizes: Sequence[int], shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges over items of the given sizes, about equal in total size."""
    n = len(sizes)
    shards = max(1, min(shards, n))
    cumulative = np.cumsum(np.asarray(sizes, dtype=np.float64))
    total = cumulative[-1] if n else 0.0
    cuts = [0]
    for s in range(1, shards):
        cut = int(np.searchsorted(cumulative, total * s / shards, side="right"))
        cuts.append(min(max(cut, cuts[-1] + 1), n - (shards - s)))
    cuts.append(n)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def map_groups(
    fn: Callable[..., pl.DataFrame],
    groups: list[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shards: int,
) -> pl.DataFrame:
    """`fn(groups, *args, **kwargs)` computed on shards of groups as Ray tasks, concatenated."""
    import polars as pl
    import ray

    sizes = [max(1, int(sum(np.asarray(r).size for r in getattr(g, "rows", [])))) for g in groups]
    bounds = shard_bounds(sizes, shards)
    if len(bounds) <= 1:
        return fn(groups, *args, **kwargs)
    shared = [ray.put(a) if isinstance(a, np.ndarray) else a for a in args]  # once, not per task
    task = ray.remote(_apply)
    frames = ray.get([task.remote(fn, groups[a:b], *shared, **kwargs) for a, b in bounds])
    return pl.concat(frames, how="vertical")


def _pairs_within(
    matrix: np.ndarray, rows: np.ndarray, deps: np.ndarray, groups: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-group pairs among `rows` (ascending), as global row numbers."""
    from hivemind.vectors.index import near_duplicate_pairs

    found = near_duplicate_pairs(matrix[rows], deps[rows].tolist(), groups[rows].tolist(), threshold)
    return rows[found["i"].to_numpy()], rows[found["j"].to_numpy()], found["cosine"].to_numpy().astype(np.float32)


def _pairs_blocks(
    matrix: np.ndarray, deps: np.ndarray, a: tuple[int, int], b: tuple[int, int], threshold: float, use_gpu: bool | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j, i in block a, j in block b, from different deployments: FAISS on block b."""
    from hivemind.vectors.index import VectorIndex

    index = VectorIndex(matrix.shape[1], use_gpu=use_gpu)
    index.add(matrix[b[0] : b[1]])
    hits = index.range_search(matrix[a[0] : a[1]], threshold)
    i, j = hits.rows + a[0], hits.ids + b[0]
    keep = (i < j) & (deps[i] != deps[j])
    return i[keep], j[keep], hits.sims[keep]


def sharded_pairs(
    vectors: np.ndarray,
    deployments: Sequence[str],
    groups: Sequence[Hashable] | None,
    threshold: float,
    use_gpu: bool | None,
    shards: int,
) -> pl.DataFrame:
    """`hivemind.vectors.index.near_duplicate_pairs(vectors, deployments, groups, threshold)` on Ray."""
    import polars as pl
    import ray

    from hivemind.vectors.index import _as_unit_matrix, _codes

    matrix = _as_unit_matrix(vectors)
    n = matrix.shape[0]
    deps = _codes(deployments, n, "deployments")
    threshold = float(np.float32(threshold))  # what the single search compares against
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if n > 1 and np.unique(deps).size > 1:
        matrix_ref, deps_ref = ray.put(matrix), ray.put(deps)
        if groups is not None:
            codes = _codes(groups, n, "groups")
            sizes = np.bincount(codes)
            bounds = shard_bounds(sizes.tolist(), shards)  # whole groups per shard
            shard_of = np.zeros(sizes.size, np.int64)
            for s, (lo, hi) in enumerate(bounds):
                shard_of[lo:hi] = s
            task = ray.remote(_pairs_within)
            codes_ref = ray.put(codes)
            parts = ray.get(
                [
                    task.remote(matrix_ref, np.flatnonzero(shard_of[codes] == s), deps_ref, codes_ref, threshold)
                    for s in range(len(bounds))
                ]
            )
        else:
            blocks = shard_bounds([1] * n, shards)
            # Ray hides GPUs from tasks that do not ask for one: a GPU search asks for one
            on_gpu = use_gpu is not False and ray.cluster_resources().get("GPU", 0) > 0
            task = ray.remote(num_gpus=1)(_pairs_blocks) if on_gpu else ray.remote(_pairs_blocks)
            parts = ray.get(
                [
                    task.remote(matrix_ref, deps_ref, blocks[x], blocks[y], threshold, use_gpu)
                    for x in range(len(blocks))
                    for y in range(x, len(blocks))
                ]
            )
    rows, cols, cosines = (np.concatenate([p[k] for p in parts]) if parts else _EMPTY[k] for k in range(3))
    order = np.lexsort((cols, rows))
    return pl.DataFrame(
        {
            "i": pl.Series("i", rows[order], dtype=pl.Int64),
            "j": pl.Series("j", cols[order], dtype=pl.Int64),
            "cosine": pl.Series("cosine", cosines[order].astype(np.float64), dtype=pl.Float64),
        }
    )
