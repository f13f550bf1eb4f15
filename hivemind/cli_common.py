"""What every CLI door shares: the error exit and the common options (light imports only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from hivemind.errors import HivemindError
from hivemind.layout import StoreLayout

console = Console(stderr=True)

StoreOption = Annotated[Path, typer.Option("--store", "-s", help="Study store directory.")]
ZooOption = Annotated[Path | None, typer.Option("--zoo", help="Zoo file (default: ./providers.yaml).")]


def fail(message: str) -> NoReturn:
    """Print a one-line error (markup in the message is shown literally) and exit with code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def require_store(store: Path) -> Path:
    """A store that exists, or a clean error; reading commands never create one."""
    layout = StoreLayout(store)
    if not layout.exists():
        fail(f"{store} is not a hivemind store (no {layout.journal.name} in it)")
    return store


class CleanErrors(TyperGroup):
    """The command group that turns every `HivemindError` of any subcommand into `fail`'s
    one-line message and exit code 2; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except HivemindError as exc:
            fail(str(exc))
