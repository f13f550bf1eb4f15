"""Near-duplicate responses: pairs at cosine >= a threshold, within a query and across the corpus
(through the executor's pair search or an approximate FAISS index), as response rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hivemind.metrics import semantic
from hivemind.metrics.semantic import normalize_rows

if TYPE_CHECKING:
    import polars as pl

    from hivemind.executors import Executor


def _embedded(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit float32 rows of the vectors that have a direction, their row numbers)."""
    units, kept = [np.zeros((0, vectors.shape[1]), np.float32)], [np.zeros(0, np.int64)]
    block = semantic.NORMALISE_BLOCK_ROWS  # a block at a time: no float64 copy of the corpus
    for start in range(0, vectors.shape[0], block):
        X = normalize_rows(vectors[start : start + block])
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0.5)  # zero vectors have no direction
        units.append(X[keep].astype(np.float32))
        kept.append(keep + start)
    return np.ascontiguousarray(np.concatenate(units)), np.concatenate(kept)


def _found_pairs(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    threshold: float,
    groups: list[str] | None,
    use_gpu: bool | None,
    executor: Executor | None = None,
    index: str = "exact",
) -> pl.DataFrame:
    """`hivemind.vectors.index.near_duplicate_pairs` on the responses, i and j as response rows
    (through `executor.pair_search`, e.g. sharded on Ray: the same pairs; an approximate
    `index` runs in this process)."""
    import polars as pl

    from hivemind.executors import Executor
    from hivemind.vectors.index import near_duplicate_pairs

    X, keep = _embedded(vectors)
    deployments = responses["deployment"].to_list()
    kept_deployments = [deployments[int(i)] for i in keep]
    kept_groups = None if groups is None else [groups[int(i)] for i in keep]
    if index != "exact":
        found = near_duplicate_pairs(X, kept_deployments, kept_groups, threshold, use_gpu=use_gpu, index=index)
    else:
        found = (executor or Executor()).pair_search(X, kept_deployments, kept_groups, threshold, use_gpu=use_gpu)
    back = dict(enumerate(keep.tolist()))
    return found.with_columns(
        pl.col("i").replace_strict(back, return_dtype=pl.Int64), pl.col("j").replace_strict(back, return_dtype=pl.Int64)
    )


def near_duplicates(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    threshold: float,
    max_rows: int | None = None,
    use_gpu: bool | None = None,
    executor: Executor | None = None,
) -> tuple[pl.DataFrame, int]:
    """Cross-deployment pairs within one query and condition with cosine >= threshold.

    Found by `hivemind.vectors.index.near_duplicate_pairs`; returns every pair (or the `max_rows` most
    similar), most similar first, with both texts side by side, and the total count. The REST
    service pages through this table, so by default nothing is cut.
    """
    import polars as pl

    groups = [f"{q}\x00{c}" for q, c in zip(responses["query_id"].to_list(), responses["condition"].to_list())]
    found = _found_pairs(responses, vectors, threshold, groups, use_gpu, executor)
    total = found.height
    found = found.sort(["cosine", "i", "j"], descending=[True, False, False])
    if max_rows is not None:
        found = found.head(max_rows)
    side = responses.select(
        "row", "query_id", "category", "query_text", "condition", "deployment", "sample_index", "text"
    )
    a = side.rename({c: f"{c}_a" for c in ("deployment", "sample_index", "text")})
    b = side.select("row", *[pl.col(c).alias(f"{c}_b") for c in ("deployment", "sample_index", "text")])
    out = (
        found.join(a, left_on="i", right_on="row", how="left")
        .join(b, left_on="j", right_on="row", how="left")
        .select(
            "query_id",
            "category",
            "query_text",
            "condition",
            "deployment_a",
            "sample_index_a",
            "deployment_b",
            "sample_index_b",
            "cosine",
            "text_a",
            "text_b",
            "i",
            "j",
        )
    )
    return out, total


def corpus_near_duplicates(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    threshold: float,
    max_rows: int = 2000,
    use_gpu: bool | None = None,
    executor: Executor | None = None,
    index: str = "exact",
) -> tuple[pl.DataFrame, int, int]:
    """Cross-deployment pairs with cosine >= threshold anywhere in the corpus.

    The whole corpus (every query and condition) is searched at once with the FAISS
    `VectorIndex` (`near_duplicate_pairs` without groups; on GPU when `use_gpu` allows), or
    with an approximate IVF index when `index` is "ivf" (faster, may miss pairs).
    Pairs whose responses answer *different* queries - one model's answer recurring word
    for word under another model on another prompt - are what the within-query table cannot
    show, so they come first (`same_query` false), then pairs within one query; each part
    sorted by cosine, most similar first, and the whole capped at `max_rows`. Returns
    (table, total pairs, pairs across different queries). Columns: same_query, cosine, then
    query_id, condition, deployment, sample_index and text of each side (_a, _b), the query
    texts, and the response rows i, j.
    """
    import polars as pl

    found = _found_pairs(responses, vectors, threshold, None, use_gpu, executor, index)
    side = responses.select("row", "query_id", "query_text", "condition", "deployment", "sample_index", "text")
    names = [c for c in side.columns if c != "row"]
    a = side.select("row", *[pl.col(c).alias(f"{c}_a") for c in names])
    b = side.select("row", *[pl.col(c).alias(f"{c}_b") for c in names])
    out = (
        found.join(a, left_on="i", right_on="row", how="left")
        .join(b, left_on="j", right_on="row", how="left")
        .with_columns((pl.col("query_id_a") == pl.col("query_id_b")).alias("same_query"))
    )
    total = out.height
    cross = int((~out["same_query"]).sum()) if total else 0
    out = out.sort(["same_query", "cosine", "i", "j"], descending=[False, True, False, False]).head(max_rows)
    return (
        out.select(
            "same_query",
            "cosine",
            "query_id_a",
            "condition_a",
            "deployment_a",
            "sample_index_a",
            "query_id_b",
            "condition_b",
            "deployment_b",
            "sample_index_b",
            "text_a",
            "text_b",
            "query_text_a",
            "query_text_b",
            "i",
            "j",
        ),
        total,
        cross,
    )
