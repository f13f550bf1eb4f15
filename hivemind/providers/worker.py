"""Run an in-process engine (a loaded model) in a worker process of its own.

A native crash inside llama.cpp (segfault, abort, out-of-memory kill) takes down the process it
happens in. Run there, it would end the study and every deployment with it; run in a worker, it
costs only the requests of the deployments on that worker, which the provider turns into error
rows naming the signal (a rerun retries them).

Any engine kind plugs in through a factory, named "module:function" so the child can import it:
`factory(config)` runs in the child, loads whatever it needs, and returns a callable that maps one
picklable payload to one picklable result (the llama.cpp engine is
`hivemind.providers.llamacpp:llama_engine`; an engine that steps several models together fits the
same way). The child answers one payload at a time, on its main thread, over a pipe.

Processes start with multiprocessing's "spawn" context (a fresh interpreter: no llama.cpp state or
threads inherited from the parent), one per distinct (factory, config): deployments that load the
same model share it. A child ignores Ctrl-C (its parent decides when it stops), exits when its
pipe closes, and dies with its parent (Linux parent-death signal, elsewhere a watchdog thread).

What a child's native code prints (llama.cpp's load and cache lines) goes to a log file per engine
when a log directory is set (`set_log_dir`: the study's `STORE/logs/`), not to the user's terminal;
a crash or failed load names the file and quotes its last lines.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import Provider, ProviderError

Engine = Callable[[Any], Any]
"""What a factory returns: one payload in, one result out (both picklable)."""

STOP_TIMEOUT_S = 10.0
PROCESS_PREFIX = "hivemind-engine "


_log_dir: Path | None = None


def set_log_dir(directory: Path | None) -> None:
    """Where workers started from now on write their output (None: the terminal, as `--verbose`)."""
    global _log_dir
    _log_dir = directory


def log_tail(path: Path | None, lines: int = 5) -> str:
    """The last lines of an engine's log, for an error message ('' when there is none)."""
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        tail = handle.read().decode("utf-8", "replace").strip().splitlines()[-lines:]
    return f" (log: {path}; last lines: {' | '.join(tail)})" if tail else f" (log: {path})"


def _redirect_output(log_path: str | None) -> None:
    """In the child: fds 1 and 2 (native code's printf and llama.cpp's logs) to the log file."""
    if log_path is None:
        return
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class EngineError(Exception):
    """The engine raised a Python exception; the worker process is still fine."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class WorkerDied(Exception):
    """The worker process ended without answering: a native crash, a kill, or out of memory."""

    def __init__(self, exitcode: int | None, log: str = "") -> None:
        self.exitcode = exitcode
        self.log = log
        """Where the worker's output went and its last lines ('' when it printed to the terminal)."""
        super().__init__(self.cause + log)

    @property
    def cause(self) -> str:
        """`SIGSEGV`, `SIGKILL` (also what the kernel's out-of-memory killer sends), `exit code 1`."""
        if self.exitcode is None:
            return "unknown cause"
        if self.exitcode < 0:
            try:
                return signal.Signals(-self.exitcode).name
            except ValueError:
                return f"signal {-self.exitcode}"
        return f"exit code {self.exitcode}"


