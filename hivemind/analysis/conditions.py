"""Decoding conditions and model lineages.

**Conditions.** When a study crosses deployments with conditions (temperature, min-p, a system
prompt asking for variety), the question is how much intra-model diversity a condition brings
back, next to what switching models brings. Per (condition, deployment), against the baseline
condition (`default` when present, else the spec's first):

    recovered       = intra(baseline) - intra(condition)    paired over queries, 95% CI
    inter_gap       = intra(baseline) - inter(baseline)     what switching models gives
    recovered_share = recovered / inter_gap

A row with deployment `(all)` does the same with the per-query means over deployments.

**Against a reference** (METRICS.md, "Interventions against a reference"): with a reference arm
R (human answers) under the baseline condition b, for deployment m and condition c,

    reference_gap_closed = (mean_q intra(m, b, q) - mean_q intra(m, c, q))
                           / (mean_q intra(m, b, q) - mean_q intra(R, b, q))

over the queries where all three exist, with a bootstrap 95% CI over those queries (the ratio
of means recomputed on each resample). 0 = no diversity bought back, 1 = as diverse as R.

**Interventions.** The answer to "can decoding buy back what training took?": per condition
against the baseline, three paired per-query differences (baseline minus condition), each with a
paired bootstrap 95% CI over queries and a two-sided sign-flip permutation p-value, Holm-corrected
over every row of the table:

    intra_restored  intra(baseline) - intra(condition)      diversity within a model restored
    inter_restored  inter(baseline) - inter(condition)      models less alike: the ensemble widens
    quality_cost    accuracy(baseline) - accuracy(condition) on the verifiable queries

**Lineages.** Deployments tagged with `family` and `stage` (base -> sft -> dpo -> rl) get their
diversity along each lineage: intra similarity, embedding diversity, Vendi, distinct-2 and, for
verifiable sets, accuracy, per stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.metrics.stats import bootstrap_ci, holm, paired_bootstrap_diff

if TYPE_CHECKING:
    import polars as pl

ALL = "(all)"
STAGE_ORDER = [
    "base",
    "pretrained",
    "pt",
    "cpt",
    "sft",
    "instruct",
    "it",
    "chat",
    "dpo",
    "simpo",
    "kto",
    "rlhf",
    "ppo",
    "grpo",
    "rl",
    "rlvr",
    "reasoning",
]


def baseline_condition(conditions: list[str]) -> str | None:
    """`default` when present, else the first condition."""
    if not conditions:
        return None
    return "default" if "default" in conditions else conditions[0]


def _per_deployment_query(pairs: pl.DataFrame) -> pl.DataFrame:
    """(condition, deployment, query_id) -> intra, inter (mean over partners)."""
    import polars as pl

    flipped = pairs.filter(pl.col("kind") == "inter").with_columns(
        pl.col("deployment_b").alias("deployment_a"), pl.col("deployment_a").alias("deployment_b")
    )
    sym = pl.concat([pairs, flipped.select(pairs.columns)])
    return (
        sym.group_by(["condition", "deployment_a", "query_id"], maintain_order=True)
        .agg(
            pl.col("similarity").filter(pl.col("kind") == "intra").mean().alias("intra"),
            pl.col("similarity").filter(pl.col("kind") == "inter").mean().alias("inter"),
        )
        .rename({"deployment_a": "deployment"})
    )


def _f(values: Any) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def reference_gap_closed(
    base: np.ndarray, cond: np.ndarray, ref: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float | None, float | None, float | None, int]:
    """(estimate, lo, hi, n_queries): (mean base - mean cond) / (mean base - mean ref) over the
    queries where all three are finite, bootstrap percentile 95% CI over those queries."""
    keep = np.isfinite(base) & np.isfinite(cond) & np.isfinite(ref)
    b, c, r = base[keep], cond[keep], ref[keep]
    n = int(keep.sum())
    if n == 0:
        return None, None, None, 0
    den = b.mean() - r.mean()
    if den == 0:
        return None, None, None, n
    est = float((b.mean() - c.mean()) / den)
    lo = hi = None
    if n_boot > 0 and n > 1:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        bb, cc, rr = b[idx].mean(axis=1), c[idx].mean(axis=1), r[idx].mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            boots = (bb - cc) / (bb - rr)
        boots = boots[np.isfinite(boots)]
        if boots.size:
            lo, hi = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
    return est, lo, hi, n


def conditions_view(
    pairs: pl.DataFrame,
    query_sim: pl.DataFrame,
    conditions: list[str],
    n_boot: int = 2000,
    seed: int = 0,
    references: list[str] | None = None,
) -> pl.DataFrame:
    """Per (condition, deployment): intra, inter and the diversity recovered vs the baseline.

    Columns: condition, deployment, is_baseline, n_queries, intra, intra_lo, intra_hi, inter,
    recovered, recovered_lo, recovered_hi, inter_gap, recovered_share, is_reference, reference,
    reference_gap_closed, reference_gap_closed_lo, reference_gap_closed_hi (against the first
    of `references` under the baseline; null for the baseline, for reference rows, and without
    a reference). `query_sim` (the `(all)` rows) holds the deployments under test only.
    """
    import polars as pl

    base = baseline_condition(conditions)
    refs = list(references or [])
    if refs:  # inter-model similarity is between deployments under test: no pair with a reference arm
        pairs = pairs.filter(
            (pl.col("kind") == "intra") | ~(pl.col("deployment_a").is_in(refs) | pl.col("deployment_b").is_in(refs))
        )
    per = _per_deployment_query(pairs)
    overall = query_sim.select("condition", pl.lit(ALL).alias("deployment"), "query_id", "intra", "inter")
    per = pl.concat([per, overall.select(per.columns)])
    records = []
    base_part = per.filter(pl.col("condition") == base)
    reference = next((r for r in refs if base_part.filter(pl.col("deployment") == r).height), None)
    ref_intra = (
        base_part.filter(pl.col("deployment") == reference).select("query_id", pl.col("intra").alias("intra_ref"))
        if reference
        else None
    )
    for (condition, deployment), part in per.group_by(["condition", "deployment"], maintain_order=True):
        ref = base_part.filter(pl.col("deployment") == deployment)
        joined = part.join(ref, on="query_id", how="left", suffix="_base")
        intra, intra_base = _f(joined["intra"].to_list()), _f(joined["intra_base"].to_list())
        ci = bootstrap_ci(intra, n_boot=n_boot, seed=seed)
        rec = paired_bootstrap_diff(intra_base, intra, n_boot=n_boot, seed=seed)
        gaps = _f(ref["intra"].to_list()) - _f(ref["inter"].to_list())
        gap_base = float(np.nanmean(gaps)) if np.isfinite(gaps).any() else np.nan
        inter = _f(part["inter"].to_list())
        closed: tuple[float | None, float | None, float | None, int] = (None, None, None, 0)
        if ref_intra is not None and condition != base and deployment not in refs:
            with_ref = joined.join(ref_intra, on="query_id", how="left")
            closed = reference_gap_closed(
                _f(with_ref["intra_base"].to_list()),
                _f(with_ref["intra"].to_list()),
                _f(with_ref["intra_ref"].to_list()),
                n_boot=n_boot,
                seed=seed,
            )
        records.append(
            {
                "condition": condition,
                "deployment": deployment,
                "is_baseline": condition == base,
                "n_queries": int(np.sum(~np.isnan(intra))),
                "intra": ci[0],
                "intra_lo": ci[1],
                "intra_hi": ci[2],
                "inter": float(np.nanmean(inter)) if np.isfinite(inter).any() else None,
                "recovered": rec[0],
                "recovered_lo": rec[1],
                "recovered_hi": rec[2],
                "inter_gap": float(gap_base) if np.isfinite(gap_base) else None,
                "recovered_share": float(rec[0] / gap_base)
                if np.isfinite(gap_base) and gap_base != 0 and np.isfinite(rec[0])
                else None,
                "is_reference": deployment in refs,
                "reference": reference,
                "reference_gap_closed": closed[0],
                "reference_gap_closed_lo": closed[1],
                "reference_gap_closed_hi": closed[2],
            }
        )
    columns = [
        "condition",
        "deployment",
        "is_baseline",
        "n_queries",
        "intra",
        "intra_lo",
        "intra_hi",
        "inter",
        "recovered",
        "recovered_lo",
        "recovered_hi",
        "inter_gap",
        "recovered_share",
        "is_reference",
        "reference",
        "reference_gap_closed",
        "reference_gap_closed_lo",
        "reference_gap_closed_hi",
    ]
    schema: dict[str, Any] = {c: pl.Float64 for c in columns}
    schema.update(
        {
            "condition": pl.Utf8,
            "deployment": pl.Utf8,
            "is_baseline": pl.Boolean,
            "n_queries": pl.Int64,
            "is_reference": pl.Boolean,
            "reference": pl.Utf8,
        }
    )
    return pl.DataFrame([{c: r[c] for c in columns} for r in records], schema=schema)


def two_sided_sign_flip(differences: np.ndarray, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation p-value that the differences are centred on 0."""
    from hivemind.analysis.ensemble import sign_flip_test

    up, down = sign_flip_test(differences, n_perm, seed), sign_flip_test(-differences, n_perm, seed)
    return float(min(1.0, 2.0 * min(up, down)))


