"""HTML building blocks of the report: style sheet, numbers, tables, cards, images."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.summary import Estimate

MAX_TABLE_ROWS = 200
SNIPPET_CHARS = 240

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:20px 28px;color:#222;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
.sub{color:#666;margin-top:4px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:190px;flex:1;background:#fafafa}
.card .v{font-size:1.6em;font-weight:600}.card .l{color:#555;font-size:.85em}.card .ci{color:#777;font-size:.8em}
table{border-collapse:collapse;font-size:.8em;margin:10px 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f0f0f0}td.t{text-align:left}img{max-width:100%;height:auto;display:block;margin:10px 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px;border:1px solid #ddd;border-radius:6px;
padding:8px;margin:10px 0}.pair .q{grid-column:1/3;color:#555;font-size:.85em}
.pair pre,pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f6f6;padding:8px;margin:0;font-size:.85em}
.note{color:#555;font-size:.9em}details{margin:8px 0}
.warn{border:1px solid #e0a800;background:#fff8e1;border-radius:6px;padding:8px 14px;margin:12px 0}
"""


def fmt(value: Any, digits: int = 3) -> str:
    """A number as shown: `-` for missing or not finite, tiny values in scientific notation."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "-"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def esc(value: Any) -> str:
    return html.escape(fmt(value))


def table(frame: pl.DataFrame | None, columns: Sequence[str] | None = None, max_rows: int = MAX_TABLE_ROWS) -> str:
    """An HTML table of (the first `max_rows` rows of) a frame; text columns left-aligned."""
    if frame is None or frame.height == 0:
        return '<p class="note">No rows.</p>'
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in frame.head(max_rows).select(columns).iter_rows():
        cells = "".join(f'<td class="t">{esc(v)}</td>' if isinstance(v, str) else f"<td>{esc(v)}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = (
        f'<p class="note">Showing {max_rows} of {frame.height} rows (all rows are in the Parquet file).</p>'
        if frame.height > max_rows
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def img(uri: str | None, alt: str) -> str:
    """A figure (a data URI), or nothing when the figure had nothing to show."""
    if not uri:
        return ""
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def ci(entry: Estimate | None, digits: int = 3) -> tuple[str, str]:
    """(value, "95% CI [lo, hi]") of an estimate; the interval empty when it has none."""
    if entry is None:
        return fmt(None, digits), ""
    interval = (
        f"95% CI [{fmt(entry.lo, digits)}, {fmt(entry.hi, digits)}]"
        if entry.lo is not None and entry.hi is not None
        else ""
    )
    return fmt(entry.estimate, digits), interval


def card(label: str, value: str, detail: str = "") -> str:
    return (
        f'<div class="card"><div class="l">{html.escape(label)}</div><div class="v">{html.escape(value)}</div>'
        f'<div class="ci">{html.escape(detail)}</div></div>'
    )


def snippet(text: str | None, limit: int = SNIPPET_CHARS) -> str:
    """A text on one line, cut to `limit` characters."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
