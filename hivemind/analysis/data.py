"""The responses an analysis uses, and how they are grouped.

Rules (applied once, here, so every table agrees):

* Chain-of-thought is not the answer: `<think>...</think>` blocks (and an unclosed or
  unopened block, `hivemind.analysis.verify.strip_reasoning`) are removed from `text` before anything
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
* **Truncation.** A response cut off by `max_tokens` (finish reason `length`) is counted
  (`truncation_table`); with `complete_only` it is left out before K is equalised.

Row i of the prepared frame (column `row`) is row i of the vector matrix the analyses take.
"""

from __future__ import annotations

from collections.abc import Collection
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
    from hivemind.analysis.verify import strip_reasoning

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
    complete_only: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(responses, k_table): the usable, K-equalised responses, and K per query.

    `samples` needs query_id, deployment, condition, sample_index, text; error, category,
    query_text, answer, family and stage are used when present. `text` comes back with
    reasoning removed (`answer_text`); a response that was all reasoning counts as empty.
    The returned frame is sorted by query (first appearance), condition, deployment (spec
    order when given) and sample_index, and carries a `row` column 0..n-1. `k_table` has one row per query: query_id, k,
    arms_kept, arms_dropped. `complete_only` drops truncated responses (finish reason
    `length`) first, so K is equalised over complete ones.
    """
    import polars as pl

    frame = samples
    for name, dtype in (
        ("error", pl.Utf8),
        ("category", pl.Utf8),
        ("query_text", pl.Utf8),
        ("answer", pl.Utf8),
        ("family", pl.Utf8),
        ("stage", pl.Utf8),
        ("finish_reason", pl.Utf8),
    ):
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=dtype).alias(name))
    frame = frame.with_columns(answer_texts(frame["text"].cast(pl.Utf8)).alias("text"))
    frame = frame.filter(
        pl.col("error").is_null()
        & pl.col("text").is_not_null()
        & (pl.col("text").str.strip_chars().str.len_chars() > 0)
    ).with_columns(pl.col("category").fill_null(UNCATEGORIZED))
    if complete_only:
        frame = frame.filter(~truncated_rows())
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
        return (
            np.concatenate([np.full(r.size, i) for i, r in enumerate(self.rows)])
            if self.rows
            else np.zeros(0, np.int64)
        )


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


FOOTING_RULE = (
    "Equal footing: a figure that compares deployments (Vendi, equivalence classes, semantic entropy, "
    "lexical metrics, the deployment matrix, similarity bins, nearest-neighbour counts, lineages) is "
    "computed only over the queries "
    "where every deployment of the condition is present with the same K; the headline intra, inter, gap, "
    "hivemind gap, k* and the ensemble curves stand on the same complete queries (so gap = intra - inter "
    "exactly, and no query with fewer deployments moves k* or a mixed arm); an ensemble curve uses one "
    "query set on which every plotted k is possible for both arms."
)


def complete_queries(
    frame: pl.DataFrame, under_test: Collection[str] | None = None, arm: str = "deployment"
) -> pl.DataFrame:
    """The (condition, query_id) keys every deployment under test answered, all at one K.

    `under_test`: the deployments the headline compares (None: every one the frame has; a
    reference arm is left out by leaving it out of this set). A condition's deployments under
    test are those of `under_test` it has anywhere; a query counts when each of them is
    there and, where `frame` has `k`, all with the same K. The headline intra, inter, gap,
    hivemind gap and k* stand on these queries: a query that lacks a deployment averages
    fewer deployments' similarities (a different quantity), and its "mixed" ensemble arm
    draws from fewer deployments, so mixing it in biases the headline.
    """
    import polars as pl

    if under_test is not None:
        frame = frame.filter(pl.col(arm).is_in(list(under_test)))
    return footing_queries(frame, arm)


def footing_queries(frame: pl.DataFrame, arm: str = "deployment") -> pl.DataFrame:
    """The (condition, query_id) keys on which every arm of the condition is present at one K.

    `frame` has condition, query_id, `arm` and optionally k (one or more rows per arm and
    query). The arms of a condition are all those it has anywhere; a query counts only when
    each of them is there and, where `k` is given, all with the same K. This is the one place
    the equal-footing rule (METRICS.md, `FOOTING_RULE`) picks queries: Vendi grows with K and
    query sets differ in difficulty, so an average over another set or another K is not
    comparable.
    """
    import polars as pl

    keys = ["condition", "query_id"]
    arms = frame.group_by("condition").agg(pl.col(arm).n_unique().alias("_arms"))
    same_k = pl.col("k").n_unique() if "k" in frame.columns else pl.lit(1, dtype=pl.UInt32)
    per_query = frame.group_by(keys, maintain_order=True).agg(
        pl.col(arm).n_unique().alias("_present"), same_k.alias("_ks")
    )
    return (
        per_query.join(arms, on="condition", how="left")
        .filter((pl.col("_present") == pl.col("_arms")) & (pl.col("_ks") == 1))
        .select(keys)
    )


def on_footing(frame: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame` whose (condition, query_id) is in `keys` (order kept)."""
    return frame.join(keys, on=["condition", "query_id"], how="semi", maintain_order="left")


