"""The report's part on a judge's equivalence classes (`hivemind.analysis.judge`).

Beside the cosine classes and any imported partition (NoveltyBench's): per deployment, the mean
class count and semantic entropy of each method, and the pairwise adjusted Rand indices between
the methods; the calls the judge needed, against their bound. Empty without a judge.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Protocol

from hivemind.report.markup import table

if TYPE_CHECKING:
    import polars as pl

    from hivemind.analysis.summary import Summary


class Tables(Protocol):
    """What this section reads of `hivemind.report.tables.Tables`."""

    def get(self, name: str) -> pl.DataFrame | None: ...


def judge_classes_section(summary: Summary, tables: Tables) -> str:
    """The judge's classes beside the cosine and imported ones (empty when the study has no judge)."""
    entry: dict[str, Any] | None = summary.judge_classes
    frame = tables.get("judge_classes")
    if not entry or frame is None or frame.height == 0:
        return ""
    import polars as pl

    calls = entry.get("calls", {})
    same = int(calls.get("identical", 0))
    means = pl.DataFrame(entry["per_deployment"])
    imported = "external_classes" in means.columns and means["external_classes"].is_not_null().any()
    if not imported:  # no imported partition: leave its empty columns out
        means = means.drop([c for c in means.columns if "external" in c])
    return (
        "<h2>Judge equivalence classes</h2>"
        f'<p class="note">Judge <code>{html.escape(str(entry["judge"]))}</code> '
        f"({html.escape(str(entry['model']))}) decided which responses say the same thing. "
        f"{_code(entry['partition_rule'])} {_code(entry['verdict_rule'])} "
        f"Beside it: hivemind's cosine classes at {html.escape(str(entry['threshold']))}"
        + (" and the imported partition (e.g. NoveltyBench's)" if imported else "")
        + ". Mean class count and semantic entropy (nats) per query, and the pairwise adjusted Rand "
        "indices between the methods (1 = the same partition, about 0 = chance).</p>"
        f'<p class="note">Judge calls in this analysis: {calls.get("sent", 0)} sent, '
        f"{calls.get('cached', 0)} answered from the cache, {same} pair{'s' * (same != 1)} of identical "
        f"texts (no call), {calls.get('unparseable', 0)} unparseable, {calls.get('failed', 0)} failed; "
        f"the bound is {calls.get('bound', 0)}. {_code(entry['call_bound_rule'])}</p>"
        + table(means)
        + "<details><summary>Per query</summary>"
        + table(frame)
        + "</details>"
    )


def _code(text: str) -> str:
    """Escaped text with its `backticked` words as code."""
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
