"""The report's sections, in page order: one function each, `(summary, tables) -> HTML`.

Each reads the typed `Summary` and the analysis tables, and returns its part of the page (an
empty string when the study has nothing to show there, e.g. one condition: no conditions part).
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from hivemind.analysis.conditions import reference_sentences
from hivemind.report import figures
from hivemind.report.duplicates_section import near_duplicates_section
from hivemind.report.judge_section import judge_classes_section
from hivemind.report.markup import card, ci, fmt, img, table
from hivemind.report.tables import Tables
from hivemind.report.where import EXPLORER, bin_links, where_section

if TYPE_CHECKING:
    from hivemind.analysis.summary import Summary


def _conditions(summary: Summary) -> list[str | None]:
    return list(summary.conditions) or [summary.baseline_condition]


def _h3(condition: str | None) -> str:
    return f"<h3>Condition {html.escape(str(condition))}</h3>"


# --- sections ------------------------------------------------------------------------------
def title(summary: Summary, tables: Tables) -> str:
    """Study name and what it holds: responses, queries, deployments, conditions, K, embedder."""
    deployments = summary.deployments
    k = summary.k_per_deployment
    return (
        f"<h1>hivemind report: {html.escape(summary.study)}</h1>\n"
        f'<p class="sub">{summary.n_responses} responses, {summary.n_queries} queries, '
        f"{_arms(summary, deployments)}, "
        f"conditions: {html.escape(', '.join(c for c in _conditions(summary) if c))}; K per deployment and "
        f"query: {k.min}-{k.max}; embedder <code>{html.escape(str(summary.embedder.id or ''))}</code>; "
        f"generated {html.escape(str(summary.created_at or ''))}.</p>"
        f'<p class="sub"><b><a href="{EXPLORER}">Open the explorer</a></b>: every query with all its answers, '
        "their classes, nearest answers of other deployments and a map (the folder explorer/ beside it).</p>"
    )


def _arms(summary: Summary, deployments: list[str]) -> str:
    """ "3 deployments (a, b, c)", or, with reference arms, which are under test and which not."""
    refs = [d for d in deployments if d in summary.references]
    if not refs:
        return f"{len(deployments)} deployments ({html.escape(', '.join(deployments))})"
    tested = [d for d in deployments if d not in refs]
    return (
        f"{len(tested)} deployment{'s' if len(tested) != 1 else ''} under test "
        f"({html.escape(', '.join(tested))}) and reference arm{'s' if len(refs) != 1 else ''} "
        f"{html.escape(', '.join(refs))} (in the per-query tables, not in the model statistics)"
    )


def headline_section(summary: Summary, tables: Tables) -> str:
    """Warnings, the answer against a reference arm (where there is one), the headline cards,
    which queries they compare, and how to read them."""
    conditions = tables.get("conditions")
    answer = (
        reference_sentences(conditions, summary.baseline_condition)
        if conditions is not None and len(_conditions(summary)) > 1
        else []
    )
    return (
        f"<h2>Headline (condition {html.escape(str(summary.baseline_condition))})</h2>"
        + warnings_block(summary)
        + "".join(
            f'<p><strong>{html.escape(sentence)}</strong> <a href="#conditions">(decoding conditions)</a></p>'
            for sentence in answer
        )
        + headline(summary)
        + footing_note(summary, summary.baseline_condition)
        + '\n<p class="note">Intra-model similarity: mean cosine over pairs of one deployment\'s responses to a '
        "query (self-pairs excluded); inter-model: mean cosine over all cross pairs of two deployments. The gap "
        "is tested with a paired bootstrap over queries and a permutation test that shuffles deployment labels "
        "within each query. The hivemind gap is the share of the extra diversity an ensemble of k* different "
        "deployments promises (up to that of independent answers, i.e. the random-pair baseline) that it "
        "actually delivers: 0 = no more diverse than one model, 1 = as unrelated as answers to different queries.</p>"
    )


def headline(summary: Summary) -> str:
    """The cards at the top: similarity, gap, baseline, hivemind gap, neighbours, duplicates."""
    h = summary.headline
    value, interval = ci(h.inter_similarity)
    if h.inter_similarity is None or h.inter_similarity.estimate is None:
        interval = "needs two deployments under test" + (
            " (reference arms are left out of the model statistics)" if summary.references else ""
        )
    cards = [card("intra-model similarity", *ci(h.intra_similarity)), card("inter-model similarity", value, interval)]
    value, interval = ci(h.gap)
    p = h.gap.p_permutation
    cards.append(
        card(
            "gap = intra - inter",
            value,
            f"{interval}; one-sided permutation p (gap > 0) = {fmt(p, 4)}" if p is not None else interval,
        )
    )
    cards.append(card("random-pair baseline (different queries)", *ci(h.random_baseline)))
    hg = h.hivemind_gap
    value, interval = ci(hg)
    under_test = summary.deployments_under_test or summary.deployments
    detail = (
        f"{interval}; k* = {hg.k_star}"
        if hg.estimate is not None
        else "not computable: needs two deployments under test, two queries and a positive promise"
        + (f" (this study has one under test: {under_test[0]})" if len(under_test) == 1 else "")
    )
    cards.append(card("hivemind gap: share of promised ensemble diversity delivered", value, detail))
    ens = h.ensemble_at_k_star
    if ens.get("diff") is not None:
        cards.append(
            card(
                f"extra diversity of {hg.k_star} different deployments vs one",
                f"{ens['diff']:+.3f}",
                f"mean pairwise distance {fmt(ens.get('single'))} -> {fmt(ens.get('mixed'))}; "
                f"pointwise 95% CI [{fmt(ens.get('diff_lo'))}, {fmt(ens.get('diff_hi'))}]"
                + (
                    f"; simultaneous band over k (family-wise 95%) [{fmt(ens.get('diff_band_lo'))}, "
                    f"{fmt(ens.get('diff_band_hi'))}]"
                    if ens.get("diff_band_lo") is not None
                    else ""
                )
                + f"; one-sided p (mixed > single) = {fmt(ens.get('p_value'), 4)}",
            )
        )
    above = h.share_queries_intra_above
    if above:
        mean = sum(v for v in above.values() if v is not None) / max(1, len(above))
        cards.append(card("queries with intra similarity > 0.8", f"{100 * mean:.0f}%", "mean over deployments"))
    nn = h.nn_distinct_deployments
    if nn.estimate is not None:
        bounds = f"between {nn.least} and {nn.most} possible at j = {nn.j}; " if nn.most is not None else ""
        cards.append(
            card(
                f"distinct deployments among each response's {nn.j} nearest (j = K)",
                fmt(nn.estimate, 2),
                f"{bounds}{nn.of} deployments",
            )
        )
    cards.append(
        card(
            "near-duplicate cross-deployment pairs",
            str(h.near_duplicate_pairs),
            f"cosine >= {summary.near_duplicate_threshold}",
        )
    )
    return f'<div class="cards">{"".join(cards)}</div>'


def warnings_block(summary: Summary) -> str:
    """The summary's warnings (e.g. truncated responses), shown above the headline numbers."""
    if not summary.warnings:
        return ""
    items = "".join(f"<li>{html.escape(str(w))}</li>" for w in summary.warnings)
    return f'<div class="warn"><b>Warning</b><ul>{items}</ul></div>'


