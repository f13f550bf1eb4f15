"""Lexical diversity beside semantic diversity, per (query, condition, deployment).

Each row scores one deployment's K responses to one query: distinct-1/2/3, EAD (n = 1..5,
V = 50257 fixed), self-BLEU (sacrebleu), homogenization (ROUGE-L), compression ratio (xz, one
correct compression; see METRICS.md on the `diversity` package's double-gzip), mean length in
tokens (every lexical metric depends on it), and beside them the semantic numbers: embedding
diversity (1 - intra cosine), Vendi score and NoveltyBench-style equivalence classes at the
cosine threshold with their discrete semantic entropy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.data import Group
from hivemind.metrics.classes import semantic_entropy, threshold_classes
from hivemind.metrics.lexical import lexical_metrics
from hivemind.metrics.semantic import cosine_matrix, embedding_diversity, vendi_score
from hivemind.metrics.stats import bootstrap_ci
from hivemind.parallel import ordered_map

if TYPE_CHECKING:
    import polars as pl

LEXICAL_COLUMNS = [
    "distinct_1",
    "distinct_2",
    "distinct_3",
    "ead",
    "self_bleu",
    "homogenization_rougel",
    "compression_ratio",
    "mean_length",
]
SEMANTIC_COLUMNS = ["embedding_diversity", "vendi", "n_classes", "semantic_entropy"]


def diversity_table(
    groups: list[Group], vectors: np.ndarray, class_threshold: float = 0.9, lexical: bool = True
) -> pl.DataFrame:
    """One row per (query, condition, deployment) with lexical and semantic diversity.

    Columns: query_id, category, condition, deployment, k, then LEXICAL_COLUMNS (null when
    `lexical` is False) and SEMANTIC_COLUMNS.
    """
    import polars as pl

    def scored(task: tuple[Group, str, np.ndarray, list[str]]) -> dict[str, Any]:
        g, deployment, rows, texts = task
        X = vectors[rows]
        labels = threshold_classes(cosine_matrix(X) >= class_threshold)
        record: dict[str, Any] = {
            "query_id": g.query_id,
            "category": g.category,
            "condition": g.condition,
            "deployment": deployment,
            "k": int(rows.size),
            "embedding_diversity": embedding_diversity(X) if rows.size >= 2 else None,
            "vendi": vendi_score(X),
            "n_classes": float(max(labels) + 1),
            "semantic_entropy": semantic_entropy(labels),
        }
        if lexical:
            record.update(lexical_metrics(texts))
        return record

    tasks = ((g, *cell) for g in groups for cell in zip(g.deployments, g.rows, g.texts))
    # threads: the compiled ROUGE-L loop, xz and numpy release the GIL (the rest holds it)
    records = list(ordered_map(scored, tasks))
    schema: dict[str, Any] = {
        "query_id": pl.Utf8,
        "category": pl.Utf8,
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "k": pl.Int64,
    }
    schema.update({c: pl.Float64 for c in LEXICAL_COLUMNS + SEMANTIC_COLUMNS})
    frame = pl.DataFrame([{c: r.get(c) for c in schema} for r in records], schema=schema)
    # NaN (undefined metric) and null mean the same here: no value
    return frame.with_columns([pl.col(c).fill_nan(None) for c in LEXICAL_COLUMNS + SEMANTIC_COLUMNS])


def diversity_summary(table: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (condition, deployment, metric): mean over queries with a 95% bootstrap CI.

    Columns: condition, deployment, metric, kind ('lexical'|'semantic'), mean, ci_lo, ci_hi,
    n_queries.
    """
    import polars as pl

    records = []
    for (condition, deployment), part in table.group_by(["condition", "deployment"], maintain_order=True):
        for metric in LEXICAL_COLUMNS + SEMANTIC_COLUMNS:
            values = part[metric].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            if np.all(np.isnan(values)):
                continue
            est, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            kind = "lexical" if metric in LEXICAL_COLUMNS else "semantic"
            records.append((condition, deployment, metric, kind, est, lo, hi, int(np.sum(~np.isnan(values)))))
    schema = {
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "metric": pl.Utf8,
        "kind": pl.Utf8,
        "mean": pl.Float64,
        "ci_lo": pl.Float64,
        "ci_hi": pl.Float64,
        "n_queries": pl.Int64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")
