"""The vectorised ensemble draws and gap permutations give the previous implementation's numbers.

`_previous_*` below are the implementations these replaced (commit fb08e27), kept here only as
the reference: the ensemble table and the permutation gaps within 1e-12 (same draws, same Gram
matrices; only the order of floating-point sums changed, in the compiled loops of
`hivemind.metrics.compiled`) with the same p-values, on fixed clustered inputs with equal K and, for the fallback, unequal counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from hivemind.analysis import significance
from hivemind.analysis.data import Group
from hivemind.analysis.ensemble import draw_diversity, ensemble_per_query
from hivemind.analysis.significance import _gap_from_blocks, gap_permutation_test, group_gap_permutations
from hivemind.metrics import semantic
from hivemind.metrics.semantic import normalize_rows


def _previous_ensemble_per_query(
    groups: list[Group], vectors: np.ndarray, draws: int = 24, seed: int = 0
) -> pl.DataFrame:
    X = normalize_rows(vectors)
    rng = np.random.default_rng(seed)
    records: list[tuple[Any, ...]] = []
    for g in groups:
        K, D = g.k, len(g.deployments)
        if K < 1:
            continue
        rows = g.all_rows()
        S = np.clip(X[rows] @ X[rows].T, -1.0, 1.0)
        within = np.argsort(rng.random((draws, D, K)), axis=2)
        single_idx = within + (np.arange(D) * K)[None, :, None]
        dep_rank = np.argsort(np.argsort(rng.random((draws, D)), axis=1), axis=1)
        sample_rank = np.argsort(np.argsort(rng.random((draws, D, K)), axis=2), axis=2)
        key = sample_rank * D + dep_rank[:, :, None]
        mixed_order = np.argsort(key.reshape(draws, D * K), axis=1)
        for k in range(1, K + 1):
            idx = single_idx[:, :, :k].reshape(draws * D, k)
            dist, vendi = draw_diversity(S[idx[:, :, None], idx[:, None, :]])
            records.append(
                (g.query_id, g.category, g.condition, k, "single", float(dist.mean()), float(vendi.mean()), 1)
            )
            if D >= 2:
                idx = mixed_order[:, :k]
                dist, vendi = draw_diversity(S[idx[:, :, None], idx[:, None, :]])
                records.append(
                    (
                        g.query_id,
                        g.category,
                        g.condition,
                        k,
                        "mixed",
                        float(dist.mean()),
                        float(vendi.mean()),
                        min(k, D),
                    )
                )
    schema = {
        "query_id": pl.Utf8,
        "category": pl.Utf8,
        "condition": pl.Utf8,
        "k": pl.Int64,
        "arm": pl.Utf8,
        "mean_distance": pl.Float64,
        "vendi": pl.Float64,
        "n_deployments_used": pl.Int64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def _previous_group_gap_permutations(
    S: np.ndarray, labels: np.ndarray, n_perm: int, rng: np.random.Generator, chunk: int = 256
) -> tuple[float, np.ndarray]:
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    D = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=D).astype(np.float64)
    d = np.diag(S).copy()

    def gaps(label_sets: np.ndarray) -> np.ndarray:
        P = np.zeros((label_sets.shape[0], codes.size, D))
        np.put_along_axis(P, label_sets[:, :, None], 1.0, axis=2)
        Pt = P.transpose(0, 2, 1)
        return _gap_from_blocks(Pt @ S @ P, Pt @ d, counts)

    observed = float(gaps(codes[None, :])[0])
    out = np.empty(n_perm)
    for start in range(0, n_perm, chunk):
        size = min(chunk, n_perm - start)
        perms = np.argsort(rng.random((size, codes.size)), axis=1)
        out[start : start + size] = gaps(codes[perms])
    return observed, out


def _previous_gap_permutation_test(
    groups: list[Group], vectors: np.ndarray, n_perm: int = 1000, seed: int = 0
) -> tuple[float, float]:
    X = normalize_rows(vectors)
    rng = np.random.default_rng(seed)
    total_obs, total_perm, n = 0.0, np.zeros(n_perm), 0
    for g in groups:
        if len(g.deployments) < 2 or g.k < 2:
            continue
        rows = g.all_rows()
        S = np.clip(X[rows] @ X[rows].T, -1.0, 1.0)
        observed, perms = _previous_group_gap_permutations(S, g.labels(), n_perm, rng)
        total_obs += observed
        total_perm += perms
        n += 1
    if n == 0:
        return float("nan"), float("nan")
    observed = total_obs / n
    tol = 1e-12 * max(1.0, abs(observed))
    hits = int(np.sum(total_perm / n >= observed - tol))
    return observed, (1.0 + hits) / (1.0 + n_perm)


def clustered_study(
    queries: int, deployments: int, k: int, dim: int = 32, seed: int = 7
) -> tuple[list[Group], np.ndarray]:
    """Groups and vectors: query centre + deployment offset + noise, so intra > inter."""
    rng = np.random.default_rng(seed)
    groups, blocks, row = [], [], 0
    for q in range(queries):
        centre = rng.standard_normal(dim)
        rows = []
        for _ in range(deployments):
            offset = rng.standard_normal(dim) * 0.6
            blocks.append(centre + offset + rng.standard_normal((k, dim)) * (0.5 + 0.1 * q))
            rows.append(np.arange(row, row + k, dtype=np.int64))
            row += k
        names = [f"m{d}" for d in range(deployments)]
        groups.append(Group(f"q{q}", "default", "creative", names, rows))
    return groups, np.vstack(blocks).astype(np.float32)


@pytest.mark.parametrize("deployments,k", [(4, 6), (3, 2), (5, 9), (1, 5)])
def test_ensemble_per_query_equals_previous(deployments: int, k: int) -> None:
    """Same draws, same Gram matrices; the compiled loop sums in another order: within 1e-12."""
    groups, vectors = clustered_study(3, deployments, k)
    new = ensemble_per_query(groups, vectors, draws=7, seed=3)
    old = _previous_ensemble_per_query(groups, vectors, draws=7, seed=3)
    assert new.height == old.height > 0
    values = ["mean_distance", "vendi"]
    assert new.drop(values).equals(old.drop(values))
    for column in values:
        np.testing.assert_allclose(new[column].to_numpy(), old[column].to_numpy(), rtol=1e-12, atol=1e-12)


def test_gap_permutations_equal_previous_with_equal_k(monkeypatch: pytest.MonkeyPatch) -> None:
    groups, vectors = clustered_study(4, 5, 6)
    X = normalize_rows(vectors)
    for g in groups:
        rows = g.all_rows()
        S = np.clip(X[rows] @ X[rows].T, -1.0, 1.0)
        obs_old, perms_old = _previous_group_gap_permutations(S, g.labels(), 300, np.random.default_rng(11))
        # the compiled gather of the intra blocks, or the one-hot matmul (forced either way)
        for gather_cost in (0, 10**9):
            monkeypatch.setattr(significance, "GATHER_COST", gather_cost)
            obs_new, perms_new = group_gap_permutations(
                S, g.labels(), 300, np.random.default_rng(11), unit_rows=X[rows]
            )
            assert obs_new == pytest.approx(obs_old, abs=1e-12)
            np.testing.assert_allclose(perms_new, perms_old, rtol=0, atol=1e-12)
        assert obs_old > np.median(perms_old)  # the design has a real gap: the test is not vacuous


def test_gap_permutations_equal_previous_with_labels_in_any_order() -> None:
    """The compiled gather buckets rows by label itself: labels interleaved, not in blocks."""
    groups, vectors = clustered_study(1, 4, 7)
    g = groups[0]
    shuffled = np.random.default_rng(2).permutation(g.all_rows().size)
    rows, labels = g.all_rows()[shuffled], np.asarray(g.labels())[shuffled]
    X = normalize_rows(vectors[rows])
    S = np.clip(X @ X.T, -1.0, 1.0)
    new = group_gap_permutations(S, labels, 300, np.random.default_rng(4))
    old = _previous_group_gap_permutations(S, labels, 300, np.random.default_rng(4))
    assert new[0] == pytest.approx(old[0], abs=1e-12)
    np.testing.assert_allclose(new[1], old[1], rtol=0, atol=1e-12)
    assert np.unique(np.round(new[1], 9)).size > 200  # permutations differ: the shuffle is real


def test_gap_permutations_with_unequal_counts_equal_previous() -> None:
    groups, vectors = clustered_study(1, 3, 8)
    g = groups[0]
    rows = np.concatenate([g.rows[0][:3], g.rows[1], g.rows[2][:5]])
    labels = np.concatenate([np.zeros(3, int), np.ones(8, int), np.full(5, 2)])
    X = normalize_rows(vectors[rows])
    S = np.clip(X @ X.T, -1.0, 1.0)
    new = group_gap_permutations(S, labels, 200, np.random.default_rng(5))
    old = _previous_group_gap_permutations(S, labels, 200, np.random.default_rng(5))
    assert new[0] == pytest.approx(old[0], abs=1e-12)
    np.testing.assert_allclose(new[1], old[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_gap_permutation_test_equals_previous(shared: bool) -> None:
    groups, vectors = clustered_study(6, 4, 5)
    if shared:  # no deployment signal: every deployment's responses drawn around the same centre
        rng = np.random.default_rng(1)
        for g in groups:
            centre = vectors[g.rows[0][0]].copy()
            for r in g.rows:
                vectors[r] = centre + rng.standard_normal((r.size, vectors.shape[1])).astype(np.float32)
    new = gap_permutation_test(groups, vectors, n_perm=500, seed=2)
    old = _previous_gap_permutation_test(groups, vectors, n_perm=500, seed=2)
    assert new[0] == pytest.approx(old[0], abs=1e-12)
    assert new[1] == old[1]
    assert (new[1] < 0.05) != shared


def test_self_bleu_shared_counts_equal_sacrebleu_on_varied_sets() -> None:
    """Counting each text's n-grams once (top-2 counts per n-gram) scores like sacrebleu's
    one-sentence function called per hypothesis: repeated n-grams held by one text alone or by
    several (ties), duplicates, punctuation, length ties for the brevity penalty."""
    import sacrebleu

    from hivemind.metrics.lexical import self_bleu

    rng = np.random.default_rng(4)
    words = ["the", "cat", "sat", "on", "a", "mat", "mat.", "Dog,", "ran", "!", "very", "very"]
    for trial in range(25):
        k = int(rng.integers(2, 8))
        texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 14)))) for _ in range(k)]
        if trial % 5 == 0:
            texts[1] = texts[0]  # an exact duplicate: both texts hold the same maxima
        expected = (
            np.mean(
                [sacrebleu.sentence_bleu(texts[i], [t for j, t in enumerate(texts) if j != i]).score for i in range(k)]
            )
            / 100.0
        )
        assert self_bleu(texts) == pytest.approx(expected, abs=1e-12), texts


def test_analysis_names_its_corpus_index_and_ivf_agrees_on_a_small_corpus() -> None:
    """`corpus_index="ivf"` reaches the corpus-wide search and the summary says it was used; a
    corpus this small gets one inverted list, so the approximate search is exhaustive and its
    table equals the exact one."""
    from hivemind.analysis import analyze_responses
    from tests.test_analysis import two_deployments

    responses, X = two_deployments(shared=True, rho=0.97).prepared()
    results = {
        index: analyze_responses(
            responses, X, n_boot=50, n_perm=50, draws=2, lexical=False, corpus_index=index, threshold=0.8
        )
        for index in ("exact", "ivf")
    }
    assert results["ivf"].summary["near_duplicate_corpus_index"] == "ivf"
    assert results["exact"].summary["near_duplicate_corpus_index"] == "exact"
    exact = results["exact"].tables["near_duplicates_corpus"]
    assert exact.height > 0
    assert results["ivf"].tables["near_duplicates_corpus"].equals(exact)
    with pytest.raises(ValueError, match="unknown corpus index"):
        analyze_responses(responses, X, n_boot=10, n_perm=10, draws=2, lexical=False, corpus_index="hnsw")


def test_sparse_ensemble_curves_keep_every_value_they_compute() -> None:
    """`ensemble_k="sparse"` computes fewer k from the same draws: each of its rows is the full
    computation's row, bit for bit; the hivemind gap (at k* = number of deployments) is unchanged."""
    from hivemind.analysis import analyze_responses
    from hivemind.analysis.ensemble import sparse_ks
    from tests.test_analysis import two_deployments

    groups, vectors = clustered_study(3, 3, 20)
    full = ensemble_per_query(groups, vectors, draws=5, seed=3, ensemble_k="all")
    sparse = ensemble_per_query(groups, vectors, draws=5, seed=3, ensemble_k="sparse")
    assert sparse["k"].unique().sort().to_list() == sparse_ks(20, 3) == [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20]
    assert sparse.equals(full.filter(pl.col("k").is_in(sparse_ks(20, 3))))
    with pytest.raises(ValueError, match="unknown ensemble_k"):
        ensemble_per_query(groups, vectors, ensemble_k="every")

    responses, X = two_deployments(shared=True, rho=0.9, k=9).prepared()  # sparse k: 1..6, 8, 9
    results = {
        k: analyze_responses(responses, X, n_boot=50, n_perm=50, draws=3, lexical=False, ensemble_k=k)
        for k in ("all", "sparse")
    }
    assert results["sparse"].summary["ensemble_k"] == "sparse" and results["all"].summary["ensemble_k"] == "all"
    assert results["sparse"].tables["hivemind_gap"].equals(results["all"].tables["hivemind_gap"])
    curve, every = (results[k].tables["ensemble"].drop("p_holm") for k in ("sparse", "all"))
    assert 0 < curve.height < every.height  # some k left out, the rest as they were
    assert curve.equals(every.filter(pl.col("k").is_in(curve["k"].unique().to_list())))


