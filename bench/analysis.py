"""Benchmark: the analysis stage, each figure beside a plain baseline timed in the same run.

(1) Per-query similarity analyses on synthetic clustered unit vectors: 100 queries x 20
    deployments x 50 samples = 100,000 responses, 384 dims (MiniLM's). Each vector is a
    query's topic centre + a per-(query, deployment) offset + per-sample noise, scaled per
    query so intra similarities spread over several bins (about 0.6-0.95). hivemind's own
    functions, as `analyze_responses` calls them (`build_groups`, `pair_similarity`,
    `query_similarity`, `similarity_bins`, `deployment_matrix` with its bootstrap CIs), vs
    the obvious numpy a researcher would write: per query, a loop over deployment pairs
    taking the mean of each 50 x 50 cosine block (float64, as hivemind computes), then the
    query means, the bins and the matrix means (no CIs). The two must agree (max |diff| <
    1e-5 over intra, inter, gap, bin shares and the matrix).
(2) Near-duplicate search over 1,000,000 vectors and (3) embedding throughput: the functions
    of bench/analysis_index.py (hivemind's `VectorIndex` vs numpy matmul + threshold;
    `embed_texts` vs `SentenceTransformer.encode` on the same texts).

Run:
    .venv/bin/python bench/analysis.py            # full: a few minutes on 2 CPU cores, ~5 GB
    .venv/bin/python bench/analysis.py --quick    # 20 queries, 200,000 corpus rows, 400 texts
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/analysis_index.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analysis_index  # noqa: E402  (sets the offline HF flags before any model import)
import polars as pl  # noqa: E402

from hivemind.analysis.data import build_groups, prepare_responses  # noqa: E402
from hivemind.analysis.similarity import (  # noqa: E402
    N_BINS,
    deployment_matrix,
    matrix_array,
    pair_similarity,
    query_similarity,
    similarity_bins,
)

DIM = analysis_index.DIM
CONDITION = "default"
CATEGORIES = ("creative", "advice", "opinion", "brainstorm")


def make_study(
    n_queries: int, n_deployments: int, k: int, dim: int = DIM, seed: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """Prepared responses (`prepare_responses`) and their float32 unit vectors, row-aligned.

    vector = centre_q + a_q * offset_{q,d} + b_q * noise_{q,d,s} (Gaussian, variance 1/dim per
    coordinate), a_q in [0.25, 0.55] and b_q in [0.3, 0.8] per query: intra about 0.6-0.95,
    inter 0.05-0.15 lower, like the study's figures.
    """
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / np.sqrt(dim))
    vectors = np.empty((n_queries, n_deployments, k, dim), dtype=np.float32)
    for q in range(n_queries):  # one query at a time keeps the float32 peak small
        centre = rng.standard_normal((1, 1, dim), dtype=np.float32)
        offset = rng.standard_normal((n_deployments, 1, dim), dtype=np.float32)
        noise = rng.standard_normal((n_deployments, k, dim), dtype=np.float32)
        a, b = rng.uniform(0.25, 0.55), rng.uniform(0.3, 0.8)
        vectors[q] = scale * (centre + np.float32(a) * offset + np.float32(b) * noise)
    vectors = vectors.reshape(-1, dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q_idx, d_idx, s_idx = (
        g.ravel() for g in np.meshgrid(np.arange(n_queries), np.arange(n_deployments), np.arange(k), indexing="ij")
    )
    queries = np.array([f"q{i:04d}" for i in range(n_queries)])
    deployments = np.array([f"model-{i:02d}" for i in range(n_deployments)])
    categories = np.array(CATEGORIES)
    samples = pl.DataFrame(
        {
            "query_id": queries[q_idx],
            "category": categories[q_idx % len(CATEGORIES)],
            "deployment": deployments[d_idx],
            "condition": CONDITION,
            "sample_index": s_idx.astype(np.int64),
            "text": "response",
        }
    )
    responses, _ = prepare_responses(samples, deployment_order=deployments.tolist())
    # prepare_responses keeps this order (query, deployment, sample), so row i is vector i
    assert responses["sample_index"].to_numpy().tolist() == s_idx.tolist()
    assert responses["deployment"].to_list() == deployments[d_idx].tolist()
    return responses, vectors


def hivemind_analyses(
    responses: pl.DataFrame, vectors: np.ndarray, n_boot: int
) -> tuple[dict[str, pl.DataFrame], dict[str, float]]:
    """The similarity tables as `analyze_responses` builds them, and the seconds per step."""
    steps: dict[str, float] = {}
    tables: dict[str, Any] = {}

    def timed(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        steps[name] = time.perf_counter() - start
        return out

    groups = timed("build_groups", build_groups, responses)
    tables["pairs"] = timed("pair_similarity", pair_similarity, groups, vectors)
    tables["query_similarity"] = timed("query_similarity", query_similarity, tables["pairs"])
    tables["bins"] = timed("similarity_bins", similarity_bins, tables["pairs"])
    tables["matrix"] = timed("deployment_matrix", deployment_matrix, tables["pairs"], n_boot=n_boot)
    return tables, steps


def numpy_baseline(responses: pl.DataFrame, vectors: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """The plain implementation: loops over queries and deployment pairs, one block at a time.

    Returns intra (Q, D), inter (Q, D, D; diagonal nan), per-query intra/inter/gap (Q,),
    bin shares (D, n_bins) of intra and of each deployment's mean inter, and the D x D
    matrix of means over queries (diagonal = intra).
    """
    X = vectors.astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    queries = responses["query_id"].unique(maintain_order=True).to_list()
    deployments = responses["deployment"].unique(maintain_order=True).to_list()
    rows = {
        key: part["row"].to_numpy()
        for key, part in responses.partition_by(["query_id", "deployment"], maintain_order=True, as_dict=True).items()
    }
    Q, D = len(queries), len(deployments)
    intra = np.full((Q, D), np.nan)
    inter = np.full((Q, D, D), np.nan)
    for qi, q in enumerate(queries):
        blocks = [X[rows[(q, d)]] for d in deployments]
        for a in range(D):
            S = blocks[a] @ blocks[a].T
            k = S.shape[0]
            intra[qi, a] = (S.sum() - np.trace(S)) / (k * (k - 1))
            for b in range(a + 1, D):
                inter[qi, a, b] = inter[qi, b, a] = (blocks[a] @ blocks[b].T).mean()
    iu = np.triu_indices(D, k=1)
    q_intra = intra.mean(axis=1)
    q_inter = inter[:, iu[0], iu[1]].mean(axis=1)
    dep_inter = np.nanmean(inter, axis=2)  # each deployment's mean inter with the others, per query

    def shares(values: np.ndarray) -> np.ndarray:
        bins = np.clip(np.floor(values * n_bins), 0, n_bins - 1).astype(int)
        return np.stack([np.bincount(bins[:, d], minlength=n_bins) / Q for d in range(D)])

    matrix = inter.mean(axis=0)  # nan only on the diagonal, set next
    matrix[np.diag_indices(D)] = intra.mean(axis=0)
    return {
        "intra": intra,
        "inter": inter,
        "q_intra": q_intra,
        "q_inter": q_inter,
        "gap": q_intra - q_inter,
        "bins_intra": shares(intra),
        "bins_inter": shares(dep_inter),
        "matrix": matrix,
    }


def max_difference(tables: dict[str, pl.DataFrame], base: dict[str, np.ndarray], deployments: list[str]) -> float:
    """Largest |hivemind - baseline| over every number both compute."""
    D = len(deployments)
    index = {d: i for i, d in enumerate(deployments)}
    pairs = tables["pairs"]
    diffs = []
    for kind in ("intra", "inter"):
        part = pairs.filter(pl.col("kind") == kind)
        a = part["deployment_a"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
        b = part["deployment_b"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
        q = part["query_id"].rank("dense").cast(pl.Int64).to_numpy() - 1  # ids sort in query order
        ref = base["intra"][q, a] if kind == "intra" else base["inter"][q, a, b]
        assert part.height == (base["intra"].size if kind == "intra" else base["inter"].size // D * (D - 1) // 2)
        diffs.append(np.abs(part["similarity"].to_numpy() - ref).max())
    qs = tables["query_similarity"]
    for column, key in (("intra", "q_intra"), ("inter", "q_inter"), ("gap", "gap")):
        diffs.append(np.abs(qs[column].to_numpy() - base[key]).max())
    bins = tables["bins"].sort("deployment", "bin")  # deployment names sort in spec order
    for kind in ("intra", "inter"):
        share = bins.filter(pl.col("kind") == kind)["share"].to_numpy().reshape(D, N_BINS)
        diffs.append(np.abs(share - base[f"bins_{kind}"]).max())
    diffs.append(np.abs(matrix_array(tables["matrix"], CONDITION, deployments) - base["matrix"]).max())
    return float(max(diffs))


def bench_similarity(n_queries: int, n_deployments: int, k: int, n_boot: int, repeats: int) -> dict[str, float]:
    """(1) hivemind's per-query similarity analyses vs the plain numpy loops; best of `repeats`.

    Both run on the same prepared frame and float32 vectors, after a warm-up on a small study.
    """
    small = make_study(2, n_deployments, k, seed=1)  # warm-up: first calls pay one-off costs
    hivemind_analyses(*small, n_boot)
    numpy_baseline(*small)
    responses, vectors = make_study(n_queries, n_deployments, k)
    deployments = responses["deployment"].unique(maintain_order=True).to_list()
    print(
        f"(1) per-query similarity: {n_queries} queries x {n_deployments} deployments x {k} samples "
        f"= {responses.height:,} responses, d={vectors.shape[1]}; best of {repeats}"
    )
    ours, theirs = float("inf"), float("inf")
    steps: dict[str, float] = {}
    for _ in range(repeats):
        start = time.perf_counter()
        tables, run_steps = hivemind_analyses(responses, vectors, n_boot)
        elapsed = time.perf_counter() - start
        if elapsed < ours:
            ours, steps = elapsed, run_steps
        start = time.perf_counter()
        base = numpy_baseline(responses, vectors)
        theirs = min(theirs, time.perf_counter() - start)
    diff = max_difference(tables, base, deployments)
    assert diff < 1e-5, f"hivemind and the numpy baseline differ by {diff}"
    print(
        "    hivemind steps: "
        + ", ".join(f"{name} {s:.2f} s" for name, s in steps.items())
        + f" (deployment_matrix includes {n_boot:,}-resample bootstrap CIs; the baseline computes none)"
    )
    print(
        f"    mean intra {base['q_intra'].mean():.3f}, inter {base['q_inter'].mean():.3f}, "
        f"gap {base['gap'].mean():.3f}; max |hivemind - baseline| {diff:.1e}"
    )
    core = ours - steps["deployment_matrix"]
    print(
        f"    without deployment_matrix (its CIs): hivemind {core:.2f} s, ratio (baseline/hivemind) {theirs / core:.2f}"
    )
    print(f"    hivemind {ours:.2f} s, numpy baseline {theirs:.2f} s, ratio (baseline/hivemind) {theirs / ours:.2f}")
    return {
        "hivemind_s": ours,
        "baseline_s": theirs,
        "ratio": theirs / ours,
        "max_diff": diff,
        "hivemind_without_cis_s": core,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes on 2 cores)")
    parser.add_argument("--queries", type=int, help="queries in (1) (default 100; --quick 20)")
    parser.add_argument("--deployments", type=int, default=20, help="deployments in (1)")
    parser.add_argument("--samples", type=int, default=50, help="samples per deployment and query in (1)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the matrix CIs")
    parser.add_argument("--corpus", type=int, help="corpus rows in (2) (default 1,000,000; --quick 200,000)")
    parser.add_argument("--index-queries", type=int, default=2000, help="query rows in (2)")
    parser.add_argument("--threshold", type=float, default=0.9, help="near-duplicate cosine in (2)")
    parser.add_argument("--texts", type=int, help="texts to embed in (3) (default 2,000; --quick 400)")
    parser.add_argument("--skip-similarity", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-embed", action="store_true")
    args = parser.parse_args()
    n_queries = args.queries or (20 if args.quick else 100)
    n_corpus = args.corpus or (200_000 if args.quick else 1_000_000)
    n_texts = args.texts or (400 if args.quick else 2_000)
    repeats = 1 if args.quick else 2
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_similarity:
        results["similarity"] = bench_similarity(
            n_queries, args.deployments, args.samples, args.n_boot, repeats=2 if args.quick else 3
        )
    if not args.skip_index:
        results["index"] = analysis_index.bench_index(n_corpus, args.index_queries, args.threshold)
    if not args.skip_embed:
        results["embed"] = analysis_index.bench_embed(n_texts, repeats=repeats)
    print(f"summary ({time.perf_counter() - started:.0f} s in all):")
    if "similarity" in results:
        r = results["similarity"]
        print(
            f"    per-query similarity: hivemind {r['hivemind_s']:.2f} s, numpy baseline "
            f"{r['baseline_s']:.2f} s, ratio (baseline/hivemind) {r['ratio']:.2f}"
        )
    if "index" in results:
        r = results["index"]
        print(
            f"    near-duplicates over {r['corpus']:,}: hivemind {r['hivemind_s']:.2f} s, numpy baseline "
            f"{r['baseline_s']:.2f} s, ratio (baseline/hivemind) {r['ratio']:.2f}"
        )
    if "embed" in results:
        r = results["embed"]
        print(
            f"    embedding: embed_texts {r['hivemind_texts_per_s']:.0f} texts/s, SentenceTransformer.encode "
            f"{r['baseline_texts_per_s']:.0f} texts/s, ratio (embed_texts/encode) {r['ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
