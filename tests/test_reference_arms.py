"""NoveltyBench's released GPT-4o answers as four conditions of one deployment, people as a reference.

The files are the real ones shipped as package data (hivemind/data/noveltybench-gpt4o/, MIT).
Vectors come from a plain hashed bag of words (numpy, no model), so the tests check the
bookkeeping (conditions, equal footing, reference arms) and the formula, not MiniLM.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from hivemind.analysis import prepare_responses
from hivemind.analysis.conditions import conditions_view
from hivemind.analysis.data import build_groups
from hivemind.analysis.run import deployments_under_test
from hivemind.analysis.similarity import pair_similarity, query_similarity
from hivemind.imports.importer import import_responses
from hivemind.imports.spec_responses import import_spec_responses
from hivemind.inputs.queries import SHIPPED_DIR
from hivemind.store.journal import Store, StoreError
from hivemind.study import load_spec

DATA = SHIPPED_DIR / "noveltybench-gpt4o"
FILES = {
    "resampling": "gpt-4o.jsonl",
    "in-context": "gpt-4o-in-context.jsonl",
    "paraphrase": "gpt-4o-paraphrase.jsonl",
    "system-prompt": "gpt-4o-system-prompt.jsonl",
}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "noveltybench-gpt4o.yaml"


def bag_of_words(texts: list[str], dim: int = 512) -> np.ndarray:
    out = np.zeros((len(texts), dim))
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[i, zlib.crc32(word.encode()) % dim] += 1.0
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    db = Store(tmp_path_factory.mktemp("nb"))
    for condition, name in FILES.items():
        import_responses(
            DATA / name, "nb", db, deployment="gpt-4o", condition=condition, query_set="noveltybench-curated"
        )
    import_responses(DATA / "humans.jsonl", "nb", db, deployment="humans", condition="resampling", reference=True)
    return db


def test_four_files_are_four_conditions_of_one_deployment_with_humans_as_reference(store: Store) -> None:
    spec = store.study_spec("nb")
    assert [c.name for c in spec.effective_conditions()] == list(FILES)
    assert spec.deployments == ["gpt-4o", "humans"]
    assert spec.references == ["humans"] and spec.under_test() == ["gpt-4o"]
    samples = store.samples_frame("nb")
    per = samples.group_by("deployment", "condition").len().sort("deployment", "condition").rows()
    assert per == [
        ("gpt-4o", "in-context", 1000),
        ("gpt-4o", "paraphrase", 1000),
        ("gpt-4o", "resampling", 1000),
        ("gpt-4o", "system-prompt", 1000),
        ("humans", "resampling", 800),
    ]
    # equal footing: people wrote 8 per prompt, so every arm of every query keeps K = 8
    responses, k_table = prepare_responses(samples, condition_order=list(FILES))
    assert set(k_table["k"].to_list()) == {8}
    arms = responses.group_by("query_id", "deployment", "condition").len()
    assert arms.height == 100 * 5 and set(arms["len"].to_list()) == {8}


def test_importing_a_file_again_under_the_same_condition_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="already holds imported deployment 'gpt-4o' under condition 'paraphrase'"):
        import_responses(DATA / FILES["paraphrase"], "nb", store, deployment="gpt-4o", condition="paraphrase")


def test_reference_gap_closed_equals_an_independent_numpy_computation(store: Store) -> None:
    responses, _ = prepare_responses(store.samples_frame("nb"), condition_order=list(FILES))
    vectors = bag_of_words(responses["text"].to_list())
    groups = build_groups(responses)
    pairs = pair_similarity(groups, vectors)
    model_pairs = pair_similarity(deployments_under_test(groups, ["gpt-4o"]), vectors)
    table = conditions_view(pairs, query_similarity(model_pairs), list(FILES), n_boot=200, references=["humans"])

    def intra(deployment: str, condition: str) -> dict[str, float]:
        out = {}
        part = responses.filter((responses["deployment"] == deployment) & (responses["condition"] == condition))
        for (query,), rows in part.group_by(["query_id"]):
            v = vectors[rows["row"].to_numpy()]
            sims = v @ v.T
            n = len(v)
            out[query] = (sims.sum() - np.trace(sims)) / (n * (n - 1))
        return out

    base, ref = intra("gpt-4o", "resampling"), intra("humans", "resampling")
    for condition in ("in-context", "paraphrase", "system-prompt"):
        cond = intra("gpt-4o", condition)
        queries = sorted(set(base) & set(cond) & set(ref))
        b, c, r = (np.array([d[q] for q in queries]) for d in (base, cond, ref))
        expected = (b.mean() - c.mean()) / (b.mean() - r.mean())
        row = table.filter((table["condition"] == condition) & (table["deployment"] == "gpt-4o")).row(0, named=True)
        assert row["reference_gap_closed"] == pytest.approx(expected, rel=1e-9)
        assert row["reference_gap_closed_lo"] < expected < row["reference_gap_closed_hi"]
        assert row["reference"] == "humans"
    humans = table.filter(table["deployment"] == "humans").row(0, named=True)
    assert humans["is_reference"] and humans["reference_gap_closed"] is None
    baseline = table.filter((table["condition"] == "resampling") & (table["deployment"] == "gpt-4o")).row(0, named=True)
    assert baseline["reference_gap_closed"] is None


def test_the_example_spec_imports_once_and_refuses_a_changed_file(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE)
    db = Store(tmp_path / "st")
    first = import_spec_responses(spec, db)
    assert [o.imported for o in first] == [1000, 1000, 1000, 1000, 800]
    stored = db.study_spec(spec.name)
    assert [c.name for c in stored.conditions] == list(FILES) and stored.references == ["humans"]
    assert stored.samples == 8
    again = import_spec_responses(spec, db)
    assert all(o.skipped and o.imported == 0 for o in again)
    assert db.samples_frame(spec.name).height == 100 * 8 * 5  # the study analyses samples: 8 per arm
    changed = tmp_path / "humans.jsonl"
    changed.write_text("\n".join((DATA / "humans.jsonl").read_text().splitlines()[:50]) + "\n")
    sources = [s.model_copy(update={"file": str(changed)}) if s.reference else s for s in spec.responses]
    edited = spec.model_copy(update={"responses": sources})
    with pytest.raises(StoreError, match="changed since it was imported.*--replace"):
        import_spec_responses(edited, db)
    replaced = import_spec_responses(edited, db, replace=True)
    assert replaced[-1].imported == 400
    assert db.samples_frame(spec.name).filter(db.samples_frame(spec.name)["deployment"] == "humans").height == 400


def test_the_report_sentence_states_each_condition_with_its_interval(store: Store) -> None:
    from hivemind.analysis.conditions import reference_sentences

    responses, _ = prepare_responses(store.samples_frame("nb"), condition_order=list(FILES))
    vectors = bag_of_words(responses["text"].to_list())
    groups = build_groups(responses)
    model = pair_similarity(deployments_under_test(groups, ["gpt-4o"]), vectors)
    table = conditions_view(
        pair_similarity(groups, vectors), query_similarity(model), list(FILES), n_boot=200, references=["humans"]
    )
    (sentence,) = reference_sentences(table, "resampling")
    for condition in ("in-context", "paraphrase", "system-prompt"):
        row = table.filter((table["condition"] == condition) & (table["deployment"] == "gpt-4o")).row(0, named=True)
        shown = f"{condition} closes {row['reference_gap_closed']:.0%} [{row['reference_gap_closed_lo']:.0%}, "
        assert shown in sentence
    assert "reference humans" in sentence


def test_the_cli_adds_a_condition_per_file_and_marks_the_reference(tmp_path: Path) -> None:
    import subprocess
    import sys

    def hivemind(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hivemind.cli", "import", *args, "--study", "nb", "--store", str(tmp_path)],
            capture_output=True,
            text=True,
        )

    first = hivemind(str(DATA / FILES["resampling"]), "--query-set", "noveltybench-curated", "--deployment", "gpt-4o")
    assert first.returncode == 0, first.stderr
    second = hivemind(str(DATA / FILES["in-context"]), "--deployment", "gpt-4o", "--condition", "in-context")
    assert second.returncode == 0, second.stderr
    people = hivemind(str(DATA / "humans.jsonl"), "--deployment", "humans", "--condition", "default", "--reference")
    assert people.returncode == 0, people.stderr
    with Store(tmp_path) as db:
        spec = db.study_spec("nb")
    assert [c.name for c in spec.conditions] == ["default", "in-context"] and spec.references == ["humans"]


def test_reference_arms_stay_out_of_the_model_statistics(store: Store) -> None:
    from hivemind.analysis import analyze_responses

    samples = store.samples_frame("nb")
    first = samples["query_id"].unique(maintain_order=True).to_list()[:12]
    responses, _ = prepare_responses(samples.filter(samples["query_id"].is_in(first)), condition_order=list(FILES))
    vectors = bag_of_words(responses["text"].to_list())
    result = analyze_responses(
        responses, vectors, conditions=list(FILES), references=["humans"], n_boot=50, n_perm=50, draws=4, lexical=False
    )
    t, summary = result.tables, result.summary
    assert summary["references"] == ["humans"] and summary["deployments_under_test"] == ["gpt-4o"]
    assert set(t["nn_counts"]["n_deployments"].to_list()) <= {1}
    assert "humans" not in t["clusters"]["deployment"].to_list()
    assert t["hivemind_gap"]["hivemind_gap"].drop_nulls().len() == 0  # one model under test: no ensemble gap
    matrix = t["matrix"]  # the matrix shows the reference beside the model
    assert "humans" in set(matrix["deployment_a"].to_list()) | set(matrix["deployment_b"].to_list())
