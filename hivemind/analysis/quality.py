"""Quality control vs residual narrowing, for query sets with reference answers (METRICS.md).

Per query: D_all over all K responses, D_correct over the correct ones (`hivemind.analysis.verify`),
only when at least two are correct. Between deployments a and b (a before b in spec order),
on the queries where both D_correct exist:

    total loss      = D_all(a) - D_all(b)
    residual        = D_correct(a) - D_correct(b)
    quality control = total - residual

D is the embedding diversity (1 - mean pairwise cosine) or the Vendi score. Vendi depends on
set size, so for each query all four sets are compared at a common size m = min(correct(a),
correct(b)), averaging Vendi over random m-subsets. The share of queries that were computable
is reported beside the numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.data import Group
from hivemind.metrics.semantic import embedding_diversity, vendi_score
from hivemind.metrics.stats import bootstrap_ci

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.verify import AnswerChecker


def correctness(
    groups: list[Group], checker: str | AnswerChecker | None = None
) -> dict[tuple[str, str, str], np.ndarray]:
    """(query, condition, deployment) -> boolean array over its K responses.

    `checker` is a `hivemind.analysis.verify.get_checker` name or callable (default "final": the
    reference in the response's final answer, affirmed and not hedged).
    """
    from hivemind.analysis.verify import get_checker

    check = get_checker(checker)
    out = {}
    for g in groups:
        if g.answer is None:
            continue
        for deployment, texts in zip(g.deployments, g.texts):
            out[(g.query_id, g.condition, deployment)] = np.array([bool(check(t, g.answer)) for t in texts], dtype=bool)
    return out


def quality_table(
    groups: list[Group], vectors: np.ndarray, correct: dict[tuple[str, str, str], np.ndarray]
) -> pl.DataFrame:
    """Per verifiable (query, condition, deployment): k, n_correct, accuracy, d_all, d_correct."""
    import polars as pl

    records = []
    for g in groups:
        if g.answer is None:
            continue
        for deployment, rows in zip(g.deployments, g.rows):
            ok = correct[(g.query_id, g.condition, deployment)]
            d_all = embedding_diversity(vectors[rows]) if rows.size >= 2 else None
            d_cor = embedding_diversity(vectors[rows[ok]]) if ok.sum() >= 2 else None
            records.append(
                (
                    g.query_id,
                    g.category,
                    g.condition,
                    deployment,
                    int(rows.size),
                    int(ok.sum()),
                    float(ok.mean()),
                    d_all,
                    d_cor,
                )
            )
    schema = {
        "query_id": pl.Utf8,
        "category": pl.Utf8,
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "k": pl.Int64,
        "n_correct": pl.Int64,
        "accuracy": pl.Float64,
        "d_all": pl.Float64,
        "d_correct": pl.Float64,
    }
    return pl.DataFrame(records, schema=schema, orient="row")


def _vendi_at(X: np.ndarray, m: int, rng: np.random.Generator, draws: int) -> float:
    n = X.shape[0]
    if n == m:
        return vendi_score(X)
    return float(np.mean([vendi_score(X[rng.choice(n, m, replace=False)]) for _ in range(draws)]))


def quality_split(
    groups: list[Group],
    vectors: np.ndarray,
    correct: dict[tuple[str, str, str], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    draws: int = 16,
) -> pl.DataFrame:
    """Per (condition, deployment_a, deployment_b, metric): the decomposition with 95% CIs.

    Columns: condition, deployment_a, deployment_b, metric, n_queries, n_computable,
    share_computable, total, total_lo, total_hi, residual, residual_lo, residual_hi,
    quality_control, quality_control_lo, quality_control_hi, quality_control_share.
    """
    import polars as pl

    rng = np.random.default_rng(seed)
    values: dict[tuple[str, str, str, str], list[tuple[float, float, float]]] = {}
    totals: dict[tuple[str, str, str], int] = {}
    for g in groups:
        if g.answer is None or len(g.deployments) < 2:
            continue
        for i, a in enumerate(g.deployments):
            for j in range(i + 1, len(g.deployments)):
                b = g.deployments[j]
                totals[(g.condition, a, b)] = totals.get((g.condition, a, b), 0) + 1
                ra, rb = g.rows[i], g.rows[j]
                oa, ob = correct[(g.query_id, g.condition, a)], correct[(g.query_id, g.condition, b)]
                if oa.sum() < 2 or ob.sum() < 2:
                    continue
                Xa, Xb = vectors[ra], vectors[rb]
                emb = (
                    embedding_diversity(Xa) - embedding_diversity(Xb),
                    embedding_diversity(Xa[oa]) - embedding_diversity(Xb[ob]),
                )
                m = int(min(oa.sum(), ob.sum()))
                ven = (
                    _vendi_at(Xa, m, rng, draws) - _vendi_at(Xb, m, rng, draws),
                    _vendi_at(Xa[oa], m, rng, draws) - _vendi_at(Xb[ob], m, rng, draws),
                )
                for metric, (total, residual) in (("embedding_diversity", emb), ("vendi", ven)):
                    values.setdefault((g.condition, a, b, metric), []).append((total, residual, total - residual))
    records: list[dict[str, Any]] = []
    for (condition, a, b), n_total in totals.items():
        for metric in ("embedding_diversity", "vendi"):
            rows = np.array(values.get((condition, a, b, metric), []), dtype=np.float64).reshape(-1, 3)
            record: dict[str, Any] = {
                "condition": condition,
                "deployment_a": a,
                "deployment_b": b,
                "metric": metric,
                "n_queries": n_total,
                "n_computable": rows.shape[0],
                "share_computable": rows.shape[0] / n_total,
            }
            for col, name in enumerate(("total", "residual", "quality_control")):
                est, lo, hi = bootstrap_ci(rows[:, col], n_boot=n_boot, seed=seed)
                record.update({name: est, f"{name}_lo": lo, f"{name}_hi": hi})
            total = record["total"]
            record["quality_control_share"] = (
                record["quality_control"] / total
                if rows.shape[0] and total not in (0.0,) and np.isfinite(total)
                else None
            )
            records.append(record)
    columns = [
        "condition",
        "deployment_a",
        "deployment_b",
        "metric",
        "n_queries",
        "n_computable",
        "share_computable",
        "total",
        "total_lo",
        "total_hi",
        "residual",
        "residual_lo",
        "residual_hi",
        "quality_control",
        "quality_control_lo",
        "quality_control_hi",
        "quality_control_share",
    ]
    schema: dict[str, Any] = {c: pl.Float64 for c in columns}
    schema.update(
        {
            "condition": pl.Utf8,
            "deployment_a": pl.Utf8,
            "deployment_b": pl.Utf8,
            "metric": pl.Utf8,
            "n_queries": pl.Int64,
            "n_computable": pl.Int64,
        }
    )
    return pl.DataFrame([{c: r[c] for c in columns} for r in records], schema=schema)
