"""The analyses on synthetic vectors whose similarities are known exactly.

Equicorrelated design: v_i = sqrt(rho) c + sqrt(1 - rho) e_i with orthonormal c, e_i, so every
pair of distinct responses has cosine rho. Giving each deployment its own c (orthogonal to the
others) makes inter-model cosine exactly 0; sharing one c makes inter == intra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest

from hivemind.analysis import (
    analyze_responses,
    build_groups,
    cluster_deployments,
    deployment_matrix,
    draw_diversity,
    ensemble_curves,
    ensemble_per_query,
    gap_permutation_test,
    hivemind_gap,
    near_duplicates,
    pair_similarity,
    prepare_responses,
    query_similarity,
    random_pair_baseline,
    sign_flip_test,
    similarity_bins,
    verbatim_overlap,
)
from hivemind.analysis.similarity import matrix_array
from hivemind.metrics.semantic import embedding_diversity, intra_inter_gap, vendi_score

FAST = {"n_boot": 200, "n_perm": 200}


class Design:
    """Builds a samples frame and vectors; each call to `add` appends one response."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self.next_axis = 0
        self.rows: list[dict[str, Any]] = []
        self.vectors: list[np.ndarray] = []

    def axis(self) -> np.ndarray:
        v = np.zeros(self.dim)
        v[self.next_axis] = 1.0
        self.next_axis += 1
        return v

    def arm(
        self,
        query: str,
        deployment: str,
        k: int,
        rho: float,
        centre: np.ndarray | None = None,
        condition: str = "default",
        category: str | None = "cat",
        texts: list[str] | None = None,
        answer: str | None = None,
        **extra: Any,
    ) -> np.ndarray:
        """k responses with pairwise cosine rho around `centre` (a fresh axis by default)."""
        centre = self.axis() if centre is None else centre
        for s in range(k):
            self.vectors.append(np.sqrt(rho) * centre + np.sqrt(1 - rho) * self.axis())
            self.rows.append(
                {
                    "query_id": query,
                    "category": category,
                    "query_text": f"text of {query}",
                    "answer": answer,
                    "deployment": deployment,
                    "family": extra.get("family"),
                    "stage": extra.get("stage"),
                    "condition": condition,
                    "sample_index": s,
                    "text": texts[s] if texts else f"{deployment} says {query} number {s}",
                    "error": None,
                }
            )
        return centre

    def prepared(self, **kwargs: Any) -> tuple[pl.DataFrame, np.ndarray]:
        frame = pl.DataFrame(
            self.rows, schema_overrides={"answer": pl.Utf8, "family": pl.Utf8, "stage": pl.Utf8, "category": pl.Utf8}
        )
        responses, _ = prepare_responses(frame, **kwargs)
        key = ["query_id", "condition", "deployment", "sample_index"]
        position = {k: i for i, k in enumerate(frame.select(key).rows())}  # dropped arms have no vector
        keep = [position[k] for k in responses.select(key).rows()]
        return responses, np.asarray(self.vectors, dtype=np.float32)[keep]


def two_deployments(shared: bool, rho: float = 0.6, queries: int = 6, k: int = 4) -> Design:
    d = Design()
    for q in range(queries):
        centre = d.arm(f"q{q}", "a", k, rho)
        d.arm(f"q{q}", "b", k, rho, centre=centre if shared else None)
    return d


def test_prepare_keeps_successful_nonempty_rows_at_equal_k() -> None:
    rows = []
    for dep, n in (("a", 5), ("b", 3), ("c", 1)):
        for s in range(n):
            rows.append(
                {
                    "query_id": "q",
                    "deployment": dep,
                    "condition": "default",
                    "sample_index": s,
                    "text": f"{dep}{s}",
                    "error": None,
                }
            )
    rows.append(
        {
            "query_id": "q",
            "deployment": "b",
            "condition": "default",
            "sample_index": 3,
            "text": None,
            "error": "HTTP 500",
        }
    )
    rows.append(
        {"query_id": "q", "deployment": "b", "condition": "default", "sample_index": 4, "text": "   ", "error": None}
    )
    responses, k = prepare_responses(pl.DataFrame(rows), deployment_order=["b", "a", "c"])
    assert k.row(0, named=True) == {"query_id": "q", "k": 3, "arms_kept": 2, "arms_dropped": 1}
    assert responses["deployment"].to_list() == ["b"] * 3 + ["a"] * 3  # spec order, c dropped (1 < 2)
    assert responses["sample_index"].to_list() == [0, 1, 2, 0, 1, 2]  # lowest indices kept
    assert responses["category"].to_list() == ["uncategorized"] * 6
    assert responses["row"].to_list() == list(range(6))


