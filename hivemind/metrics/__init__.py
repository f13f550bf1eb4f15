"""Pure metric functions: embedding similarity, lexical diversity, classes, statistics.

Definitions follow shared METRICS.md; no models, no I/O, heavy imports lazy.
"""

from hivemind.metrics.classes import (
    cosine_equivalence,
    equivalence_classes,
    n_distinct,
    semantic_entropy,
)
from hivemind.metrics.lexical import (
    compression_ratio,
    distinct_n,
    ead,
    homogenization_rougel,
    lcs_length,
    mean_length,
    ngrams,
    rouge_l_f,
    self_bleu,
    tokenize,
)
from hivemind.metrics.semantic import (
    cosine_matrix,
    embedding_diversity,
    intra_inter_gap,
    mean_cross_similarity,
    mean_pairwise_similarity,
    nearest_neighbour_model_counts,
    nli_diversity,
    normalize_rows,
    vendi_score,
)
from hivemind.metrics.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    holm,
    paired_bootstrap_diff,
    permutation_test,
)

__all__ = [
    "benjamini_hochberg",
    "bootstrap_ci",
    "compression_ratio",
    "cosine_equivalence",
    "cosine_matrix",
    "distinct_n",
    "ead",
    "embedding_diversity",
    "equivalence_classes",
    "holm",
    "homogenization_rougel",
    "intra_inter_gap",
    "lcs_length",
    "mean_cross_similarity",
    "mean_length",
    "mean_pairwise_similarity",
    "n_distinct",
    "nearest_neighbour_model_counts",
    "ngrams",
    "nli_diversity",
    "normalize_rows",
    "paired_bootstrap_diff",
    "permutation_test",
    "rouge_l_f",
    "self_bleu",
    "semantic_entropy",
    "tokenize",
    "vendi_score",
]
