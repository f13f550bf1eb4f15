"""The sampling stage: spec -> zoo + queries -> checks -> sample, resumable.

`hivemind.pipeline.run_pipeline` runs it as its first step; every door (API, CLI, service jobs,
scans) reaches it through the pipeline. `hivemind.study` re-exports these names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from hivemind.errors import HivemindError
from hivemind.inputs.queries import load_query_set, paraphrases
from hivemind.inputs.spec import LOCAL_DECODING_PARAMS, Deployment, Query, StudySpec
from hivemind.inputs.zoo import ZooError, format_validation_error, load_zoo, missing_keys
from hivemind.providers.base import Provider
from hivemind.providers.registry import create_provider
from hivemind.providers.worker import set_log_dir
from hivemind.sampling.in_context import iter_chains
from hivemind.sampling.requests import iter_requests, plan_size
from hivemind.sampling.sampler import Sampler, SamplingReport, check_resumable
from hivemind.store.journal import Store

if TYPE_CHECKING:
    from hivemind.executors import Executor


class StudyError(HivemindError, ValueError):
    """A study cannot start: bad spec, unknown deployment, missing key, missing model."""


def load_spec(path: str | Path) -> StudySpec:
    """Read a YAML or JSON study spec, naming the field of any problem."""
    spec_path = Path(path)
    if not spec_path.exists():
        raise StudyError(f"spec file {spec_path} does not exist")
    if not spec_path.is_file():
        raise StudyError(f"spec file {spec_path} is a directory, not a file")
    try:
        raw: Any = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise StudyError(f"{spec_path}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8") from None
    except OSError as exc:
        raise StudyError(f"{spec_path}: cannot be read: {exc.strerror or exc}") from None
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
    sources = []
    for source in spec.responses:  # a `responses:` file, like the query set, is relative to the spec
        path = Path(source.file)
        if not source.file.startswith("package:") and not path.is_absolute() and (spec_path.parent / path).exists():
            source = source.model_copy(update={"file": str(spec_path.parent / path)})
        sources.append(source)
    return spec.model_copy(update={**updates, "responses": sources})


def _changed_fields(stored: Deployment, now: Deployment) -> list[str]:
    """The fields of a zoo entry that would change what a stored deployment returns."""
    before = {**stored.identity(), "params": stored.params.key_data()}
    after = {**now.identity(), "params": now.params.key_data()}
    changed: list[str] = []
    for key in before:
        if key == "options":
            keys = sorted(set(before[key]) | set(after[key]))
            changed += [f"options.{k}" for k in keys if before[key].get(k) != after[key].get(k)]
        elif before[key] != after[key]:
            changed.append(key)
    return changed


def resolve_deployments(spec: StudySpec, store: Store | None = None) -> list[Deployment]:
    """The deployments a spec names: the store's copies first, the zoo only for new ones.

    Once a study has sampled a deployment, the resolved zoo entry kept in the store is the truth,
    so a store copied without its zoo file still resumes, re-plans and re-analyses. A zoo entry of
    the same name that would change the outputs (provider, model, endpoint, options, parameters) is
    refused, naming the fields; runtime settings (concurrency, timeouts, key variable) are taken
    from the zoo when it has the entry, so a lab can retune them.
    """
    stored = store.stored_deployments(spec.name) if store is not None else {}
    known = {name: d for name, d in stored.items() if d is not None}
    try:
        zoo = load_zoo(spec.zoo)
    except ZooError as exc:
        missing = [name for name in spec.deployments if name not in known]
        if not missing:
            return [known[name] for name in spec.deployments]  # a travelled store: nothing to read
        where = f"; study {spec.name!r} in the store does not hold them" if store is not None else ""
        raise StudyError(f"{exc} (needed for deployments {', '.join(missing)}{where})", field="zoo") from None
    out: list[Deployment] = []
    problems: list[str] = []
    for name in spec.deployments:
        try:
            entry = zoo.get(name)
        except ZooError as exc:
            if name in known:
                out.append(known[name])
                continue
            raise StudyError(str(exc), field=exc.field) from None
        if name in known:
            changed = _changed_fields(known[name], entry)
            if changed:
                problems.append(
                    f"deployment {name!r}: the zoo entry differs from the one study {spec.name!r} sampled "
                    f"({', '.join(changed)}); use another deployment name, or another study"
                )
        out.append(entry)
    if problems:
        raise StudyError("\n".join(problems), field="deployments")
    return out


def resolve_study(spec: StudySpec, store: Store | None = None) -> tuple[list[Query], list[Deployment]]:
    """The queries and deployments a spec names, with clear errors for unknown names.

    With `store`, a study it already holds resolves from it: its deployments as they were
    sampled, and its registered queries when the query-set file is no longer there.
    """
    deployments = resolve_deployments(spec, store)
    try:
        query_set = load_query_set(spec.query_set)
    except (HivemindError, OSError):
        # a travelled store: the queries it registered are the study's (rewordings excepted)
        kept = store.stored_queries(spec.name) if store is not None and spec.name in store.studies() else []
        if kept and not any(c.paraphrase for c in spec.conditions):
            return kept, deployments
        raise
    queries = query_set.queries
    if spec.categories is not None:
        queries = [q for q in queries if q.category in set(spec.categories)]
        if not queries:
            raise StudyError(f"no query of {query_set.name!r} is in categories {spec.categories}", field="categories")
    if spec.max_queries is not None:
        queries = queries[: spec.max_queries]
    for condition in spec.conditions:  # a missing rewording fails here, before any sampling
        if condition.paraphrase:
            needed = 1 if condition.paraphrase == "each" else int(condition.paraphrase)
            short = [q.id for q in queries if len(paraphrases(q)) < needed]
            if short:
                raise StudyError(
                    f"conditions[{condition.name}].paraphrase: {len(short)} queries of "
                    f"{query_set.name!r} have fewer than {needed} "
                    f"paraphrases (first: {short[0]!r})"
                )
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


DroppedParams = dict[tuple[str, str], tuple[str, ...]]
"""Per (deployment, condition): the parameters its requests leave out (allowed by the condition)."""


def check_params(spec: StudySpec, deployments: list[Deployment], providers: dict[str, Provider]) -> DroppedParams:
    """Check every (deployment, condition) against what its provider honours, before any request.

    A parameter the provider would ignore or reject stops the study, naming deployment, condition
    and parameter, unless the condition allows dropping it: then that cell's requests carry it in
    `dropped_params`, so it is left out of them and recorded with each row.
    """
    dropped: DroppedParams = {}
    problems: list[str] = []
    for deployment in deployments:
        provider = providers[deployment.name]
        for condition in spec.effective_conditions():
            params = deployment.params.merged(spec.params, condition.params).explicit()
            try:
                refused = provider.unsupported_params(params)
            except Exception as exc:  # e.g. a model litellm cannot route: collect, then stop
                problems.append(str(exc))
                continue
            for name in sorted(refused):
                if not condition.allows_dropping(name):
                    problems.append(
                        f"deployment {deployment.name!r}, condition {condition.name!r}: parameter "
                        f"{name}={params[name]!r} would be ignored or rejected by {deployment.provider} "
                        f"model {deployment.model!r}"
                        + (f" ({LOCAL_DECODING_PARAMS[name]})" if name in LOCAL_DECODING_PARAMS else "")
                    )
            if refused:
                dropped[(deployment.name, condition.name)] = tuple(sorted(refused))
    if problems:
        declare = (
            ""
            if spec.conditions
            else (
                "; a study without conditions can declare `conditions: [{name: default, allow_dropped_params: [...]}]`"
            )
        )
        raise StudyError(
            "the study cannot start:\n  "
            + "\n  ".join(dict.fromkeys(problems))
            + "\nremove the parameter, or name it in the condition's `allow_dropped_params` to sample "
            f"without it (then recorded with each row and in the report){declare}"
        )
    return dropped


def check_modes(spec: StudySpec, deployments: list[Deployment], providers: dict[str, Provider]) -> None:
    """Refuse, before any request, an in-context condition on a deployment that takes one prompt."""
    chained = [c.name for c in spec.effective_conditions() if c.mode == "in-context"]
    problems = [
        f"condition {name!r} is mode: in-context, but deployment {d.name!r} ({d.provider}, "
        f"mode: {d.options.get('mode', 'completion')}) takes a single prompt, not a conversation"
        for d in deployments
        if not providers[d.name].takes_conversation()
        for name in chained
    ]
    if problems:
        raise StudyError("the study cannot start:\n  " + "\n  ".join(problems))


@dataclass
class StudyRun:
    """What `run_study` returns: where things are and what sampling did (`sampling.json`)."""

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


def _has_work(store: Store, spec: StudySpec, queries: list[Query], deployments: list[Deployment]) -> bool:
    """Whether some deployment has fewer successful rows than the plan asks of it."""
    done = store.progress(spec.name)
    return any(done.get(d.name, {}).get("ok", 0) < plan_size(spec, queries) for d in deployments)


async def sample_study(
    spec: StudySpec,
    store: Store,
    *,
    progress: bool = True,
    executor: Executor | None = None,
) -> SamplingReport:
    """Sample whatever of `spec` the store does not hold yet (the resumable core).

    `executor` decides where providers run (e.g. one Ray actor per deployment); the sampler
    and the store stay here, so every result is committed by this process before it counts.
    """
    queries, deployments = resolve_study(spec, store)
    # local engines print to a log file in the store, not to the terminal, unless asked (--verbose)
    set_log_dir(None if os.environ.get("HIVEMIND_VERBOSE") else store.layout.logs)
    providers = prepare_providers(deployments)
    dropped = check_params(spec, deployments, providers)
    check_modes(spec, deployments, providers)
    check_resumable(store, spec, queries, deployments)  # refuses other parameters before anything is written
    batched = batch_deployments(spec, deployments, store)
    zoo_references = [d.name for d in deployments if d.reference and d.name not in spec.references]
    if zoo_references:  # `reference: true` in the zoo: stored with the study, as an import's --reference
        spec = spec.model_copy(update={"references": [*spec.references, *zoo_references]})
    store.register_study(spec, queries, deployments)
    if executor is not None and _has_work(store, spec, queries, deployments):  # no idle actors
        providers = executor.providers(providers)
    sampler = Sampler(
        store, providers, max_attempts=spec.max_attempts, budget_usd=spec.budget_usd, progress=progress, batch=batched
    )
    # Requests are generated lazily, one stream per deployment, and checked against the journal
    # a chunk at a time: a 10M-sample study starts at once, in flat memory.
    streams = {d.name: iter_requests(spec, queries, d, dropped) for d in deployments}
    try:
        return await sampler.run(
            streams,
            already_spent=store.total_cost(spec.name),
            totals={d.name: plan_size(spec, queries) for d in deployments},
            chains={d.name: iter_chains(spec, queries, d, dropped) for d in deployments},
        )
    finally:
        for provider in providers.values():
            await provider.aclose()


def planned_counts(spec: StudySpec) -> dict[str, int]:
    """Samples the spec asks of each deployment (raises the pipeline's errors for bad specs)."""
    queries, deployments = resolve_study(spec)
    per = len(queries) * len(spec.effective_conditions()) * spec.samples
    return {d.name: per for d in deployments}


def batch_deployments(spec: StudySpec, deployments: list[Deployment], store: Store | None = None) -> set[str]:
    """The deployments sampled through a batch API: `batch: true` in the zoo (refused where the
    provider has none), every one that has one when the spec (or `--batch`) asks, and any with
    open batches in the store (collected, never asked again live, whatever this run says)."""
    from hivemind.providers.batch_api import batch_protocol
    from hivemind.store.batches import BatchJournal

    opened = {b["deployment"] for b in BatchJournal.open_in(store) if b["study"] == spec.name} if store else set()
    chosen = set()
    for deployment in deployments:
        has = batch_protocol(deployment) is not None
        if deployment.batch and not has:
            raise StudyError(
                f"deployment {deployment.name!r} has batch: true, but {deployment.provider} ({deployment.model}) "
                "has no batch API (OpenAI's: provider openai or an OpenAI model via litellm; Anthropic's: "
                "litellm with an anthropic/ model)",
                field="batch",
            )
        if has and (deployment.batch or spec.batch or deployment.name in opened):
            chosen.add(deployment.name)
    return chosen
