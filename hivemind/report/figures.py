"""Figures of the HTML report: matplotlib (Agg) rendered to base64 PNG data URIs.

Each function takes the analysis tables and returns a `data:image/png;base64,...` string, or
None when the study has nothing to show there (one deployment: no matrix; one condition: no
conditions plot). matplotlib is imported inside, so importing this module is cheap.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import polars as pl

DPI = 100
BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _encode(fig: Any) -> str:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cond(frame: pl.DataFrame, condition: str | None) -> pl.DataFrame:
    return frame.filter(frame["condition"] == condition) if condition is not None and frame.height else frame


def bins_heatmap(bins: pl.DataFrame, condition: str | None) -> str | None:
    """Share of queries per intra-similarity bin (rows: deployments; plus their inter rows)."""
    part = _cond(bins, condition)
    if part.height == 0:
        return None
    plt = _plt()
    labels, rows = [], []
    for kind in ("intra", "inter"):
        sub = part.filter(part["kind"] == kind)
        for deployment in sub["deployment"].unique(maintain_order=True).to_list():
            shares = sub.filter(sub["deployment"] == deployment).sort("bin")["share"].to_numpy()
            labels.append(f"{deployment} ({kind})")
            rows.append(shares)
    data = np.vstack(rows)
    n_bins = data.shape[1]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n_bins, 0.8 + 0.42 * len(labels)))
    image = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (r, c), value in np.ndenumerate(data):
        ax.text(
            c, r, f"{100 * value:.0f}%", ha="center", va="center", fontsize=8, color="black" if value > 0.6 else "white"
        )
    ax.set_xticks(
        range(n_bins),
        [f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}" for b in range(n_bins)],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("mean cosine similarity of a query's responses")
    ax.set_title("Share of queries per similarity bin")
    fig.colorbar(image, ax=ax, fraction=0.03, label="share of queries")
    return _encode(fig)


def matrix_dendrogram(matrix: pl.DataFrame, clustering: dict[str, Any] | None, condition: str | None) -> str | None:
    """Deployment x deployment similarity (diagonal = intra), ordered by its dendrogram."""
    part = _cond(matrix, condition)
    if part.height == 0:
        return None
    plt = _plt()
    labels = (clustering or {}).get("order") or part["deployment_a"].unique(maintain_order=True).to_list()
    index = {d: i for i, d in enumerate(labels)}
    M = np.full((len(labels), len(labels)), np.nan)
    for a, b, s in part.select("deployment_a", "deployment_b", "similarity").iter_rows():
        if a in index and b in index:
            M[index[a], index[b]] = np.nan if s is None else s
    clustering = clustering or {}
    linkage = clustering.get("linkage") or []
    size = 1.2 + 0.7 * len(labels)
    if linkage:
        fig, (top, ax) = plt.subplots(2, 1, figsize=(size + 1.5, size + 1.6), gridspec_kw={"height_ratios": [1, 3]})
        from scipy.cluster.hierarchy import dendrogram

        dendrogram(
            np.asarray(linkage),
            labels=clustering["labels"],
            ax=top,
            color_threshold=0,
            above_threshold_color=GREY,
            no_labels=True,
        )
        top.set_ylabel("1 - similarity", fontsize=8)
        top.set_title(f"Clustering ({clustering.get('method', 'average')} linkage)", fontsize=9)
        top.tick_params(labelsize=7)
    else:
        fig, ax = plt.subplots(figsize=(size + 1.5, size))
    finite = M[np.isfinite(M)]
    vmin = float(finite.min()) if finite.size else 0.0
    image = ax.imshow(M, cmap="magma", vmin=min(vmin, 0.99), vmax=1.0)
    for (r, c), value in np.ndenumerate(M):
        if np.isfinite(value):
            ax.text(
                c,
                r,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if value > (vmin + 1) / 2 else "white",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title("Mean cosine similarity (diagonal = intra-model)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _encode(fig)


def ensemble_curves(ensemble: pl.DataFrame, condition: str | None) -> str | None:
    """Diversity of k responses: one deployment vs k different deployments, 95% CIs."""
    part = _cond(ensemble, condition)
    if part.height == 0:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    titles = {"mean_distance": "Mean pairwise cosine distance", "vendi": "Vendi score (effective # answers)"}
    for ax, metric in zip(axes, ("mean_distance", "vendi")):
        sub = part.filter(part["metric"] == metric).sort("k")
        k = sub["k"].to_numpy()
        for arm, color, label in (
            ("single", BLUE, "k samples of one deployment"),
            ("mixed", ORANGE, "k samples from different deployments"),
        ):
            y = sub[arm].to_numpy().astype(float)
            if np.all(np.isnan(y)):
                continue
            ax.plot(k, y, marker="o", color=color, label=label)
            ax.fill_between(
                k,
                sub[f"{arm}_lo"].to_numpy().astype(float),
                sub[f"{arm}_hi"].to_numpy().astype(float),
                color=color,
                alpha=0.2,
            )
        if metric == "vendi":
            ax.plot(k, k, ls=":", color=GREY, label="k distinct answers")
        ax.set_xlabel("k (responses in the ensemble)")
        ax.set_title(titles[metric], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    return _encode(fig)


def similarity_distributions(query_sim: pl.DataFrame, baseline: float | None, condition: str | None) -> str | None:
    """Per-query intra and inter similarity histograms beside the random-pair baseline."""
    part = _cond(query_sim, condition)
    if part.height == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bins = np.linspace(min(0.0, baseline or 0.0) - 0.05, 1.0, 32)
    for column, color in (("intra", BLUE), ("inter", ORANGE)):
        values = part[column].drop_nulls().drop_nans().to_numpy()
        if values.size:
            ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{column}-model (per query)")
    if baseline is not None:
        ax.axvline(baseline, color="black", ls="--", label=f"random-pair baseline {baseline:.2f}")
    ax.set_xlabel("mean cosine similarity")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8)
    return _encode(fig)


def nn_counts(frame: pl.DataFrame, condition: str | None) -> str | None:
    """Distinct deployments among a response's j nearest neighbours (same query)."""
    part = _cond(frame, condition)
    if part.height == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    j = part["j"].to_numpy()
    ax.plot(j, part["distinct_deployments"].to_numpy(), marker=".", color=BLUE, label="observed")
    n_dep = int(part["n_deployments"].to_numpy().max())
    ax.plot(j, np.minimum(j, n_dep), ls=":", color=GREY, label="maximum possible")
    ax.set_xlabel("j nearest responses")
    ax.set_ylabel("distinct deployments")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _encode(fig)


