"""Every analysis at once, from prepared responses and their vectors (no I/O, no models).

`analyze_responses(responses, vectors)` returns the tables (polars) and a JSON-ready summary
with the headline numbers; `hivemind.pipeline` adds the store, the embedder and the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.baseline import query_sums, random_pair_baseline
from hivemind.analysis.conditions import baseline_condition, conditions_view, interventions_view, lineage_view
from hivemind.analysis.data import (
    FOOTING_RULE,
    Group,
    build_groups,
    complete_queries,
    footing_queries,
    on_footing,
    ordered,
)
from hivemind.analysis.duplicate_search import corpus_near_duplicates, near_duplicates
from hivemind.analysis.ensemble import (
    INTERVAL_RULE,
    curve_queries,
    ensemble_curves,
    ensemble_per_query,
    hivemind_gap,
    resolve_ensemble_k,
)
from hivemind.analysis.lexical import diversity_summary, diversity_table
from hivemind.analysis.quality import correctness, quality_split, quality_table
from hivemind.analysis.significance import gap_tests
from hivemind.analysis.similarity import (
    HIGH_SIMILARITY,
    category_breakdown,
    cluster_deployments,
    deployment_matrix,
    matrix_array,
    nearest_neighbour_counts,
    overlap_vs_semantic,
    pair_similarity,
    query_similarity,
    similarity_bins,
    verbatim_overlap,
)
from hivemind.analysis.verify import AnswerChecker, checker_name

if TYPE_CHECKING:
    import polars as pl

    from hivemind.executors import Executor

EQUAL_K_RULE = (
    "Only successful, non-empty responses are analysed. For each query every (deployment, condition) "
    "arm keeps the same number K of responses: the smallest count among arms with at least two "
    "usable responses (arms with fewer are dropped from that query); the lowest sample indices are kept."
)


@dataclass
class AnalysisResult:
    """Tables by name and the summary (headline numbers, clustering, notes)."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _first(frame: pl.DataFrame, **match: Any) -> dict[str, Any]:
    import polars as pl

    for column, value in match.items():
        frame = frame.filter(pl.col(column) == value)
    return frame.row(0, named=True) if frame.height else {}


