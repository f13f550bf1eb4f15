"""Sampling a deployment through its provider's batch API, resumable after a kill at any point.

The order of writes is what makes it safe: a batch's items (request -> custom_id) are journaled
before the input is uploaded; `creating` is journaled before the create call, and a resumed
`creating` batch is first looked for at the provider (OpenAI: by the key in its metadata or its
input file; Anthropic: by creation time and size) before another is created; the provider's id
is journaled as soon as it is known; results are committed as sample rows in the same
transaction that marks the batch `ingested`. A request in an open batch is never put in another,
so a rerun resumes the same batches, downloads what they hold and submits nothing twice.

Failed and expired items become error rows at once (nothing is lost if the run stops) and,
where retryable, go into a new batch within the run, up to the study's `max_attempts`. Costs are
recorded at litellm's batch price for the model (null where it has none).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from hivemind.errors import HivemindError
from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.providers.base import Provider, ProviderError
from hivemind.providers.batch_api import BatchClient, ItemResult, batch_client
from hivemind.sampling.requests import Outcome
from hivemind.store.batches import Batch, BatchJournal

log = logging.getLogger("hivemind.sampling.batches")
T = TypeVar("T")
DEFAULT_POLL_S = 30.0
DEFAULT_BATCH_SIZE = 50_000  # OpenAI's limit per batch (Anthropic's is 100,000)
Row = tuple[str, str, int]


class BatchError(HivemindError):
    """A batch step that failed beyond its retries: the run stops; the journal keeps the batch."""


def batch_options(provider: Provider) -> tuple[float, int]:
    """(seconds between status polls, most requests per batch) from the deployment's options."""
    options = provider.deployment.options
    return float(options.get("batch_poll_s", DEFAULT_POLL_S)), int(options.get("batch_size", DEFAULT_BATCH_SIZE))


def batch_cost(info: dict[str, Any] | None, completion: Completion) -> float | None:
    """Dollars at the batch price of `info` (litellm's map entry for the model), or None where the
    map has no batch price."""
    if completion.prompt_tokens is None or completion.completion_tokens is None:
        return None
    from hivemind.providers.prices import token_cost

    return token_cost(completion.prompt_tokens, completion.completion_tokens, info, "_batches")


