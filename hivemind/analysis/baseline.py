"""The random-pair baseline: cosine of responses to *different* queries, the embedder's floor.

Thresholds such as 0.8 only mean something against it (METRICS.md), and the hivemind gap's
reference distance is 1 - it. Everything comes from per-query sums (`QuerySums`): with S_q the
sum of query q's unit vectors and n_q its response count, the mean over all cross-query pairs is
sum_{q != q'} S_q . S_q' / sum_{q != q'} n_q n_q', and a resample of queries (weights w_q) is
the same formula with S_q, n_q weighted - no pair is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.metrics import semantic
from hivemind.metrics.semantic import normalize_rows
from hivemind.metrics.stats import query_bootstrap_ci

if TYPE_CHECKING:
    import polars as pl


@dataclass(frozen=True)
class QuerySums:
    """One condition's per-query sums of unit vectors (queries in `query_ids` order)."""

    query_ids: list[str]
    sums: np.ndarray
    """(queries, dim): each query's summed unit vectors."""
    sizes: np.ndarray
    """(queries,): responses per query."""

    @property
    def self_dots(self) -> np.ndarray:
        """|S_q|^2: all pairs within a query, self-pairs included."""
        return np.einsum("ij,ij->i", self.sums, self.sums)

    def index(self, queries: list[str]) -> np.ndarray:
        """Positions of `queries` (each must be one of `query_ids`)."""
        position = {q: i for i, q in enumerate(self.query_ids)}
        return np.array([position[q] for q in queries], dtype=np.int64)

    def similarity(self, W: np.ndarray) -> np.ndarray:
        """Mean cross-query cosine under query weights W (m, queries): one value per row.

        Pairs between two copies of one query are not cross-query pairs and are left out.
        nan where a row leaves fewer than two distinct queries.
        """
        W = np.atleast_2d(np.asarray(W, dtype=np.float64))
        W2 = W * W
        den = (W @ self.sizes) ** 2 - W2 @ self.sizes**2
        T = W @ self.sums
        num = np.einsum("ij,ij->i", T, T) - W2 @ self.self_dots
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, np.clip(num / np.where(den > 0, den, 1.0), -1.0, 1.0), np.nan)

    def leave_one_out(self) -> np.ndarray:
        """`similarity` with each query left out in turn (the jackknife), in O(queries x dim)."""
        total = self.sums.sum(axis=0)
        dots = self.self_dots
        n = self.sizes
        num = (total @ total - 2.0 * (self.sums @ total) + dots) - (dots.sum() - dots)
        den = (n.sum() - n) ** 2 - (float(np.sum(n**2)) - n**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, np.clip(num / np.where(den > 0, den, 1.0), -1.0, 1.0), np.nan)


def query_sums(responses: pl.DataFrame, vectors: np.ndarray) -> dict[str, QuerySums]:
    """Per condition: the per-query sums of unit vectors behind `random_pair_baseline`."""
    import polars as pl

    out: dict[str, QuerySums] = {}
    for condition in responses["condition"].unique(maintain_order=True).to_list():
        part = responses.filter(pl.col("condition") == condition)
        rows = part["row"].to_numpy()
        ids, queries = np.unique(part["query_id"].to_numpy(), return_inverse=True)
        queries = queries.reshape(-1)
        sums = np.zeros((ids.size, vectors.shape[1]))
        block = semantic.NORMALISE_BLOCK_ROWS  # unit rows a block at a time; sums added in the same order
        for start in range(0, rows.size, block):
            part_rows = slice(start, start + block)
            np.add.at(sums, queries[part_rows], normalize_rows(vectors[rows[part_rows]]))
        sizes = np.bincount(queries, minlength=ids.size).astype(np.float64)
        out[condition] = QuerySums([str(q) for q in ids], sums, sizes)
    return out


def random_pair_baseline(
    responses: pl.DataFrame,
    vectors: np.ndarray,
    n_pairs: int = 10000,
    seed: int = 0,
    n_boot: int = 2000,
    sums: dict[str, QuerySums] | None = None,
) -> pl.DataFrame:
    """Cosine of responses to *different* queries (same condition): the embedder's floor.

    One row per condition:

    * similarity: the mean cosine over *all* pairs of responses whose queries differ, exact
      (module doc; `sums` may pass `query_sums(responses, vectors)` already computed).
    * ci_lo, ci_hi: 95% BCa bootstrap over **queries** (`query_bootstrap_ci`, `n_boot`
      resamples, expanded for few queries like every other interval): queries are drawn with
      replacement and the mean is recomputed from the same sums. The pairs are not independent -
      every response sits in many pairs, and all pairs of two queries share their topics - so
      the query is the unit, as everywhere else (METRICS.md); a normal interval over pairs
      would be far too narrow.
    * p05, p50, p95: quantiles of `n_pairs` random cross-query pairs (with replacement).
    * n_pairs: the number of unordered cross-query pairs the mean covers; n_queries.

    Null with a single query.
    """
    import polars as pl

    sums = sums if sums is not None else query_sums(responses, vectors)
    rng = np.random.default_rng(seed)
    records: list[tuple[Any, ...]] = []
    for condition in responses["condition"].unique(maintain_order=True).to_list():
        part = responses.filter(pl.col("condition") == condition)
        rows = part["row"].to_numpy()
        queries = np.unique(part["query_id"].to_numpy(), return_inverse=True)[1].reshape(-1)
        qs = sums[condition]
        n_queries = len(qs.query_ids)
        if n_queries < 2:
            records.append((condition, None, None, None, None, None, None, 0, n_queries))
            continue
        den = qs.sizes.sum() ** 2 - float(np.sum(qs.sizes**2))
        est = float(qs.similarity(np.ones((1, n_queries)))[0])
        lo = hi = None
        if n_boot > 0:
            _, blo, bhi = query_bootstrap_ci(
                qs.similarity, n_queries, n_boot=n_boot, seed=seed, jackknife=qs.leave_one_out
            )
            if np.isfinite(blo) and np.isfinite(bhi):
                lo, hi = blo, bhi
        i = rng.integers(0, rows.size, size=4 * n_pairs)
        j = rng.integers(0, rows.size, size=4 * n_pairs)
        keep = queries[i] != queries[j]
        i, j = i[keep][:n_pairs], j[keep][:n_pairs]
        sims = np.einsum("ij,ij->i", normalize_rows(vectors[rows[i]]), normalize_rows(vectors[rows[j]]))
        p05, p50, p95 = (float(v) for v in np.quantile(sims, [0.05, 0.5, 0.95])) if sims.size else (None,) * 3
        records.append((condition, est, lo, hi, p05, p50, p95, int(round(den / 2)), n_queries))
    schema = {
        "condition": pl.Utf8,
        "similarity": pl.Float64,
        "ci_lo": pl.Float64,
        "ci_hi": pl.Float64,
        "p05": pl.Float64,
        "p50": pl.Float64,
        "p95": pl.Float64,
        "n_pairs": pl.Int64,
        "n_queries": pl.Int64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")