def footing_note(summary: Summary, condition: str | None) -> str:
    """The sentence under the headline that says which queries the numbers compare."""
    f = summary.footing.get(condition) if condition is not None else None
    counts = ""
    if f is not None:
        complete = f.queries_complete if f.queries_complete is not None else f.queries_every_deployment
        missing = "; ".join(f"{d} is missing on {n}" for d, n in f.missing.items())
        counts = (
            f" Here: intra, inter, gap, hivemind gap and k* over the {complete} of {f.queries_analysed} "
            f"queries every deployment answered with the common K ({f.queries_headline} with two or more "
            f"deployments); per-deployment figures over the {f.queries_every_deployment} queries every "
            f"deployment answered."
            + (f" Left out: {(f.queries_analysed or 0) - (complete or 0)} queries ({missing})." if missing else "")
        )
    analysed = summary.truncation.analysed
    tail = f" Responses analysed: {analysed}." if analysed else ""
    return f'<p class="note">{html.escape(summary.footing_rule + counts + tail)}</p>'


def where(summary: Summary, tables: Tables) -> str:
    """The most and least convergent queries, with answers (`hivemind.report.where`)."""
    return where_section(summary, tables.frames)


def similarity_section(summary: Summary, tables: Tables) -> str:
    """Intra- and inter-model similarity per condition: bins, distributions, tests, baseline."""
    parts = ["<h2>Intra- and inter-model similarity</h2>"]
    for condition in _conditions(summary):
        rb = tables["random_baseline"]
        rb_row = rb.filter(rb["condition"] == condition) if rb.height else rb
        baseline = rb_row["similarity"][0] if rb_row.height else None
        parts.append(_h3(condition))
        parts.append(img(figures.bins_heatmap(tables["bins"], condition), "similarity-bin heatmap"))
        parts.append(
            img(
                figures.similarity_distributions(tables["query_similarity"], baseline, condition),
                "per-query similarity distributions",
            )
        )
        parts.append(bin_links(tables["bins"], condition))
    parts.append(table(tables["gap_tests"]))
    parts.append("<h3>Random-pair baseline</h3>" + table(tables["random_baseline"]))
    return "".join(parts)


