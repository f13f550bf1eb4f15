"""One study end to end: spec -> zoo + queries -> checks -> sample -> export.

The Python API, the CLI, the REST service and the scheduler all call `run_study`; none of them
holds pipeline logic of its own.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from hivemind.providers.base import Provider, create_provider
from hivemind.queries import load_query_set
from hivemind.sampling import Sampler, SamplingReport, missing_requests, plan_requests
from hivemind.spec import Deployment, Query, StudySpec
from hivemind.store import Store
from hivemind.zoo import ZooError, format_validation_error, load_zoo, missing_keys

if TYPE_CHECKING:
    from hivemind.executors import Executor


class StudyError(ValueError):
    """A study cannot start: bad spec, unknown deployment, missing key, missing model."""


def load_spec(path: str | Path) -> StudySpec:
    """Read a YAML or JSON study spec, naming the field of any problem."""
    spec_path = Path(path)
    if not spec_path.exists():
        raise StudyError(f"spec file {spec_path} does not exist")
    try:
        raw: Any = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as exc:
        raise StudyError(f"{spec_path}: not valid YAML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{spec_path}: expected a mapping of study fields")
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise StudyError(format_validation_error(str(spec_path), exc)) from None
    # Relative paths in a spec are relative to the spec file, not to the working directory.
    updates: dict[str, str] = {}
    for field in ("query_set", "zoo"):
        value = getattr(spec, field)
        if value and not Path(value).is_absolute() and (spec_path.parent / value).exists():
            updates[field] = str(spec_path.parent / value)
    return spec.model_copy(update=updates)


def resolve_study(spec: StudySpec) -> tuple[list[Query], list[Deployment]]:
    """The queries and deployments a spec names, with clear errors for unknown names."""
    try:
        zoo = load_zoo(spec.zoo)
        deployments = zoo.select(spec.deployments)
    except ZooError as exc:
        raise StudyError(str(exc)) from None
    query_set = load_query_set(spec.query_set)
    queries = query_set.queries
    if spec.categories is not None:
        queries = [q for q in queries if q.category in set(spec.categories)]
        if not queries:
            raise StudyError(f"no query of {query_set.name!r} is in categories {spec.categories}")
    if spec.max_queries is not None:
        queries = queries[: spec.max_queries]
    return queries, deployments


def prepare_providers(deployments: list[Deployment]) -> dict[str, Provider]:
    """Create every provider and run its cheap checks, reporting all problems at once."""
    problems = missing_keys(deployments)
    providers: dict[str, Provider] = {}
    for deployment in deployments:
        try:
            provider = create_provider(deployment)
            if not deployment.api_key_env:
                provider.check_ready()
            providers[deployment.name] = provider
        except Exception as exc:  # collect, then fail before any sampling starts
            problems.append(str(exc))
    if problems:
        raise StudyError("the study cannot start:\n  " + "\n  ".join(problems))
    return providers


@dataclass
class StudyRun:
    """What `run_study` returns: where things are and what sampling did."""

    spec: StudySpec
    store_dir: Path
    sampling: SamplingReport
    samples_path: Path

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the run."""
        report = self.sampling
        return {
            "study": self.spec.name,
            "store": str(self.store_dir),
            "planned": report.planned + report.skipped,
            "already_sampled": report.skipped,
            "sampled_now": report.sampled,
            "succeeded": dict(report.succeeded),
            "failed": dict(report.failed),
            "retries": report.retries,
            "cost_usd": round(report.cost_usd, 6),
            "stopped_by_budget": report.stopped_by_budget,
            "elapsed_s": round(report.elapsed_s, 3),
            "samples_parquet": str(self.samples_path),
        }


async def sample_study(
    spec: StudySpec, store: Store, *, progress: bool = True, executor: Executor | None = None,
) -> SamplingReport:
    """Sample whatever of `spec` the store does not hold yet (the resumable core).

    `executor` decides where providers run (e.g. one Ray actor per deployment); the sampler
    and the store stay here, so every result is committed by this process before it counts.
    """
    queries, deployments = resolve_study(spec)
    providers = prepare_providers(deployments)
    planned = plan_requests(spec, queries, deployments)
    todo = missing_requests(store, planned)  # refuses other parameters before anything is written
    store.register_study(spec, queries, deployments)
    if executor is not None and todo:
        providers = executor.providers(providers)
    sampler = Sampler(store, providers, max_attempts=spec.max_attempts,
                      budget_usd=spec.budget_usd, progress=progress)
    try:
        report = await sampler.run(todo, already_spent=store.total_cost(spec.name))
    finally:
        for provider in providers.values():
            await provider.aclose()
    report.skipped = len(planned) - len(todo)
    return report


def run_study(
    spec: StudySpec | str | Path, store_dir: str | Path, *, progress: bool = True,
    executor: str | Executor = "local", ray_address: str | None = None,
) -> StudyRun:
    """Sample a study into `store_dir` (resuming if it was interrupted) and export Parquet.

    `executor="ray"` samples through Ray actors: a local Ray instance, or the cluster at
    `ray_address`. An `Executor` instance is used as is (and left open for the caller).
    """
    from hivemind.executors import open_executor

    study_spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    opened = open_executor(executor, ray_address)
    try:
        with Store(store_dir) as store:
            report = asyncio.run(sample_study(study_spec, store, progress=progress, executor=opened))
            samples_path = store.export_parquet(study_spec.name)
    finally:
        if opened is not executor:
            opened.close()
    run = StudyRun(study_spec, Path(store_dir), report, samples_path)
    summary_path = Path(store_dir) / study_spec.name / "sampling.json"
    summary_path.write_text(json.dumps(run.summary(), indent=2))
    return run
