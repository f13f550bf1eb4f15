"""`JournalFile`: one WAL-mode SQLite file shared by the threads of a process, with one writer
and a read connection per thread. The store (`hivemind.store.journal.Store`), the service's job
tables (`hivemind.store.jobs.ServiceDB`) and the judgment cache all open `STORE/hivemind.sqlite`
through it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self


class JournalFile:
    """A WAL-mode SQLite file shared by the threads of a process: one writer, a reader per thread.

    The store and the service's job tables both live in `STORE/hivemind.sqlite` through this.
    Writes (`transaction`, and whatever a subclass runs on `_db`) go through the one writer
    connection under `_lock`. Reads (`_rows`) go through the calling thread's own read-only
    connection (`PRAGMA query_only`), so a reader never waits on the writers' lock, nor on
    another process writing (WAL: readers see the last commit). Inside its own `transaction`
    a thread reads through the writer, so it sees what it has written but not yet committed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # never `_lock`: a new reader must not wait on a writer

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA busy_timeout=10000")
        return connection

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (the writer inside this thread's own transaction)."""
        if getattr(self._local, "depth", 0):
            return self._db
        connection: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._readers.append(connection)
            self._local.reader = connection
        return connection

    def close(self) -> None:
        """Close every connection (the writer last, checkpointing the WAL)."""
        with self._lock, self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE): all of it is committed or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._local.depth -= 1
            self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self._reader().execute(sql, tuple(args)).fetchall()