def analyze_responses(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    *,
    deployments: list[str] | None = None,
    conditions: list[str] | None = None,
    threshold: float = 0.9,
    n_boot: int = 2000,
    n_perm: int = 1000,
    draws: int = 24,
    seed: int = 0,
    lexical: bool = True,
    max_near_duplicates: int = 2000,
    use_gpu: bool | None = None,
    checker: str | AnswerChecker | None = None,
    executor: Executor | None = None,
    corpus_index: str = "exact",
    ensemble_k: str = "auto",
    references: list[str] | None = None,
) -> AnalysisResult:
    """Run every analysis on prepared responses (`prepare_responses`) and aligned vectors.

    `threshold` is the cosine at which two responses count as near-duplicates and as one
    equivalence class. `use_gpu` is for the FAISS corpus-wide near-duplicate search (None:
    a GPU when faiss sees one). `max_near_duplicates` caps the corpus-wide table
    (`near_duplicates_corpus`); the within-query `near_duplicates` keeps every pair. `checker`
    judges answers to verifiable queries (`hivemind.analysis.verify.get_checker`: a name such as "final",
    "exact", "numeric:0.01", "regex", "module:function", or a callable; default "final"). Works
    with one deployment (no inter tables), one condition and missing categories. Comparisons
    follow `FOOTING_RULE`. `corpus_index` is "exact" or "ivf" (approximate, for very large
    corpora; `hivemind.vectors.index`) for the corpus-wide search only. `ensemble_k` is "all" (every k of
    the ensemble curves), "sparse" (fewer k, same values there; `ensemble.sparse_ks`) or "auto"
    (all while K <= 16, sparse beyond; the summary's `ensemble_k` says which was computed). `executor` runs the per-query analyses and the pair search (default:
    in this process; `hivemind.executors`). `references` are reference arms (human answers):
    in the per-query tables (pairs, matrix, bins, diversity, near-duplicates, conditions), not in
    the model statistics, which stand on the deployments under test only. The headline intra,
    inter, gap, hivemind gap, k* and ensemble curves stand on the queries every deployment under
    test answered with the common K (`complete_queries`).
    """
    import polars as pl

    from hivemind.executors import Executor
    from hivemind.vectors.index import CORPUS_INDEXES

    if corpus_index not in CORPUS_INDEXES:  # before the work, not after it
        raise ValueError(f"unknown corpus index {corpus_index!r}; use one of {', '.join(CORPUS_INDEXES)}")
    ex = executor or Executor()

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape[0] != responses.height:
        raise ValueError(f"{responses.height} responses but {vectors.shape[0]} vectors")
    deployments = ordered(responses["deployment"].to_list(), deployments or [])
    conditions = ordered(responses["condition"].to_list(), conditions or [])
    base = baseline_condition(conditions)
    reference_arms = [d for d in deployments if d in set(references or [])]
    under_test = [d for d in deployments if d not in set(reference_arms)]  # the deployments under test
    groups = build_groups(responses)
    t: dict[str, pl.DataFrame] = {}
    t["pairs"] = ex.map_groups(pair_similarity, groups, vectors)
    # the model statistics see the deployments under test only (reference arms are shown, not counted)
    model_groups, model_pairs, model_responses = groups, t["pairs"], responses
    if reference_arms:
        model_groups = deployments_under_test(groups, under_test)
        model_pairs = t["pairs"].filter(
            pl.col("deployment_a").is_in(under_test) & pl.col("deployment_b").is_in(under_test)
        )
        model_responses = responses.filter(pl.col("deployment").is_in(under_test))
    # deployment-level figures: only the queries where every deployment has the same K
    footing = footing_queries(t["pairs"].filter(pl.col("kind") == "intra"), arm="deployment_a")
    model_footing = (
        footing_queries(model_pairs.filter(pl.col("kind") == "intra"), arm="deployment_a")
        if reference_arms
        else footing
    )
    footed_pairs = on_footing(t["pairs"], footing)
    t["query_similarity"] = query_similarity(model_pairs)
    # headline figures: only the queries every deployment under test answered with the common K
    complete = complete_queries(model_pairs.filter(pl.col("kind") == "intra"), under_test, arm="deployment_a")
    complete_keys = set(complete.select("condition", "query_id").iter_rows())
    complete_groups = [g for g in model_groups if (g.condition, g.query_id) in complete_keys]
    t["bins"] = similarity_bins(footed_pairs)
    t["matrix"] = deployment_matrix(footed_pairs, n_boot=n_boot, seed=seed)
    sums = query_sums(model_responses, vectors)  # the baseline's, resampled again for the hivemind gap
    t["random_baseline"] = random_pair_baseline(model_responses, vectors, seed=seed, n_boot=n_boot, sums=sums)
    on_common = set(model_footing.select("condition", "query_id").iter_rows())
    t["nn_counts"] = nearest_neighbour_counts(
        [g for g in model_groups if (g.condition, g.query_id) in on_common], vectors
    )
    t["categories"] = category_breakdown(t["query_similarity"], n_boot=n_boot, seed=seed)
    t["verbatim_overlap"] = ex.map_groups(verbatim_overlap, groups)
    t["overlap_vs_semantic"] = overlap_vs_semantic(footed_pairs, t["verbatim_overlap"])
    t["gap_tests"] = gap_tests(
        on_footing(t["query_similarity"], complete), complete_groups, vectors, n_boot=n_boot, n_perm=n_perm, seed=seed
    )
    ensemble_k = resolve_ensemble_k(ensemble_k, max((g.k for g in model_groups), default=0))
    t["ensemble_per_query"] = ensemble_per_query(model_groups, vectors, draws=draws, seed=seed, ensemble_k=ensemble_k)
    ensemble_complete = on_footing(t["ensemble_per_query"], complete)
    t["ensemble"] = ensemble_curves(ensemble_complete, n_boot=n_boot, n_perm=n_perm, seed=seed)
    t["hivemind_gap"] = hivemind_gap(
        ensemble_complete, complete_groups, t["random_baseline"], n_boot=n_boot, seed=seed, sums=sums
    )
    t["diversity"] = ex.map_groups(diversity_table, groups, vectors, class_threshold=threshold, lexical=lexical)
    t["diversity_summary"] = diversity_summary(on_footing(t["diversity"], footing), n_boot=n_boot, seed=seed)
    correct = correctness(groups, checker)
    t["quality"] = ex.map_groups(quality_table, groups, vectors, correct)
    t["quality_split"] = quality_split(groups, vectors, correct, n_boot=n_boot, seed=seed)
    t["conditions"] = conditions_view(
        t["pairs"], t["query_similarity"], conditions, n_boot=n_boot, seed=seed, references=reference_arms
    )
    t["interventions"] = interventions_view(
        t["query_similarity"], t["quality"], conditions, n_boot=n_boot, n_perm=n_perm, seed=seed
    )
    meta = responses.select("deployment", "family", "stage").unique("deployment", maintain_order=True)
    t["lineage"] = lineage_view(
        on_footing(t["diversity"], footing),
        footed_pairs,
        meta,
        on_footing(t["quality"], footing),
        n_boot=n_boot,
        seed=seed,
    )
    t["near_duplicates"], n_dup = near_duplicates(responses, vectors, threshold, None, use_gpu, ex)  # every pair
    t["near_duplicates_corpus"], n_corpus, n_cross = corpus_near_duplicates(
        responses, vectors, threshold, max_near_duplicates, use_gpu, ex, corpus_index
    )

    clustering: dict[str, Any] = {}
    cluster_rows = []
    for condition in conditions:
        present = [
            d
            for d in under_test
            if d in set(t["pairs"].filter(pl.col("condition") == condition)["deployment_a"].to_list())
        ]
        result = cluster_deployments(matrix_array(t["matrix"], condition, present), present)
        clustering[condition] = result
        cluster_rows += [(condition, d, i) for i, d in enumerate(result["order"])]
    t["clusters"] = pl.DataFrame(
        cluster_rows, schema={"condition": pl.Utf8, "deployment": pl.Utf8, "leaf_order": pl.Int64}, orient="row"
    )
    summary = _summary(t, footing, responses, deployments, conditions, base, n_dup, threshold, n_boot, n_perm)
    summary["footing"] = _footing_summary(t, footing, complete, ensemble_complete, conditions)
    summary["warnings"] = _footing_warnings(summary["footing"])
    summary["answer_checker"] = checker_name(checker)
    summary["headline"]["near_duplicate_pairs_corpus"] = n_corpus
    summary["headline"]["near_duplicate_pairs_cross_query"] = n_cross
    summary["near_duplicate_corpus_index"] = corpus_index  # "ivf" is approximate: may miss pairs
    summary["ensemble_k"] = ensemble_k
    summary["clustering"] = clustering
    summary["references"] = reference_arms
    summary["deployments_under_test"] = under_test
    return AnalysisResult(t, summary)


