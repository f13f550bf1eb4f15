"""What every CLI door shares: the error exit and the common options (light imports only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)

StoreOption = Annotated[Path, typer.Option("--store", "-s", help="Study store directory.")]
ZooOption = Annotated[Optional[Path], typer.Option("--zoo", help="Zoo file (default: ./providers.yaml).")]


def fail(message: str) -> NoReturn:
    """Print a one-line error (markup in the message is shown literally) and exit with code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


def require_store(store: Path) -> Path:
    """A store that exists, or a clean error; reading commands never create one."""
    if not (store / "hivemind.sqlite").exists():
        fail(f"{store} is not a hivemind store (no hivemind.sqlite in it)")
    return store
