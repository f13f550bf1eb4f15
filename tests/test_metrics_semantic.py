"""Embedding metrics, Vendi against the `vendi-score` reference, and equivalence classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hivemind.metrics import (
    cosine_equivalence,
    cosine_matrix,
    embedding_diversity,
    equivalence_classes,
    intra_inter_gap,
    mean_cross_similarity,
    mean_pairwise_similarity,
    n_distinct,
    nearest_neighbour_model_counts,
    nli_diversity,
    normalize_rows,
    semantic_entropy,
    vendi_score,
)
from hivemind.metrics.semantic import _nearest_in_rows

# vendi-score 0.0.3 touches the deprecated scipy.sparse.csr namespace
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RNG = np.random.default_rng(1234)
# Fixed corpus: 12 "responses" in 16-d, float32 like real embedders, not normalised.
SMALL = (RNG.normal(size=(12, 16)) * 3.0).astype(np.float32)
# More responses than dimensions: exercises the d x d dual path.
TALL = RNG.normal(size=(60, 8)).astype(np.float32)


def _cos_gram(X: np.ndarray) -> np.ndarray:
    A = X.astype(np.float64)
    A = A / np.linalg.norm(A, axis=1, keepdims=True)
    return A @ A.T


# --- cosine similarity --------------------------------------------------------


def test_normalize_rows_unit_norm_and_zero_row_stays_zero() -> None:
    X = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float32)
    N = normalize_rows(X)
    assert np.allclose(N[0], [0.6, 0.8])
    assert np.all(N[1] == 0.0) and not np.any(np.isnan(N))
    assert np.allclose(N[2], [1.0, 0.0])


def test_cosine_matrix_is_scale_invariant_and_matches_definition() -> None:
    S = cosine_matrix(SMALL)
    assert np.allclose(S, _cos_gram(SMALL), atol=1e-6)
    assert np.allclose(np.diag(S), 1.0)
    assert np.allclose(cosine_matrix(SMALL * 7.0, SMALL[:3]), S[:, :3], atol=1e-6)


def test_mean_pairwise_excludes_diagonal() -> None:
    # cos(a,b)=0, cos(a,c)=1, cos(b,c)=0 -> mean of upper triangle = 1/3
    X = np.array([[1.0, 0.0], [0.0, 2.0], [5.0, 0.0]], dtype=np.float32)
    assert mean_pairwise_similarity(X) == pytest.approx(1.0 / 3.0)
    assert embedding_diversity(X) == pytest.approx(2.0 / 3.0)
    G = _cos_gram(SMALL)
    iu = np.triu_indices(12, 1)
    assert mean_pairwise_similarity(SMALL) == pytest.approx(G[iu].mean(), abs=1e-6)
    assert math.isnan(mean_pairwise_similarity(SMALL[:1]))


def test_mean_cross_similarity_all_pairs() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    Y = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    # cosines: row1 = 1,1,1/sqrt2 ; row2 = 0,0,1/sqrt2
    expected = (2.0 + 2.0 / math.sqrt(2.0)) / 6.0
    assert mean_cross_similarity(X, Y) == pytest.approx(expected)
    assert mean_cross_similarity(X, Y) == pytest.approx(mean_cross_similarity(Y, X))


# --- Vendi --------------------------------------------------------------------


def test_vendi_identical_is_one_and_orthogonal_is_n() -> None:
    same = np.tile(SMALL[:1], (10, 1))
    assert vendi_score(same) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(np.eye(7, dtype=np.float32)) == pytest.approx(7.0)
    assert vendi_score(np.eye(7), q=2.0) == pytest.approx(7.0)
    assert vendi_score(np.eye(7), q=math.inf) == pytest.approx(7.0)
    # two clusters of 5 identical responses -> 2 effective items
    two = np.vstack([np.tile([1.0, 0.0, 0.0], (5, 1)), np.tile([0.0, 1.0, 0.0], (5, 1))])
    assert vendi_score(two) == pytest.approx(2.0)
    assert 1.0 <= vendi_score(SMALL) <= 12.0


@pytest.mark.parametrize("X", [SMALL, TALL], ids=["n<d", "n>d"])
def test_vendi_matches_reference_score_K(X: np.ndarray) -> None:
    from vendi_score import vendi

    K = _cos_gram(X)
    assert vendi_score(X) == pytest.approx(vendi.score_K(K, q=1), rel=1e-7)
    assert vendi_score(X, q=2.0) == pytest.approx(vendi.score_K(K, q=2), rel=1e-7)
    assert vendi_score(X, q=0.5) == pytest.approx(vendi.score_K(K, q=0.5), rel=1e-5)
    # the reference spells infinity "inf" (float inf gives nan there)
    assert vendi_score(X, q=math.inf) == pytest.approx(vendi.score_K(K, q="inf"), rel=1e-7)
    assert vendi_score(X, q="inf") == pytest.approx(vendi_score(X, q=math.inf))  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [1.0, 2.0, 0.5])
def test_vendi_dual_matches_reference_score_dual(q: float) -> None:
    from vendi_score import vendi

    ref = vendi.score_dual(TALL.astype(np.float64), q=q)
    assert vendi_score(TALL, q=q) == pytest.approx(ref, rel=1e-5)
    # primal and dual agree in our implementation (same nonzero spectrum)
    assert vendi_score(TALL, q=q) == pytest.approx(vendi.score_K(_cos_gram(TALL), q=q), rel=1e-5)


# --- nearest-neighbour model counts -------------------------------------------


def test_nn_model_counts_two_tight_clusters() -> None:
    # model a near e1, model b near e2: the 2 nearest others are own-model,
    # the 3rd neighbour is the first from the other model.
    rng = np.random.default_rng(0)
    A = np.array([1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(3, 3))
    B = np.array([0.0, 1.0, 0.0]) + 0.01 * rng.normal(size=(3, 3))
    X = np.vstack([A, B])
    counts = nearest_neighbour_model_counts(X, ["a"] * 3 + ["b"] * 3, j_max=6)
    assert np.allclose(counts[:5], [1.0, 1.0, 2.0, 2.0, 2.0])
    assert math.isnan(counts[5])  # only 5 other responses exist


def test_nn_model_counts_match_bruteforce() -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(30, 5))
    labels = rng.choice(["m1", "m2", "m3", "m4"], size=30)
    S = _cos_gram(X)
    expected = np.zeros(10)
    for i in range(30):
        others = sorted((j for j in range(30) if j != i), key=lambda j: -S[i, j])
        for jj in range(1, 11):
            expected[jj - 1] += len({labels[k] for k in others[:jj]})
    expected /= 30
    got = nearest_neighbour_model_counts(X, labels, 10)
    assert np.allclose(got, expected)
    assert np.all(np.diff(got) >= 0)


def test_nn_model_counts_break_ties_by_index_with_duplicate_responses() -> None:
    """Identical answers (common in a hivemind) give tied cosines: the nearest are the lowest
    indices among the tied, as a brute-force stable sort picks them."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 8))
    X = base[rng.integers(0, 6, size=40)]  # 40 responses, 6 distinct texts: ties everywhere
    labels = rng.choice(["m1", "m2", "m3", "m4", "m5"], size=40)
    S = _cos_gram(X)
    expected = np.zeros(25)
    for i in range(40):
        others = sorted((j for j in range(40) if j != i), key=lambda j: (-round(S[i, j], 12), j))
        for jj in range(1, 26):
            expected[jj - 1] += len({labels[k] for k in others[:jj]})
    expected /= 40
    got = nearest_neighbour_model_counts(X, labels, 25)
    np.testing.assert_allclose(got, expected)
    keys = -np.round(rng.normal(size=(50, 200)), 1)  # few distinct keys per row
    np.testing.assert_array_equal(_nearest_in_rows(keys, 30), np.argsort(keys, axis=1, kind="stable")[:, :30])