def deployments_under_test(groups: list[Group], under_test: list[str]) -> list[Group]:
    """The groups with only the deployments under test (reference arms taken out); a group
    left without any deployment is dropped. Rows still index the same vector matrix."""
    keep = set(under_test)
    out = []
    for g in groups:
        picked = [i for i, d in enumerate(g.deployments) if d in keep]
        if not picked:
            continue
        out.append(
            Group(
                g.query_id,
                g.condition,
                g.category,
                [g.deployments[i] for i in picked],
                [g.rows[i] for i in picked],
                g.answer,
                [g.texts[i] for i in picked] if g.texts else [],
            )
        )
    return out


def _summary(
    t: dict[str, pl.DataFrame],
    footing: pl.DataFrame,
    responses: pl.DataFrame,
    deployments: list[str],
    conditions: list[str],
    base: str | None,
    n_dup: int,
    threshold: float,
    n_boot: int,
    n_perm: int,
) -> dict[str, Any]:
    """Headline numbers for the baseline condition, JSON-ready (NaN -> null)."""
    import polars as pl

    # K of each query (and condition) as analysed: every kept arm has exactly K responses; a
    # count / (deployments x conditions) would undercount wherever an arm was dropped
    ks = t["query_similarity"]["k"].drop_nulls().to_numpy().astype(np.int64)
    ks = ks[ks > 0]
    gap = _first(t["gap_tests"], condition=base)
    rb = _first(t["random_baseline"], condition=base)
    hg = _first(t["hivemind_gap"], condition=base)
    intra = on_footing(t["pairs"], footing).filter((pl.col("condition") == base) & (pl.col("kind") == "intra"))
    above = {
        d: _num((part["similarity"] > HIGH_SIMILARITY).mean())
        for (d,), part in intra.group_by(["deployment_a"], maintain_order=True)
    }
    k_star = hg.get("k_star")
    ens = {}
    if k_star is not None:
        row = _first(t["ensemble"], condition=base, metric="mean_distance", k=k_star)
        keys = ("single", "mixed", "diff", "diff_lo", "diff_hi", "diff_band_lo", "diff_band_hi", "p_value")
        ens = {key: _num(row.get(key)) for key in keys}
    nn_head = _nn_headline(t["nn_counts"], t["query_similarity"], footing, base)

    def ci(row: dict[str, Any], key: str) -> dict[str, Any]:
        return {"estimate": _num(row.get(key)), "lo": _num(row.get(f"{key}_lo")), "hi": _num(row.get(f"{key}_hi"))}

    return {
        "n_responses": responses.height,
        "n_queries": responses["query_id"].n_unique(),
        "deployments": deployments,
        "conditions": conditions,
        "baseline_condition": base,
        "k_per_deployment": {"min": int(ks.min()) if ks.size else 0, "max": int(ks.max()) if ks.size else 0},
        "equal_k_rule": EQUAL_K_RULE,
        "footing_rule": FOOTING_RULE,
        "interval_rule": INTERVAL_RULE,
        "near_duplicate_threshold": threshold,
        "n_boot": n_boot,
        "n_perm": n_perm,
        "headline": {
            "condition": base,
            "n_queries": gap.get("n_queries"),
            "intra_similarity": ci(gap, "intra"),
            "inter_similarity": ci(gap, "inter"),
            "gap": {**ci(gap, "gap"), "p_permutation": _num(gap.get("p_permutation"))},
            "random_baseline": {
                "estimate": _num(rb.get("similarity")),
                "lo": _num(rb.get("ci_lo")),
                "hi": _num(rb.get("ci_hi")),
                "n_pairs": rb.get("n_pairs"),
                "n_queries": rb.get("n_queries"),
            },
            "share_queries_intra_above_0.8": above,
            "hivemind_gap": {
                "estimate": _num(hg.get("hivemind_gap")),
                "lo": _num(hg.get("ci_lo")),
                "hi": _num(hg.get("ci_hi")),
                "k_star": k_star,
                "realized": _num(hg.get("realized")),
                "promised": _num(hg.get("promised")),
                "n_queries": hg.get("n_queries"),
            },
            "ensemble_at_k_star": ens,
            "nn_distinct_deployments": nn_head,
            "near_duplicate_pairs": n_dup,
        },
    }


