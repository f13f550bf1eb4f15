"""The pipeline: spec -> sample -> export -> embed + index + analyse -> report, through one store.

`run_pipeline(spec, store, steps=...)` is the whole data flow, top to bottom; every door is a
thin layer on it: `run_study` (sample, export), `analyze_store` (analyse), `write_report`
(report, analysing first when stale), `hivemind run` (all steps on one store handle), the
service's job workers (`run_pipeline_async`, the same steps in a worker process) and the scans
(the sampling steps, then their drift step).

Steps, in order:
- `sample`: sample whatever the journal lacks (`hivemind.sampling.stage.sample_study`).
- `export`: the study's samples to `STORE/<study>/samples.parquet`; after sampling, what it did to
  `sampling.json`.
- `analyze`: embed every analysed response through the cache at `STORE/embeddings.sqlite` (a
  re-analysis embeds nothing twice), index them (FAISS) and run every analysis
  (`hivemind.analysis`); writes `STORE/<study>/analysis/<table>.parquet` and `summary.json`
  (a `hivemind.analysis.summary.Summary`).
- `report`: `STORE/<study>/report.html` from the analysis directory (without `analyze` in the
  same run, the study is analysed first when its analysis is missing or stale).

Paths come from the store's layout (`hivemind.layout`); every file is written atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.analysis.summary import Summary, SummaryError, read_summary, versions
from hivemind.inputs.spec import StudySpec, json_safe
from hivemind.inputs.zoo import judge_deployment as _judge_deployment
from hivemind.layout import (
    ANALYSIS,
    EMBEDDING_CACHE,
    REPORT,
    StoreLayout,
    atomic_write,
    atomic_write_text,
)
from hivemind.sampling.stage import StudyRun, load_spec, sample_study
from hivemind.store.journal import Store, StoreError, dropped_params

if TYPE_CHECKING:
    import polars as pl

    from hivemind.executors import Executor
    from hivemind.providers.embedders import RemoteEmbedder
    from hivemind.sampling.sampler import SamplingReport
    from hivemind.vectors.embed import Embedder

__all__ = [
    "SAMPLING_STEPS",
    "STEPS",
    "AnalysisError",
    "AnalysisOutputs",
    "PipelineRun",
    "analyze_store",
    "atomic_write",
    "atomic_write_text",
    "run_pipeline",
    "run_pipeline_async",
    "write_report",
]

STEPS = ("sample", "export", "analyze", "report")
"""Every step, in the order they run."""
SAMPLING_STEPS = ("sample", "export")
"""What `run_study` and a scan's sampling run."""
CACHE_FILE = EMBEDDING_CACHE
ANALYSIS_DIR = ANALYSIS
REPORT_FILE = REPORT


class AnalysisError(StoreError):
    """A study cannot be analysed (e.g. it has no successful response yet).

    A `StoreError` (a `HivemindError`), so the CLI reports it as a clean error message."""