class EngineWorker:
    """The parent's handle on one worker process: started on first call, one call at a time.

    Every call runs on this handle's own thread, which also starts the process, so the
    parent-death signal (tied to the starting thread on Linux) fires only when the handle is
    closed or the parent dies. A crash or a failed load is remembered: later calls fail at once
    instead of reloading a model that will crash again; a new handle (a rerun) starts afresh.
    """

    def __init__(self, factory: str, config: dict[str, Any], label: str) -> None:
        self.factory = factory
        self.config = config
        self.label = label
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{label}")
        self._process: Any = None
        self._conn: Any = None
        self._failure: Exception | None = None
        self._busy = False
        self._closed = False
        self.log_path: Path | None = None
        """The file this worker's output goes to (None: the terminal)."""

    @property
    def pid(self) -> int | None:
        """The worker process id once started (tests and operators use it)."""
        return self._process.pid if self._process is not None else None

    async def call(self, payload: Any) -> Any:
        """The engine's result for `payload`; raises EngineError or WorkerDied."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._call_sync, payload)

    def _call_sync(self, payload: Any) -> Any:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise RuntimeError(f"worker for {self.label} is closed")
        self._busy = True
        try:
            if self._process is None:
                self._start()
            return self._exchange(payload)
        finally:
            self._busy = False

    def _start(self) -> None:
        import multiprocessing

        _skip_main_module_in_workers()
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        if _log_dir is not None:
            _log_dir.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label)[:100]
            self.log_path = _log_dir / f"engine-{safe}.log"
        process = context.Process(
            target=serve,
            name=f"{PROCESS_PREFIX}{self.label}",
            daemon=True,
            args=(
                child_end,
                self.factory,
                self.config,
                os.getpid(),
                None if self.log_path is None else str(self.log_path),
            ),
        )
        process.start()
        child_end.close()  # so the parent's reads see EOF when the child dies
        self._process, self._conn = process, parent_end
        self._receive()  # the engine's load: ("ok", None) or its error

    def _exchange(self, payload: Any) -> Any:
        try:
            self._conn.send(payload)
        except (OSError, ValueError):  # broken pipe: the process is gone
            raise self._died() from None
        return self._receive()

    def _receive(self) -> Any:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if status == "ok":
            return value
        kind, message = value
        error = EngineError(kind, message + (log_tail(self.log_path) if status == "load_error" else ""))
        if status == "load_error":  # the same load would fail again: fail every later call at once
            self._failure = error
        raise error

    def _died(self) -> WorkerDied:
        self._process.join(timeout=STOP_TIMEOUT_S)
        if self._process.exitcode is None:  # pipe broken but still running: make sure it is gone
            self._process.kill()
            self._process.join(timeout=STOP_TIMEOUT_S)
        self._failure = WorkerDied(self._process.exitcode, log_tail(self.log_path))
        self._conn.close()
        return self._failure

    def close(self) -> None:
        """Stop the worker: politely when idle, by SIGTERM when a call is still running (a cancelled
        study does not wait for its last generation). Returns once the process is gone."""
        if self._closed:
            return
        self._closed = True
        process = self._process
        if process is not None and self._busy and process.is_alive():
            process.terminate()
        self._thread.submit(self._stop).result()
        self._thread.shutdown(wait=True)

    def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.is_alive() and not self._conn.closed:
            try:
                self._conn.send(None)
            except (OSError, ValueError):
                pass
        process.join(timeout=STOP_TIMEOUT_S)
        for stop in (process.terminate, process.kill):
            if process.exitcode is not None:
                break
            stop()
            process.join(timeout=STOP_TIMEOUT_S)
        if not self._conn.closed:
            self._conn.close()
        process.close()
        self._process = None


_MAIN_SKIPPED = threading.Lock()
_main_patch_installed = False


def _skip_main_module_in_workers() -> None:
    """Spawned children normally re-import the parent's `__main__` (a user's script without an
    `if __name__ == "__main__":` guard would then run again inside the worker and start workers
    of its own). A worker needs only `serve` and its factory, both importable by name, so the
    spawn preparation data of processes named with PROCESS_PREFIX leaves `__main__` out; other
    multiprocessing users are unaffected."""
    global _main_patch_installed
    with _MAIN_SKIPPED:
        if _main_patch_installed:
            return
        from multiprocessing import spawn

        original = spawn.get_preparation_data

        def get_preparation_data(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            if name.startswith(PROCESS_PREFIX):
                data.pop("init_main_from_name", None)
                data.pop("init_main_from_path", None)
            return data

        spawn.get_preparation_data = get_preparation_data
        _main_patch_installed = True


# --- the shared pool: one worker per distinct (factory, config) ------------------------------------

_POOL: dict[str, tuple[EngineWorker, int]] = {}
_POOL_LOCK = threading.Lock()


def _key(factory: str, config: dict[str, Any]) -> str:
    return factory + json.dumps(config, sort_keys=True, default=str)


def acquire(factory: str, config: dict[str, Any], label: str) -> EngineWorker:
    """The worker for this engine, shared with other holders of the same (factory, config)."""
    key = _key(factory, config)
    with _POOL_LOCK:
        worker, holders = _POOL.get(key, (None, 0))
        if worker is None:
            worker = EngineWorker(factory, config, label)
        _POOL[key] = (worker, holders + 1)
        return worker


def release(worker: EngineWorker) -> None:
    """Drop one hold; the last holder stops the process (end of a study, or its cancellation)."""
    key = _key(worker.factory, worker.config)
    with _POOL_LOCK:
        current, holders = _POOL.get(key, (None, 0))
        if current is not worker:
            return
        if holders > 1:
            _POOL[key] = (worker, holders - 1)
            return
        del _POOL[key]
    worker.close()


def worker_pids() -> dict[str, int]:
    """Label -> pid of every running worker process of this process."""
    with _POOL_LOCK:
        workers = [worker for worker, _ in _POOL.values()]
    return {w.label: pid for w in workers if (pid := w.pid) is not None}


# --- the child side ----------------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Make sure an orphaned worker does not keep a model (and cores) busy."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def serve(conn: Any, factory: str, config: dict[str, Any], parent_pid: int, log_path: str | None = None) -> None:
    """The worker's main loop: build the engine, then answer payloads until the pipe closes."""
    _redirect_output(log_path)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        module, _, name = factory.partition(":")
        engine = getattr(importlib.import_module(module), name)(config)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails every call with it
        conn.send(("load_error", _describe(exc)))
        return
    conn.send(("ok", None))
    try:
        while True:
            try:
                payload = conn.recv()
            except EOFError:
                return
            if payload is None:
                return
            try:
                reply: tuple[str, Any] = ("ok", engine(payload))
            except Exception as exc:  # noqa: BLE001 - one request's Python error: report it, keep serving
                reply = ("error", _describe(exc))
            try:
                conn.send(reply)
            except Exception as exc:  # noqa: BLE001 - unpicklable result (a broken pipe fails again: exit)
                conn.send(("error", _describe(exc)))
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()


