"""Intra- vs inter-model similarity, as the INFINITY-CHAT study computes it (METRICS.md).

Per query and condition: intra(m) = mean of the upper triangle (diagonal excluded) of the cosine
matrix of m's K responses; inter(m, m') = mean cosine over all K x K cross pairs. From these:
the per-query gap, the share of queries per similarity bin, the deployment x deployment
matrix and its clustering, the random-pair baseline, nearest-neighbour model counts, the
per-category breakdown and the verbatim (shared n-gram) overlap beside the cosine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.baseline import random_pair_baseline  # noqa: F401  (its former home)
from hivemind.analysis.data import Group
from hivemind.metrics.lexical import ngram_incidence
from hivemind.metrics.semantic import nearest_neighbour_model_counts, normalize_rows
from hivemind.metrics.stats import bootstrap_ci
from hivemind.parallel import ordered_map

if TYPE_CHECKING:
    import polars as pl

N_BINS = 10
HIGH_SIMILARITY = 0.8


def _block_similarity(Y: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intra (D,), inter (D, D)) of consecutive row blocks of unit rows Y, block sizes `sizes`.

    The block sums of the cosine matrix S = Y Y^T under the row -> block indicator E are
    E^T S E = (E^T Y)(E^T Y)^T: the Gram matrix of each block's summed vector, so no n x n
    matrix is formed and all D (D + 1) / 2 block means come from two small matmuls. Intra
    drops the diagonal (self-pairs) via each block's sum of squared norms. Means are clipped
    to [-1, 1], as each cosine would be (rounding can push a dot of unit rows past 1).
    intra is nan for a block of fewer than two rows, inter for an empty block.
    """
    E = np.repeat(np.eye(sizes.size), sizes, axis=0)  # (n, D) one-hot
    M = E.T @ Y  # (D, dim) summed vectors
    B = M @ M.T  # (D, D) block sums of S
    self_sums = E.T @ np.einsum("ij,ij->i", Y, Y)  # (D,) block sums of diag(S)
    sizes = sizes.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = np.where(sizes >= 2, (np.diag(B) - self_sums) / (sizes * (sizes - 1)), np.nan)
        inter = B / np.outer(sizes, sizes)
    return np.clip(intra, -1.0, 1.0), np.clip(inter, -1.0, 1.0)


def pair_similarity(groups: list[Group], vectors: np.ndarray) -> pl.DataFrame:
    """One row per (query, condition, deployment pair): intra rows have a == b.

    Inter pairs appear once, a before b in spec order. Columns: query_id, category, condition,
    deployment_a, deployment_b, kind ('intra'|'inter'), similarity, k.
    """
    import polars as pl

    vectors = np.asarray(vectors)
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("query_id", "category", "condition", "deployment_a", "deployment_b", "kind", "similarity", "k")
    }
    for g in groups:
        n_dep = len(g.deployments)
        if n_dep == 0:
            continue
        # normalise only this group's rows: a float64 copy of all vectors costs more than the sums
        intra, inter = _block_similarity(normalize_rows(vectors[g.all_rows()]), np.array([r.size for r in g.rows]))
        a, b = np.triu_indices(n_dep)  # (0,0), (0,1), ..., (1,1), ...: each intra, then its inters
        names = np.array(g.deployments, dtype=object)
        count = a.size
        columns["query_id"].extend([g.query_id] * count)
        columns["category"].extend([g.category] * count)
        columns["condition"].extend([g.condition] * count)
        columns["deployment_a"].extend(names[a].tolist())
        columns["deployment_b"].extend(names[b].tolist())
        columns["kind"].extend(np.where(a == b, "intra", "inter").tolist())
        columns["similarity"].extend(np.where(a == b, intra[a], inter[a, b]).tolist())
        columns["k"].extend([g.k] * count)
    schema = {
        "query_id": pl.Utf8,
        "category": pl.Utf8,
        "condition": pl.Utf8,
        "deployment_a": pl.Utf8,
        "deployment_b": pl.Utf8,
        "kind": pl.Utf8,
        "similarity": pl.Float64,
        "k": pl.Int64,
    }
    return pl.DataFrame(columns, schema=schema)


