"""Report sections that open numbers onto answers, each linking into the explorer.

`where_section`: the queries on which deployments converge most and differ most, with real
answers inline; `near_duplicates_by_query`: the near-duplicate pairs grouped by query;
`bin_links`: the similarity-bin heatmap as a table whose cells open the queries of that bin.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING
from urllib.parse import quote

from hivemind.report.markup import fmt, snippet

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.summary import Summary

EXPLORER = "explorer.html"
N_WHERE = 3
N_ANSWERS = 3
MAX_QUERIES = 20
PAIRS_PER_QUERY = 3


def link(**params: object) -> str:
    """A link into the explorer at a view (`q`, `pair`, `dep`, `kind`, `lo`, `hi`, `sort`...)."""
    return EXPLORER + "#" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items() if v is not None)


def _a(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _answers(responses: pl.DataFrame, query: str, condition: str | None) -> str:
    """Up to N_ANSWERS answers to a query, each from a different deployment (first sample)."""
    import polars as pl

    if responses.height == 0 or "text" not in responses.columns:
        return ""
    part = responses.filter((pl.col("query_id") == query) & (pl.col("condition") == condition))
    shown = part.sort("sample_index").unique("deployment", keep="first", maintain_order=True).head(N_ANSWERS)
    items = "".join(
        f"<li><b>{html.escape(d)}</b> #{s}: {html.escape(snippet(t))}"
        for d, s, t in shown.select("deployment", "sample_index", "text").iter_rows()
    )
    return f"<ul>{items}</ul>" if items else ""


def _query_block(row: dict[str, object], responses: pl.DataFrame, n_dup: int, condition: str | None) -> str:
    qid = str(row["query_id"])
    text = str(row.get("query_text") or "")
    return (
        '<div class="pair" style="display:block">'
        f"<div><b>{html.escape(snippet(text, 200) or qid)}</b> <span class='note'>({html.escape(qid)})</span> &mdash; "
        f"inter {fmt(row['inter'])}, intra {fmt(row['intra'])}, gap {fmt(row['gap'])}, "
        f"{n_dup} near-duplicate pair{'s' if n_dup != 1 else ''} &middot; {_a(link(q=qid), 'open in the explorer')}</div>"
        + _answers(responses, qid, condition)
        + "</div>"
    )


def where_section(summary: Summary, tables: dict[str, pl.DataFrame]) -> str:
    """Where the hivemind is: the most and least convergent queries (inter-model similarity)."""
    import polars as pl

    qsim = tables.get("query_similarity")
    condition = summary.baseline_condition
    if qsim is None or qsim.height == 0 or "inter" not in qsim.columns:
        return ""
    part = qsim.filter(
        (pl.col("condition") == condition) & pl.col("inter").is_not_null() & pl.col("inter").is_not_nan()
    )
    if part.height == 0:
        return ""
    responses = tables.get("responses", pl.DataFrame())
    texts = {}
    dups = tables.get("near_duplicates", pl.DataFrame())
    counts: dict[str, int] = {}
    if dups.height:
        counts = dict(dups.filter(pl.col("condition") == condition).group_by("query_id").len().iter_rows())
        texts = dict(dups.select("query_id", "query_text").unique("query_id").iter_rows())
    if responses.height and "query_text" in responses.columns:
        texts.update(dict(responses.select("query_id", "query_text").unique("query_id").iter_rows()))
    part = part.with_columns(
        pl.col("query_id").replace_strict(texts, default=None, return_dtype=pl.Utf8).alias("query_text")
    )
    top = part.sort("inter", descending=True).head(N_WHERE)
    bottom = part.sort("inter").head(N_WHERE)
    by_dups = sorted(counts.items(), key=lambda kv: -kv[1])[:N_WHERE]
    dup_line = (
        '<p class="note">Most cross-deployment near-duplicate pairs (cosine &ge; '
        f"{fmt(summary.near_duplicate_threshold)}): "
        + ", ".join(f"{_a(link(q=q, view='pairs'), q)} ({n})" for q, n in by_dups)
        + ".</p>"
        if by_dups
        else ""
    )
    return (
        f"<h2>Where the hivemind is (condition {html.escape(str(condition))})</h2>"
        f'<p class="note">The queries on which different deployments answer most alike (highest inter-model '
        f"similarity) and least alike, with the first answer of each deployment. Every query, with all its "
        f"answers, their classes and a map, is in the {_a(EXPLORER, 'explorer')}.</p>"
        "<h3>Converge most</h3>"
        + "".join(
            _query_block(r, responses, counts.get(str(r["query_id"]), 0), condition) for r in top.iter_rows(named=True)
        )
        + dup_line
        + "<h3>Differ most</h3>"
        + "".join(
            _query_block(r, responses, counts.get(str(r["query_id"]), 0), condition)
            for r in bottom.iter_rows(named=True)
        )
    )


def _pair_row(qid: str, condition: str, p: dict[str, object]) -> str:
    href = link(q=qid, cond=condition, pair=f"{p['i']}-{p['j']}")
    return (
        f"<tr><td>{_a(href, format(float(p['cosine']), '.3f'))}</td>"  # type: ignore[arg-type]
        f'<td class="t"><b>{html.escape(str(p["deployment_a"]))}</b> #{p["sample_index_a"]}: '
        f"{html.escape(snippet(str(p['text_a'] or ''), 160))}</td>"
        f'<td class="t"><b>{html.escape(str(p["deployment_b"]))}</b> #{p["sample_index_b"]}: '
        f"{html.escape(snippet(str(p['text_b'] or ''), 160))}</td></tr>"
    )


def near_duplicates_by_query(frame: pl.DataFrame | None, total: int) -> str:
    """Cross-deployment near-duplicate pairs grouped by query: count, the top pairs, a link."""
    if frame is None or frame.height == 0:
        return '<p class="note">No pair of responses from different deployments reached the threshold.</p>'
    import polars as pl

    counts = frame.group_by("query_id", "condition", maintain_order=True).agg(
        pl.len().alias("n"), pl.col("cosine").max().alias("top"), pl.first("query_text"), pl.first("category")
    )
    counts = counts.sort(["n", "top"], descending=True)
    parts = [
        f'<p class="note">{total} pairs in all, on {counts.height} (query, condition)s; the '
        f"{min(MAX_QUERIES, counts.height)} with most pairs, each with its {PAIRS_PER_QUERY} most similar "
        f"(every pair is in the explorer and in near_duplicates.parquet):</p>"
    ]
    for row in counts.head(MAX_QUERIES).iter_rows(named=True):
        qid, condition = str(row["query_id"]), str(row["condition"])
        pairs = frame.filter((pl.col("query_id") == qid) & (pl.col("condition") == condition)).head(PAIRS_PER_QUERY)
        cards = "".join(_pair_row(qid, condition, p) for p in pairs.iter_rows(named=True))
        parts.append(
            '<div class="pair" style="display:block">'
            f"<div><b>{html.escape(snippet(str(row['query_text'] or ''), 200))}</b> "
            f"<span class='note'>({html.escape(qid)}, {html.escape(str(row['category']))}, {html.escape(condition)})"
            f"</span> &mdash; <b>{row['n']}</b> pair{'s' if row['n'] != 1 else ''} &middot; "
            f"{_a(link(q=qid, cond=condition, view='pairs'), 'all in the explorer')}</div>"
            f"<table><thead><tr><th>cosine</th><th>a</th><th>b</th></tr></thead><tbody>{cards}</tbody></table></div>"
        )
    return "".join(parts)


def bin_links(bins: pl.DataFrame, condition: str | None) -> str:
    """The heatmap's numbers as a table: share of queries per bin, each cell opening its queries."""
    import polars as pl

    if bins.height == 0:
        return ""
    part = bins.filter(pl.col("condition") == condition)
    if part.height == 0:
        return ""
    edges = part.select("bin", "bin_lo", "bin_hi").unique("bin").sort("bin").rows()
    head = "".join(f"<th>{lo:.1f}-{hi:.1f}</th>" for _, lo, hi in edges)
    body = []
    for (deployment, kind), rows in part.group_by("deployment", "kind", maintain_order=True):
        share = {b: (s, n) for b, s, n in rows.select("bin", "share", "n_queries").iter_rows()}
        cells = []
        for b, lo, hi in edges:
            s, n = share.get(b, (0.0, 0))
            count = round((s or 0) * (n or 0))
            cells.append(
                f"<td>{_a(link(dep=deployment, kind=kind, lo=f'{lo:g}', hi=f'{hi:g}', cond=condition), str(count))}</td>"
                if count
                else "<td class='note'>0</td>"
            )
        body.append(
            f'<tr><td class="t">{html.escape(str(deployment))} ({html.escape(str(kind))})</td>{"".join(cells)}</tr>'
        )
    return (
        "<details><summary>Queries per similarity bin (each count opens those queries in the explorer)</summary>"
        f"<table><thead><tr><th>deployment</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></details>"
    )