def matrix_section(summary: Summary, tables: Tables) -> str:
    """Deployment x deployment matrix with its dendrogram; verbatim overlap beside it."""
    parts = ["<h2>Deployment x deployment similarity and clustering</h2>"]
    for condition in _conditions(summary):
        parts.append(_h3(condition))
        clustering = summary.clustering.get(condition) if condition is not None else None
        parts.append(
            img(
                figures.matrix_dendrogram(tables["matrix"], clustering, condition),
                "deployment similarity matrix with dendrogram",
            )
        )
    parts.append("<details><summary>Matrix with 95% CIs</summary>" + table(tables["matrix"]) + "</details>")
    parts.append("<h3>Verbatim overlap beside semantic similarity</h3>")
    parts.append(
        img(
            figures.overlap_scatter(tables["overlap_vs_semantic"], summary.baseline_condition),
            "verbatim overlap vs cosine",
        )
    )
    parts.append(table(tables["overlap_vs_semantic"]))
    return "".join(parts)


def ensemble_section(summary: Summary, tables: Tables) -> str:
    """Ensemble diversity curves per condition, the hivemind gap, nearest-neighbour counts."""
    parts = [
        "<h2>Ensemble diversity</h2>",
        (
            '<p class="note">k responses drawn from one deployment vs from k different deployments (for k above '
            "the number of deployments, spread evenly over all), with pointwise 95% bootstrap CIs over queries "
            "(diff_lo, diff_hi: each k alone) and, for the difference, a simultaneous band over k (diff_band_lo, "
            "diff_band_hi: family-wise 95%, every k covered at once); p: paired sign-flip permutation test "
            "(one-sided, mixed > single), Holm-adjusted over k"
            + (
                " (the k computed are sparse: every k up to the number of deployments, then about x1.25 "
                "apart; `analysis.ensemble_k: auto`, the default, does this when K is above 16, "
                "`ensemble_k: all` computes every k)"
                if summary.ensemble_k == "sparse"
                else ""
            )
            + ".</p>"
        ),
    ]
    for condition in _conditions(summary):
        parts.append(_h3(condition))
        f = summary.footing.get(condition) if condition is not None else None
        if f is not None and f.queries_ensemble_curve is not None:
            parts.append(
                f'<p class="note">Every point of this curve stands on the same '
                f"{f.queries_ensemble_curve} of {f.queries_analysed} queries: those where "
                f"k = {f.ensemble_k_max} is possible for both arms.</p>"
            )
        parts.append(img(figures.ensemble_curves(tables["ensemble"], condition), "ensemble diversity curves"))
    parts.append(table(tables["hivemind_gap"]))
    parts.append("<details><summary>Curve values</summary>" + table(tables["ensemble"]) + "</details>")
    parts.append("<h3>Nearest-neighbour deployment counts</h3>")
    parts.append(
        img(
            figures.nn_counts(tables["nn_counts"], summary.baseline_condition),
            "distinct deployments among nearest neighbours",
        )
    )
    return "".join(parts)


def categories_section(summary: Summary, tables: Tables) -> str:
    """Similarity per query category."""
    return (
        "<h2>Per-category breakdown</h2>"
        + img(figures.categories(tables["categories"], summary.baseline_condition), "per-category similarity")
        + table(tables["categories"])
    )


def lexical_section(summary: Summary, tables: Tables) -> str:
    """Lexical diversity metrics beside the semantic ones (means per deployment)."""
    frame, base = tables["diversity_summary"], summary.baseline_condition
    part = frame.filter(frame["condition"] == base) if frame.height and base is not None else frame
    wide = part.pivot(on="metric", index="deployment", values="mean") if part.height else None
    return (
        "<h2>Lexical beside semantic diversity</h2>"
        '<p class="note">Means over queries (95% CIs in the Parquet table). distinct-n, EAD: higher = more '
        "diverse; self-BLEU, homogenization (ROUGE-L), compression ratio (xz): higher = more homogeneous; "
        "all depend on length (mean_length, in tokens).</p>"
        + img(figures.lexical_plot(frame, base), "lexical and semantic diversity")
        + table(wide)
    )


def quality_section(summary: Summary, tables: Tables) -> str:
    """Quality control vs residual narrowing on verifiable queries (when there are any)."""
    quality = tables["quality_split"]
    if not quality.height:
        return ""
    return (
        "<h2>Quality control vs residual narrowing</h2>"
        '<p class="note">Diversity loss from deployment a to b on verifiable queries, split into the '
        "part explained by removing wrong answers and the residual narrowing among correct ones "
        "(METRICS.md). Answers judged by the "
        f"<code>{html.escape(summary.answer_checker)}</code> checker "
        "(hivemind.analysis.verify): the final answer is extracted first.</p>"
        + img(figures.quality_plot(quality), "quality-control decomposition")
        + table(quality)
    )


