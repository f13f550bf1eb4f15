"""One self-contained HTML report of an analysed study.

Everything is inline: CSS in a <style> block, figures as base64 PNG data URIs, tables as HTML.
No script, no font or stylesheet from a CDN: the file opens offline and prints as it shows.
`render_report(summary, tables)` is pure; `hivemind.pipeline.write_report` writes the file.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind import report_figures as figures

if TYPE_CHECKING:
    import polars as pl

MAX_TABLE_ROWS = 200
MAX_NEAR_DUPLICATES = 25
MAX_CROSS_QUERY_DUPLICATES = 15
SNIPPET_CHARS = 240

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:20px 28px;color:#222;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
.sub{color:#666;margin-top:4px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:190px;flex:1;background:#fafafa}
.card .v{font-size:1.6em;font-weight:600}.card .l{color:#555;font-size:.85em}.card .ci{color:#777;font-size:.8em}
table{border-collapse:collapse;font-size:.8em;margin:10px 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f0f0f0}td.t{text-align:left}img{max-width:100%;height:auto;display:block;margin:10px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;border:1px solid #ddd;border-radius:6px;
padding:8px;margin:10px 0}.pair .q{grid-column:1/3;color:#555;font-size:.85em}
.pair pre,pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f6f6;padding:8px;margin:0;font-size:.85em}
.note{color:#555;font-size:.9em}details{margin:8px 0}
.warn{border:1px solid #e0a800;background:#fff8e1;border-radius:6px;padding:8px 14px;margin:12px 0}
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(_fmt(value))


def table(frame: pl.DataFrame | None, columns: Sequence[str] | None = None, max_rows: int = MAX_TABLE_ROWS) -> str:
    """An HTML table of (the first `max_rows` rows of) a frame; text columns left-aligned."""
    if frame is None or frame.height == 0:
        return '<p class="note">No rows.</p>'
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in frame.head(max_rows).select(columns).iter_rows():
        cells = "".join(
            f'<td class="t">{_esc(v)}</td>' if isinstance(v, str) else f"<td>{_esc(v)}</td>" for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    more = f'<p class="note">Showing {max_rows} of {frame.height} rows (all rows are in the Parquet file).</p>' if frame.height > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _img(uri: str | None, alt: str) -> str:
    if not uri:
        return ""
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _ci(entry: dict[str, Any] | None, digits: int = 3) -> tuple[str, str]:
    entry = entry or {}
    value = _fmt(entry.get("estimate"), digits)
    lo, hi = entry.get("lo"), entry.get("hi")
    interval = f"95% CI [{_fmt(lo, digits)}, {_fmt(hi, digits)}]" if lo is not None and hi is not None else ""
    return value, interval


def _card(label: str, value: str, detail: str = "") -> str:
    return (f'<div class="card"><div class="l">{html.escape(label)}</div><div class="v">{html.escape(value)}</div>'
            f'<div class="ci">{html.escape(detail)}</div></div>')


def headline(summary: dict[str, Any]) -> str:
    """The cards at the top: similarity, gap, baseline, hivemind gap, neighbours, duplicates."""
    h = summary.get("headline", {})
    cards = []
    value, ci = _ci(h.get("intra_similarity"))
    cards.append(_card("intra-model similarity", value, ci))
    value, ci = _ci(h.get("inter_similarity"))
    cards.append(_card("inter-model similarity", value, ci))
    gap = h.get("gap") or {}
    value, ci = _ci(gap)
    p = gap.get("p_permutation")
    cards.append(_card("gap = intra - inter", value, f"{ci}; permutation p = {_fmt(p, 4)}" if p is not None else ci))
    value, ci = _ci(h.get("random_baseline"))
    cards.append(_card("random-pair baseline (different queries)", value, ci))
    hg = h.get("hivemind_gap") or {}
    value, ci = _ci(hg)
    detail = (f"{ci}; k* = {hg.get('k_star')}" if hg.get("estimate") is not None
              else "not computable: needs two deployments, two queries and a positive promise")
    cards.append(_card("hivemind gap: share of promised ensemble diversity delivered", value, detail))
    ens = h.get("ensemble_at_k_star") or {}
    if ens.get("diff") is not None:
        cards.append(_card(
            f"extra diversity of {hg.get('k_star')} different deployments vs one",
            f"{ens['diff']:+.3f}",
            f"mean pairwise distance {_fmt(ens.get('single'))} -> {_fmt(ens.get('mixed'))}; "
            f"95% CI [{_fmt(ens.get('diff_lo'))}, {_fmt(ens.get('diff_hi'))}]; p = {_fmt(ens.get('p_value'), 4)}",
        ))
    above = h.get("share_queries_intra_above_0.8") or {}
    if above:
        mean = sum(v for v in above.values() if v is not None) / max(1, len(above))
        cards.append(_card("queries with intra similarity > 0.8", f"{100 * mean:.0f}%",
                           "mean over deployments"))
    nn = h.get("nn_distinct_deployments") or {}
    if nn.get("estimate") is not None:
        cards.append(_card(f"distinct deployments among {nn.get('j')} nearest", _fmt(nn["estimate"], 2),
                           f"of {nn.get('of')}"))
    cards.append(_card("near-duplicate cross-deployment pairs", str(h.get("near_duplicate_pairs", 0)),
                       f"cosine >= {summary.get('near_duplicate_threshold')}"))
    return f'<div class="cards">{"".join(cards)}</div>'


def warnings_block(summary: dict[str, Any]) -> str:
    """The summary's warnings (e.g. truncated responses), shown above the headline numbers."""
    warnings = summary.get("warnings") or []
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(str(w))}</li>" for w in warnings)
    return f'<div class="warn"><b>Warning</b><ul>{items}</ul></div>'


