"""Scheduled model-zoo scans: cron-style specs, runs kept as studies, history and drift flags.

A scan is declared in the zoo's `scans:` section, in a scans file, or through the service
(`POST /v1/scans`). Each run is a study plus a drift step: it samples a fresh study
(`scan-<name>-<UTC time>`) through the pipeline's sampling steps like every other door, embeds the answers, and keeps the deployment x deployment
similarity matrix per query (intra-model on the diagonal), with per-deployment summaries and
bootstrap CIs. The history compares each run with the one before it cell by cell (`hivemind.scans.drift`:
paired test over the shared queries, Holm-corrected over all cells): a deployment is flagged when
its own diagonal cell changed, a pair when its cell changed. Runs with another embedder, query set
or K are not compared, and the history says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, field_validator

from hivemind.errors import HivemindError
from hivemind.inputs.spec import SamplingPlan, Seed31, StoreName, Strict, StudySpec
from hivemind.inputs.zoo import ZooError, default_zoo_path, format_validation_error, load_zoo
from hivemind.layout import QUERY_SETS, StoreLayout
from hivemind.scans.drift import compare_with_previous
from hivemind.scans.drift import scan_history as scan_history  # re-exported: the service and tests read it here

if TYPE_CHECKING:
    from hivemind.store.jobs import JobQueue, ServiceDB
    from hivemind.store.journal import Store

log = logging.getLogger("hivemind.service")
QUERY_SET_DIR = QUERY_SETS
"""Uploaded query sets live in `STORE/query-sets/NAME.jsonl` (`StoreLayout.query_set`)."""


class ScanError(HivemindError, ValueError):
    """A scan declaration or run that cannot be used; the message names the field."""


class ScanSpec(SamplingPlan):
    """One scheduled scan: which deployments, which query set, how many samples, when.

    A `SamplingPlan` (the base of `StudySpec`) with a schedule: each run samples the study
    `StudySpec(**plan, name=scan-<name>-<time>)`. Fields a scan bounds more tightly are redeclared.
    """

    name: StoreName = Field(max_length=80)
    """Scan name, unique among scans."""
    query_set: str = Field(min_length=1, max_length=500)
    """A shipped set, an uploaded set's name, or a file path (relative to the scans file)."""
    deployments: list[str] = Field(min_length=2, max_length=256)
    """Deployments of the zoo to compare (at least two: inter-model similarity needs a pair)."""
    samples: int = Field(4, ge=2, le=1000)
    """Samples per (query, deployment); at least two, for intra-model similarity."""
    max_queries: int | None = Field(None, ge=2)
    """Use only the first N queries of the set."""
    seed: Seed31 = 0
    """Base seed of each run."""
    embedder: str = Field("all-MiniLM-L6-v2", min_length=1, max_length=200)
    """Embedder used to compare answers: a zoo `embedders:` entry, else a sentence-transformers model."""
    schedule: str = Field(min_length=1, max_length=100)
    """Cron expression in UTC: five fields (`0 3 * * *`) or a macro (`@daily`)."""
    enabled: bool = True
    """Disabled scans can still be run by hand, but the scheduler skips them."""
    description: str = Field("", max_length=2000)
    """What the scan watches."""

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        value = " ".join(value.split())
        if not (value.startswith("@") or len(value.split()) == 5) or not croniter.is_valid(value):
            raise ValueError(
                f"not a valid cron expression {value!r} (five fields: minute hour "
                "day-of-month month day-of-week, e.g. '0 3 * * *', or '@daily')"
            )
        return value


class _ScanFile(Strict):
    scans: list[ScanSpec] = Field(default_factory=list)
    """The scans."""


