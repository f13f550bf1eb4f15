"""The sampler: fan out every (query, deployment, condition, sample) to its provider, durably.

Each deployment gets its own queue and as many workers as it allows connections, so a slow or
failing deployment never holds up the others. Transient errors are retried with exponential
backoff and jitter, honouring `Retry-After`, for a bounded number of attempts; the final
outcome of every request (text or error) is committed to the store before it is counted.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hivemind.queries import prompt_text
from hivemind.providers.base import Provider, ProviderError
from hivemind.spec import (
    Completion,
    Deployment,
    Message,
    Query,
    SampleRequest,
    StudySpec,
    sample_seed,
)
from hivemind.store import Store, StoreError

MAX_RETRY_WAIT_S = 120.0
Tick = Callable[[str, bool], None]
"""Progress callback: (deployment, succeeded)."""


def plan_requests(spec: StudySpec, queries: list[Query], deployments: list[Deployment]) -> list[SampleRequest]:
    """Every sample of the study, ordered sample-index first so a budget stop leaves even coverage."""
    requests = []
    for index in range(spec.samples):
        for query in queries:
            for deployment in deployments:
                for condition in spec.effective_conditions():
                    messages = [Message(role="user", content=prompt_text(query, condition.paraphrase))]
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


def missing_requests(store: Store, requests: list[SampleRequest]) -> list[SampleRequest]:
    """The requests without a successful row; refuses a store sampled with other parameters."""
    if not requests:
        return []
    existing = store.sampled_keys(requests[0].study)
    todo = []
    for request in requests:
        found = existing.get(request.row_key[1:])
        if found is None:
            todo.append(request)
            continue
        cache_key, succeeded = found
        if cache_key != request.cache_key:
            query, deployment, condition, index = request.row_key[1:]
            raise StoreError(
                f"study {request.study!r} in {store.path} was sampled with other parameters "
                f"(query {query}, deployment {deployment}, condition {condition}, sample {index}); "
                "use another study name or another store"
            )
        if not succeeded:
            todo.append(request)
    return todo


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
    ) -> None:
        self.store = store
        self.providers = providers
        self.max_attempts = max_attempts
        self.budget_usd = budget_usd
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.show_progress = progress
        self.report = SamplingReport()
        self._spent = 0.0

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
        for attempt in range(1, self.max_attempts + 1):
            try:
                limit = provider.deployment.timeout_s if provider.cancellable else None
                async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                    completion = await provider.generate(request)
                return completion, None, attempt
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one bad response must never crash the study
                described = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
                message = provider.redact(described)
                if attempt == self.max_attempts or not provider.should_retry(exc):
                    return None, f"{message} (after {attempt} attempt{'s' * (attempt > 1)})", attempt
                self.report.retries += 1
                await asyncio.sleep(self.backoff(provider, exc, attempt))
        raise AssertionError("unreachable")

    async def _worker(self, provider: Provider, queue: asyncio.Queue[SampleRequest], tick: Tick) -> None:
        while True:
            try:
                request = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if self._over_budget():
                self.report.stopped_by_budget = True
                return
            started = time.perf_counter()
            completion, error, attempts = await self._attempt(provider, request)
            self.store.record(request, completion, error=error,
                              latency_s=time.perf_counter() - started, attempts=attempts)
            if completion is not None:
                self.report.succeeded[request.deployment] += 1
                self._spent += completion.cost_usd or 0.0
                self.report.cost_usd += completion.cost_usd or 0.0
            else:
                self.report.failed[request.deployment] += 1
            tick(request.deployment, completion is not None)

    async def run(self, requests: Iterable[SampleRequest], *, already_spent: float = 0.0) -> SamplingReport:
        """Sample every request; returns when all are recorded, or the budget is reached."""
        self._spent = already_spent
        started = time.perf_counter()
        queues: dict[str, asyncio.Queue[SampleRequest]] = {name: asyncio.Queue() for name in self.providers}
        for request in requests:
            queues[request.deployment].put_nowait(request)
            self.report.planned += 1
        with _progress(self.show_progress, {n: q.qsize() for n, q in queues.items()}) as tick:
            try:  # a failing worker (e.g. the disk is full) stops the others: no orphan tasks
                async with asyncio.TaskGroup() as group:
                    for name, queue in queues.items():
                        for _ in range(min(self.providers[name].max_connections(), max(queue.qsize(), 1))):
                            group.create_task(self._worker(self.providers[name], queue, tick))
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from None
        self.report.elapsed_s = time.perf_counter() - started
        return self.report


class _progress:
    """A rich progress bar per deployment (silent when disabled or not on a terminal)."""

    def __init__(self, enabled: bool, totals: dict[str, int]) -> None:
        self.enabled = enabled and sys.stderr.isatty() and sum(totals.values()) > 0
        self.totals = totals
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> Tick:
        if not self.enabled:
            return lambda deployment, ok: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"), TimeRemainingColumn(),
            transient=False,
        )
        self.bar.start()
        for name, total in self.totals.items():
            self.tasks[name] = self.bar.add_task(name, total=total, failed=0)
        failed: Counter[str] = Counter()

        def tick(deployment: str, ok: bool) -> None:
            if not ok:
                failed[deployment] += 1
            self.bar.update(self.tasks[deployment], advance=1, failed=failed[deployment])

        return tick

    def __exit__(self, *_: object) -> None:
        if self.enabled:
            self.bar.stop()