def test_identical_deployments_have_inter_equal_to_intra() -> None:
    responses, X = two_deployments(shared=True).prepared()
    pairs = pair_similarity(build_groups(responses), X)
    assert pairs.filter(pl.col("kind") == "intra")["similarity"].to_numpy() == pytest.approx(0.6)
    assert pairs.filter(pl.col("kind") == "inter")["similarity"].to_numpy() == pytest.approx(0.6)
    assert query_similarity(pairs)["gap"].to_numpy() == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_deployments_have_zero_inter_and_matrix_diagonal_intra() -> None:
    responses, X = two_deployments(shared=False, rho=0.85).prepared()
    groups = build_groups(responses)
    pairs = pair_similarity(groups, X)
    qs = query_similarity(pairs)
    assert qs["intra"].to_numpy() == pytest.approx(0.85)
    assert qs["inter"].to_numpy() == pytest.approx(0.0, abs=1e-6)
    matrix = deployment_matrix(pairs, n_boot=100)
    M = matrix_array(matrix, "default", ["a", "b"])
    assert M == pytest.approx(np.array([[0.85, 0.0], [0.0, 0.85]]), abs=1e-6)
    bins = similarity_bins(pairs)
    intra_a = bins.filter((pl.col("deployment") == "a") & (pl.col("kind") == "intra")).sort("bin")
    assert intra_a["share"].to_list() == [0.0] * 8 + [1.0, 0.0]  # 0.85 falls in [0.8, 0.9)
    inter_a = bins.filter((pl.col("deployment") == "a") & (pl.col("kind") == "inter")).sort("bin")
    assert inter_a["share"][0] == 1.0 and inter_a["n_queries"][0] == 6


def test_gap_permutation_matches_metric_and_separates_designs() -> None:
    responses, X = two_deployments(shared=False).prepared()
    groups = build_groups(responses)
    observed, p = gap_permutation_test(groups, X, n_perm=200)
    expected = np.mean([intra_inter_gap(X[g.all_rows()], g.labels()) for g in groups])
    assert observed == pytest.approx(expected) == pytest.approx(0.6)
    assert p == pytest.approx(1 / 201)  # no shuffle beats the true labels
    responses, X = two_deployments(shared=True).prepared()
    observed, p = gap_permutation_test(build_groups(responses), X, n_perm=200)
    assert observed == pytest.approx(0.0, abs=1e-6) and p == 1.0


def test_clustering_joins_the_twins_first() -> None:
    d = Design()
    for q in range(3):
        ca, cb = d.axis(), d.axis()
        for name, centre in (("a1", ca), ("b1", cb), ("a2", ca), ("b2", cb)):
            d.arm(f"q{q}", name, 3, 0.5, centre=centre)
    responses, X = d.prepared()
    matrix = deployment_matrix(pair_similarity(build_groups(responses), X), n_boot=50)
    labels = ["a1", "b1", "a2", "b2"]
    result = cluster_deployments(matrix_array(matrix, "default", labels), labels)
    first, second = result["linkage"][0], result["linkage"][1]
    assert {labels[int(first[0])], labels[int(first[1])]} in ({"a1", "a2"}, {"b1", "b2"})
    assert {labels[int(second[0])], labels[int(second[1])]} in ({"a1", "a2"}, {"b1", "b2"})
    assert first[2] == pytest.approx(0.5)  # distance 1 - inter(a1, a2) = 1 - rho


def test_random_baseline_and_nearest_neighbours() -> None:
    responses, X = two_deployments(shared=False, rho=0.7).prepared()
    baseline = random_pair_baseline(responses, X, n_pairs=2000)
    assert baseline["similarity"][0] == pytest.approx(0.0, abs=1e-6)
    result = analyze_responses(responses, X, **FAST)
    nn = result.tables["nn_counts"]
    assert nn.filter(pl.col("j") == 1)["distinct_deployments"][0] == 1.0  # own deployment first
    assert nn.filter(pl.col("j") == 3)["distinct_deployments"][0] == 1.0  # the 3 others of its own
    assert nn.filter(pl.col("j") == 4)["distinct_deployments"][0] == 2.0  # then the other deployment


