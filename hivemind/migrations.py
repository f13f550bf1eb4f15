"""Ordered, append-only schema migrations, one list per table family, several families per file.

Each family (the store's tables, the job tables, the scan tables, the embedding cache) keeps its
own list of SQL scripts; `_migrations(family, number)` records which have run in that SQLite file,
so families that share a file migrate independently (`PRAGMA user_version` could track only
one). Never edit or reorder a step that has shipped: append a new one.

A file written before a family was tracked is adopted, not rebuilt: `Family.adopt` says how many
of its steps the file already holds (the store reads its old `user_version`; the job and scan
tables look for their first table), and those are recorded without running them again.

A family is declared once beside the code that owns its tables and migrated when a connection
opens (`store.STORE_TABLES`, `jobs.JOBS` / `jobs.SCANS`, `embed.EMBEDDING_TABLES`)::

    EMBEDDING_TABLES = Family("embeddings", (SCHEMA_V1,), adopt=adopt_if_table("embeddings"))
    migrate(connection, EMBEDDING_TABLES)
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from hivemind.errors import HivemindError

TABLE = "_migrations"
_CREATE = (
    f"CREATE TABLE {TABLE} (family TEXT NOT NULL, number INTEGER NOT NULL, "
    "applied_at REAL NOT NULL, PRIMARY KEY (family, number))"
)


class MigrationError(HivemindError, RuntimeError):
    """A file holds a newer schema than this hivemind knows, or a migration step failed."""


@dataclass(frozen=True)
class Family:
    """A named, ordered list of SQL scripts; step n (1-based) is `steps[n - 1]`."""

    name: str
    steps: tuple[str, ...]
    adopt: Callable[[sqlite3.Connection], int] | None = None
    """For a file made before this family was tracked: how many steps it already holds."""
    mirror_user_version: bool = False
    """Also keep `PRAGMA user_version` equal to the steps applied (the store did, so releases
    that read only `user_version` do not rerun steps on a file upgraded here)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"family name {self.name!r}: lowercase letters, digits and _ only")


def adopt_if_table(table: str, steps: int = 1) -> Callable[[sqlite3.Connection], int]:
    """An `adopt` for tables once made with IF NOT EXISTS: `steps` are there when `table` is."""

    def adopt(connection: sqlite3.Connection) -> int:
        return steps if has_table(connection, table) else 0

    return adopt


def adopt_user_version(connection: sqlite3.Connection) -> int:
    """An `adopt` for a family that counted its steps in `PRAGMA user_version`."""
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def has_table(connection: sqlite3.Connection, table: str) -> bool:
    return (
        connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        is not None
    )


def applied(connection: sqlite3.Connection, family: str) -> int:
    """How many steps of `family` this file has run (0 for a new file)."""
    if not has_table(connection, TABLE):
        return 0
    row = connection.execute(f"SELECT MAX(number) FROM {TABLE} WHERE family = ?", (family,)).fetchone()
    return int(row[0] or 0)


def statements(script: str) -> list[str]:
    """A script cut into complete SQL statements (`executescript` would commit our transaction).

    Cut at each `;` that ends a statement (`sqlite3.complete_statement`), so a `;` inside a
    string or a trigger's body does not cut it.
    """
    out, start = [], 0
    for end, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            if script[start:end].strip():
                out.append(script[start : end + 1].strip())
            start = end + 1
    if script[start:].strip():
        out.append(script[start:].strip() + ";")
    return out


def migrate(connection: sqlite3.Connection, family: Family) -> list[int]:
    """Run the steps of `family` this file lacks, each in its own transaction; their numbers.

    The connection must not be inside a transaction (any `isolation_level` works: each step
    opens its own). Each step is checked again under the write lock, so two processes opening
    one file run it once.
    """
    if connection.in_transaction:
        raise MigrationError(f"{family.name}: migrate() needs a connection outside a transaction")
    done = applied(connection, family.name)
    if done == len(family.steps) and done > 0:
        return []  # the common case: nothing to do, no write lock taken
    ran: list[int] = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        if not has_table(connection, TABLE):
            connection.execute(_CREATE)
        done = applied(connection, family.name)
        if done == 0 and family.adopt is not None:
            done = min(family.adopt(connection), len(family.steps))
            connection.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?)", [(family.name, n, time.time()) for n in range(1, done + 1)]
            )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    if done > len(family.steps):
        raise MigrationError(
            f"{family.name} tables are at migration {done}, newer than this "
            f"hivemind knows ({len(family.steps)}); upgrade hivemind"
        )
    for number in range(done + 1, len(family.steps) + 1):
        connection.execute("BEGIN IMMEDIATE")
        try:
            if applied(connection, family.name) < number:  # another process may have run it
                for statement in statements(family.steps[number - 1]):
                    connection.execute(statement)
                connection.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", (family.name, number, time.time()))
                if family.mirror_user_version:
                    connection.execute(f"PRAGMA user_version = {number}")
                ran.append(number)
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            connection.execute("ROLLBACK")
            raise MigrationError(f"{family.name} migration {number} failed: {exc}") from exc
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return ran
