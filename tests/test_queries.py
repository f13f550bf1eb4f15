"""Query-set loading: shipped sets are usable, every accepted format round-trips, bad files fail
with the file, line and field named."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hivemind.inputs.queries import (
    SHIPPED_DIR,
    QueryFileError,
    list_shipped,
    load_query_set,
)
from hivemind.inputs.spec import Query, QuerySet, sha256_hex
from tests.conftest import require

SAMPLE: list[dict[str, Any]] = [
    {"id": "a-1", "text": "Write a metaphor about time.", "category": "analogy-metaphor"},
    {"id": "a-2", "text": "Name a bakery, with a comma.", "category": "naming"},
    {"id": "a-3", "text": 'What is 2 + 2? Say "4".', "category": "arithmetic", "answer": "4"},
]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict[str, Any]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def core(query_set: QuerySet) -> list[tuple[str, str, str, str | None]]:
    return [(q.id, q.text, q.category, q.answer) for q in query_set.queries]


EXPECTED = [(r["id"], r["text"], r["category"], r.get("answer")) for r in SAMPLE]


# --- shipped sets -------------------------------------------------------------------------


THIRD_PARTY = {"noveltybench-curated"}
"""Shipped unchanged in their upstream layout (with their licence beside them)."""


def test_shipped_sets_are_listed() -> None:
    assert SHIPPED_DIR.is_dir()
    assert {"open-ended-v1", "verifiable-v1", "noveltybench-curated"} <= set(list_shipped())


def test_shipped_sets_are_package_data() -> None:
    """Read through importlib.resources, so an installed wheel finds them outside a checkout."""
    from importlib.resources import files

    assert Path(str(files("hivemind") / "data")) == SHIPPED_DIR
    assert SHIPPED_DIR.parent.name == "hivemind"


@pytest.mark.parametrize("name", ["open-ended-v1", "verifiable-v1", "noveltybench-curated"])
def test_every_shipped_set_loads_by_name_and_by_path(name: str) -> None:
    by_name = load_query_set(name)
    by_path = load_query_set(SHIPPED_DIR / f"{name}.jsonl")
    assert by_name.name == name
    assert core(by_name) == core(by_path)
    assert by_name.description


def test_open_ended_set_is_large_and_balanced() -> None:
    query_set = load_query_set("open-ended-v1")
    assert len(query_set.queries) >= 100
    counts = Counter(q.category for q in query_set.queries)
    assert len(counts) >= 8
    assert min(counts.values()) >= 5, counts
    assert "uncategorized" not in counts
    ids = [q.id for q in query_set.queries]
    assert len(set(ids)) == len(ids)
    assert all(q.id.startswith("oe-") for q in query_set.queries)
    texts = [q.text.strip().lower() for q in query_set.queries]
    assert len(set(texts)) == len(texts), "duplicate prompt text"
    assert not query_set.verifiable


def test_verifiable_set_has_short_answers() -> None:
    query_set = load_query_set("verifiable-v1")
    assert len(query_set.queries) >= 30
    assert query_set.verifiable
    assert len({q.id for q in query_set.queries}) == len(query_set.queries)
    for query in query_set.queries:
        assert query.answer and len(query.answer.split()) == 1, query
        assert query.category != "uncategorized"


def test_shipped_files_are_strict_layout() -> None:
    """Shipped lines carry exactly the documented keys, so a typo'd key is caught here."""
    allowed = {"id", "text", "category", "answer"}
    for path in SHIPPED_DIR.glob("*.jsonl"):
        if path.stem in THIRD_PARTY:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            record = json.loads(line)
            assert set(record) <= allowed, f"{path.name} line {number}"
            assert {"id", "text", "category"} <= set(record), f"{path.name} line {number}"


# --- round trips ----------------------------------------------------------------------------


def test_jsonl_round_trip_keeps_extras_in_metadata(tmp_path: Path) -> None:
    records = [dict(SAMPLE[0], source="mine", metadata={"k": 1}), *SAMPLE[1:]]
    query_set = load_query_set(write_jsonl(tmp_path / "my set.jsonl", records))
    assert core(query_set) == EXPECTED
    assert query_set.name == "my-set"
    assert query_set.queries[0].metadata == {"k": 1, "source": "mine"}
    assert query_set.queries[1].metadata == {}