class WorkerProvider(Provider):
    """A provider whose engine runs in a worker process (`acquire`): local models of any kind.

    A subclass names its engine factory (`ENGINE`, "module:function"), says what the worker needs
    to load it (`engine_config`), what one request becomes (`payload`) and how a result becomes a
    `Completion` (`completion`). A worker crash becomes a non-retried error naming the deployment
    and the signal (the same load would likely crash again in this run; a rerun retries); a
    Python error in the engine (a prompt longer than the context) is not transient either.
    """

    ENGINE: ClassVar[str]
    cancellable = False  # generation is bounded by max_tokens, not by a timeout

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self._worker: EngineWorker | None = None

    def max_connections(self) -> int:
        return 1  # one engine, one decode at a time; parallelism comes from other deployments

    @abstractmethod
    def engine_config(self) -> dict[str, Any]:
        """What the worker needs to build the engine (may resolve and hash weight files)."""

    @abstractmethod
    def payload(self, request: SampleRequest) -> Any:
        """The engine's input for one request (picklable)."""

    @abstractmethod
    def completion(self, result: Any) -> Completion:
        """The `Completion` of one engine result."""

    @property
    def worker_pid(self) -> int | None:
        """The pid of this deployment's worker process, once started."""
        return self._worker.pid if self._worker is not None else None

    async def generate(self, request: SampleRequest) -> Completion:
        if self._worker is None:
            config = await asyncio.to_thread(self.engine_config)
            if self._worker is None:
                self._worker = acquire(self.ENGINE, config, self.deployment.name)
        try:  # the first call starts the worker and loads the model (seconds)
            result = await self._worker.call(self.payload(request))
        except WorkerDied as exc:
            raise ProviderError(
                f"worker process for deployment {self.deployment.name!r} died: {exc.cause}{exc.log}", retryable=False
            ) from None
        except EngineError as exc:
            raise ProviderError(str(exc), retryable=False) from None
        return self.completion(result)

    async def aclose(self) -> None:
        """Stop the worker process (the last deployment sharing it stops it)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            release(worker)
