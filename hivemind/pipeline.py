"""Store -> embed -> analyze -> report: the one pipeline behind the API, the CLI and the service.

`analyze_store` reads a study's samples from the store, embeds every analysed response through
the `EmbeddingCache` at `STORE/embeddings.sqlite` (a re-analysis embeds nothing twice), runs
every analysis (`hivemind.analysis`) and writes `STORE/<study>/analysis/<table>.parquet` and
`summary.json`. `write_report` turns that directory into `STORE/<study>/report.html`.

The REST service serves these files while they are being rewritten, so every one of them is
written to a temporary name in its own directory and renamed into place (`atomic_write`): a
reader sees the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.spec import json_safe
from hivemind.store import Store, StoreError, dropped_params

if TYPE_CHECKING:
    import polars as pl

    from hivemind.embed import Embedder
    from hivemind.executors import Executor

CACHE_FILE = "embeddings.sqlite"
ANALYSIS_DIR = "analysis"
REPORT_FILE = "report.html"
KEY_PACKAGES = ("numpy", "polars", "scipy", "torch", "transformers", "sentence-transformers", "faiss-cpu",
                "faiss-gpu-cu12", "matplotlib", "sacrebleu", "pydantic", "litellm", "llama-cpp-python")


class AnalysisError(StoreError):
    """A study cannot be analysed (e.g. it has no successful response yet).

    A `StoreError`, so the CLI reports it as a clean error message."""


@dataclass
class AnalysisOutputs:
    """What `analyze_store` produced: where it is, the summary and the tables (polars).

    Tables are also attributes: `outputs.pairs`, `outputs.ensemble`, `outputs.matrix`, ...
    """

    directory: Path
    study: str
    summary: dict[str, Any] = field(repr=False)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    responses: pl.DataFrame | None = field(default=None, repr=False)
    """The analysed responses (row i has vector i)."""
    vectors: np.ndarray | None = field(default=None, repr=False)
    """Their unit embeddings."""

    def __getattr__(self, name: str) -> Any:
        tables = self.__dict__.get("tables") or {}
        if name in tables:
            return tables[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or table {name!r}")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write `path` atomically: `write(tmp)` fills a temporary file in the same directory,
    which `os.replace` then puts in place (a rename on one file system: readers see the old
    file or the new one). On error the temporary file is removed and `path` is untouched.

    The temporary name is hidden and ends in `.tmp`, so a `*.parquet` glob never picks it up.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # created by `write`: usual mode
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def samples_fingerprint(samples: pl.DataFrame) -> dict[str, Any]:
    """What an analysis was computed from: successful rows, all rows, latest write time.

    A retried error is updated in place (the row count does not change, its `created_at`
    does), so the count alone cannot tell a stale analysis from a current one.
    """
    import polars as pl

    latest = samples["created_at"].max() if "created_at" in samples.columns and samples.height else None
    return {
        "n_ok": int(samples.filter(pl.col("error").is_null()).height),
        "n_rows": samples.height,
        "max_created_at": None if latest is None else float(latest),  # type: ignore[arg-type]
    }


def versions() -> dict[str, str]:
    """hivemind, Python and the installed key packages (not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    import hivemind

    out = {"hivemind": hivemind.__version__, "python": platform.python_version()}
    for package in KEY_PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


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
    return {"n_failed": failed, "n_empty": empty, "n_excluded_truncated": truncated,
            "n_dropped_for_equal_k": samples.height - failed - empty - truncated - analysed}


def _embedder(spec_name: str, embedder: Any, progress: bool) -> Embedder:
    from hivemind.embed import Embedder

    if embedder is None or isinstance(embedder, str):
        return Embedder(embedder or spec_name, progress=progress)
    return embedder


def analyze_store(
    store_dir: str | Path,
    study: str | None = None,
    embedder: str | Embedder | None = None,
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
) -> AnalysisOutputs:
    """Embed and analyse a study; write its tables (Parquet) and `summary.json`.

    `study=None` takes the latest study in the store. `embedder` is a sentence-transformers
    name or path, or an `Embedder`; None uses the study spec's (default all-MiniLM-L6-v2).
    `threshold` is the cosine for near-duplicate pairs and equivalence classes. `use_gpu`
    runs the corpus-wide near-duplicate search (FAISS) on a GPU: None uses one when faiss
    sees one, False never does, True requires it. `complete_only` leaves out responses cut off
    at max_tokens and `answer_checker` judges verifiable answers (`hivemind.verify.get_checker`);
    None takes the spec's `analysis` options. The summary reports the truncated share per
    deployment (warning above 10%) and which responses and checker were used. `executor`
    (`hivemind.executors`) runs the embedding, the per-query analyses and the pair search
    elsewhere, e.g. on Ray: the same tables.
    """
    from hivemind.analysis import analyze_responses, prepare_responses
    from hivemind.analysis.data import truncation_summary, truncation_table
    from hivemind.embed import EmbeddingCache, embed_texts
    from hivemind.external_classes import add_external_classes
    from hivemind.verify import get_checker
    from hivemind.executors import Executor as LocalExecutor

    store_dir = Path(store_dir)
    if not (store_dir / "hivemind.sqlite").exists():
        raise StoreError(f"{store_dir} is not a hivemind store")
    with Store(store_dir) as store:
        study = study or latest_study(store)
        spec = store.study_spec(study)
        samples = store.samples_frame(study)
    conditions = [c.name for c in spec.effective_conditions()]
    complete_only = spec.analysis.complete_only if complete_only is None else complete_only
    try:
        checker = get_checker(spec.analysis.answer_checker if answer_checker is None else answer_checker)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from None
    responses, k_table = prepare_responses(samples, deployment_order=spec.deployments, condition_order=conditions,
                                           complete_only=complete_only)
    if responses.height == 0:
        raise AnalysisError(f"study {study!r} has no successful, non-empty{' complete' if complete_only else ''} "
                            f"responses to analyse ({samples.height} rows, "
                            f"{samples['error'].is_not_null().sum()} errors)")
    truncation = truncation_table(samples, spec.deployments)
    truncation_entry, warnings = truncation_summary(truncation, complete_only)
    model = _embedder(spec.embedder, embedder, progress)
    cache = EmbeddingCache(store_dir / CACHE_FILE)
    vectors = embed_texts(responses["text"].to_list(), (executor or LocalExecutor()).embedder(model), cache)
    result = analyze_responses(
        responses, vectors, deployments=spec.deployments, conditions=conditions, threshold=threshold,
        n_boot=n_boot, n_perm=n_perm, draws=draws, seed=seed, lexical=lexical, use_gpu=use_gpu,
        checker=checker,
        executor=executor,
    )
    tables = dict(result.tables)
    tables["k_per_query"] = k_table
    tables["truncation"] = truncation
    tables["responses"] = responses.select(
        "row", "query_id", "category", "condition", "deployment", "family", "stage", "sample_index",
        *[c for c in ("cache_key", "finish_reason") if c in responses.columns],
    )
    extra: dict[str, Any] = {}  # classes an imported file carried (NoveltyBench partition)
    add_external_classes(store_dir, study, responses, vectors, threshold, tables, extra)
    directory = store_dir / study / ANALYSIS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        atomic_write(directory / f"{name}.parquet", frame.write_parquet)
    summary = {
        "study": study,
        "store": str(store_dir.resolve()),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": spec.model_dump(mode="json"),
        "embedder": {"name": getattr(model, "model_name", str(model)), "id": model.embedder_id},
        "versions": versions(),
        "n_samples": samples.height,
        "samples_fingerprint": samples_fingerprint(samples),
        "dropped_params": dropped_params(samples),
        **_exclusions(samples, responses.height, complete_only),
        **result.summary,
        **extra,
        "truncation": truncation_entry,
        "warnings": warnings + result.summary.get("warnings", []),
        "tables": sorted(tables),
    }
    summary = json_safe(summary)
    # written last: a summary never describes tables that are not in place yet
    atomic_write_text(directory / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    return AnalysisOutputs(directory, study, summary, tables, responses, vectors)


def write_report(store_dir: str | Path, study: str | None = None) -> Path:
    """Write `STORE/<study>/report.html`, analysing the study first when it has no analysis
    or its analysis predates the samples (default analysis settings).

    Up to date means the same `samples_fingerprint`: rows added, and errors retried in place
    (same row count, new `created_at`), both make the analysis stale.
    """
    from hivemind.report import load_analysis, render_report

    store_dir = Path(store_dir)
    with Store(store_dir) as store:
        study = study or latest_study(store)
        store.study_spec(study)  # a clear error for an unknown study
        fingerprint = samples_fingerprint(store.samples_frame(study))
    directory = store_dir / study / ANALYSIS_DIR
    summary_path = directory / "summary.json"
    stale = True
    if summary_path.exists():
        try:
            stale = json.loads(summary_path.read_text()).get("samples_fingerprint") != fingerprint
        except (OSError, ValueError):
            stale = True
    if stale:  # never analysed, or sampled (or retried) since
        analyze_store(store_dir, study)
    summary, tables = load_analysis(directory)
    return atomic_write_text(store_dir / study / REPORT_FILE, render_report(summary, tables))