def test_json_list_and_dumped_query_set(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps(SAMPLE), encoding="utf-8")
    assert core(load_query_set(path)) == EXPECTED

    original = QuerySet(name="orig", queries=[Query(**r) for r in SAMPLE])
    dumped = tmp_path / "dumped.json"
    dumped.write_text(original.model_dump_json(), encoding="utf-8")
    loaded = load_query_set(dumped, name="orig")
    assert loaded.queries == original.queries


def test_csv_round_trip(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", SAMPLE, ["id", "text", "category", "answer", "note"])
    query_set = load_query_set(path, name="custom")
    assert query_set.name == "custom"
    assert core(query_set) == EXPECTED
    assert query_set.queries[0].metadata == {}


def test_tsv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "q.tsv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["id", "text", "category", "answer"], delimiter="\t")
        writer.writeheader()
        writer.writerows(SAMPLE)
    assert core(load_query_set(path)) == EXPECTED


def test_parquet_round_trip(tmp_path: Path) -> None:
    pl = require("polars")
    path = tmp_path / "q.parquet"
    rows = [dict(r, answer=r.get("answer"), extra=i) for i, r in enumerate(SAMPLE)]
    pl.DataFrame(rows).write_parquet(path)
    query_set = load_query_set(path)
    assert core(query_set) == EXPECTED
    assert [q.metadata["extra"] for q in query_set.queries] == [0, 1, 2]


INFINITY_ROWS: list[dict[str, Any]] = [
    {"prompt_id": 101, "prompt": "Write a haiku about rain.", "categories": ["Poetry", "Creative"]},
    {"prompt_id": 102, "prompt": "Give me a metaphor for time.", "categories": ["Metaphor"]},
    {"prompt_id": 103, "prompt": "Suggest a name for a cat.", "categories": []},
]


def _check_infinity(query_set: QuerySet) -> None:
    assert [q.id for q in query_set.queries] == ["101", "102", "103"]
    assert [q.text for q in query_set.queries] == [r["prompt"] for r in INFINITY_ROWS]
    assert [q.category for q in query_set.queries] == ["Poetry", "Metaphor", "uncategorized"]
    assert query_set.queries[0].metadata["categories"] == ["Poetry", "Creative"]


def test_infinity_chat_layout_jsonl(tmp_path: Path) -> None:
    _check_infinity(load_query_set(write_jsonl(tmp_path / "infinity.jsonl", INFINITY_ROWS)))


def test_infinity_chat_layout_parquet(tmp_path: Path) -> None:
    pl = require("polars")
    path = tmp_path / "train-00000-of-00001.parquet"
    pl.DataFrame(INFINITY_ROWS).write_parquet(path)
    _check_infinity(load_query_set(path))


@pytest.mark.parametrize(
    ("record", "text", "category"),
    [
        ({"query": "Q one", "task_type": "humor"}, "Q one", "humor"),
        ({"question": "Q two", "category": "poetry"}, "Q two", "poetry"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Hi"}]}, "Hi", "uncategorized"),
    ],
)
def test_aliases_and_derived_ids(tmp_path: Path, record: dict[str, Any], text: str, category: str) -> None:
    query = load_query_set(write_jsonl(tmp_path / "a.jsonl", [record])).queries[0]
    assert (query.text, query.category) == (text, category)
    assert query.id == "q-" + sha256_hex(text)[:12]


def test_derived_ids_are_stable_across_formats(tmp_path: Path) -> None:
    rows = [{"prompt": "Same text", "qid": None}, {"prompt": "Other text"}]
    from_jsonl = load_query_set(write_jsonl(tmp_path / "a.jsonl", rows))
    from_csv = load_query_set(write_csv(tmp_path / "a.csv", rows, ["qid", "prompt"]))
    assert [q.id for q in from_jsonl.queries] == [q.id for q in from_csv.queries]
    assert from_jsonl.queries[0].id == "q-" + sha256_hex("Same text")[:12]


# --- bad input --------------------------------------------------------------------------------


def _error(path: Path) -> str:
    with pytest.raises(QueryFileError) as info:
        load_query_set(path)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_missing_field_names_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text('{"id": "x", "text": "ok"}\n\n{"id": "y", "category": "c"}\n')
    message = _error(path)
    assert message.startswith("queries.jsonl line 3: field 'text': Field required"), message


def test_wrong_type_names_source_field(tmp_path: Path) -> None:
    message = _error(write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "prompt": 5}]))
    assert "q.jsonl line 1: field 'prompt':" in message and "string" in message, message