def test_intra_inter_gap_positive_when_models_differ() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 32))
    X = np.vstack([c + 0.1 * rng.normal(size=(5, 32)) for c in centres])
    labels = np.repeat(["a", "b", "c"], 5)
    gap = intra_inter_gap(X, labels)
    S = _cos_gram(X)
    blocks = np.split(np.arange(15), 3)
    intra = np.mean([S[np.ix_(r, r)][np.triu_indices(5, 1)].mean() for r in blocks])
    inter = np.mean([S[np.ix_(blocks[a], blocks[b])].mean() for a, b in [(0, 1), (0, 2), (1, 2)]])
    assert gap == pytest.approx(intra - inter)
    assert gap > 0.5
    assert math.isnan(intra_inter_gap(X, ["a"] * 15))


# --- NLI ----------------------------------------------------------------------


def test_nli_diversity_uses_both_directions() -> None:
    calls: list[tuple[str, str]] = []

    def scorer(a: str, b: str) -> tuple[float, float]:
        calls.append((a, b))
        if a == b:
            return 1.0, 0.0
        return (0.8, 0.0) if a < b else (0.0, 0.4)  # asymmetric on purpose

    assert nli_diversity(["x", "x", "x"], scorer) == pytest.approx(0.0)
    # pair sim = ((0.8 - 0) + (0 - 0.4)) / 2 = 0.2 -> diversity 0.8
    assert nli_diversity(["p", "q"], scorer) == pytest.approx(0.8)
    assert ("p", "q") in calls and ("q", "p") in calls
    assert math.isnan(nli_diversity(["only"], scorer))


