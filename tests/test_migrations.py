"""Every table family migrates through its own ordered steps; a store from the previous release opens.

`tests/fixtures/store-da49a97/hivemind.sqlite` was written by hivemind at commit da49a97 (made by
`tests/fixtures/make_store_da49a97.py`): a study sampled as the CLI does, a service job (with an
idempotency key) run by the job manager, and a finished scan run. Its store tables counted their
migrations in `PRAGMA user_version`; its job and scan tables were made with IF NOT EXISTS.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from hivemind.migrations import Family, MigrationError, adopt_if_table, applied, migrate
from hivemind.scans.drift import scan_history
from hivemind.store.jobs import JOBS, SCANS, ServiceDB
from hivemind.store.journal import MIGRATIONS, Store

FIXTURE = Path(__file__).parent / "fixtures" / "store-da49a97"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    shutil.copy(FIXTURE / "hivemind.sqlite", store_dir / "hivemind.sqlite")
    return store_dir


def _recorded(path: Path) -> dict[str, list[int]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT family, number FROM _migrations ORDER BY family, number").fetchall()
    out: dict[str, list[int]] = {}
    for family, number in rows:
        out.setdefault(family, []).append(number)
    return out


def test_a_store_from_the_previous_release_opens_upgrades_and_reads_intact(old_store: Path) -> None:
    path = old_store / "hivemind.sqlite"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1  # the fixture is what it claims
        assert "_migrations" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        before = {
            t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("studies", "samples", "service_jobs", "service_idempotency", "scan_runs")
        }

    with ServiceDB(old_store) as db, Store(old_store) as store:
        # adopted steps are recorded, not rerun (rerunning would fail: the tables exist); new ones ran
        assert _recorded(path) == {
            "store": list(range(1, len(MIGRATIONS) + 1)),
            "jobs": list(range(1, len(JOBS.steps) + 1)),
            "scans": list(range(1, len(SCANS.steps) + 1)),
        }
        assert db.rows("PRAGMA user_version")[0]["user_version"] == len(MIGRATIONS)

        assert store.studies() == ["cli-study", "svc-study", "scan-nightly-20261126T085316"]
        for study in store.studies():
            frame = store.samples_frame(study)
            assert frame.height == 12 and frame["error"].null_count() == 12
            assert all(frame["text"].str.len_chars() > 0)
            assert frame["dropped_params"].null_count() == 12  # the column added by step 2
        assert store.study_spec("cli-study").seed == 7

        job = db.job("svc-study")
        assert job is not None and job["state"] == "done" and job["runs"] == 1
        assert json.loads(job["planned_json"]) == {"mock-a": 6, "mock-b": 6}
        # the old idempotency key still replays its study instead of creating another
        assert db.create_job(
            {
                "study": "other",
                "kind": "study",
                "request_json": "{}",
                "spec_json": "{}",
                "planned_json": "{}",
                "analyze": 0,
            },
            idempotency_key="key-1",
            request_sha256="abc",
        ) == ("svc-study", False)

        history = scan_history(db, "nightly")
        (run,) = history["runs"]
        assert run["state"] == "done" and run["study"] == "scan-nightly-20261126T085316"
        assert set(run["deployments"]) == {"mock-a", "mock-b"}
        intra = run["deployments"]["mock-a"]["intra"]["estimate"]
        assert intra is not None and 0.0 < intra <= 1.0

    with sqlite3.connect(path) as db:
        after = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in before}
    assert after == before
    recorded = _recorded(path)
    ServiceDB(old_store).close()  # opening again changes nothing
    assert _recorded(path) == recorded


def test_a_new_store_records_every_family(tmp_path: Path) -> None:
    ServiceDB(tmp_path).close()
    recorded = _recorded(tmp_path / "hivemind.sqlite")
    assert recorded == {
        "store": list(range(1, len(MIGRATIONS) + 1)),
        "jobs": list(range(1, len(JOBS.steps) + 1)),
        "scans": [1],
    }
    with sqlite3.connect(tmp_path / "hivemind.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_families_in_one_file_migrate_independently(tmp_path: Path) -> None:
    db = _connect(tmp_path / "x.sqlite")
    a1 = Family("alpha", ("CREATE TABLE a (x INTEGER);",))
    b = Family("beta", ("CREATE TABLE b (y TEXT);", "ALTER TABLE b ADD COLUMN z TEXT;"))
    assert migrate(db, a1) == [1]
    assert migrate(db, b) == [1, 2]
    a2 = Family("alpha", (*a1.steps, "INSERT INTO a VALUES (42);"))  # a step appended later
    assert migrate(db, a2) == [2]
    assert migrate(db, a2) == [] and migrate(db, b) == []
    assert db.execute("SELECT x FROM a").fetchall() == [(42,)]
    assert (applied(db, "alpha"), applied(db, "beta")) == (2, 2)


def test_a_failing_step_leaves_nothing_and_names_itself(tmp_path: Path) -> None:
    db = _connect(tmp_path / "x.sqlite")
    bad = Family("alpha", ("CREATE TABLE a (x INTEGER);", "CREATE TABLE c (x); INSERT INTO nowhere VALUES (1);"))
    with pytest.raises(MigrationError, match="alpha migration 2 failed.*nowhere"):
        migrate(db, bad)
    assert applied(db, "alpha") == 1
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'c'").fetchone() is None
    assert not db.in_transaction


def test_a_newer_file_is_refused_and_tables_made_before_tracking_are_adopted(tmp_path: Path) -> None:
    db = _connect(tmp_path / "x.sqlite")
    db.execute("CREATE TABLE legacy (x INTEGER)")
    db.execute("INSERT INTO legacy VALUES (1)")
    family = Family(
        "legacy",
        ("CREATE TABLE legacy (x INTEGER);", "ALTER TABLE legacy ADD COLUMN y TEXT;"),
        adopt=adopt_if_table("legacy"),
    )
    assert migrate(db, family) == [2]  # step 1 adopted, not rerun
    assert db.execute("SELECT x, y FROM legacy").fetchall() == [(1, None)]
    with pytest.raises(MigrationError, match="legacy tables are at migration 2, newer than this hivemind"):
        migrate(db, Family("legacy", family.steps[:1]))


def test_two_connections_run_each_step_once(tmp_path: Path) -> None:
    """The second opener re-checks under the write lock (its first read saw nothing applied)."""
    first, second = _connect(tmp_path / "x.sqlite"), _connect(tmp_path / "x.sqlite")
    family = Family("alpha", ("CREATE TABLE a (x INTEGER);",))
    assert applied(second, "alpha") == 0
    assert migrate(first, family) == [1]
    assert migrate(second, family) == []


def test_an_old_embedding_cache_is_adopted_with_its_vectors(tmp_path: Path) -> None:
    """The cache written at da49a97 (CREATE TABLE IF NOT EXISTS, no `_migrations`) opens under
    today's migrations: adopted, not rebuilt, every vector still served."""
    from hivemind.vectors.embed import EmbeddingCache

    path = tmp_path / "embeddings.sqlite"
    shutil.copy(FIXTURE / "embeddings.sqlite", path)
    with sqlite3.connect(path) as db:
        before = db.execute("SELECT embedder_id, text_sha256, vector FROM embeddings ORDER BY 1, 2").fetchall()
        assert before and not db.execute("SELECT 1 FROM sqlite_master WHERE name = '_migrations'").fetchone()
    EmbeddingCache(path)
    EmbeddingCache(path)  # a second open runs nothing
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT embedder_id, text_sha256, vector FROM embeddings ORDER BY 1, 2").fetchall() == before
        assert applied(db, "embeddings") == 1


