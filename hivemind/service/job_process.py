"""A service worker process: runs the service's jobs outside the API's process, one at a time.

    python -m hivemind.service.job_process STORE_DIR PARENT_PID

Started by `hivemind.service.worker_pool.WorkerPool` in a process group of its own. It reads
JSON lines on stdin (the first `{"secrets": [...]}`, then one `{"study": NAME}` per job) and
answers each job with one JSON line, `{"study", "ok", "note"}` or `{"study", "ok": false,
"error"}`, on the stdout it was given (which it keeps for that alone: whatever a library prints
goes to stderr, the service's log). EOF on stdin: it exits 0.

Invariants: the job's row was marked started by the service before it is sent here; this process
writes only what a job writes (samples, each committed before it counts; the `analyzing` state;
a scan run's result), never a job's final state, which the service sets from the answer or from
how this process ended. So a kill at any moment loses at most the requests in flight, and the
service can say what happened. It dies with the service (Linux: `PR_SET_PDEATHSIG`; elsewhere a
watch on its parent's pid), so no worker outlives the service that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hivemind.store.jobs import ServiceDB
    from hivemind.store.journal import Store


def die_with_parent(parent: int) -> None:
    """Exit when the process `parent` is gone (no orphan keeps writing to the store)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(0.5)

    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(3)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def protocol_stdout() -> IO[str]:
    """The stdout the service reads answers from; fd 1 is pointed at stderr for everything else."""
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return answers


async def execute_job(store: Store, db: ServiceDB, job: dict[str, Any], redact: Callable[[str], str]) -> str | None:
    """Run one job (a study's pipeline steps, or a scan run); its note, if any."""
    from hivemind.inputs.spec import StudySpec
    from hivemind.pipeline import SAMPLING_STEPS, STEPS, run_pipeline_async

    if job["kind"] == "scan":
        from hivemind.scans.scan import execute_scan_run

        run = db.scan_run_for_study(job["study"])
        if run is None:
            raise RuntimeError(f"scan job {job['study']!r} has no scan run")
        await execute_scan_run(store, db, run["id"], redact=redact)
        return None
    spec = StudySpec.model_validate_json(job["spec_json"])

    def before_analysis() -> bool:  # a cancel during sampling skips the analysis
        if (db.job(job["study"]) or {}).get("cancel_requested"):
            return False
        db.update_job(job["study"], state="analyzing")
        return True

    done = await run_pipeline_async(
        spec, store, steps=STEPS if job["analyze"] else SAMPLING_STEPS, before_analysis=before_analysis
    )
    return "stopped: budget reached" if done.sampling is not None and done.sampling.stopped_by_budget else None


def serve_jobs(store_dir: str, lines: IO[str], answers: IO[str]) -> None:
    """Answer every job line until EOF."""
    from hivemind.service.redaction import Redactor, install_log_redaction
    from hivemind.store.jobs import ServiceDB
    from hivemind.store.journal import Store

    first = lines.readline()
    if not first:
        return
    redact = Redactor(json.loads(first).get("secrets", []))
    install_log_redaction(redact)
    with ServiceDB(store_dir) as db, Store(store_dir) as store:
        for line in lines:
            if not line.strip():
                continue
            study = json.loads(line)["study"]
            reply: dict[str, Any] = {"study": study, "ok": True, "note": None}
            try:
                job = db.job(study)
                if job is None:
                    raise RuntimeError(f"no job for study {study!r}")
                reply["note"] = asyncio.run(execute_job(store, db, job, redact))
            except Exception as exc:  # reported to the service, which fails the job
                reply = {"study": study, "ok": False, "error": redact(str(exc) or type(exc).__name__)}
            answers.write(json.dumps(reply) + "\n")
            answers.flush()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        sys.exit("usage: python -m hivemind.service.job_process STORE_DIR PARENT_PID")
    die_with_parent(int(args[1]))
    with contextlib.suppress(OSError, ValueError):  # below the API's priority: reads stay quick
        os.nice(int(os.environ.get("HIVEMIND_WORKER_NICE", "0")))
    answers = protocol_stdout()
    serve_jobs(args[0], sys.stdin, answers)


if __name__ == "__main__":
    main()