def test_ensemble_k_auto_is_every_k_up_to_16_and_sparse_beyond() -> None:
    """The default `auto` computes every k while K <= 16 (the curve a reader expects) and the
    sparse set beyond (a sixth of the Vendi cost at large K); the summary names what it computed."""
    from hivemind.analysis import analyze_responses
    from hivemind.analysis.ensemble import sparse_ks
    from hivemind.inputs.spec import AnalysisOptions
    from tests.test_analysis import two_deployments

    assert AnalysisOptions().ensemble_k == "auto"
    for K, expected in ((16, list(range(1, 17))), (17, sparse_ks(17, 3))):
        groups, vectors = clustered_study(3, 2, K)
        auto = ensemble_per_query(groups, vectors, draws=2, seed=1)
        assert auto["k"].unique().sort().to_list() == expected
    assert sparse_ks(17, 3) != list(range(1, 18))
    responses, X = two_deployments(shared=True, rho=0.9, k=9).prepared()
    result = analyze_responses(responses, X, n_boot=20, n_perm=20, draws=2, lexical=False)
    assert result.summary["ensemble_k"] == "all"
    assert result.tables["ensemble"]["k"].unique().sort().to_list() == list(range(1, 10))


def test_random_pair_baseline_is_the_same_for_any_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The baseline normalises the corpus a block at a time (no float64 copy of 1M vectors): the
    sums are added in the same order, so the block size changes no bit."""
    from hivemind.analysis import similarity
    from tests.test_analysis import two_deployments

    responses, X = two_deployments(shared=False, queries=9, k=7).prepared()
    whole = similarity.random_pair_baseline(responses, X, seed=3, n_boot=100)
    monkeypatch.setattr(semantic, "NORMALISE_BLOCK_ROWS", 5)
    assert similarity.random_pair_baseline(responses, X, seed=3, n_boot=100).equals(whole)
    assert whole["n_queries"].item() == 9 and whole["similarity"].is_not_null().all()


def test_the_unit_rows_for_the_pair_search_are_the_same_for_any_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from hivemind.analysis import duplicate_search

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((23, 8)).astype(np.float32)
    vectors[[3, 17]] = 0.0  # no direction: left out
    units, kept = duplicate_search._embedded(vectors)
    assert kept.tolist() == [i for i in range(23) if i not in (3, 17)]
    assert np.allclose(np.linalg.norm(units, axis=1), 1.0, atol=1e-6) and units.dtype == np.float32
    monkeypatch.setattr(semantic, "NORMALISE_BLOCK_ROWS", 4)
    again, kept_again = duplicate_search._embedded(vectors)
    assert np.array_equal(again, units) and np.array_equal(kept_again, kept)
    empty, none = duplicate_search._embedded(vectors[:0])
    assert empty.shape == (0, 8) and none.size == 0


# --- verbatim overlap: the per-pair block loop it replaced (commit f03ee43) ----------------


def _previous_ngram_matrix(texts: list[str], n: int) -> tuple[Any, np.ndarray]:
    """Binary response x n-gram matrix (scipy CSR) and each response's n-gram count."""
    from scipy.sparse import csr_matrix

    from hivemind.metrics.lexical import ngrams, tokenize

    vocab: dict[tuple[str, ...], int] = {}
    indptr, indices = [0], []
    for text in texts:
        grams = {vocab.setdefault(g, len(vocab)) for g in ngrams(tokenize(text), n)}
        indices.extend(sorted(grams))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    M = csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr)), shape=(len(texts), max(len(vocab), 1))
    )
    return M, np.diff(np.asarray(indptr))


