"""Kill a real sampling process with SIGKILL mid-run; the rerun samples only what is missing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import REPO, mock_deployment


def _count(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(db_path, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


def test_kill_9_then_rerun_gives_exactly_one_row_per_sample(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(
        mock_deployment("a", latency_s=0.05, max_concurrency=2), mock_deployment("b", latency_s=0.06, max_concurrency=3)
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "k",
                "query_set": "open-ended-v1",
                "max_queries": 20,
                "deployments": ["a", "b"],
                "samples": 5,
                "zoo": str(zoo),
            }
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
        "--no-analyze",
        "--no-progress",
    ]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while _count(store / "hivemind.sqlite") < 40:
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = _count(store / "hivemind.sqlite")
    assert 40 <= killed_at < 200, "the kill must land mid-run"
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        before = dict(db.execute("SELECT cache_key, created_at FROM samples").fetchall())

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"{200 - killed_at} now, {killed_at} already" in " ".join(second.stderr.split())
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        rows = db.execute(
            "SELECT query_id, deployment, condition, sample_index, cache_key, created_at, error FROM samples"
        ).fetchall()
    assert len(rows) == 200
    assert len({r[:4] for r in rows}) == 200
    assert all(r[6] is None for r in rows)
    after = {r[4]: r[5] for r in rows}
    assert all(after[key] == created for key, created in before.items()), "finished samples were redone"