# --- equivalence classes --------------------------------------------------------


def test_equivalence_classes_compare_with_first_member_only() -> None:
    # same(0,1) and same(1,2) but not same(0,2): 2 joins a new class because
    # it is compared with the class representative 0, not with 1.
    edges = {(0, 1), (1, 2), (3, 0)}

    def same(i: int, j: int) -> bool:
        return (i, j) in edges or (j, i) in edges

    labels = equivalence_classes(4, same)
    assert labels == [0, 0, 1, 0]
    assert n_distinct(labels) == 2
    assert equivalence_classes(0, same) == []


def test_cosine_equivalence_threshold() -> None:
    X = np.array([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.05, 0.99]])
    labels = equivalence_classes(4, cosine_equivalence(X, threshold=0.95))
    assert labels == [0, 0, 1, 1]
    assert equivalence_classes(4, cosine_equivalence(X, threshold=-1.0)) == [0, 0, 0, 0]


def test_threshold_classes_are_the_greedy_partition_of_the_same_relation() -> None:
    """The matrix form gives `equivalence_classes`' labels, non-transitive relations included."""
    from hivemind.metrics.classes import threshold_classes

    edges = {(0, 1), (1, 2), (3, 0)}
    same = np.array([[(i, j) in edges or (j, i) in edges for j in range(4)] for i in range(4)])
    assert threshold_classes(same) == [0, 0, 1, 0]
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6, 16))[rng.integers(0, 6, 60)] + 0.6 * rng.normal(size=(60, 16))
    for t in (0.3, 0.6, 0.8, 0.95):
        labels = threshold_classes(cosine_matrix(X) >= t)
        assert labels == equivalence_classes(60, cosine_equivalence(X, threshold=t))
    assert len(set(threshold_classes(cosine_matrix(X) >= 0.6))) not in (1, 60)  # a real partition
    assert threshold_classes(np.zeros((0, 0), bool)) == []


def test_semantic_entropy() -> None:
    assert semantic_entropy([0, 0, 0, 0]) == 0.0
    assert semantic_entropy([0, 1, 2, 3]) == pytest.approx(math.log(4))
    assert semantic_entropy(np.array([0, 0, 1, 1])) == pytest.approx(math.log(2))
    p = np.array([3, 1]) / 4
    assert semantic_entropy(["a", "b", "a", "a"]) == pytest.approx(-(p * np.log(p)).sum())
    assert math.isnan(semantic_entropy([]))
