"""The three shipped GGUF models, in-process and behind llama.cpp's own OpenAI-compatible server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from hivemind.providers.gguf import ChecksumError, resolve_gguf
from hivemind.spec import StudySpec
from hivemind.study import StudyError, run_study
from hivemind.testing.openai_server import free_port
from hivemind.zoo import load_zoo

LOCAL = ["gemma3-270m-base", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
pytestmark = pytest.mark.slow


def _rows(store: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples ORDER BY deployment, query_id, sample_index").fetchall()


def test_three_local_models_sample_distinct_answers(tmp_path: Path) -> None:
    spec = StudySpec(name="local", query_set="open-ended-v1", deployments=LOCAL, samples=3,
                     max_queries=2, params={"temperature": 1.0, "top_p": 0.95, "max_tokens": 12})
    run = run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 3 * 2 * 3 and all(r["error"] is None for r in rows)
    assert run.sampling.succeeded == {name: 6 for name in LOCAL}
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"):
        texts = [r["text"] for r in rows if r["deployment"] == name]
        assert all(t.strip() for t in texts), f"{name} gave an empty answer"
        assert len(set(texts)) > 2, f"{name}: samples collapsed"
    assert all(r["completion_tokens"] <= 12 for r in rows)


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
    zoo = write_zoo({"name": "broken", "provider": "llamacpp", "model": "x",
                     "options": {"gguf_path": str(fake), "sha256": "1" * 64}})
    spec = StudySpec(name="s", query_set="open-ended-v1", deployments=["broken"], zoo=str(zoo))
    with pytest.raises(StudyError, match="sha256"):
        run_study(spec, tmp_path / "store", progress=False)


@pytest.mark.parametrize("provider,model", [("openai", "smollm"), ("litellm", "openai/smollm")])
def test_study_through_a_real_llama_cpp_server(provider: str, model: str, tmp_path: Path,
                                               write_zoo: Callable[..., Path]) -> None:
    gguf = resolve_gguf(load_zoo().get("smollm2-135m-instruct").options, "smollm")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
        zoo = write_zoo({"name": "served", "provider": provider, "model": model,
                         "api_base": f"http://127.0.0.1:{port}/v1", "max_concurrency": 2})
        spec = StudySpec(name="s", query_set="open-ended-v1", deployments=["served"], samples=2,
                         max_queries=2, zoo=str(zoo), params={"temperature": 1.0, "max_tokens": 10})
        run_study(spec, tmp_path / "store", progress=False)
    finally:
        server.terminate()
        server.wait(timeout=20)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 4 and all(r["error"] is None and r["text"].strip() for r in rows)
    assert all(0 < r["completion_tokens"] <= 10 for r in rows)
