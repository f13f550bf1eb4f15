"""Equivalence judges: any deployment decides which responses say the same thing; NoveltyBench's
greedy partition, every judgment cached in the store, the calls bounded and planned.

A loopback OpenAI-compatible server plays the judge with a scripted rule (two texts are the same
when they name the same colour): the partition and the number of calls are checked exactly
against what the rule gives, computed here without hivemind's code. A real local model judges a
few of NoveltyBench's GPT-4o answers; its agreement with NoveltyBench's partition is printed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from hivemind.analysis.judge import JudgmentCache, parse_verdict
from hivemind.inputs.judge_entry import DEFAULT_PROMPT, JudgeError, call_bound
from hivemind.inputs.queries import load_query_set
from hivemind.inputs.spec import StudySpec
from hivemind.pipeline import run_pipeline
from hivemind.sampling.plan import plan_study
from hivemind.testing.openai_server import Script, serve
from tests.conftest import REPO, require, require_that

FAST = {"n_boot": 20, "n_perm": 20, "draws": 2, "lexical": False}
PROMPT = "Query: {query}\nA=<<{a}>>\nB=<<{b}>>\nSame? yes or no."
COLOURS = [  # per query, the colour each of the 6 answers names (the scripted judge's rule)
    ["red", "blue", "red", "green", "blue", "red"],
    ["amber", "amber", "amber", "teal", "amber", "teal"],
    ["pink", "gold", "cyan", "gold", "pink", "pink"],
]


def _texts(q: int) -> list[str]:
    texts = [f"The colour is {c}, answer {q}.{j}." for j, c in enumerate(COLOURS[q])]
    if q == 2:
        texts[4] = texts[0]  # two identical answers: equivalent without a call
    return texts


def _colour(text: str) -> str:
    found = re.search(r"The colour is (\w+),", text)
    assert found, text
    return found.group(1)


def _verdict(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    found = re.search(r"A=<<(.*)>>\nB=<<(.*)>>", content, re.DOTALL)
    assert found, content
    assert body.get("temperature") == 0.0
    return "Yes." if _colour(found.group(1)) == _colour(found.group(2)) else "No, they differ."


def _expected(texts: list[str]) -> tuple[list[int], int]:
    """The greedy partition and its calls under the colour rule, worked out directly: an item
    is asked against the representatives in order until its colour's; identical texts are free."""
    reps: list[str] = []  # one text per class, in order of first appearance
    labels, calls = [], 0
    for text in texts:
        colours = [_colour(r) for r in reps]
        if _colour(text) in colours:
            c = colours.index(_colour(text))
            calls += c + (reps[c] != text)  # the classes before it said no; its own yes (unless identical)
            labels.append(c)
        else:
            calls += len(reps)
            reps.append(text)
            labels.append(len(reps) - 1)
    return labels, calls


def _study(tmp_path: Path, api_base: str, **classes: Any) -> StudySpec:
    queries = load_query_set("noveltybench-curated").queries[:3]
    lines = []
    for q, query in enumerate(queries):
        colours = COLOURS[q]
        lines.append(
            {
                "id": query.id,
                "prompt": query.text,
                "model": "gen",
                "generations": _texts(q),
                "partition": [sorted(set(colours), key=colours.index).index(c) for c in colours],
            }
        )
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    zoo = tmp_path / "zoo.yaml"
    judge = {"name": "judge", "provider": "openai", "model": "stub", "api_base": api_base, "max_concurrency": 3}
    zoo.write_text(yaml.safe_dump({"deployments": [judge]}))
    return StudySpec(
        name="judged",
        query_set="noveltybench-curated",
        zoo=str(zoo),
        samples=6,
        responses=[{"file": str(path), "deployment": "gen", "condition": "default"}],
        analysis={"classes": {"judge": "judge", "prompt": PROMPT, **classes}},
    )


