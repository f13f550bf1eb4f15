"""Drift between scan runs: may two runs be compared, which matrix cells changed, the history.

METRICS.md, "Drift between scan runs": a change is attributed to the cells of the deployment x
deployment similarity matrix (a deployment's intra-model similarity on the diagonal, each pair's
inter-model similarity off it). Each cell is tested with a paired sign-flip test over the queries
both runs share (run t's value on a query against run t-1's on the same query), and the p-values
of all cells are Holm-corrected together, so that with no change at all the chance of *any* flag
in a comparison is at most `ALPHA`. A deployment is flagged through its diagonal cell only; a pair
through its own cell only, so a change in one deployment does not flag its partners.

Two runs are compared only on equal footing: same embedder, same query set (content hash) and
same K; otherwise the comparison is refused and the reason kept.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from hivemind.store.jobs import ServiceDB

ALPHA = 0.05
"""Family-wise error rate of one run-to-run comparison (all cells together)."""
EXACT_MAX_QUERIES = 16
"""Up to this many shared queries every sign pattern is enumerated (2^16); above, they are drawn."""
_CHUNK = 4096


def refusal(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Why two runs' results may not be compared (None when they may)."""
    if before.get("per_query") is None or after.get("per_query") is None:
        old = before if before.get("per_query") is None else after
        return (
            f"run {old.get('study')} kept no per-query cells (analysed by an older hivemind), "
            "so no paired test is possible"
        )
    reasons = []
    if before.get("embedder") != after.get("embedder"):
        reasons.append(f"embedder differs ({before.get('embedder')} vs {after.get('embedder')})")
    if before.get("query_set_sha256") != after.get("query_set_sha256"):
        reasons.append(
            f"query set differs (content sha256 {str(before.get('query_set_sha256'))[:12]} "
            f"vs {str(after.get('query_set_sha256'))[:12]})"
        )
    if before.get("k") != after.get("k"):
        reasons.append(f"K differs ({before.get('k')} vs {after.get('k')} samples per query and deployment)")
    return "; ".join(reasons) or None


def sign_flip_pvalues(diffs: np.ndarray, *, n_perm: int = 9999, seed: int = 0) -> np.ndarray:
    """Two-sided paired sign-flip p-value of each column of `diffs` (queries x cells).

    Under no change, a query's value in run t and in run t-1 are exchangeable, so each
    difference is as likely to have either sign; the statistic |sum of differences| is compared
    with its value under every sign pattern (all 2^n for n <= EXACT_MAX_QUERIES, else `n_perm`
    seeded draws, p = (1 + hits) / (1 + n_perm)). nan marks a query a cell lacks in either run:
    it counts as a zero difference, which no flip changes, so each column is tested over its own
    queries. A column without any query gives nan; one without any difference gives 1.
    """
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    present = ~np.isnan(d)
    d = np.where(present, d, 0.0)
    n, m = d.shape
    observed = np.abs(d.sum(axis=0))
    tolerance = 1e-9 * np.maximum(np.abs(d).sum(axis=0), 1e-300)  # float-equal sums count as >=
    hits = np.zeros(m)
    if n <= EXACT_MAX_QUERIES:
        total = 2**n
        for start in range(0, total, _CHUNK):
            codes = np.arange(start, min(start + _CHUNK, total))[:, None]
            signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)
            hits += (np.abs(signs @ d) >= observed - tolerance).sum(axis=0)
        p = hits / total
    else:
        rng = np.random.default_rng(seed)
        for start in range(0, n_perm, _CHUNK):
            signs = rng.choice([-1.0, 1.0], size=(min(_CHUNK, n_perm - start), n))
            hits += (np.abs(signs @ d) >= observed - tolerance).sum(axis=0)
        p = (1.0 + hits) / (1.0 + n_perm)
    return np.where(present.any(axis=0), p, np.nan)