def test_draw_diversity_matches_metric_functions() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5, 8))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    dist, vendi = draw_diversity((X @ X.T)[None])
    assert dist[0] == pytest.approx(embedding_diversity(X))
    assert vendi[0] == pytest.approx(vendi_score(X))


def test_ensemble_curves_identical_vs_orthogonal_deployments() -> None:
    responses, X = two_deployments(shared=True, rho=0.6).prepared()
    groups = build_groups(responses)
    per_query = ensemble_per_query(groups, X, draws=8)
    same = per_query.pivot(on="arm", index=["query_id", "k"], values="mean_distance")
    assert same["single"].to_numpy() == pytest.approx(same["mixed"].to_numpy())
    assert same.filter(pl.col("k") >= 2)["single"].to_numpy() == pytest.approx(0.4)
    baseline = random_pair_baseline(responses, X, n_pairs=2000)
    gap = hivemind_gap(per_query, groups, baseline, n_boot=100)
    assert gap["hivemind_gap"][0] == pytest.approx(0.0, abs=1e-6) and gap["k_star"][0] == 2

    responses, X = two_deployments(shared=False, rho=0.6).prepared()
    groups = build_groups(responses)
    per_query = ensemble_per_query(groups, X, draws=8)
    curves = ensemble_curves(per_query, **FAST)
    at2 = curves.filter((pl.col("metric") == "mean_distance") & (pl.col("k") == 2)).row(0, named=True)
    assert at2["single"] == pytest.approx(0.4) and at2["mixed"] == pytest.approx(1.0)
    assert at2["diff"] == pytest.approx(0.6) and at2["p_value"] < 0.05
    vendi2 = curves.filter((pl.col("metric") == "vendi") & (pl.col("k") == 2)).row(0, named=True)
    assert vendi2["mixed"] == pytest.approx(2.0)  # two orthogonal responses: two distinct answers
    assert vendi2["single"] == pytest.approx(vendi_score(X[[0, 1]]))
    k1 = curves.filter(pl.col("k") == 1)
    assert k1.filter(pl.col("metric") == "vendi")["single"][0] == 1.0
    gap = hivemind_gap(per_query, groups, random_pair_baseline(responses, X, n_pairs=2000), n_boot=100)
    # realized = 1 - 0.4, promised = D_ref (1 - 0) - 0.4: the ensemble gives all it promises
    assert gap["hivemind_gap"][0] == pytest.approx(1.0)


def test_sign_flip_test() -> None:
    assert sign_flip_test(np.full(30, 0.3), n_perm=500) == pytest.approx(1 / 501)
    assert sign_flip_test(np.array([1.0, -1.0] * 5), n_perm=500) > 0.3
    assert np.isnan(sign_flip_test(np.array([np.nan])))


def test_verbatim_overlap_sees_copied_text() -> None:
    d = Design()
    same = ["the cat sat on the warm mat today", "a dog ran along the long river bank now"]
    d.arm("q", "a", 2, 0.5, texts=same)
    d.arm("q", "b", 2, 0.5, texts=same)
    d.arm("q", "c", 2, 0.5, texts=["entirely other words appear right here", "nothing in common with those lines"])
    responses, _ = d.prepared()
    overlap = verbatim_overlap(build_groups(responses))
    row = overlap.filter((pl.col("deployment_a") == "a") & (pl.col("deployment_b") == "b")).row(0, named=True)
    assert row["ngram_jaccard"] == pytest.approx(0.5)  # each text equals one of the two others
    assert row["share_pairs_sharing"] == pytest.approx(0.5)
    other = overlap.filter((pl.col("deployment_a") == "a") & (pl.col("deployment_b") == "c"))
    assert other["ngram_jaccard"][0] == 0.0