@dataclass
class ScanBook:
    """The scans declared for a zoo, with where relative paths are resolved from."""

    scans: list[ScanSpec]
    zoo_path: Path
    base_dir: Path
    sources: dict[str, str]

    def get(self, name: str) -> ScanSpec:
        for scan in self.scans:
            if scan.name == name:
                return scan
        known = ", ".join(s.name for s in self.scans) or "none"
        raise ScanError(f"unknown scan {name!r} (declared: {known})")


def has_store(store_dir: str | Path) -> bool:
    """True when `store_dir` holds a store; reading commands check this, so they create nothing."""
    return StoreLayout(Path(store_dir)).exists()


def validate_scans(raw: Any, source: str, zoo_path: Path | None) -> list[ScanSpec]:
    """Scans from raw YAML/JSON data, each problem naming `scans[i].field`."""
    try:
        scans = _ScanFile.model_validate({"scans": raw}).scans
    except ValidationError as exc:
        raise ScanError(format_validation_error(source, exc)) from None
    seen: set[str] = set()
    try:
        zoo = load_zoo(zoo_path)
    except ZooError as exc:
        raise ScanError(str(exc)) from None
    names = {d.name for d in zoo.deployments}
    for i, scan in enumerate(scans):
        if scan.name in seen:
            raise ScanError(f"{source}: scans[{i}].name: duplicate scan name {scan.name!r}")
        seen.add(scan.name)
        for j, deployment in enumerate(scan.deployments):
            if deployment not in names:
                raise ScanError(
                    f"{source}: scans[{i}].deployments[{j}]: unknown deployment "
                    f"{deployment!r} (the zoo has: {', '.join(sorted(names)) or 'none'})"
                )
    return scans


