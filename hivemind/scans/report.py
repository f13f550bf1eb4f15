"""A scan's HTML report: every cell of the deployment matrix across runs, with its drift flags.

Kept apart from `hivemind.scans.scan` (definitions, scheduling, running and analysing scans): this
module only reads the scan history and renders it.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hivemind.layout import StoreLayout, atomic_write_text
from hivemind.scans.drift import ALPHA, cell_label, run_cells, scan_history
from hivemind.scans.scan import ScanError, has_store


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("estimate") is None:
        return "–"
    lo, hi = m.get("lo"), m.get("hi")
    return f"{m['estimate']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{m['estimate']:.3f}"


def _sparkline(points: list[dict[str, Any] | None], width: int = 220, height: int = 48) -> str:
    values = [(i, p) for i, p in enumerate(points) if p and p.get("estimate") is not None]
    if not values:
        return ""
    ys = [v for _, p in values for v in (p["lo"], p["hi"], p["estimate"]) if v is not None]
    low, high = min(ys), max(ys)
    span = (high - low) or 1.0

    def x(i: int) -> float:
        return 8 + i * (width - 16) / max(len(points) - 1, 1)

    def y(v: float) -> float:
        return height - 6 - (v - low) / span * (height - 12)

    bars = "".join(
        f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(p["lo"]):.1f}" y2="{y(p["hi"]):.1f}" stroke="#999"/>'
        for i, p in values
        if p["lo"] is not None and p["hi"] is not None
    )
    line = " ".join(f"{x(i):.1f},{y(p['estimate']):.1f}" for i, p in values)
    return f'<svg width="{width}" height="{height}">{bars}<polyline fill="none" stroke="#2a6" points="{line}"/></svg>'


def write_scan_report(store_dir: str | Path, scan: str) -> Path:
    """`STORE/scans/<scan>/report.html`: every matrix cell across runs, changes flagged."""
    from hivemind.store.jobs import ServiceDB

    if not has_store(store_dir):
        raise ScanError(f"no store at {store_dir} (nothing has run there yet)")
    with ServiceDB(store_dir) as db:
        history = scan_history(db, scan)
    if not history["runs"]:
        raise ScanError(f"scan {scan!r} has no runs in {store_dir}")
    runs = [r for r in history["runs"] if r["state"] == "done"]
    cells = list(dict.fromkeys(cell for r in runs for cell in run_cells(r)))
    esc = html.escape

    def header(r: dict[str, Any]) -> str:
        when = f"{datetime.fromtimestamp(r['started_at'], UTC):%Y-%m-%d %H:%M} UTC"
        versus = (
            f'<br><span class="flag">not compared: {esc(r["not_comparable"])}</span>'
            if r["not_comparable"]
            else f"<br>vs {esc(r['compared_with'])}"
            if r["compared_with"]
            else ""
        )
        return f"<th>{esc(r['study'])}<br><small>{when}{versus}</small></th>"

    def td(r: dict[str, Any], a: str, b: str) -> str:
        value = (r.get("matrix") or {}).get(a, {}).get(b)
        text = "–" if value is None else f"{value:.3f}"
        if a == b and a in r["deployments"]:
            text = f"intra {_fmt(r['deployments'][a]['intra'])}<br>inter {_fmt(r['deployments'][a]['inter'])}"
        c = next((c for c in r["cells"] if (c["a"], c["b"]) == (a, b)), None)
        if c is None or c["change"] is None:
            return f"<td>{text}</td>"
        arrow = "▲" if c["direction"] == "up" else "▼"
        mark = f'<b class="flag">{arrow} changed {c["direction"]}</b><br>' if c["flagged"] else ""
        delta = "Δ intra" if a == b else "Δ"
        return (
            f'<td class="{"flagged" if c["flagged"] else ""}">{mark}{text}<br><small>{delta} {c["change"]:+.3f} '
            f"over {c['n_queries']} queries, p (Holm) {c['p_holm']:.3g}</small></td>"
        )

    rows = []
    for a, b in cells:
        points = [
            (
                r["deployments"].get(a, {}).get("intra")
                if a == b
                else {"estimate": (r.get("matrix") or {}).get(a, {}).get(b), "lo": None, "hi": None}
            )
            for r in runs
        ]
        rows.append(
            f"<tr><th>{esc(cell_label(a, b))}</th>{''.join(td(r, a, b) for r in runs)}"
            f"<td>{_sparkline(points)}</td></tr>"
        )
    flagged = ", ".join(history["flagged"]) or "none"
    pairs = ", ".join(cell_label(a, b) for a, b in history["flagged_pairs"]) or "none"
    refused = (
        f"<p><b>Latest run not compared:</b> {esc(history['not_comparable'])}</p>" if history["not_comparable"] else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Scan {esc(scan)}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;font-size:13px}}table{{border-collapse:collapse}}.flagged{{background:#fde2e2}}
.flag{{color:#b00}}</style></head><body><h1>Scan history: {esc(scan)}</h1>
<p>{len(runs)} finished run(s). One row per cell of the deployment x deployment similarity matrix:
a deployment's intra-model similarity (mean cosine among its own answers to a query; beside it its
inter-model similarity to all the others, both with 95% bootstrap CIs over queries) and each pair's
inter-model similarity (mean cosine between their answers to the same query). Each run is compared with
the run before it: per cell, a paired sign-flip test of the per-query change over the queries both
runs share at equal K, Holm-corrected over all cells at {ALPHA:g}. A deployment is flagged when its
own (diagonal) cell changed, a pair when its cell changed. Runs whose embedder, query set or K
differ are not compared.</p>
<p><b>Flagged in the latest run:</b> deployments: {esc(flagged)}; pairs: {esc(pairs)}</p>{refused}
<table><tr><th>cell</th>{"".join(header(r) for r in runs)}<th>trend</th></tr>{"".join(rows)}</table></body></html>"""
    return atomic_write_text(StoreLayout(Path(store_dir)).scan_report(scan), page)