def test_no_table_relies_on_if_not_exists() -> None:
    """Schemas change through migrations only, every family (store, jobs, scans, embedding cache)."""
    root = Path(__file__).resolve().parent.parent / "hivemind"
    offenders = [
        str(p.relative_to(root))
        for p in sorted(root.rglob("*.py"))
        if re.search(
            r"CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s+IF\s+NOT\s+EXISTS",
            p.read_text(encoding="utf-8"),
            re.IGNORECASE,
        )
    ]
    assert offenders == [], offenders


FIXTURE_ZOO = """deployments:
  - {name: mock-a, provider: mock, model: mock, options: {diversity: 2}}
  - {name: mock-b, provider: mock, model: mock, options: {diversity: 4}}
"""
"""The zoo `make_store_da49a97.py` sampled the fixture with (its stores did not keep zoo entries)."""


def test_planning_the_old_study_today_gives_the_keys_it_stored(old_store: Path, tmp_path: Path) -> None:
    # A parameter added since (`novelty`) must not move the cache keys of samples taken before.
    from hivemind.sampling.requests import plan_requests
    from hivemind.sampling.stage import resolve_study

    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(FIXTURE_ZOO)
    with Store(old_store) as store:
        spec = store.study_spec("cli-study").model_copy(update={"zoo": str(zoo)})
        stored = dict(
            zip(
                store.samples_frame("cli-study").select("query_id", "deployment", "sample_index").rows(),
                store.samples_frame("cli-study")["cache_key"],
            )
        )
        queries, deployments = resolve_study(spec, store)
    planned = {
        (r.query_id, r.deployment, r.sample_index): r.cache_key for r in plan_requests(spec, queries, deployments)
    }
    assert len(stored) == 12 and planned == stored


def test_an_old_store_without_its_zoo_names_the_entries_it_needs(old_store: Path) -> None:
    # Stores written before deployments were kept cannot resume without the zoo: say which entries.
    from hivemind.sampling.stage import StudyError, resolve_study

    with Store(old_store) as store:
        spec = store.study_spec("cli-study")
        with pytest.raises(StudyError, match="needed for deployments mock-a, mock-b"):
            resolve_study(spec, store)
