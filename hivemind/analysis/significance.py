"""The METRICS.md gap test: gap_q = mean intra - mean inter, bootstrap and permutation.

Per condition: the mean of gap_q over queries with a **paired bootstrap over queries** (intra_q
and inter_q resampled together) and a **permutation test that shuffles deployment labels among
the responses of each query** (one-sided: gap > 0, i.e. a deployment's responses resemble each
other more than other deployments' responses). Holm adjustment across conditions.

The permutation statistic is `hivemind.metrics.semantic.intra_inter_gap` averaged over queries,
exactly as `hivemind.metrics.stats.permutation_test` computes it; it is vectorised here, because
the generic loop costs one Python call per query per permutation: with equal K per deployment
(the analysis' rule) a permutation's gap follows from the D within-label K x K blocks of the
cosine matrix, gathered by a compiled loop (`hivemind.metrics.compiled`); otherwise from all
block sums under one-hot label matrices, many permutations per matmul. The random draws are the
same either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.data import Group
from hivemind.analysis.similarity import paired_queries
from hivemind.metrics.semantic import normalize_rows
from hivemind.metrics.stats import bootstrap_ci, holm, paired_bootstrap_diff
from hivemind.parallel import ordered_map

if TYPE_CHECKING:
    import polars as pl


def _gap_from_blocks(B: np.ndarray, diag: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """gap for a batch of label assignments from block sums B (P, D, D) and diag sums (P, D)."""
    D = counts.size
    pair = counts[:, None] * counts[None, :]
    intra_den = counts * (counts - 1)
    valid = intra_den > 0
    intra = (np.einsum("pdd->pd", B) - diag)[:, valid] / intra_den[valid]
    iu = np.triu_indices(D, k=1)
    inter = B[:, iu[0], iu[1]] / pair[iu]
    return intra.mean(axis=1) - inter.mean(axis=1)


GATHER_COST = 48
"""A cosine read by the compiled gather costs about this many multiply-adds of a BLAS product
(measured at D K = 1,000 to 4,000 rows, 384-d: 18 to 98, higher once S leaves the cache)."""


def _equal_block_gaps(
    S: np.ndarray, orders: np.ndarray, codes: np.ndarray, D: int, K: int, unit_rows: np.ndarray | None
) -> np.ndarray:
    """gap for permutations `orders` (P, n) of labels `codes` where every label has K rows, from
    the intra blocks alone.

    With equal counts the inter blocks are what the intra ones leave of the total: the sum over
    a < b of B_ab is (sum(S) - sum_d B_dd) / 2, and sum(S) and trace(S) do not move under a
    relabelling. So a permutation needs only sum_d B_dd less trace(S), its same-label pairs:
    either twice the upper triangles of the blocks, gathered from S by a compiled loop
    (D K (K - 1) / 2 reads), or,
    given the unit rows Y behind S, sum_d |sum of label d's rows|^2 from one matmul of Y^T with
    the one-hot labels of many permutations (2 n D dim multiply-adds, but at BLAS speed: the
    cheaper once K passes about 4 D dim / GATHER_COST). The numbers agree with
    `_gap_from_blocks` up to the order of the floating-point sums (1e-12).
    """
    total, trace = float(S.sum()), float(np.trace(S))
    n = orders.shape[1]
    # gather: n (K - 1) / 2 reads of S; matmul: 2 n D dim multiply-adds
    if unit_rows is not None and 4 * D * unit_rows.shape[1] < GATHER_COST * (K - 1):
        off_diagonal = np.empty(orders.shape[0])  # sum_d B_dd less trace(S): same-label pairs i != j
        batch = 256  # a wide product for BLAS
        for start in range(0, orders.shape[0], batch):
            part = codes[orders[start : start + batch]]
            one_hot = np.zeros((n, part.shape[0] * D))
            one_hot[np.arange(n)[None, :], part + (np.arange(part.shape[0]) * D)[:, None]] = 1.0
            sums = unit_rows.T @ one_hot  # (dim, P D): each label's summed row
            blocks = np.einsum("ij,ij->j", sums, sums).reshape(-1, D).sum(axis=1)
            off_diagonal[start : start + part.shape[0]] = blocks - trace
    else:
        from hivemind.metrics.compiled import same_label_pair_sums

        off_diagonal = 2.0 * same_label_pair_sums(np.ascontiguousarray(S), np.ascontiguousarray(orders), codes, D)
    intra = off_diagonal / (D * K * (K - 1))
    inter = (total - trace - off_diagonal) / (D * (D - 1) * K * K)
    return intra - inter


def group_gap_permutations(
    S: np.ndarray,
    labels: np.ndarray,
    n_perm: int,
    rng: np.random.Generator,
    chunk: int = 256,
    unit_rows: np.ndarray | None = None,
) -> tuple[float, np.ndarray]:
    """(observed gap, gaps under n_perm within-query label shuffles) for one query.

    `unit_rows`: the unit vectors whose cosines S holds (optional; lets large K use a matmul).
    """
    n = np.asarray(labels).size
    draws = [rng.random((min(chunk, n_perm - start), n)) for start in range(0, n_perm, chunk)]
    return _gaps_under_draws(S, labels, draws, unit_rows)


def _gaps_under_draws(
    S: np.ndarray, labels: np.ndarray, draws: list[np.ndarray], unit_rows: np.ndarray | None
) -> tuple[float, np.ndarray]:
    """(observed gap, gap per permutation): each row of each draw, argsorted, is a permutation."""
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    D = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=D).astype(np.float64)
    d = np.diag(S).copy()
    K = int(counts[0])
    equal = D >= 2 and K >= 2 and bool(np.all(counts == K))  # the equal-K rule makes this the rule

    def gaps(orders: np.ndarray) -> np.ndarray:
        if equal:
            return _equal_block_gaps(S, orders, codes, D, K, unit_rows)
        label_sets = codes[orders]
        P = np.zeros((label_sets.shape[0], codes.size, D))
        np.put_along_axis(P, label_sets[:, :, None], 1.0, axis=2)
        Pt = P.transpose(0, 2, 1)
        B = Pt @ S @ P
        diag = Pt @ d
        return _gap_from_blocks(B, diag, counts)

    observed = float(gaps(np.arange(codes.size)[None, :])[0])
    out = [gaps(np.argsort(draw, axis=1)) for draw in draws]
    return observed, np.concatenate(out) if out else np.zeros(0)


def gap_permutation_test(
    groups: list[Group], vectors: np.ndarray, n_perm: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(observed mean gap, one-sided p) over the groups with >= 2 deployments and K >= 2.

    Groups run on threads (`ordered_map`); the generator is consumed group after group here,
    and the sums are taken in group order: the serial loop's numbers.
    """
    rng = np.random.default_rng(seed)
    chunk = 256

    def drawn() -> Iterator[tuple[Group, list[np.ndarray]]]:
        for g in groups:
            if len(g.deployments) < 2 or g.k < 2:
                continue
            n = g.all_rows().size
            yield g, [rng.random((min(chunk, n_perm - start), n)) for start in range(0, n_perm, chunk)]

    def permuted(task: tuple[Group, list[np.ndarray]]) -> tuple[float, np.ndarray]:
        g, draws = task
        Y = normalize_rows(vectors[g.all_rows()])  # per group: no float64 copy of the corpus
        S = np.clip(Y @ Y.copy().T, -1.0, 1.0)  # gemm, as before (Y @ Y.T takes syrk: other bits)
        return _gaps_under_draws(S, g.labels(), draws, Y)

    total_obs, total_perm, n = 0.0, np.zeros(n_perm), 0
    for observed, perms in ordered_map(permuted, drawn()):
        total_obs += observed
        total_perm += perms
        n += 1
    if n == 0:
        return float("nan"), float("nan")
    observed = total_obs / n
    tol = 1e-12 * max(1.0, abs(observed))
    hits = int(np.sum(total_perm / n >= observed - tol))
    return observed, (1.0 + hits) / (1.0 + n_perm)


