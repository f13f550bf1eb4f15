"""Vector index, emulated range search and near-duplicate pairs, against brute-force numpy."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from hivemind.vectors.index import (
    VectorIndex,
    exact_cosines,
    gpu_available,
    near_duplicate_pairs,
)
from tests.conftest import require  # noqa: E402

require("faiss", "faiss (pip install faiss-cpu)")


def unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def canonical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force similarity matrix with the index's definition (float64, then float32)."""
    return (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.float32)


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Random unit vectors with near-duplicate clusters and exact copies."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 8, 1), dim))
    rows = centers[rng.integers(0, centers.shape[0], n)] + rng.uniform(0.0, 0.6, (n, 1)) * (
        rng.standard_normal((n, dim))
    )
    rows[n // 2 : n // 2 + 10] = rows[:10]  # exact duplicates
    return unit(rows)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    corpus = clustered(700, 32, seed=1)
    rng = np.random.default_rng(2)
    queries = np.concatenate([corpus[rng.choice(700, 150, replace=False)], clustered(90, 32, 3)])
    return corpus, queries


def test_gpu_available_follows_faiss_and_decides_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    expected = int(faiss.get_num_gpus()) > 0 if hasattr(faiss, "get_num_gpus") else False
    assert gpu_available() is expected
    assert VectorIndex(8).on_gpu is expected  # use_gpu=None: a GPU exactly when faiss sees one
    assert VectorIndex(8, use_gpu=False).on_gpu is False
    if not expected:
        with pytest.raises(RuntimeError, match="no GPU"):
            VectorIndex(8, use_gpu=True)

    def broken() -> int:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(faiss, "get_num_gpus", broken, raising=False)
    assert gpu_available() is False  # a broken driver means CPU, not a crash
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    assert gpu_available() is True


def test_exact_cosines_is_order_independent() -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng.standard_normal((50, 384))), unit(rng.standard_normal((50, 384)))
    expected = np.diag(canonical(a, b))
    np.testing.assert_array_equal(exact_cosines(a, b), expected)
    np.testing.assert_array_equal(exact_cosines(a[::-1].copy(), b[::-1].copy()), expected[::-1])


def test_search_matches_numpy(data: tuple[np.ndarray, np.ndarray]) -> None:
    corpus, queries = data
    index = VectorIndex(32, use_gpu=False)
    index.add(corpus[:300])
    index.add(corpus[300:])
    assert index.ntotal == 700
    sims, ids = index.search(queries, 5)
    brute = canonical(queries, corpus)
    assert ids.shape == (240, 5) and ids.dtype == np.int64
    np.testing.assert_allclose(sims, np.take_along_axis(brute, ids, axis=1), atol=1e-5)
    np.testing.assert_allclose(sims[:, 0], brute.max(axis=1), atol=1e-5)
    assert index.search(queries[:3], 10_000)[0].shape == (3, 700)  # k clipped to ntotal


