"""The sampler: fan out every (query, deployment, condition, sample) to its provider, durably.

Each deployment gets its own lazy request stream (checked against the journal a chunk at a
time) and as many workers as it allows connections, so a slow or failing deployment never holds
up the others and a study of any size starts at once in flat memory. Transient errors are
retried with exponential backoff and jitter, honouring `Retry-After`, for a bounded number of
attempts; the final outcome of every request (text or error) is committed to the store before
it is counted. In-context conditions are asked as chains (`hivemind.sampling.in_context`): a worker takes
a chain and asks its turns in order, each committed before the next.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice
from typing import Any

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment, Query, StudySpec
from hivemind.providers.base import Provider, ProviderError
from hivemind.providers.ratelimit import estimate_tokens
from hivemind.sampling.in_context import Chain, first_turns, run_chain
from hivemind.sampling.progress import SamplingProgress, Tick
from hivemind.sampling.requests import Outcome, iter_requests
from hivemind.store.journal import Store, StoreError

MAX_RETRY_WAIT_S = 120.0


class PendingRequests:
    """The requests of a stream that have no successful journal row, checked a chunk at a time.

    Each chunk is looked up by primary key in one query, so resuming reads only the rows the
    plan names, never the whole journal into memory. A row sampled with other parameters (its
    cache key differs) raises `StoreError`. `skipped` counts the finished requests passed over.
    """

    def __init__(
        self,
        store: Store,
        requests: Iterable[SampleRequest],
        *,
        chunk: int = 2048,
        on_skip: Callable[[SampleRequest], None] | None = None,
    ) -> None:
        self.store = store
        self.requests = requests
        self.chunk = chunk
        self.on_skip = on_skip
        self.skipped = 0

    def __iter__(self) -> Iterator[SampleRequest]:
        source = iter(self.requests)
        first = list(islice(source, self.chunk))
        if not first:
            return
        if not self.store.has_samples(first[0].study):  # a fresh study: nothing to look up
            yield from first
            yield from source
            return
        chunk = first
        while chunk:
            yield from self._todo(chunk)
            chunk = list(islice(source, self.chunk))

    def _todo(self, chunk: list[SampleRequest]) -> list[SampleRequest]:
        existing = self.store.existing_rows(chunk[0].study, [r.row_key[1:] for r in chunk])
        todo = []
        for request in chunk:
            found = existing.get(request.row_key[1:])
            if found is None:
                todo.append(request)
                continue
            cache_key, succeeded = found
            if cache_key != request.cache_key:
                query, deployment, condition, index = request.row_key[1:]
                raise StoreError(
                    f"study {request.study!r} in {self.store.path} was sampled with other parameters "
                    f"(query {query}, deployment {deployment}, condition {condition}, sample {index}); "
                    "use another study name or another store"
                )
            if succeeded:
                self.skipped += 1
                if self.on_skip is not None:
                    self.on_skip(request)
            else:
                todo.append(request)
        return todo


def missing_requests(store: Store, requests: Iterable[SampleRequest]) -> list[SampleRequest]:
    """The requests without a successful row; refuses a store sampled with other parameters."""
    return list(PendingRequests(store, requests))


def check_resumable(
    store: Store, spec: StudySpec, queries: list[Query], deployments: list[Deployment], *, first: int = 2048
) -> None:
    """Refuse, before anything is written, a store that sampled this study with other parameters.

    Looks up each deployment's first `first` requests (sample index 0 of the first queries), and
    the first turns of its in-context chains: a change of parameters, system prompts, seed or
    deployment shows there. Every later request is checked as the sampler reaches it, so a
    change that only later samples show (one query's text) stops the run there, with the same
    error.
    """
    if not store.has_samples(spec.name):
        return
    for deployment in deployments:
        for stream in (iter_requests(spec, queries, deployment), first_turns(spec, queries, deployment)):
            for _ in PendingRequests(store, islice(stream, first), chunk=first):
                pass


@dataclass
class SamplingReport:
    """What one sampling run did."""

    planned: int = 0
    skipped: int = 0
    succeeded: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    cost_usd: float = 0.0
    stopped_by_budget: bool = False
    elapsed_s: float = 0.0

    @property
    def sampled(self) -> int:
        """Requests that reached a final outcome in this run."""
        return sum(self.succeeded.values()) + sum(self.failed.values())


class Sampler:
    """Runs requests against providers with per-deployment concurrency, retries and a budget."""

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        *,
        max_attempts: int = 4,
        budget_usd: float | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        progress: bool = True,
        batch: Collection[str] = (),
    ) -> None:
        self.store = store
        self.batch = frozenset(batch)
        """Deployments sampled through their provider's batch API (`hivemind.sampling.batches`)."""
        self.providers = providers
        self.max_attempts = max_attempts
        self.budget_usd = budget_usd
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.show_progress = progress
        self.report = SamplingReport()
        self._spent = 0.0
        self._on_skip: Callable[[SampleRequest], None] = lambda request: None

    def backoff(self, provider: Provider, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before the next attempt: the server's word, else capped jittered 2^n."""
        asked = provider.retry_after(exc)
        if asked is not None:
            return min(asked, MAX_RETRY_WAIT_S)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def _over_budget(self) -> bool:
        return self.budget_usd is not None and self._spent >= self.budget_usd

    async def _attempt(self, provider: Provider, request: SampleRequest) -> tuple[Completion | None, str | None, int]:
        pacer = provider.pacer  # the deployment's rate limits, shared by all of its conditions
        estimate = request_tokens(request) if pacer.tpm is not None else 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                await pacer.acquire(estimate)  # before the timeout: waiting for a slot is not slowness
                limit = provider.deployment.timeout_s if provider.cancellable else None
                async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                    completion = await provider.generate(request)
                pacer.settle(estimate, _used_tokens(completion))
                return completion, None, attempt
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad response must never crash the study
                described = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
                message = provider.redact(described)
                wait = self.backoff(provider, exc, attempt)
                rate_limited = isinstance(exc, ProviderError) and exc.status == 429
                if rate_limited:  # every worker of the deployment waits, and the pace slows
                    pacer.throttled(wait)
                if attempt == self.max_attempts or not provider.should_retry(exc):
                    return None, f"{message} (after {attempt} attempt{'s' * (attempt > 1)})", attempt
                self.report.retries += 1
                await asyncio.sleep(0 if rate_limited else wait)  # the pacer holds a throttled retry
        raise AssertionError("unreachable")

    async def _ask(self, provider: Provider, request: SampleRequest) -> Outcome:
        started = time.perf_counter()
        completion, error, attempts = await self._attempt(provider, request)
        if completion is not None:
            self._spent += completion.cost_usd or 0.0  # spent at once, counted once committed
        return request, completion, error, time.perf_counter() - started, attempts

    def _stop(self) -> bool:
        if self._over_budget():
            self.report.stopped_by_budget = True
        return self.report.stopped_by_budget

    async def _worker(
        self, provider: Provider, source: Iterator[SampleRequest | Chain], journal: _JournalWriter
    ) -> None:
        while not self._stop():
            request = next(source, None)
            if request is None:
                return
            if isinstance(request, Chain):  # its turns in order, each committed before the next
                ask = partial(self._ask, provider)
                await run_chain(request, self.store, ask, journal.commit, self._on_skip, self._stop)
            else:
                journal.submit(await self._ask(provider, request))

    async def _batches(
        self,
        provider: Provider,
        pending: Iterable[SampleRequest],
        count: Callable[[list[Outcome]], None],
        note: Callable[[str, str], None],
    ) -> None:
        """A deployment's requests through its batch API (`hivemind.sampling.batches`)."""
        from hivemind.sampling.batches import BatchRunner
        from hivemind.store.batches import BatchJournal

        todo = list(pending)
        if not todo:
            return

        def commit(outcomes: list[Outcome], extra: Callable[[Any], None]) -> None:
            self.store.record_many(outcomes, extra=extra)
            for _, completion, _, _, _ in outcomes:
                if completion is not None:
                    self._spent += completion.cost_usd or 0.0
            count(outcomes)

        runner = BatchRunner(
            provider,
            BatchJournal(self.store),
            todo[0].study,
            max_attempts=self.max_attempts,
            commit=commit,
            stop=self._stop,
            note=partial(note, provider.deployment.name),
        )
        try:
            await runner.run(todo)
        finally:
            self.report.retries += runner.retries

    def _count(self, tick: Tick) -> Callable[[list[Outcome]], None]:
        """What happens to outcomes once their rows are committed: they count."""

        def count(outcomes: list[Outcome]) -> None:
            for request, completion, _, _, _ in outcomes:
                if completion is not None:
                    self.report.succeeded[request.deployment] += 1
                    self.report.cost_usd += completion.cost_usd or 0.0
                else:
                    self.report.failed[request.deployment] += 1
                tick(request.deployment, completion is not None)

        return count

    async def run(
        self,
        requests: Iterable[SampleRequest] | Mapping[str, Iterable[SampleRequest]],
        *,
        already_spent: float = 0.0,
        totals: Mapping[str, int] | None = None,
        chains: Mapping[str, Iterable[Chain]] | None = None,
    ) -> SamplingReport:
        """Sample every request the journal does not hold yet; returns when all are recorded, or
        the budget is reached.

        `requests` is a list (grouped here by deployment) or, for large studies, one lazy stream
        per deployment (`iter_requests`) with `totals` giving each stream's length for progress.
        Streams are read as workers need them, so memory stays flat whatever the study's size.
        `chains` are each deployment's in-context chains (`hivemind.sampling.in_context`), taken first.
        """
        self._spent = already_spent
        started = time.perf_counter()
        if isinstance(requests, Mapping):
            streams: dict[str, Iterable[SampleRequest]] = dict(requests)
            sizes = dict(totals) if totals is not None else None
        else:
            grouped: dict[str, list[SampleRequest]] = {name: [] for name in self.providers}
            for request in requests:
                grouped[request.deployment].append(request)
            streams, sizes = dict(grouped), {name: len(todo) for name, todo in grouped.items()}
        paces = {name: provider.pacer.pace for name, provider in self.providers.items()}
        bars = SamplingProgress(self.show_progress, sizes or {}, paces)
        with bars as tick:

            def skip(request: SampleRequest) -> None:
                self.report.skipped += 1
                tick(request.deployment, True)

            self._on_skip = skip
            count = self._count(tick)
            journal = _JournalWriter(self.store, count)
            try:  # a failing worker (e.g. the disk is full) stops the others: no orphan tasks
                async with asyncio.TaskGroup() as group:
                    for name, stream in streams.items():
                        pending = PendingRequests(self.store, stream, on_skip=skip)
                        if name in self.batch:  # its chains (dependent turns) are asked live
                            group.create_task(self._batches(self.providers[name], pending, count, bars.note))
                            pending = PendingRequests(self.store, ())
                        source: Iterator[SampleRequest | Chain] = chain((chains or {}).get(name, ()), pending)
                        size = sizes.get(name, 1) if sizes is not None else None
                        workers = self.providers[name].max_connections()
                        for _ in range(min(workers, max(size, 1)) if size is not None else workers):
                            group.create_task(self._worker(self.providers[name], source, journal))
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from None
            finally:  # finished samples are committed however the run ends
                journal.flush()
        total = sum(sizes.values()) if sizes is not None else self.report.sampled + self.report.skipped
        self.report.planned = total - self.report.skipped
        self.report.elapsed_s = time.perf_counter() - started
        return self.report


def request_tokens(request: SampleRequest) -> int:
    """A request's tokens against a `tpm` limit, estimated before it is sent."""
    return estimate_tokens(sum(len(m.content) for m in request.messages), request.params.max_tokens)


def _used_tokens(completion: Completion) -> int | None:
    if completion.prompt_tokens is None or completion.completion_tokens is None:
        return None
    return completion.prompt_tokens + completion.completion_tokens


class _JournalWriter:
    """Group commits: finished samples go to SQLite in one transaction every `delay_s` (or every
    `max_rows`), and count only once committed.

    A worker hands its outcome over and takes its next request at once, so the commit never
    holds a connection idle; one transaction per batch instead of per row is what lets the
    sampler keep up with hundreds of connections. A crash loses at most the requests in flight
    and the last `delay_s` of outcomes, which a rerun samples again. A failed commit (disk
    full) is raised to the next worker that submits, which stops the run.
    """

    def __init__(
        self,
        store: Store,
        on_committed: Callable[[list[Outcome]], None],
        *,
        delay_s: float = 0.05,
        max_rows: int = 1000,
    ) -> None:
        self.store = store
        self.on_committed = on_committed
        self.delay_s = delay_s
        self.max_rows = max_rows
        self._pending: list[Outcome] = []
        self._timer: asyncio.TimerHandle | None = None
        self._error: Exception | None = None

    def submit(self, outcome: Outcome) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append(outcome)
        if len(self._pending) >= self.max_rows:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay_s, self._flush_later)

    def commit(self, outcomes: list[Outcome]) -> None:
        """Commit `outcomes` (and whatever is pending) before returning: an in-context turn is
        durable before the next one is asked."""
        self._pending.extend(outcomes)
        self.flush()

    def _flush_later(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception as exc:  # kept for the next submit: a timer callback cannot raise
            self._error = exc

    def flush(self) -> None:
        """Commit every pending outcome now, then count them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._error is not None:
            raise self._error
        batch, self._pending = self._pending, []
        if batch:
            self.store.record_many(batch)
            self.on_committed(batch)
