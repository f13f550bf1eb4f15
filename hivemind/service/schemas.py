"""Request and response bodies of the REST service (pydantic v2, unknown fields refused).

Request models reuse the pipeline's own edge models (`StudyOptions`, the base of `StudySpec`;
`Query`, `Condition`), so a body the service accepts is a study the CLI would accept too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from hivemind.inputs.spec import Condition, Query, Seed31, StoreName, Strict, StudyOptions

JobState = Literal["queued", "sampling", "analyzing", "done", "failed", "cancelled", "external"]
"""`external`: a study in the store that the service did not start (e.g. sampled by the CLI)."""
TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed", "cancelled", "external"})
ACTIVE_STATES: tuple[str, ...] = ("queued", "sampling", "analyzing")


class Model(Strict):
    """Base of the service's bodies: unknown fields refused, field docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ErrorItem(Model):
    """One problem with a request."""

    field: str
    """Where: `body.deployments[1]`, `query.limit`, `header.Idempotency-Key`, `path.name`, ..."""
    message: str
    """What is wrong with it."""


class ErrorResponse(Model):
    """Every 4xx/5xx body."""

    detail: str
    """One line naming the field and the problem."""
    errors: list[ErrorItem] = Field(default_factory=list)
    """Each problem found (several for a body with several bad fields)."""


class Health(Model):
    """Liveness answer (no token needed)."""

    status: Literal["ok"] = "ok"
    """Always `ok` when the process answers."""
    version: str
    """hivemind version."""
    workers_alive: bool
    """Whether the background job runner is running."""


# --- query sets -------------------------------------------------------------------------------
class QuerySetUpload(Model):
    """A query set sent as a JSON body (files go as CSV/JSONL bodies or multipart instead)."""

    name: StoreName = Field(max_length=100)
    """Name to save the set under; studies refer to it by this name (not one of the store's own files)."""
    description: str = Field("", max_length=2000)
    """What the set is for."""
    queries: list[Query] = Field(min_length=1)
    """The queries, in order; ids must be unique."""


class QuerySetInfo(Model):
    """A query set the service knows: shipped with hivemind or uploaded."""

    name: str
    """Name to use in a study's `query_set`."""
    source: Literal["shipped", "uploaded"]
    """Where it comes from."""
    description: str
    """What the set is for."""
    n_queries: int
    """Number of queries."""
    categories: dict[str, int]
    """Queries per category."""
    sha256: str | None = None
    """Digest of the saved JSONL (uploaded sets)."""
    created_at: float | None = None
    """Upload time, seconds since the epoch (uploaded sets)."""


class QuerySetList(Model):
    """Every query set."""

    query_sets: list[QuerySetInfo]
    """Shipped sets first, then uploaded ones by name."""


class QuerySetDetail(QuerySetInfo):
    """A query set with its queries."""

    queries: list[Query]
    """The queries, in order."""


# --- studies ----------------------------------------------------------------------------------
class StudyCreate(StudyOptions):
    """A study to sample in the background: a query set crossed with deployments of the zoo.

    `StudySpec`'s fields (shared through `StudyOptions`) less `zoo` (the service's own), with
    the bounds a public door needs; the study it runs is that `StudySpec`.
    """

    name: StoreName = Field(max_length=100)
    """Study name, unique in the store (not one of the store's own files: `hivemind.sqlite`, `scans`, ...)."""
    query_set: str = Field(min_length=1, max_length=100)
    """Name of an uploaded or shipped query set (not a path)."""
    deployments: list[str] = Field(min_length=1, max_length=256)
    """Deployment names from the service's zoo, each at most once."""
    conditions: list[Condition] = Field(default_factory=list, max_length=64)
    """Decoding conditions crossed with every deployment; empty means one `default` condition."""
    seed: Seed31 = 0
    """Base seed; each sample gets its own seed derived from it."""
    embedder: str | None = Field(None, min_length=1, max_length=200)  # type: ignore[assignment]
    """One of the embedders the server offers (`hivemind serve --embedder`); null: its first."""
    analyze: bool = True
    """Analyze and write the HTML report after sampling."""
    dry_run: bool = False
    """Plan it only: the answer is `hivemind plan`'s rows and total (requests still to send,
    tokens, cost upper bounds from litellm's price map); nothing is queued or written."""


class StudyPlan(Model):
    """What a study would send and may cost (`POST /v1/studies` with `dry_run: true`)."""

    study: str
    rows: list[dict[str, Any]]
    """One per (deployment, condition): `requests`, `prompt_tokens`, `completion_tokens_max`,
    `cost_usd_max`, `cost_usd_batch_max`, `min_wall_s`, `batch`, ..."""
    total: dict[str, Any]
    """Sums of the rows, `cost_usd_run_max` (what this run may be billed), `over_budget`, `unpriced`."""
    judge: dict[str, Any] | None = None
    """The equivalence judge's call bound and cost (`analysis.classes.judge`), or null."""
    embedding: dict[str, Any] | None = None
    """What embedding the new answers may cost: `remote`, `tokens_max`, `cost_usd_max`."""