def edge_thresholds(brute: np.ndarray) -> list[float]:
    """Plain values, values equal to actual similarities, and one float32 step above them."""
    values = np.sort(brute.ravel())
    picked = [values[-1], values[-25], values[-300], values[len(values) // 2], values[0]]
    above = [np.nextafter(v, np.float32(2)) for v in picked]
    plain = [-1.0, -0.5, 0.0, 0.5, 0.9, 0.99, 1.0, 1.5]
    return plain + [float(v) for v in picked + above]


@pytest.mark.parametrize(
    "options",
    [
        {"initial_k": 1, "batch_size": 64},  # many doubling rounds, many query batches
        {"initial_k": 4, "max_k": 8, "batch_size": 100},  # capped: exact CPU fallback
        {"initial_k": 16, "batch_size": 4096},
    ],
)
def test_emulated_range_search_equals_cpu_range_search(
    data: tuple[np.ndarray, np.ndarray], options: dict[str, int]
) -> None:
    corpus, queries = data
    native = VectorIndex(32, use_gpu=False)
    emulated = VectorIndex(32, use_gpu=False, emulate_range=True, **options)
    native.add(corpus)
    emulated.add(corpus)
    brute = canonical(queries, corpus)
    for threshold in edge_thresholds(brute):
        expected_rows, expected_ids = np.nonzero(brute >= np.float32(threshold))
        a = native.range_search(queries, threshold)
        b = emulated.range_search(queries, threshold)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.sims, b.sims)
        np.testing.assert_array_equal(a.rows, expected_rows)  # both sorted by (row, id)
        np.testing.assert_array_equal(a.ids, expected_ids)
        np.testing.assert_array_equal(a.sims, brute[a.rows, a.ids])


def test_range_search_does_not_depend_on_batch_shape() -> None:
    # Large enough that FAISS's BLAS path rounds a query's sims differently depending on the
    # batch it sits in; canonical re-scoring makes every configuration agree bit for bit.
    corpus = clustered(3000, 384, seed=4)
    queries = corpus[:500]
    brute = canonical(queries, corpus)
    configs = [
        {"batch_size": 500},
        {"batch_size": 7},
        {"emulate_range": True, "initial_k": 2, "batch_size": 500},
        {"emulate_range": True, "initial_k": 8, "batch_size": 33},
    ]
    threshold = float(np.sort(brute.ravel())[-5000])
    results = []
    for config in configs:
        index = VectorIndex(384, use_gpu=False, **config)  # type: ignore[arg-type]
        index.add(corpus)
        results.append(index.range_search(queries, threshold))
    rows, ids = np.nonzero(brute >= np.float32(threshold))
    for hits in results:
        np.testing.assert_array_equal(hits.rows, rows)
        np.testing.assert_array_equal(hits.ids, ids)
        np.testing.assert_array_equal(hits.sims, brute[rows, ids])


def test_range_search_on_small_batches_and_empty_index(data: tuple[np.ndarray, np.ndarray]) -> None:
    corpus, queries = data
    index = VectorIndex(32, use_gpu=False, emulate_range=True, initial_k=2)
    assert len(index.range_search(queries, 0.5)) == 0  # nothing added yet
    index.add(corpus)
    brute = canonical(queries[:3], corpus)
    hits = index.range_search(queries[:3], 0.7)
    per_query = hits.per_query(3)
    for row, ids, sims in per_query:
        np.testing.assert_array_equal(ids, np.flatnonzero(brute[row] >= np.float32(0.7)))
        np.testing.assert_array_equal(sims, brute[row, ids])


def test_rejects_vectors_that_are_not_unit() -> None:
    index = VectorIndex(4, use_gpu=False)
    with pytest.raises(ValueError, match="L2-normalised"):
        index.add(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="dimension"):
        index.add(unit(np.ones((2, 5))))


def brute_pairs(
    vectors: np.ndarray, deployments: list[str], groups: list[str] | None, threshold: float
) -> pl.DataFrame:
    sims = canonical(vectors, vectors)
    rows = [
        (i, j, float(sims[i, j]))
        for i, j in itertools.combinations(range(len(vectors)), 2)
        if deployments[i] != deployments[j]
        and (groups is None or groups[i] == groups[j])
        and sims[i, j] >= np.float32(threshold)
    ]
    schema = {"i": pl.Int64, "j": pl.Int64, "cosine": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


@pytest.fixture(scope="module")
def responses() -> tuple[np.ndarray, list[str], list[str]]:
    """8 queries x 4 deployments x 5 samples: some answers nearly identical across models,
    and one answer copied verbatim into another query (a cross-query duplicate)."""
    rng = np.random.default_rng(7)
    vectors, deployments, groups = [], [], []
    for query in range(8):
        topic = rng.standard_normal(48)
        for deployment in ("gpt", "llama", "qwen", "gemma"):
            for _ in range(5):
                vectors.append(topic + rng.uniform(0.05, 1.2) * rng.standard_normal(48))
                deployments.append(deployment)
                groups.append(f"q{query}")
    matrix = unit(np.array(vectors))
    matrix[45] = matrix[3]  # q2/llama repeats q0/gpt word for word
    return matrix, deployments, groups


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("scope", ["within", "corpus"])
def test_near_duplicate_pairs_match_brute_force(
    responses: tuple[np.ndarray, list[str], list[str]], threshold: float, scope: str
) -> None:
    vectors, deployments, groups = responses
    use_groups = groups if scope == "within" else None
    found = near_duplicate_pairs(vectors, deployments, use_groups, threshold, use_gpu=False)
    assert found.columns == ["i", "j", "cosine"]
    assert found.equals(brute_pairs(vectors, deployments, use_groups, threshold))
    assert (found["i"] < found["j"]).all()
    dep = np.array(deployments)
    assert (dep[found["i"].to_numpy()] != dep[found["j"].to_numpy()]).all()


def test_within_query_scope_is_narrower_than_corpus(
    responses: tuple[np.ndarray, list[str], list[str]],
) -> None:
    vectors, deployments, groups = responses
    within = near_duplicate_pairs(vectors, deployments, groups, 0.999)
    corpus = near_duplicate_pairs(vectors, deployments, None, 0.999)
    assert (3, 45) in set(corpus.select("i", "j").iter_rows())
    assert (3, 45) not in set(within.select("i", "j").iter_rows())
    assert set(within.select("i", "j").iter_rows()) <= set(corpus.select("i", "j").iter_rows())


def test_same_deployment_pairs_are_never_reported() -> None:
    vectors = unit(np.ones((4, 8)))  # all identical
    found = near_duplicate_pairs(vectors, ["a", "a", "b", "b"], None, 0.9, use_gpu=False)
    assert sorted(found.select("i", "j").iter_rows()) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    one_model = near_duplicate_pairs(vectors, ["a"] * 4, ["q"] * 4, 0.9)
    assert one_model.height == 0 and one_model.schema["cosine"] == pl.Float64
    with pytest.raises(ValueError, match="entries"):
        near_duplicate_pairs(vectors, ["a", "b"], None, 0.9)


def test_ivf_corpus_search_finds_exact_pairs_with_exact_cosines() -> None:
    """The approximate IVF search returns a subset of the exact pairs with the same canonical
    cosines, and on planted near-duplicates (two models repeating one answer) it finds nearly
    all of them; an unknown index kind is refused by name."""
    from hivemind.vectors.index import near_duplicate_pairs

    rng = np.random.default_rng(3)
    n, dim = 6000, 48
    X = rng.standard_normal((n, dim)).astype(np.float32)
    X[1::20] = X[0::20] + 0.05 * rng.standard_normal((n // 20, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    deployments = [f"m{i % 2}" for i in range(n)]
    exact = near_duplicate_pairs(X, deployments, None, 0.9, use_gpu=False)
    approx = near_duplicate_pairs(X, deployments, None, 0.9, use_gpu=False, index="ivf")
    assert exact.height >= n // 20
    found = approx.join(exact, on=["i", "j"], how="left", suffix="_exact")
    assert found["cosine_exact"].null_count() == 0  # nothing the exact search does not find
    assert (found["cosine"] == found["cosine_exact"]).all()
    assert approx.height >= 0.9 * exact.height
    with pytest.raises(ValueError, match="ivf"):
        near_duplicate_pairs(X, deployments, None, 0.9, index="hnsw")


def test_ivf_corpus_search_finds_what_faiss_ivf_range_search_finds() -> None:
    """The list-by-list matrix products find exactly the pairs FAISS's own IVF range search
    finds with the same lists and probes, misses included (few probes: it misses many)."""
    import faiss

    from hivemind.vectors.index import SLACK, _ivf_lists, near_duplicate_pairs

    rng = np.random.default_rng(5)
    n, dim, nprobe = 4000, 32, 3
    X = rng.standard_normal((n, dim)).astype(np.float32)
    X[1::10] = X[0::10] + 0.4 * rng.standard_normal((n // 10, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    deployments = [f"m{i % 3}" for i in range(n)]
    ours = near_duplicate_pairs(X, deployments, None, 0.8, use_gpu=False, index="ivf", nprobe=nprobe)
    exact = near_duplicate_pairs(X, deployments, None, 0.8, use_gpu=False)

    stored, visits, nlist = _ivf_lists(X, nprobe)  # FAISS itself, same training, same probes
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)
    ivf.train(np.ascontiguousarray(X[np.sort(sample)]))
    ivf.add(X)
    ivf.nprobe = nprobe
    lims, _, ids = ivf.range_search(X, float(np.float32(0.8 - SLACK)))
    rows = np.repeat(np.arange(n), np.diff(lims).astype(np.int64))
    cos = np.einsum("ij,ij->i", X[rows].astype(np.float64), X[ids].astype(np.float64)).astype(np.float32)
    dep = np.arange(n) % 3
    keep = (rows < ids) & (dep[rows] != dep[ids]) & (cos >= np.float32(0.8))
    theirs = sorted(zip(rows[keep].tolist(), ids[keep].tolist()))

    assert sorted(ours.select("i", "j").iter_rows()) == theirs
    assert 0 < len(theirs) < exact.height  # few probes miss pairs: the comparison has teeth
    assert np.bincount(stored, minlength=nlist).min() >= 0 and visits.shape == (n, nprobe)


def test_blocked_exact_search_finds_what_faiss_flat_range_search_finds() -> None:
    """The CPU exact corpus search (upper-triangle matrix products, blocks smaller than the
    corpus so block edges and the diagonal block are crossed) gives FAISS's flat range search's
    pairs and cosines, pair for pair, on a corpus with many pairs near the threshold."""
    from hivemind.vectors.index import SLACK, VectorIndex, _blocked_range

    rng = np.random.default_rng(8)
    n, dim = 3000, 24
    X = rng.standard_normal((n, dim)).astype(np.float32)
    X[1::3] = X[0::3] + 0.35 * rng.standard_normal((n // 3, dim)).astype(np.float32)
    X = unit(X)
    deps = np.arange(n) % 4
    flat = VectorIndex(dim, use_gpu=False)
    flat.add(X)
    hits = flat.range_search(X, 0.8)
    keep = (hits.rows < hits.ids) & (deps[hits.rows] != deps[hits.ids])
    theirs = sorted(zip(hits.rows[keep].tolist(), hits.ids[keep].tolist(), hits.sims[keep].tolist()))
    i, j, sims = _blocked_range(X, deps, np.float32(0.8), rows=256, columns=700)
    ours = sorted(zip(i.tolist(), j.tolist(), sims.tolist()))
    assert ours == theirs and len(ours) > 300
    near = [s for *_, s in ours if s < 0.8 + 10 * SLACK]
    assert near  # pairs just above the threshold: the refinement was exercised
    assert near_duplicate_pairs(X, [f"m{d}" for d in deps], None, 0.8, use_gpu=False).height == len(ours)
