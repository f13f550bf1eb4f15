"""NoveltyBench's strategies as conditions: `mode: in-context` chains and `paraphrase: each`.

Hosted models are stood in for by a loopback server speaking the OpenAI chat protocol that
records every request it gets, so what each turn of a chain carried is checked on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hivemind.inputs.queries import load_query_set, paraphrases
from hivemind.inputs.spec import Condition, Deployment, StudySpec
from hivemind.providers.registry import create_provider
from hivemind.sampling.in_context import NOT_ASKED
from hivemind.sampling.stage import StudyError, check_modes
from hivemind.study import run_study
from hivemind.testing.openai_server import free_port
from tests.conftest import REPO, require

FOLLOW_UP = "Another one, please."


@dataclass
class Recorder:
    """What the server does and saw: every body (with its reply), a delay, a failing turn."""

    delay_s: float = 0.0
    fail_turn: int | None = None
    """Requests carrying this many earlier answers get a 400 (not retried)."""
    seen: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def recording_server(recorder: Recorder) -> Iterator[str]:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers each request uniquely."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        turn = sum(m["role"] == "assistant" for m in body["messages"])
        with recorder.lock:
            number = len(recorder.seen)
            entry = {"body": body, "reply": None}
            recorder.seen.append(entry)
        if recorder.fail_turn is not None and turn == recorder.fail_turn:
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=400)
        await asyncio.sleep(recorder.delay_s)
        text = f"answer {number} to seed {body['seed']} after {turn} turns"
        entry["reply"] = text
        return JSONResponse(
            {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
            }
        )

    port = free_port()
    config = uvicorn.Config(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]),
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the recording server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _zoo(tmp_path: Path, api_base: str, names: list[str]) -> Path:
    entries = [
        {"name": n, "provider": "openai", "model": f"stub-{n}", "api_base": api_base, "max_concurrency": 2}
        for n in names
    ]
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"deployments": entries}))
    return path


def _rows(db_path: Path) -> list[sqlite3.Row]:
    if not db_path.exists():
        return []
    try:
        with sqlite3.connect(db_path, timeout=5) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM samples ORDER BY deployment, query_id, condition, sample_index").fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return []


def _check_conversations(rows: list[sqlite3.Row], seen: list[dict[str, Any]], texts: dict[str, str]) -> None:
    """Every chain request carried the query, then exactly the journal's earlier answers of its
    chain in order, each followed by the follow-up turn; every other request only the query."""
    by_seed = {(f"stub-{r['deployment']}", r["seed"]): r for r in rows}
    chains: dict[tuple[str, str], dict[int, str]] = {}
    for r in rows:
        if r["condition"] == "chain":
            chains.setdefault((r["deployment"], r["query_id"]), {})[r["sample_index"]] = r["text"]
    for entry in seen:
        body = entry["body"]
        row = by_seed[(body["model"], body["seed"])]
        expected = [{"role": "user", "content": texts[row["query_id"]]}]
        if row["condition"] == "chain":
            earlier = chains[(row["deployment"], row["query_id"])]
            for index in range(row["sample_index"]):
                expected += [{"role": "assistant", "content": earlier[index]}, {"role": "user", "content": FOLLOW_UP}]
        assert body["messages"] == expected, (row["condition"], row["sample_index"])


def test_sigkill_mid_chain_then_rerun_continues_every_chain_from_the_journal(tmp_path: Path) -> None:
    queries, samples, names = 3, 5, ["ra", "rb"]
    total = len(names) * queries * samples * 2
    recorder = Recorder(delay_s=0.15)
    with recording_server(recorder) as api_base:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": "ic",
                    "query_set": "open-ended-v1",
                    "max_queries": queries,
                    "deployments": names,
                    "samples": samples,
                    "zoo": str(_zoo(tmp_path, api_base, names)),
                    "conditions": [
                        {"name": "default"},
                        {"name": "chain", "mode": "in-context", "follow_up": FOLLOW_UP},
                    ],
                }
            )
        )
        store = tmp_path / "store"
        db_path = store / "hivemind.sqlite"
        command = [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(store)]
        command += ["--no-analyze", "--no-progress"]
        first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(r["condition"] == "chain" for r in _rows(db_path)) < 6:
            assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        time.sleep(0.3)  # requests the killed process had sent are in `seen` by now
        asked_before = len(recorder.seen)
        before = _rows(db_path)
        per_chain = [
            sum(1 for r in before if r["condition"] == "chain" and (r["deployment"], r["query_id"]) == c)
            for c in {(r["deployment"], r["query_id"]) for r in before}
        ]
        assert any(0 < n < samples for n in per_chain), f"the kill must land mid-chain: {per_chain}"
        assert len(before) < total

        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
    rows = _rows(db_path)
    assert len(rows) == total and len({tuple(r)[:5] for r in rows}) == total
    assert all(r["error"] is None for r in rows)
    kept = {tuple(r)[:5]: r["created_at"] for r in rows}
    assert all(kept[tuple(r)[:5]] == r["created_at"] for r in before), "a committed sample was redone"
    # no committed turn was asked again: the rerun's requests are all for rows missing before it
    committed = {(f"stub-{r['deployment']}", r["seed"]) for r in before}
    again = [e["body"] for e in recorder.seen[asked_before:] if (e["body"]["model"], e["body"]["seed"]) in committed]
    assert not again, f"{len(again)} committed turns were asked again"
    # each row holds the reply to a request for it, and each request carried the committed earlier turns
    replies = {e["reply"]: (e["body"]["model"], e["body"]["seed"]) for e in recorder.seen if e["reply"]}
    assert all(replies[r["text"]] == (f"stub-{r['deployment']}", r["seed"]) for r in rows)
    texts = {q.id: q.text for q in load_query_set("open-ended-v1").queries[:queries]}
    _check_conversations(rows, recorder.seen, texts)
    # the cache key of a chain's sample covers its earlier turns: equal opening, distinct keys
    chain_keys = [r["cache_key"] for r in rows if r["condition"] == "chain"]
    assert len(set(chain_keys)) == len(chain_keys)


def test_a_failed_turn_ends_its_chain_and_the_next_run_asks_from_there(tmp_path: Path) -> None:
    recorder = Recorder(fail_turn=2)
    with recording_server(recorder) as api_base:
        spec = StudySpec(
            name="fail",
            query_set="open-ended-v1",
            max_queries=2,
            deployments=["ra"],
            samples=5,
            max_attempts=2,
            zoo=str(_zoo(tmp_path, api_base, ["ra"])),
            conditions=[Condition(name="chain", mode="in-context", follow_up=FOLLOW_UP)],
        )
        run = run_study(spec, tmp_path / "store", progress=False)
        rows = _rows(tmp_path / "store" / "hivemind.sqlite")
        assert len(rows) == 10 and run.sampling.failed == {"ra": 6} and run.sampling.succeeded == {"ra": 4}
        assert [r["error"] is None for r in rows] == [True, True, False, False, False] * 2
        assert all("scripted failure" in r["error"] for r in rows if r["sample_index"] == 2)
        assert all(r["error"] == NOT_ASKED.format(turn=2) for r in rows if r["sample_index"] > 2)
        turns = [sum(m["role"] == "assistant" for m in e["body"]["messages"]) for e in recorder.seen]
        assert sorted(turns) == [0, 0, 1, 1, 2, 2], "a 400 is not retried; nothing is asked after a failed turn"
        asked_before = len(recorder.seen)

        recorder.fail_turn = None
        again = run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store" / "hivemind.sqlite")
    assert again.sampling.succeeded == {"ra": 6} and again.sampling.skipped == 4
    assert len(rows) == 10 and all(r["error"] is None for r in rows)
    turns = [sum(m["role"] == "assistant" for m in e["body"]["messages"]) for e in recorder.seen[asked_before:]]
    assert sorted(turns) == [2, 2, 3, 3, 4, 4]
    texts = {q.id: q.text for q in load_query_set("open-ended-v1").queries[:2]}
    _check_conversations(rows, [e for e in recorder.seen if e["reply"]], texts)


def test_in_context_on_a_single_prompt_deployment_is_refused_in_one_line() -> None:
    spec = StudySpec(
        name="x",
        query_set="open-ended-v1",
        deployments=["base"],
        conditions=[Condition(name="chain", mode="in-context")],
    )
    base = Deployment(
        name="base", provider="llamacpp", model="m", options={"gguf_path": "/x.gguf", "mode": "completion"}
    )
    chat = Deployment(name="base", provider="llamacpp", model="m", options={"gguf_path": "/x.gguf", "mode": "chat"})
    with pytest.raises(StudyError, match="condition 'chain' is mode: in-context, but deployment 'base'") as caught:
        check_modes(spec, [base], {"base": create_provider(base)})
    assert len(str(caught.value).splitlines()) == 2  # the headline and the one problem
    check_modes(spec, [chat], {"base": create_provider(chat)})  # a chat template takes turns


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ({"name": "c", "mode": "chain"}, "conditions[0].mode: Input should be 'independent' or 'in-context'"),
        ({"name": "c", "paraphrase": "all"}, "paraphrase must be a rewording number"),
        ({"name": "c", "follow_up": "More?"}, "follow_up is the user turn of mode: in-context"),
        ({"name": "c", "mode": "in-context", "paraphrase": "each"}, "cannot be mode: in-context"),
    ],
)
def test_bad_conditions_get_one_clear_line(tmp_path: Path, condition: dict[str, Any], says: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "b", "query_set": "open-ended-v1", "deployments": ["mock-a"], "conditions": [condition]}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "run", str(spec), "--store", str(tmp_path / "s")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and "errors.pydantic.dev" not in done.stderr


def _paraphrase_queries(path: Path) -> Path:
    lines = [
        {"id": "q3", "prompt": "Name a colour.", "prompt_paraphrases": ["Say a colour.", "A colour?", "Pick a hue."]},
        {"id": "q2", "prompt": "Name a fruit.", "prompt_paraphrases": ["Say a fruit.", "A fruit?"]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_paraphrase_each_asks_sample_i_the_rewording_i_mod_n(tmp_path: Path) -> None:
    recorder = Recorder()
    queries = _paraphrase_queries(tmp_path / "q.jsonl")
    with recording_server(recorder) as api_base:
        spec = StudySpec(
            name="each",
            query_set=str(queries),
            deployments=["ra"],
            samples=7,
            zoo=str(_zoo(tmp_path, api_base, ["ra"])),
            conditions=[Condition(name="original"), Condition(name="each", paraphrase="each")],
        )
        run_study(spec, tmp_path / "store", progress=False)
    rows = _rows(tmp_path / "store" / "hivemind.sqlite")
    assert len(rows) == 2 * 2 * 7 and all(r["error"] is None for r in rows)
    by_seed = {r["seed"]: r for r in rows}
    loaded = {q.id: q for q in load_query_set(str(queries)).queries}
    sent: dict[tuple[str, str, int], str] = {}
    for entry in recorder.seen:
        row = by_seed[entry["body"]["seed"]]
        assert len(entry["body"]["messages"]) == 1
        sent[(row["condition"], row["query_id"], row["sample_index"])] = entry["body"]["messages"][0]["content"]
    assert len(sent) == len(rows)
    for (condition, query_id, index), text in sent.items():
        options = paraphrases(loaded[query_id])
        assert text == (options[index % len(options)] if condition == "each" else loaded[query_id].text)
    assert [sent[("each", "q2", i)] for i in range(4)] == ["Say a fruit.", "A fruit?", "Say a fruit.", "A fruit?"]


def test_paraphrase_each_needs_paraphrases(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    from tests.conftest import mock_deployment

    spec = StudySpec(
        name="none",
        query_set="open-ended-v1",
        deployments=["mock-a"],
        zoo=str(write_zoo(mock_deployment("mock-a"))),
        conditions=[Condition(name="each", paraphrase="each")],
    )
    with pytest.raises(StudyError, match=r"conditions\[each\]\.paraphrase: .* fewer than 1 paraphrases"):
        run_study(spec, tmp_path / "store", progress=False)
    assert not _rows(tmp_path / "store" / "hivemind.sqlite")


@pytest.mark.slow
def test_a_local_model_answers_in_context_and_resumes_its_chain(tmp_path: Path) -> None:
    require("llama_cpp", "llama-cpp-python (./setup.sh --local)")
    from hivemind.inputs.samples import Message, SampleRequest, sample_seed
    from hivemind.inputs.zoo import load_zoo

    name = "smollm2-135m-instruct"
    condition = Condition(name="chain", mode="in-context")
    spec = StudySpec(
        name="local-ic",
        query_set="open-ended-v1",
        deployments=[name],
        samples=3,
        max_queries=2,
        params={"temperature": 1.0, "top_p": 0.95, "max_tokens": 16},
        conditions=[condition],
    )
    store = tmp_path / "store"
    run = run_study(spec, store, progress=False)
    rows = _rows(store / "hivemind.sqlite")
    assert run.sampling.succeeded == {name: 6} and len(rows) == 6 and all(r["error"] is None for r in rows)
    deployment = load_zoo().get(name)
    texts = {q.id: q.text for q in load_query_set("open-ended-v1").queries[:2]}
    for query_id, text in texts.items():
        chain = [r for r in rows if r["query_id"] == query_id]
        assert [r["sample_index"] for r in chain] == [0, 1, 2] and all(r["text"].strip() for r in chain)
        for index, row in enumerate(chain):
            messages = [Message(role="user", content=text)]
            for earlier in chain[:index]:
                messages += [
                    Message(role="assistant", content=earlier["text"]),
                    Message(role="user", content=condition.follow_up),
                ]
            expected = SampleRequest(
                study=spec.name,
                query_id=query_id,
                deployment=name,
                condition="chain",
                sample_index=index,
                seed=sample_seed(spec.seed, query_id, name, "chain", index),
                messages=tuple(messages),
                params=deployment.params.merged(spec.params, condition.params),
                deployment_identity=deployment.identity(),
            )
            assert row["cache_key"] == expected.cache_key, "the key covers the earlier turns"
            if index:  # the model saw the earlier answer and the follow-up: its prompt grew by them
                grown = row["prompt_tokens"] - chain[index - 1]["prompt_tokens"]
                assert grown >= chain[index - 1]["completion_tokens"], (query_id, index, grown)
    # a lost last turn is asked again from the journal's conversation, and only it
    lost = rows[2]
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        db.execute("DELETE FROM samples WHERE query_id = ? AND sample_index = 2", (lost["query_id"],))
    again = run_study(spec, store, progress=False)
    assert again.sampling.succeeded == {name: 1} and again.sampling.skipped == 5
    after = {(r["query_id"], r["sample_index"]): r for r in _rows(store / "hivemind.sqlite")}
    assert all(
        after[(r["query_id"], r["sample_index"])]["created_at"] == r["created_at"] for r in rows if r is not lost
    )
    redone = after[(lost["query_id"], 2)]
    assert redone["cache_key"] == lost["cache_key"] and redone["prompt_tokens"] == lost["prompt_tokens"]