def test_near_duplicates_are_cross_deployment_within_query_with_texts() -> None:
    responses, X = two_deployments(shared=True, rho=0.95, queries=2, k=2).prepared()
    pairs, total = near_duplicates(responses, X, threshold=0.9)
    assert total == pairs.height == 2 * 4  # per query: 2 x 2 cross pairs; same-deployment pairs excluded
    assert (pairs["deployment_a"] != pairs["deployment_b"]).all()
    assert pairs["cosine"].to_numpy() == pytest.approx(0.95)
    assert pairs["text_a"].str.starts_with("a says").all() and pairs["text_b"].str.starts_with("b says").all()


def test_one_deployment_one_condition_missing_categories() -> None:
    d = Design()
    for q in range(4):
        d.arm(f"q{q}", "solo", 3, 0.5, category=None)
    responses, X = d.prepared()
    result = analyze_responses(responses, X, **FAST)
    t = result.tables
    assert t["pairs"]["kind"].unique().to_list() == ["intra"]
    assert t["categories"]["category"].to_list() == ["uncategorized"]
    assert t["gap_tests"]["gap"][0] is None or np.isnan(t["gap_tests"]["gap"][0])
    assert t["hivemind_gap"]["hivemind_gap"][0] is None
    assert t["near_duplicates"].height == 0 and t["nn_counts"].height == 0
    assert result.summary["clustering"]["default"]["linkage"] == []
    assert t["ensemble"].filter(pl.col("k") == 2)["single"][0] == pytest.approx(0.5)
    assert result.summary["headline"]["intra_similarity"]["estimate"] == pytest.approx(0.5)


def test_conditions_recover_diversity_next_to_the_inter_gap() -> None:
    d = Design()
    for q in range(5):
        for condition, rho in (("default", 0.8), ("hot", 0.5)):
            d.arm(f"q{q}", "a", 3, rho, condition=condition)
            d.arm(f"q{q}", "b", 3, rho, condition=condition)
    responses, X = d.prepared(condition_order=["default", "hot"])
    table = analyze_responses(responses, X, **FAST).tables["conditions"]
    hot = table.filter((pl.col("condition") == "hot") & (pl.col("deployment") == "a")).row(0, named=True)
    assert hot["recovered"] == pytest.approx(0.3)
    assert hot["inter_gap"] == pytest.approx(0.8)  # intra 0.8 - inter 0 at baseline
    assert hot["recovered_share"] == pytest.approx(0.375)
    base = table.filter(pl.col("is_baseline"))
    assert base["recovered"].to_numpy() == pytest.approx(0.0)
    assert set(table["deployment"]) == {"a", "b", "(all)"}


def test_lineage_orders_stages_and_tracks_diversity() -> None:
    d = Design()
    for q in range(3):
        d.arm(f"q{q}", "m-dpo", 3, 0.9, family="m", stage="dpo")
        d.arm(f"q{q}", "m-base", 3, 0.3, family="m", stage="base")
        d.arm(f"q{q}", "m-sft", 3, 0.6, family="m", stage="sft")
        d.arm(f"q{q}", "other", 3, 0.5)
    responses, X = d.prepared()
    lineage = analyze_responses(responses, X, **FAST).tables["lineage"]
    assert lineage["stage"].to_list() == ["base", "sft", "dpo"]
    assert lineage["intra"].to_numpy() == pytest.approx([0.3, 0.6, 0.9])
    assert lineage["embedding_diversity"].to_numpy() == pytest.approx([0.7, 0.4, 0.1])


