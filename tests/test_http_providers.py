"""The `openai` (httpx) and `litellm` providers against a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from hivemind.inputs.spec import StudySpec
from hivemind.study import run_study
from hivemind.testing.openai_server import Script, serve

# litellm's `openai/` route would refuse min_p (OpenAI's API has none); `hosted_vllm/` takes it.
PROVIDERS = [("openai", "stub"), ("litellm", "hosted_vllm/stub")]


def _deployment(provider: str, model: str, api_base: str, **extra: object) -> dict[str, object]:
    return {"name": "remote", "provider": provider, "model": model, "api_base": api_base, "max_concurrency": 4, **extra}


def _rows(store: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples").fetchall()


@pytest.mark.parametrize("provider,model", PROVIDERS)
def test_samples_fan_out_with_distinct_seeds(
    provider: str, model: str, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    with serve() as (api_base, script):
        zoo = write_zoo(_deployment(provider, model, api_base))
        spec = StudySpec(
            name="s",
            query_set="open-ended-v1",
            deployments=["remote"],
            samples=5,
            max_queries=2,
            zoo=str(zoo),
            params={"temperature": 1.0, "top_p": 0.9, "max_tokens": 32, "min_p": 0.05},
        )
        run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 10 and all(r["error"] is None for r in rows)
    assert len(script.bodies) == 10, "one HTTP call per sample"
    assert len({b["seed"] for b in script.bodies}) == 10
    body = script.bodies[0]
    assert body["temperature"] == 1.0 and body["top_p"] == 0.9 and body["max_tokens"] == 32
    assert body.get("min_p", (body.get("extra_body") or {}).get("min_p")) == 0.05
    assert all(r["prompt_tokens"] == 10 and r["completion_tokens"] == 6 for r in rows)


@pytest.mark.parametrize("provider,model", PROVIDERS)
def test_rate_limits_are_retried_after_the_servers_delay(
    provider: str, model: str, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    with serve(Script(fail_first=3, retry_after="0.3")) as (api_base, script):
        zoo = write_zoo(_deployment(provider, model, api_base, max_concurrency=1))
        spec = StudySpec(
            name="s", query_set="open-ended-v1", deployments=["remote"], samples=2, max_queries=1, zoo=str(zoo)
        )
        run = run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert all(r["error"] is None for r in rows)
    assert run.sampling.retries == 3 and script.served == 5
    assert max(r["latency_s"] for r in rows) >= 0.9, "Retry-After: 0.3 was not honoured"


@pytest.mark.parametrize("provider,model", PROVIDERS)
def test_keys_never_reach_the_store(
    provider: str, model: str, tmp_path: Path, write_zoo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("STUB_KEY", secret)
    with serve(Script(required_key="another-key")) as (api_base, _):
        zoo = write_zoo(_deployment(provider, model, api_base, api_key_env="STUB_KEY"))
        spec = StudySpec(
            name="s", query_set="open-ended-v1", deployments=["remote"], samples=1, max_queries=1, zoo=str(zoo)
        )
        run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert rows[0]["error"], "a 401 is recorded as an error row"
    assert "401" in rows[0]["error"] or "Authentication" in rows[0]["error"]
    everything = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert secret.encode() not in everything
