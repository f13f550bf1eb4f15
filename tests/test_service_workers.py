"""The service's worker processes, against real servers on 127.0.0.1: a worker killed mid-study
fails its job with a clear error and its samples kept, and the same request sent again finishes
the study exactly once; a service stopped (SIGTERM) or killed (SIGKILL) while jobs run leaves no
worker process behind; an idle worker retires and a worker that cannot start fails its job, the
queue going on. And the reads behind the API: never waiting on a writer's open transaction, and
the study list a fixed number of queries however many studies there are.

Workers are found by their command line (`hivemind.service.job_process STORE ...`, this test's own
store), so only this test's processes are looked at or signalled.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_service import QUERIES, TOKEN, _spawn, serving, upload, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds workers through /proc")
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def env() -> object:
    from tests.test_service import PROVIDER_KEY, PROVIDER_KEY_ENV, TOKEN_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        mp.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
        yield


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_service import ZOO

    path = tmp_path_factory.mktemp("zoo") / "providers.yaml"
    path.write_text(ZOO)
    return path


def _processes() -> list[tuple[int, int, str, list[bytes]]]:
    """(pid, process group, state, argv) of every process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(entry.name), int(fields[2]), fields[0], argv))
    return found


def workers_of(store: Path) -> list[int]:
    """Pids of the live worker processes serving `store` (zombies excluded)."""
    mark = str(store).encode()
    return sorted(
        pid
        for pid, _, state, argv in _processes()
        if state != "Z" and b"hivemind.service.job_process" in argv and mark in argv
    )


def group_gone(pgid: int) -> bool:
    """No live process is left in the process group `pgid` (a worker's group is its pid)."""
    return not any(group == pgid and state != "Z" for _, group, state, _ in _processes())


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.time() < deadline, what
        time.sleep(0.05)


def sample_rows(store: Path, study: str) -> list[tuple]:
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        return db.execute(
            "SELECT query_id, deployment, condition, sample_index, error FROM samples WHERE study = ?", (study,)
        ).fetchall()


def test_a_killed_worker_fails_its_job_keeps_its_samples_and_a_resubmission_finishes_it_once(
    env: None, zoo: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    deployments, samples = ("mock-crawl", "mock-fast"), 20  # mock-crawl: about 10 samples a second
    planned = len(QUERIES) * len(deployments) * samples
    body = {"name": "crash", "query_set": "crash-set", "deployments": list(deployments), "samples": samples}
    body["analyze"] = False
    with serving(store, zoo, scheduler=False) as url, httpx.Client(base_url=url, headers=HEADERS, timeout=30) as c:
        upload(c, "crash-set")
        assert c.post("/v1/studies", json=body).status_code == 202
        wait_until(
            lambda: c.get("/v1/studies/crash").json()["progress"]["mock-crawl"]["ok"] >= 4, 60, "no samples came"
        )
        [worker] = workers_of(store)
        os.kill(worker, signal.SIGKILL)
        status = wait_for(c, "crash", ("failed", "done", "cancelled"), timeout=30)
        assert status["state"] == "failed", status
        kept = status["total"]["ok"]
        assert 4 <= kept < planned, status  # killed mid-study
        error = status["error"]
        assert "killed by signal 9 (SIGKILL)" in error and f"{kept} samples kept" in error, error
        assert "resubmit" in error
        assert len([r for r in sample_rows(store, "crash") if r[-1] is None]) == kept  # all still there
        assert group_gone(worker)

        # the service goes on: it answers, and the same request again finishes the study
        assert c.get("/healthz").json()["workers_alive"] is True
        again = c.post("/v1/studies", json=body)
        assert again.status_code == 202, again.text
        status = wait_for(c, "crash", ("failed", "done", "cancelled"), timeout=120)
        assert status["state"] == "done" and status["error"] is None, status
        assert status["total"] == {"planned": planned, "ok": planned, "failed": 0, "pending": 0}
        listed = {s["name"]: s for s in c.get("/v1/studies").json()["studies"]}
        assert listed["crash"]["total"] == status["total"] and listed["crash"]["state"] == "done"
        assert c.post("/v1/studies", json=body).status_code == 409  # done: not run a third time
    rows = sample_rows(store, "crash")
    keys = {r[:4] for r in rows}
    expected = {(q["id"], d, "default", i) for q in QUERIES for d in deployments for i in range(samples)}
    assert len(rows) == len(keys) == planned and keys == expected  # each sample once
    assert all(r[-1] is None for r in rows)
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        assert db.execute("SELECT runs FROM service_jobs WHERE study = 'crash'").fetchone()[0] == 2
    assert workers_of(store) == []  # the app's end stopped the worker that finished it


def _start_two_studies(url: str, store: Path) -> list[int]:
    """Two slow studies sampling at once (`--workers 2`, the default); their workers' pids."""
    with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as c:
        upload(c, "stop-set")
        for name in ("stop-a", "stop-b"):
            body = {"name": name, "query_set": "stop-set", "deployments": ["mock-crawl"], "samples": 40}
            assert c.post("/v1/studies", json={**body, "analyze": False}).status_code in (200, 202)
        for name in ("stop-a", "stop-b"):
            wait_until(lambda n=name: c.get(f"/v1/studies/{n}").json()["total"]["ok"] >= 2, 60, f"{name} idle")
    pids = workers_of(store)
    assert len(pids) == 2, pids
    return pids


def test_stopping_or_killing_the_service_leaves_no_worker_behind(env: None, zoo: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc, url = _spawn(store, zoo, tmp_path / "serve-1.log")
    try:
        pids = _start_two_studies(url, store)
        proc.send_signal(signal.SIGTERM)  # what a service manager sends
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Application shutdown complete" in (tmp_path / "serve-1.log").read_text()
    assert all(group_gone(pid) for pid in pids), [p for p in pids if not group_gone(p)]
    assert workers_of(store) == []
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        states = dict(db.execute("SELECT study, state FROM service_jobs").fetchall())
    assert states == {"stop-a": "sampling", "stop-b": "sampling"}  # left to resume, not failed

    proc, url = _spawn(store, zoo, tmp_path / "serve-2.log")  # resumes both, in new workers
    try:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=30) as c:
            wait_until(lambda: len(workers_of(store)) == 2, 60, "the jobs did not resume")
            pids = workers_of(store)
            assert c.get("/v1/studies/stop-a").json()["state"] == "sampling"
        proc.send_signal(signal.SIGKILL)  # no shutdown at all: the workers die with it
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: all(group_gone(pid) for pid in pids), 10, "a worker outlived its killed service")
    assert sys.platform != "linux" or workers_of(store) == []


