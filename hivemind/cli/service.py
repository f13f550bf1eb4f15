"""CLI doors for the service and the scans: `hivemind serve` and `hivemind scan ...`.

Registered in `hivemind.cli` with `app.command()(serve)` and `app.add_typer(scan_app, name="scan")`.
FastAPI, uvicorn and the embedder load inside the commands, so `hivemind --help` stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hivemind.cli.common import StoreOption, ZooOption, console, fail

scan_app = typer.Typer(help="Scheduled model-zoo scans: list, run, history, report.", no_args_is_help=True)

ScansOption = Annotated[
    Path | None, typer.Option("--scans", help="Scans file (a `scans:` list); default: the zoo file's `scans:` section.")
]


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0-65535; 0 picks a free one).")] = 8321,
    store: StoreOption = Path("hivemind-store"),
    zoo: ZooOption = None,
    scans: ScansOption = None,
    token_env: Annotated[
        str,
        typer.Option(
            help="Environment variable holding the bearer token; unset: the store's own token "
            "(STORE/service.token, made on first start, printed at start)."
        ),
    ] = "HIVEMIND_TOKEN",
    auth: Annotated[
        bool, typer.Option("--auth/--no-auth", help="Require the bearer token. --no-auth works on loopback only.")
    ] = True,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another Host name clients use (repeatable; '*' allows any, e.g. behind "
            "a proxy that checks it). The bound address and, on loopback, "
            "127.0.0.1/localhost/::1 are always allowed.",
        ),
    ] = None,
    embedder: Annotated[
        list[str] | None,
        typer.Option(
            "--embedder",
            help="An embedder studies may use: an entry of the zoo's `embedders:`, else a "
            "sentence-transformers name or local folder (repeatable; the first is the default). "
            "Default: the shipped all-MiniLM-L6-v2.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes: jobs (sampling, analysis, reports) run at once, each in a process of its own.",
        ),
    ] = 2,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest query-set upload, MiB.")] = 10.0,
    max_samples: Annotated[int, typer.Option(min=1, help="Most samples one study may plan.")] = 200_000,
    max_queries: Annotated[
        int, typer.Option(min=1, help="Most queries one query set (or one import) may hold.")
    ] = 20_000,
    scheduler: Annotated[bool, typer.Option(help="Run declared scans on their schedules.")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API (docs at /docs) with background study workers and the scan scheduler.

    Every request but /healthz needs 'Authorization: Bearer TOKEN'. Without a token in
    --token-env the store's own token is used (made on first start, mode 0600) and printed.
    """
    from hivemind.service.auth import TOKEN_FILE, BindError, check_bind

    if not auth:
        try:
            check_bind(host, None)  # before anything is written to the store
        except BindError as exc:
            fail(str(exc))
    import uvicorn

    from hivemind.inputs.zoo import ZooError
    from hivemind.service.app import create_app
    from hivemind.service.context import ServiceLimits

    limits = ServiceLimits(
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_samples_per_study=max_samples,
        max_queries_per_set=max_queries,
    )
    os.umask(0o077)  # the store's files 0600 and folders 0700: answers and keys are the operator's
    try:
        app = create_app(
            store,
            zoo,
            token_env,
            limits,
            scans_path=scans,
            workers=workers,
            scheduler=scheduler,
            auth=auth,
            host=host,
            allowed_hosts=allowed_host or (),
            embedders=embedder,
        )
    except (ZooError, BindError, ValueError) as exc:
        fail(str(exc))
        return
    source = app.state.token_source
    if source == "none":
        console.print(f"[yellow]--no-auth: serving without authentication on {host}[/]")
    elif source == "env":
        console.print(f"bearer token from the environment variable {token_env}")
    else:  # printed once per start, as Jupyter does; never logged
        made = "made now, " if source == "created" else ""
        console.print(
            f"bearer token: {app.state.token}\n    ({made}kept in {store / TOKEN_FILE}, readable by "
            "you only; send it as 'Authorization: Bearer <token>')",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _book(zoo: Path | None, scans: Path | None, store: Path):  # type: ignore[no-untyped-def]
    from hivemind.scans.scan import load_scans

    return load_scans(zoo, scans, store)  # a ScanError: a clean exit (`CleanErrors`)


@scan_app.command("list")
def scan_list(store: StoreOption = Path("hivemind-store"), zoo: ZooOption = None, scans: ScansOption = None) -> None:
    """Declared scans, their schedules, next run and last run."""
    import time

    from hivemind.scans.scan import has_store, next_fire
    from hivemind.store.jobs import ServiceDB

    book = _book(zoo, scans, store)
    table = Table("scan", "schedule (UTC)", "next run", "deployments", "query set", "samples", "last run")
    # a reading command: a missing store lists the scans with no runs, and is not created
    with ServiceDB(store) if has_store(store) else contextlib.nullcontext() as db:
        for scan in book.scans:
            runs = db.scan_runs(scan.name) if db is not None else []
            last = f"{runs[-1]['state']} {_when(runs[-1]['started_at'])}" if runs else "-"
            nxt = _when(next_fire(scan.schedule, time.time())) if scan.enabled else "disabled"
            table.add_row(
                scan.name, scan.schedule, nxt, ", ".join(scan.deployments), scan.query_set, str(scan.samples), last
            )
    Console().print(table)


def _print_history(history: dict, last_only: bool = False) -> None:
    from hivemind.scans.drift import history_rows

    rows, notes = history_rows(history, last_only)
    table = Table("run", "cell", "similarity", "change vs previous run", "p (Holm)", "flag")
    for row in rows:
        table.add_row(*row[:-1], f"[bold red]{row[-1]}[/]" if row[-1] else "")
    Console().print(table)
    for note in notes:
        console.print(f"[yellow]{note}[/]")
    flagged = ", ".join(history["flagged"]) or "none"
    pairs = ", ".join(" ~ ".join(pair) for pair in history["flagged_pairs"]) or "none"
    console.print(f"flagged in the latest run: deployments: {flagged}; pairs: {pairs}")


@scan_app.command("run")
def scan_run(
    name: Annotated[str, typer.Argument(help="Scan name.")],
    store: StoreOption = Path("hivemind-store"),
    zoo: ZooOption = None,
    scans: ScansOption = None,
    new: Annotated[bool, typer.Option(help="Start a new run even if an unfinished one exists.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run one scan now (resuming its unfinished run), then show where it stands in its history."""
    from hivemind.scans.scan import run_scan, scan_history
    from hivemind.store.jobs import ServiceDB

    _book(zoo, scans, store)
    row = run_scan(name, store, zoo_path=zoo, scans_path=scans, new=new, progress=progress)
    console.print(f"[green]scan {name}[/]: run {row['id']} ({row['study']}) {row['state']}")
    with ServiceDB(store) as db:
        _print_history(scan_history(db, name), last_only=True)


@scan_app.command("history")
def scan_history_cmd(
    name: Annotated[str, typer.Argument(help="Scan name.")],
    store: StoreOption = Path("hivemind-store"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every similarity-matrix cell across runs, each run tested against the one before it."""
    from hivemind.scans.scan import has_store, scan_history
    from hivemind.store.jobs import ServiceDB

    if not has_store(store):
        fail(f"no store at {store} (nothing has run there yet)")
    with ServiceDB(store) as db:
        history = scan_history(db, name)
    if not history["runs"]:
        fail(f"scan {name!r} has no runs in {store}")
    if as_json:
        print(json.dumps(history, indent=2))
    else:
        _print_history(history)


@scan_app.command("report")
def scan_report(
    name: Annotated[str, typer.Argument(help="Scan name.")], store: StoreOption = Path("hivemind-store")
) -> None:
    """Write the scan history as HTML (`STORE/scans/NAME/report.html`)."""
    from hivemind.scans.report import write_scan_report

    print(write_scan_report(store, name))