def overlap_scatter(frame: pl.DataFrame, condition: str | None) -> str | None:
    """Verbatim 5-gram overlap vs semantic similarity, one point per deployment pair."""
    part = _cond(frame, condition)
    jac = [c for c in part.columns if c.startswith("jaccard_")]
    if part.height == 0 or not jac:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, color in (("intra", BLUE), ("inter", ORANGE)):
        sub = part.filter(part["kind"] == kind)
        ax.scatter(
            sub["semantic_similarity"].to_numpy(),
            sub[jac[0]].fill_null(np.nan).to_numpy(),
            color=color,
            label=kind,
            s=28,
        )
        for a, b, x, y in sub.select("deployment_a", "deployment_b", "semantic_similarity", jac[0]).iter_rows():
            if y is not None and x is not None:
                ax.annotate(a if a == b else f"{a}/{b}", (x, y), fontsize=6, alpha=0.7)
    ax.set_xlabel("mean cosine similarity")
    ax.set_ylabel(f"mean Jaccard of {jac[0].split('_')[1]}s")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _encode(fig)


def categories(frame: pl.DataFrame, condition: str | None) -> str | None:
    """Intra vs inter similarity per category with 95% CIs."""
    part = _cond(frame, condition)
    if part.height == 0:
        return None
    plt = _plt()
    names = part["category"].to_list()
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.38 * len(names)))
    for offset, column, color in ((-0.18, "intra", BLUE), (0.18, "inter", ORANGE)):
        est = part[column].fill_null(np.nan).to_numpy().astype(float)
        if np.all(np.isnan(est)):
            continue
        lo = est - part[f"{column}_lo"].fill_null(np.nan).to_numpy().astype(float)
        hi = part[f"{column}_hi"].fill_null(np.nan).to_numpy().astype(float) - est
        ax.barh(y + offset, est, height=0.36, color=color, label=column, xerr=[lo, hi], capsize=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("mean cosine similarity")
    ax.legend(fontsize=8)
    return _encode(fig)


def conditions_plot(frame: pl.DataFrame) -> str | None:
    """Intra-model similarity recovered by each condition, beside the inter-model gap."""
    if frame.height == 0 or frame["condition"].n_unique() < 2:
        return None
    plt = _plt()
    part = frame.filter(~frame["is_baseline"])
    labels = [f"{c} / {d}" for c, d in part.select("condition", "deployment").iter_rows()]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.4 * len(labels)))
    est = part["recovered"].fill_null(np.nan).to_numpy().astype(float)
    err = [
        est - part["recovered_lo"].fill_null(np.nan).to_numpy().astype(float),
        part["recovered_hi"].fill_null(np.nan).to_numpy().astype(float) - est,
    ]
    ax.barh(y, est, height=0.5, color=BLUE, xerr=err, capsize=2, label="diversity recovered (intra drop)")
    ax.scatter(
        part["inter_gap"].fill_null(np.nan).to_numpy(),
        y,
        marker="|",
        s=300,
        color=ORANGE,
        label="inter-model gap at baseline",
    )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("cosine similarity units")
    ax.legend(fontsize=8)
    return _encode(fig)


