"""Ensemble diversity: k responses from one deployment vs k responses from different ones.

For every query, condition and k = 1..K (K the query's equal per-deployment count):

* **single**: k responses drawn without replacement from one deployment, averaged over
  deployments and draws;
* **mixed**: k responses spread over min(k, D) different deployments: for k <= D one response
  from each of k distinct deployments, for k > D each deployment gives floor(k/D) or
  ceil(k/D) (the extra ones go to randomly chosen deployments), averaged over draws.

Diversity of a draw: mean pairwise cosine distance (1 - mean cosine over pairs i < j; 0 at
k = 1) and the Vendi score (q = 1, range [1, k]). Draws are nested in k (the k + 1 draw extends
the k draw), so differences between k use common random numbers.

Across queries - one query set for the whole curve (`curve_queries`), so no point of it
averages over a population the others lack: bootstrap 95% CIs of each arm's mean, of the
paired difference (mixed - single), and a paired sign-flip permutation test per k (one-sided,
mixed > single), Holm-adjusted over k within each condition and metric. The per-k intervals
are pointwise (each k covers 95% alone: on a curve of many k, some k misses far more often);
beside them, diff_band_lo / diff_band_hi are a **simultaneous band** over the curve's k
(family-wise 95%: every k covered at once), the studentized max-statistic over k from one
bootstrap of the queries (`simultaneous_band`), never narrower than the pointwise interval.

**Hivemind gap** (headline): at k* = min(D, K) - one response from each of k* different
deployments - the share of the extra diversity an ensemble promises that it really gives:

    realized = D_mixed(k*) - D_single(k*)           (mean pairwise distance)
    promised = D_ref - D_single(k*),  D_ref = 1 - random-pair baseline similarity
    hivemind_gap = mean_q realized / mean_q promised (ratio of means over queries)

The promise is that of truly independent answerers, whose responses would be as unrelated as
responses to different queries (the random-pair baseline of the embedder in use). 0 means an
ensemble is no more diverse than one model (a perfect hivemind); 1 means it gives everything
independence would. The CI bootstraps queries and recomputes numerator *and* denominator from
each resample, D_ref included (`QuerySums`: the baseline's per-query sums, so the same draws
of queries move both; `query_bootstrap_ci`, BCa). When responses to
different queries are on average no farther apart than one deployment's responses to one query
(promised <= 0, e.g. a degenerate embedder or scripted texts) the share is undefined (null).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.data import Group
from hivemind.metrics.semantic import EIGEN_EPS, normalize_rows
from hivemind.metrics.stats import (
    bootstrap_ci,
    holm,
    paired_bootstrap_diff,
    query_bootstrap_ci,
    simultaneous_band,
)
from hivemind.parallel import ordered_map

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.baseline import QuerySums

INTERVAL_RULE = (
    "95% intervals are BCa bootstrap intervals over queries (scipy.stats.bootstrap), expanded for few "
    "queries so that they hold their level at 12. The ensemble curves' per-k intervals (diff_lo, diff_hi) "
    "are pointwise; diff_band_lo, diff_band_hi are a simultaneous band over the curve's k (family-wise 95%: "
    "all k covered at once), the studentized maximum over k from one bootstrap of the queries. The hivemind "
    "gap's interval resamples its numerator and its denominator, the random-pair reference distance "
    "included, with the same queries. Permutation p-values are one-sided (gap > 0, mixed > single)."
)
"""How the intervals are made, for the summary (`interval_rule`) and the report's method notes."""

METRICS = ("mean_distance", "vendi")
ENSEMBLE_K = ("auto", "all", "sparse")
AUTO_ALL_UP_TO = 16
"""`ensemble_k: auto` computes every k while the largest K is at most this, sparse k beyond."""


def resolve_ensemble_k(ensemble_k: str, k_max: int) -> str:
    """The k set an analysis computes: "all" or "sparse" (`auto` by the largest K of the study)."""
    if ensemble_k not in ENSEMBLE_K:
        raise ValueError(f"unknown ensemble_k {ensemble_k!r}; use one of {', '.join(ENSEMBLE_K)}")
    if ensemble_k == "auto":
        return "all" if k_max <= AUTO_ALL_UP_TO else "sparse"
    return ensemble_k


