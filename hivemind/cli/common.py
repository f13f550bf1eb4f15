"""What every CLI door shares: the error exit and the common options (light imports only)."""

from __future__ import annotations

import errno
import os
import sqlite3
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


# SQLite's words when the file system refuses the journal (its own errors carry no errno)
JOURNAL_REFUSALS = {
    "unable to open database file": "the store's journal cannot be opened (permissions on the store directory?)",
    "attempt to write a readonly database": "the store's journal is read-only",
    "database or disk is full": "no space left for the store's journal",
    "disk i/o error": "the store's journal could not be written (disk I/O error; full disk or file size limit?)",
    "readonly database": "the store's journal is read-only",
}


def journal_error_line(exc: sqlite3.OperationalError) -> str | None:
    """One line for a journal the file system refuses (None for other SQLite errors: bugs)."""
    said = str(exc).lower()
    for words, line in JOURNAL_REFUSALS.items():
        if words in said:
            return f"{line}; what was committed before stays in the store, and a rerun resumes ({exc})"
    return None


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
    disk, directory; SQLite's refusals of the journal), or undecodable text. Anything else is a bug and keeps its traceback;
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
        except sqlite3.OperationalError as exc:
            line = journal_error_line(exc)
            if line is None or os.environ.get("HIVEMIND_DEBUG"):
                raise
            fail(line)
