"""Background workers: jobs are scheduled on an asyncio loop in one thread of the API's process
and run in worker processes (`hivemind.service.worker_pool`, `hivemind.service.job_process`).

The API's process only reads and writes rows: sampling, export, analysis, report writing and
embedding all run in a worker, a child in a process group of its own, at most `max_active` at a
time (`hivemind serve --workers N`), so no heavy step shares the API's GIL. Each job is
`hivemind.pipeline.run_pipeline_async` on the worker's own store handle (a scan job: the scan's
sampling steps, then its drift step). A restarted service resumes every unfinished job; sampling
takes only what the journal lacks, so no finished sample is lost or duplicated. Cancelling a job
kills its worker's process group (SIGTERM, then SIGKILL): sampling or analysis stops at once,
in-flight requests are dropped and every committed sample stays. A worker that dies on its own
(a signal, a crash) fails its job with an error saying so and how many samples were kept; the
service goes on and a new worker takes the next job. Stopping the service kills every worker and
waits for it (no orphan; a worker also dies with the service's process). A lock file in the
store keeps a second service from running the same jobs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hivemind.layout import StoreLayout
from hivemind.service.worker_pool import WorkerDied, WorkerPool
from hivemind.store.jobs import ACTIVE, TERMINAL, ServiceDB

log = logging.getLogger("hivemind.service")


class JobManager:
    """Schedules jobs on an asyncio loop in one thread; runs them in at most `max_active` worker
    processes, each `worker_nice` below our CPU priority and retired after `worker_idle_s` unused.
    `worker_command` replaces `python -m hivemind.service.job_process` (tests)."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        max_active: int = 2,
        redact: Callable[[str], str] = lambda s: s,
        scheduler: Callable[[JobManager], None] | None = None,
        scheduler_interval_s: float = 30.0,
        worker_command: Sequence[str] | None = None,
        worker_nice: int = 10,
        worker_idle_s: float = 300.0,
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
        secrets = getattr(redact, "secrets", ())
        self.pool = WorkerPool(
            self.store_dir, max_active, command=worker_command, secrets=secrets, nice=worker_nice, idle_s=worker_idle_s
        )

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
        try:
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
            loop.run_until_complete(self.pool.close())  # idle ones too: no worker outlives us
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
        """Stop: kill every worker process and wait for it, leaving unfinished jobs as they are so
        a restart resumes them."""
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
        """Run `job` in a worker process; its note. A cancel kills the worker (and is raised)."""
        worker = await self.pool.acquire()
        try:
            reply = await worker.run(job["study"])
        except WorkerDied as died:
            await self.pool.discard(worker)
            kept = self.db.samples_kept(job["study"])
            raise RuntimeError(f"{died}; {kept} samples kept; resubmit the same request to finish") from None
        except BaseException:  # a cancel (or shutdown): the worker is stopped where it is
            await self.pool.discard(worker)
            raise
        self.pool.release(worker)
        if not reply.get("ok"):
            raise RuntimeError(str(reply.get("error") or "the job failed"))
        note: str | None = reply.get("note")
        return note