def test_quality_control_split_on_verifiable_queries() -> None:
    d = Design()
    for q in range(4):
        # a: two correct identical-direction answers and two wrong ones elsewhere; b: all correct, alike
        centre = d.axis()
        d.arm(f"q{q}", "a", 2, 1.0, centre=centre, texts=["It is 42.", "42"], answer="42")
        d.vectors += [d.axis(), d.axis()]
        d.rows += [dict(d.rows[-1], sample_index=2, text="17"), dict(d.rows[-1], sample_index=3, text="nine")]
        d.arm(f"q{q}", "b", 4, 1.0, centre=centre, texts=["42"] * 4, answer="42")
    responses, X = d.prepared()
    t = analyze_responses(responses, X, **FAST).tables
    quality = t["quality"]
    assert quality.filter(pl.col("deployment") == "a")["accuracy"].to_list() == [0.5] * 4
    assert quality.filter(pl.col("deployment") == "b")["accuracy"].to_list() == [1.0] * 4
    split = t["quality_split"].filter(pl.col("metric") == "embedding_diversity").row(0, named=True)
    d_all_a = embedding_diversity(X[responses.filter(pl.col("deployment") == "a")["row"].to_numpy()[:4]])
    assert split["share_computable"] == 1.0 and split["n_computable"] == 4
    assert split["total"] == pytest.approx(d_all_a)
    assert split["residual"] == pytest.approx(0.0, abs=1e-6)
    assert split["quality_control"] == pytest.approx(d_all_a)
    vendi = t["quality_split"].filter(pl.col("metric") == "vendi").row(0, named=True)
    assert vendi["total"] == pytest.approx(vendi["residual"] + vendi["quality_control"])
    # the checker is pluggable and named in the summary: "It is 42." is not exactly "42"
    exact = analyze_responses(responses, X, checker="exact", **FAST)
    assert exact.summary["answer_checker"] == "exact"
    assert exact.tables["quality"].filter(pl.col("deployment") == "a")["accuracy"].to_list() == [0.25] * 4
    assert analyze_responses(responses, X, **FAST).summary["answer_checker"] == "final"


def test_summary_headline_is_json_ready() -> None:
    import json

    responses, X = two_deployments(shared=False).prepared()
    result = analyze_responses(responses, X, **FAST)
    text = json.dumps(result.summary, allow_nan=True)
    assert "NaN" not in text and result.summary["warnings"] == []
    h = result.summary["headline"]
    assert h["gap"]["estimate"] == pytest.approx(0.6) and h["gap"]["p_permutation"] < 0.05
    assert h["hivemind_gap"]["estimate"] == pytest.approx(1.0)
    assert h["share_queries_intra_above_0.8"] == {"a": 0.0, "b": 0.0}
    assert result.tables["lexical" if "lexical" in result.tables else "diversity"].height == 12


def test_prepare_scores_the_answer_not_the_reasoning() -> None:
    from hivemind.pipeline import _exclusions

    texts = [
        "<think>Let me weigh the options at length.</think>\n\nParis.",
        "<think>only thinking</think>",
        "<think>never finished",
        "Plain answer.",
        "Berlin.",
        "  Madrid. ",
    ]
    samples = pl.DataFrame(
        {
            "query_id": ["q"] * 6,
            "deployment": ["a"] * 3 + ["b"] * 3,
            "condition": ["default"] * 6,
            "sample_index": [0, 1, 2, 0, 1, 2],
            "text": texts,
            "error": [None] * 6,
        },
        schema_overrides={"error": pl.Utf8},
    )
    responses, k = prepare_responses(samples)
    # a: one answer left (two were all reasoning) -> arm dropped; b keeps its texts unchanged
    assert responses["text"].to_list() == ["Plain answer.", "Berlin.", "  Madrid. "]
    assert k["arms_dropped"][0] == 1
    assert _exclusions(samples, responses.height) == {
        "n_failed": 0,
        "n_empty": 2,
        "n_excluded_truncated": 0,
        "n_dropped_for_equal_k": 1,
    }
    both = prepare_responses(samples.with_columns(pl.lit("a").alias("deployment")))[0]
    assert both["text"].to_list()[:1] == ["Paris."]  # the answer only, whitespace trimmed
    assert not any("think" in t for t in both["text"].to_list())


def test_k_per_deployment_counts_k_not_rows_when_an_arm_is_dropped() -> None:
    d = Design()
    for q in range(2):
        for condition in ("default", "hot"):
            for dep in ("a", "b"):
                # q1/hot/b has a single response: that arm is dropped, K stays 3 everywhere
                d.arm(f"q{q}", dep, 1 if (q, condition, dep) == (1, "hot", "b") else 3, 0.5, condition=condition)
    frame = pl.DataFrame(d.rows, schema_overrides={"answer": pl.Utf8, "family": pl.Utf8, "stage": pl.Utf8})
    responses, _ = prepare_responses(frame, condition_order=["default", "hot"])
    key = ["query_id", "condition", "deployment", "sample_index"]
    position = {k: i for i, k in enumerate(frame.select(key).rows())}
    X = np.asarray(d.vectors, dtype=np.float32)[[position[k] for k in responses.select(key).rows()]]
    assert responses.filter(pl.col("query_id") == "q1").height == 9  # 9 // (2 x 2) would say K = 2
    summary = analyze_responses(responses, X, **FAST).summary
    assert summary["k_per_deployment"] == {"min": 3, "max": 3}