def query_similarity(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per (query, condition): mean intra over deployments, mean inter over pairs, gap_q.

    gap_q = mean_m intra(m, q) - mean_{m != m'} inter(m, m', q); null without two deployments.
    """
    import polars as pl

    keys = ["query_id", "category", "condition"]
    out = pairs.group_by(keys, maintain_order=True).agg(
        pl.col("deployment_a").n_unique().alias("n_deployments"),
        pl.first("k"),
        pl.col("similarity").filter(pl.col("kind") == "intra").mean().alias("intra"),
        pl.col("similarity").filter(pl.col("kind") == "inter").mean().alias("inter"),
    )
    # with a single deployment, n_unique of deployment_a is 1 and there is no inter row
    return out.with_columns((pl.col("intra") - pl.col("inter")).alias("gap"))


def paired_queries(query_sim: pl.DataFrame) -> pl.DataFrame:
    """The rows of `query_similarity` that headline intra, inter and gap are averaged over.

    Those with both intra and inter (at least two deployments), so that mean intra - mean
    inter is exactly the mean gap: a query where one deployment is left has an intra value
    but no inter, and averaging it into intra alone would compare two different query sets.
    When no query has two deployments (a one-deployment study), every query: intra alone.
    """
    import polars as pl

    both = query_sim.filter(
        pl.col("intra").is_not_null()
        & pl.col("intra").is_not_nan()
        & pl.col("inter").is_not_null()
        & pl.col("inter").is_not_nan()
    )
    return both if both.height else query_sim


def _symmetric(pairs: pl.DataFrame) -> pl.DataFrame:
    """Inter rows in both orientations, intra rows once."""
    import polars as pl

    flipped = pairs.filter(pl.col("kind") == "inter").with_columns(
        pl.col("deployment_b").alias("deployment_a"), pl.col("deployment_a").alias("deployment_b")
    )
    return pl.concat([pairs, flipped.select(pairs.columns)])


def similarity_bins(pairs: pl.DataFrame, n_bins: int = N_BINS) -> pl.DataFrame:
    """Share of queries per similarity bin (width 1/n_bins over [0, 1]) per deployment.

    kind 'intra': the deployment's intra similarity on each query (the study's heatmap);
    kind 'inter': its mean inter similarity with the other deployments on each query.
    Values below 0 count in the first bin, 1.0 in the last. Columns: condition, deployment,
    kind, bin, bin_lo, bin_hi, n_queries, share.
    """
    import polars as pl

    sym = _symmetric(pairs)
    per_query = (
        sym.group_by(["condition", "deployment_a", "kind", "query_id"], maintain_order=True)
        .agg(pl.col("similarity").mean())
        .drop_nulls("similarity")
        .filter(pl.col("similarity").is_not_nan())
    )
    per_query = per_query.with_columns(
        (pl.col("similarity") * n_bins).floor().clip(0, n_bins - 1).cast(pl.Int64).alias("bin")
    )
    counts = per_query.group_by(["condition", "deployment_a", "kind", "bin"]).agg(pl.len().alias("count"))
    totals = per_query.group_by(["condition", "deployment_a", "kind"], maintain_order=True).agg(
        pl.len().alias("n_queries")
    )
    grid = totals.join(pl.DataFrame({"bin": list(range(n_bins))}, schema={"bin": pl.Int64}), how="cross")
    out = grid.join(counts, on=["condition", "deployment_a", "kind", "bin"], how="left").with_columns(
        pl.col("count").fill_null(0)
    )
    return out.select(
        "condition",
        pl.col("deployment_a").alias("deployment"),
        "kind",
        "bin",
        (pl.col("bin") / n_bins).alias("bin_lo"),
        ((pl.col("bin") + 1) / n_bins).alias("bin_hi"),
        "n_queries",
        (pl.col("count") / pl.col("n_queries")).alias("share"),
    )


def deployment_matrix(pairs: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Deployment x deployment mean similarity over queries (diagonal = intra), with 95% CIs.

    Long format, both orientations: condition, deployment_a, deployment_b, similarity, ci_lo,
    ci_hi, n_queries.
    """
    import polars as pl

    records = []
    sym = _symmetric(pairs)
    for (condition, a, b), part in sym.group_by(["condition", "deployment_a", "deployment_b"], maintain_order=True):
        values = part["similarity"].to_numpy().astype(np.float64)
        est, lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        records.append((condition, a, b, est, lo, hi, int(np.sum(~np.isnan(values)))))
    schema = {
        "condition": pl.Utf8,
        "deployment_a": pl.Utf8,
        "deployment_b": pl.Utf8,
        "similarity": pl.Float64,
        "ci_lo": pl.Float64,
        "ci_hi": pl.Float64,
        "n_queries": pl.Int64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def matrix_array(matrix: pl.DataFrame, condition: str, order: list[str]) -> np.ndarray:
    """The square similarity matrix of one condition, rows and columns in `order`."""
    index = {d: i for i, d in enumerate(order)}
    M = np.full((len(order), len(order)), np.nan)
    for a, b, s in (
        matrix.filter(matrix["condition"] == condition).select("deployment_a", "deployment_b", "similarity").iter_rows()
    ):
        if a in index and b in index:
            M[index[a], index[b]] = s
    return M


def cluster_deployments(M: np.ndarray, labels: list[str], method: str = "average") -> dict[str, Any]:
    """Hierarchical clustering (scipy) of deployments on distance 1 - inter similarity.

    Returns labels, the linkage matrix (list of rows), the dendrogram leaf order, and the
    cophenetic distances; `linkage` is empty with fewer than two deployments.
    """
    if len(labels) < 2:
        return {"labels": list(labels), "linkage": [], "order": list(labels), "method": method}
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    S = np.array(M, dtype=np.float64)
    S = np.where(np.isnan(S), np.nanmean(S) if np.isfinite(S).any() else 0.0, S)
    D = 1.0 - (S + S.T) / 2.0
    np.fill_diagonal(D, 0.0)
    D = np.clip(D, 0.0, None)
    Z = linkage(squareform(D, checks=False), method=method)
    order = [labels[i] for i in leaves_list(Z)]
    return {"labels": list(labels), "linkage": Z.tolist(), "order": order, "method": method}


def nearest_neighbour_counts(groups: list[Group], vectors: np.ndarray, j_max: int = 50) -> pl.DataFrame:
    """Mean number of distinct deployments among each response's j nearest (same query).

    Averaged over queries per condition; only for groups with at least two deployments.
    Columns: condition, j, distinct_deployments, n_queries, n_deployments.
    """
    import polars as pl

    by_condition: dict[str, list[np.ndarray]] = {}
    n_deps: dict[str, int] = {}
    multi = [g for g in groups if len(g.deployments) >= 2]

    def counted(g: Group) -> np.ndarray:
        return nearest_neighbour_model_counts(vectors[g.all_rows()], g.labels(), j_max)

    for g, counts in zip(multi, ordered_map(counted, multi)):  # queries on threads, in order
        by_condition.setdefault(g.condition, []).append(counts)
        n_deps[g.condition] = max(n_deps.get(g.condition, 0), len(g.deployments))
    records = []
    for condition, arrays in by_condition.items():
        stacked = np.vstack(arrays)
        for j in range(stacked.shape[1]):
            column = stacked[:, j]
            ok = ~np.isnan(column)
            if ok.any():
                records.append((condition, j + 1, float(column[ok].mean()), int(ok.sum()), n_deps[condition]))
    schema = {
        "condition": pl.Utf8,
        "j": pl.Int64,
        "distinct_deployments": pl.Float64,
        "n_queries": pl.Int64,
        "n_deployments": pl.Int64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def category_breakdown(query_sim: pl.DataFrame, n_boot: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (condition, category): queries, mean intra, inter and gap with 95% CIs.

    Over each category's `paired_queries`, so gap = intra - inter within a category too.
    """
    import polars as pl

    records = []
    for (condition, category), part in query_sim.group_by(["condition", "category"], maintain_order=True):
        part = paired_queries(part)
        row: list[Any] = [condition, category, part.height]
        for column in ("intra", "inter", "gap"):
            values = part[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            row.extend(bootstrap_ci(values, n_boot=n_boot, seed=seed))
        records.append(tuple(row))
    schema: dict[str, Any] = {"condition": pl.Utf8, "category": pl.Utf8, "n_queries": pl.Int64}
    for column in ("intra", "inter", "gap"):
        schema.update({column: pl.Float64, f"{column}_lo": pl.Float64, f"{column}_hi": pl.Float64})
    return pl.DataFrame(records, schema=schema, orient="row").sort(["condition", "category"])


def _ngram_matrix(texts: list[str], n: int) -> tuple[Any, np.ndarray]:
    """Binary response x n-gram matrix (scipy CSR) and each response's n-gram count."""
    from scipy.sparse import csr_matrix

    rows, cols, n_grams = ngram_incidence(texts, n)
    indptr = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=len(texts)), out=indptr[1:])
    M = csr_matrix((np.ones(cols.size), cols, indptr), shape=(len(texts), max(n_grams, 1)))
    return M, np.diff(indptr)


def _overlap_table(g: Group, n: int) -> list[tuple[Any, ...]]:
    """One query's rows of `verbatim_overlap`: every deployment pair's block means at once, as
    sums under one-hot deployment labels (Jaccard is symmetric, so a deployment's pairs i < j
    are half its block less its diagonal)."""
    texts = [t for block in g.texts for t in block]
    if not texts:
        return []
    M, sizes = _ngram_matrix(texts, n)
    inter = np.asarray((M @ M.T).todense())
    union = sizes[:, None] + sizes[None, :] - inter
    ok = union > 0  # pairs where neither response has an n-gram are left out
    jac = np.where(ok, inter / np.where(ok, union, 1), 0.0)
    share = (ok & (inter > 0)).astype(np.float64)
    labels = np.repeat(np.arange(len(g.rows)), [r.size for r in g.rows])
    P = np.zeros((labels.size, len(g.rows)))
    P[np.arange(labels.size), labels] = 1.0
    sums, diagonals = {}, {}
    for name, m in (("jac", jac), ("share", share), ("n", ok.astype(np.float64))):
        sums[name] = P.T @ m @ P  # (D, D) block sums
        diagonals[name] = np.bincount(labels, weights=np.diagonal(m), minlength=len(g.rows))
    records = []
    for i, a in enumerate(g.deployments):
        for j in range(i, len(g.deployments)):
            if i == j:
                jac_sum, share_sum, count = ((sums[k][i, i] - diagonals[k][i]) / 2 for k in ("jac", "share", "n"))
            else:
                jac_sum, share_sum, count = (sums[k][i, j] for k in ("jac", "share", "n"))
            records.append(
                (
                    g.query_id,
                    g.condition,
                    a,
                    g.deployments[j],
                    "intra" if i == j else "inter",
                    float(jac_sum / count) if count > 0 else None,
                    float(share_sum / count) if count > 0 else None,
                )
            )
    return records


def verbatim_overlap(groups: list[Group], n: int = 5) -> pl.DataFrame:
    """Shared long n-grams between responses, beside the cosine pairs they mirror.

    For each response pair: Jaccard of their n-gram sets (n = 5 by default), and whether they
    share any n-gram at all. Averaged over the same pairs as `pair_similarity` (intra: i < j
    within a deployment; inter: all cross pairs). Pairs where neither response has an n-gram
    are left out. Columns: query_id, condition, deployment_a, deployment_b, kind,
    ngram_jaccard, share_pairs_sharing.
    """
    import polars as pl

    records = [r for part in ordered_map(lambda g: _overlap_table(g, n), groups) for r in part]
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


def overlap_vs_semantic(pairs: pl.DataFrame, overlap: pl.DataFrame, n: int = 5) -> pl.DataFrame:
    """Per (condition, deployment pair): mean cosine beside mean verbatim n-gram overlap."""
    import polars as pl

    keys = ["query_id", "condition", "deployment_a", "deployment_b", "kind"]
    joined = pairs.join(overlap, on=keys, how="left")
    return joined.group_by(["condition", "deployment_a", "deployment_b", "kind"], maintain_order=True).agg(
        pl.col("similarity").mean().alias("semantic_similarity"),
        pl.col("ngram_jaccard").mean().alias(f"jaccard_{n}gram"),
        pl.col("share_pairs_sharing").mean().alias(f"share_pairs_sharing_{n}gram"),
        pl.col("query_id").n_unique().alias("n_queries"),
    )