def common_footing(frame: pl.DataFrame, arm: str = "deployment") -> pl.DataFrame:
    """`frame` restricted to its own `footing_queries`."""
    return on_footing(frame, footing_queries(frame, arm))


TRUNCATED = "length"
TRUNCATION_WARNING_SHARE = 0.10
"""Above this share of truncated responses a deployment gets a warning in the summary."""


def truncated_rows() -> pl.Expr:
    """True for a response cut off by `max_tokens` (finish reason `length`)."""
    import polars as pl

    return pl.col("finish_reason").fill_null("").str.to_lowercase() == TRUNCATED


def truncation_table(samples: pl.DataFrame, deployment_order: list[str] | None = None) -> pl.DataFrame:
    """Per deployment: successful responses, how many were truncated, and the share.

    Responses cut at `max_tokens` share their openings and look alike, so a high share
    raises similarity by itself. Columns: deployment, n_responses, n_truncated,
    share_truncated (null without a response), warning (share > TRUNCATION_WARNING_SHARE).
    """
    import polars as pl

    frame = (
        samples
        if "finish_reason" in samples.columns
        else samples.with_columns(pl.lit(None, dtype=pl.Utf8).alias("finish_reason"))
    )
    if "error" in frame.columns:
        frame = frame.filter(pl.col("error").is_null())
    out = frame.group_by("deployment", maintain_order=True).agg(
        pl.len().cast(pl.Int64).alias("n_responses"), truncated_rows().sum().cast(pl.Int64).alias("n_truncated")
    )
    out = out.with_columns((pl.col("n_truncated") / pl.col("n_responses")).alias("share_truncated"))
    out = out.with_columns((pl.col("share_truncated") > TRUNCATION_WARNING_SHARE).alias("warning"))
    order = ordered(out["deployment"].to_list(), deployment_order or [])
    return out.sort(pl.col("deployment").replace_strict({d: i for i, d in enumerate(order)}, return_dtype=pl.Int64))


def truncation_summary(table: pl.DataFrame, complete_only: bool) -> tuple[dict[str, object], list[str]]:
    """(summary entry, warnings) from a `truncation_table`."""
    per = {
        d: {"n_responses": n, "n_truncated": t, "share_truncated": share}
        for d, n, t, share in table.select("deployment", "n_responses", "n_truncated", "share_truncated").iter_rows()
    }
    analysed = (
        "complete responses only: truncated ones were left out"
        if complete_only
        else "all responses, truncated ones included"
    )
    advice = (
        "they were left out of this analysis (complete responses only)"
        if complete_only
        else "truncated responses share their openings and raise similarity: raise max_tokens, or analyse "
        "complete responses only (--complete-only)"
    )
    warnings = [
        f"{d}: {100 * v['share_truncated']:.0f}% of responses were cut off at max_tokens (finish reason "
        f"'length'); {advice}."
        for d, v in per.items()
        if v["share_truncated"] is not None and v["share_truncated"] > TRUNCATION_WARNING_SHARE
    ]
    return {
        "per_deployment": per,
        "complete_only": complete_only,
        "analysed": analysed,
        "warning_share": TRUNCATION_WARNING_SHARE,
    }, warnings