def _cells(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """(a, b) -> {query id: value} of a run's per-query cells (queries where a cell is undefined left out)."""
    per_query = result["per_query"]
    ids = per_query["query_ids"]
    return {
        (c["a"], c["b"]): {q: v for q, v in zip(ids, c["values"], strict=True) if v is not None}
        for c in per_query["cells"]
    }


def compare_runs(
    before: dict[str, Any], after: dict[str, Any], *, alpha: float = ALPHA, seed: int = 0
) -> dict[str, Any]:
    """Which cells changed from run `before` to run `after` (two `analyze_scan` results).

    Only queries both runs hold at the same K are paired. Returns `not_comparable` (the reason,
    or None), `cells` (per cell: a, b, n_queries, before, after, change, p, p_holm, flagged,
    direction), `flagged` (deployments whose diagonal cell changed) and `flagged_pairs`.
    """
    import numpy as np

    from hivemind.metrics.stats import holm

    out: dict[str, Any] = {
        "compared_with": before.get("study"),
        "not_comparable": refusal(before, after),
        "alpha": alpha,
        "cells": [],
        "flagged": [],
        "flagged_pairs": [],
    }
    if out["not_comparable"]:
        return out
    k_before = dict(zip(before["per_query"]["query_ids"], before["per_query"]["k"], strict=True))
    shared = [
        q for q, k in zip(after["per_query"]["query_ids"], after["per_query"]["k"], strict=True) if k_before.get(q) == k
    ]
    old, new = _cells(before), _cells(after)
    keys = [key for key in new if key in old]
    if not shared or not keys:
        out["not_comparable"] = "the runs share no query at equal K" if keys else "the runs share no deployment"
        return out
    nan = float("nan")
    A = np.array([[new[key].get(q, nan) for key in keys] for q in shared])
    B = np.array([[old[key].get(q, nan) for key in keys] for q in shared])
    diffs = A - B
    # drawn sign patterns give p >= 1 / (n_perm + 1): keep that well under Holm's first threshold
    p = sign_flip_pvalues(diffs, n_perm=max(9999, math.ceil(20 * len(keys) / alpha)), seed=seed)
    adjusted = holm(p)
    for j, (a, b) in enumerate(keys):
        ok = ~np.isnan(diffs[:, j])
        flagged = bool(adjusted[j] <= alpha)
        change = float(diffs[ok, j].mean()) if ok.any() else nan
        out["cells"].append(
            {
                "a": a,
                "b": b,
                "n_queries": int(ok.sum()),
                "before": _round(B[ok, j].mean()) if ok.any() else None,
                "after": _round(A[ok, j].mean()) if ok.any() else None,
                "change": _round(change),
                "p": _float(p[j]),
                "p_holm": _float(adjusted[j]),
                "flagged": flagged,
                "direction": ("up" if change > 0 else "down") if flagged else None,
            }
        )
        if flagged and a == b:
            out["flagged"].append(a)
        elif flagged:
            out["flagged_pairs"].append([a, b])
    return out


def _float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def compare_with_previous(db: ServiceDB, run_id: int, result: dict[str, Any]) -> dict[str, Any] | None:
    """A finishing run compared with the latest finished run of its scan (None for the first).

    Kept in the run's result, so a history does not redo the tests of every run it lists.
    """
    run = db.scan_run(run_id)
    done = (
        [r for r in db.scan_runs(run["scan"]) if r["state"] == "done" and r["result_json"] and r["id"] < run_id]
        if run
        else []
    )
    return compare_runs(json.loads(done[-1]["result_json"]), result) if done else None


def scan_history(db: ServiceDB, scan: str) -> dict[str, Any]:
    """Every run of a scan, oldest first, each finished run compared with the one before it.

    Per run: `compared_with`, `not_comparable` (why not, e.g. another embedder), `cells` (the
    paired test of every matrix cell, `hivemind.scans.drift.compare_runs`), `flagged` (deployments
    whose own intra-model cell changed) and `flagged_pairs`; the top level repeats the latest
    finished run's flags.
    """
    runs, previous = [], None
    for row in db.scan_runs(scan):
        result = json.loads(row["result_json"]) if row["result_json"] else None
        entry: dict[str, Any] = {
            k: row[k] for k in ("id", "study", "state", "scheduled_for", "started_at", "finished_at", "error")
        }
        entry.update(deployments={}, compared_with=None, not_comparable=None, cells=[], flagged=[], flagged_pairs=[])
        if row["state"] == "done" and result:
            entry.update({k: result.get(k) for k in ("embedder", "n_queries", "k", "matrix")})
            stored = result.get("drift")
            if previous is not None:  # the comparison kept at the run's end, when it is with this run
                same = stored is not None and stored.get("compared_with") == previous.get("study")
                entry.update(stored if same else compare_runs(previous, result))
            changed = {c["a"]: c["direction"] for c in entry["cells"] if c["a"] == c["b"]}
            entry["deployments"] = {d: {**m, "changed": changed.get(d)} for d, m in result["deployments"].items()}
            previous = result
        runs.append(entry)
    done = [r for r in runs if r["state"] == "done"]
    latest = done[-1] if done else {}
    return {
        "scan": scan,
        "runs": runs,
        "flagged": latest.get("flagged", []),
        "flagged_pairs": latest.get("flagged_pairs", []),
        "not_comparable": latest.get("not_comparable"),
    }


def cell_label(a: str, b: str) -> str:
    return a if a == b else f"{a} ~ {b}"


def run_cells(run: dict[str, Any]) -> list[tuple[str, str]]:
    """A run's matrix cells: the diagonal first, then each pair once, in deployment order."""
    names = list(run.get("matrix") or {})
    return [(d, d) for d in names] + [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def history_rows(history: dict[str, Any], last_only: bool = False) -> tuple[list[list[str]], list[str]]:
    """(table rows, notes) for showing a history as text: run, cell, similarity, change, p, flag.

    The notes say which runs were not compared with the run before them, and why.
    """
    runs = [r for r in history["runs"] if r["state"] == "done"]
    rows, notes = [], []
    for run in runs[-1:] if last_only else runs:
        if run["not_comparable"]:
            notes.append(f"{run['study']}: not compared with {run['compared_with']}: {run['not_comparable']}")
        tested = {(c["a"], c["b"]): c for c in run["cells"]}
        for a, b in run_cells(run):
            value = run["matrix"][a][b]
            c = tested.get((a, b))
            change = "" if c is None or c["change"] is None else f"{c['change']:+.3f} (n={c['n_queries']})"
            p = "" if c is None or c["p_holm"] is None else f"{c['p_holm']:.3g}"
            flag = f"changed {c['direction']}" if c and c["flagged"] else ""
            rows.append([run["study"], cell_label(a, b), "-" if value is None else f"{value:.3f}", change, p, flag])
    return rows, notes
