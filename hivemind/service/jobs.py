"""The service's own tables (in the store's SQLite file) and the background job runner.

Tables live beside the store's, created with `CREATE TABLE IF NOT EXISTS` through a separate
connection: uploaded query sets, jobs, idempotency keys and scan runs. A job row is the truth
about a study the service was asked to run: a restarted service picks up every job that was
queued, sampling or analyzing, and `sample_study` samples only what the journal lacks, so no
finished sample is lost or duplicated. Jobs run as asyncio tasks on one event loop in a worker
thread; cancelling a task stops sampling at once, keeping every committed sample.

No FastAPI import here: the CLI's scans use these tables too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hivemind.spec import StudySpec
from hivemind.store import STORE_FILE, Store

log = logging.getLogger("hivemind.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS service_query_sets (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, description TEXT NOT NULL,
    n_queries INTEGER NOT NULL, categories_json TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS service_jobs (
    study TEXT PRIMARY KEY, kind TEXT NOT NULL, request_json TEXT NOT NULL,
    spec_json TEXT NOT NULL, planned_json TEXT NOT NULL, analyze INTEGER NOT NULL,
    state TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0, error TEXT, note TEXT,
    runs INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
    finished_at REAL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS service_jobs_by_state ON service_jobs (state, created_at);
CREATE TABLE IF NOT EXISTS service_idempotency (
    key TEXT PRIMARY KEY, request_sha256 TEXT NOT NULL, study TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS scan_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, scan TEXT NOT NULL, study TEXT NOT NULL UNIQUE,
    scan_json TEXT NOT NULL, spec_json TEXT NOT NULL, scheduled_for REAL, state TEXT NOT NULL,
    error TEXT, result_json TEXT, started_at REAL NOT NULL, finished_at REAL
);
CREATE INDEX IF NOT EXISTS scan_runs_by_scan ON scan_runs (scan, id);
CREATE TABLE IF NOT EXISTS service_scans (
    name TEXT PRIMARY KEY, scan_json TEXT NOT NULL, created_at REAL NOT NULL
);
"""
ACTIVE = ("queued", "sampling", "analyzing")
TERMINAL = frozenset({"done", "failed", "cancelled"})