def footing_note(summary: dict[str, Any], condition: str | None) -> str:
    """The sentence under the headline that says which queries the numbers compare."""
    f = (summary.get("footing") or {}).get(condition) or {}
    counts = ""
    if f:
        counts = (f" Here: intra, inter and gap over {f.get('queries_headline')} of {f.get('queries_analysed')} "
                  f"queries; per-deployment figures over the {f.get('queries_every_deployment')} queries every "
                  f"deployment answered.")
    truncation = (summary.get("truncation") or {}).get("analysed")
    tail = f" Responses analysed: {truncation}." if truncation else ""
    return f'<p class="note">{html.escape(str(summary.get("footing_rule", "")) + counts + tail)}</p>'


def truncation_section(summary: dict[str, Any], frame: pl.DataFrame | None) -> str:
    """Per deployment: how many responses were cut off at max_tokens."""
    info = summary.get("truncation") or {}
    note = (f'<p class="note">Responses with finish reason <code>length</code> stopped at max_tokens, not at an '
            f"end of their own; their openings look alike and raise similarity. Shares above "
            f"{100 * float(info.get('warning_share', 0.1)):.0f}% are warned about. This analysis used "
            f"{html.escape(str(info.get('analysed', 'all responses')))}.</p>")
    return note + table(frame, ["deployment", "n_responses", "n_truncated", "share_truncated", "warning"])


def near_duplicate_pairs(frame: pl.DataFrame | None, total: int, limit: int = MAX_NEAR_DUPLICATES) -> str:
    """The most similar cross-deployment pairs, both texts side by side."""
    if frame is None or frame.height == 0:
        return '<p class="note">No pair of responses from different deployments reached the threshold.</p>'
    parts = [f'<p class="note">{total} pairs in all; the {min(limit, frame.height)} most similar:</p>']
    for row in frame.head(limit).iter_rows(named=True):
        parts.append(
            '<div class="pair">'
            f'<div class="q">query <b>{html.escape(str(row["query_id"]))}</b> ({html.escape(str(row["category"]))}, '
            f'{html.escape(str(row["condition"]))}): {html.escape(str(row.get("query_text") or ""))} '
            f'&mdash; cosine <b>{row["cosine"]:.3f}</b></div>'
            f'<div><b>{html.escape(row["deployment_a"])}</b> #{row["sample_index_a"]}<pre>{html.escape(row["text_a"] or "")}</pre></div>'
            f'<div><b>{html.escape(row["deployment_b"])}</b> #{row["sample_index_b"]}<pre>{html.escape(row["text_b"] or "")}</pre></div>'
            "</div>"
        )
    return "".join(parts)


