"""Hosted models without silently wrong conditions: litellm against a real loopback OpenAI server.

A parameter the model would ignore or reject stops the study before any request, naming
deployment, condition and parameter; a condition that allows dropping it samples without it and
every row says so. Importing litellm through hivemind reaches for no network.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hivemind.inputs.spec import Condition, Deployment, Query, StudySpec
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import plan_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store, dropped_params
from hivemind.study import StudyError, run_study
from hivemind.testing.openai_server import serve
from tests.conftest import REPO, mock_deployment


def _remote(api_base: str, model: str = "openai/stub") -> dict[str, Any]:
    return {"name": "remote", "provider": "litellm", "model": model, "api_base": api_base, "max_concurrency": 4}


def _spec(zoo: Path, conditions: list[dict[str, Any]], deployments: tuple[str, ...] = ("remote",)) -> StudySpec:
    return StudySpec(
        name="s",
        query_set="open-ended-v1",
        deployments=list(deployments),
        samples=2,
        max_queries=2,
        zoo=str(zoo),
        params={"max_tokens": 16},
        conditions=conditions,
    )


def _rows(store: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples ORDER BY condition, query_id, sample_index").fetchall()


@pytest.mark.parametrize(
    "model,params,refused",
    [
        ("openai/stub", {"min_p": 0.1}, "min_p=0.1"),  # OpenAI's API has no min_p
        ("openai/stub", {"top_k": 20}, "top_k=20"),
        ("anthropic/claude-3-5-haiku-latest", {"presence_penalty": 0.5}, "presence_penalty=0.5"),
        ("openai/gpt-5", {"temperature": 0.5}, "temperature=0.5"),  # refused by value: only 1 is taken
    ],
)
def test_a_parameter_the_model_would_not_honour_stops_the_study_before_any_request(
    model: str, params: dict[str, Any], refused: str, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    with serve() as (api_base, script):
        zoo = write_zoo(_remote(api_base, model), mock_deployment("local"))
        spec = _spec(zoo, [{"name": "plain"}, {"name": "bold", "params": params}], ("local", "remote"))
        with pytest.raises(StudyError) as caught:
            run_study(spec, tmp_path / "store", progress=False)
    message = str(caught.value)
    assert f"deployment 'remote', condition 'bold': parameter {refused}" in message, message
    assert "condition 'plain'" not in message and "'local'" not in message
    assert "allow_dropped_params" in message
    assert script.served == 0, "nothing may be sent before the check"
    assert not (tmp_path / "store" / "hivemind.sqlite").exists() or _rows(tmp_path / "store") == []


@pytest.mark.parametrize("allow", [["min_p", "top_k"], True])
def test_an_allowed_drop_is_never_sent_and_recorded_with_each_row(
    allow: list[str] | bool, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    with serve() as (api_base, script):
        zoo = write_zoo(_remote(api_base))
        spec = _spec(
            zoo,
            [
                {"name": "plain", "params": {"temperature": 0.7}},
                {
                    "name": "narrow",
                    "params": {"temperature": 0.7, "min_p": 0.1, "top_k": 20},
                    "allow_dropped_params": allow,
                },
            ],
        )
        run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 8 and all(r["error"] is None for r in rows)
    assert len(script.bodies) == 8
    assert all("min_p" not in body and "top_k" not in body for body in script.bodies)
    assert all(body["temperature"] == 0.7 and body["max_tokens"] == 16 for body in script.bodies)
    narrow = [r for r in rows if r["condition"] == "narrow"]
    assert [json.loads(r["dropped_params"]) for r in narrow] == [["min_p", "top_k"]] * 4
    assert all(json.loads(r["params_json"])["min_p"] == 0.1 for r in narrow), "what was asked stays recorded"
    assert all(r["dropped_params"] is None for r in rows if r["condition"] == "plain")
    with Store(tmp_path / "store") as store:
        summary = dropped_params(store.samples_frame("s"))
    assert summary == [{"deployment": "remote", "condition": "narrow", "params": ["min_p", "top_k"], "rows": 4}]


def test_the_report_names_the_dropped_parameters() -> None:
    from hivemind.report import render_report

    dropped = [{"deployment": "gpt", "condition": "narrow", "params": ["min_p"], "rows": 40}]
    page = render_report({"study": "s", "dropped_params": dropped}, {})
    assert "Parameters not sent" in page and "gpt / narrow: min_p (40 rows)" in page
    assert "Parameters not sent" not in render_report({"study": "s", "dropped_params": []}, {})


def test_a_provider_never_sends_what_it_would_not_honour_even_without_the_studys_check(tmp_path: Path) -> None:
    with serve() as (api_base, script):
        deployment = Deployment.model_validate(_remote(api_base))
        spec = StudySpec(name="s", query_set="x", deployments=["remote"], samples=2, params={"top_k": 5})
        queries = [Query(id="q", text="Say something.")]
        with Store(tmp_path / "store") as store:
            store.register_study(spec, queries, [deployment])
            provider = create_provider(deployment)
            asyncio.run(
                Sampler(store, {"remote": provider}, progress=False).run(plan_requests(spec, queries, [deployment]))
            )
    rows = _rows(tmp_path / "store")
    assert script.served == 0
    assert len(rows) == 2 and all("does not honour top_k" in r["error"] for r in rows)
    assert all(r["attempts"] == 1 for r in rows), "a refusal is not retried"


def test_other_providers_take_every_parameter(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    with serve() as (api_base, script):
        zoo = write_zoo(
            {"name": "remote", "provider": "openai", "model": "stub", "api_base": api_base}, mock_deployment("local")
        )
        spec = _spec(zoo, [{"name": "narrow", "params": {"min_p": 0.1, "top_k": 20}}], ("remote", "local"))
        run_study(spec, tmp_path / "store", progress=False)
    assert all(r["error"] is None and r["dropped_params"] is None for r in _rows(tmp_path / "store"))
    assert all(body["min_p"] == 0.1 and body["top_k"] == 20 for body in script.bodies)


def test_allow_dropped_params_names_only_known_parameters() -> None:
    with pytest.raises(ValidationError, match=r"allow_dropped_params: unknown parameter\(s\) \['min-p'\]"):
        Condition(name="c", allow_dropped_params=["min-p"])
    assert Condition(name="c", allow_dropped_params=True).allows_dropping("top_k")
    assert not Condition(name="c", allow_dropped_params=["min_p"]).allows_dropping("top_k")


NETWORK_PROBE = """
import socket, sys, time
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[:1])
    raise OSError("network disabled by the test")