class BatchRunner:
    """One deployment's requests through batches; outcomes go to `commit` (one transaction each)."""

    def __init__(
        self,
        provider: Provider,
        journal: BatchJournal,
        study: str,
        *,
        max_attempts: int,
        commit: Callable[[list[Outcome], Callable[[Any], None]], None],
        stop: Callable[[], bool],
        note: Callable[[str], None] = lambda text: None,
        client: BatchClient | None = None,
    ) -> None:
        self.provider = provider
        self.deployment = provider.deployment
        self.journal = journal
        self.study = study
        self.max_attempts = max_attempts
        self.commit = commit
        self.stop = stop
        self.client = client or batch_client(self.deployment, provider.api_key())
        self.poll_s, self.batch_size = batch_options(provider)
        self.retries = 0
        self.note = note
        self._states: dict[int, tuple[str, float]] = {}  # batch -> (its state, when it was created)
        self._prices: tuple[dict[str, Any] | None] | None = None
        self._adopting = asyncio.Lock()  # one lookup at a time: two batches never adopt one remote

    async def run(self, pending: Iterable[SampleRequest]) -> None:
        """Resume this deployment's open batches, batch every other pending request, and drive
        them all until each is ingested."""
        opened = self.journal.open_batches(self.study, self.deployment.name)
        covered = self.journal.covered_rows(opened)
        requests: dict[Row, SampleRequest] = {}
        fresh: list[SampleRequest] = []
        for request in pending:  # every request without a successful row, open batches' included
            row = (request.query_id, request.condition, request.sample_index)
            requests[row] = request
            if row not in covered:
                fresh.append(request)
        if opened:
            log.info("%s: resuming %d open batch(es)", self.deployment.name, len(opened))
        self._prepare([(r, 1) for r in fresh])
        resumed = {b.id for b in opened}
        try:
            while batches := self.journal.open_batches(self.study, self.deployment.name):
                if self.stop():  # over budget: what is prepared waits for the next run
                    batches = [b for b in batches if b.state not in ("prepared", "uploaded")]
                    if not batches:
                        return
                try:
                    async with asyncio.TaskGroup() as group:
                        for batch in batches:
                            group.create_task(self._drive(batch, requests, batch.id in resumed))
                except ExceptionGroup as failures:  # the first batch's error, as the sampler's workers do
                    raise failures.exceptions[0] from None
                resumed = set()
        finally:
            await self.client.aclose()

    def _prepare(self, todo: list[tuple[SampleRequest, int]]) -> None:
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            self.journal.prepare(
                self.study,
                self.deployment.name,
                self.client.protocol,
                [(r, self.client.body(r), attempt) for r, attempt in chunk],
            )

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` with the sampler's retry rules: retryable errors back off (honouring
        Retry-After) up to `max_attempts`; anything else is raised."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await call()
            except ProviderError as exc:
                if not exc.retryable or attempt == self.max_attempts:
                    message = f"{self.deployment.name}: batch {what}: {exc}"
                    raise ProviderError(message, retryable=exc.retryable, status=exc.status) from None
                self.retries += 1
                wait = exc.retry_after if exc.retry_after is not None else random.uniform(0.25, 0.5) * 2**attempt
                await asyncio.sleep(min(wait, 120.0))
        raise AssertionError("unreachable")

    async def _drive(self, batch: Batch, requests: dict[Row, SampleRequest], resumed: bool) -> None:
        items = self.journal.items(batch.id)
        payload = [(item.custom_id, item.body) for item in items]
        try:
            if batch.state == "prepared":
                file_id = await self._retrying("upload", lambda: self.client.upload(payload))
                self.journal.update(batch.id, state="uploaded", input_file_id=file_id)
                batch.state, batch.input_file_id = "uploaded", file_id
            if batch.state == "uploaded":
                batch.creating_at = time.time()
                self.journal.update(batch.id, state="creating", creating_at=batch.creating_at)
                batch.state = "creating"
                resumed = False  # this run's own attempt: nothing to look for
            if batch.state == "creating":
                remote = await self._adopt(batch) if resumed else None
                if remote is None:
                    remote = await self._retrying(
                        "create", lambda: self.client.create(batch.key, batch.input_file_id, payload)
                    )
                    self.journal.update(batch.id, state="submitted", remote_id=remote, submitted_at=time.time())
                batch.state, batch.remote_id = "submitted", remote
        except ProviderError as exc:
            if exc.retryable:  # transient: the batch stays where it is, and a rerun takes it from there
                raise BatchError(
                    f"{exc}; the batch stays in the store's journal: rerun the study to resume it"
                ) from None
            self._ingest(batch, items, requests, {}, failure=str(exc))  # refused before it ran
            return
        assert batch.remote_id is not None
        remote_id = batch.remote_id
        try:
            status, obj = await self._poll(batch, remote_id)
            results = await self._retrying("results", lambda: self.client.results(obj))
        except ProviderError as exc:
            raise BatchError(
                f"{exc}; batch {remote_id} stays open in the store (`hivemind status`): rerun the study to collect it"
            ) from None
        failure = None if results or status not in {"failed", "cancelled"} else f"batch {remote_id} {status}"
        self._ingest(batch, items, requests, results, failure=failure)

    async def _adopt(self, batch: Batch) -> str | None:
        """The remote batch a killed run created for `batch` before journaling its id (journaled
        now), or None: then it was never created."""
        async with self._adopting:
            taken = self.journal.adopted_remote_ids(self.client.protocol)
            since = batch.creating_at or batch.created_at
            remote = await self._retrying(
                "lookup", lambda: self.client.find(batch.key, batch.input_file_id, batch.n_items, since, taken)
            )
            if remote is not None:
                log.info("%s: batch %s was created by an earlier run; resuming it", self.deployment.name, remote)
                self.journal.update(batch.id, state="submitted", remote_id=remote, submitted_at=time.time())
            return remote

    async def _poll(self, batch: Batch, remote_id: str) -> tuple[str, dict[str, Any]]:
        wait = min(self.poll_s, 1.0)
        while True:
            status, ended, obj = await self._retrying("status", lambda: self.client.poll(remote_id))
            if status != batch.remote_status:
                self.journal.update(batch.id, remote_status=status)
                batch.remote_status = status
                log.info("%s: batch %s %s", self.deployment.name, remote_id, status)
            self._show(batch.id, "ended" if ended else status, batch.created_at)
            if ended:
                return status, obj
            await asyncio.sleep(wait)
            wait = self.poll_s

    def _show(self, batch_id: int, state: str, created_at: float) -> None:
        """The progress line's word on this deployment's batches: how many in each state, the oldest's age."""
        self._states[batch_id] = (state, created_at)
        live = [(s, t) for s, t in self._states.values() if s != "ingested"]
        if not live:
            self.note("")
            return
        counts: dict[str, int] = {}
        for s, _ in live:
            counts[s] = counts.get(s, 0) + 1
        age = time.time() - min(t for _, t in live)
        minutes = f"{age / 60:.0f}m" if age >= 60 else f"{age:.0f}s"
        self.note("batches: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f", oldest {minutes}")

    def _ingest(
        self,
        batch: Batch,
        items: list[Any],
        requests: dict[Row, SampleRequest],
        results: dict[str, ItemResult],
        *,
        failure: str | None,
    ) -> None:
        """Every item's outcome as a row, in the transaction that closes the batch; retryable
        failures go into a new batch (journaled in that same transaction's wake)."""
        outcomes: list[Outcome] = []
        again: list[tuple[SampleRequest, int]] = []
        latency = time.time() - batch.created_at
        if self._prices is None:  # looked up once: litellm's map lookup is not cheap per row
            from hivemind.providers.prices import model_info

            self._prices = (model_info(self.deployment.model),)
        for item in items:
            request = requests.get(item.row)
            if request is None or request.cache_key != item.cache_key:
                continue  # succeeded meanwhile, or no longer in the spec: nothing to record
            # no result: expired with its batch (ask again), or the batch itself was refused (do not)
            result = results.get(item.custom_id) or ItemResult(
                None, failure or "batch item: no result (expired)", failure is None
            )
            completion = result.completion
            if completion is not None:
                completion = completion.model_copy(update={"cost_usd": batch_cost(self._prices[0], completion)})
                outcomes.append((request, completion, None, latency, item.attempt))
                continue
            error = self.provider.redact(
                f"{result.error} (batch {batch.remote_id or batch.key}, attempt {item.attempt})"
            )
            outcomes.append((request, None, error, latency, item.attempt))
            if result.retryable and item.attempt < self.max_attempts:
                again.append((request, item.attempt + 1))
        state = "ingested" if failure is None else "failed"
        self.commit(
            outcomes, lambda db: self.journal.update(batch.id, db, state=state, ended_at=time.time(), error=failure)
        )
        self._show(batch.id, "ingested", batch.created_at)
        if again:
            self.retries += len(again)
            self._prepare(again)