def test_a_scripted_judge_partitions_greedily_and_asks_nothing_twice(tmp_path: Path) -> None:
    with serve(Script(verdict=_verdict)) as (api_base, script):
        spec = _study(tmp_path, api_base)
        store = tmp_path / "store"
        started = time.perf_counter()
        run = run_pipeline(spec, store, steps=("sample", "analyze"), progress=False, **FAST)
        assert run.analysis is not None
        expected = [_expected(_texts(q)) for q in range(3)]
        calls = sum(n for _, n in expected)
        assert script.served == calls  # exactly the greedy's calls, each once
        labels = run.analysis.judge_labels.sort("query_id", "sample_index")
        queries = [q.id for q in load_query_set("noveltybench-curated").queries[:3]]
        for q, query_id in enumerate(queries):
            got = labels.filter(labels["query_id"] == query_id)["judge_class"].to_list()
            assert got == expected[q][0], (query_id, got)
        table = run.analysis.judge_classes.sort("query_id")
        assert table["ari_judge_external"].to_list() == [1.0, 1.0, 1.0]  # the file's partition: the same rule
        entry = run.analysis.summary["judge_classes"]
        assert entry["calls"]["sent"] == calls and entry["calls"]["identical"] == 1
        assert entry["calls"]["bound"] == 3 * call_bound(6) and calls <= entry["calls"]["bound"]
        with JudgmentCache(store / "hivemind.sqlite") as cache:
            assert cache.count(entry["judge_identity"]) == calls
        print(f"scripted judge: {calls} calls, first analysis {time.perf_counter() - started:.1f} s")

        # a re-analysis asks nothing: every judgment comes from the store
        again = run_pipeline("judged", store, steps=("analyze", "report"), progress=False, **FAST)
        assert script.served == calls
        assert again.analysis is not None
        assert again.analysis.summary["judge_classes"]["calls"]["sent"] == 0
        assert again.analysis.judge_labels.equals(run.analysis.judge_labels)
        assert again.report_path is not None
        page = again.report_path.read_text()
        assert "Judge equivalence classes" in page and "ari_judge_cosine" in page

        # `hivemind plan` shows the bound (the stub model has no price)
        planned = plan_study(spec, store)
        assert planned["judge"]["calls_max"] == 3 * call_bound(6) and planned["judge"]["cost_usd_max"] is None


def test_an_unknown_judge_is_one_clear_line(tmp_path: Path) -> None:
    spec = _study(tmp_path, "http://127.0.0.1:9/v1")
    data = spec.model_dump()
    data["analysis"]["classes"] = {"judge": "nope"}
    spec = StudySpec.model_validate(data)
    with pytest.raises(JudgeError) as raised:
        run_pipeline(spec, tmp_path / "store", steps=("sample", "analyze"), progress=False, **FAST)
    message = str(raised.value)
    assert message.startswith("analysis.classes.judge: unknown deployment 'nope'") and "\n" not in message


