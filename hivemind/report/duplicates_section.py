"""The report's near-duplicate part: near-identical answers of different deployments, within a
query (with both texts) and across queries (from the corpus-wide search)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from hivemind.report.markup import snippet, table
from hivemind.report.where import near_duplicates_by_query

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.summary import Summary
    from hivemind.report.tables import Tables

MAX_NEAR_DUPLICATES = 25
MAX_CROSS_QUERY_DUPLICATES = 15


def near_duplicates_section(summary: Summary, tables: Tables) -> str:
    """Near-identical answers of different deployments: within a query, then across queries."""
    h = summary.headline
    return (
        "<h2>Near-duplicate pairs across deployments</h2>"
        + near_duplicates_by_query(tables.get("near_duplicates"), h.near_duplicate_pairs)
        + "<h3>Across different queries</h3>"
        + cross_query_duplicates(
            tables["near_duplicates_corpus"],
            h.near_duplicate_pairs_cross_query or 0,
            summary.near_duplicate_corpus_index,
        )
    )


def near_duplicate_pairs(frame: pl.DataFrame | None, total: int, limit: int = MAX_NEAR_DUPLICATES) -> str:
    """The most similar cross-deployment pairs, both texts side by side."""
    if frame is None or frame.height == 0:
        return '<p class="note">No pair of responses from different deployments reached the threshold.</p>'
    parts = [f'<p class="note">{total} pairs in all; the {min(limit, frame.height)} most similar:</p>']
    for row in frame.head(limit).iter_rows(named=True):
        parts.append(
            '<div class="pair">'
            f'<div class="q">query <b>{html.escape(str(row["query_id"]))}</b> ({html.escape(str(row["category"]))}, '
            f"{html.escape(str(row['condition']))}): {html.escape(str(row.get('query_text') or ''))} "
            f"&mdash; cosine <b>{row['cosine']:.3f}</b></div>"
            f"<div><b>{html.escape(row['deployment_a'])}</b> #{row['sample_index_a']}<pre>{html.escape(row['text_a'] or '')}</pre></div>"
            f"<div><b>{html.escape(row['deployment_b'])}</b> #{row['sample_index_b']}<pre>{html.escape(row['text_b'] or '')}</pre></div>"
            "</div>"
        )
    return "".join(parts)


def cross_query_duplicates(
    frame: pl.DataFrame | None, total: int, index: str = "exact", limit: int = MAX_CROSS_QUERY_DUPLICATES
) -> str:
    """Near-duplicate pairs from the corpus-wide search whose responses answer different
    queries (the within-query pairs are shown above): a small table, texts shortened."""
    import polars as pl

    searched = "approximate IVF search: it may miss pairs" if index == "ivf" else "exact search"
    none = (
        '<p class="note">No pair of responses to different queries from different deployments '
        f"reached the threshold (whole corpus, FAISS {searched}).</p>"
    )
    if frame is None or frame.height == 0 or "same_query" not in frame.columns:
        return none
    cross = frame.filter(~pl.col("same_query"))
    if cross.height == 0:
        return none
    top = cross.head(limit)
    shown = top.select(
        "cosine",
        pl.col("deployment_a").alias("deployment a"),
        pl.col("query_id_a").alias("query a"),
        pl.Series("text a", [snippet(t) for t in top["text_a"].to_list()], dtype=pl.Utf8),
        pl.col("deployment_b").alias("deployment b"),
        pl.col("query_id_b").alias("query b"),
        pl.Series("text b", [snippet(t) for t in top["text_b"].to_list()], dtype=pl.Utf8),
    )
    note = (
        f'<p class="note">{total} pairs of responses to different queries in all (whole corpus, FAISS '
        f"{searched}); "
        f"the {shown.height} most similar (full texts in near_duplicates_corpus.parquet):</p>"
    )
    return note + table(shown, max_rows=limit)