"""Which k the curves compute: every k = 1..K, or `sparse_ks` (every k up to the number of
deployments, then steps of about a quarter, K always). The draws do not depend on the choice, so
a point of a sparse curve equals the same point of the full one; only Holm (over the k computed)
differs. The Vendi eigenvalues cost ~k^3 per draw: sparse costs about a sixth at K = 50."""


def sparse_ks(K: int, D: int) -> list[int]:
    """k = 1..min(D, K), then about x1.25 apart up to K (K included, never a near neighbour)."""
    ks = list(range(1, min(D, K) + 1))
    while ks[-1] < K:
        step = max(ks[-1] + 1, round(ks[-1] * 1.25))
        ks.append(K if step >= 0.9 * K else step)
    return ks


def draw_diversity(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean pairwise distance, Vendi) of a batch of k x k cosine Gram matrices (B, k, k)."""
    B, k, _ = G.shape
    if k == 1:
        return np.zeros(B), np.ones(B)
    trace = np.trace(G, axis1=1, axis2=2)
    mean_sim = (G.sum(axis=(1, 2)) - trace) / (k * (k - 1))
    w = np.clip(np.linalg.eigvalsh(G / k), EIGEN_EPS, None)
    vendi = np.exp(-(w * np.log(w)).sum(axis=1))
    return 1.0 - mean_sim, vendi


def ensemble_per_query(
    groups: list[Group], vectors: np.ndarray, draws: int = 24, seed: int = 0, ensemble_k: str = "auto"
) -> pl.DataFrame:
    """Per (query, condition, k, arm): mean_distance and vendi averaged over draws.

    `ensemble_k`: "all" (k = 1..K), "sparse" (`sparse_ks`; the same values at those k) or "auto"
    (`resolve_ensemble_k`: all while the largest K is at most `AUTO_ALL_UP_TO`, sparse beyond).

    Columns: query_id, category, condition, k, arm ('single'|'mixed'), mean_distance, vendi,
    n_deployments_used. The mixed arm needs at least two deployments on the query.
    """
    import polars as pl

    ensemble_k = resolve_ensemble_k(ensemble_k, max((g.k for g in groups), default=0))
    rng = np.random.default_rng(seed)

    def drawn() -> Iterator[tuple[Group, np.ndarray, np.ndarray]]:
        """Each group with its draws, in group order (the generator's order, as ever)."""
        for g in groups:
            K, D = g.k, len(g.deployments)
            if K < 1:
                continue
            # single arm: a random order of each deployment's K samples, per draw; prefixes are draws
            within = np.argsort(rng.random((draws, D, K)), axis=2)  # (R, D, K) local sample order
            single_idx = within + (np.arange(D) * K)[None, :, None]  # global local indices
            # mixed arm: round-robin over a random deployment order, random sample per deployment
            dep_rank = np.argsort(np.argsort(rng.random((draws, D)), axis=1), axis=1)  # (R, D)
            sample_rank = np.argsort(np.argsort(rng.random((draws, D, K)), axis=2), axis=2)  # (R, D, K)
            key = sample_rank * D + dep_rank[:, :, None]  # (R, D, K)
            mixed_order = np.argsort(key.reshape(draws, D * K), axis=1)  # local index = d*K + s
            yield g, single_idx, mixed_order

    def diversities(task: tuple[Group, np.ndarray, np.ndarray]) -> list[tuple[Any, ...]]:
        from hivemind.metrics.compiled import draw_diversities

        g, single_idx, mixed_order = task
        K, D = g.k, len(g.deployments)
        Y = normalize_rows(vectors[g.all_rows()])  # per group: no float64 copy of the corpus
        S = np.clip(Y @ Y.copy().T, -1.0, 1.0)  # gemm, as before (Y @ Y.T takes syrk: other bits)
        # draws are nested in k: each draw's k x k Gram matrix is the leading block of its K x K
        # one, gathered from S inside the compiled loop (no (draws, K, K) copies)
        single = np.ascontiguousarray(single_idx.reshape(draws * D, K))
        mixed = np.ascontiguousarray(mixed_order[:, :K]) if D >= 2 else None
        out: list[tuple[Any, ...]] = []
        for k in range(1, K + 1) if ensemble_k == "all" else sparse_ks(K, D):
            # at k = K every single-arm draw is its deployment's whole set in some order, and
            # neither the eigenvalues nor the mean distance depend on the order: one draw each
            dist, vendi = draw_diversities(S, single[:D] if k == K else single, k, EIGEN_EPS)
            out.append((g.query_id, g.category, g.condition, k, "single", float(dist.mean()), float(vendi.mean()), 1))
            if mixed is not None:
                dist, vendi = draw_diversities(S, mixed, k, EIGEN_EPS)
                out.append(
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
        return out

    # the eigenvalues (Vendi) are most of the time: groups run on threads, draws stay in order
    records = [r for part in ordered_map(diversities, drawn()) for r in part]
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


def sign_flip_test(differences: np.ndarray, n_perm: int = 2000, seed: int = 0) -> float:
    """One-sided paired permutation p-value that mean(d) > 0, flipping each query's sign.

    p = (1 + #{perm >= observed}) / (1 + n_perm); nan without data.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    observed = d.mean()
    tol = 1e-12 * max(1.0, abs(observed))
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_perm:
        batch = min(1024, n_perm - done)
        signs = rng.integers(0, 2, size=(batch, d.size)) * 2 - 1
        hits += int(np.sum(signs @ d / d.size >= observed - tol))
        done += batch
    return (1.0 + hits) / (1.0 + n_perm)


def _paired(per_query: pl.DataFrame, condition: str, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    single, mixed, _ = _paired_ids(per_query, condition, k, metric)
    return single, mixed


def _paired_ids(
    per_query: pl.DataFrame, condition: str, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(single, mixed, query ids) at k, one entry per query (mixed nan without that arm)."""
    import polars as pl

    part = per_query.filter((pl.col("condition") == condition) & (pl.col("k") == k))
    wide = part.pivot(on="arm", index="query_id", values=metric)
    single = wide["single"].to_numpy().astype(np.float64) if "single" in wide.columns else np.zeros(0)
    mixed = wide["mixed"].to_numpy().astype(np.float64) if "mixed" in wide.columns else np.full(single.size, np.nan)
    return single, mixed, wide["query_id"].to_list() if "single" in wide.columns else []


def curve_queries(per_query: pl.DataFrame, condition: str) -> tuple[int, list[str]]:
    """(k_max, queries): the one query set behind a condition's whole ensemble curve.

    A query with K responses per deployment can only give points k = 1..K, so letting each k
    average over the queries that reach it would mix populations along the curve. The curve
    runs k = 1..k_max over the queries that reach k_max with both arms (with the mixed arm
    whenever some query has two deployments). k_max is the K that keeps the most responses
    (k_max x queries reaching it; ties go to the larger k): in a study where a few queries lost
    samples to errors, those few are left out rather than the curve cut short for everyone.
    """
    import polars as pl

    part = per_query.filter(pl.col("condition") == condition)
    reach = part.filter(pl.col("arm") == "single").group_by("query_id", maintain_order=True).agg(pl.col("k").max())
    mixed = part.filter(pl.col("arm") == "mixed").select("query_id").unique()
    if mixed.height:
        reach = reach.join(mixed, on="query_id", how="semi", maintain_order="left")
    if reach.height == 0:
        return 0, []
    ks = reach["k"].to_numpy()
    candidates = np.unique(ks)[::-1]  # larger k first: argmax keeps the first of equal counts
    k_max = int(candidates[int(np.argmax([k * np.sum(ks >= k) for k in candidates]))])
    return k_max, reach.filter(pl.col("k") >= k_max)["query_id"].to_list()


def ensemble_curves(per_query: pl.DataFrame, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per (condition, metric, k): both arms and their difference with 95% CIs and p-values.

    Every k of a condition's curve is over the same queries (`curve_queries`), so n_queries
    is one number per condition. Pass the rows of the complete queries (`complete_queries`: every
    deployment under test present), so that no query with fewer deployments moves k_max or
    draws a mixed arm from fewer deployments; n_deployments_used is the fewest deployments any
    query's mixed arm at k drew from. Columns: condition, metric, k, n_queries, single, single_lo,
    single_hi, mixed, mixed_lo, mixed_hi, diff, diff_lo, diff_hi (pointwise 95%), diff_band_lo,
    diff_band_hi (simultaneous over the condition's k: family-wise 95%), p_value, p_holm,
    n_deployments_used.
    """
    import polars as pl

    records: list[dict[str, Any]] = []
    for condition in per_query["condition"].unique(maintain_order=True).to_list():
        k_max, queries = curve_queries(per_query, condition)
        curve = per_query.filter(pl.col("query_id").is_in(queries) & (pl.col("k") <= k_max))
        for metric in METRICS:
            rows = []
            ks = sorted(curve.filter(pl.col("condition") == condition)["k"].unique().to_list())
            used = curve.filter((pl.col("condition") == condition) & (pl.col("arm") == "mixed"))
            differences = []
            for k in ks:
                single, mixed = _paired(curve, condition, k, metric)
                differences.append(mixed - single)
                s = bootstrap_ci(single, n_boot=n_boot, seed=seed)
                m = bootstrap_ci(mixed, n_boot=n_boot, seed=seed)
                diff = paired_bootstrap_diff(mixed, single, n_boot=n_boot, seed=seed)
                p = sign_flip_test(mixed - single, n_perm=n_perm, seed=seed) if k > 1 else float("nan")
                u = used.filter(pl.col("k") == k)["n_deployments_used"]
                rows.append(
                    {
                        "condition": condition,
                        "metric": metric,
                        "k": k,
                        "n_queries": int(np.sum(~np.isnan(single))),
                        "single": s[0],
                        "single_lo": s[1],
                        "single_hi": s[2],
                        "mixed": m[0],
                        "mixed_lo": m[1],
                        "mixed_hi": m[2],
                        "diff": diff[0],
                        "diff_lo": diff[1],
                        "diff_hi": diff[2],
                        "p_value": p,
                        "n_deployments_used": int(u.to_numpy().min()) if u.len() else 1,
                    }
                )
            adjusted = holm([r["p_value"] for r in rows])
            band = _band(differences, n_boot, seed)
            for r, adj, lo, hi in zip(rows, adjusted, *band):
                r["p_holm"] = float(adj)
                # never narrower than the pointwise interval (BCa may lean where the band is symmetric)
                # (a band that could not be bounded stays nan: never the pointwise one in its place)
                r["diff_band_lo"] = float(np.minimum(lo, r["diff_lo"])) if r["diff_lo"] is not None else float(lo)
                r["diff_band_hi"] = float(np.maximum(hi, r["diff_hi"])) if r["diff_hi"] is not None else float(hi)
            records.extend(rows)
    columns = [
        "condition",
        "metric",
        "k",
        "n_queries",
        "single",
        "single_lo",
        "single_hi",
        "mixed",
        "mixed_lo",
        "mixed_hi",
        "diff",
        "diff_lo",
        "diff_hi",
        "diff_band_lo",
        "diff_band_hi",
        "p_value",
        "p_holm",
        "n_deployments_used",
    ]
    schema: dict[str, Any] = {c: pl.Float64 for c in columns}
    schema.update(
        {"condition": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64, "n_queries": pl.Int64, "n_deployments_used": pl.Int64}
    )
    return pl.DataFrame([{c: r[c] for c in columns} for r in records], schema=schema)


def _band(differences: list[np.ndarray], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per k of the simultaneous band, from the per-query differences at each k."""
    if not differences or any(d.size != differences[0].size for d in differences):
        nan = np.full(len(differences), np.nan)
        return nan, nan
    X = np.column_stack(differences)
    keep = ~np.isnan(X).all(axis=0)
    lo, hi = np.full(X.shape[1], np.nan), np.full(X.shape[1], np.nan)
    if keep.any():
        _, lo[keep], hi[keep] = simultaneous_band(X[:, keep], n_boot=n_boot, seed=seed)
    return lo, hi


def gap_share_ci(
    realized: np.ndarray,
    single: np.ndarray,
    d_ref: float,
    n_boot: int,
    seed: int,
    sums: QuerySums | None = None,
    queries: list[str] | None = None,
) -> tuple[float, float, float]:
    """mean(realized) / (D_ref - mean(single)) with a BCa interval over queries.

    With `sums` (the random-pair baseline's per-query sums of the condition) and the `queries`
    the arrays belong to, each resample of the condition's queries recomputes D_ref too (a
    curve query drawn twice counts twice in both), so the interval carries the reference's
    uncertainty; without, D_ref is held fixed at `d_ref`.
    """
    keep = ~(np.isnan(realized) | np.isnan(single))
    realized, single = realized[keep], single[keep]
    if realized.size == 0 or not d_ref - single.mean() > 0:  # no promise: nothing to share out
        return (float("nan"),) * 3
    if sums is None or queries is None:

        def fixed(W: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore", invalid="ignore"):
                r, s = W @ realized / W.sum(axis=1), W @ single / W.sum(axis=1)
                return np.where(d_ref - s > 0, r / (d_ref - s), np.nan)

        return query_bootstrap_ci(fixed, realized.size, n_boot=n_boot, seed=seed)
    index = sums.index([q for q, k in zip(queries, keep) if k])
    n = len(sums.query_ids)

    def joint(W: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        Wc = W[:, index]
        with np.errstate(divide="ignore", invalid="ignore"):
            r, s = Wc @ realized / Wc.sum(axis=1), Wc @ single / Wc.sum(axis=1)
            promised = 1.0 - (sums.similarity(W) if reference is None else reference) - s
            return np.where(promised > 0, r / promised, np.nan)

    def jackknife() -> np.ndarray:
        counts = np.zeros(n)
        np.add.at(counts, index, 1.0)  # leave one query out: its curve values go with it
        R, S, c = np.zeros(n), np.zeros(n), counts.sum()
        np.add.at(R, index, realized)
        np.add.at(S, index, single)
        with np.errstate(divide="ignore", invalid="ignore"):
            r, s = (realized.sum() - R) / (c - counts), (single.sum() - S) / (c - counts)
            promised = 1.0 - sums.leave_one_out() - s
            return np.where(promised > 0, r / promised, np.nan)

    return query_bootstrap_ci(joint, n, n_boot=n_boot, seed=seed, jackknife=jackknife)


def hivemind_gap(
    per_query: pl.DataFrame,
    groups: list[Group],
    baseline: pl.DataFrame,
    n_boot: int = 2000,
    seed: int = 0,
    sums: dict[str, QuerySums] | None = None,
) -> pl.DataFrame:
    """Per condition: the share of the promised extra diversity an ensemble gives (module doc).

    Over the ensemble curve's queries (`curve_queries`), so it agrees with the curve at k*. Pass
    the complete queries' rows and groups (`complete_queries`): a query answered by fewer
    deployments would otherwise pull k* down to its deployment count for the whole study.
    `sums`: per condition, the per-query sums behind `baseline` (`query_sums`), so the interval
    resamples D_ref with the same queries; without them D_ref is held fixed (narrower).

    Columns: condition, k_star, n_queries, reference_distance, realized, promised,
    hivemind_gap, ci_lo, ci_hi. Null where a condition has one deployment or no baseline.
    """
    import polars as pl

    records: list[tuple[Any, ...]] = []
    reference = {c: s for c, s in baseline.select("condition", "similarity").iter_rows()}
    for condition in per_query["condition"].unique(maintain_order=True).to_list():
        _, queries = curve_queries(per_query, condition)  # the curve's query set: one footing
        chosen = set(queries)
        multi = [g for g in groups if g.condition == condition and len(g.deployments) >= 2 and g.query_id in chosen]
        sim = reference.get(condition)
        if not multi or sim is None:
            records.append((condition, None, 0, None if sim is None else 1.0 - sim, None, None, None, None, None))
            continue
        k_star = min(min(len(g.deployments), g.k) for g in multi)
        curve = per_query.filter(pl.col("query_id").is_in(queries))
        single, mixed, order = _paired_ids(curve, condition, k_star, "mean_distance")
        d_ref = 1.0 - float(sim)
        realized = mixed - single
        promised = d_ref - single
        reference_sums = (sums or {}).get(condition)
        est, lo, hi = gap_share_ci(realized, single, d_ref, n_boot, seed, reference_sums, order)
        ok = ~np.isnan(realized)
        records.append(
            (
                condition,
                k_star,
                int(ok.sum()),
                d_ref,
                float(np.nanmean(realized)),
                float(np.nanmean(promised[ok])),
                est,
                lo,
                hi,
            )
        )
    schema = {
        "condition": pl.Utf8,
        "k_star": pl.Int64,
        "n_queries": pl.Int64,
        "reference_distance": pl.Float64,
        "realized": pl.Float64,
        "promised": pl.Float64,
        "hivemind_gap": pl.Float64,
        "ci_lo": pl.Float64,
        "ci_hi": pl.Float64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")