def test_judge_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="must contain"):
        StudySpec.model_validate(
            {
                "name": "s",
                "query_set": "open-ended-v1",
                "deployments": ["m"],
                "analysis": {"classes": {"judge": "j", "prompt": "{a} only"}},
            }
        )
    with pytest.raises(ValidationError, match="extra"):
        StudySpec.model_validate(
            {
                "name": "s",
                "query_set": "open-ended-v1",
                "deployments": ["m"],
                "analysis": {"classes": {"judge": "j", "temp": 1}},
            }
        )
    assert all(p in DEFAULT_PROMPT for p in ("{query}", "{a}", "{b}"))


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Yes.", True),
        ("no", False),
        ("NO - they differ", False),
        ("<think>no idea</think>Yes", True),
        ("maybe", None),
        ("Yesterday", None),
    ],
)
def test_verdicts_are_read_by_their_first_yes_or_no(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


LOCAL_JUDGE = "qwen2.5-coder-1.5b-instruct"  # the 0.5B answers "no" to almost any pair
NOVELTYBENCH_QUERIES = ["curated-93", "curated-67", "curated-59"]  # short answers, several classes each


@pytest.mark.slow
def test_a_local_model_judges_noveltybench_answers(tmp_path: Path) -> None:
    from hivemind.imports.external_classes import adjusted_rand_index
    from hivemind.inputs.zoo import load_zoo
    from hivemind.providers.gguf import resolve_gguf

    try:
        resolve_gguf(load_zoo().get(LOCAL_JUDGE).options, LOCAL_JUDGE)
        present = True
    except Exception:
        present = False
    require_that(present, f"the local GGUF model {LOCAL_JUDGE} is missing")
    source = REPO / "hivemind" / "data" / "noveltybench-gpt4o" / "gpt-4o.jsonl"
    records = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    picked = [r for r in records if r["id"] in NOVELTYBENCH_QUERIES]
    path = tmp_path / "gpt-4o.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in picked) + "\n")
    k = 5
    spec = StudySpec(
        name="local-judge",
        query_set="noveltybench-curated",
        samples=k,
        responses=[{"file": str(path), "deployment": "gpt-4o", "condition": "resampling"}],
        analysis={"classes": {"judge": LOCAL_JUDGE}},
    )
    started = time.perf_counter()
    run = run_pipeline(spec, tmp_path / "store", steps=("sample", "analyze"), progress=False, **FAST)
    elapsed = time.perf_counter() - started
    assert run.analysis is not None
    entry = run.analysis.summary["judge_classes"]
    bound = len(picked) * call_bound(k)
    assert 0 <= entry["calls"]["sent"] <= entry["calls"]["bound"] == bound
    labels = run.analysis.judge_labels
    assert labels.height == len(picked) * k  # every response has a class
    aris = []
    for record in picked:
        part = labels.filter(labels["query_id"] == record["id"]).sort("sample_index")
        ours, theirs = part["judge_class"].to_list(), record["partition"][:k]
        aris.append(adjusted_rand_index(ours, theirs))
        print(f"{record['id']}: judge {ours} NoveltyBench {theirs} ARI {aris[-1]:.3f}")
    print(
        f"local judge {LOCAL_JUDGE} on {len(picked)} NoveltyBench queries x {k}: {entry['calls']['sent']} calls "
        f"(bound {bound}), mean ARI against NoveltyBench {sum(aris) / len(aris):.3f}, {elapsed:.0f} s"
    )
    table = run.analysis.judge_classes
    assert table["ari_judge_external"].is_not_null().all()  # beside NoveltyBench's partition


def test_plan_prices_a_hosted_judge_from_litellms_map(tmp_path: Path) -> None:
    require("litellm")
    spec = _study(tmp_path, "http://127.0.0.1:9/v1")
    zoo = tmp_path / "priced.yaml"
    zoo.write_text(yaml.safe_dump({"deployments": [{"name": "judge", "provider": "litellm", "model": "gpt-4o-mini"}]}))
    data = spec.model_dump()
    data.update(zoo=str(zoo), deployments=["judge"], samples=4, max_queries=2, params={"max_tokens": 50})
    data["analysis"]["classes"] = {"judge": "judge"}
    planned = plan_study(StudySpec.model_validate(data), tmp_path / "no-store")
    judge = planned["judge"]
    assert judge["groups"] == 2 and judge["calls_max"] == 2 * call_bound(4)  # 2 queries x 1 deployment x 1 condition
    assert judge["cost_usd_max"] is not None and 0 < judge["cost_usd_max"] < 0.01
    assert not (tmp_path / "no-store").exists()  # a plan writes nothing


def test_retried_and_unparseable_verdicts_follow_the_stated_rules(tmp_path: Path) -> None:
    """Two 503s are retried (the sampler's rules) and not counted as judgments; a reply without
    yes or no counts as "not equivalent" and is cached like any verdict."""
    with serve(Script(verdict=lambda body: "I cannot tell.", fail_first=2, fail_status=503, retry_after="0")) as (
        api_base,
        script,
    ):
        spec = _study(tmp_path, api_base)
        store = tmp_path / "store"
        run = run_pipeline(spec, store, steps=("sample", "analyze"), progress=False, **FAST)
        assert run.analysis is not None
        calls = run.analysis.summary["judge_classes"]["calls"]
        # every answer its own class, but for query 2's two identical answers (no call)
        pairs = 3 * call_bound(6) - 5  # query 2: answer 4 is answer 0, so it is asked against class 0 only
        assert calls["sent"] == calls["unparseable"] == pairs and calls["retries"] == 2 and calls["failed"] == 0
        assert script.served == pairs + 2
        assert run.analysis.judge_classes.sort("query_id")["judge_classes"].to_list() == [6, 6, 5]
        again = run_pipeline("judged", store, steps=("analyze",), progress=False, **FAST)
        assert again.analysis is not None and again.analysis.summary["judge_classes"]["calls"]["sent"] == 0
        assert script.served == pairs + 2