def test_random_baseline_is_the_exact_cross_query_mean_with_a_query_bootstrap_ci() -> None:
    rng = np.random.default_rng(5)
    d = Design(dim=64)
    shared = d.axis()
    for q in range(6):  # queries lean on a shared direction by different amounts: cross-query
        lean = rng.uniform(0.0, 0.9)  # similarity varies from one query pair to another
        for s in range(8):
            noise = rng.standard_normal(64)
            d.vectors.append(lean * 3 * shared + noise / np.linalg.norm(noise))
            d.rows.append(
                {
                    "query_id": f"q{q}",
                    "category": "c",
                    "query_text": "t",
                    "answer": None,
                    "deployment": "a",
                    "family": None,
                    "stage": None,
                    "condition": "default",
                    "sample_index": s,
                    "text": f"{q} {s}",
                    "error": None,
                }
            )
    responses, X = d.prepared()
    U = X.astype(np.float64) / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)
    query = responses["query_id"].to_numpy()
    S = U @ U.T
    cross = query[:, None] != query[None, :]
    row = random_pair_baseline(responses, X, n_pairs=5000, n_boot=2000).row(0, named=True)
    assert row["similarity"] == pytest.approx(S[cross].mean(), abs=1e-9)  # exact, not a sample
    assert row["n_pairs"] == cross.sum() // 2 and row["n_queries"] == 6
    assert row["ci_lo"] < row["similarity"] < row["ci_hi"]
    # pairs reuse responses and share query topics: the interval must reflect the spread of
    # query-pair means, far wider than mean +- 1.96 SE over 5000 "independent" pairs
    naive_half = 1.96 * S[cross].std() / np.sqrt(5000)
    assert (row["ci_hi"] - row["ci_lo"]) / 2 > 5 * naive_half
    # and it is a bootstrap over queries: the same with the queries' responses shuffled
    shuffled = responses.sample(fraction=1.0, shuffle=True, seed=1)
    again = random_pair_baseline(shuffled, X, n_pairs=5000, n_boot=2000).row(0, named=True)
    assert again["similarity"] == pytest.approx(row["similarity"], abs=1e-9)


def test_corpus_near_duplicates_find_copies_across_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    import hivemind.vectors.index

    d = Design()
    for q in range(3):
        d.arm(f"q{q}", "a", 3, 0.3)
        d.arm(f"q{q}", "b", 3, 0.3)
    d.vectors[15] = d.vectors[0].copy()  # q2/b #0 repeats q0/a #0
    d.rows[15] = dict(d.rows[15], text=d.rows[0]["text"])
    d.vectors[4] = d.vectors[1].copy()  # within q0: b #1 repeats a #1
    responses, X = d.prepared()
    seen: list[Any] = []
    real = hivemind.vectors.index.near_duplicate_pairs

    def spy(*args: Any, **kwargs: Any) -> pl.DataFrame:
        seen.append((args[2] is None, kwargs.get("use_gpu")))
        return real(*args, **kwargs)

    monkeypatch.setattr(hivemind.vectors.index, "near_duplicate_pairs", spy)
    result = analyze_responses(responses, X, threshold=0.95, use_gpu=False, **FAST)
    assert sorted(seen) == [(False, False), (True, False)]  # within-query and corpus, use_gpu passed on
    within, corpus = result.tables["near_duplicates"], result.tables["near_duplicates_corpus"]
    assert within.select("i", "j").rows() == [(1, 4)]
    assert corpus.select("i", "j", "same_query").rows() == [(0, 15, False), (1, 4, True)]  # cross-query first
    top = corpus.row(0, named=True)
    assert (top["query_id_a"], top["query_id_b"]) == ("q0", "q2")
    assert (top["deployment_a"], top["deployment_b"]) == ("a", "b")
    assert top["text_a"] == top["text_b"] == "a says q0 number 0" and top["cosine"] == pytest.approx(1.0)
    h = result.summary["headline"]
    counts = (h["near_duplicate_pairs"], h["near_duplicate_pairs_corpus"], h["near_duplicate_pairs_cross_query"])
    assert counts == (1, 2, 1)
    capped = analyze_responses(responses, X, threshold=0.95, max_near_duplicates=1, **FAST)
    assert capped.tables["near_duplicates_corpus"].select("i", "j").rows() == [(0, 15)]


