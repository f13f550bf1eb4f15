"""Bring your own responses: NoveltyBench prompts and generation files, CSV, Parquet and frames
become studies that the ordinary pipeline analyses, next to sampled deployments; bad files name
file, line and field and leave the store as it was."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hivemind.imports.external_classes import adjusted_rand_index
from hivemind.imports.importer import ImportFileError, file_sha256, import_responses
from hivemind.inputs.queries import SHIPPED_DIR, load_query_set, paraphrases
from hivemind.inputs.spec import Condition, Deployment, StudySpec
from hivemind.store.journal import Store, StoreError
from tests.conftest import require

REPO = Path(__file__).resolve().parent.parent
SHARED_NOVELTYBENCH = Path("/work/shared/data/noveltybench-curated.jsonl")
FAST = {"n_boot": 50, "n_perm": 50, "draws": 4, "lexical": False}


def dump(store: Path) -> list[str]:
    """Everything in the store's journal, as SQL: equal dumps mean nothing changed."""
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        return list(db.iterdump())


def nb_generations(path: Path, queries: list[Any], model: str, k: int, *, partition: bool = True) -> Path:
    """A NoveltyBench-format generation file: one line per prompt, `k` generations, a partition."""
    lines = []
    for n, q in enumerate(queries):
        gens = [
            f"{model} answer {j % 2} to: {q.text}" if j % 2 == 0 else f"Something else entirely, {j} {n}"
            for j in range(k)
        ]
        record: dict[str, Any] = {"id": q.id, "prompt": q.text, "model": model, "generations": gens}
        if partition:
            record["partition"] = [0 if j % 2 == 0 else 1 for j in range(k)]
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mock_spec(name: str, zoo: Path, *, queries: int = 3, samples: int = 4, **extra: Any) -> StudySpec:
    return StudySpec(
        name=name,
        query_set="noveltybench-curated",
        deployments=["mock-a"],
        zoo=str(zoo),
        samples=samples,
        max_queries=queries,
        **extra,
    )


@pytest.fixture
def zoo(write_zoo: Any) -> Path:
    from conftest import mock_deployment

    return write_zoo(mock_deployment("mock-a", diversity=3))


# --- NoveltyBench prompts -----------------------------------------------------------------------


def test_real_noveltybench_prompt_file_loads_with_paraphrases() -> None:
    shipped = SHIPPED_DIR / "noveltybench-curated.jsonl"
    if SHARED_NOVELTYBENCH.exists():  # the shipped copy is the released file, byte for byte
        assert file_sha256(shipped) == file_sha256(SHARED_NOVELTYBENCH)
    query_set = load_query_set("noveltybench-curated")
    raw = [json.loads(line) for line in shipped.read_text(encoding="utf-8").splitlines()]
    assert len(query_set.queries) == len(raw) == 100
    assert [q.id for q in query_set.queries] == [r["id"] for r in raw]
    assert [q.text for q in query_set.queries] == [r["prompt"] for r in raw]
    assert [q.category for q in query_set.queries] == [r["category"] for r in raw]
    assert [paraphrases(q) for q in query_set.queries] == [r["prompt_paraphrases"] for r in raw]
    assert all(paraphrases(q) for q in query_set.queries)
    assert "MIT License" in (SHIPPED_DIR / "NOVELTYBENCH-LICENSE").read_text()
    assert "NoveltyBench" in (SHIPPED_DIR / "README.md").read_text()


def test_paraphrase_condition_sends_the_reworded_request(tmp_path: Path, zoo: Path) -> None:
    from hivemind.study import run_study

    spec = mock_spec(
        "reworded",
        zoo,
        queries=2,
        samples=2,
        conditions=[Condition(name="original"), Condition(name="p3", paraphrase=3)],
    )
    run_study(spec, tmp_path / "store", progress=False)
    with Store(tmp_path / "store") as store:
        frame = store.samples_frame("reworded")
    queries = {q.id: q for q in load_query_set("noveltybench-curated").queries[:2]}
    for row in frame.iter_rows(named=True):  # the mock counts the words it was sent
        query = queries[row["query_id"]]
        sent = query.text if row["condition"] == "original" else paraphrases(query)[2]
        assert row["prompt_tokens"] == len(sent.split()), row


def test_paraphrase_beyond_the_available_ones_fails_before_sampling(tmp_path: Path, zoo: Path) -> None:
    from hivemind.study import StudyError, run_study

    spec = mock_spec("too-far", zoo, conditions=[Condition(name="p99", paraphrase=99)])
    with pytest.raises(StudyError, match=r"conditions\[p99\]\.paraphrase"):
        run_study(spec, tmp_path / "store", progress=False)
    assert not (tmp_path / "store" / "hivemind.sqlite").exists() or not Store(tmp_path / "store").studies()


