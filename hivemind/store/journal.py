"""The study store: a SQLite journal (WAL) that is the truth about what has been sampled.

A finished sample is committed here before the sampler counts it, so `kill -9` at any moment
loses at most the requests in flight. One row per (study, query, deployment, condition,
sample_index) is enforced by the primary key; a successful row is never overwritten by a later
error. Tables export to Parquet through polars for analysis.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.errors import HivemindError
from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment, Query, StudySpec, canonical_json, store_name_problem
from hivemind.layout import JOURNAL, StoreLayout, atomic_write
from hivemind.migrations import Family, adopt_user_version, migrate
from hivemind.store.sqlite_file import JournalFile

if TYPE_CHECKING:
    import polars as pl

STORE_FILE = JOURNAL

# Ordered migrations of the store's tables (`hivemind.migrations`). Append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE studies (
        name TEXT PRIMARY KEY,
        spec_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE queries (
        study TEXT NOT NULL, query_id TEXT NOT NULL, position INTEGER NOT NULL,
        text TEXT NOT NULL, category TEXT NOT NULL, answer TEXT,
        PRIMARY KEY (study, query_id)
    );
    CREATE TABLE deployments (
        study TEXT NOT NULL, name TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        family TEXT, stage TEXT, identity_json TEXT NOT NULL,
        PRIMARY KEY (study, name)
    );
    CREATE TABLE samples (
        study TEXT NOT NULL, query_id TEXT NOT NULL, deployment TEXT NOT NULL,
        condition TEXT NOT NULL, sample_index INTEGER NOT NULL,
        seed INTEGER NOT NULL, cache_key TEXT NOT NULL, params_json TEXT NOT NULL,
        text TEXT, error TEXT, finish_reason TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,
        latency_s REAL, attempts INTEGER NOT NULL, model TEXT, created_at REAL NOT NULL,
        PRIMARY KEY (study, query_id, deployment, condition, sample_index)
    );
    CREATE INDEX samples_by_cache_key ON samples (cache_key);
    """,
    # Parameters left out of a row's request (JSON list) because the provider does not honour
    # them and the condition allowed it; NULL when everything was sent.
    "ALTER TABLE samples ADD COLUMN dropped_params TEXT;",
    # Where an imported response came from (`hivemind.imports.importer`): file, its sha256, line, and
    # the equivalence class the file gave it (NoveltyBench `partition`), if any.
    """
    CREATE TABLE imported_samples (
        study TEXT NOT NULL, query_id TEXT NOT NULL, deployment TEXT NOT NULL,
        condition TEXT NOT NULL, sample_index INTEGER NOT NULL,
        source_file TEXT NOT NULL, source_sha256 TEXT NOT NULL, source_line TEXT NOT NULL,
        class_label TEXT, imported_at REAL NOT NULL,
        PRIMARY KEY (study, query_id, deployment, condition, sample_index)
    );
    """,
    # The resolved zoo entry of each sampled deployment (defaults applied; a key's variable name,
    # never its value): once a study has it, the store's copy is the truth, so a store copied
    # without its zoo file still resumes, re-plans and re-analyses. NULL for rows written before.
    "ALTER TABLE deployments ADD COLUMN deployment_json TEXT;",
]


_KEYS_PER_QUERY = 2000
"""Row keys looked up per statement (4 bound values each, under SQLite's 32,766 limit)."""
_UPSERT_SAMPLE = (
    "INSERT INTO samples VALUES (" + ",".join("?" * 19) + ") "
    "ON CONFLICT DO UPDATE SET seed = excluded.seed, cache_key = excluded.cache_key, "
    "params_json = excluded.params_json, text = excluded.text, error = excluded.error, "
    "finish_reason = excluded.finish_reason, prompt_tokens = excluded.prompt_tokens, "
    "completion_tokens = excluded.completion_tokens, cost_usd = excluded.cost_usd, "
    "latency_s = excluded.latency_s, attempts = excluded.attempts, "
    "model = excluded.model, created_at = excluded.created_at, "
    "dropped_params = excluded.dropped_params "
    "WHERE samples.error IS NOT NULL"
)


_PARAMS_JSON: dict[int, tuple[Any, str]] = {}


def _params_json(params: Any) -> str:
    """Canonical JSON of a request's parameters, memoised: a study's requests share a few objects."""
    hit = _PARAMS_JSON.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    if len(_PARAMS_JSON) > 4096:
        _PARAMS_JSON.clear()
    text = canonical_json(params.key_data())
    _PARAMS_JSON[id(params)] = (params, text)  # holding `params` keeps its id from being reused
    return text


