"""The requests of a study: every (query, deployment, condition, sample) as a `SampleRequest`,
with its prompt and its cache key, in a stable order (the sampler, the plan and the store's
resume check all read this one stream)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping

from hivemind.inputs.queries import paraphrases, prompt_text
from hivemind.inputs.samples import Completion, Message, SampleRequest
from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec


def iter_requests(
    spec: StudySpec,
    queries: list[Query],
    deployment: Deployment,
    dropped: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
) -> Iterator[SampleRequest]:
    """One deployment's samples, generated lazily, sample index first.

    Index-first order means a budget stop (or an interruption) leaves every query with the same
    number of samples, give or take one. Nothing is held but the request being built, so a
    10M-sample study starts at once and costs no memory to plan. The messages, merged
    parameters and identity are built once and shared by every request that uses them, and the
    seed and cache key are hashed from pre-serialised parts (see `_KeyParts`). `dropped` names,
    per (deployment, condition), the parameters its requests leave out (`study.check_params`).
    """
    identity = deployment.identity()
    parts = _KeyParts(spec.seed, deployment.name, identity)
    per_condition = []
    for condition in spec.effective_conditions():
        if condition.mode == "in-context":  # asked as chains (`hivemind.sampling.in_context`)
            continue
        system = (Message(role="system", content=condition.system_prompt),) if condition.system_prompt else ()
        params = deployment.params.merged(spec.params, condition.params)
        not_sent = (dropped or {}).get((deployment.name, condition.name), ())
        per_condition.append(
            (
                condition.name,
                condition.paraphrase,
                system,
                params,
                parts.condition(condition.name, system, params),
                not_sent,
            )
        )
    for index in range(spec.samples):
        for query in queries:  # built per use, not held for all queries: a query set can be huge
            users: dict[int | None, tuple[Message, tuple[str, str]]] = {}
            for condition_name, paraphrase, system, params, condition_part, not_sent in per_condition:
                number = index % len(paraphrases(query)) + 1 if paraphrase == "each" else paraphrase
                if number not in users:  # the query's text, or the rewording a condition asks for
                    text = prompt_text(query, number)
                    users[number] = (
                        Message.model_construct(role="user", content=text),
                        parts.query(query.id, text),
                    )
                user, query_part = users[number]
                seed, cache_key = parts.seed_and_key(query_part, condition_part, index)
                yield _request(
                    {
                        "study": spec.name,
                        "query_id": query.id,
                        "deployment": deployment.name,
                        "condition": condition_name,
                        "sample_index": index,
                        "seed": seed,
                        "messages": (*system, user),
                        "params": params,
                        "deployment_identity": identity,
                        "dropped_params": not_sent,
                        "cache_key": cache_key,  # fills the cached_property
                    }
                )


_REQUEST_FIELDS = frozenset(SampleRequest.model_fields)


def _request(values: dict[str, object]) -> SampleRequest:
    """A `SampleRequest` from fields that all come from validated models, without validating
    them again: what `model_construct` does, minus its per-field default handling (the
    sampler builds one per sample, thousands a second)."""
    request = SampleRequest.__new__(SampleRequest)
    object.__setattr__(request, "__dict__", values)
    object.__setattr__(request, "__pydantic_fields_set__", set(_REQUEST_FIELDS))
    object.__setattr__(request, "__pydantic_extra__", None)
    object.__setattr__(request, "__pydantic_private__", None)
    return request


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class _KeyParts:
    """`sample_seed` and `SampleRequest.cache_key` from pre-serialised parts, byte for byte.

    Both hash the canonical JSON of a few fields; only the sample index (and the seed) change
    from one sample of a (query, condition) to the next, so the rest is serialised once.
    tests/test_plan.py checks the results against the two definitions.
    """

    def __init__(self, base_seed: int, deployment: str, identity: dict[str, object]) -> None:
        self.seed_head = f"[{_json(base_seed)},"
        self.deployment = _json(deployment)
        self.key_head = '{"deployment":' + _json(identity) + ',"messages":['

    def condition(self, name: str, system: tuple[Message, ...], params: SamplingParams) -> tuple[str, str, str]:
        return (
            _json(name),
            "".join(_json(m.model_dump()) + "," for m in system),
            '],"params":' + _json(params.key_data()) + ',"sample_index":',
        )

    def query(self, query_id: str, text: str) -> tuple[str, str]:
        return _json(query_id), '{"content":' + _json(text) + ',"role":"user"}'

    def seed_and_key(self, query: tuple[str, str], condition: tuple[str, str, str], index: int) -> tuple[int, str]:
        query_id, user = query
        name, system, params = condition
        seed_text = f"{self.seed_head}{query_id},{self.deployment},{name},{index}]"
        seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:4], "big") & 0x7FFFFFFF
        key_text = f'{self.key_head}{system}{user}{params}{index},"seed":{seed}}}'
        return seed, hashlib.sha256(key_text.encode()).hexdigest()


def plan_size(spec: StudySpec, queries: list[Query]) -> int:
    """How many requests `iter_requests` yields for one deployment."""
    return spec.samples * len(queries) * len(spec.effective_conditions())


def plan_requests(spec: StudySpec, queries: list[Query], deployments: list[Deployment]) -> list[SampleRequest]:
    """Every sample of a (small) study as a list: each deployment's requests in `iter_requests` order."""
    return [request for deployment in deployments for request in iter_requests(spec, queries, deployment)]


Outcome = tuple[SampleRequest, Completion | None, str | None, float, int]
"""A request's final outcome: (request, completion, error, latency_s, attempts)."""
