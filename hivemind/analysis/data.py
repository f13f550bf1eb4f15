"""The responses an analysis uses, and how they are grouped.

Rules (applied once, here, so every table agrees):

* Chain-of-thought is not the answer: `<think>...</think>` blocks (and an unclosed or
  unopened block, `hivemind.verify.strip_reasoning`) are removed from `text` before anything
  is scored, so embeddings, lexical metrics and near-duplicates see the answer only.
* Only successful rows (`error` is null) with non-empty text (after removing reasoning and
  surrounding whitespace) are analysed.
* **Equal K.** For each query, every (deployment, condition) arm keeps the same number of
  responses: K_q = the smallest count among the arms that have at least two usable responses
  on that query. Arms with fewer than two are dropped from that query (an arm with one response
  has no intra-model similarity and would otherwise cut everyone down to K = 1). Within an arm
  the responses with the lowest `sample_index` are kept; sample indices are i.i.d. draws, so
  this is an unbiased, deterministic subsample.
* A missing category becomes `uncategorized`.

Row i of the prepared frame (column `row`) is row i of the vector matrix the analyses take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl

UNCATEGORIZED = "uncategorized"
MIN_ARM_SIZE = 2


def _first_seen(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def answer_text(text: str | None) -> str | None:
    """The scored part of a response: reasoning blocks removed (METRICS.md).

    Texts without a think tag come back unchanged (their embeddings stay cached); texts with
    one lose the reasoning and the whitespace around the answer. "" means nothing is left.
    """
    if text is None:
        return None
    from hivemind.verify import strip_reasoning

    answer = strip_reasoning(text)
    return text if answer == text else answer.strip()


def answer_texts(texts: pl.Series) -> pl.Series:
    """`answer_text` over a string column (only rows mentioning a think tag are touched)."""
    import polars as pl

    tagged = texts.str.contains("(?i)</?think>").fill_null(False)
    if not tagged.any():
        return texts
    values = texts.to_list()
    for i in tagged.arg_true().to_list():
        values[i] = answer_text(values[i])
    return pl.Series(texts.name, values, dtype=pl.Utf8)


def prepare_responses(
    samples: pl.DataFrame,
    *,
    deployment_order: list[str] | None = None,
    condition_order: list[str] | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(responses, k_table): the usable, K-equalised responses, and K per query.

    `samples` needs query_id, deployment, condition, sample_index, text; error, category,
    query_text, answer, family and stage are used when present. `text` comes back with
    reasoning removed (`answer_text`); a response that was all reasoning counts as empty.
    The returned frame is sorted by query (first appearance), condition, deployment (spec
    order when given) and sample_index, and carries a `row` column 0..n-1. `k_table` has one row per query: query_id, k,
    arms_kept, arms_dropped.
    """
    import polars as pl

    frame = samples
    for name, dtype in (("error", pl.Utf8), ("category", pl.Utf8), ("query_text", pl.Utf8),
                        ("answer", pl.Utf8), ("family", pl.Utf8), ("stage", pl.Utf8)):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    frame = frame.with_columns(answer_texts(frame["text"].cast(pl.Utf8)).alias("text"))
    frame = frame.filter(
        pl.col("error").is_null()
        & pl.col("text").is_not_null()
        & (pl.col("text").str.strip_chars().str.len_chars() > 0)
    ).with_columns(pl.col("category").fill_null(UNCATEGORIZED))
    queries = _first_seen(frame["query_id"].to_list())
    deployments = _first_seen((deployment_order or []) + frame["deployment"].to_list())
    conditions = _first_seen((condition_order or []) + frame["condition"].to_list())
    rank = {
        "query_id": {q: i for i, q in enumerate(queries)},
        "deployment": {d: i for i, d in enumerate(deployments)},
        "condition": {c: i for i, c in enumerate(conditions)},
    }
    frame = frame.with_columns(
        [pl.col(c).replace_strict(m, return_dtype=pl.Int64).alias(f"_{c}_rank") for c, m in rank.items()]
    ).sort(["_query_id_rank", "_condition_rank", "_deployment_rank", "sample_index"])
    arm = ["query_id", "condition", "deployment"]
    frame = frame.with_columns(pl.len().over(arm).alias("_arm_n"))
    counts = frame.group_by(arm).agg(pl.first("_arm_n").alias("n"))
    k_table = (
        counts.group_by("query_id")
        .agg(
            pl.col("n").filter(pl.col("n") >= MIN_ARM_SIZE).min().alias("k"),
            (pl.col("n") >= MIN_ARM_SIZE).sum().alias("arms_kept"),
            (pl.col("n") < MIN_ARM_SIZE).sum().alias("arms_dropped"),
        )
        .with_columns(pl.col("k").fill_null(0).cast(pl.Int64))
    )
    frame = (
        frame.join(k_table.select("query_id", "k"), on="query_id", how="left")
        .filter(pl.col("_arm_n") >= MIN_ARM_SIZE)
        .with_columns(pl.int_range(pl.len()).over(arm).alias("_pos"))
        .filter(pl.col("_pos") < pl.col("k"))
        .sort(["_query_id_rank", "_condition_rank", "_deployment_rank", "sample_index"])
        .drop([c for c in ("_arm_n", "_pos", "_query_id_rank", "_condition_rank", "_deployment_rank")])
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
    )
    order = {q: i for i, q in enumerate(queries)}
    k_table = k_table.sort(pl.col("query_id").replace_strict(order, return_dtype=pl.Int64))
    return frame, k_table


@dataclass
class Group:
    """One query under one condition: each deployment's K response rows (spec order)."""

    query_id: str
    condition: str
    category: str
    deployments: list[str]
    rows: list[np.ndarray]
    answer: str | None = None
    texts: list[list[str]] = field(default_factory=list)

    @property
    def k(self) -> int:
        """Responses per deployment (equal for all by construction)."""
        return int(self.rows[0].size) if self.rows else 0

    def all_rows(self) -> np.ndarray:
        """Every row of the group, deployment after deployment."""
        return np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)

    def labels(self) -> np.ndarray:
        """Deployment index (0..D-1) of each row of `all_rows()`."""
        return np.concatenate([np.full(r.size, i) for i, r in enumerate(self.rows)]) if self.rows else np.zeros(0, np.int64)


def build_groups(responses: pl.DataFrame) -> list[Group]:
    """Split prepared responses into (query, condition) groups, order preserved."""
    groups: dict[tuple[str, str], Group] = {}
    columns = responses.select("row", "query_id", "condition", "deployment", "category", "answer", "text")
    for row, query, condition, deployment, category, answer, text in columns.iter_rows():
        key = (query, condition)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(query, condition, category, [], [], answer, [])
        if not group.deployments or group.deployments[-1] != deployment:
            group.deployments.append(deployment)
            group.rows.append([])  # type: ignore[arg-type]
            group.texts.append([])
        group.rows[-1].append(row)  # type: ignore[attr-defined]
        group.texts[-1].append(text)
    for group in groups.values():
        group.rows = [np.asarray(r, dtype=np.int64) for r in group.rows]
    return list(groups.values())


def ordered(values: list[str], order: list[str]) -> list[str]:
    """`values` deduplicated, in `order` first, then first appearance."""
    rank = {v: i for i, v in enumerate(order)}
    unique = _first_seen(values)
    return sorted(unique, key=lambda v: (rank.get(v, len(rank)), unique.index(v)))
