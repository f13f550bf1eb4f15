"""One self-contained HTML report of an analysed study.

Everything is inline: CSS in a <style> block, figures as base64 PNG data URIs (`figures`), tables
as HTML (`markup`). No script, no font or stylesheet from a CDN: the file opens offline and prints
as it shows. The page is the `sections`, top to bottom, each one function of the typed summary
and the tables. `render_report` is pure; `hivemind.pipeline.write_report` writes the file.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.analysis.summary import Summary, parse_summary, read_summary
from hivemind.layout import SUMMARY
from hivemind.report.duplicates_section import cross_query_duplicates, near_duplicate_pairs
from hivemind.report.markup import CSS, table
from hivemind.report.sections import SECTIONS, footing_note, headline, warnings_block
from hivemind.report.tables import Tables

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "cross_query_duplicates",
    "footing_note",
    "headline",
    "load_analysis",
    "near_duplicate_pairs",
    "render_report",
    "table",
    "warnings_block",
]


def render_report(summary: Summary | dict[str, Any], tables: dict[str, pl.DataFrame]) -> str:
    """The whole report as one HTML string (a summary's JSON content is read as a `Summary`)."""
    typed = summary if isinstance(summary, Summary) else parse_summary(summary)
    frames = Tables(tables)
    body = "\n".join(part for section in SECTIONS if (part := section(typed, frames)))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>hivemind report: {html.escape(typed.study)}</title><style>{CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def load_analysis(directory: str | Path) -> tuple[Summary, dict[str, pl.DataFrame]]:
    """The typed `summary.json` and every table of an analysis directory."""
    import polars as pl

    directory = Path(directory)
    summary = read_summary(directory / SUMMARY)
    tables = {path.stem: pl.read_parquet(path) for path in sorted(directory.glob("*.parquet"))}
    return summary, tables
