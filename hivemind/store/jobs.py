"""Job and scan-run tables, and the helpers both the service and the scans use to run them.

This module sits below `hivemind.scans.scan` and `hivemind.service`, so neither imports the other
for them. The tables live beside the store's in `STORE/hivemind.sqlite`, each family with its
own ordered migrations (`hivemind.migrations`): `JOBS` (query sets, jobs, idempotency keys) and
`SCANS` (scan runs, scans created through the service). A job row is the truth about a study
the service was asked to run: `hivemind.service.workers.JobManager` resumes every job left
queued, sampling or analyzing. Every multi-row write is one transaction, so a refused request
leaves nothing half-written. No FastAPI import here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hivemind.errors import HivemindError
from hivemind.layout import StoreLayout
from hivemind.migrations import Family, adopt_if_table, migrate
from hivemind.store.journal import Store
from hivemind.store.sqlite_file import JournalFile

log = logging.getLogger("hivemind.store.jobs")
T = TypeVar("T")

# Append-only: a shipped step is never edited. Step 1 of each is the schema that older releases
# made with IF NOT EXISTS; a file holding it is adopted (see `adopt_if_table`).
JOBS = Family(
    "jobs",
    (
        """
    CREATE TABLE service_query_sets (
        name TEXT PRIMARY KEY, path TEXT NOT NULL, description TEXT NOT NULL,
        n_queries INTEGER NOT NULL, categories_json TEXT NOT NULL, sha256 TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE service_jobs (
        study TEXT PRIMARY KEY, kind TEXT NOT NULL, request_json TEXT NOT NULL,
        spec_json TEXT NOT NULL, planned_json TEXT NOT NULL, analyze INTEGER NOT NULL,
        state TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0, error TEXT, note TEXT,
        runs INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
        finished_at REAL, updated_at REAL NOT NULL
    );
    CREATE INDEX service_jobs_by_state ON service_jobs (state, created_at);
    CREATE TABLE service_idempotency (
        key TEXT PRIMARY KEY, request_sha256 TEXT NOT NULL, study TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
        # the job list's order, by index (`service_jobs_by_state` leads with the state)
        "CREATE INDEX service_jobs_by_created ON service_jobs (created_at);",
    ),
    adopt=adopt_if_table("service_jobs"),
)
SCANS = Family(
    "scans",
    (
        """
    CREATE TABLE scan_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT, scan TEXT NOT NULL, study TEXT NOT NULL UNIQUE,
        scan_json TEXT NOT NULL, spec_json TEXT NOT NULL, scheduled_for REAL, state TEXT NOT NULL,
        error TEXT, result_json TEXT, started_at REAL NOT NULL, finished_at REAL
    );
    CREATE INDEX scan_runs_by_scan ON scan_runs (scan, id);
    CREATE TABLE service_scans (
        name TEXT PRIMARY KEY, scan_json TEXT NOT NULL, created_at REAL NOT NULL
    );
    """,
    ),
    adopt=adopt_if_table("scan_runs"),
)
ACTIVE = ("queued", "sampling", "analyzing")
TERMINAL = frozenset({"done", "failed", "cancelled"})


