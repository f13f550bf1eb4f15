"""Batch sampling against loopback servers speaking OpenAI's Batch API and Anthropic's Message
Batches: whole studies (partial failures, expiry, 429 on create, a batch that takes many polls),
and `hivemind run` SIGKILLed at each point of a batch's life, then rerun: every row lands
exactly once and no request is ever submitted twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hivemind.store.journal import Store
from hivemind.testing.batch_server import USAGE, BatchScript, serve

QUERIES = [
    {"id": f"q{i}", "text": text}
    for i, text in enumerate(["Write a metaphor about time.", "Name a colour for Monday.", "Invent a word."])
]
MODELS = {"openai": ("openai", "gpt-4o-mini"), "anthropic": ("litellm", "anthropic/claude-haiku-4-5")}


def write_study(
    tmp_path: Path,
    base: str,
    protocol: str,
    *,
    samples: int = 4,
    attempts: int = 4,
    batch_size: int = 5,
    batch: bool = True,
) -> Path:
    provider, model = MODELS[protocol]
    api_base = f"{base}/v1" if protocol == "openai" else base
    deployment = {
        "name": "hosted",
        "provider": provider,
        "model": model,
        "api_base": api_base,
        "api_key_env": "BATCH_TEST_KEY",
        "batch": batch,
        "options": {"batch_poll_s": 0.02, "batch_size": batch_size},
    }
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"deployments": [deployment]}))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    spec = {
        "name": "b",
        "query_set": str(tmp_path / "queries.jsonl"),
        "zoo": str(tmp_path / "zoo.yaml"),
        "deployments": ["hosted"],
        "samples": samples,
        "max_attempts": attempts,
        "params": {"temperature": 1.0, "max_tokens": 64},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sample(spec: Path, store: Path) -> dict[str, object]:
    from hivemind.study import run_study

    os.environ["BATCH_TEST_KEY"] = "sk-batch"
    try:
        return run_study(spec, store, progress=False).summary()
    finally:
        del os.environ["BATCH_TEST_KEY"]


def rows(store: Path) -> list[dict[str, object]]:
    with Store(store) as db:
        return db.samples_frame("b").to_dicts()


def row_key(body: dict[str, object]) -> str:
    """A request's identity as the server sees it (its messages and seed)."""
    return json.dumps([body.get("messages"), body.get("seed"), body.get("system")], sort_keys=True)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_a_study_samples_through_batches_with_failures_retried_in_new_batches(tmp_path: Path, protocol: str) -> None:
    script = BatchScript(polls_to_finish=3, fail_once_every=3, create_429=1, required_key="sk-batch")
    with serve(script) as (base, script):
        summary = sample(write_study(tmp_path, base, protocol), tmp_path / "store")
    found = rows(tmp_path / "store")
    assert len(found) == 12 and all(r["error"] is None for r in found), [r["error"] for r in found if r["error"]]
    failed_once = len(script.seen)
    assert failed_once > 0, "the script failed some items"
    ids = script.submitted_custom_ids()
    assert len(ids) == len(set(ids)) == 12 + failed_once, "each failed item went into one new batch, once"
    first = [len(items) for items in script.items.values()][:3]
    assert sorted(first) == [2, 5, 5], "12 requests in batches of at most 5"
    assert Counter(r["attempts"] for r in found)[2] == failed_once
    assert summary["retries"] >= failed_once
    assert script.calls["create"] == len(script.batches) + 1, "one create met a 429 and was retried"
    assert all(r["text"].startswith("Time is a ") for r in found)
    assert all(r["prompt_tokens"] == USAGE["prompt_tokens"] for r in found)


def test_the_cost_is_the_batch_price_from_litellms_map(tmp_path: Path) -> None:
    import litellm

    with serve(BatchScript()) as (base, _):
        sample(write_study(tmp_path, base, "openai", samples=1), tmp_path / "store")
    prices = litellm.model_cost["gpt-4o-mini"]
    per_row = USAGE["prompt_tokens"] * prices["input_cost_per_token_batches"] + USAGE["completion_tokens"] * prices["output_cost_per_token_batches"]  # fmt: skip
    live = USAGE["prompt_tokens"] * prices["input_cost_per_token"] + USAGE["completion_tokens"] * prices["output_cost_per_token"]  # fmt: skip
    costs = [r["cost_usd"] for r in rows(tmp_path / "store")]
    assert costs == pytest.approx([per_row] * 3) and per_row == pytest.approx(live / 2)