def _snippet(text: str | None, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def cross_query_duplicates(frame: pl.DataFrame | None, total: int, limit: int = MAX_CROSS_QUERY_DUPLICATES) -> str:
    """Near-duplicate pairs from the corpus-wide search whose responses answer different
    queries (the within-query pairs are shown above): a small table, texts shortened."""
    import polars as pl

    none = ('<p class="note">No pair of responses to different queries from different deployments '
            "reached the threshold.</p>")
    if frame is None or frame.height == 0 or "same_query" not in frame.columns:
        return none
    cross = frame.filter(~pl.col("same_query"))
    if cross.height == 0:
        return none
    top = cross.head(limit)
    shown = top.select(
        "cosine",
        pl.col("deployment_a").alias("deployment a"), pl.col("query_id_a").alias("query a"),
        pl.Series("text a", [_snippet(t) for t in top["text_a"].to_list()], dtype=pl.Utf8),
        pl.col("deployment_b").alias("deployment b"), pl.col("query_id_b").alias("query b"),
        pl.Series("text b", [_snippet(t) for t in top["text_b"].to_list()], dtype=pl.Utf8),
    )
    note = (f'<p class="note">{total} pairs of responses to different queries in all (whole corpus, FAISS '
            f"search); the {shown.height} most similar (full texts in near_duplicates_corpus.parquet):</p>")
    return note + table(shown, max_rows=limit)


def _wide_summary(frame: pl.DataFrame, condition: str | None) -> pl.DataFrame | None:
    if frame.height == 0:
        return None
    part = frame.filter(frame["condition"] == condition) if condition is not None else frame
    if part.height == 0:
        return None
    return part.pivot(on="metric", index="deployment", values="mean")


def external_classes_section(summary: dict[str, Any], frame: pl.DataFrame | None) -> str:
    """The report's section (empty when no imported file carried classes)."""
    entry = summary.get("external_classes")
    if not entry or frame is None or frame.height == 0:
        return ""
    import polars as pl

    means = pl.DataFrame(entry["per_deployment"])
    return ("<h2>Imported equivalence classes beside hivemind's</h2>"
            '<p class="note">Classes an imported file carried (e.g. NoveltyBench\'s judge partition) '
            f"against hivemind's classes at cosine {html.escape(str(entry['threshold']))}: mean class "
            "count and semantic entropy (nats) per query, and their agreement (adjusted Rand index: "
            "1 = the same partition, about 0 = chance).</p>" + table(means)
            + "<details><summary>Per query</summary>" + table(frame) + "</details>")


def render_report(summary: dict[str, Any], tables: dict[str, pl.DataFrame]) -> str:
    """The whole report as one HTML string."""
    import polars as pl

    empty = pl.DataFrame()

    def get(name: str) -> pl.DataFrame:
        return tables.get(name, empty)

    base = summary.get("baseline_condition")
    conditions = summary.get("conditions") or [base]
    study = summary.get("study", "study")
    sections: list[str] = []

    sections.append(f"<h1>hivemind report: {html.escape(str(study))}</h1>")
    sections.append(
        f'<p class="sub">{summary.get("n_responses", 0)} responses, {summary.get("n_queries", 0)} queries, '
        f'{len(summary.get("deployments", []))} deployments ({html.escape(", ".join(summary.get("deployments", [])))}), '
        f'conditions: {html.escape(", ".join(c for c in conditions if c))}; K per deployment and query: '
        f'{summary.get("k_per_deployment", {}).get("min")}-{summary.get("k_per_deployment", {}).get("max")}; '
        f'embedder <code>{html.escape(str((summary.get("embedder") or {}).get("id", "")))}</code>; '
        f'generated {html.escape(str(summary.get("created_at", "")))}.</p>'
    )
    sections.append(f"<h2>Headline (condition {html.escape(str(base))})</h2>" + warnings_block(summary)
                    + headline(summary) + footing_note(summary, base))
    sections.append(
        '<p class="note">Intra-model similarity: mean cosine over pairs of one deployment\'s responses to a query '
        "(self-pairs excluded); inter-model: mean cosine over all cross pairs of two deployments. The gap is "
        "tested with a paired bootstrap over queries and a permutation test that shuffles deployment labels "
        "within each query. The hivemind gap is the share of the extra diversity an ensemble of k* different "
        "deployments promises (up to that of independent answers, i.e. the random-pair baseline) that it "
        "actually delivers: 0 = no more diverse than one model, 1 = as diverse as independent answerers.</p>"
    )

    parts = ["<h2>Intra- and inter-model similarity</h2>"]
    for condition in conditions:
        rb = get("random_baseline")
        rb_row = rb.filter(rb["condition"] == condition) if rb.height else rb
        baseline = rb_row["similarity"][0] if rb_row.height else None
        parts.append(f"<h3>Condition {html.escape(str(condition))}</h3>")
        parts.append(_img(figures.bins_heatmap(get("bins"), condition), "similarity-bin heatmap"))
        parts.append(_img(figures.similarity_distributions(get("query_similarity"), baseline, condition),
                          "per-query similarity distributions"))
    parts.append(table(get("gap_tests")))
    parts.append("<h3>Random-pair baseline</h3>" + table(get("random_baseline")))
    sections.append("".join(parts))

    parts = ["<h2>Deployment x deployment similarity and clustering</h2>"]
    clustering = summary.get("clustering") or {}
    for condition in conditions:
        parts.append(f"<h3>Condition {html.escape(str(condition))}</h3>")
        parts.append(_img(figures.matrix_dendrogram(get("matrix"), clustering.get(condition), condition),
                          "deployment similarity matrix with dendrogram"))
    parts.append("<details><summary>Matrix with 95% CIs</summary>" + table(get("matrix")) + "</details>")
    parts.append("<h3>Verbatim overlap beside semantic similarity</h3>")
    parts.append(_img(figures.overlap_scatter(get("overlap_vs_semantic"), base), "verbatim overlap vs cosine"))
    parts.append(table(get("overlap_vs_semantic")))
    sections.append("".join(parts))

    parts = ["<h2>Ensemble diversity</h2>",
             '<p class="note">k responses drawn from one deployment vs from k different deployments (for k above '
             "the number of deployments, spread evenly over all), with 95% bootstrap CIs over queries; p: paired "
             "sign-flip permutation test (mixed > single), Holm-adjusted over k.</p>"]
    footing = summary.get("footing") or {}
    for condition in conditions:
        parts.append(f"<h3>Condition {html.escape(str(condition))}</h3>")
        f = footing.get(condition) or {}
        if f.get("queries_ensemble_curve") is not None:
            parts.append(f'<p class="note">Every point of this curve stands on the same '
                         f'{f["queries_ensemble_curve"]} of {f.get("queries_analysed")} queries: those where '
                         f'k = {f.get("ensemble_k_max")} is possible for both arms.</p>')
        parts.append(_img(figures.ensemble_curves(get("ensemble"), condition), "ensemble diversity curves"))
    parts.append(table(get("hivemind_gap")))
    parts.append("<details><summary>Curve values</summary>" + table(get("ensemble")) + "</details>")
    parts.append("<h3>Nearest-neighbour deployment counts</h3>")
    parts.append(_img(figures.nn_counts(get("nn_counts"), base), "distinct deployments among nearest neighbours"))
    sections.append("".join(parts))

    head = summary.get("headline") or {}
    sections.append("<h2>Near-duplicate pairs across deployments</h2>"
                    + near_duplicate_pairs(get("near_duplicates"), int(head.get("near_duplicate_pairs") or 0))
                    + "<h3>Across different queries</h3>"
                    + cross_query_duplicates(get("near_duplicates_corpus"),
                                             int(head.get("near_duplicate_pairs_cross_query") or 0)))

    sections.append("<h2>Per-category breakdown</h2>"
                    + _img(figures.categories(get("categories"), base), "per-category similarity")
                    + table(get("categories")))

    wide = _wide_summary(get("diversity_summary"), base)
    sections.append("<h2>Lexical beside semantic diversity</h2>"
                    '<p class="note">Means over queries (95% CIs in the Parquet table). distinct-n, EAD: higher = more '
                    "diverse; self-BLEU, homogenization (ROUGE-L), compression ratio (xz): higher = more homogeneous; "
                    "all depend on length (mean_length, in tokens).</p>"
                    + _img(figures.lexical_plot(get("diversity_summary"), base), "lexical and semantic diversity")
                    + table(wide))

    quality = get("quality_split")
    if quality.height:
        sections.append("<h2>Quality control vs residual narrowing</h2>"
                        '<p class="note">Diversity loss from deployment a to b on verifiable queries, split into the '
                        "part explained by removing wrong answers and the residual narrowing among correct ones "
                        "(METRICS.md). Answers judged by the "
                        f"<code>{html.escape(str(summary.get('answer_checker', 'final')))}</code> checker "
                        "(hivemind.verify): the final answer is extracted first.</p>"
                        + _img(figures.quality_plot(quality), "quality-control decomposition")
                        + table(quality))
    if len(conditions) > 1:
        sections.append("<h2>Decoding conditions</h2>"
                        '<p class="note">How much intra-model similarity each condition removes (diversity recovered) '
                        "against the baseline condition, next to the inter-model gap at baseline.</p>"
                        + _img(figures.conditions_plot(get("conditions")), "conditions") + table(get("conditions"))
                        + '<p class="note">Can decoding buy back what training took? Per condition, baseline minus '
                        "condition over queries (intra_restored, inter_restored: similarity removed; quality_cost: "
                        "accuracy lost on verifiable queries), paired bootstrap 95% CI, sign-flip p, Holm-corrected."
                        "</p>" + table(get("interventions")))
    lineage = get("lineage")
    if lineage.height:
        sections.append("<h2>Lineages</h2>" + _img(figures.lineage_plot(lineage), "lineage diversity") + table(lineage))

    sections.append(external_classes_section(summary, tables.get("external_classes")))
    sections.append("<h2>Truncated responses</h2>" + truncation_section(summary, get("truncation")))
    sections.append("<h2>Method notes</h2>"
                    f'<p class="note">{html.escape(str(summary.get("equal_k_rule", "")))} '
                    f'{html.escape(str(summary.get("footing_rule", "")))} Bootstrap resamples: '
                    f'{summary.get("n_boot")}; permutations: {summary.get("n_perm")}.</p>')
    provenance = {k: summary.get(k) for k in ("embedder", "versions", "store", "study", "created_at")}
    not_sent = "; ".join(f"{d['deployment']} / {d['condition']}: {', '.join(d['params'])} ({d['rows']} rows)"
                         for d in summary.get("dropped_params") or [])
    sections.append("<h2>Provenance</h2>"
                    + (f'<p class="note">Parameters not sent (the provider does not honour them; the condition '
                       f"allowed dropping them): {html.escape(not_sent)}.</p>" if not_sent else "")
                    + "<h3>Embedder and versions</h3><pre>"
                    + html.escape(json.dumps(provenance, indent=2, default=str)) + "</pre>"
                    + "<h3>Study spec</h3><pre>" + html.escape(json.dumps(summary.get("spec"), indent=2, default=str))
                    + "</pre>")
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>hivemind report: {html.escape(str(study))}</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def load_analysis(directory: str | Path) -> tuple[dict[str, Any], dict[str, pl.DataFrame]]:
    """summary.json and every table of an analysis directory."""
    import polars as pl

    directory = Path(directory)
    summary = json.loads((directory / "summary.json").read_text())
    tables = {path.stem: pl.read_parquet(path) for path in sorted(directory.glob("*.parquet"))}
    return summary, tables