def conditions_section(summary: Summary, tables: Tables) -> str:
    """What each decoding condition buys back against the baseline (with two or more)."""
    if len(_conditions(summary)) <= 1:
        return ""
    return (
        '<h2 id="conditions">Decoding conditions</h2>'
        '<p class="note">How much intra-model similarity each condition removes (diversity recovered) '
        "against the baseline condition, next to the inter-model gap at baseline.</p>"
        + "".join(
            f"<p><strong>{html.escape(sentence)}</strong></p>"
            for sentence in reference_sentences(tables["conditions"], summary.baseline_condition)
        )
        + img(figures.conditions_plot(tables["conditions"]), "conditions")
        + table(tables["conditions"])
        + '<p class="note">Can decoding buy back what training took? Per condition, baseline minus '
        "condition over queries (intra_restored, inter_restored: similarity removed; quality_cost: "
        "accuracy lost on verifiable queries), paired bootstrap 95% CI, sign-flip p, Holm-corrected."
        "</p>" + table(tables["interventions"])
    )


def lineage_section(summary: Summary, tables: Tables) -> str:
    """Diversity along model lineages (family, stage), when the zoo names them."""
    lineage = tables["lineage"]
    if not lineage.height:
        return ""
    return "<h2>Lineages</h2>" + img(figures.lineage_plot(lineage), "lineage diversity") + table(lineage)


def external_classes_section(summary: Summary, tables: Tables) -> str:
    """Classes an imported file carried beside hivemind's (empty when none did)."""
    entry, frame = summary.external_classes, tables.get("external_classes")
    if not entry or frame is None or frame.height == 0:
        return ""
    import polars as pl

    means = pl.DataFrame(entry["per_deployment"])
    return (
        "<h2>Imported equivalence classes beside hivemind's</h2>"
        '<p class="note">Classes an imported file carried (e.g. NoveltyBench\'s judge partition) '
        f"against hivemind's classes at cosine {html.escape(str(entry['threshold']))}: mean class "
        "count and semantic entropy (nats) per query, and their agreement (adjusted Rand index: "
        "1 = the same partition, about 0 = chance).</p>"
        + table(means)
        + "<details><summary>Per query</summary>"
        + table(frame)
        + "</details>"
    )


def truncation_section(summary: Summary, tables: Tables) -> str:
    """Per deployment: how many responses were cut off at max_tokens."""
    info = summary.truncation
    note = (
        f'<p class="note">Responses with finish reason <code>length</code> stopped at max_tokens, not at an '
        f"end of their own; their openings look alike and raise similarity. Shares above "
        f"{100 * info.warning_share:.0f}% are warned about. This analysis used "
        f"{html.escape(info.analysed or 'all responses')}.</p>"
    )
    return (
        "<h2>Truncated responses</h2>"
        + note
        + table(tables.get("truncation"), ["deployment", "n_responses", "n_truncated", "share_truncated", "warning"])
    )


def method_notes(summary: Summary, tables: Tables) -> str:
    return (
        "<h2>Method notes</h2>"
        f'<p class="note">{html.escape(summary.equal_k_rule)} {html.escape(summary.footing_rule)} '
        f"{html.escape(summary.interval_rule)} Bootstrap resamples: {summary.n_boot}; permutations: {summary.n_perm}.</p>"
    )


def provenance(summary: Summary, tables: Tables) -> str:
    """Parameters not sent, embedder, versions, store and the study spec."""
    data = summary.to_json_dict()
    source = {k: data.get(k) for k in ("embedder", "versions", "store", "study", "created_at")}
    if isinstance(source["embedder"], dict):  # an in-process embedder has no provider tokens or cost
        source["embedder"] = {k: v for k, v in source["embedder"].items() if v is not None}
    not_sent = "; ".join(
        f"{d.deployment} / {d.condition}: {', '.join(d.params)} ({d.rows} rows)" for d in summary.dropped_params
    )
    return (
        "<h2>Provenance</h2>"
        + (
            f'<p class="note">Parameters not sent (the provider does not honour them; the condition '
            f"allowed dropping them): {html.escape(not_sent)}.</p>"
            if not_sent
            else ""
        )
        + "<h3>Embedder and versions</h3><pre>"
        + html.escape(json.dumps(source, indent=2, default=str))
        + "</pre><h3>Study spec</h3><pre>"
        + html.escape(json.dumps(summary.spec, indent=2, default=str))
        + "</pre>"
    )


SECTIONS = (
    title,
    headline_section,
    where,
    similarity_section,
    matrix_section,
    ensemble_section,
    near_duplicates_section,
    categories_section,
    lexical_section,
    quality_section,
    conditions_section,
    lineage_section,
    external_classes_section,
    judge_classes_section,
    truncation_section,
    method_notes,
    provenance,
)
"""The report, top to bottom."""