def test_expired_items_are_retried_up_to_max_attempts_then_stay_error_rows(tmp_path: Path) -> None:
    with serve(BatchScript(expire=True)) as (base, script):
        sample(write_study(tmp_path, base, "openai", samples=1, attempts=3, batch_size=10), tmp_path / "store")
    found = rows(tmp_path / "store")
    assert len(found) == 3
    sizes = [len(items) for items in script.items.values()]
    assert sizes == [3, 2, 1], "each batch answers half; the rest goes into the next, for 3 attempts"
    failed = [r for r in found if r["error"]]
    assert len(failed) == 1 and "expired" in failed[0]["error"] and failed[0]["attempts"] == 3


def test_a_deployment_without_a_batch_api_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("deployments:\n  - {name: m, provider: mock, model: mock, batch: true}\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: b\nquery_set: open-ended-v1\nzoo: {zoo}\ndeployments: [m]\nsamples: 1\nmax_queries: 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s"), "--no-analyze"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "batch: true, but mock (mock) has no batch API" in out.stderr and "Traceback" not in out.stderr


POINTS = {
    "openai": ["upload", "create", "created", "poll", "download"],
    "anthropic": ["create", "created", "poll", "results"],
}


@pytest.mark.parametrize(("protocol", "point"), [(p, x) for p, points in POINTS.items() for x in points])
def test_a_run_killed_at_any_point_of_a_batch_resumes_it_and_submits_nothing_twice(
    tmp_path: Path, protocol: str, point: str
) -> None:
    script = BatchScript(polls_to_finish=2, hold={point})
    with serve(script) as (base, script):
        spec = write_study(tmp_path, base, protocol, samples=2, batch_size=4)
        command = [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s")]
        command += ["--no-analyze", "--no-progress"]
        env = {**os.environ, "BATCH_TEST_KEY": "sk-batch"}
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while point not in script.reached:
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, f"the run never reached {point}"
            time.sleep(0.02)
        time.sleep(0.1)  # whatever the client does next, it does while held here
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        script.hold.clear()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        found = rows(tmp_path / "s")
        assert len(found) == 6 and all(r["error"] is None for r in found), [r["error"] for r in found]
        with Store(tmp_path / "s") as db:
            left = db._rows("SELECT state FROM batches WHERE state != 'ingested'")
            journaled = {
                r["custom_id"]: (r["query_id"], r["sample_index"]) for r in db._rows("SELECT * FROM batch_items")
            }
        assert not left, [dict(r) for r in left]
        submitted = Counter(journaled[custom_id] for custom_id in script.submitted_custom_ids())
        assert len(submitted) == 6 and set(submitted.values()) == {1}, f"a request was submitted twice: {submitted}"
        if protocol == "openai":  # its bodies carry the sample's seed: the server's own view agrees
            assert len({row_key(body) for body in script.submitted_bodies()}) == 6


def test_batch_on_the_command_line_and_status_shows_what_a_killed_run_left_open(tmp_path: Path) -> None:
    """`--batch` batches a deployment the zoo samples live; `hivemind status` lists the open batch
    of a killed run; the rerun, without --batch, still collects it rather than asking live."""
    script = BatchScript(polls_to_finish=2, hold={"poll"})
    with serve(script) as (base, script):
        spec = write_study(tmp_path, base, "openai", samples=1, batch=False)
        command = [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s")]
        command += ["--no-analyze", "--no-progress"]
        env = {**os.environ, "BATCH_TEST_KEY": "sk-batch"}
        child = subprocess.Popen([*command, "--batch"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while "poll" not in script.reached:
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1].decode()[-2000:]
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        status = subprocess.run(
            [sys.executable, "-m", "hivemind.cli", "status", "--store", str(tmp_path / "s")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "COLUMNS": "200"},
        )
        assert status.returncode == 0, status.stderr
        assert "openai batch_1" in status.stdout and "submitted" in status.stdout
        script.hold.clear()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(script.batches) == 1 and len(script.submitted_custom_ids()) == 3
    found = rows(tmp_path / "s")
    assert len(found) == 3 and all(r["error"] is None for r in found)
    after = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "status", "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "open batch" not in after.stdout


def test_an_outage_while_polling_stops_the_run_with_one_line_and_a_rerun_collects_the_batch(tmp_path: Path) -> None:
    with serve(BatchScript(down={"poll"})) as (base, script):
        spec = write_study(tmp_path, base, "openai", samples=1, attempts=2)
        command = [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s")]
        command += ["--no-analyze", "--no-progress"]
        env = {**os.environ, "BATCH_TEST_KEY": "sk-batch"}
        stopped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
        assert "HTTP 503" in stopped.stderr and "rerun the study to collect it" in stopped.stderr
        script.down.clear()
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(script.batches) == 1 and len(script.submitted_custom_ids()) == 3
    assert all(r["error"] is None for r in rows(tmp_path / "s"))
