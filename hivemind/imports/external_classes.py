"""Equivalence classes from elsewhere (NoveltyBench `partition`) beside hivemind's own.

NoveltyBench groups each model's answers to a prompt into classes with a trained judge;
hivemind groups them by a cosine threshold on embeddings. When an imported file carried its
classes, the analysis shows both class counts and semantic entropies per (query, deployment)
and how far the two partitions agree (adjusted Rand index: 1 = identical, ~0 = chance).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import comb

from hivemind.metrics.classes import cosine_equivalence, equivalence_classes, semantic_entropy

if TYPE_CHECKING:
    import polars as pl

    from hivemind.store.journal import Store

TABLE = "external_classes"


def adjusted_rand_index(labels_a: list[Any], labels_b: list[Any]) -> float:
    """Hubert-Arabie adjusted Rand index of two labelings of the same items.

    1 when both partitions are equal (also when each is a single class or all singletons),
    0 in expectation for independent ones; `nan` for fewer than two items.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"{len(labels_a)} labels against {len(labels_b)}")
    n = len(labels_a)
    if n < 2:
        return float("nan")
    _, a = np.unique(np.asarray(labels_a, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(labels_b, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    index = comb(table, 2).sum()
    rows, cols = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum()
    expected = rows * cols / comb(n, 2)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial in the same way: they agree
        return 1.0
    return float((index - expected) / (maximum - expected))


def external_classes_table(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    labels: dict[tuple[str, str, str, int], str],
    threshold: float = 0.9,
) -> pl.DataFrame:
    """Per (condition, deployment, query) whose responses all carry an imported class: both
    partitions' class counts and semantic entropies, and their adjusted Rand index."""
    import polars as pl

    schema = {
        "query_id": pl.Utf8,
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "k": pl.Int64,
        "external_classes": pl.Int64,
        "external_entropy": pl.Float64,
        "hivemind_classes": pl.Int64,
        "hivemind_entropy": pl.Float64,
        "ari": pl.Float64,
    }
    records: list[dict[str, Any]] = []
    if labels:
        keyed = responses.select("row", "query_id", "deployment", "condition", "sample_index")
        groups = keyed.group_by(["query_id", "condition", "deployment"], maintain_order=True).agg(
            pl.col("row"), pl.col("sample_index")
        )
        for query_id, condition, deployment, rows, indices in groups.iter_rows():
            external = [labels.get((query_id, deployment, condition, int(i))) for i in indices]
            if any(label is None for label in external):
                continue
            ours = equivalence_classes(len(rows), cosine_equivalence(vectors[rows], threshold))
            records.append(
                {
                    "query_id": query_id,
                    "condition": condition,
                    "deployment": deployment,
                    "k": len(rows),
                    "external_classes": len(set(external)),
                    "external_entropy": semantic_entropy(external),
                    "hivemind_classes": max(ours) + 1,
                    "hivemind_entropy": semantic_entropy(ours),
                    "ari": adjusted_rand_index(external, ours),
                }
            )
    return pl.DataFrame(records, schema=schema, orient="row").with_columns(pl.col("ari").fill_nan(None))


def external_classes_summary(table: pl.DataFrame) -> list[dict[str, Any]]:
    """Means per (condition, deployment) of `external_classes_table`."""
    import polars as pl

    if table.height == 0:
        return []
    means = table.group_by(["condition", "deployment"], maintain_order=True).agg(
        pl.len().alias("queries"),
        pl.col("k").mean().alias("k"),
        *[
            pl.col(c).mean()
            for c in ("external_classes", "external_entropy", "hivemind_classes", "hivemind_entropy", "ari")
        ],
    )
    return means.to_dicts()


def add_external_classes(
    store: Store | str | Path,
    study: str,
    responses: pl.DataFrame,
    vectors: np.ndarray,
    threshold: float,
    tables: dict[str, pl.DataFrame],
    summary: dict[str, Any],
) -> None:
    """Add the `external_classes` table and summary entry when the study imported classes.

    `store` is an open `Store` (the pipeline's handle) or a store directory."""
    from hivemind.imports.importer import imported_classes
    from hivemind.store.journal import Store

    if isinstance(store, Store):
        labels = imported_classes(store, study)
    else:
        with Store(store) as opened:
            labels = imported_classes(opened, study)
    if not labels:
        return
    table = external_classes_table(responses, vectors, labels, threshold)
    tables[TABLE] = table
    summary[TABLE] = {"threshold": threshold, "per_deployment": external_classes_summary(table)}