# --- equal footing (METRICS.md "Equal footing") ------------------------------------------


def test_deployment_figures_compare_deployments_on_the_same_queries_at_the_same_k() -> None:
    """Issue counterexample: q1 has A and B with 2 responses each, q2 has A with 8 and B with 1;
    every response is orthogonal to every other, so A and B are equally diverse."""
    d = Design()
    d.arm("q1", "A", 2, 0.0)
    d.arm("q1", "B", 2, 0.0)
    d.arm("q2", "A", 8, 0.0)
    d.arm("q2", "B", 1, 0.0)
    responses, X = d.prepared()
    result = analyze_responses(responses, X, **FAST)
    summary = result.tables["diversity_summary"]

    def value(deployment: str, metric: str) -> float:
        row = summary.filter((pl.col("deployment") == deployment) & (pl.col("metric") == metric))
        assert row.height == 1
        return float(row["mean"][0])

    for metric in ("vendi", "n_classes", "semantic_entropy", "embedding_diversity", "distinct_1", "mean_length"):
        assert value("A", metric) == pytest.approx(value("B", metric)), metric
    assert value("A", "vendi") == pytest.approx(2.0) and value("A", "n_classes") == 2.0
    assert summary.filter(pl.col("metric") == "vendi")["n_queries"].to_list() == [1, 1]
    # the per-query table keeps every query; only the comparison is restricted
    assert result.tables["diversity"].filter(pl.col("deployment") == "A").height == 2
    matrix = result.tables["matrix"]
    assert matrix["n_queries"].to_list() == [1] * matrix.height
    footing = result.summary["footing"]["default"]
    assert footing["queries_analysed"] == 2 and footing["queries_every_deployment"] == 1
    assert result.summary["warnings"] == [
        "condition default: the headline (intra, inter, gap, hivemind gap, k*, ensemble curves) and the "
        "per-deployment figures stand on the 1 of 2 queries that every deployment answered with the same K; "
        "1 queries were left out (missing: B on 1)."
    ]
    assert "same K" in result.summary["footing_rule"]


def test_footing_queries_needs_every_arm_and_one_k() -> None:
    from hivemind.analysis.data import common_footing, footing_queries

    table = pl.DataFrame(
        {
            "condition": ["c"] * 7 + ["hot"] * 2,
            "query_id": ["q1", "q1", "q2", "q3", "q3", "q4", "q4", "q1", "q1"],
            "deployment": ["A", "B", "A", "A", "B", "A", "B", "A", "B"],
            "k": [2, 2, 8, 4, 4, 4, 2, 3, 3],
        }
    )
    keys = footing_queries(table)
    assert keys.rows() == [("c", "q1"), ("c", "q3"), ("hot", "q1")]  # q2 lacks B; q4 has two K
    assert common_footing(table).height == 6
    solo = table.filter(pl.col("deployment") == "A")
    assert footing_queries(solo).height == 5  # one deployment: every query is common to all


def test_headline_intra_inter_and_gap_use_the_same_paired_queries() -> None:
    """Issue counterexample: q1 with A and B (within 0.5, across 0), q2 with A only (within 0.9)."""
    d = Design()
    d.arm("q1", "A", 3, 0.5)
    d.arm("q1", "B", 3, 0.5)
    d.arm("q2", "A", 3, 0.9)
    responses, X = d.prepared()
    result = analyze_responses(responses, X, **FAST)
    h = result.summary["headline"]
    intra, inter, gap = (h[key]["estimate"] for key in ("intra_similarity", "inter_similarity", "gap"))
    assert intra == pytest.approx(0.5) and inter == pytest.approx(0.0, abs=1e-6) and gap == pytest.approx(0.5)
    assert gap == pytest.approx(intra - inter, abs=1e-12)
    assert h["n_queries"] == 1 and result.tables["gap_tests"]["n_queries"][0] == 1
    categories = result.tables["categories"].row(0, named=True)
    assert categories["intra"] - categories["inter"] == pytest.approx(categories["gap"], abs=1e-12)
    assert "gap = intra - inter" in result.summary["footing_rule"]