def _sample_row(
    request: SampleRequest, completion: Completion | None, error: str | None, latency_s: float, attempts: int
) -> tuple[Any, ...]:
    """The `samples` row of one final outcome (text, or the error that ended the attempts)."""
    return (
        *request.row_key,
        request.seed,
        request.cache_key,
        _params_json(request.params),
        completion.text if completion else None,
        None if completion else (error or "unknown error"),
        completion.finish_reason if completion else None,
        completion.prompt_tokens if completion else None,
        completion.completion_tokens if completion else None,
        completion.cost_usd if completion else None,
        latency_s,
        attempts,
        completion.model if completion else None,
        time.time(),
        canonical_json(list(request.dropped_params)) if request.dropped_params else None,
    )


STORE_TABLES = Family("store", tuple(MIGRATIONS), adopt=adopt_user_version, mirror_user_version=True)
"""Releases before `_migrations` counted these steps in `PRAGMA user_version`: adopted from it."""


class StoreError(HivemindError, RuntimeError):
    """The store cannot hold what was asked (e.g. the same study name with other parameters)."""


class Store(JournalFile):
    """The study journal in a store directory; safe to share between threads of one process."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.layout = StoreLayout(self.directory)
        """Every path of this store (`hivemind.layout`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        super().__init__(self.layout.journal)
        with self._lock:
            migrate(self._db, STORE_TABLES)

    # --- studies -------------------------------------------------------------------------
    def register_study(self, spec: StudySpec, queries: list[Query], deployments: list[Deployment]) -> None:
        """Record (or refresh) a study's spec, queries and deployments before sampling.

        Queries and deployments are replaced, not merged: a rerun that narrows the study leaves
        older rows in the journal (nothing sampled is thrown away) but out of its tables.
        A name that would be one of the store's own files (a spec built without validation)
        is refused before anything is written.
        """
        problem = store_name_problem(spec.name)
        if problem:
            raise StoreError(f"study name {problem}")
        now = time.time()
        with self.transaction() as db:
            db.execute("DELETE FROM queries WHERE study = ?", (spec.name,))
            # responses imported from a file (`hivemind.imports.importer`) stay beside the sampled ones
            db.execute("DELETE FROM deployments WHERE study = ? AND provider != 'imported'", (spec.name,))
            db.execute(
                "INSERT INTO studies VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "spec_json = excluded.spec_json, updated_at = excluded.updated_at",
                (spec.name, spec.model_dump_json(), now, now),
            )
            db.executemany(
                "INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?, ?, ?)",
                [(spec.name, q.id, i, q.text, q.category, q.answer) for i, q in enumerate(queries)],
            )
            db.executemany(
                "INSERT OR REPLACE INTO deployments (study, name, provider, model, family, stage, "
                "identity_json, deployment_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        spec.name,
                        d.name,
                        d.provider,
                        d.model,
                        d.family,
                        d.stage,
                        canonical_json(d.identity()),
                        d.model_dump_json(),
                    )
                    for d in deployments
                ],
            )

    def stored_deployments(self, study: str) -> dict[str, Deployment | None]:
        """The sampled deployments a study recorded, by name: the zoo entry as it was resolved, or
        None for a row written before stores kept it (then the zoo file is still needed)."""
        rows = self._rows(
            "SELECT name, deployment_json FROM deployments WHERE study = ? AND provider != 'imported'", (study,)
        )
        return {
            r["name"]: None if r["deployment_json"] is None else Deployment.model_validate_json(r["deployment_json"])
            for r in rows
        }

    def stored_queries(self, study: str) -> list[Query]:
        """The queries a study was last registered with, in order (what its spec selected)."""
        rows = self._rows(
            "SELECT query_id, text, category, answer FROM queries WHERE study = ? ORDER BY position", (study,)
        )
        return [Query(id=r["query_id"], text=r["text"], category=r["category"], answer=r["answer"]) for r in rows]

    def studies(self) -> list[str]:
        """Names of the studies in this store, oldest first."""
        return [r["name"] for r in self._rows("SELECT name FROM studies ORDER BY created_at")]

    def study_spec(self, study: str) -> StudySpec:
        """The spec a study was last run with."""
        rows = self._rows("SELECT spec_json FROM studies WHERE name = ?", (study,))
        if not rows:
            raise StoreError(f"no study named {study!r} in {self.path} (it has: {self.studies()})")
        return StudySpec.model_validate_json(rows[0]["spec_json"])

    def query_count(self, study: str) -> int:
        """How many queries a study's current spec samples."""
        return int(self._rows("SELECT COUNT(*) AS n FROM queries WHERE study = ?", (study,))[0]["n"])

    # --- samples -------------------------------------------------------------------------
    def has_samples(self, study: str) -> bool:
        """Whether the journal holds any row of `study` (a fresh study needs no resume lookups)."""
        return bool(self._rows("SELECT EXISTS(SELECT 1 FROM samples WHERE study = ?) AS e", (study,))[0]["e"])

    def existing_rows(
        self, study: str, keys: Sequence[tuple[str, str, str, int]]
    ) -> dict[tuple[str, str, str, int], tuple[str, bool]]:
        """Of these (query, deployment, condition, index) keys, those with a row -> (cache_key, succeeded).

        Each key is a primary-key lookup, so the cost follows the keys asked, not the journal's size.
        """
        found: dict[tuple[str, str, str, int], tuple[str, bool]] = {}
        for start in range(0, len(keys), _KEYS_PER_QUERY):
            part = keys[start : start + _KEYS_PER_QUERY]
            rows = self._rows(
                "WITH wanted(q, d, c, i) AS (VALUES " + ",".join(["(?,?,?,?)"] * len(part)) + ") "
                "SELECT s.query_id, s.deployment, s.condition, s.sample_index, s.cache_key, "
                "s.error IS NULL AS ok FROM wanted JOIN samples s ON s.study = ? AND "
                "s.query_id = wanted.q AND s.deployment = wanted.d AND s.condition = wanted.c "
                "AND s.sample_index = wanted.i",
                [*(value for key in part for value in key), study],
            )
            for r in rows:
                found[(r[0], r[1], r[2], r[3])] = (r[4], bool(r[5]))
        return found

    def chain_rows(
        self, study: str, query_id: str, deployment: str, condition: str
    ) -> dict[int, tuple[str, str | None]]:
        """The rows of one (query, deployment, condition): sample index -> (cache_key, text), text
        None for an error row (an in-context chain reads its committed turns back)."""
        rows = self._rows(
            "SELECT sample_index, cache_key, text, error IS NULL AS ok FROM samples WHERE study = ? "
            "AND query_id = ? AND deployment = ? AND condition = ?",
            (study, query_id, deployment, condition),
        )
        return {int(r[0]): (r[1], (r[2] or "") if r[3] else None) for r in rows}

    def record(
        self,
        request: SampleRequest,
        completion: Completion | None,
        *,
        error: str | None,
        latency_s: float,
        attempts: int,
    ) -> None:
        """Commit one finished sample (or its final error). A success is never replaced."""
        self.record_many([(request, completion, error, latency_s, attempts)])

    def record_many(
        self,
        outcomes: Iterable[tuple[SampleRequest, Completion | None, str | None, float, int]],
        *,
        extra: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Commit finished samples, each (request, completion, error, latency_s, attempts), in one
        transaction: all of them are durable when this returns, or none. A success is never replaced.
        `extra` writes more in the same transaction (a batch marked ingested with its rows).
        """
        rows = [_sample_row(*outcome) for outcome in outcomes]
        if not rows and extra is None:
            return
        with self.transaction() as db:
            db.executemany(_UPSERT_SAMPLE, rows)
            if extra is not None:
                extra(db)

    def total_cost(self, study: str) -> float:
        """Dollars recorded so far for a study (unknown costs count as zero)."""
        rows = self._rows("SELECT COALESCE(SUM(cost_usd), 0) AS c FROM samples WHERE study = ?", (study,))
        return float(rows[0]["c"])

    def progress(self, study: str) -> dict[str, dict[str, int]]:
        """Per deployment: rows that succeeded and rows that ended in an error."""
        rows = self._rows(
            "SELECT deployment, SUM(error IS NULL) AS ok, SUM(error IS NOT NULL) AS failed "
            "FROM samples WHERE study = ? GROUP BY deployment",
            (study,),
        )
        return {r["deployment"]: {"ok": int(r["ok"]), "failed": int(r["failed"])} for r in rows}

    def progress_all(self) -> dict[str, dict[str, dict[str, int]]]:
        """`progress` of every study at once: one indexed pass (the samples' key leads with the
        study), not a query per study."""
        rows = self._rows(
            "SELECT study, deployment, SUM(error IS NULL) AS ok, SUM(error IS NOT NULL) AS failed "
            "FROM samples GROUP BY study, deployment"
        )
        out: dict[str, dict[str, dict[str, int]]] = {}
        for r in rows:
            out.setdefault(r["study"], {})[r["deployment"]] = {"ok": int(r["ok"]), "failed": int(r["failed"])}
        return out

    def study_overview(self) -> dict[str, tuple[StudySpec, int]]:
        """Every study's spec and query count, oldest first, in two queries."""
        counts = {
            r["study"]: int(r["n"]) for r in self._rows("SELECT study, COUNT(*) AS n FROM queries GROUP BY study")
        }
        return {
            r["name"]: (StudySpec.model_validate_json(r["spec_json"]), counts.get(r["name"], 0))
            for r in self._rows("SELECT name, spec_json FROM studies ORDER BY created_at")
        }

    # --- tables --------------------------------------------------------------------------
    def samples_frame(self, study: str, *, include_errors: bool = True) -> pl.DataFrame:
        """The samples of a study's current spec, joined with query and deployment metadata.

        Rows outside the spec (a narrowed rerun: fewer samples, other conditions) stay in the
        journal but are not returned, so analyses never mix two versions of a study.
        """
        import polars as pl

        current, args = self._current_rows(study)
        rows = self._rows(
            "SELECT s.study, s.query_id, q.category, q.text AS query_text, q.answer, s.deployment, "
            "d.provider, d.model AS deployment_model, d.family, d.stage, s.condition, "
            "s.sample_index, s.seed, s.cache_key, s.params_json, s.text, s.error, "
            "s.finish_reason, s.prompt_tokens, s.completion_tokens, s.cost_usd, s.latency_s, "
            "s.attempts, s.model, s.created_at, s.dropped_params "
            + current
            + ("" if include_errors else " AND s.error IS NULL")
            + " ORDER BY q.position, s.deployment, s.condition, s.sample_index",
            args,
        )
        schema = {
            "study": pl.Utf8,
            "query_id": pl.Utf8,
            "category": pl.Utf8,
            "query_text": pl.Utf8,
            "answer": pl.Utf8,
            "deployment": pl.Utf8,
            "provider": pl.Utf8,
            "deployment_model": pl.Utf8,
            "family": pl.Utf8,
            "stage": pl.Utf8,
            "condition": pl.Utf8,
            "sample_index": pl.Int64,
            "seed": pl.Int64,
            "cache_key": pl.Utf8,
            "params_json": pl.Utf8,
            "text": pl.Utf8,
            "error": pl.Utf8,
            "finish_reason": pl.Utf8,
            "prompt_tokens": pl.Int64,
            "completion_tokens": pl.Int64,
            "cost_usd": pl.Float64,
            "latency_s": pl.Float64,
            "attempts": pl.Int64,
            "model": pl.Utf8,
            "created_at": pl.Float64,
            "dropped_params": pl.Utf8,
        }
        return pl.DataFrame([dict(r) for r in rows], schema=schema, orient="row")

    def samples_fingerprint(self, study: str) -> dict[str, Any]:
        """What an analysis of `study` would be computed from, by one aggregate query: successful
        rows, all rows, latest write time (the rows of `samples_frame`, none of them read).

        A retried error is updated in place (the row count does not change, its `created_at`
        does), so the count alone cannot tell a stale analysis from a current one.
        """
        current, args = self._current_rows(study)
        row = self._rows(
            "SELECT COALESCE(SUM(s.error IS NULL), 0) AS ok, COUNT(*) AS n, MAX(s.created_at) AS latest " + current,
            args,
        )[0]
        return {
            "n_ok": int(row["ok"]),
            "n_rows": int(row["n"]),
            "max_created_at": None if row["latest"] is None else float(row["latest"]),
        }

    def _current_rows(self, study: str) -> tuple[str, tuple[Any, ...]]:
        """FROM ... WHERE of the rows of a study's current spec (joined with its queries and
        deployments), and its arguments."""
        spec = self.study_spec(study)
        conditions = [c.name for c in spec.effective_conditions()]
        return (
            "FROM samples s JOIN queries q ON q.study = s.study AND q.query_id = s.query_id "
            "JOIN deployments d ON d.study = s.study AND d.name = s.deployment "
            "WHERE s.study = ? AND s.sample_index < ? AND s.condition IN (" + ",".join("?" * len(conditions)) + ")",
            (study, spec.samples, *conditions),
        )

    def export_parquet(self, study: str, path: str | Path | None = None) -> Path:
        """Write the study's samples to Parquet (default `STORE/<study>/samples.parquet`)."""
        frame = self.samples_frame(study)
        return atomic_write(Path(path) if path else self.layout.samples(study), frame.write_parquet)


def dropped_params(samples: pl.DataFrame) -> list[dict[str, Any]]:
    """Per (deployment, condition) of a `samples_frame`: the parameters its rows were sampled
    without and how many rows that is; empty when every parameter was sent."""
    frame = samples.drop_nulls("dropped_params")
    counts = frame.group_by("deployment", "condition", "dropped_params", maintain_order=True).len()
    return [
        {
            "deployment": r["deployment"],
            "condition": r["condition"],
            "params": json.loads(r["dropped_params"]),
            "rows": r["len"],
        }
        for r in counts.iter_rows(named=True)
    ]