def gap_tests(
    query_sim: pl.DataFrame,
    groups: list[Group],
    vectors: np.ndarray,
    n_boot: int = 2000,
    n_perm: int = 1000,
    seed: int = 0,
) -> pl.DataFrame:
    """Per condition: intra, inter, gap (paired bootstrap CIs), permutation p, Holm p.

    All three over the same queries (`paired_queries`: those with two or more deployments), so
    gap = intra - inter holds exactly; the permutation test uses those queries too. The headline
    passes only the complete queries (`hivemind.analysis.data.complete_queries`): a query that
    lacks a deployment has a gap over fewer deployments, and averaging it in biases the mean.

    Columns: condition, n_queries, intra, intra_lo, intra_hi, inter, inter_lo, inter_hi, gap,
    gap_lo, gap_hi, p_permutation, p_holm, n_perm. Gap and p are null with one deployment.
    """
    import polars as pl

    records: list[dict[str, Any]] = []
    for condition in query_sim["condition"].unique(maintain_order=True).to_list():
        part = paired_queries(query_sim.filter(pl.col("condition") == condition))
        intra = part["intra"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        inter = part["inter"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        ci_intra = bootstrap_ci(intra, n_boot=n_boot, seed=seed)
        ci_inter = bootstrap_ci(inter, n_boot=n_boot, seed=seed)
        gap = paired_bootstrap_diff(intra, inter, n_boot=n_boot, seed=seed)
        _, p = gap_permutation_test([g for g in groups if g.condition == condition], vectors, n_perm, seed)
        records.append(
            {
                "condition": condition,
                "n_queries": int(np.sum(~np.isnan(intra))),
                "intra": ci_intra[0],
                "intra_lo": ci_intra[1],
                "intra_hi": ci_intra[2],
                "inter": ci_inter[0],
                "inter_lo": ci_inter[1],
                "inter_hi": ci_inter[2],
                "gap": gap[0],
                "gap_lo": gap[1],
                "gap_hi": gap[2],
                "p_permutation": p,
                "n_perm": n_perm,
            }
        )
    adjusted = holm([r["p_permutation"] for r in records])
    for r, adj in zip(records, adjusted):
        r["p_holm"] = float(adj)
    columns = [
        "condition",
        "n_queries",
        "intra",
        "intra_lo",
        "intra_hi",
        "inter",
        "inter_lo",
        "inter_hi",
        "gap",
        "gap_lo",
        "gap_hi",
        "p_permutation",
        "p_holm",
        "n_perm",
    ]
    schema: dict[str, Any] = {c: pl.Float64 for c in columns}
    schema.update({"condition": pl.Utf8, "n_queries": pl.Int64, "n_perm": pl.Int64})
    return pl.DataFrame([{c: r[c] for c in columns} for r in records], schema=schema)