class DeploymentProgress(Model):
    """Sample counts of one deployment (or of the whole study)."""

    planned: int
    """Samples the study asks for."""
    ok: int
    """Samples recorded with a text."""
    failed: int
    """Samples recorded with an error after their last attempt."""
    pending: int
    """Samples not recorded yet."""


class StudyStatus(Model):
    """Where a study stands."""

    name: str
    """Study name."""
    kind: Literal["study", "scan", "external"]
    """`scan` for a scheduled scan's run."""
    state: JobState
    """queued -> sampling -> analyzing -> done; or failed, cancelled."""
    cancel_requested: bool
    """True from the cancel request until the worker has stopped."""
    created_at: float | None = None
    """Submission time (seconds since the epoch)."""
    started_at: float | None = None
    """When sampling (last) started."""
    finished_at: float | None = None
    """When the job ended."""
    error: str | None = None
    """Why the job failed (secrets redacted)."""
    note: str | None = None
    """Anything else worth knowing (budget stop, analysis unavailable, ...)."""
    progress: dict[str, DeploymentProgress]
    """Per deployment."""
    total: DeploymentProgress
    """Summed over deployments."""
    request: dict[str, Any] | None = None
    """The body the study was created with."""
    links: dict[str, str]
    """Where to find its results."""


class StudyList(Model):
    """Every study of the store."""

    studies: list[StudyStatus]
    """Oldest first."""


class StudyResults(Model):
    """A study's analysis summary."""

    study: str
    """Study name."""
    state: JobState
    """The job's state when read."""
    summary: dict[str, Any]
    """`analysis/summary.json` as the pipeline wrote it."""
    sampling: dict[str, Any] | None = None
    """`sampling.json`: what the last sampling run did."""


class TableInfo(Model):
    """A Parquet table that can be downloaded."""

    name: str
    """Table name (`samples`, or an analysis table)."""
    url: str
    """Where to GET it."""
    bytes: int | None = None
    """File size, when the file exists already (`samples` is exported on request)."""


class TableList(Model):
    """A study's downloadable tables."""

    study: str
    """Study name."""
    tables: list[TableInfo]
    """`samples` first, then the analysis tables by name."""


class NearDuplicatePage(Model):
    """One page of near-duplicate response pairs from different models."""

    study: str
    """Study name."""
    offset: int
    """Index of the first pair of this page."""
    limit: int
    """Page size asked for."""
    total: int
    """Pairs in the table, all of which can be paged through."""
    found: int | None = None
    """Pairs the analysis found (its summary's count); null when the summary does not say."""
    truncated: bool = False
    """True when the table holds fewer pairs than were found (an analysis made by an older
    hivemind kept only the most similar): `total` pairs can be paged, `found` exist."""
    items: list[dict[str, Any]]
    """The pairs (columns as the analysis wrote them)."""
    next_offset: int | None = None
    """Offset of the next page, or null on the last one."""


# --- scans ------------------------------------------------------------------------------------
class ScanInfo(Model):
    """A declared scan and when it runs."""

    name: str
    """Scan name."""
    schedule: str
    """Cron expression (UTC)."""
    deployments: list[str]
    """Deployments it samples."""
    query_set: str
    """Query set it uses."""
    samples: int
    """Samples per (query, deployment)."""
    enabled: bool
    """Whether the scheduler fires it."""
    next_run: float | None = None
    """Next scheduled time (seconds since the epoch, UTC)."""
    last_run: dict[str, Any] | None = None
    """The latest run (state, times, study)."""


class ScanList(Model):
    """Every declared scan."""

    scans: list[ScanInfo]
    """In declaration order."""


class ScanHistory(Model):
    """A scan's finished runs with per-deployment similarity and drift flags."""

    scan: str
    """Scan name."""
    runs: list[dict[str, Any]]
    """Oldest first: study, times, and per deployment intra/inter estimates with CIs and flags."""
    flagged: list[str]
    """Deployments whose own (intra-model) cell changed in the latest run."""
    flagged_pairs: list[list[str]] = Field(default_factory=list)
    """Deployment pairs whose inter-model cell changed in the latest run."""
    not_comparable: str | None = None
    """Why the latest run was not compared with the one before (another embedder, query set or K)."""


class ScanRunStarted(Model):
    """A scan run queued by `POST /v1/scans/{name}/run`."""

    scan: str
    """Scan name."""
    run_id: int
    """Id in the scan history."""
    study: str
    """The study the run samples into (poll `/v1/studies/{study}`)."""