def test_empty_text_is_rejected(tmp_path: Path) -> None:
    message = _error(write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "text": "ok"}, {"text": ""}]))
    assert "q.jsonl line 2: field 'text': Field required" in message, message


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n')
    message = _error(path)
    assert "q.jsonl line 2: invalid JSON" in message, message


def test_non_object_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('["a", "b"]\n')
    assert "line 1: expected a JSON object" in _error(path)


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    rows = [{"id": "d", "text": "one"}, {"id": "e", "text": "two"}, {"id": "d", "text": "three"}]
    message = _error(write_jsonl(tmp_path / "dup.jsonl", rows))
    assert "dup.jsonl line 3: field 'id': duplicate id 'd'" in message, message
    assert "line 1" in message


def test_duplicate_id_in_csv_names_both_lines(tmp_path: Path) -> None:
    rows = [{"id": "d", "text": "one\ntwo"}, {"id": "e", "text": "x"}, {"id": "d", "text": "y"}]
    message = _error(write_csv(tmp_path / "dup.csv", rows, ["id", "text"]))
    # header is line 1; the quoted newline makes the rows start on lines 2, 4 and 5
    assert "dup.csv line 5: field 'id': duplicate id 'd' (first on line 2)" in message, message


def test_csv_missing_text_names_line(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("id,text\na,hello\nb,\n", encoding="utf-8")
    message = _error(path)
    assert message.startswith("q.csv line 3: field 'text': Field required"), message


def test_csv_too_many_values(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text("id,text\na,hello,extra\n", encoding="utf-8")
    assert "q.csv line 2: more values than header columns" in _error(path)


def test_parquet_bad_row_names_row_and_field(tmp_path: Path) -> None:
    pl = require("polars")
    path = tmp_path / "q.parquet"
    pl.DataFrame({"id": ["a", "b"], "text": ["fine", None]}).write_parquet(path)
    message = _error(path)
    assert message.startswith("q.parquet row 2: field 'text': Field required"), message


def test_corrupt_parquet(tmp_path: Path) -> None:
    require("polars")
    path = tmp_path / "q.parquet"
    path.write_bytes(b"not parquet at all")
    assert "q.parquet: unreadable Parquet" in _error(path)


@pytest.mark.parametrize("filename", ["empty.jsonl", "empty.csv", "empty.json"])
def test_empty_file(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_text("\n" if filename.endswith("jsonl") else "")
    message = _error(path)
    assert message.startswith(f"{filename}: empty file"), message


def test_header_only_csv_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("id,text\n")
    assert "empty file" in _error(path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("Write a poem.\n")
    message = _error(path)
    assert "q.txt: unknown file extension '.txt'" in message and ".jsonl" in message


def test_missing_file_and_unknown_shipped_name(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.jsonl")
    assert "nope.jsonl: no such file" in message
    with pytest.raises(QueryFileError, match="open-ended-v1"):
        load_query_set("open-ended-v99")


def test_json_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('{"items": []}')
    assert "'queries'" in _error(path)
    path.write_text('[{"id": "a", "text": "ok"}, "loose string"]')
    assert "q.json item 2: expected an object" in _error(path)
    path.write_text('[{"id": "a", "text": "ok"},\n {"id": }]')
    assert "q.json line 2: invalid JSON" in _error(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    assert "not UTF-8" in _error(path)


def test_invalid_explicit_name(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", SAMPLE)
    with pytest.raises(QueryFileError, match="field 'name'"):
        load_query_set(path, name="bad name!")


def test_jsonl_with_unicode_line_separators_inside_strings_loads(tmp_path) -> None:
    import json as _json

    from hivemind.inputs.queries import load_query_set

    path = tmp_path / "odd.jsonl"
    text = "first\u2028second\u0085third"
    path.write_text(_json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    loaded = load_query_set(path)
    assert loaded.queries[0].text == text