socket.getaddrinfo = refuse
socket.socket.connect = refuse
if sys.argv[1] == "hivemind":
    from hivemind.providers.litellm import _import_litellm
    _import_litellm()
else:
    import litellm
time.sleep(1)  # litellm retries its fetch in a background thread
print("network attempts:", len(attempts))
"""


@pytest.mark.parametrize("importer", ["hivemind", "plain"])
def test_loading_litellm_through_hivemind_reaches_for_no_network(importer: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    result = subprocess.run(
        [sys.executable, "-c", NETWORK_PROBE, importer], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    if importer == "hivemind":
        assert "network attempts: 0" in result.stdout, result.stdout + result.stderr
        assert "cost map" not in result.stderr
    else:  # the control: a plain import does try, so the probe can see it
        assert "network attempts: 0" not in result.stdout and "cost map" in result.stderr


def test_a_store_from_before_the_column_opens_with_its_rows_intact(tmp_path: Path) -> None:
    from hivemind.store.journal import MIGRATIONS

    tmp_path.joinpath("old").mkdir()
    db = sqlite3.connect(tmp_path / "old" / "hivemind.sqlite")
    db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO samples VALUES ('s','q','d','c',0,1,'k','{}','kept',NULL,'stop',1,1,0.0,0.1,1,'m',1.0)")
    db.commit()
    db.close()
    with Store(tmp_path / "old"):
        pass
    rows = _rows(tmp_path / "old")
    assert [(r["text"], r["dropped_params"]) for r in rows] == [("kept", None)]


def test_a_study_without_conditions_is_told_how_to_allow_a_drop(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    with serve() as (api_base, script):
        zoo = write_zoo(_remote(api_base))
        spec = StudySpec(
            name="s",
            query_set="open-ended-v1",
            deployments=["remote"],
            samples=2,
            max_queries=2,
            zoo=str(zoo),
            params={"min_p": 0.05},
        )
        with pytest.raises(
            StudyError,
            match=r"condition 'default': parameter min_p=0.05(.|\n)*"
            r"conditions: \[\{name: default, allow_dropped_params",
        ):
            run_study(spec, tmp_path / "store", progress=False)
    assert script.served == 0
    spec = spec.model_copy(update={"conditions": [Condition(name="default", allow_dropped_params=["min_p"])]})
    with serve() as (api_base, script):
        zoo = write_zoo(_remote(api_base))
        run_study(spec.model_copy(update={"zoo": str(zoo)}), tmp_path / "store", progress=False)
    assert [json.loads(r["dropped_params"]) for r in _rows(tmp_path / "store")] == [["min_p"]] * 4


@pytest.mark.parametrize("provider", ["openai", "litellm"])
def test_a_novelty_condition_is_refused_or_dropped_by_servers_never_sent(
    provider: str, tmp_path: Path, write_zoo: Callable[..., Path]
) -> None:
    # Diversity-guided decoding runs only in hivemind's own stepping engine (composites): a
    # server would ignore it, so the study says so before sampling, or records it as not sent.
    novelty = {"name": "guided", "params": {"novelty": {"weight": 2.0, "top_k": 5, "every": 4}}}
    with serve() as (api_base, script):
        remote = _remote(api_base) if provider == "litellm" else {**_remote(api_base, "stub"), "provider": "openai"}
        zoo = write_zoo(remote)
        with pytest.raises(StudyError) as refused:
            run_study(_spec(zoo, [novelty]), tmp_path / "refused", progress=False)
        assert "novelty" in str(refused.value) and "provider: composite" in str(refused.value)
        assert script.served == 0
        run_study(_spec(zoo, [{**novelty, "allow_dropped_params": ["novelty"]}]), tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store")
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    assert len(script.bodies) == 4 and all("novelty" not in body for body in script.bodies)
    assert [json.loads(r["dropped_params"]) for r in rows] == [["novelty"]] * 4
    assert all(json.loads(r["params_json"])["novelty"]["weight"] == 2.0 for r in rows)
