"""No fixture may name a path of the machine that wrote it: a fresh machine would not have it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
ABSOLUTE = re.compile(r"(?<![\w.])/(tmp|root|home|work|Users|var|private|mnt)/[\w.-]+")


def _texts(path: Path) -> list[str]:
    """Every text a fixture holds: each cell of each table for a database, else the file itself."""
    if path.suffix in (".sqlite", ".db"):
        # immutable: the check writes nothing beside the fixture (no -shm or -wal file)
        with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return [
                str(cell)
                for table in tables
                for row in db.execute(f'SELECT * FROM "{table}"')
                for cell in row
                if isinstance(cell, str)
            ]
    return [path.read_bytes().decode("utf-8", "replace")]


def test_no_fixture_names_an_absolute_path_of_this_machine() -> None:
    files = [p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix != ".py"]
    assert files, "no fixture files found"
    found = {str(p.relative_to(FIXTURES)): m.group(0) for p in files for t in _texts(p) for m in ABSOLUTE.finditer(t)}
    assert not found, f"fixtures name absolute paths: {found}"


def test_the_check_sees_a_path_in_a_database(tmp_path: Path) -> None:
    # the check itself can fail: a database cell naming /tmp/... is found
    db_path = tmp_path / "x.sqlite"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute('INSERT INTO t VALUES (\'{"zoo": "/tmp/arch/fx/zoo.yaml"}\')')
    assert [m.group(0) for t in _texts(db_path) for m in ABSOLUTE.finditer(t)] == ["/tmp/arch"]