def _nn_headline(
    nn_counts: pl.DataFrame, query_sim: pl.DataFrame, footing: pl.DataFrame, base: str | None
) -> dict[str, Any]:
    """Distinct deployments among each response's j = K nearest, with what j allows.

    j = K (one deployment's worth of neighbours, K the smallest K of the queries the counts
    stand on) is where the count is informative: it runs from 1 to min(K, D); deployments
    fully apart give 2 (a response's own K - 1 others, then one from elsewhere), responses
    that ignore their deployment give the count of j draws from D deployments. At the table's
    last j (every other response, whenever D K - 1 <= 50) it is D by construction, whatever
    the responses say.
    """
    import polars as pl

    nn = nn_counts.filter(pl.col("condition") == base)
    if not nn.height:
        return {"j": None, "estimate": None, "of": None}
    on = on_footing(query_sim.filter(pl.col("condition") == base), footing)
    ks = on.filter(pl.col("n_deployments") >= 2)["k"].drop_nulls().to_numpy()
    K = int(ks.min()) if ks.size else int(nn["j"].to_numpy().max())
    at = nn.filter(pl.col("j") <= K).sort("j")
    row = at.row(at.height - 1, named=True) if at.height else nn.row(0, named=True)
    j, D = int(row["j"]), int(row["n_deployments"])
    return {
        "j": j,
        "estimate": _num(row["distinct_deployments"]),
        "of": D,
        "most": min(j, D),
        "least": 1,
        "rule": "j = K: one deployment's worth of neighbours",
    }


def _footing_summary(
    t: dict[str, pl.DataFrame],
    footing: pl.DataFrame,
    complete: pl.DataFrame,
    ensemble_complete: pl.DataFrame,
    conditions: list[str],
) -> dict[str, Any]:
    """Per condition, how many queries each kind of figure stands on (and so how many it left out).

    `missing`: per deployment under test, on how many of the analysed queries it is absent
    (those queries are left out of the headline)."""
    import polars as pl

    out: dict[str, Any] = {}
    intra = t["pairs"].filter(pl.col("kind") == "intra")
    for condition in conditions:
        analysed = t["query_similarity"].filter(pl.col("condition") == condition)
        gap = _first(t["gap_tests"], condition=condition)
        k_max, curve = curve_queries(ensemble_complete, condition)
        keys = complete.filter(pl.col("condition") == condition)
        here = intra.filter(pl.col("condition") == condition)
        tested = on_footing(here, keys)["deployment_a"].unique(maintain_order=True).to_list()
        present = here.group_by("deployment_a", maintain_order=True).agg(pl.col("query_id").n_unique().alias("n"))
        counts = dict(present.iter_rows())
        out[condition] = {
            "queries_analysed": analysed.height,
            "queries_every_deployment": footing.filter(pl.col("condition") == condition).height,
            "queries_complete": keys.height,
            "queries_headline": gap.get("n_queries"),
            "queries_ensemble_curve": len(curve),
            "ensemble_k_max": k_max,
            "missing": {
                d: analysed.height - int(counts.get(d, 0)) for d in tested if counts.get(d, 0) < analysed.height
            },
        }
    return out


def _footing_warnings(footing: dict[str, Any]) -> list[str]:
    """A warning per condition whose figures had to leave queries out (naming what is missing)."""
    out = []
    for condition, f in footing.items():
        kept, total = f["queries_complete"], f["queries_analysed"]
        if kept < total:
            missing = ", ".join(f"{d} on {n}" for d, n in f["missing"].items())
            out.append(
                f"condition {condition}: the headline (intra, inter, gap, hivemind gap, k*, ensemble curves) and "
                f"the per-deployment figures stand on the {kept} of {total} queries that every deployment "
                f"answered with the same K; {total - kept} queries were left out (missing: {missing or 'none'})."
            )
    return out