def test_ensemble_curve_stands_on_one_query_set() -> None:
    d = Design()
    for q in range(4):  # K = 4, mild similarity
        d.arm(f"q{q}", "a", 4, 0.3)
        d.arm(f"q{q}", "b", 4, 0.3)
    d.arm("q4", "a", 2, 0.95)  # K = 2 and near-identical: would pull k = 1, 2 down only
    d.arm("q4", "b", 2, 0.95)
    responses, X = d.prepared()
    groups = build_groups(responses)
    per_query = ensemble_per_query(groups, X, draws=8)
    curves = ensemble_curves(per_query, **FAST).filter(pl.col("metric") == "mean_distance")
    assert curves["k"].to_list() == [1, 2, 3, 4]
    assert set(curves["n_queries"].to_list()) == {4}  # the same queries at every k
    chosen = per_query.filter((pl.col("query_id") != "q4") & (pl.col("k") == 2) & (pl.col("arm") == "single"))
    assert curves.filter(pl.col("k") == 2)["single"][0] == pytest.approx(chosen["mean_distance"].mean())
    baseline = random_pair_baseline(responses, X, n_pairs=2000)
    gap = hivemind_gap(per_query, groups, baseline, n_boot=100).row(0, named=True)
    assert gap["n_queries"] == 4 and gap["k_star"] == 2
    footing = analyze_responses(responses, X, **FAST).summary["footing"]["default"]
    assert (footing["queries_ensemble_curve"], footing["ensemble_k_max"]) == (4, 4)


def test_ensemble_curve_keeps_every_query_when_shortening_keeps_more_responses() -> None:
    from hivemind.analysis.ensemble import curve_queries

    d = Design()
    for q in range(3):
        d.arm(f"q{q}", "a", 3 if q else 4, 0.3)  # one query reaches K = 4, the others K = 3
        d.arm(f"q{q}", "b", 3 if q else 4, 0.3)
    responses, X = d.prepared()
    per_query = ensemble_per_query(build_groups(responses), X, draws=4)
    assert curve_queries(per_query, "default") == (3, ["q0", "q1", "q2"])  # 3 x 3 > 4 x 1


# --- truncation ----------------------------------------------------------------------


def test_truncated_responses_are_counted_and_can_be_left_out() -> None:
    from hivemind.analysis.data import truncation_summary, truncation_table

    rows = []
    for dep, reasons in (
        ("a", ["length", "stop", "stop", "stop", "stop"]),
        ("b", ["length", "length", "stop", None, "stop"]),
    ):
        for s, reason in enumerate(reasons):
            rows.append(
                {
                    "query_id": "q",
                    "deployment": dep,
                    "condition": "default",
                    "sample_index": s,
                    "text": f"{dep} {s}",
                    "error": None,
                    "finish_reason": reason,
                }
            )
    rows.append(
        {
            "query_id": "q",
            "deployment": "a",
            "condition": "default",
            "sample_index": 5,
            "text": None,
            "error": "HTTP 500",
            "finish_reason": None,
        }
    )
    samples = pl.DataFrame(rows)
    table = truncation_table(samples, ["b", "a"])
    assert table.select("deployment", "n_responses", "n_truncated").rows() == [("b", 5, 2), ("a", 5, 1)]
    assert table["share_truncated"].to_list() == pytest.approx([0.4, 0.2])
    entry, warnings = truncation_summary(table, complete_only=False)
    assert len(warnings) == 2 and warnings[0].startswith("b: 40%") and "--complete-only" in warnings[0]
    assert entry["per_deployment"]["a"]["n_truncated"] == 1 and entry["complete_only"] is False
    assert truncation_summary(table.with_columns(pl.lit(0.1).alias("share_truncated")), False)[1] == []

    all_rows, k = prepare_responses(samples)
    assert k["k"][0] == 5
    complete, k = prepare_responses(samples, complete_only=True)
    assert k["k"][0] == 3  # b has 3 complete responses: K is equalised over complete ones
    assert not (complete["finish_reason"] == "length").any()
    assert complete.filter(pl.col("deployment") == "a")["sample_index"].to_list() == [1, 2, 3]