def load_scans(
    zoo_path: str | Path | None = None, scans_path: str | Path | None = None, store_dir: str | Path | None = None
) -> ScanBook:
    """Scans of the zoo file (or of a separate scans file), plus those saved in a store."""
    zoo_file = Path(zoo_path) if zoo_path is not None else default_zoo_path()
    source = Path(scans_path) if scans_path is not None else zoo_file
    if not source.exists():
        raise ScanError(f"scans file {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ScanError(f"{source}: not valid YAML: {exc}") from None
    if scans_path is not None and isinstance(raw, dict) and set(raw) - {"scans"}:
        raise ScanError(
            f"{source}: unknown top-level keys {sorted(set(raw) - {'scans'})} (a scans file holds a `scans:` list)"
        )
    items = raw if isinstance(raw, list) else raw.get("scans", []) if isinstance(raw, dict) else None
    if items is None:
        raise ScanError(f"{source}: expected a `scans:` list")
    scans = validate_scans(items, str(source), zoo_file)
    sources = {s.name: "file" for s in scans}
    if store_dir is not None and has_store(store_dir):
        from hivemind.store.jobs import ServiceDB

        with ServiceDB(store_dir) as db:
            for row in db.rows("SELECT scan_json FROM service_scans ORDER BY created_at"):
                scan = ScanSpec.model_validate_json(row["scan_json"])
                if scan.name not in sources:
                    scans.append(scan)
                    sources[scan.name] = "service"
    return ScanBook(scans, zoo_file, source.parent, sources)


# --- scheduling ---------------------------------------------------------------------------
def latest_fire(schedule: str, now: float) -> float:
    """The latest time at or before `now` that the schedule fires."""
    from croniter import croniter

    return float(croniter(schedule, now + 1e-3).get_prev(float))


def next_fire(schedule: str, after: float) -> float:
    """The first time after `after` that the schedule fires."""
    from croniter import croniter

    return float(croniter(schedule, after).get_next(float))


def due_scans(book: ScanBook, db: ServiceDB, *, now: float, since: float) -> list[tuple[ScanSpec, float]]:
    """Enabled scans with a fire time since their last run (or since `since` if never run).

    A service that was down over several fire times catches up once, with the latest.
    """
    due = []
    for scan in book.scans:
        if not scan.enabled:
            continue
        runs = db.scan_runs(scan.name)
        if any(r["state"] == "running" for r in runs):
            continue
        base = since
        if runs:
            last = runs[-1]
            base = last["scheduled_for"] or last["started_at"]
        fire = latest_fire(scan.schedule, now)
        if fire > base:
            due.append((scan, fire))
    return due


def resolve_query_set(value: str, store_dir: Path, base_dir: Path, *, names_only: bool = False) -> str:
    """What `StudySpec.query_set` should say: a file path, or a shipped set's name.

    `names_only` (a scan declared through the service): an uploaded set in the store or a shipped
    one, never a file elsewhere, so a client cannot make the service read the operator's files."""
    from hivemind.inputs.queries import list_shipped

    files: tuple[Path, ...] = (StoreLayout(store_dir).query_set(value),)
    if not names_only:
        files = (base_dir / value, Path(value).expanduser(), *files)
    for candidate in files:
        if candidate.is_file():
            return str(candidate.resolve())
    if value in list_shipped():
        return value
    raise ScanError(
        f"query_set: unknown query set {value!r} (not a file, an uploaded set in "
        f"{StoreLayout(store_dir).query_sets}, nor a shipped set)",
        field="query_set",
    )


def queue_scan_run(
    db: ServiceDB,
    scan: ScanSpec,
    book: ScanBook,
    store_dir: Path,
    *,
    scheduled_for: float | None = None,
    as_job: bool = True,
    max_samples: int | None = None,
) -> tuple[int, str]:
    """Record a new run (and, for the service, its job) atomically. Returns (run id, study).

    A run planning more than `max_samples` samples is a `ScanError` (field `samples`), before any write."""
    from hivemind.sampling.stage import planned_counts

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base_name = f"scan-{scan.name}-{stamp}"
    study, n = base_name, 1
    while db.rows("SELECT 1 FROM scan_runs WHERE study = ? UNION SELECT 1 FROM studies WHERE name = ?", (study, study)):
        n += 1
        study = f"{base_name}-{n}"
    plan = scan.model_dump(include=set(SamplingPlan.model_fields))
    spec = StudySpec(
        **plan
        | {
            "name": study,
            "zoo": str(book.zoo_path.resolve()),
            "query_set": resolve_query_set(
                scan.query_set, store_dir, book.base_dir, names_only=book.sources.get(scan.name) == "service"
            ),
        }
    )
    try:
        planned = planned_counts(spec)
    except Exception as exc:  # unknown deployment, missing file, ...: named, before any write
        raise ScanError(
            f"scan {scan.name!r}: {exc}", field=exc.field if isinstance(exc, HivemindError) else None
        ) from None
    total = sum(planned.values())
    if max_samples is not None and total > max_samples:
        raise ScanError(f"scan {scan.name!r} plans {total} samples a run; the limit is {max_samples}", field="samples")
    row = {
        "scan": scan.name,
        "study": study,
        "scan_json": scan.model_dump_json(),
        "spec_json": spec.model_dump_json(),
        "scheduled_for": scheduled_for,
        "started_at": time.time(),
    }
    ids: list[int] = []
    if as_job:
        db.create_job(
            {
                "study": study,
                "kind": "scan",
                "request_json": json.dumps({"scan": scan.name}),
                "spec_json": spec.model_dump_json(),
                "planned_json": json.dumps(planned),
                "analyze": 0,
            },
            extra=lambda conn: ids.append(db.insert_scan_run(conn, row)),
        )
    else:
        with db.transaction() as conn:
            ids.append(db.insert_scan_run(conn, row))
    return ids[0], study


def make_scheduler(
    load: Callable[[], ScanBook], *, since: float | None = None, max_samples: int | None = None
) -> Callable[[JobQueue], None]:
    """A tick for the job runner (`JobQueue`): queue every due scan as a job (a run over
    `max_samples` is refused and logged; the other due scans still run)."""
    started = time.time() if since is None else since

    def tick(manager: JobQueue) -> None:
        book = load()
        for scan, fire in due_scans(book, manager.db, now=time.time(), since=started):
            try:
                _, study = queue_scan_run(
                    manager.db, scan, book, manager.store_dir, scheduled_for=fire, max_samples=max_samples
                )
            except ScanError as exc:
                log.warning("scan scheduler: %s", exc)
                continue
            manager.submit(study)

    return tick


# --- running and analysis -----------------------------------------------------------------
_EMBEDDERS: dict[str, Any] = {}
_EMBEDDER_LOCK = threading.Lock()


def _embedder(name: str, zoo: str | None = None) -> Any:
    """One embedder per (name, zoo) per process (loading a model takes seconds): the zoo's
    `embedders:` entry of that name, else the sentence-transformers model."""
    from hivemind.providers.embedders import resolve_embedder, zoo_embedders

    entry = zoo_embedders(zoo).get(name)  # read each time: an edited entry is a new embedder
    key = f"{name}\0{entry.embedder_id() if entry else ''}"
    with _EMBEDDER_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = resolve_embedder(name, zoo, progress=False)
        return _EMBEDDERS[key]


def _ci(values: Any) -> dict[str, float | None]:
    from hivemind.metrics.stats import bootstrap_ci

    est, lo, hi = bootstrap_ci(values)
    clean = [None if math.isnan(v) else round(v, 6) for v in (est, lo, hi)]
    return {"estimate": clean[0], "lo": clean[1], "hi": clean[2]}


def analyze_scan(store: Store, study: str, embedder_name: str) -> dict[str, Any]:
    """Per deployment: intra- and inter-model similarity over queries, with bootstrap CIs; the
    matrix of cells, and each cell per query (what the next run is tested against).

    The responses and the similarities are the study analysis's own (`hivemind.analysis`):
    failed and empty answers dropped, every deployment cut to the same K per query, so runs and
    deployments are compared on equal footing. `embedder`, `query_set_sha256` (ids and texts of
    the queries asked) and `k` decide whether two runs may be compared at all.
    """
    import polars as pl

    from hivemind.analysis import build_groups, pair_similarity, prepare_responses
    from hivemind.inputs.spec import canonical_json, sha256_hex
    from hivemind.vectors.embed import EmbeddingCache, embed_texts

    spec = store.study_spec(study)
    deployments = spec.deployments
    samples = store.samples_frame(study)
    asked = samples.unique("query_id", keep="first", maintain_order=True)
    query_set_sha256 = sha256_hex(
        canonical_json(list(zip(asked["query_id"].to_list(), asked["query_text"].to_list(), strict=True)))
    )
    responses, _ = prepare_responses(samples, deployment_order=deployments)
    embedder = _embedder(embedder_name, spec.zoo)
    vectors = embed_texts(responses["text"].to_list(), embedder, EmbeddingCache(store.layout.embedding_cache))
    pairs = pair_similarity(build_groups(responses), vectors)
    unit = ["query_id", "condition"]  # one value per (query, condition) per deployment
    intra = pairs.filter(pl.col("kind") == "intra")
    inter = pairs.filter(pl.col("kind") == "inter")
    both_ways = pl.concat(
        [inter, inter.with_columns(deployment_a=pl.col("deployment_b"), deployment_b=pl.col("deployment_a"))]
    )
    inter_by = both_ways.group_by([*unit, "deployment_a"], maintain_order=True).agg(
        pl.col("similarity").mean()
    )  # per (query, condition): mean over the other deployments

    def values(frame: pl.DataFrame, d: str) -> Any:
        return frame.filter(pl.col("deployment_a") == d)["similarity"].to_numpy()

    def cell(d: str, e: str) -> float | None:
        found = (
            intra.filter(pl.col("deployment_a") == d)
            if d == e
            else both_ways.filter((pl.col("deployment_a") == d) & (pl.col("deployment_b") == e))
        )["similarity"].drop_nans()
        return round(float(found.to_numpy().mean()), 6) if found.len() else None

    return {
        "study": study,
        "embedder": embedder.embedder_id,
        "k": spec.samples,
        "query_set_sha256": query_set_sha256,
        "n_queries": responses["query_id"].n_unique(),
        "deployments": {
            d: {
                "intra": _ci(values(intra, d)),
                "inter": _ci(values(inter_by, d)),
                "n_samples": int((responses["deployment"] == d).sum()),
            }
            for d in deployments
        },
        "matrix": {d: {e: cell(d, e) for e in deployments} for d in deployments},
        "per_query": _per_query_cells(pairs),
    }


def _per_query_cells(pairs: Any) -> dict[str, Any]:
    """Each matrix cell's value per query (None where undefined), and each query's K.

    What the run-to-run paired test needs. A scan has one condition, so a query is the unit.
    """
    queries = pairs.unique("query_id", maintain_order=True)
    cells: dict[tuple[str, str], dict[str, float | None]] = {}
    for q, a, b, value in pairs.select("query_id", "deployment_a", "deployment_b", "similarity").iter_rows():
        cells.setdefault((a, b), {})[q] = None if value is None or math.isnan(value) else value
    ids = queries["query_id"].to_list()
    return {
        "query_ids": ids,
        "k": queries["k"].to_list(),
        "cells": [{"a": a, "b": b, "values": [by_query.get(q) for q in ids]} for (a, b), by_query in cells.items()],
    }


async def execute_scan_run(
    store: Store,
    db: ServiceDB,
    run_id: int,
    *,
    redact: Callable[[str], str] = lambda s: s,
    analysis_lock: asyncio.Lock | None = None,
    progress: bool = False,
) -> dict:
    """One scan run: a study (the pipeline's sampling steps, resuming) plus a drift step (the
    deployment x deployment cells, compared with the previous run); recorded in the history."""
    from hivemind.pipeline import SAMPLING_STEPS, run_pipeline_async
    from hivemind.store.jobs import run_to_completion

    run = db.scan_run(run_id)
    if run is None:
        raise ScanError(f"no scan run {run_id}")
    spec = StudySpec.model_validate_json(run["spec_json"])
    scan = ScanSpec.model_validate_json(run["scan_json"])
    try:
        await run_pipeline_async(spec, store, steps=SAMPLING_STEPS, progress=progress)  # the study
        async with analysis_lock or contextlib.nullcontext():  # a cancel waits for the analysis
            result = await run_to_completion(analyze_scan, store, spec.name, scan.embedder)
            result["drift"] = await run_to_completion(compare_with_previous, db, run_id, result)
    except Exception as exc:
        db.finish_scan_run(run_id, "failed", error=redact(str(exc) or type(exc).__name__))
        raise
    db.finish_scan_run(run_id, "done", result=result)
    return result


def run_scan(
    name: str,
    store_dir: str | Path,
    *,
    zoo_path: str | Path | None = None,
    scans_path: str | Path | None = None,
    new: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run one scan now (resuming its unfinished hand-started run unless `new`); its history row."""
    from hivemind.store.jobs import ServiceDB
    from hivemind.store.journal import Store

    book = load_scans(zoo_path, scans_path, store_dir)
    scan = book.get(name)
    store_path = Path(store_dir)
    with ServiceDB(store_path) as db, Store(store_path) as store:
        unfinished = [r for r in db.scan_runs(name) if r["state"] == "running" and db.job(r["study"]) is None]
        if unfinished and not new:
            run_id = unfinished[-1]["id"]
        else:
            run_id, _ = queue_scan_run(db, scan, book, store_path, as_job=False)
        asyncio.run(execute_scan_run(store, db, run_id, progress=progress))
        row = db.scan_run(run_id)
    assert row is not None
    return row


# --- history and report -------------------------------------------------------------------