@dataclass
class AnalysisOutputs:
    """What the analysis produced: where it is, the summary and the tables (polars).

    `summary` is the JSON content of `summary.json` (a dict), `typed_summary` the same as a
    `Summary`. Tables are also attributes: `outputs.pairs`, `outputs.ensemble`, ...
    """

    directory: Path
    study: str
    typed_summary: Summary = field(repr=False)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    responses: pl.DataFrame | None = field(default=None, repr=False)
    """The analysed responses (row i has vector i)."""
    vectors: np.ndarray | None = field(default=None, repr=False)
    """Their unit embeddings."""

    @property
    def summary(self) -> dict[str, Any]:
        return self.typed_summary.to_json_dict()

    def __getattr__(self, name: str) -> Any:
        tables = self.__dict__.get("tables") or {}
        if name in tables:
            return tables[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or table {name!r}")


@dataclass
class PipelineRun:
    """What `run_pipeline` did: each step's output, None for a step it did not run."""

    spec: StudySpec
    store_dir: Path
    steps: tuple[str, ...]
    sampling: SamplingReport | None = None
    samples_path: Path | None = None
    analysis: AnalysisOutputs | None = None
    report_path: Path | None = None
    imports: list[Any] | None = None
    """What the spec's `responses:` files did (`hivemind.imports.spec_responses.SourceOutcome`s)."""

    @property
    def study(self) -> str:
        return self.spec.name

    def study_run(self) -> StudyRun:
        """The sampling steps' account (`run_study`'s result)."""
        if self.sampling is None or self.samples_path is None:
            raise ValueError("the pipeline ran without the sample and export steps")
        return StudyRun(self.spec, self.store_dir, self.sampling, self.samples_path)


# --- the pipeline -----------------------------------------------------------------------------
def run_pipeline(
    spec: StudySpec | str | Path | None,
    store: Store | str | Path,
    *,
    steps: Iterable[str] = STEPS,
    progress: bool = True,
    executor: str | Executor = "local",
    ray_address: str | None = None,
    after_step: Callable[[str, PipelineRun], None] | None = None,
    replace: bool = False,
    **analysis: Any,
) -> PipelineRun:
    """Run `steps` of one study through one store handle; see the module docstring.

    `spec` is a `StudySpec`, a study already in the store (its name), a spec file, or None for
    the store's latest study. `store` is a directory or an open `Store` (left open). `executor`
    ("local", "ray" or an `Executor`, left open when given) runs the providers, the embedding,
    the per-query analyses and the pair search; `ray_address` joins a Ray cluster. `analysis`
    holds `analyze_store`'s options (embedder, threshold, n_boot, complete_only, ...);
    `progress` shows the sampling's progress bars.
    `after_step(step, run)` is called as each step ends (a door reports progress with it).
    A spec's `responses:` files are imported after its deployments are sampled (by sha256: once;
    `replace` loads a changed file again; `hivemind.imports.spec_responses`).
    """
    from hivemind.executors import open_executor

    wanted = _steps(steps)
    opened = open_executor(executor, ray_address)
    try:
        with _store_handle(store) as db:
            run = PipelineRun(_spec(spec, db), db.directory, wanted)
            if "analyze" in wanted:  # an unknown judge fails before any sampling, not after it
                _judge_deployment(run.spec, analysis.get("zoo"))
            done = after_step or (lambda step, run: None)
            if "sample" in wanted:
                if run.spec.deployments:
                    run.sampling = asyncio.run(sample_study(run.spec, db, progress=progress, executor=opened))
                if run.spec.responses:
                    from hivemind.imports.spec_responses import import_spec_responses

                    run.imports = import_spec_responses(run.spec, db, replace=replace)
                done("sample", run)
            if "export" in wanted:
                _export(db, run)
                done("export", run)
            if "analyze" in wanted:
                run.analysis = analyze(db, run.study, executor=opened, **analysis)
                done("analyze", run)
            if "report" in wanted:
                run.report_path = report(db, run.study, fresh="analyze" in wanted)
                done("report", run)
            return run
    finally:
        if opened is not executor:
            opened.close()


async def run_pipeline_async(
    spec: StudySpec,
    store: Store,
    *,
    steps: Iterable[str] = STEPS,
    progress: bool = False,
    analysis_lock: asyncio.Lock | None = None,
    before_analysis: Callable[[], bool] | None = None,
    **analysis: Any,
) -> PipelineRun:
    """`run_pipeline` on a running event loop (the service's job workers, the scans).

    Sampling runs on the loop (a cancel stops it at once; committed samples stay); export and
    analysis run in a thread that a cancel waits for (`hivemind.store.jobs.run_to_completion`).
    `before_analysis()` is asked before the analysis starts: False skips it (e.g. a cancelled
    job). `analysis_lock` keeps heavy analyses from overlapping.
    """
    from hivemind.store.jobs import run_to_completion

    wanted = _steps(steps)
    run = PipelineRun(spec, store.directory, wanted)
    if "sample" in wanted:
        run.sampling = await sample_study(spec, store, progress=progress)
    if "export" in wanted:
        await run_to_completion(_export, store, run)
    if ("analyze" in wanted or "report" in wanted) and (before_analysis is None or before_analysis()):
        async with analysis_lock or contextlib.nullcontext():
            await run_to_completion(_analyze_and_report, store, run, None, analysis)
    return run


def _export(store: Store, run: PipelineRun) -> None:
    """The samples to Parquet; after sampling, its account to `sampling.json`."""
    run.samples_path = store.export_parquet(run.study)
    if run.sampling is not None:
        atomic_write_text(store.layout.sampling_summary(run.study), json.dumps(run.study_run().summary(), indent=2))


def _analyze_and_report(store: Store, run: PipelineRun, executor: Executor | None, options: dict[str, Any]) -> None:
    if "analyze" in run.steps:
        run.analysis = analyze(store, run.study, executor=executor, **options)
    if "report" in run.steps:
        run.report_path = report(store, run.study, fresh="analyze" in run.steps)


# --- doors onto single steps (the public API keeps these names) ----------------------------
def analyze_store(
    store_dir: str | Path,
    study: str | None = None,
    embedder: str | Embedder | RemoteEmbedder | None = None,
    threshold: float = 0.9,
    **options: Any,
) -> AnalysisOutputs:
    """Embed and analyse a study of an existing store; write its tables and `summary.json`.

    `study=None` takes the latest study. See `analyze` for the options."""
    with Store(_existing_store(store_dir)) as store:
        return analyze(store, study or latest_study(store), embedder, threshold, **options)


def write_report(store_dir: str | Path, study: str | None = None) -> Path:
    """Write `STORE/<study>/report.html`, analysing the study first when it has no analysis
    or its analysis predates the samples (default analysis settings)."""
    with Store(_existing_store(store_dir)) as store:
        return report(store, study or latest_study(store))


def _steps(steps: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(steps)
    unknown = [s for s in wanted if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown pipeline step(s) {unknown} (steps: {', '.join(STEPS)})")
    return tuple(s for s in STEPS if s in wanted)


def _spec(spec: StudySpec | str | Path | None, store: Store) -> StudySpec:
    """The spec `run_pipeline` was given: a model, a spec file, a stored study, or the latest one."""
    if isinstance(spec, StudySpec):
        return spec
    if spec is None:
        return store.study_spec(latest_study(store))
    if isinstance(spec, str) and spec in store.studies():
        return store.study_spec(spec)
    if Path(spec).is_file():
        return load_spec(spec)
    return store.study_spec(str(spec))  # a clear error naming the store's studies


def _store_handle(store: Store | str | Path) -> contextlib.AbstractContextManager[Store]:
    """An open `Store` as is (left open), or one opened on a directory (closed after)."""
    return contextlib.nullcontext(store) if isinstance(store, Store) else Store(store)


def _existing_store(store_dir: str | Path) -> Path:
    if not StoreLayout(Path(store_dir)).exists():
        raise StoreError(f"{store_dir} is not a hivemind store")
    return Path(store_dir)


def latest_study(store: Store) -> str:
    """The most recently created study of a store."""
    studies = store.studies()
    if not studies:
        raise StoreError(f"{store.path} holds no study")
    return studies[-1]


def _exclusions(samples: pl.DataFrame, analysed: int, complete_only: bool = False) -> dict[str, int]:
    """How many samples were left out and why: errors, empty texts (nothing left once the
    reasoning is removed counts as empty), truncation (with `complete_only`), equal-K
    subsampling."""
    import polars as pl

    from hivemind.analysis.data import answer_texts, truncated_rows

    failed = int(samples["error"].is_not_null().sum())
    answers = answer_texts(samples["text"].cast(pl.Utf8)).fill_null("").str.strip_chars()
    usable = samples["error"].is_null() & answers.ne("")
    empty = int((samples["error"].is_null() & answers.eq("")).sum())
    truncated = 0
    if complete_only and "finish_reason" in samples.columns:
        truncated = int((usable & samples.select(truncated_rows()).to_series()).sum())
    return {
        "n_failed": failed,
        "n_empty": empty,
        "n_excluded_truncated": truncated,
        "n_dropped_for_equal_k": samples.height - failed - empty - truncated - analysed,
    }


def _embedder(spec: StudySpec, embedder: Any, progress: bool, zoo: str | Path | None = None) -> Any:
    """An embedder object as is; a name (None: the spec's) resolved through the zoo's
    `embedders:` (`zoo`, else the spec's zoo, else ./providers.yaml), else sentence-transformers."""
    from hivemind.providers.embedders import resolve_embedder

    if embedder is None or isinstance(embedder, str):
        return resolve_embedder(embedder or spec.embedder, zoo or spec.zoo, progress=progress)
    return embedder


# --- the analysis and report steps -----------------------------------------------------------
def analyze(
    store: Store,
    study: str,
    embedder: str | Embedder | RemoteEmbedder | None = None,
    threshold: float = 0.9,
    *,
    n_boot: int = 2000,
    n_perm: int = 1000,
    draws: int = 24,
    seed: int = 0,
    lexical: bool = True,
    progress: bool = False,
    use_gpu: bool | None = None,
    complete_only: bool | None = None,
    answer_checker: str | Callable[[str, str], bool] | None = None,
    executor: Executor | None = None,
    zoo: str | Path | None = None,
) -> AnalysisOutputs:
    """The `analyze` step: embed, index and analyse `study`; write its tables and summary.

    `embedder` is the name of a zoo embedder (`hivemind.providers.embedders`; looked up in `zoo`, else the
    spec's zoo), a sentence-transformers name or path, or an embedder object; None uses the study
    spec's (default all-MiniLM-L6-v2). `threshold` is the cosine for near-duplicate pairs and
    equivalence classes. `use_gpu` runs the corpus-wide near-duplicate search (FAISS) on a GPU:
    None uses one when faiss sees one, False never does, True requires it. `complete_only`
    leaves out responses cut off at max_tokens and `answer_checker` judges verifiable answers
    (`hivemind.analysis.verify.get_checker`); None takes the spec's `analysis` options. The summary
    reports the truncated share per deployment (warning above 10%) and which responses and
    checker were used. `executor` (`hivemind.executors`) runs the embedding, the per-query
    analyses and the pair search elsewhere, e.g. on Ray: the same tables.
    """
    from hivemind.analysis import analyze_responses, prepare_responses
    from hivemind.analysis.data import truncation_summary, truncation_table
    from hivemind.analysis.judge import add_judge_classes
    from hivemind.analysis.verify import get_checker
    from hivemind.executors import Executor as LocalExecutor
    from hivemind.imports.external_classes import add_external_classes
    from hivemind.inputs.zoo import judge_deployment
    from hivemind.vectors.embed import EmbeddingCache, embed_texts

    spec = store.study_spec(study)
    model = _embedder(spec, embedder, progress, zoo)  # first: a bad zoo entry fails before any work
    judge = judge_deployment(spec, zoo)  # `analysis.classes.judge`, or None
    # before the rows are read: a row written in between makes the analysis stale, never current
    fingerprint = store.samples_fingerprint(study)
    samples = store.samples_frame(study)
    conditions = [c.name for c in spec.effective_conditions()]
    complete_only = spec.analysis.complete_only if complete_only is None else complete_only
    try:
        checker = get_checker(spec.analysis.answer_checker if answer_checker is None else answer_checker)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from None
    responses, k_table = prepare_responses(
        samples, deployment_order=spec.deployments, condition_order=conditions, complete_only=complete_only
    )
    if responses.height == 0:
        raise AnalysisError(
            f"study {study!r} has no successful, non-empty{' complete' if complete_only else ''} "
            f"responses to analyse ({samples.height} rows, "
            f"{samples['error'].is_not_null().sum()} errors)"
        )
    truncation = truncation_table(samples, spec.deployments)
    truncation_entry, warnings = truncation_summary(truncation, complete_only)
    cache = EmbeddingCache(store.layout.embedding_cache)
    # a remote embedder sends its own requests; only in-process models go to the executor
    remote = getattr(model, "remote", False)  # a zoo `embedders:` entry: its tokens and cost are recorded
    computing = model if remote else (executor or LocalExecutor()).embedder(model)
    vectors = embed_texts(responses["text"].to_list(), computing, cache)
    result = analyze_responses(
        responses,
        vectors,
        deployments=spec.deployments,
        conditions=conditions,
        references=spec.references,
        threshold=threshold,
        n_boot=n_boot,
        n_perm=n_perm,
        draws=draws,
        seed=seed,
        lexical=lexical,
        use_gpu=use_gpu,
        checker=checker,
        executor=executor,
        corpus_index=spec.analysis.corpus_index,
        ensemble_k=spec.analysis.ensemble_k,
    )
    tables = dict(result.tables)
    tables["k_per_query"] = k_table
    tables["truncation"] = truncation
    tables["responses"] = responses.select(
        "row",
        "query_id",
        "category",
        "condition",
        "deployment",
        "family",
        "stage",
        "sample_index",
        *[c for c in ("cache_key", "finish_reason") if c in responses.columns],
        "text",  # the scored text (reasoning removed): the explorer shows it
        "query_text",
    )
    extra: dict[str, Any] = {}  # classes an imported file carried (NoveltyBench partition)
    add_external_classes(store, study, responses, vectors, threshold, tables, extra)
    add_judge_classes(judge, store, spec, study, responses, vectors, threshold, tables, extra)  # judge classes
    for name, frame in tables.items():
        atomic_write(store.layout.table(study, name), frame.write_parquet)
    summary = Summary.model_validate(
        json_safe(
            {
                "study": study,
                "store": str(store.directory.resolve()),
                "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "spec": spec.model_dump(mode="json"),
                "embedder": {
                    "name": getattr(model, "model_name", str(model)),
                    "id": model.embedder_id,
                    **(model.usage() if remote else {}),
                },
                "versions": versions(),
                "n_samples": samples.height,
                "samples_fingerprint": fingerprint,
                "dropped_params": dropped_params(samples),
                **_exclusions(samples, responses.height, complete_only),
                **result.summary,
                **extra,
                "truncation": truncation_entry,
                "warnings": warnings + result.summary.get("warnings", []) + extra.pop("warnings", []),
                "tables": sorted(tables),
            }
        )
    )
    # written last: a summary never describes tables that are not in place yet
    summary.write(store.layout.summary(study))
    return AnalysisOutputs(store.layout.analysis(study), study, summary, tables, responses, vectors)


def report(store: Store, study: str, *, fresh: bool = False) -> Path:
    """The `report` step: `STORE/<study>/report.html` from the study's analysis.

    Unless `fresh` (analysed in this run), the study is analysed first (default settings) when
    it has no readable analysis or its analysis predates the samples: a different
    `samples_fingerprint` (rows added, or errors retried in place: same row count, new
    `created_at`), found by one aggregate query, no sample read.
    """
    from hivemind.report import load_analysis, render_report

    store.study_spec(study)  # a clear error for an unknown study
    if not fresh:
        try:
            analysed = read_summary(store.layout.summary(study)).samples_fingerprint
            stale = analysed is None or analysed.model_dump() != store.samples_fingerprint(study)
        except SummaryError:
            stale = True
        if stale:  # never analysed, sampled (or retried) since, or an unreadable summary
            analyze(store, study)
    from hivemind.report.explorer import write_explorer

    summary, tables = load_analysis(store.layout.analysis(study))
    write_explorer(store, study, summary, tables)  # first: the report links into it
    return atomic_write_text(store.layout.report(study), render_report(summary, tables))
