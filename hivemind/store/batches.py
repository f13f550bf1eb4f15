"""The batch journal: which requests went into which provider batch, written before submission.

A batch moves through `prepared` (its items journaled: request -> custom_id), `uploaded` (the
input file's id), `creating` (about to ask for the batch: a crash here may have created one, so a
resume looks for it before creating another), `submitted` (the provider's batch id), and
`ingested` (every item's outcome is a sample row, committed in the same transaction as this
state) or `abandoned` (nothing of it was ever submitted, and its items are asked again). A request
whose batch is open is never put in another, so a rerun after a kill at any point resumes the
same batches and submits nothing twice.

The tables live in `STORE/hivemind.sqlite` beside the samples, as their own migration family.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hivemind.inputs.samples import SampleRequest
from hivemind.migrations import Family, migrate
from hivemind.store.journal import Store

BATCHES = Family(
    "batches",
    (
        """
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY AUTOINCREMENT, study TEXT NOT NULL, deployment TEXT NOT NULL,
        protocol TEXT NOT NULL, state TEXT NOT NULL, n_items INTEGER NOT NULL,
        input_file_id TEXT, remote_id TEXT, remote_status TEXT, error TEXT,
        created_at REAL NOT NULL, creating_at REAL, submitted_at REAL, ended_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX batches_open ON batches (study, deployment, state);
    CREATE TABLE batch_items (
        batch_id INTEGER NOT NULL REFERENCES batches (id), custom_id TEXT NOT NULL,
        query_id TEXT NOT NULL, condition TEXT NOT NULL, sample_index INTEGER NOT NULL,
        cache_key TEXT NOT NULL, body_json TEXT NOT NULL, attempt INTEGER NOT NULL,
        PRIMARY KEY (batch_id, custom_id)
    );
    """,
    ),
)
OPEN = ("prepared", "uploaded", "creating", "submitted")
"""States of a batch whose items may still come back (or must still be sent)."""


@dataclass
class Batch:
    """One journaled batch (a row of `batches`)."""

    id: int
    study: str
    deployment: str
    protocol: str
    state: str
    n_items: int
    input_file_id: str | None
    remote_id: str | None
    remote_status: str | None
    created_at: float
    creating_at: float | None

    @property
    def key(self) -> str:
        """Its name in the provider's metadata and in each custom_id."""
        return f"hivemind-b{self.id}"


@dataclass
class Item:
    """One request of a batch: its custom_id, the row it fills, and the body sent."""

    custom_id: str
    row: tuple[str, str, int]
    """(query_id, condition, sample_index)"""
    cache_key: str
    body: dict[str, Any]
    attempt: int


class BatchJournal:
    """The batch tables, through the store's own connection (so an ingest is one transaction
    with its sample rows)."""

    def __init__(self, store: Store, *, migrate_tables: bool = True) -> None:
        self.store = store
        if migrate_tables:
            with store._lock:
                migrate(store._db, BATCHES)

    def _batches(self, where: str, args: tuple[Any, ...]) -> list[Batch]:
        rows = self.store._rows(
            "SELECT id, study, deployment, protocol, state, n_items, input_file_id, remote_id, remote_status, "
            f"created_at, creating_at FROM batches WHERE {where} ORDER BY id",
            args,
        )
        return [Batch(**dict(r)) for r in rows]

    def open_batches(self, study: str, deployment: str | None = None) -> list[Batch]:
        marks = ", ".join("?" * len(OPEN))
        if deployment is None:
            return self._batches(f"study = ? AND state IN ({marks})", (study, *OPEN))
        return self._batches(f"study = ? AND deployment = ? AND state IN ({marks})", (study, deployment, *OPEN))

    def all_open(self) -> list[Batch]:
        return self._batches(f"state IN ({', '.join('?' * len(OPEN))})", OPEN)

    def batch(self, batch_id: int) -> Batch:
        return self._batches("id = ?", (batch_id,))[0]

    def items(self, batch_id: int) -> list[Item]:
        rows = self.store._rows(
            "SELECT custom_id, query_id, condition, sample_index, cache_key, body_json, attempt "
            "FROM batch_items WHERE batch_id = ? ORDER BY rowid",
            (batch_id,),
        )
        return [
            Item(
                r["custom_id"],
                (r["query_id"], r["condition"], int(r["sample_index"])),
                r["cache_key"],
                json.loads(r["body_json"]),
                int(r["attempt"]),
            )
            for r in rows
        ]

    def prepare(
        self, study: str, deployment: str, protocol: str, requests: list[tuple[SampleRequest, dict[str, Any], int]]
    ) -> Batch:
        """Journal a new batch and its items (request, body, attempt) before anything is sent."""
        now = time.time()
        with self.store.transaction() as db:
            cursor = db.execute(
                "INSERT INTO batches (study, deployment, protocol, state, n_items, created_at, updated_at) "
                "VALUES (?, ?, ?, 'prepared', ?, ?, ?)",
                (study, deployment, protocol, len(requests), now, now),
            )
            batch_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO batch_items (batch_id, custom_id, query_id, condition, sample_index, cache_key, "
                "body_json, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        batch_id,
                        f"b{batch_id}-r{i}",
                        r.query_id,
                        r.condition,
                        r.sample_index,
                        r.cache_key,
                        json.dumps(body, sort_keys=True),
                        attempt,
                    )
                    for i, (r, body, attempt) in enumerate(requests)
                ],
            )
        return self.batch(batch_id)

    def update(self, batch_id: int, db: sqlite3.Connection | None = None, **fields: Any) -> None:
        """Set columns of a batch (state, remote_id, ...); inside `db`'s transaction if given."""
        fields["updated_at"] = time.time()
        sql = f"UPDATE batches SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        if db is not None:
            db.execute(sql, (*fields.values(), batch_id))
            return
        with self.store.transaction() as own:
            own.execute(sql, (*fields.values(), batch_id))

    def adopted_remote_ids(self, protocol: str) -> set[str]:
        rows = self.store._rows(
            "SELECT remote_id FROM batches WHERE protocol = ? AND remote_id IS NOT NULL", (protocol,)
        )
        return {r["remote_id"] for r in rows}

    def covered_rows(self, batches: Iterable[Batch]) -> set[tuple[str, str, int]]:
        """The (query, condition, sample) rows that open batches will fill (bodies left unread)."""
        covered: set[tuple[str, str, int]] = set()
        for b in batches:
            rows = self.store._rows(
                "SELECT query_id, condition, sample_index FROM batch_items WHERE batch_id = ?", (b.id,)
            )
            covered.update((r["query_id"], r["condition"], int(r["sample_index"])) for r in rows)
        return covered

    @staticmethod
    def open_in(store: Store) -> list[dict[str, Any]]:
        """`summary()` of a store without writing to it (a store that never batched has no table)."""
        if not store._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'"):
            return []
        return BatchJournal(store, migrate_tables=False).summary()

    def summary(self) -> list[dict[str, Any]]:
        """Open batches for `hivemind status`: study, deployment, state, items, age."""
        now = time.time()
        return [
            {
                "study": b.study,
                "deployment": b.deployment,
                "protocol": b.protocol,
                "state": b.state,
                "remote_id": b.remote_id,
                "remote_status": b.remote_status,
                "items": b.n_items,
                "age_s": now - b.created_at,
            }
            for b in self.all_open()
        ]