def test_an_idle_worker_retires_and_the_next_job_gets_a_new_one(env: None, zoo: Path, tmp_path: Path) -> None:
    from hivemind.service.workers import JobManager
    from tests.test_service import _queue_job, _wait_job

    store = tmp_path / "store"
    manager = JobManager(store, max_active=1, worker_idle_s=0.5)
    _queue_job(manager.db, zoo, tmp_path, "first", analyze=False)
    manager.start()
    try:
        assert _wait_job(manager.db, "first", ("done", "failed", "cancelled"))["state"] == "done"
        wait_until(lambda: workers_of(store) == [], 15, "the idle worker did not retire")
        assert manager.pool.pids == []
        _queue_job(manager.db, zoo, tmp_path, "second", analyze=False)
        manager.submit("second")
        assert _wait_job(manager.db, "second", ("done", "failed", "cancelled"))["state"] == "done"
        assert len(workers_of(store)) == 1
    finally:
        manager.stop()
    assert workers_of(store) == []


def test_a_worker_that_cannot_start_fails_its_job_with_its_status_and_the_service_goes_on(
    env: None, zoo: Path, tmp_path: Path
) -> None:
    from hivemind.service.workers import JobManager
    from tests.test_service import _queue_job, _wait_job

    manager = JobManager(tmp_path / "store", max_active=1, worker_command=[sys.executable, "-c", "raise SystemExit(5)"])
    for study in ("broken-a", "broken-b"):
        _queue_job(manager.db, zoo, tmp_path, study, analyze=False)
    manager.start()
    try:
        jobs = [_wait_job(manager.db, s, ("done", "failed", "cancelled")) for s in ("broken-a", "broken-b")]
        assert manager.alive
    finally:
        manager.stop()
    for job in jobs:  # each job had its own try: one bad worker does not stop the queue
        assert job["state"] == "failed", job
        assert "worker process exited unexpectedly with status 5" in job["error"], job["error"]
        assert "0 samples kept" in job["error"]
    assert manager.pool.pids == []


def test_reads_do_not_wait_for_a_writer_holding_its_transaction(tmp_path: Path) -> None:
    import threading

    from hivemind.store.jobs import ServiceDB

    with ServiceDB(tmp_path / "store") as db:
        db.create_job(
            {"study": "w", "kind": "study", "request_json": "{}", "spec_json": "{}", "planned_json": "{}", "analyze": 0}
        )
        inside, release = threading.Event(), threading.Event()

        def long_write() -> None:
            with db.transaction() as connection:
                connection.execute("UPDATE service_jobs SET note = 'being written' WHERE study = 'w'")
                inside.set()
                release.wait(20)

        writer = threading.Thread(target=long_write)
        writer.start()
        try:
            assert inside.wait(10)
            started = time.perf_counter()
            job, listed = db.job("w"), db.jobs()
            assert time.perf_counter() - started < 1.0  # not the writer's lock, nor SQLite's busy wait
            assert job is not None and job["note"] is None and [j["study"] for j in listed] == ["w"]  # last commit
        finally:
            release.set()
            writer.join(20)
        assert (db.job("w") or {})["note"] == "being written"  # and the commit, once made, is read


def test_the_study_list_costs_the_same_queries_for_few_or_many_studies(
    env: None, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from hivemind.store.sqlite_file import JournalFile

    statements: dict[int, list[str]] = {}
    connect = JournalFile._connect

    def traced(self: JournalFile) -> sqlite3.Connection:
        connection = connect(self)
        connection.set_trace_callback(lambda sql: statements.setdefault(threading.get_ident(), []).append(sql))
        return connection

    monkeypatch.setattr(JournalFile, "_connect", traced)
    counts = []
    with serving(tmp_path / "store", zoo, scheduler=False) as url, httpx.Client(base_url=url, headers=HEADERS) as c:
        upload(c, "list-set")
        made = 0
        for wanted in (2, 8):
            for i in range(made, wanted):
                body = {"name": f"list-{i}", "query_set": "list-set", "deployments": ["mock-fast"], "samples": 1}
                assert c.post("/v1/studies", json={**body, "analyze": False}).status_code == 202
                wait_for(c, f"list-{i}", ("done",))
            made = wanted
            statements.clear()
            listed = c.get("/v1/studies").json()["studies"]
            assert [s["name"] for s in listed] == [f"list-{i}" for i in range(wanted)]
            assert all(s["total"]["ok"] == s["total"]["planned"] == len(QUERIES) for s in listed)
            counts.append(
                sum(1 for sqls in statements.values() for sql in sqls if sql.lstrip().upper().startswith("SELECT"))
            )
    assert counts[0] == counts[1] and counts[0] <= 5, counts
