"""The three shipped GGUF models, in worker processes and behind llama.cpp's own OpenAI-compatible
server; a worker killed mid-study costs only its own deployment's rows."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from hivemind.inputs.spec import StudySpec
from hivemind.inputs.zoo import load_zoo
from hivemind.providers.gguf import ChecksumError, resolve_gguf
from hivemind.providers.llamacpp import open_llama
from hivemind.providers.registry import create_provider
from hivemind.providers.worker import worker_pids
from hivemind.store.journal import Store
from hivemind.study import StudyError, run_study, sample_study
from hivemind.testing.openai_server import free_port
from tests.conftest import mock_deployment

LOCAL = ["gemma3-270m-base", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
pytestmark = pytest.mark.slow


def _rows(store: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples ORDER BY deployment, query_id, sample_index").fetchall()


def test_three_local_models_sample_distinct_answers(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    spec = StudySpec(
        name="local",
        query_set="open-ended-v1",
        deployments=LOCAL,
        samples=3,
        max_queries=2,
        params={"temperature": 1.0, "top_p": 0.95, "max_tokens": 12},
    )
    run = run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 3 * 2 * 3 and all(r["error"] is None for r in rows)
    assert run.sampling.succeeded == {name: 6 for name in LOCAL}
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        texts = [r["text"] for r in rows if r["deployment"] == name]
        assert all(t.strip() for t in texts), f"{name} gave an empty answer"
        assert len(set(texts)) > 2, f"{name}: samples collapsed"
    assert all(r["completion_tokens"] <= 12 for r in rows)
    # llama.cpp's own lines go to the store's logs, not to the user's terminal
    printed = capfd.readouterr()
    assert "llama_" not in printed.out + printed.err
    logs = sorted((tmp_path / "store" / "logs").glob("engine-*.log"))
    assert len(logs) == 3, logs  # one per engine


def test_shipped_weights_are_checked_against_their_hash(tmp_path: Path) -> None:
    zoo = load_zoo()
    for name in LOCAL:
        options = zoo.get(name).options
        assert len(options["sha256"]) == 64
        assert resolve_gguf(options, name).stat().st_size > 50_000_000
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ChecksumError, match="does not match"):
        resolve_gguf({"gguf_path": str(fake), "sha256": "0" * 64}, "fake")


def test_a_corrupt_model_fails_before_sampling(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")
    zoo = write_zoo(
        {
            "name": "broken",
            "provider": "llamacpp",
            "model": "x",
            "options": {"gguf_path": str(fake), "sha256": "1" * 64},
        }
    )
    spec = StudySpec(name="s", query_set="open-ended-v1", deployments=["broken"], zoo=str(zoo))
    with pytest.raises(StudyError, match="sha256"):
        run_study(spec, tmp_path / "store", progress=False)


@pytest.mark.parametrize("provider,model", [("openai", "smollm"), ("litellm", "openai/smollm")])
def test_study_through_a_real_llama_cpp_server(
    provider: str, model: str, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    gguf = resolve_gguf(load_zoo().get("smollm2-135m-instruct").options, "smollm")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hivemind.testing.llama_server",
            "--model",
            str(gguf),
            "--model_alias",
            "smollm",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "512",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "llama_cpp.server did not start"
            time.sleep(0.3)
        zoo = write_zoo(
            {
                "name": "served",
                "provider": provider,
                "model": model,
                "api_base": f"http://127.0.0.1:{port}/v1",
                "max_concurrency": 2,
            }
        )
        spec = StudySpec(
            name="s",
            query_set="open-ended-v1",
            deployments=["served"],
            samples=2,
            max_queries=2,
            zoo=str(zoo),
            params={"temperature": 1.0, "max_tokens": 10},
        )
        run_study(spec, tmp_path / "store", progress=False)
    finally:
        server.terminate()
        server.wait(timeout=20)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 4 and all(r["error"] is None and r["text"].strip() for r in rows)
    assert all(0 < r["completion_tokens"] <= 10 for r in rows)


SMOL = "smollm2-135m-instruct"


def _smollm_entry(**options: Any) -> dict[str, Any]:
    entry = load_zoo().get(SMOL).model_dump(exclude_none=True)
    entry["options"].update(options)
    return entry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_weight_repacking_is_off_unless_a_deployment_turns_it_on() -> None:
    path = str(resolve_gguf(load_zoo().get(SMOL).options, SMOL))
    assert open_llama(path, n_ctx=256).model_params.use_extra_bufts is False
    assert open_llama(path, n_ctx=256, weight_repacking=True).model_params.use_extra_bufts is True
    deployment = load_zoo().get(SMOL)
    assert create_provider(deployment).engine_config()["weight_repacking"] is False
    repacking = deployment.model_copy(update={"options": {**deployment.options, "weight_repacking": True}})
    assert create_provider(repacking).engine_config()["weight_repacking"] is True
    with pytest.raises(TypeError, match="weight_repacking must be true or false"):
        create_provider(deployment.model_copy(update={"options": {**deployment.options, "weight_repacking": "yes"}}))


def test_a_killed_worker_costs_only_its_deployment_and_a_rerun_completes_it(
    tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    zoo = write_zoo(
        _smollm_entry(),
        mock_deployment("a", latency_s=0.02, max_concurrency=2),
        mock_deployment("b", latency_s=0.03, max_concurrency=2),
    )
    spec = StudySpec(
        name="k",
        query_set="open-ended-v1",
        deployments=[SMOL, "a", "b"],
        samples=6,
        max_queries=4,
        zoo=str(zoo),
        params={"temperature": 1.0, "max_tokens": 6},
    )
    store = tmp_path / "store"
    outcome: dict[str, Any] = {}
    study = threading.Thread(target=lambda: outcome.update(run=run_study(spec, store, progress=False)))
    study.start()
    deadline, killed = time.monotonic() + 300, None
    while killed is None:
        assert study.is_alive() and time.monotonic() < deadline, "the local model never sampled"
        pid = worker_pids().get(SMOL)
        if pid is not None and _count(store, SMOL) >= 2:
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.02)
    study.join(timeout=300)
    assert not study.is_alive()

    rows = _rows(store)
    assert len(rows) == 3 * 4 * 6
    local = [r for r in rows if r["deployment"] == SMOL]
    failed = [r for r in local if r["error"] is not None]
    assert failed and len(failed) < len(local), "the kill must land mid-study"
    assert all(r["error"].startswith(f"worker process for deployment '{SMOL}' died: SIGKILL") for r in failed)
    assert all(f"log: {store / 'logs'}" in r["error"] for r in failed), "a crash names its log"
    assert all(r["error"] is None for r in rows if r["deployment"] != SMOL), "other deployments go on"
    assert outcome["run"].sampling.failed == {SMOL: len(failed)}
    assert SMOL not in worker_pids() and not _alive(killed)
    finished = {r["cache_key"]: r["created_at"] for r in rows if r["error"] is None}

    rerun = run_study(spec, store, progress=False)
    assert rerun.sampling.succeeded == {SMOL: len(failed)} and not rerun.sampling.failed
    rows = _rows(store)
    assert len(rows) == 3 * 4 * 6 and all(r["error"] is None and r["text"] for r in rows)
    assert len({(r["query_id"], r["deployment"], r["condition"], r["sample_index"]) for r in rows}) == len(rows)
    after = {r["cache_key"]: r["created_at"] for r in rows}
    assert all(after[key] == created for key, created in finished.items()), "finished samples were redone"
    assert not worker_pids(), "no worker outlives its study"


def test_cancelling_a_study_stops_its_workers(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(_smollm_entry())
    spec = StudySpec(
        name="c",
        query_set="open-ended-v1",
        deployments=[SMOL],
        samples=20,
        max_queries=4,
        zoo=str(zoo),
        params={"max_tokens": 64},
    )

    async def start_then_cancel() -> int:
        with Store(tmp_path / "store") as store:
            task = asyncio.create_task(sample_study(spec, store, progress=False))
            deadline = time.monotonic() + 300
            while (pid := worker_pids().get(SMOL)) is None or _count(tmp_path / "store", SMOL) < 1:
                assert not task.done() and time.monotonic() < deadline
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return pid

    pid = asyncio.run(start_then_cancel())
    assert not _alive(pid) and not worker_pids()
    assert 1 <= _count(tmp_path / "store", SMOL) < 80, "finished samples stay; the rest was not sampled"


def _count(store: Path, deployment: str) -> int:
    """Rows of `deployment` so far (read while the study writes)."""
    try:
        with sqlite3.connect(store / "hivemind.sqlite", timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM samples WHERE deployment = ?", (deployment,)).fetchone()[0])
    except sqlite3.OperationalError:  # no store or no table yet
        return 0
