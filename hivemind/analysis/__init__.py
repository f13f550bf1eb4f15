"""Analyses of a study's responses: pure functions of polars frames and numpy vectors.

    data          which responses count (successful, non-empty, equal K) and their grouping
    similarity    intra/inter per query, bins, deployment matrix, clustering,
                  nearest-neighbour model counts, categories, verbatim n-gram overlap
    baseline      the random-pair baseline (responses to different queries) from per-query sums
    significance  gap_q = intra - inter: paired bootstrap and label-permutation test
    ensemble      ensemble-diversity curves (one deployment vs k different), hivemind gap
    lexical       lexical diversity beside semantic diversity per (query, deployment)
    quality       quality-control vs residual decomposition (verifiable query sets)
    conditions    decoding conditions vs the inter-model gap; lineages (family/stage)
    run           everything at once -> AnalysisResult(tables, summary)

Definitions: shared METRICS.md. `hivemind.pipeline` adds the store, embeddings and files.
"""

from hivemind.analysis.baseline import random_pair_baseline
from hivemind.analysis.conditions import baseline_condition, conditions_view, lineage_view
from hivemind.analysis.data import Group, build_groups, prepare_responses
from hivemind.analysis.duplicate_search import corpus_near_duplicates, near_duplicates
from hivemind.analysis.ensemble import (
    draw_diversity,
    ensemble_curves,
    ensemble_per_query,
    hivemind_gap,
    sign_flip_test,
)
from hivemind.analysis.lexical import diversity_summary, diversity_table
from hivemind.analysis.quality import correctness, quality_split, quality_table
from hivemind.analysis.run import EQUAL_K_RULE, AnalysisResult, analyze_responses
from hivemind.analysis.significance import gap_permutation_test, gap_tests
from hivemind.analysis.similarity import (
    category_breakdown,
    cluster_deployments,
    deployment_matrix,
    nearest_neighbour_counts,
    overlap_vs_semantic,
    pair_similarity,
    query_similarity,
    similarity_bins,
    verbatim_overlap,
)

__all__ = [
    "EQUAL_K_RULE",
    "AnalysisResult",
    "Group",
    "analyze_responses",
    "baseline_condition",
    "build_groups",
    "category_breakdown",
    "cluster_deployments",
    "conditions_view",
    "corpus_near_duplicates",
    "correctness",
    "deployment_matrix",
    "diversity_summary",
    "diversity_table",
    "draw_diversity",
    "ensemble_curves",
    "ensemble_per_query",
    "gap_permutation_test",
    "gap_tests",
    "hivemind_gap",
    "lineage_view",
    "near_duplicates",
    "nearest_neighbour_counts",
    "overlap_vs_semantic",
    "pair_similarity",
    "prepare_responses",
    "quality_split",
    "quality_table",
    "query_similarity",
    "random_pair_baseline",
    "sign_flip_test",
    "similarity_bins",
    "verbatim_overlap",
]
