"""The sampler against the mock provider and a real SQLite store: retries, errors, budget, resume."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hivemind.inputs.spec import Deployment, Query, StudySpec
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import plan_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store, StoreError
from hivemind.study import StudyError, run_study
from tests.conftest import mock_deployment


def _spec(zoo: Path, deployments: list[str], **fields: Any) -> StudySpec:
    fields.setdefault("samples", 4)
    fields.setdefault("max_queries", 5)
    return StudySpec(name="study", query_set="open-ended-v1", deployments=deployments, zoo=str(zoo), **fields)


def _rows(store_dir: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store_dir / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples").fetchall()


def test_one_row_per_sample_and_samples_do_not_collapse(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("a", diversity=8), mock_deployment("b", diversity=8))
    run = run_study(_spec(zoo, ["a", "b"], samples=6), tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 5 * 2 * 6 == run.sampling.planned
    keys = {(r["query_id"], r["deployment"], r["condition"], r["sample_index"]) for r in rows}
    assert len(keys) == len(rows)
    per_query = {}
    for r in rows:
        per_query.setdefault((r["query_id"], r["deployment"]), set()).add(r["text"])
    assert all(len(texts) > 1 for texts in per_query.values()), "samples collapsed into one answer"
    assert run.samples_path.exists()


def test_transient_errors_are_retried_honouring_retry_after(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("flaky", fail_first=2, retry_after=0.2, error_status=429))
    run = run_study(_spec(zoo, ["flaky"], samples=1, max_queries=2), tmp_path / "s", progress=False)
    rows = _rows(tmp_path / "s")
    assert all(r["error"] is None and r["attempts"] == 3 for r in rows)
    assert all(r["latency_s"] >= 0.4 for r in rows), "Retry-After was not honoured"
    assert run.sampling.retries == 4


def test_a_failing_deployment_records_errors_and_spares_the_others(
    tmp_path: Path, write_zoo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = write_zoo(
        mock_deployment("down", fail_rate=1.0, error_status=500),
        mock_deployment("up"),
        mock_deployment("bad-request", fail_rate=1.0, error_status=400),
    )
    spec = _spec(zoo, ["down", "up", "bad-request"], samples=2, max_queries=3, max_attempts=3)
    monkeypatch.setattr(Sampler, "backoff", lambda self, provider, exc, attempt: 0.0)
    run = run_study(spec, tmp_path / "s", progress=False)
    rows = _rows(tmp_path / "s")
    by = {name: [r for r in rows if r["deployment"] == name] for name in ("down", "up", "bad-request")}
    assert all(r["error"] and "500" in r["error"] and r["attempts"] == 3 for r in by["down"])
    assert all(r["error"] and r["attempts"] == 1 for r in by["bad-request"]), "a 400 is not retried"
    assert all(r["error"] is None for r in by["up"]) and len(by["up"]) == 6
    assert run.sampling.failed["down"] == 6


def test_rerun_retries_error_rows_and_keeps_successes(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    flaky = write_zoo(mock_deployment("m", fail_rate=0.5, error_status=400))
    run_study(_spec(flaky, ["m"]), tmp_path / "s", progress=False)
    first = {(r["query_id"], r["sample_index"]): r for r in _rows(tmp_path / "s")}
    failed = {k for k, r in first.items() if r["error"]}
    assert failed and len(failed) < len(first)
    healed = write_zoo(mock_deployment("m"))  # same identity: scripted failures are runtime options
    again = run_study(_spec(healed, ["m"]), tmp_path / "s", progress=False)
    assert again.sampling.sampled == len(failed) and again.sampling.skipped == len(first) - len(failed)
    rows = {(r["query_id"], r["sample_index"]): r for r in _rows(tmp_path / "s")}
    assert len(rows) == len(first) and all(r["error"] is None for r in rows.values())
    for key in first.keys() - failed:  # finished samples are never rewritten
        assert tuple(rows[key]) == tuple(first[key])


def test_changed_parameters_under_one_study_are_refused(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("m"))
    run_study(_spec(zoo, ["m"], params={"temperature": 1.0}), tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="other parameters"):
        run_study(_spec(zoo, ["m"], params={"temperature": 0.5}), tmp_path / "s", progress=False)
    with Store(tmp_path / "s") as store:
        assert store.study_spec("study").params.temperature == 1.0, "a refused rerun changed the spec"
    more = run_study(_spec(zoo, ["m"], params={"temperature": 1.0}, samples=6), tmp_path / "s", progress=False)
    assert more.sampling.sampled == 5 * 2, "raising K samples only the new indices"


def test_a_narrowed_rerun_is_not_mixed_with_older_rows(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("m1"), mock_deployment("m2"), mock_deployment("m3"))
    run_study(_spec(zoo, ["m1", "m2"], samples=4), tmp_path / "s", progress=False)
    run_study(_spec(zoo, ["m3"], samples=2, max_queries=3), tmp_path / "s", progress=False)
    with Store(tmp_path / "s") as store:
        frame = store.samples_frame("study")
    assert set(frame["deployment"]) == {"m3"} and frame.height == 3 * 2
    assert len(_rows(tmp_path / "s")) == 5 * 2 * 4 + 6, "older samples stay in the journal"
    back = run_study(_spec(zoo, ["m1", "m2"], samples=4), tmp_path / "s", progress=False)
    assert back.sampling.sampled == 0, "widening again reuses what was sampled"


def test_budget_stops_sampling_cleanly(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("paid", cost_usd=0.01, max_concurrency=1))
    run = run_study(_spec(zoo, ["paid"], samples=10, budget_usd=0.05), tmp_path / "s", progress=False)
    rows = _rows(tmp_path / "s")
    assert run.sampling.stopped_by_budget
    assert len(rows) == 5 and all(r["error"] is None for r in rows)
    again = run_study(_spec(zoo, ["paid"], samples=10, budget_usd=0.05), tmp_path / "s", progress=False)
    assert again.sampling.sampled == 0, "the budget counts what earlier runs spent"


def test_per_deployment_concurrency_is_respected(tmp_path: Path) -> None:
    deployments = [
        Deployment(name="slow", provider="mock", model="m", max_concurrency=3, options={"latency_s": 0.02}),
        Deployment(name="wide", provider="mock", model="m", max_concurrency=20, options={"latency_s": 0.02}),
    ]
    spec = StudySpec(name="c", query_set="x", deployments=["slow", "wide"], samples=10)
    queries = [Query(id=f"q{i}", text=f"question {i}") for i in range(4)]
    providers = {d.name: create_provider(d) for d in deployments}
    with Store(tmp_path / "s") as store:
        store.register_study(spec, queries, deployments)
        asyncio.run(Sampler(store, providers, progress=False).run(plan_requests(spec, queries, deployments)))
    assert providers["slow"].max_in_flight == 3  # type: ignore[attr-defined]
    assert providers["wide"].max_in_flight == 20  # type: ignore[attr-defined]


def test_missing_key_stops_before_sampling_and_names_only_the_variable(
    tmp_path: Path, write_zoo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HIVEMIND_TEST_KEY", raising=False)
    zoo = write_zoo(
        mock_deployment("ok"),
        {"name": "hosted", "provider": "litellm", "model": "openai/gpt-4o-mini", "api_key_env": "HIVEMIND_TEST_KEY"},
    )
    with pytest.raises(StudyError, match="HIVEMIND_TEST_KEY"):
        run_study(_spec(zoo, ["ok", "hosted"]), tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "hivemind.sqlite").exists() or _rows(tmp_path / "s") == []


def test_unknown_deployment_and_provider_are_clear_errors(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    zoo = write_zoo(mock_deployment("a"), {"name": "b", "provider": "nope", "model": "m"})
    with pytest.raises(StudyError, match="unknown deployment 'zz'"):
        run_study(_spec(zoo, ["zz"]), tmp_path / "s", progress=False)
    with pytest.raises(StudyError, match="unknown provider 'nope'"):
        run_study(_spec(zoo, ["b"]), tmp_path / "s", progress=False)


def test_a_registered_third_party_provider_runs_like_a_builtin(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    from hivemind.inputs.samples import Completion, SampleRequest
    from hivemind.providers.base import Provider, register

    @register("shout")
    class Shout(Provider):
        async def generate(self, request: SampleRequest) -> Completion:
            return Completion(text=request.messages[-1].content.upper(), finish_reason="stop")

    zoo = write_zoo({"name": "loud", "provider": "shout", "model": "x"})
    run_study(_spec(zoo, ["loud"], samples=1, max_queries=2), tmp_path / "s", progress=False)
    assert all(r["text"].isupper() for r in _rows(tmp_path / "s"))
