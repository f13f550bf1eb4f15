"""Benchmark: near-duplicate search and embedding throughput, each against its plain baseline.

(a) Near-duplicate search: a query batch (default 2,000 rows) against a corpus of 1,000,000
    random unit 384-d vectors (MiniLM's dimension), 5% of them in tight clusters so some
    pairs are near-duplicates. hivemind's `VectorIndex` (build + exact range search, GPU
    when present) vs numpy: blocked `queries @ corpus.T` and a threshold. Both find the
    same pairs (checked, up to float32 rounding at the threshold itself).
(b) Embedding throughput of `embed_texts` (no cache: tokenise, chunk, batch) vs calling
    `SentenceTransformer.encode` directly on the same texts (default 2,000 distinct texts of
    10-80 words, none longer than the model's window, so both do the same work).

Run: .venv/bin/python bench/analysis_index.py [--quick]
(bench/analysis.py imports `bench_index` and `bench_embed` and prints them beside the
analysis benchmark in one run.)
A full run takes a few minutes on 2 CPU cores and needs about 5 GB of memory;
--quick uses 200,000 corpus rows (same 2,000 queries) and 400 texts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.vectors.embed import Embedder, embed_texts  # noqa: E402
from hivemind.vectors.index import VectorIndex, gpu_available  # noqa: E402

DIM = 384
WORDS = (
    "model answer river light quiet story garden machine ocean memory future city music "
    "winter bridge signal forest paper engine silver window market mountain voice dream "
    "theory coffee planet shadow letter island harbor candle thunder mirror canvas orbit "
    "language network history summer poem recipe journey question simple bright ancient"
).split()


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in place (float32)."""
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def make_vectors(n_corpus: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A clustered unit corpus and queries: half near some corpus cluster, half random."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((n_corpus, DIM), dtype=np.float32)
    n_clustered = n_corpus // 20
    centers = rng.standard_normal((max(n_clustered // 3, 1), DIM), dtype=np.float32)
    members = rng.integers(0, centers.shape[0], n_clustered)
    corpus[:n_clustered] = centers[members] + 0.15 * corpus[:n_clustered]
    unit_rows(corpus)
    queries = rng.standard_normal((n_queries, DIM), dtype=np.float32)
    near = n_queries // 2
    picked = centers[rng.integers(0, centers.shape[0], near)]
    queries[:near] = picked + 0.15 * queries[:near]
    return corpus, unit_rows(queries)


def numpy_pairs(queries: np.ndarray, corpus: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Baseline: blocked matrix product and threshold (64 query rows per block)."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, queries.shape[0], 64):
        sims = queries[start : start + 64] @ corpus.T
        rows, ids = np.nonzero(sims >= np.float32(threshold))
        pairs.update(zip((rows + start).tolist(), ids.tolist()))
    return pairs


def bench_index(n_corpus: int, n_queries: int, threshold: float) -> dict[str, float]:
    """(a) hivemind's exact range search vs numpy matmul + threshold; prints and returns the figures."""
    corpus, queries = make_vectors(n_corpus, n_queries)
    device = "GPU" if gpu_available() else "CPU"
    print(
        f"(a) near-duplicates: {n_queries:,} queries x {n_corpus:,} corpus, d={DIM}, "
        f"cosine >= {threshold}, hivemind on {device}"
    )
    start = time.perf_counter()
    index = VectorIndex(DIM)
    index.add(corpus)
    hits = index.range_search(queries, threshold)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    baseline_pairs = numpy_pairs(queries, corpus, threshold)
    baseline = time.perf_counter() - start
    our_pairs = set(zip(hits.rows.tolist(), hits.ids.tolist()))
    disputed = our_pairs ^ baseline_pairs  # allowed only where a sim rounds onto the threshold
    if disputed:
        rows, ids = (np.array(x) for x in zip(*disputed))
        gap = np.abs(np.einsum("ij,ij->i", queries[rows], corpus[ids]) - threshold).max()
        assert gap < 1e-5, f"{len(disputed)} pairs differ, up to {gap} from the threshold"
    print(
        f"    pairs found: hivemind {len(our_pairs):,}, numpy {len(baseline_pairs):,} "
        f"({len(disputed)} differ by float32 rounding at the threshold)"
    )
    print(
        f"    hivemind {ours:.2f} s, numpy baseline {baseline:.2f} s, "
        f"ratio {baseline / ours:.2f} (baseline time / hivemind time)"
    )
    return {
        "corpus": n_corpus,
        "queries": n_queries,
        "pairs": len(our_pairs),
        "hivemind_s": ours,
        "baseline_s": baseline,
        "ratio": baseline / ours,
    }


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Distinct pseudo-sentences of 10-80 words (all within MiniLM's 256-piece window)."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = rng.choice(WORDS, int(rng.integers(10, 81)))
        texts.append(f"Answer {i}: " + " ".join(words) + ".")
    return texts


def bench_embed(n_texts: int, repeats: int) -> dict[str, float]:
    """(b) embed_texts (no cache) vs SentenceTransformer.encode on the same texts; prints and returns."""
    texts = make_texts(n_texts)
    embedder = Embedder(progress=False)
    model = embedder.model
    print(
        f"(b) embedding throughput: {n_texts:,} texts, batch {embedder.batch_size}, "
        f"device {embedder.device}, best of {repeats}"
    )
    assert max(len(ids) for ids in embedder.token_ids(texts)) <= embedder.window
    embed_texts(texts[:64], embedder, None)  # warm-up both paths
    model.encode(texts[:64], batch_size=embedder.batch_size)
    ours, theirs = float("inf"), float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mine = embed_texts(texts, embedder, None)
        ours = min(ours, time.perf_counter() - start)
        start = time.perf_counter()
        reference = model.encode(
            texts, batch_size=embedder.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        theirs = min(theirs, time.perf_counter() - start)
    diff = float(np.abs(mine - reference).max())
    print(
        f"    embed_texts {n_texts / ours:.0f} texts/s, SentenceTransformer.encode "
        f"{n_texts / theirs:.0f} texts/s, ratio {theirs / ours:.2f} "
        f"(embed_texts speed / encode speed); max |difference| {diff:.1e}"
    )
    return {
        "texts": n_texts,
        "hivemind_texts_per_s": n_texts / ours,
        "baseline_texts_per_s": n_texts / theirs,
        "ratio": theirs / ours,
        "max_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--corpus", type=int, help="corpus rows (default 1,000,000)")
    parser.add_argument("--queries", type=int, help="query rows (default 2,000)")
    parser.add_argument("--texts", type=int, help="texts to embed (default 2,000)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-embed", action="store_true")
    args = parser.parse_args()
    n_corpus = args.corpus or (200_000 if args.quick else 1_000_000)
    n_queries = args.queries or 2_000
    n_texts = args.texts or (400 if args.quick else 2_000)
    if not args.skip_index:
        bench_index(n_corpus, n_queries, args.threshold)
    if not args.skip_embed:
        bench_embed(n_texts, repeats=1 if args.quick else 2)


if __name__ == "__main__":
    main()
