"""What every CLI door shares: the error exit and the common options (light imports only)."""

from __future__ import annotations

import errno
import os
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
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def require_store(store: Path) -> Path:
    """A store that exists, or a clean error; reading commands never create one."""
    layout = StoreLayout(store)
    if not layout.exists():
        fail(f"{store} is not a hivemind store (no {layout.journal.name} in it)")
    return store


def os_error_line(exc: OSError) -> str:
    """One line for a file-system refusal (permission, full disk, a directory where a file was
    expected): the path and the system's own words, never a traceback."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"{where}no space left on the device (what was committed before stays in the store)"
    return f"{where}{exc.strerror or exc}"


class CleanErrors(TyperGroup):
    """The command group that turns every `HivemindError` of any subcommand into `fail`'s
    one-line message and exit code 2, and so a file-system refusal (`OSError`: permission, full
    disk, directory) or undecodable text. Anything else is a bug and keeps its traceback;
    `HIVEMIND_DEBUG=1` keeps it for these too."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except HivemindError as exc:
            fail(str(exc))
        except OSError as exc:
            if os.environ.get("HIVEMIND_DEBUG"):
                raise
            fail(os_error_line(exc))
        except UnicodeDecodeError as exc:
            if os.environ.get("HIVEMIND_DEBUG"):
                raise
            fail(f"a file is not UTF-8 text (byte {exc.start}: {exc.reason})")