class Conflict(HivemindError, ValueError):
    """A write refused because of existing state; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field=field)
        self.message = message


class JobQueue(Protocol):
    """What a scan scheduler needs of the job runner (`hivemind.service.workers.JobManager`)."""

    store_dir: Path
    db: ServiceDB

    def submit(self, study: str) -> None: ...


class ServiceDB(JournalFile):
    """The service tables, through their own connections to `STORE/hivemind.sqlite` (one writer;
    reads on each thread's own read connection, never waiting on a writer: `JournalFile`)."""

    def __init__(self, store_dir: str | Path) -> None:
        self.directory = Path(store_dir)
        Store(self.directory).close()  # the store's own tables first (migrations)
        super().__init__(StoreLayout(self.directory).journal)
        with self._lock:
            migrate(self._db, JOBS)
            migrate(self._db, SCANS)

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows(sql, args)]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, args)
        return found[0] if found else None

    def _execute(self, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # --- names ---------------------------------------------------------------------------
    @staticmethod
    def study_taken(db: sqlite3.Connection, name: str) -> bool:
        """True when a job, a store study or a scan run already uses `name`."""
        return any(
            db.execute(sql, (name,)).fetchone() is not None
            for sql in (
                "SELECT 1 FROM service_jobs WHERE study = ?",
                "SELECT 1 FROM studies WHERE name = ?",
                "SELECT 1 FROM scan_runs WHERE study = ?",
            )
        )

    # --- query sets ----------------------------------------------------------------------
    def query_set(self, name: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM service_query_sets WHERE name = ?", (name,))

    def query_sets(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM service_query_sets ORDER BY name")

    def add_query_set(self, row: dict[str, Any], write: Callable[[], None]) -> bool:
        """Insert an uploaded set and write its file in one transaction.

        Returns False when the same content is already saved under that name (a retried upload);
        raises `Conflict` when the name holds other content.
        """
        with self.transaction() as db:
            old = db.execute("SELECT sha256 FROM service_query_sets WHERE name = ?", (row["name"],)).fetchone()
            if old is not None:
                if old["sha256"] == row["sha256"]:
                    return False
                raise Conflict(
                    "name",
                    f"a query set named {row['name']!r} already exists with other queries; upload under another name",
                )
            db.execute(
                "INSERT INTO service_query_sets VALUES (:name, :path, :description, "
                ":n_queries, :categories_json, :sha256, :created_at)",
                row,
            )
            write()  # a failure here rolls the row back; the file is written atomically
        return True

    # --- jobs ----------------------------------------------------------------------------
    def job(self, study: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM service_jobs WHERE study = ?", (study,))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first (read through `service_jobs_by_created`)."""
        return self.rows("SELECT * FROM service_jobs INDEXED BY service_jobs_by_created ORDER BY created_at")

    def samples_kept(self, study: str) -> int:
        """Successful samples the journal holds for `study`."""
        found = self._one("SELECT COUNT(*) AS n FROM samples WHERE study = ? AND error IS NULL", (study,))
        return int(found["n"]) if found else 0

    def active_jobs(self) -> list[str]:
        marks = ",".join("?" * len(ACTIVE))
        return [
            r["study"]
            for r in self.rows(f"SELECT study FROM service_jobs WHERE state IN ({marks}) ORDER BY created_at", ACTIVE)
        ]

    def create_job(
        self,
        row: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        request_sha256: str | None = None,
        extra: Callable[[sqlite3.Connection], None] | None = None,
    ) -> tuple[str, bool]:
        """Insert a queued job (and its idempotency key) atomically.

        Returns (study, created). A key seen before with the same body returns its study
        (created False); with another body, or a taken name, raises `Conflict`. The same request
        for a study whose job failed or was cancelled queues that job again (created True).
        """
        now = time.time()
        with self.transaction() as db:
            if idempotency_key is not None:
                seen = db.execute(
                    "SELECT request_sha256, study FROM service_idempotency WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if seen is not None:
                    if seen["request_sha256"] != request_sha256:
                        raise Conflict(
                            "header.Idempotency-Key", "this key was used for a different request body; use a new key"
                        )
                    return seen["study"], False
            requeued = self._requeue(db, row)
            if not requeued and self.study_taken(db, row["study"]):
                raise Conflict("body.name", f"a study named {row['study']!r} already exists")
            values = {
                "error": None,
                "note": None,
                "cancel_requested": 0,
                "runs": 0,
                "started_at": None,
                "finished_at": None,
                **row,
                "state": "queued",
                "created_at": now,
                "updated_at": now,
            }
            if not requeued:
                columns = ", ".join(values)
                db.execute(
                    f"INSERT INTO service_jobs ({columns}) VALUES ({', '.join(':' + c for c in values)})", values
                )
            if idempotency_key is not None:
                db.execute(
                    "INSERT INTO service_idempotency VALUES (?, ?, ?, ?)",
                    (idempotency_key, request_sha256, row["study"], now),
                )
            if extra is not None:
                extra(db)
        return row["study"], True

    @staticmethod
    def _requeue(db: sqlite3.Connection, row: dict[str, Any]) -> bool:
        """A resubmission: the same request for a study whose job failed or was cancelled queues
        that job again (sampling then takes only what the journal lacks). True when it did."""
        old = db.execute(
            "SELECT state, kind, request_json FROM service_jobs WHERE study = ?", (row["study"],)
        ).fetchone()
        if old is None or old["state"] not in ("failed", "cancelled") or old["kind"] != row.get("kind", "study"):
            return False
        if old["request_json"] != row["request_json"]:
            return False
        now = time.time()
        db.execute(
            "UPDATE service_jobs SET state = 'queued', cancel_requested = 0, error = NULL, note = NULL, "
            "finished_at = NULL, updated_at = ? WHERE study = ?",
            (now, row["study"]),
        )
        return True

    def update_job(self, study: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self._execute(f"UPDATE service_jobs SET {sets} WHERE study = :study", {**fields, "study": study})

    def start_job(self, study: str, seen_state: str) -> bool:
        """Mark a job sampling, only if it is still in `seen_state` with no cancel asked.

        A compare-and-set: False when a cancel (or anything else) changed the row since it was
        read, so the caller must not start it.
        """
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "UPDATE service_jobs SET state = 'sampling', started_at = ?, runs = runs + 1, "
                "error = NULL, updated_at = ? WHERE study = ? AND state = ? AND cancel_requested = 0",
                (now, now, study, seen_state),
            )
            return cursor.rowcount == 1

    def finish_job(self, study: str, state: str, *, error: str | None = None, note: str | None = None) -> None:
        self.update_job(study, state=state, error=error, note=note, finished_at=time.time())

    def request_cancel(self, study: str) -> str | None:
        """Flag a job for cancelling; a queued one is cancelled at once. Returns the new state."""
        with self.transaction() as db:
            row = db.execute("SELECT state FROM service_jobs WHERE study = ?", (study,)).fetchone()
            if row is None:
                return None
            if row["state"] in TERMINAL:
                return row["state"]
            now = time.time()
            if row["state"] == "queued":
                db.execute(
                    "UPDATE service_jobs SET state = 'cancelled', cancel_requested = 1, "
                    "finished_at = ?, updated_at = ? WHERE study = ?",
                    (now, now, study),
                )
                return "cancelled"
            db.execute("UPDATE service_jobs SET cancel_requested = 1, updated_at = ? WHERE study = ?", (now, study))
            return row["state"]

    # --- scan runs -----------------------------------------------------------------------
    def scan_run(self, run_id: int) -> dict[str, Any] | None:
        return self._one("SELECT * FROM scan_runs WHERE id = ?", (run_id,))

    def scan_run_for_study(self, study: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM scan_runs WHERE study = ?", (study,))

    def scan_runs(self, scan: str) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM scan_runs WHERE scan = ? ORDER BY id", (scan,))

    def insert_scan_run(self, db: sqlite3.Connection, row: dict[str, Any]) -> int:
        """Insert a running scan run inside the caller's transaction; returns its id."""
        cursor = db.execute(
            "INSERT INTO scan_runs (scan, study, scan_json, spec_json, scheduled_for, state, "
            "started_at) VALUES (:scan, :study, :scan_json, :spec_json, :scheduled_for, "
            "'running', :started_at)",
            row,
        )
        assert cursor.lastrowid is not None  # an INSERT always sets it
        return cursor.lastrowid

    def finish_scan_run(
        self, run_id: int, state: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        self._execute(
            "UPDATE scan_runs SET state = ?, result_json = ?, error = ?, finished_at = ? WHERE id = ?",
            (state, None if result is None else json.dumps(result), error, time.time(), run_id),
        )


async def run_to_completion(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a thread; a cancel waits for the thread to finish, then is raised.

    Awaiting `asyncio.to_thread` alone stops waiting on cancel while the thread goes on writing, so
    a lock held around it would be released with the work still running.
    """
    # an executor future, not a task: cancelling every task at shutdown does not detach it either
    future = asyncio.get_running_loop().run_in_executor(None, func, *args)
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True  # keep waiting: the thread cannot be stopped
        except Exception:
            break  # the thread's own error, raised below (or dropped if cancelled)
    if cancelled:
        if not future.cancelled() and future.exception() is not None:
            log.warning("work finished after a cancel with an error: %s", future.exception())
        raise asyncio.CancelledError
    return future.result()