# --- imports ------------------------------------------------------------------------------------


def test_noveltybench_generation_file_with_partition(tmp_path: Path) -> None:
    queries = load_query_set("noveltybench-curated").queries[:4]
    path = nb_generations(tmp_path / "gemini.jsonl", queries, "gemini-1.5-pro", k=6)
    result = import_responses(path, "nb", tmp_path / "store", query_set="noveltybench-curated")
    assert (result.imported, result.queries, result.matched_by_id, result.match_rate) == (24, 4, 24, 1.0)
    assert result.deployments == {"gemini-1.5-pro": 24} and result.has_classes
    with Store(tmp_path / "store") as store:
        frame = store.samples_frame("nb", include_errors=False)
        assert frame.height == 24 and set(frame["provider"]) == {"imported"}
        assert frame.filter(frame["query_id"] == queries[1].id)["sample_index"].to_list() == list(range(6))
        provenance = store._rows(
            "SELECT source_file, source_sha256, source_line, class_label "
            "FROM imported_samples WHERE query_id = ? ORDER BY sample_index",
            (queries[1].id,),
        )
    assert {r["source_sha256"] for r in provenance} == {file_sha256(path)}
    assert {r["source_file"] for r in provenance} == {str(path)}
    assert [r["source_line"] for r in provenance][:2] == ["line 2 generations[0]", "line 2 generations[1]"]
    assert [r["class_label"] for r in provenance] == ["0", "1", "0", "1", "0", "1"]


def test_csv_import_through_the_cli_with_mapped_columns(tmp_path: Path) -> None:
    path = tmp_path / "answers.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "llm", "reply", "topic"])
        for q in ("Name a cat.", "Write a haiku about rain."):
            for model in ("gpt-x", "claude/y"):
                for j in range(3):
                    writer.writerow([q, model, f"{model} says {j}, with a comma", "misc"])
    store = tmp_path / "store"
    env = dict(os.environ, COLUMNS="200")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hivemind.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli(
        "import",
        str(path),
        "--study",
        "byo",
        "--store",
        str(store),
        "--query-col",
        "question",
        "--model-col",
        "llm",
        "--text-col",
        "reply",
        "--category-col",
        "topic",
    )
    assert done.returncode == 0, done.stderr
    assert "imported 12 of 12 responses" in done.stderr
    status = cli("status", "--store", str(store))
    assert "gpt-x" in status.stdout and "claude-y" in status.stdout
    exported = cli("export", "--store", str(store), "--study", "byo")
    assert exported.returncode == 0, exported.stderr
    import polars as pl

    frame = pl.read_parquet(exported.stdout.strip())
    assert frame.height == 12 and set(frame["deployment_model"]) == {"gpt-x", "claude/y"}
    assert set(frame["category"]) == {"misc"} and "with a comma" in frame["text"][0]
    again = cli(
        "import",
        str(path),
        "--study",
        "byo",
        "--store",
        str(store),
        "--query-col",
        "question",
        "--model-col",
        "llm",
        "--text-col",
        "reply",
    )
    assert again.returncode == 2 and "already holds imported deployment" in again.stderr


def test_parquet_import_with_sample_index(tmp_path: Path) -> None:
    import polars as pl

    path = tmp_path / "runs.parquet"
    pl.DataFrame(
        {
            "prompt_id": [7, 7, 8, 8],
            "prompt": ["A?", "A?", "B?", "B?"],
            "model": ["m1"] * 4,
            "response": ["a0", "a1", "b0", "b1"],
            "sample_index": [1, 0, 0, 1],
        }
    ).write_parquet(path)
    result = import_responses(path, "pq", tmp_path / "store")
    assert result.imported == 4 and result.new_queries == 2
    with Store(tmp_path / "store") as store:
        frame = store.samples_frame("pq")
    assert frame.select("query_id", "sample_index", "text").rows() == [
        ("7", 0, "a1"),
        ("7", 1, "a0"),
        ("8", 0, "b0"),
        ("8", 1, "b1"),
    ]


