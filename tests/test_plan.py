"""Lazy planning and chunked resume: the same requests as the straightforward eager plan, and a
resume that skips exactly the finished samples, on a real SQLite journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hivemind.inputs.samples import Completion, Message, SampleRequest, sample_seed
from hivemind.inputs.spec import Condition, Deployment, Query, SamplingParams, StudySpec
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import iter_requests, plan_size
from hivemind.sampling.sampler import PendingRequests, Sampler, check_resumable
from hivemind.store.journal import Store, StoreError

QUERIES = [
    Query(id="q-1", text="Write a metaphor about time."),
    Query(id='q"2', text="Écris un haïku sur la mer 🌊\n(court)"),
    Query(id="q3", text="Name a colour."),
]
DEPLOYMENTS = [
    Deployment(name="a", provider="mock", model="m", params=SamplingParams(top_p=0.8)),
    Deployment(name="b.2", provider="mock", model="other", options={"style": "varied"}),
]


def _spec(**fields: object) -> StudySpec:
    values: dict[str, object] = dict(
        name="plan",
        query_set="-",
        deployments=["a", "b.2"],
        samples=4,
        seed=11,
        params=SamplingParams(temperature=0.9, max_tokens=32),
        conditions=[
            Condition(name="plain"),
            Condition(name="odd", system_prompt='Be "odd" — très', params=SamplingParams(min_p=0.1)),
        ],
    )
    values.update(fields)
    return StudySpec.model_validate(values)


def eager_plan(spec: StudySpec, queries: list[Query], deployments: list[Deployment]) -> list[SampleRequest]:
    """The old eager plan, written out from the definitions, every request validated."""
    requests = []
    for index in range(spec.samples):
        for query in queries:
            for deployment in deployments:
                for condition in spec.effective_conditions():
                    messages = [Message(role="user", content=query.text)]
                    if condition.system_prompt:
                        messages.insert(0, Message(role="system", content=condition.system_prompt))
                    requests.append(
                        SampleRequest(
                            study=spec.name,
                            query_id=query.id,
                            deployment=deployment.name,
                            condition=condition.name,
                            sample_index=index,
                            seed=sample_seed(spec.seed, query.id, deployment.name, condition.name, index),
                            messages=tuple(messages),
                            params=deployment.params.merged(spec.params, condition.params),
                            deployment_identity=deployment.identity(),
                        )
                    )
    return requests


def _fields(request: SampleRequest) -> tuple[object, ...]:
    return (
        *request.row_key,
        request.seed,
        request.cache_key,
        request.messages,
        request.params.model_dump_json(),
        tuple(sorted(request.deployment_identity.items(), key=str)),
    )


def test_lazy_plan_yields_exactly_the_eager_plan() -> None:
    spec = _spec()
    eager = eager_plan(spec, QUERIES, DEPLOYMENTS)
    for deployment in DEPLOYMENTS:
        lazy = list(iter_requests(spec, QUERIES, deployment))
        expected = [r for r in eager if r.deployment == deployment.name]  # same order per deployment
        assert len(lazy) == plan_size(spec, QUERIES) == len(expected) == 4 * 3 * 2
        assert [_fields(r) for r in lazy] == [_fields(r) for r in expected]
        assert all(r == e and r.model_dump() == e.model_dump() for r, e in zip(lazy, expected))
    indices = [r.sample_index for r in iter_requests(spec, QUERIES, DEPLOYMENTS[0])]
    assert indices == sorted(indices), "sample index first, so a budget stop leaves even coverage"


def _record(store: Store, requests: list[SampleRequest], ok: bool) -> None:
    completion = Completion(text="done") if ok else None
    store.record_many((r, completion, None if ok else "HTTP 500", 0.1, 1) for r in requests)


def test_resume_skips_exactly_the_finished_samples(tmp_path: Path) -> None:
    spec = _spec()
    plan = {d.name: list(iter_requests(spec, QUERIES, d)) for d in DEPLOYMENTS}
    finished = plan["a"][::3] + plan["b.2"][5:9]
    failed = plan["a"][1::7]
    failed = [r for r in failed if r not in finished]
    with Store(tmp_path) as store:
        store.register_study(spec, QUERIES, DEPLOYMENTS)
        _record(store, finished, ok=True)
        _record(store, failed, ok=False)
        check_resumable(store, spec, QUERIES, DEPLOYMENTS)  # same parameters: accepted
        for deployment in DEPLOYMENTS:
            name, requests = deployment.name, plan[deployment.name]
            pending = PendingRequests(store, iter_requests(spec, QUERIES, deployment), chunk=5)
            todo = [r.row_key for r in pending]
            done = {r.row_key for r in finished if r.deployment == name}
            assert todo == [r.row_key for r in requests if r.row_key not in done]
            assert pending.skipped == len(done)
        assert {r.row_key for r in failed} <= {r.row_key for r in PendingRequests(store, plan["a"])}


def test_resume_refuses_rows_sampled_with_other_parameters(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        _record(store, list(iter_requests(_spec(), QUERIES, DEPLOYMENTS[0])), ok=True)
        changed = _spec(params=SamplingParams(temperature=0.5, max_tokens=32))
        with pytest.raises(StoreError, match="other parameters"):
            check_resumable(store, changed, QUERIES, DEPLOYMENTS)
        # A change that only samples past the up-front check show is refused when reached.
        late = [r for r in iter_requests(_spec(seed=12), QUERIES, DEPLOYMENTS[1]) if r.sample_index == 3]
        _record(store, late, ok=True)
        with pytest.raises(StoreError, match="deployment b.2"):
            check_resumable(store, _spec(), QUERIES, DEPLOYMENTS)
        check_resumable(store, _spec(), QUERIES, DEPLOYMENTS, first=6)  # only index 0 looked up
        with pytest.raises(StoreError, match="deployment b.2"):
            list(PendingRequests(store, iter_requests(_spec(), QUERIES, DEPLOYMENTS[1])))


def test_every_counted_sample_is_committed(tmp_path: Path) -> None:
    spec = _spec(samples=25)
    deployments = [d.model_copy(update={"max_concurrency": 16, "options": {"latency_s": 0.001}}) for d in DEPLOYMENTS]
    providers = {d.name: create_provider(d) for d in deployments}
    with Store(tmp_path) as store:
        store.register_study(spec, QUERIES, deployments)
        report = asyncio.run(
            Sampler(store, providers, progress=False).run(
                {d.name: iter_requests(spec, QUERIES, d) for d in deployments},
                totals={d.name: plan_size(spec, QUERIES) for d in deployments},
            )
        )
        rows = store.progress(spec.name)
        assert report.planned == 2 * plan_size(spec, QUERIES) and report.skipped == 0
        assert {name: counts["ok"] for name, counts in rows.items()} == dict(report.succeeded)
        again = asyncio.run(
            Sampler(store, providers, progress=False).run(
                {d.name: iter_requests(spec, QUERIES, d) for d in deployments},
                totals={d.name: plan_size(spec, QUERIES) for d in deployments},
            )
        )
    assert again.sampled == 0 and again.skipped == report.sampled and again.planned == 0
