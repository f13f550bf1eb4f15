"""Background workers: jobs run as asyncio tasks on one event loop in a worker thread.

Each job is `hivemind.pipeline.run_pipeline_async` on the service's store handle (a scan job: the
scan's sampling steps, then its drift step). A restarted service resumes every unfinished job;
sampling takes only what the journal lacks, so no finished sample is lost or duplicated. Cancelling a job cancels its task: sampling
stops at once (in-flight requests are dropped) and every committed sample stays. An analysis
cannot be interrupted (it runs in a thread), so a cancel that lands during one takes effect when
it finishes: the job stays `analyzing` until then and no second analysis starts beside it. A lock
file in the store keeps a second service from running the same jobs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hivemind.inputs.spec import StudySpec
from hivemind.layout import StoreLayout
from hivemind.store.jobs import ACTIVE, TERMINAL, ServiceDB
from hivemind.store.journal import Store

log = logging.getLogger("hivemind.service")


class JobManager:
    """Runs jobs on an asyncio loop in one worker thread; at most `max_active` at a time."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        max_active: int = 2,
        redact: Callable[[str], str] = lambda s: s,
        scheduler: Callable[[JobManager], None] | None = None,
        scheduler_interval_s: float = 30.0,
    ) -> None:
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
        self._startup_error: Exception | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Take the store's service lock, start the worker thread, resume unfinished jobs."""
        self._take_lock()
        self._thread = threading.Thread(target=self._main, name="hivemind-jobs", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._startup_error is not None or not self._ready.is_set():
            raise RuntimeError(f"the job worker did not start: {self._startup_error}")

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no cross-process guard
            return
        handle = open(StoreLayout(self.store_dir).service_lock, "a+")  # noqa: SIM115 (held until stop)
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
        try:
            self._store = Store(self.store_dir)
            for study in self.db.active_jobs():
                self._spawn(study)
        except Exception as exc:  # reported by start(), not lost in a dead thread
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        if self.scheduler is not None:
            loop.create_task(self._schedule_forever())
        loop.call_soon(self._ready.set)
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
        assert self._loop is not None
        task = self._loop.create_task(self._run(study), name=f"job:{study}")
        self._tasks[study] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(study) is done:
                del self._tasks[study]

        task.add_done_callback(forget)

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
                # compare-and-set: a cancel landing after the read above is never overwritten
                if job["cancel_requested"] or not self.db.start_job(study, job["state"]):
                    self._end(job, "cancelled")
                    return
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

    def _end(self, job: dict[str, Any], state: str, *, error: str | None = None, note: str | None = None) -> None:
        self.db.finish_job(job["study"], state, error=error, note=note)
        if job["kind"] == "scan":
            run = self.db.scan_run_for_study(job["study"])
            if run is not None and run["state"] == "running" and state != "done":
                self.db.finish_scan_run(run["id"], state, error=error)

    async def _execute(self, job: dict[str, Any]) -> str | None:
        if job["kind"] == "scan":
            from hivemind.scans.scan import execute_scan_run

            run = self.db.scan_run_for_study(job["study"])
            if run is None:
                raise RuntimeError(f"scan job {job['study']!r} has no scan run")
            await execute_scan_run(self._store, self.db, run["id"], redact=self.redact, analysis_lock=self._analysis)
            return None
        from hivemind.pipeline import SAMPLING_STEPS, STEPS, run_pipeline_async

        spec = StudySpec.model_validate_json(job["spec_json"])

        def before_analysis() -> bool:  # a cancel during sampling skips the analysis
            if (self.db.job(job["study"]) or {}).get("cancel_requested"):
                return False
            self.db.update_job(job["study"], state="analyzing")
            return True

        done = await run_pipeline_async(
            spec,
            self._store,
            steps=STEPS if job["analyze"] else SAMPLING_STEPS,
            analysis_lock=self._analysis,
            before_analysis=before_analysis,
        )
        return "stopped: budget reached" if done.sampling is not None and done.sampling.stopped_by_budget else None
