"""Bring your own responses: a file of answers becomes a study, beside (or inside) sampled ones.

Accepted layouts, one record per JSONL line / CSV row / Parquet row (JSON lists too):

* flat rows: a query (`query`/`prompt`/`question`, or an `id` matching a known query), a model
  (`model`/`deployment`/`generator`) and a response (`text`/`response`/`completion`/`output`),
  optionally `sample_index`, `category`, `answer` and a class label (`partition`/`class`);
* NoveltyBench generation files: `{"id", "prompt", "model", "generations": [...]}`, optionally
  with `partition` (one equivalence-class label per generation);
* INFINITY-CHAT-style records: `prompt_id`, `prompt`, `categories`, `model` and `response`
  (or a `responses` list), or a chat transcript whose first assistant turn is the response.

Every row keeps where it came from (file, its sha256, line) in the `imported_samples` table and
enters the ordinary journal as a successful sample of a deployment whose provider is
`imported`, so `analyze`, `report`, `status`, `export` and the service need nothing new. The whole
file is checked before anything is written, and written in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hivemind.imports.response_files import Columns, ImportFileError, Row, normalise, parse_records
from hivemind.inputs.queries import read_records
from hivemind.inputs.spec import NAME_PATTERN, Condition, StudySpec, canonical_json, sha256_hex
from hivemind.layout import atomic_write_text
from hivemind.store.journal import Store, StoreError

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Columns", "ImportFileError", "ImportLimits", "ImportResult", "import_responses", "imported_classes"]

PROVIDER = "imported"
"""The provider recorded for deployments whose responses came from a file."""
Unmatched = Literal["error", "skip", "add"]


@dataclass
class ImportResult:
    """What an import did, and what it could not match (listed, never silently dropped)."""

    study: str
    store: str
    file: str
    sha256: str
    rows: int
    imported: int
    deployments: dict[str, int]
    queries: int
    matched_by_id: int
    matched_by_text: int
    new_queries: int
    match_rate: float
    unmatched: list[dict[str, Any]] = field(default_factory=list)
    has_classes: bool = False
    k_file: int = 0
    """Most responses the file holds for one (query, deployment)."""
    k_study: int = 0
    """Responses per (query, deployment, condition) the study analyses (its `samples`): equal K."""
    conditions: dict[str, int] = field(default_factory=dict)
    """Responses imported per condition."""
    reference: bool = False
    """Whether the file's deployments are reference arms."""

    def summary(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Target:
    """The queries rows are matched against: the study's, a query set's, or none (file defines them)."""

    ids: dict[str, str] = field(default_factory=dict)  # id -> id
    texts: dict[str, str] = field(default_factory=dict)  # normalised text -> id
    known: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # id, text, category, answer


@dataclass(frozen=True)
class ImportLimits:
    """Bounds a caller (the service) puts on one import, checked before anything is written."""

    max_rows: int | None = None
    """Records the file may hold: the reader stops at the first past it (Parquet: from its metadata)."""
    max_decoded_bytes: int | None = None
    """Uncompressed size a Parquet file may decode to (from its metadata, before decoding)."""
    max_samples: int | None = None
    """Responses the study may hold after the import (with `samples_held` already there)."""
    max_queries: int | None = None
    """Distinct queries the file may name."""
    samples_held: int = 0

    def check(self, path: Path, rows: list[Row]) -> None:
        if self.max_samples is not None and self.samples_held + len(rows) > self.max_samples:
            held = f" (with the {self.samples_held} the study holds)" if self.samples_held else ""
            raise ImportFileError(
                path, f"{len(rows)} responses{held}: the limit is {self.max_samples} samples per study"
            )
        if self.max_queries is not None:
            keys = {r.query_id if r.query_id is not None else normalise(r.query_text or "") for r in rows}
            if len(keys) > self.max_queries:
                raise ImportFileError(
                    path, f"{len(keys)} distinct queries: the limit is {self.max_queries} queries per study"
                )


def _target_from_store(db: sqlite3.Connection, study: str) -> _Target:
    target = _Target()
    for r in db.execute(
        "SELECT query_id, text, category, answer FROM queries WHERE study = ? ORDER BY position", (study,)
    ).fetchall():
        target.ids[r[0]] = r[0]
        target.texts.setdefault(normalise(r[1]), r[0])
        target.known.append((r[0], r[1], r[2], r[3]))
    return target


def _target_from_set(source: str | Path) -> _Target:
    from hivemind.inputs.queries import load_query_set

    target = _Target()
    for q in load_query_set(source).queries:
        target.ids[q.id] = q.id
        target.texts.setdefault(normalise(q.text), q.id)
        target.known.append((q.id, q.text, q.category, q.answer))
    return target


def _match(
    path: Path, rows: list[Row], target: _Target, on_unmatched: Unmatched
) -> tuple[list[tuple[Row, str]], dict[str, tuple[str, str, str | None]], Counter[str], list[dict[str, Any]]]:
    """(row, query id) pairs to import, new queries, how rows matched, and the unmatched rows."""
    matched: list[tuple[Row, str]] = []
    new: dict[str, tuple[str, str, str | None]] = {}
    how: Counter[str] = Counter()
    unmatched: list[dict[str, Any]] = []
    created: dict[str, str] = {}  # normalised text -> id of a query this file defines
    for row in rows:
        if row.query_id is not None and row.query_id in target.ids:
            matched.append((row, row.query_id))
            how["id"] += 1
            continue
        key = normalise(row.query_text) if row.query_text else None
        if key is not None and key in target.texts:
            matched.append((row, target.texts[key]))
            how["text"] += 1
            continue
        if target.known and on_unmatched != "add":
            unmatched.append(
                {"where": row.where, "query_id": row.query_id, "query": row.query_text, "deployment": row.deployment}
            )
            continue
        if row.query_text is None:  # nothing to match against, and no text to make a query of
            raise ImportFileError(
                path,
                f"query id {row.query_id!r} is not a known query and the record has no query text",
                where=row.where,
                field="id",
            )
        query_id = row.query_id or created.get(normalise(row.query_text)) or "q-" + sha256_hex(row.query_text)[:12]
        created.setdefault(normalise(row.query_text), query_id)  # later rows match it by text
        first = new.setdefault(query_id, (row.query_text, row.category or "uncategorized", row.answer))
        if first[0] != row.query_text:
            raise ImportFileError(
                path, f"query id {query_id!r} was given another text earlier", where=row.where, field="query"
            )
        matched.append((row, query_id))
        how["new"] += 1
    if unmatched and on_unmatched == "error":
        shown = "; ".join(f"{u['where']} ({u['query_id'] or u['query']!r})" for u in unmatched[:5])
        raise ImportFileError(
            path,
            f"{len(unmatched)} of {len(rows)} rows match no query of the study "
            f"by id or text: {shown}"
            + (" ..." if len(unmatched) > 5 else "")
            + " (leave them out or add them as new queries: --unmatched skip|add, "
            "on_unmatched='skip'|'add')",
            field="query",
        )
    return matched, new, how, unmatched


def _indexed(path: Path, matched: list[tuple[Row, str]], default: str) -> list[tuple[Row, str, int, str]]:
    """Give every row its sample index (file order within a query, deployment and condition when
    absent) and its condition (the row's own, else `default`)."""
    counters: Counter[tuple[str, str, str]] = Counter()
    seen: dict[tuple[str, str, str, int], str] = {}
    out: list[tuple[Row, str, int, str]] = []
    for row, query_id in matched:
        condition = row.condition or default
        arm = (query_id, row.deployment, condition)
        index = row.sample_index if row.sample_index is not None else counters[arm]
        counters[arm] = max(counters[arm], index + 1)
        key = (*arm, index)
        if key in seen:
            raise ImportFileError(
                path,
                f"a second response {index} of deployment {row.deployment!r} to "
                f"query {query_id!r} under condition {condition!r} (first on {seen[key]})",
                where=row.where,
                field="sample_index",
            )
        seen[key] = row.where
        out.append((row, query_id, index, condition))
    return out


def import_responses(
    source: str | Path,
    study: str,
    store: str | Path | Store,
    *,
    columns: Columns | None = None,
    deployment: str | None = None,
    query_set: str | Path | None = None,
    condition: str | None = None,
    on_unmatched: Unmatched = "error",
    replace: bool = False,
    records: Any = None,
    source_name: str | None = None,
    reference: bool = False,
    limits: ImportLimits | None = None,
) -> ImportResult:
    """Import a response file into `study` of `store` (created when new; extended when it exists).

    Rows are matched to the study's queries (or to `query_set`'s for a new study) by id, else
    by normalised text; a new study without `query_set` takes its queries from the file.
    Unmatched rows raise (`on_unmatched="error"`), are left out and listed (`"skip"`), or become
    new queries (`"add"`). `deployment` names one deployment for a file without a model column.
    `condition` names the condition the rows belong to (a per-row `columns.condition` wins);
    a condition the study lacks is added to it. `reference` marks the file's deployments as
    reference arms (human answers): shown beside the models, left out of the model statistics.
    `replace` re-imports a (deployment, condition) that this study already holds from a file. `records`
    (position, dict) pairs stand in for the file's contents (a DataFrame); `source_name` is
    the file name recorded as provenance (default: the path). `limits` bound the file's
    rows, decoded size, responses and queries before anything is decoded past them or written.
    """
    path = Path(source)
    if records is None:
        if not path.is_file():
            raise ImportFileError(path, "a directory, not a file" if path.is_dir() else "no such file")
        lim = limits or ImportLimits()
        records = read_records(path, lim.max_rows, lim.max_decoded_bytes)
        digest = file_sha256(path)
    else:
        digest = sha256_hex(canonical_json(records))
    rows = parse_records(path, records, columns, deployment)
    if limits is not None:
        limits.check(path, rows)
    owned = store if isinstance(store, Store) else Store(store)
    try:
        return _write(
            owned,
            path,
            source_name or str(path),
            digest,
            rows,
            study,
            query_set,
            condition,
            on_unmatched,
            replace,
            reference,
        )
    finally:
        if owned is not store:
            owned.close()


def _write(
    store: Store,
    path: Path,
    source: str,
    digest: str,
    rows: list[Row],
    study: str,
    query_set: str | Path | None,
    condition: str | None,
    on_unmatched: Unmatched,
    replace: bool,
    reference: bool = False,
) -> ImportResult:
    if re.fullmatch(NAME_PATTERN, study) is None:
        raise StoreError(f"invalid study name {study!r}")
    now = time.time()
    with store.transaction() as db:
        exists = db.execute("SELECT spec_json FROM studies WHERE name = ?", (study,)).fetchone()
        spec = StudySpec.model_validate_json(exists[0]) if exists else None
        if spec is not None and query_set is not None and str(query_set) != spec.query_set:
            raise StoreError(f"study {study!r} exists: its queries are matched, not {query_set!r}")
        target = (
            _target_from_store(db, study)
            if spec
            else _target_from_set(query_set)
            if query_set is not None
            else _Target()
        )
        conditions = [c.name for c in spec.effective_conditions()] if spec else []
        if condition is None:
            if len(conditions) > 1 and not all(r.condition is not None for r in rows):
                raise StoreError(
                    f"study {study!r} has conditions {conditions}: name the one the imported responses belong to"
                )
            condition = conditions[0] if conditions else "default"
        if re.match(NAME_PATTERN, condition) is None:
            raise StoreError(f"invalid condition name {condition!r}")
        matched, new, how, unmatched = _match(path, rows, target, on_unmatched)
        indexed = _indexed(path, matched, condition)
        if not indexed:
            raise ImportFileError(
                path, f"none of its {len(rows)} rows matches a query of study {study!r}", field="query"
            )
        names = list(dict.fromkeys(r.deployment for r, _, _, _ in indexed))
        used = list(dict.fromkeys(c for _, _, _, c in indexed))
        providers = dict(db.execute("SELECT name, provider FROM deployments WHERE study = ?", (study,)).fetchall())
        held = {
            (r[0], r[1])
            for r in db.execute(
                "SELECT DISTINCT deployment, condition FROM imported_samples WHERE study = ?", (study,)
            ).fetchall()
        }
        for name in names:
            if name in providers and providers[name] != PROVIDER:
                raise StoreError(
                    f"study {study!r} already samples a deployment {name!r} "
                    f"({providers[name]}); import under another name"
                )
            for c in used:
                if (name, c) in held and not replace:
                    raise StoreError(
                        f"study {study!r} already holds imported deployment {name!r} under condition {c!r} "
                        "(import with replace=True / --replace to load it again)"
                    )
        for name in names:  # replace: the old rows of these arms go, in this transaction
            for c in used:
                for table in ("samples", "imported_samples"):
                    db.execute(
                        f"DELETE FROM {table} WHERE study = ? AND deployment = ? AND condition = ?",
                        (study, name, c),
                    )
        k = max(Counter((q, r.deployment, c) for r, q, _, c in indexed).values())
        needed = max(i for _, _, i, _ in indexed) + 1
        references = names if reference else []
        if spec is None:
            spec = StudySpec(
                name=study,
                query_set=str(query_set or path),
                deployments=names,
                samples=needed,
                conditions=[] if used == ["default"] else [Condition(name=c) for c in used],
                references=references,
            )
        else:  # a sampled study keeps its K (equal footing); an all-imported one grows to the file's
            sampled = any(p != PROVIDER for p in providers.values())
            spec = spec.model_copy(
                update={
                    "deployments": spec.deployments + [n for n in names if n not in spec.deployments],
                    "samples": spec.samples if sampled else max(spec.samples, needed),
                    "conditions": _with_conditions(spec, used),
                    "references": spec.references + [n for n in references if n not in spec.references],
                }
            )
        db.execute(
            "INSERT INTO studies (name, spec_json, created_at, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "spec_json = excluded.spec_json, updated_at = excluded.updated_at",
            (study, spec.model_dump_json(), now, now),
        )
        queries = [] if exists else list(target.known)  # a study's own queries are in place
        queries += [(q, text, category, answer) for q, (text, category, answer) in new.items()]
        first = len(target.known) if exists else 0
        db.executemany(
            "INSERT INTO queries (study, query_id, position, text, category, answer) VALUES (?, ?, ?, ?, ?, ?)",
            [(study, q, first + i, text, category, answer) for i, (q, text, category, answer) in enumerate(queries)],
        )
        models = {r.deployment: r.model for r, _, _, _ in indexed}
        db.executemany(
            "INSERT OR REPLACE INTO deployments (study, name, provider, model, family, "
            "stage, identity_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    study,
                    n,
                    PROVIDER,
                    models[n],
                    None,
                    None,
                    canonical_json({"provider": PROVIDER, "model": models[n], "source": digest}),
                )
                for n in names
            ],
        )
        samples, provenance = [], []
        for row, query_id, index, condition in indexed:
            cache_key = sha256_hex(canonical_json([PROVIDER, digest, row.where, index]))
            samples.append(
                (
                    study,
                    query_id,
                    row.deployment,
                    condition,
                    index,
                    0,
                    cache_key,
                    canonical_json({}),
                    row.text,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    0,
                    row.model,
                    now,
                )
            )
            provenance.append(
                (study, query_id, row.deployment, condition, index, source, digest, row.where, row.class_label, now)
            )
        db.executemany(
            "INSERT INTO samples (study, query_id, deployment, condition, sample_index, "
            "seed, cache_key, params_json, text, error, finish_reason, prompt_tokens, "
            "completion_tokens, cost_usd, latency_s, attempts, model, created_at) VALUES (" + ",".join("?" * 18) + ")",
            samples,
        )
        db.executemany("INSERT INTO imported_samples VALUES (" + ",".join("?" * 10) + ")", provenance)
    counts = Counter(r.deployment for r, _, _, _ in indexed)
    result = ImportResult(
        study=study,
        store=str(store.directory),
        file=source,
        sha256=digest,
        rows=len(rows),
        imported=len(indexed),
        deployments=dict(counts),
        queries=len({q for _, q, _, _ in indexed}),
        matched_by_id=how["id"],
        matched_by_text=how["text"],
        new_queries=len(new),
        match_rate=round((how["id"] + how["text"]) / len(rows), 4) if target.known else 1.0,
        unmatched=unmatched,
        has_classes=any(r.class_label is not None for r, _, _, _ in indexed),
        conditions=dict(Counter(c for _, _, _, c in indexed)),
        reference=reference,
        k_file=k,
        k_study=spec.samples,
    )
    atomic_write_text(store.layout.imports(study) / f"{digest[:16]}.json", json.dumps(result.summary(), indent=2))
    return result


def _with_conditions(spec: StudySpec, used: list[str]) -> list[Condition]:
    """The spec's conditions with those an import brings added (a study that had only its
    implicit `default` keeps it, named, so its rows stay in it)."""
    current = spec.effective_conditions()
    names = {c.name for c in current}
    added = [Condition(name=c) for c in used if c not in names]
    if not added:
        return spec.conditions
    return [*current, *added]


def imported_classes(store: Store, study: str) -> dict[tuple[str, str, str, int], str]:
    """(query, deployment, condition, sample index) -> the class label an imported file carried."""
    rows = store._rows(
        "SELECT query_id, deployment, condition, sample_index, class_label "
        "FROM imported_samples WHERE study = ? AND class_label IS NOT NULL",
        (study,),
    )
    return {(r[0], r[1], r[2], int(r[3])): r[4] for r in rows}