def _previous_verbatim_overlap(groups: list[Group], n: int = 5) -> pl.DataFrame:
    """Shared long n-grams between responses, beside the cosine pairs they mirror.

    For each response pair: Jaccard of their n-gram sets (n = 5 by default), and whether they
    share any n-gram at all. Averaged over the same pairs as `pair_similarity` (intra: i < j
    within a deployment; inter: all cross pairs). Pairs where neither response has an n-gram
    are left out. Columns: query_id, condition, deployment_a, deployment_b, kind,
    ngram_jaccard, share_pairs_sharing.
    """
    records = []
    for g in groups:
        texts = [t for block in g.texts for t in block]
        if not texts:
            continue
        M, sizes = _previous_ngram_matrix(texts, n)
        inter = np.asarray((M @ M.T).todense())
        union = sizes[:, None] + sizes[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            jac = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
        shares = np.where(union > 0, (inter > 0).astype(np.float64), np.nan)
        local, start = [], 0
        for r in g.rows:
            local.append(np.arange(start, start + r.size))
            start += r.size
        for i, a in enumerate(g.deployments):
            for j in range(i, len(g.deployments)):
                if i == j:
                    iu = np.triu_indices(local[i].size, k=1)
                    block_j = jac[np.ix_(local[i], local[i])][iu]
                    block_s = shares[np.ix_(local[i], local[i])][iu]
                else:
                    block_j = jac[np.ix_(local[i], local[j])].ravel()
                    block_s = shares[np.ix_(local[i], local[j])].ravel()
                ok = ~np.isnan(block_j)
                records.append(
                    (
                        g.query_id,
                        g.condition,
                        a,
                        g.deployments[j],
                        "intra" if i == j else "inter",
                        float(block_j[ok].mean()) if ok.any() else None,
                        float(block_s[ok].mean()) if ok.any() else None,
                    )
                )
    schema = {
        "query_id": pl.Utf8,
        "condition": pl.Utf8,
        "deployment_a": pl.Utf8,
        "deployment_b": pl.Utf8,
        "kind": pl.Utf8,
        "ngram_jaccard": pl.Float64,
        "share_pairs_sharing": pl.Float64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def test_verbatim_overlap_equals_previous() -> None:
    """Shared 5-grams by integer n-gram ids and one-hot block sums: the per-block loop's means
    within 1e-12, the same pairs left out (responses without a 5-gram, one empty block)."""
    from hivemind.analysis.similarity import verbatim_overlap

    rng = np.random.default_rng(9)
    words = [f"w{i}" for i in range(30)]
    groups = []
    for q in range(3):
        shared = list(rng.choice(words, 40))
        blocks = []
        for d in range(4):
            texts = []
            for _ in range(6):
                own = list(rng.choice(words, int(rng.integers(0, 40))))
                texts.append(" ".join(shared[: int(rng.integers(0, 40))] + own) if d != 3 or q != 1 else "too short")
            blocks.append(texts)
        rows = [np.arange(24 * q + 6 * d, 24 * q + 6 * d + 6) for d in range(4)]
        groups.append(Group(f"q{q}", "default", "c", [f"m{d}" for d in range(4)], rows, texts=blocks))
    new = verbatim_overlap(groups)
    old = _previous_verbatim_overlap(groups)
    keys = ["query_id", "condition", "deployment_a", "deployment_b", "kind"]
    assert new.select(keys).equals(old.select(keys)) and new.height == 3 * 10
    for column in ("ngram_jaccard", "share_pairs_sharing"):
        assert new[column].is_null().to_list() == old[column].is_null().to_list()
        a, b = new[column].drop_nulls().to_numpy(), old[column].drop_nulls().to_numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    assert new["ngram_jaccard"].is_null().sum() == 1  # q1's m3 pairs: "too short" has no 5-gram
    assert 0 < new["share_pairs_sharing"].drop_nulls().mean() < 1