INTERVENTION_MEASURES = {
    "intra_restored": "intra-model similarity removed (higher = more diverse within a model)",
    "inter_restored": "inter-model similarity removed (higher = models less alike)",
    "quality_cost": "accuracy lost on verifiable queries (higher = worse answers)",
}


def interventions_view(
    query_sim: pl.DataFrame,
    quality: pl.DataFrame | None,
    conditions: list[str],
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """Per (condition, measure): paired difference baseline - condition over queries, CI, Holm p.

    `query_sim` has condition, query_id, intra, inter (per query, means over deployments);
    `quality` has condition, query_id, accuracy (per deployment; averaged here). Columns:
    condition, measure, n_queries, baseline, value, estimate, lo, hi, p, p_holm, significant.
    """
    import polars as pl

    base = baseline_condition(conditions)
    per_query = {
        "intra_restored": query_sim.select("condition", "query_id", pl.col("intra").alias("v")),
        "inter_restored": query_sim.select("condition", "query_id", pl.col("inter").alias("v")),
    }
    if quality is not None and quality.height:
        per_query["quality_cost"] = quality.group_by(["condition", "query_id"], maintain_order=True).agg(
            pl.col("accuracy").mean().alias("v")
        )
    records: list[dict[str, Any]] = []
    for condition in [c for c in conditions if c != base]:
        for measure, frame in per_query.items():
            ref = frame.filter(pl.col("condition") == base).select("query_id", pl.col("v").alias("b"))
            joined = frame.filter(pl.col("condition") == condition).join(ref, on="query_id", how="inner")
            b, v = _f(joined["b"].to_list()), _f(joined["v"].to_list())
            keep = np.isfinite(b) & np.isfinite(v)
            if not keep.any():
                continue
            est, lo, hi = paired_bootstrap_diff(b[keep], v[keep], n_boot=n_boot, seed=seed)
            records.append(
                {
                    "condition": condition,
                    "measure": measure,
                    "n_queries": int(keep.sum()),
                    "baseline": float(b[keep].mean()),
                    "value": float(v[keep].mean()),
                    "estimate": est,
                    "lo": lo,
                    "hi": hi,
                    "p": two_sided_sign_flip(b[keep] - v[keep], n_perm=n_perm, seed=seed),
                }
            )
    adjusted = holm([r["p"] for r in records]) if records else np.array([])
    for record, p_holm in zip(records, adjusted):
        record["p_holm"] = float(p_holm)
        record["significant"] = bool(p_holm < 0.05)
    schema: dict[str, Any] = {"condition": pl.Utf8, "measure": pl.Utf8, "n_queries": pl.Int64}
    schema.update({c: pl.Float64 for c in ("baseline", "value", "estimate", "lo", "hi", "p", "p_holm")})
    schema["significant"] = pl.Boolean
    return pl.DataFrame(records, schema=schema)


def stage_rank(stages: list[str]) -> dict[str, int]:
    """Order of stages: known post-training stages in pipeline order, then first appearance."""
    known = {s: i for i, s in enumerate(STAGE_ORDER)}
    unique = list(dict.fromkeys(stages))
    ordered = sorted(unique, key=lambda s: (known.get(s.lower(), len(known)), unique.index(s)))
    return {s: i for i, s in enumerate(ordered)}


def lineage_view(
    diversity: pl.DataFrame,
    pairs: pl.DataFrame,
    meta: pl.DataFrame,
    quality: pl.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> pl.DataFrame:
    """Per (family, stage, deployment, condition) for deployments tagged with family and stage.

    `meta` has deployment, family, stage. Columns: family, stage, stage_order, deployment,
    condition, n_queries, intra, intra_lo, intra_hi, embedding_diversity, vendi, distinct_2,
    accuracy (null without reference answers).
    """
    import polars as pl

    tagged = meta.filter(pl.col("family").is_not_null() & pl.col("stage").is_not_null()).unique(
        "deployment", maintain_order=True
    )
    columns = [
        "family",
        "stage",
        "stage_order",
        "deployment",
        "condition",
        "n_queries",
        "intra",
        "intra_lo",
        "intra_hi",
        "embedding_diversity",
        "vendi",
        "distinct_2",
        "accuracy",
    ]
    schema: dict[str, Any] = {c: pl.Float64 for c in columns}
    schema.update(
        {
            "family": pl.Utf8,
            "stage": pl.Utf8,
            "stage_order": pl.Int64,
            "deployment": pl.Utf8,
            "condition": pl.Utf8,
            "n_queries": pl.Int64,
        }
    )
    if tagged.height == 0:
        return pl.DataFrame([], schema=schema)
    ranks = stage_rank(tagged["stage"].to_list())
    per = _per_deployment_query(pairs)
    records = []
    for family, stage, deployment in tagged.select("family", "stage", "deployment").iter_rows():
        for condition in per.filter(pl.col("deployment") == deployment)["condition"].unique(maintain_order=True):
            mine = per.filter((pl.col("deployment") == deployment) & (pl.col("condition") == condition))
            intra = _f(mine["intra"].to_list())
            ci = bootstrap_ci(intra, n_boot=n_boot, seed=seed)
            div = diversity.filter((pl.col("deployment") == deployment) & (pl.col("condition") == condition))
            acc = None
            if quality is not None and quality.height:
                q = quality.filter((pl.col("deployment") == deployment) & (pl.col("condition") == condition))
                acc = q["accuracy"].mean() if q.height else None
            records.append(
                {
                    "family": family,
                    "stage": stage,
                    "stage_order": ranks[stage],
                    "deployment": deployment,
                    "condition": condition,
                    "n_queries": int(np.sum(~np.isnan(intra))),
                    "intra": ci[0],
                    "intra_lo": ci[1],
                    "intra_hi": ci[2],
                    "embedding_diversity": div["embedding_diversity"].mean() if div.height else None,
                    "vendi": div["vendi"].mean() if div.height else None,
                    "distinct_2": div["distinct_2"].mean() if div.height else None,
                    "accuracy": acc,
                }
            )
    frame = pl.DataFrame([{c: r[c] for c in columns} for r in records], schema=schema)
    return frame.sort(["family", "condition", "stage_order", "deployment"])


def reference_sentences(table: pl.DataFrame, baseline: str | None) -> list[str]:
    """The conditions table's answer against a reference, one sentence per deployment under test:
    "in-context closes 35% [30%, 41%] of the distance between gpt-4o's diversity under resampling
    (intra 0.813) and that of the reference humans (0.354), ...". Empty without a reference."""
    import polars as pl

    if table.height == 0 or "reference_gap_closed" not in table.columns:
        return []
    rows = table.filter(pl.col("reference_gap_closed").is_not_null())
    if rows.height == 0:
        return []
    reference = rows["reference"][0]
    ref_intra = table.filter((pl.col("deployment") == reference) & (pl.col("condition") == baseline))["intra"]
    deployments = [d for d in rows["deployment"].unique(maintain_order=True).to_list() if d != ALL]
    if len(deployments) > 1:
        deployments.append(ALL)
    out = []
    for deployment in deployments:
        mine = rows.filter(pl.col("deployment") == deployment)
        base = table.filter((pl.col("deployment") == deployment) & (pl.col("condition") == baseline))["intra"]
        parts = []
        for r in mine.sort("reference_gap_closed", descending=True).iter_rows(named=True):
            ci = (
                f" [{r['reference_gap_closed_lo']:.0%}, {r['reference_gap_closed_hi']:.0%}]"
                if r["reference_gap_closed_lo"] is not None and r["reference_gap_closed_hi"] is not None
                else ""
            )
            parts.append(f"{r['condition']} closes {r['reference_gap_closed']:.0%}{ci} (intra {r['intra']:.3f})")
        who = "the deployments under test" if deployment == ALL else deployment
        base_text = f" (intra {base[0]:.3f})" if base.len() and base[0] is not None else ""
        ref_text = f" ({ref_intra[0]:.3f})" if ref_intra.len() and ref_intra[0] is not None else ""
        out.append(
            f"Of the distance between {who}'s diversity under {baseline}{base_text} and that of the "
            f"reference {reference}{ref_text}, "
            + "; ".join(parts)
            + " (reference_gap_closed: ratio of means over the queries all three answered, bootstrap 95% CI; "
            "0 = nothing bought back, 100% = as diverse as the reference)."
        )
    return out