def test_infinity_chat_style_records(tmp_path: Path) -> None:
    path = tmp_path / "infinity.jsonl"
    records = [
        {
            "prompt_id": 101,
            "prompt": "Write a haiku about rain.",
            "categories": ["Poetry"],
            "model": "qwen/qwen3",
            "responses": ["r1", "r2"],
        },
        {
            "messages": [
                {"role": "user", "content": "Write a haiku about rain."},
                {"role": "assistant", "content": "chat reply"},
            ],
            "model": "llama",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = import_responses(path, "inf", tmp_path / "store")
    assert result.deployments == {"qwen-qwen3": 2, "llama": 1}
    with Store(tmp_path / "store") as store:
        frame = store.samples_frame("inf")
    assert set(frame["category"]) == {"Poetry"} and set(frame["query_id"]) == {"101"}, frame


# --- mixed studies ------------------------------------------------------------------------------


def test_mixed_study_analyses_imported_and_sampled_side_by_side(tmp_path: Path, zoo: Path) -> None:
    from hivemind.pipeline import analyze_store, write_report
    from hivemind.study import run_study

    store = tmp_path / "store"
    run_study(mock_spec("mixed", zoo, queries=3, samples=4), store, progress=False)
    queries = load_query_set("noveltybench-curated").queries[:3]
    path = tmp_path / "gemini.jsonl"
    lines = [  # one by id, one by reworded case and spacing only, one matching nothing
        {
            "id": queries[0].id,
            "prompt": "ignored",
            "model": "gemini",
            "generations": ["x", "y", "z", "w", "v"],
            "partition": [0, 0, 1, 1, 2],
        },
        {
            "prompt": "  " + queries[1].text.upper().rstrip(".") + "  ",
            "model": "gemini",
            "generations": ["p", "q", "r", "s"],
            "partition": [0, 1, 1, 1],
        },
        {"prompt": "A prompt the study never asked.", "model": "gemini", "generations": ["n", "o"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    before = dump(store)
    with pytest.raises(ImportFileError, match=r"gemini\.jsonl: field 'query': 2 of 11 rows match no query.*line 3"):
        import_responses(path, "mixed", store)
    assert dump(store) == before

    result = import_responses(path, "mixed", store, on_unmatched="skip")
    assert (result.matched_by_id, result.matched_by_text, result.imported) == (5, 4, 9)
    assert result.match_rate == pytest.approx(9 / 11, abs=1e-4)
    assert [u["where"] for u in result.unmatched] == ["line 3 generations[0]", "line 3 generations[1]"]
    assert json.loads((store / "mixed" / "imports" / f"{result.sha256[:16]}.json").read_text())["unmatched"]

    outputs = analyze_store(store, "mixed", **FAST)
    summary = outputs.summary
    assert summary["deployments"] == ["mock-a", "gemini"]
    pairs = outputs.pairs
    assert {"intra", "inter"} <= set(pairs["kind"])
    assert set(outputs.k_per_query["k"]) == {4}  # equal K: the study's 4, not the file's 5
    classes = outputs.external_classes
    assert classes["deployment"].to_list() == ["gemini", "gemini"] and classes["k"].to_list() == [4, 4]
    assert classes["external_classes"].to_list() == [2, 2]  # first 4 of [0,0,1,1,2] and [0,1,1,1]
    assert summary["external_classes"]["per_deployment"][0]["deployment"] == "gemini"
    html = write_report(store, "mixed").read_text()
    assert "Imported equivalence classes" in html and "adjusted Rand index" in html

    # a rerun of the sampled spec keeps the imported deployment in the study
    run_study(mock_spec("mixed", zoo, queries=3, samples=4), store, progress=False)
    with Store(store) as db:
        assert set(db.samples_frame("mixed")["deployment"]) == {"mock-a", "gemini"}


# --- bad files leave the store unchanged ---------------------------------------------------------


def _bad_parquet(path: Path) -> Path:
    import polars as pl

    pl.DataFrame({"query": ["A?", "B?"], "model": ["m", "m"], "text": ["fine", None]}).write_parquet(path)
    return path


BAD_FILES: list[tuple[str, Any, str]] = [
    (
        "bad.jsonl",
        '{"query": "A?", "model": "m", "text": "ok"}\n\n{"query": "B?", "model": "m"}\n',
        r"bad\.jsonl line 3: field 'text': no response",
    ),
    (
        "bad.csv",
        "query,model,text,sample_index\nA?,m,one,0\nA?,m,two,x\n",
        r"bad\.csv line 3: field 'sample_index': expected a whole number",
    ),
    ("bad.parquet", _bad_parquet, r"bad\.parquet row 2: field 'text': no response"),
    (
        "nb.jsonl",
        '{"id": "a", "prompt": "A?", "model": "m", "generations": ["x", "y"], "partition": [0]}\n',
        r"nb\.jsonl line 1: field 'partition': expected one class label per response \(2\)",
    ),
    (
        "dup.jsonl",
        '{"query": "A?", "model": "m", "text": "x", "sample_index": 0}\n'
        '{"query": "A?", "model": "m", "text": "y", "sample_index": 0}\n',
        r"dup\.jsonl line 2: field 'sample_index': a second response 0 .*first on line 1",
    ),
    ("nomodel.csv", "query,text\nA?,x\n", r"nomodel\.csv line 2: field 'model': no model"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_name_line_and_field_and_change_nothing(
    tmp_path: Path, name: str, content: Any, message: str
) -> None:
    store = tmp_path / "store"
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "A?", "model": "m", "text": "ok"}\n')
    import_responses(good, "existing", store)
    before = dump(store)
    path = tmp_path / name
    if callable(content):
        content(path)
    else:
        path.write_text(content, encoding="utf-8")
    for study in ("existing", "fresh"):
        with pytest.raises((ImportFileError, StoreError), match=message):
            import_responses(path, study, store, on_unmatched="add")
        assert dump(store) == before


def test_failure_inside_the_transaction_rolls_everything_back(tmp_path: Path) -> None:
    """A clash found only while writing (a sampled deployment's name) leaves no half import."""
    store = tmp_path / "store"
    path = tmp_path / "two.jsonl"
    path.write_text('{"query": "A?", "model": "fresh", "text": "x"}\n{"query": "A?", "model": "taken", "text": "y"}\n')
    with Store(store) as db:
        db.register_study(
            StudySpec(name="s", query_set="q", deployments=["taken"]),
            [],
            [Deployment(name="taken", provider="mock", model="mock")],
        )
    before = dump(store)
    with pytest.raises(StoreError, match="already samples a deployment 'taken'"):
        import_responses(path, "s", store, on_unmatched="add")
    assert dump(store) == before


# --- DataFrames and classes ---------------------------------------------------------------------


def test_analyze_a_dataframe_and_cache_its_vectors(tmp_path: Path) -> None:
    import pandas as pd

    import hivemind
    from hivemind.vectors.embed import EmbeddingCache

    rows = [
        {"query": q, "deployment": d, "text": f"{d} on {q}: take {j}" if d == "a" else f"{q} {j} {d}"}
        for q in ("Name a boat.", "Invent a holiday.")
        for d in ("a", "b")
        for j in range(3)
    ]
    outputs = hivemind.analyze(pd.DataFrame(rows), store=tmp_path / "store", **FAST)
    assert outputs.summary["deployments"] == ["a", "b"]
    assert outputs.responses.height == 12 and outputs.vectors.shape[0] == 12
    assert {"intra", "inter"} <= set(outputs.pairs["kind"])
    cached = EmbeddingCache(tmp_path / "store" / "embeddings.sqlite").count()
    assert cached >= 12
    again = hivemind.analyze(pd.DataFrame(rows[:6]), store=tmp_path / "store", **FAST)
    assert again.responses.height == 6  # the study is replaced, not merged with the last frame
    assert EmbeddingCache(tmp_path / "store" / "embeddings.sqlite").count() == cached
    with pytest.raises(ValueError, match="no text column 'reply'"):
        hivemind.analyze(pd.DataFrame(rows), text="reply")


def test_adjusted_rand_index() -> None:
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 9, 9]) == 1.0  # same partition, other names
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)  # worked by hand
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-0.5)
    sklearn = require("sklearn.metrics", "scikit-learn (a dependency of sentence-transformers)")
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 15).tolist(), rng.integers(0, 3, 15).tolist()
        assert adjusted_rand_index(a, b) == pytest.approx(sklearn.adjusted_rand_score(a, b))


def test_init_writes_starter_files_and_never_overwrites(tmp_path: Path) -> None:
    def init(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hivemind.cli", "init", *args],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert init().returncode == 0
    from hivemind.study import load_spec, resolve_study

    spec = load_spec(tmp_path / "study.yaml")
    queries, deployments = resolve_study(spec.model_copy(update={"zoo": str(tmp_path / "providers.yaml")}))
    assert [d.name for d in deployments] == spec.deployments and len(queries) == spec.max_queries
    (tmp_path / "study.yaml").write_text("mine")
    refused = init()
    assert refused.returncode == 2 and "already exist" in refused.stderr
    assert (tmp_path / "study.yaml").read_text() == "mine"
    assert init("--force").returncode == 0 and (tmp_path / "study.yaml").read_text() != "mine"


def test_reimport_needs_replace_and_then_swaps_the_deployment_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"query": "A?", "model": "m", "text": "old"}\n')
    import_responses(path, "re", tmp_path / "store")
    path.write_text('{"query": "A?", "model": "m", "text": "new one"}\n{"query": "A?", "model": "m", "text": "two"}\n')
    with pytest.raises(StoreError, match="replace"):
        import_responses(path, "re", tmp_path / "store")
    result = import_responses(path, "re", tmp_path / "store", replace=True)
    assert result.imported == 2 and (result.k_file, result.k_study) == (2, 2)  # all imported: K grows
    with Store(tmp_path / "store") as store:
        rows = store._rows("SELECT text FROM samples WHERE study = 're' ORDER BY sample_index")
        sources = store._rows("SELECT source_sha256 FROM imported_samples WHERE study = 're'")
    assert [r["text"] for r in rows] == ["new one", "two"]
    assert {r["source_sha256"] for r in sources} == {file_sha256(path)}