def lineage_plot(frame: pl.DataFrame) -> str | None:
    """Embedding diversity (1 - intra similarity) along each family's stages."""
    if frame.height == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (family, condition), part in frame.group_by(["family", "condition"], maintain_order=True):
        part = part.sort("stage_order")
        x = part["stage_order"].to_numpy()
        y = 1.0 - part["intra"].fill_null(np.nan).to_numpy().astype(float)
        err = [
            part["intra_hi"].fill_null(np.nan).to_numpy() - part["intra"].fill_null(np.nan).to_numpy(),
            part["intra"].fill_null(np.nan).to_numpy() - part["intra_lo"].fill_null(np.nan).to_numpy(),
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{family} ({condition})")
        for xi, yi, stage in zip(x, y, part["stage"].to_list()):
            ax.annotate(stage, (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 4))
    stages = frame.unique("stage_order").sort("stage_order")
    ax.set_xticks(stages["stage_order"].to_list(), stages["stage"].to_list(), fontsize=8)
    ax.set_ylabel("1 - intra similarity")
    ax.set_title("Diversity along each lineage", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _encode(fig)


def quality_plot(frame: pl.DataFrame) -> str | None:
    """Diversity loss between deployments split into quality control and residual."""
    part = (
        frame.filter((frame["metric"] == "embedding_diversity") & (frame["n_computable"] > 0))
        if frame.height
        else frame
    )
    if part.height == 0:
        return None
    plt = _plt()
    labels = [f"{a} -> {b} ({c})" for c, a, b in part.select("condition", "deployment_a", "deployment_b").iter_rows()]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.45 * len(labels)))
    qc = part["quality_control"].fill_null(0).to_numpy().astype(float)
    res = part["residual"].fill_null(0).to_numpy().astype(float)
    ax.barh(y, qc, color=ORANGE, label="quality control (wrong answers removed)")
    ax.barh(y, res, left=qc, color=BLUE, label="residual (narrowing among correct)")
    ax.scatter(part["total"].fill_null(np.nan).to_numpy(), y, color="black", marker="D", s=16, label="total loss")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("embedding-diversity loss")
    ax.legend(fontsize=8)
    return _encode(fig)


def lexical_plot(frame: pl.DataFrame, condition: str | None) -> str | None:
    """Per-deployment means of lexical and semantic diversity metrics (small multiples)."""
    part = _cond(frame, condition)
    if part.height == 0:
        return None
    plt = _plt()
    metrics = part["metric"].unique(maintain_order=True).to_list()
    cols = 4
    rows = int(np.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.3 * rows), squeeze=False)
    for ax, metric in zip(axes.ravel(), metrics):
        sub = part.filter(part["metric"] == metric)
        est = sub["mean"].to_numpy().astype(float)
        err = [est - sub["ci_lo"].to_numpy().astype(float), sub["ci_hi"].to_numpy().astype(float) - est]
        ax.bar(range(sub.height), est, yerr=err, capsize=2, color=BLUE if sub["kind"][0] == "semantic" else ORANGE)
        ax.set_xticks(range(sub.height), sub["deployment"].to_list(), rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return _encode(fig)
