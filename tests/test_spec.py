"""Sample identity: the cache key covers everything that can change an output."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hivemind.inputs.samples import Message, SampleRequest, sample_seed
from hivemind.inputs.spec import Condition, Deployment, Query, SamplingParams, StudySpec
from hivemind.sampling.requests import plan_requests


def _request(**changes: object) -> SampleRequest:
    base = dict(
        study="s",
        query_id="q1",
        deployment="d",
        condition="default",
        sample_index=0,
        seed=1,
        messages=(Message(role="user", content="Write a metaphor about time."),),
        params=SamplingParams(temperature=1.0, top_p=0.9, max_tokens=64),
        deployment_identity={"provider": "mock", "model": "m", "api_base": None, "options": {}},
    )
    base.update(changes)
    return SampleRequest(**base)


def test_equal_requests_share_a_key() -> None:
    assert _request().cache_key == _request().cache_key


@pytest.mark.parametrize(
    "change",
    [
        {"sample_index": 1},
        {"seed": 2},
        {"messages": (Message(role="user", content="Write a metaphor about space."),)},
        {"params": SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64)},
        {"params": SamplingParams(temperature=1.0, top_p=0.95, max_tokens=64)},
        {"params": SamplingParams(temperature=1.0, top_p=0.9, max_tokens=65)},
        {"params": SamplingParams(temperature=1.0, top_p=0.9, max_tokens=64, min_p=0.1)},
        {"params": SamplingParams(temperature=1.0, top_p=0.9, max_tokens=64, stop=["\n"])},
        {"deployment_identity": {"provider": "mock", "model": "other", "api_base": None, "options": {}}},
    ],
)
def test_every_output_relevant_field_changes_the_key(change: dict[str, object]) -> None:
    assert _request(**change).cache_key != _request().cache_key


def test_planned_samples_have_distinct_keys_and_seeds() -> None:
    spec = StudySpec(
        name="s",
        query_set="open-ended-v1",
        deployments=["a", "b"],
        samples=16,
        conditions=[Condition(name="t1"), Condition(name="t2", system_prompt="Be odd.")],
    )
    queries = [Query(id=f"q{i}", text=f"question {i}") for i in range(3)]
    deployments = [Deployment(name=n, provider="mock", model="m") for n in ("a", "b")]
    requests = plan_requests(spec, queries, deployments)
    assert len(requests) == 16 * 3 * 2 * 2
    assert len({r.cache_key for r in requests}) == len(requests)
    assert len({r.seed for r in requests}) == len(requests)
    with_system = [r for r in requests if r.condition == "t2"]
    assert all(r.messages[0].role == "system" for r in with_system)


def test_seed_is_reproducible() -> None:
    assert sample_seed(0, "q", "d", "c", 3) == sample_seed(0, "q", "d", "c", 3)
    assert sample_seed(0, "q", "d", "c", 3) != sample_seed(1, "q", "d", "c", 3)


def test_params_merge_later_wins_and_none_never_erases() -> None:
    merged = SamplingParams(temperature=0.5, max_tokens=10).merged(
        SamplingParams(temperature=1.0), None, SamplingParams(top_p=0.9)
    )
    assert merged.temperature == 1.0 and merged.max_tokens == 10 and merged.top_p == 0.9


def test_spec_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="sampels"):
        StudySpec.model_validate({"name": "s", "query_set": "x", "deployments": ["a"], "sampels": 3})
    with pytest.raises(ValidationError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValidationError, match="only once"):
        StudySpec(name="s", query_set="x", deployments=["a", "a"])


def test_secrets_are_refused_in_zoo_options() -> None:
    with pytest.raises(ValidationError, match="api_key_env"):
        Deployment(name="d", provider="litellm", model="m", options={"api_key": "sk-123"})