class Conflict(ValueError):
    """A write refused because of existing state; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ServiceDB:
    """The service tables, through their own connection to `STORE/hivemind.sqlite`."""

    def __init__(self, store_dir: str | Path) -> None:
        self.directory = Path(store_dir)
        Store(self.directory).close()  # the store's own tables first (migrations)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.directory / STORE_FILE, check_same_thread=False,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ServiceDB:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it is committed or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        found = self.rows(sql, args)
        return found[0] if found else None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # --- names ---------------------------------------------------------------------------
    @staticmethod
    def study_taken(db: sqlite3.Connection, name: str) -> bool:
        """True when a job, a store study or a scan run already uses `name`."""
        return any(
            db.execute(sql, (name,)).fetchone() is not None
            for sql in ("SELECT 1 FROM service_jobs WHERE study = ?",
                        "SELECT 1 FROM studies WHERE name = ?",
                        "SELECT 1 FROM scan_runs WHERE study = ?")
        )

    def store_studies(self) -> list[str]:
        """Names of the studies in the store, oldest first."""
        return [r["name"] for r in self.rows("SELECT name FROM studies ORDER BY created_at")]

    def store_spec(self, study: str) -> StudySpec | None:
        row = self._one("SELECT spec_json FROM studies WHERE name = ?", (study,))
        return StudySpec.model_validate_json(row["spec_json"]) if row else None

    def store_query_count(self, study: str) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM queries WHERE study = ?", (study,))
        return int(row["n"]) if row else 0

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
            old = db.execute("SELECT sha256 FROM service_query_sets WHERE name = ?",
                             (row["name"],)).fetchone()
            if old is not None:
                if old["sha256"] == row["sha256"]:
                    return False
                raise Conflict("name", f"a query set named {row['name']!r} already exists with "
                                       "other queries; upload under another name")
            db.execute("INSERT INTO service_query_sets VALUES (:name, :path, :description, "
                       ":n_queries, :categories_json, :sha256, :created_at)", row)
            write()  # a failure here rolls the row back; the file is written atomically
        return True

    # --- jobs ----------------------------------------------------------------------------
    def job(self, study: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM service_jobs WHERE study = ?", (study,))

    def jobs(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM service_jobs ORDER BY created_at")

    def active_jobs(self) -> list[str]:
        marks = ",".join("?" * len(ACTIVE))
        return [r["study"] for r in self.rows(
            f"SELECT study FROM service_jobs WHERE state IN ({marks}) ORDER BY created_at", ACTIVE)]

    def create_job(self, row: dict[str, Any], *, idempotency_key: str | None = None,
                   request_sha256: str | None = None,
                   extra: Callable[[sqlite3.Connection], None] | None = None) -> tuple[str, bool]:
        """Insert a queued job (and its idempotency key) atomically.

        Returns (study, created). A key seen before with the same body returns its study
        (created False); with another body, or a taken name, raises `Conflict`.
        """
        now = time.time()
        with self.transaction() as db:
            if idempotency_key is not None:
                seen = db.execute("SELECT request_sha256, study FROM service_idempotency "
                                  "WHERE key = ?", (idempotency_key,)).fetchone()
                if seen is not None:
                    if seen["request_sha256"] != request_sha256:
                        raise Conflict("header.Idempotency-Key", "this key was used for a "
                                       "different request body; use a new key")
                    return seen["study"], False
            if self.study_taken(db, row["study"]):
                raise Conflict("body.name", f"a study named {row['study']!r} already exists")
            values = {"error": None, "note": None, "cancel_requested": 0, "runs": 0,
                      "started_at": None, "finished_at": None, **row, "state": "queued",
                      "created_at": now, "updated_at": now}
            columns = ", ".join(values)
            db.execute(f"INSERT INTO service_jobs ({columns}) VALUES "
                       f"({', '.join(':' + c for c in values)})", values)
            if idempotency_key is not None:
                db.execute("INSERT INTO service_idempotency VALUES (?, ?, ?, ?)",
                           (idempotency_key, request_sha256, row["study"], now))
            if extra is not None:
                extra(db)
        return row["study"], True

    def update_job(self, study: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        self._execute(f"UPDATE service_jobs SET {sets} WHERE study = :study", {**fields, "study": study})

    def finish_job(self, study: str, state: str, *, error: str | None = None,
                   note: str | None = None) -> None:
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
                db.execute("UPDATE service_jobs SET state = 'cancelled', cancel_requested = 1, "
                           "finished_at = ?, updated_at = ? WHERE study = ?", (now, now, study))
                return "cancelled"
            db.execute("UPDATE service_jobs SET cancel_requested = 1, updated_at = ? "
                       "WHERE study = ?", (now, study))
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
            "'running', :started_at)", row)
        return int(cursor.lastrowid)

    def finish_scan_run(self, run_id: int, state: str, *, result: dict[str, Any] | None = None,
                        error: str | None = None) -> None:
        self._execute("UPDATE scan_runs SET state = ?, result_json = ?, error = ?, finished_at = ? "
                      "WHERE id = ?", (state, None if result is None else json.dumps(result),
                                       error, time.time(), run_id))


def planned_counts(spec: StudySpec) -> dict[str, int]:
    """Samples the spec asks of each deployment (raises the pipeline's errors for bad specs)."""
    from hivemind.study import resolve_study

    queries, deployments = resolve_study(spec)
    per = len(queries) * len(spec.effective_conditions()) * spec.samples
    return {d.name: per for d in deployments}


def analyze_and_report(store_dir: Path, study: str) -> str | None:
    """Run the pipeline's analysis and report; a note when this build has no analysis."""
    if importlib.util.find_spec("hivemind.pipeline") is None:
        return "analysis is not available in this build (hivemind.pipeline is missing)"
    from hivemind.pipeline import analyze_store, write_report

    analyze_store(store_dir, study)
    write_report(store_dir, study)
    return None


class JobManager:
    """Runs jobs on an asyncio loop in one worker thread; at most `max_active` at a time."""

    def __init__(self, store_dir: str | Path, *, max_active: int = 2,
                 redact: Callable[[str], str] = lambda s: s,
                 scheduler: Callable[[JobManager], None] | None = None,
                 scheduler_interval_s: float = 30.0) -> None:
        self.store_dir = Path(store_dir)
        self.db = ServiceDB(self.store_dir)
        self.max_active = max_active
        self.redact = redact
        self.scheduler = scheduler
        self.scheduler_interval_s = scheduler_interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready = threading.Event()
        self._stopping = False
        self._lock_file: Any = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Take the store's service lock, start the worker thread, resume unfinished jobs."""
        self._take_lock()
        self._thread = threading.Thread(target=self._main, name="hivemind-jobs", daemon=True)
        self._thread.start()
        self._ready.wait(30)

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process guard
            return
        handle = open(self.store_dir / "service.lock", "a+")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RuntimeError(f"another hivemind service is running on {self.store_dir}") from None
        self._lock_file = handle

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._slots = asyncio.Semaphore(self.max_active)
        self._analysis = asyncio.Lock()
        self._store = Store(self.store_dir)
        for study in self.db.active_jobs():
            self._spawn(study)
        if self.scheduler is not None:
            loop.create_task(self._schedule_forever())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._store.close()
            loop.close()

    def submit(self, study: str) -> None:
        """Queue a job that is in the table (thread-safe)."""
        if self._loop is not None and not self._stopping:
            self._loop.call_soon_threadsafe(self._spawn, study)

    def cancel(self, study: str) -> str | None:
        """Ask a job to stop; it keeps what it sampled. Returns its state after the request."""
        state = self.db.request_cancel(study)
        if state in ACTIVE and self._loop is not None:
            self._loop.call_soon_threadsafe(self._cancel_task, study)
        return state

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the worker, leaving unfinished jobs as they are so a restart resumes them."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._stopping = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        self.db.close()

    def _spawn(self, study: str) -> None:
        running = self._tasks.get(study)
        if running is not None and not running.done():
            return
        task = asyncio.get_running_loop().create_task(self._run(study), name=f"job:{study}")
        self._tasks[study] = task
        task.add_done_callback(lambda t, s=study: self._tasks.pop(s, None) if self._tasks.get(s) is t else None)

    def _cancel_task(self, study: str) -> None:
        task = self._tasks.get(study)
        if task is not None:
            task.cancel()

    async def _schedule_forever(self) -> None:
        assert self.scheduler is not None
        while True:
            try:
                await asyncio.to_thread(self.scheduler, self)
            except Exception as exc:  # a bad scans file must not stop the studies
                log.warning("scan scheduler: %s", self.redact(str(exc)))
            await asyncio.sleep(self.scheduler_interval_s)

    async def _run(self, study: str) -> None:
        job: dict[str, Any] | None = None
        try:
            async with self._slots:
                job = self.db.job(study)
                if job is None or job["state"] in TERMINAL:
                    return
                if job["cancel_requested"]:
                    self._end(job, "cancelled")
                    return
                self.db.update_job(study, state="sampling", started_at=time.time(),
                                   runs=job["runs"] + 1, error=None)
                note = await self._execute(job)
                if (self.db.job(study) or {}).get("cancel_requested"):
                    self._end(job, "cancelled", note=note)
                else:
                    self._end(job, "done", note=note)
        except asyncio.CancelledError:
            if job is not None and not self._stopping:
                self._end(job, "cancelled", note="cancelled on request; finished samples are kept")
            elif job is None and not self._stopping:
                self.db.finish_job(study, "cancelled")
        except Exception as exc:  # recorded on the job, never raised through the service
            message = self.redact(str(exc) or type(exc).__name__)
            log.warning("job %s failed: %s", study, message)
            if job is not None:
                self._end(job, "failed", error=message)

    def _end(self, job: dict[str, Any], state: str, *, error: str | None = None,
             note: str | None = None) -> None:
        self.db.finish_job(job["study"], state, error=error, note=note)
        if job["kind"] == "scan":
            run = self.db.scan_run_for_study(job["study"])
            if run is not None and run["state"] == "running" and state != "done":
                self.db.finish_scan_run(run["id"], state, error=error)

    async def _execute(self, job: dict[str, Any]) -> str | None:
        if job["kind"] == "scan":
            from hivemind.scan import execute_scan_run

            run = self.db.scan_run_for_study(job["study"])
            if run is None:
                raise RuntimeError(f"scan job {job['study']!r} has no scan run")
            await execute_scan_run(self._store, self.db, run["id"], redact=self.redact,
                                   analysis_lock=self._analysis)
            return None
        from hivemind.study import StudyRun, sample_study

        spec = StudySpec.model_validate_json(job["spec_json"])
        report = await sample_study(spec, self._store, progress=False)
        samples_path = await asyncio.to_thread(self._store.export_parquet, spec.name)
        summary = StudyRun(spec, self.store_dir, report, samples_path).summary()
        (self.store_dir / spec.name / "sampling.json").write_text(json.dumps(summary, indent=2))
        note = "stopped: budget reached" if report.stopped_by_budget else None
        if job["analyze"] and not (self.db.job(job["study"]) or {}).get("cancel_requested"):
            self.db.update_job(job["study"], state="analyzing")
            async with self._analysis:  # one heavy analysis at a time
                note = await asyncio.to_thread(analyze_and_report, self.store_dir, spec.name) or note
        return note
