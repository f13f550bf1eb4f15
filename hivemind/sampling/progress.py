"""The sampler's progress line: a rich bar per deployment, with its failures and its pace."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

Tick = Callable[[str, bool], None]
"""Progress callback: (deployment, succeeded)."""


class SamplingProgress:
    """A rich progress bar per deployment (silent when disabled or not on a terminal)."""

    def __init__(
        self, enabled: bool, totals: dict[str, int], paces: dict[str, Callable[[], str]] | None = None
    ) -> None:
        self.enabled = enabled and sys.stderr.isatty() and sum(totals.values()) > 0
        self.totals = totals
        self.paces = paces or {}
        """Per deployment, what its rate limits allow now (`Pacer.pace`), shown beside its bar."""
        self.tasks: dict[str, Any] = {}  # rich TaskIDs

    def __enter__(self) -> Tick:
        if not self.enabled:
            return lambda deployment, ok: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[pace]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        for name, total in self.totals.items():
            self.tasks[name] = self.bar.add_task(name, total=total, failed=0, pace=self._pace(name))
        failed: Counter[str] = Counter()

        def tick(deployment: str, ok: bool) -> None:
            if not ok:
                failed[deployment] += 1
            self.bar.update(self.tasks[deployment], advance=1, failed=failed[deployment], pace=self._pace(deployment))

        return tick

    def note(self, deployment: str, text: str) -> None:
        """Show `text` beside a deployment's bar now (a batch's state while nothing is ticking)."""
        self.paces[deployment] = lambda: text
        if self.enabled and deployment in self.tasks:
            self.bar.update(self.tasks[deployment], pace=text)

    def _pace(self, deployment: str) -> str:
        pace = self.paces.get(deployment)
        return pace() if pace is not None else ""

    def __exit__(self, *_: object) -> None:
        if self.enabled:
            self.bar.stop()
