"""The service's worker processes: a bounded pool of `hivemind.service.job_process` children.

Used from the job manager's event loop (`hivemind.service.workers.JobManager`). A worker runs one
job at a time and is reused for the next (the embedder it loaded stays loaded); one idle for
`idle_s` is retired. Each starts in its own session, so its process group is its own: killing the
group stops it and anything it started. Invariants: at most `size` workers are alive beside the
ones being killed; a worker handed out by `acquire` is given back by exactly one of `release`
(healthy) or `discard` (killed); `close` leaves no child alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("hivemind.service")
NICE_ENV = "HIVEMIND_WORKER_NICE"
"""How much lower a worker's CPU priority is than the service's (so reads stay quick under load)."""


class WorkerDied(RuntimeError):
    """A worker ended while it ran a job; `returncode` is how (negative: the signal)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(describe_exit(returncode))
        self.returncode = returncode


def describe_exit(returncode: int | None) -> str:
    """`worker process killed by signal 9 (SIGKILL)` / `... exited unexpectedly with status 1 ...`."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"worker process killed by signal {-returncode} ({name})"
    return f"worker process exited unexpectedly with status {returncode} (its last lines are in the service's log)"


class Worker:
    """One child process and its pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.retire: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def run(self, study: str) -> dict[str, Any]:
        """Send one job; its answer. Raises `WorkerDied` if the process ends first."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write((json.dumps({"study": study}) + "\n").encode())
            await self.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise WorkerDied(await self.process.wait()) from None
        line = await self.process.stdout.readline()
        if not line:
            raise WorkerDied(await self.process.wait())
        reply: dict[str, Any] = json.loads(line)
        return reply

    def signal_group(self, sig: int) -> None:
        """`sig` to the worker's process group (its pid; the process alone where there are none)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(self.pid, sig)
            else:
                self.process.send_signal(sig)

    async def kill(self, grace_s: float = 3.0) -> None:
        """SIGTERM to its process group, then SIGKILL after `grace_s`; returns once it is reaped."""
        if self.retire is not None:
            self.retire.cancel()
        self.signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace_s)
        except TimeoutError:
            pass
        self.signal_group(signal.SIGKILL)  # the group too: anything it started
        await self.process.wait()


class WorkerPool:
    """Worker processes over one store, started on demand, at most `size` at a time."""

    def __init__(
        self,
        store_dir: Path,
        size: int,
        *,
        command: Sequence[str] | None = None,
        secrets: Sequence[str] = (),
        nice: int = 10,
        idle_s: float = 300.0,
    ) -> None:
        self.store_dir = store_dir
        self.size = size
        self.command = list(command) if command is not None else [sys.executable, "-m", "hivemind.service.job_process"]
        self.secrets = list(secrets)
        self.nice = nice
        self.idle_s = idle_s
        self._idle: list[Worker] = []
        self._all: set[Worker] = set()
        self._exiting: set[asyncio.Task[int]] = set()

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (each also its process group's id)."""
        return sorted(w.pid for w in self._all if w.alive)

    async def acquire(self) -> Worker:
        """An idle live worker, or a new one."""
        while self._idle:
            worker = self._idle.pop()
            if worker.retire is not None:
                worker.retire.cancel()
                worker.retire = None
            if worker.alive:
                return worker
            self._all.discard(worker)
        return await self._spawn()

    def release(self, worker: Worker) -> None:
        """A worker that answered its job: kept for the next one, retired after `idle_s` unused."""
        if not worker.alive:
            self._all.discard(worker)
            return
        self._idle.append(worker)
        worker.retire = asyncio.get_running_loop().call_later(self.idle_s, self._retire, worker)

    async def discard(self, worker: Worker) -> None:
        """Kill a worker (cancelled job, crash, shutdown) and forget it."""
        try:
            await worker.kill()
        finally:
            self._all.discard(worker)

    async def close(self) -> None:
        """Kill every worker and reap it."""
        workers = list(self._all)
        for worker in workers:
            worker.signal_group(signal.SIGTERM)
        await asyncio.gather(*(self.discard(w) for w in workers), return_exceptions=True)
        self._idle.clear()

    def _retire(self, worker: Worker) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
            assert worker.process.stdin is not None
            worker.process.stdin.close()  # EOF: it exits 0; forgotten once reaped (`close` waits for it)
            task = asyncio.get_running_loop().create_task(worker.process.wait())
            self._exiting.add(task)

            def forget(done: asyncio.Task[int]) -> None:
                self._exiting.discard(done)
                self._all.discard(worker)

            task.add_done_callback(forget)

    async def _spawn(self) -> Worker:
        import hivemind

        root = str(Path(hivemind.__file__).resolve().parent.parent)  # the same hivemind as ours
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            NICE_ENV: str(self.nice),
        }

        process = await asyncio.create_subprocess_exec(
            *self.command,
            str(self.store_dir),
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: killed as one
            limit=2**22,
        )
        worker = Worker(process)
        self._all.add(worker)
        assert process.stdin is not None
        try:
            process.stdin.write((json.dumps({"secrets": self.secrets}) + "\n").encode())
            await process.stdin.drain()
        except BaseException:  # cancelled while starting, or it died at once: never handed out
            await self.discard(worker)
            raise
        log.info("worker process %d started", process.pid)
        return worker
