"""In-context regeneration (NoveltyBench): one conversation per (query, deployment, condition).

A condition with `mode: in-context` asks its K samples as one chain: sample i is asked after
samples 0..i-1, each answer given back as an assistant turn followed by the condition's
`follow_up` user turn. The turns of a chain run one after another, each committed to the journal
before the next is asked; chains of different queries and deployments run side by side (the
sampler's workers take a chain each). A rerun continues every chain from the journal: committed
turns are read back, never asked again, and the chain goes on from the first turn without a
successful row. A turn that fails (after the sampler's retries) ends its chain: it and every
later turn get an error row, which the next run retries from there.

The cache key of sample i covers the whole conversation it was asked in (the earlier answers'
texts included), so a journal whose earlier turns differ is refused, as for any other change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hivemind.inputs.queries import prompt_text
from hivemind.inputs.samples import Completion, Message, SampleRequest, sample_seed
from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec
from hivemind.store.journal import Store, StoreError

NOT_ASKED = "not asked: turn {turn} of this in-context chain failed; the next run asks from there"
"""The error of the turns after a failed one (`turn` is the failed sample's index)."""

Outcome = tuple[SampleRequest, Completion | None, str | None, float, int]
"""(request, completion, error, latency_s, attempts), as the sampler's journal takes it."""


@dataclass(frozen=True)
class Chain:
    """The in-context samples of one (query, deployment, condition)."""

    study: str
    query_id: str
    deployment: str
    condition: str
    samples: int
    base_seed: int
    opening: tuple[Message, ...]
    """The system prompt (if any) and the query: the conversation before the first answer."""
    follow_up: str
    params: SamplingParams
    identity: dict[str, Any]
    dropped: tuple[str, ...]

    def messages(self, answers: Sequence[str]) -> tuple[Message, ...]:
        """The conversation after `answers`: each one as an assistant turn, then the follow-up."""
        turns = list(self.opening)
        for answer in answers:
            turns.append(Message(role="assistant", content=answer))
            turns.append(Message(role="user", content=self.follow_up))
        return tuple(turns)

    def request(self, index: int, answers: Sequence[str]) -> SampleRequest:
        """Sample `index`, asked after `answers` (samples 0..index-1 when the chain got that far)."""
        return SampleRequest(
            study=self.study,
            query_id=self.query_id,
            deployment=self.deployment,
            condition=self.condition,
            sample_index=index,
            seed=sample_seed(self.base_seed, self.query_id, self.deployment, self.condition, index),
            messages=self.messages(answers[:index]),
            params=self.params,
            deployment_identity=self.identity,
            dropped_params=self.dropped,
        )


def iter_chains(
    spec: StudySpec,
    queries: list[Query],
    deployment: Deployment,
    dropped: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
) -> Iterator[Chain]:
    """One deployment's in-context chains, lazily, query by query (none without such a condition)."""
    identity = deployment.identity()
    for condition in spec.effective_conditions():
        if condition.mode != "in-context":
            continue
        system = (Message(role="system", content=condition.system_prompt),) if condition.system_prompt else ()
        params = deployment.params.merged(spec.params, condition.params)
        not_sent = (dropped or {}).get((deployment.name, condition.name), ())
        for query in queries:
            text = prompt_text(query, condition.paraphrase)
            yield Chain(
                study=spec.name,
                query_id=query.id,
                deployment=deployment.name,
                condition=condition.name,
                samples=spec.samples,
                base_seed=spec.seed,
                opening=(*system, Message(role="user", content=text)),
                follow_up=condition.follow_up,
                params=params,
                identity=identity,
                dropped=not_sent,
            )


def first_turns(spec: StudySpec, queries: list[Query], deployment: Deployment) -> Iterator[SampleRequest]:
    """Sample 0 of every chain: asked without earlier answers, so checkable before sampling."""
    for chain in iter_chains(spec, queries, deployment):
        yield chain.request(0, [])


async def run_chain(
    chain: Chain,
    store: Store,
    ask: Callable[[SampleRequest], Awaitable[Outcome]],
    commit: Callable[[list[Outcome]], None],
    on_skip: Callable[[SampleRequest], None],
    stop: Callable[[], bool],
) -> None:
    """Ask the turns of `chain` the journal lacks, in order, committing each before the next.

    `ask` makes one request (with the sampler's retries) into its final outcome; `commit` writes
    outcomes durably before it returns; `on_skip` counts a committed turn read back; `stop` says
    the run must stop (the budget is spent).
    """
    rows = store.chain_rows(chain.study, chain.query_id, chain.deployment, chain.condition)
    answers: list[str] = []
    for index in range(chain.samples):
        request = chain.request(index, answers)
        found = rows.get(index)
        if found is not None and found[1] is not None:  # committed: the chain goes on from its text
            if found[0] != request.cache_key:
                raise StoreError(
                    f"study {chain.study!r} in {store.path} was sampled with other parameters or other "
                    f"earlier turns (query {chain.query_id}, deployment {chain.deployment}, condition "
                    f"{chain.condition}, sample {index}); use another study name or another store"
                )
            answers.append(found[1])
            on_skip(request)
            continue
        if stop():
            return
        outcome = await ask(request)
        completion = outcome[1]
        if completion is None:  # the chain ends here; the next run asks this turn again
            later = [
                (chain.request(j, answers), None, NOT_ASKED.format(turn=index), 0.0, 0)
                for j in range(index + 1, chain.samples)
            ]
            commit([outcome, *later])
            return
        commit([outcome])
        answers.append(completion.text)
