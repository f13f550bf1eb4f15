"""Load and validate query sets: shipped sets (package data), or a user's JSONL/JSON/CSV/Parquet file.

Real-world files (INFINITY-CHAT exports, spreadsheets) name their columns differently, so common
aliases are mapped onto `Query`; anything else is kept in `metadata` rather than dropped. Every
problem is a `QueryFileError` naming the file, the line (or row) and the field, so a bad file
fails before a study spends money on it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hivemind.errors import HivemindError
from hivemind.inputs.spec import NAME_PATTERN, Query, QuerySet, sha256_hex

SHIPPED_DIR: Path = Path(str(files("hivemind") / "data"))
"""Where the shipped query sets live (`<name>.jsonl`): package data, so a wheel install has them."""

SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
"""File extensions `load_query_set` accepts."""

TEXT_KEYS: tuple[str, ...] = ("text", "prompt", "query", "question", "instruction")
ID_KEYS: tuple[str, ...] = ("id", "prompt_id", "query_id", "qid")
CATEGORY_KEYS: tuple[str, ...] = ("category", "categories", "task_type")
ANSWER_KEYS: tuple[str, ...] = ("answer",)
MESSAGE_KEYS: tuple[str, ...] = ("messages", "conversation")
"""Chat-style records: the first user turn becomes the query text when no text key exists."""

SHIPPED_DESCRIPTIONS: dict[str, str] = {
    "open-ended-v1": "Open-ended prompts over 12 categories of creative and subjective asks.",
    "verifiable-v1": "Short questions with one checkable answer (quality control vs narrowing).",
    "noveltybench-curated": "NoveltyBench's 100 curated prompts with 10 paraphrases each "
    "(Zhang et al. 2025, MIT licence: NOVELTYBENCH-LICENSE).",
}
PARAPHRASE_KEYS: tuple[str, ...] = ("prompt_paraphrases", "paraphrases")
"""Metadata keys holding a query's rewordings (NoveltyBench's `prompt_paraphrases`)."""


class QueryFileError(HivemindError, ValueError):
    """A query file that cannot be used; the message names the file, the line/row and the field."""

    def __init__(self, path: Path, message: str, *, where: str | None = None, field: str | None = None) -> None:
        self.path = path
        self.where = where
        self.field = field
        parts = [path.name + (f" {where}" if where else "")]
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(message)
        super().__init__(": ".join(parts))


def list_shipped() -> list[str]:
    """Names of the shipped query sets (file stems in `data/`), sorted."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jsonl"))


def load_query_set(
    source: str | Path, name: str | None = None, *, max_queries: int | None = None, max_decoded_bytes: int | None = None
) -> QuerySet:
    """Load a shipped set by name, or a JSONL/JSON/CSV/TSV/Parquet file by path.

    `name` overrides the set's name (default: the file's stem, made a valid name). With
    `max_queries`, reading stops past that many (`TooManyRecords`).
    """
    path = _resolve(source)
    records = read_records(path, max_queries, max_decoded_bytes)
    queries: list[Query] = []
    first_seen: dict[str, str] = {}
    for where, record in records:
        query, id_key = _to_query(path, where, record)
        if query.id in first_seen:
            other = first_seen[query.id]
            raise QueryFileError(path, f"duplicate id {query.id!r} (first on {other})", where=where, field=id_key)
        first_seen[query.id] = where
        queries.append(query)
    if not queries:
        raise QueryFileError(path, "empty file: no queries")

    set_name = name if name is not None else _name_from_stem(path.stem)
    if re.fullmatch(NAME_PATTERN, set_name) is None:
        raise QueryFileError(path, f"invalid set name {set_name!r}", field="name")
    description = SHIPPED_DESCRIPTIONS.get(path.stem, "") if path.parent == SHIPPED_DIR else ""
    return QuerySet(name=set_name, description=description or f"Loaded from {path.name}", queries=queries)


def read_records(path: Path, max_records: int | None = None, max_decoded_bytes: int | None = None) -> Records:
    """The raw records of a JSONL/JSON/CSV/TSV/Parquet file with their positions ('line 7').

    With `max_records`, reading stops at the first record past the limit (`TooManyRecords`):
    text files are read a line at a time, and a Parquet file's row count and decoded size come
    from its metadata before anything is decoded (`max_decoded_bytes` bounds the latter).
    """
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path, max_records)
    if suffix == ".json":
        return _read_json(path, max_records)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",", limit=max_records)
    if suffix == ".parquet":
        return _read_parquet(path, max_records, max_decoded_bytes)
    accepted = ", ".join(SUFFIXES)
    raise QueryFileError(path, f"unknown file extension {suffix!r} (accepted: {accepted})")


class TooManyRecords(QueryFileError):
    """A file holding more records than the reader was allowed (it stopped at limit + 1)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.limit = limit
        super().__init__(path, f"more than {limit} records: the limit is {limit}")


def _check_count(path: Path, count: int, limit: int | None) -> None:
    if limit is not None and count > limit:
        raise TooManyRecords(path, limit)


def paraphrases(query: Query) -> list[str]:
    """A query's rewordings (NoveltyBench `prompt_paraphrases`), in file order; [] if none."""
    for key in PARAPHRASE_KEYS:
        value = query.metadata.get(key)
        if isinstance(value, str):  # a CSV/Parquet cell written as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    return []


def prompt_text(query: Query, paraphrase: int | str | None, index: int = 0) -> str:
    """The text sent for `query`: itself, or its `paraphrase`-th rewording (1-based); with
    `paraphrase="each"`, rewording `index` mod n of its n (sample `index`'s).

    A missing rewording is an error (`resolve_study` checks every query before sampling).
    """
    if not paraphrase:
        return query.text
    options = paraphrases(query)
    if paraphrase == "each":
        if not options:
            raise ValueError(f"query {query.id!r} has no paraphrases, condition asks for paraphrase: each")
        return options[index % len(options)]
    if not isinstance(paraphrase, int) or paraphrase > len(options):
        raise ValueError(
            f"query {query.id!r} has {len(options)} paraphrases, condition asks for paraphrase {paraphrase}"
        )
    return options[paraphrase - 1]


def _resolve(source: str | Path) -> Path:
    """A shipped set's name wins over a same-named file without extension; else a path."""
    if isinstance(source, str) and source in list_shipped():
        return SHIPPED_DIR / f"{source}.jsonl"
    path = Path(source).expanduser()
    if not path.exists():
        shipped = ", ".join(list_shipped()) or "none"
        raise QueryFileError(path, f"no such file, nor a shipped set (shipped: {shipped})")
    if not path.is_file():
        raise QueryFileError(path, "not a file")
    return path


def _name_from_stem(stem: str) -> str:
    """Turn a file stem like `my queries (v2)` into a valid set name `my-queries-v2`."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-_.")
    return cleaned or "queries"


def _read_text(path: Path) -> str:
    """The file as UTF-8 (a BOM is tolerated), or a clear error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QueryFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


Records = Iterable[tuple[str, dict[str, Any]]]
"""(position label such as 'line 7', raw record) pairs."""


def _read_jsonl(path: Path, limit: int | None = None) -> Records:
    """One JSON object per line; blank lines are skipped, line numbers are 1-based.

    Lines split on "\n" only (`newline="\n"`): `str.splitlines` would also split on U+2028 and
    friends, which are legal inside JSON strings. Read a line at a time, up to `limit` + 1 records.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    with _open_text(path) as handle:
        for number, line in enumerate(_lines(path, handle), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QueryFileError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", where=where) from exc
            except RecursionError:
                raise QueryFileError(path, "JSON nested too deeply", where=where) from None
            if not isinstance(value, dict):
                raise QueryFileError(path, f"expected a JSON object, got {type(value).__name__}", where=where)
            out.append((where, value))
            _check_count(path, len(out), limit)
    return out


def _open_text(path: Path, newline: str = "\n") -> io.TextIOWrapper:
    return path.open(encoding="utf-8-sig", newline=newline)


def _lines(path: Path, handle: Iterable[str]) -> Iterator[str]:
    """The handle's lines, a decoding error becoming the file's one clear line."""
    try:
        yield from handle
    except UnicodeDecodeError as exc:
        raise QueryFileError(path, f"not UTF-8 text ({exc.reason})") from exc


def _read_json(path: Path, limit: int | None = None) -> Records:
    """A JSON list of objects, or an object with a `queries` list (a dumped QuerySet)."""
    try:
        value = json.loads(_read_text(path) or "null")
    except json.JSONDecodeError as exc:
        raise QueryFileError(path, f"invalid JSON: {exc.msg}", where=f"line {exc.lineno}") from exc
    except RecursionError:
        raise QueryFileError(path, "JSON nested too deeply") from None
    if value is None:
        return []
    if isinstance(value, dict):
        if "queries" not in value:
            raise QueryFileError(path, "expected a list of queries or an object with 'queries'")
        value = value["queries"]
    if not isinstance(value, list):
        raise QueryFileError(path, f"expected a list of queries, got {type(value).__name__}", field="queries")
    _check_count(path, len(value), limit)
    out: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise QueryFileError(path, f"expected an object, got {type(item).__name__}", where=f"item {index}")
        out.append((f"item {index}", item))
    return out


def _read_csv(path: Path, delimiter: str, limit: int | None = None) -> Records:
    """CSV/TSV with a header row; a record's line is where it starts (header = line 1).

    Read a row at a time, up to `limit` + 1 records."""
    with _open_text(path, newline="") as handle:
        return _csv_rows(path, handle, delimiter, limit)


def _csv_rows(path: Path, handle: Iterable[str], delimiter: str, limit: int | None) -> Records:
    reader = csv.DictReader(_lines(path, handle), delimiter=delimiter)
    out: list[tuple[str, dict[str, Any]]] = []
    start = 2
    try:
        for row in reader:
            where = f"line {start}"
            start = reader.line_num + 1
            if None in row:
                raise QueryFileError(path, "more values than header columns", where=where)
            if not any((v or "").strip() for v in row.values()):
                continue
            out.append((where, {k: v for k, v in row.items() if v not in (None, "")}))
            _check_count(path, len(out), limit)
    except csv.Error as exc:
        raise QueryFileError(path, f"malformed CSV: {exc}", where=f"line {reader.line_num}") from exc
    return out


def _read_parquet(path: Path, limit: int | None = None, max_bytes: int | None = None) -> Records:
    """Parquet through polars (imported here: most runs never read Parquet); rows are 1-based.

    The row count and the decoded size are read from the file's metadata first, so a small
    compressed file that would decode to gigabytes is refused before it is decoded."""
    import polars as pl

    if limit is not None or max_bytes is not None:
        rows, size = _parquet_size(path)
        _check_count(path, rows, limit)
        if max_bytes is not None and size > max_bytes:
            raise QueryFileError(path, f"decodes to {size} bytes; the limit is {max_bytes}")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars raises several unrelated types for a bad file
        raise QueryFileError(path, f"unreadable Parquet: {exc}") from exc
    _check_count(path, frame.height, limit)  # metadata that lied
    if max_bytes is not None and frame.estimated_size() > max_bytes:
        raise QueryFileError(path, f"decodes to {frame.estimated_size()} bytes; the limit is {max_bytes}")
    return [(f"row {i}", row) for i, row in enumerate(frame.to_dicts(), start=1)]


def _parquet_size(path: Path) -> tuple[int, int]:
    """(rows, uncompressed bytes) from the Parquet footer, decoding no data page."""
    try:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        return meta.num_rows, sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except ImportError:  # without pyarrow: polars' count from the metadata; the size after decoding
        import polars as pl

        try:
            return int(pl.scan_parquet(path).select(pl.len()).collect().item()), 0
        except Exception as exc:
            raise QueryFileError(path, f"unreadable Parquet: {exc}") from exc
    except Exception as exc:  # a damaged footer
        raise QueryFileError(path, f"unreadable Parquet: {exc}") from exc


def _present(record: dict[str, Any], keys: tuple[str, ...]) -> Iterator[str]:
    """Keys of `record` among `keys`, in priority order, that hold a non-empty value."""
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, (str, list)) and len(value) == 0):
            yield key


def _first_user_turn(messages: Any) -> str | None:
    """Text of the first user message of a chat-style record, if there is one."""
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("user", "human"):
            content = message.get("content", message.get("value"))
            return content if isinstance(content, str) else None
    return None


def _to_query(path: Path, where: str, record: dict[str, Any]) -> tuple[Query, str]:
    """Map a raw record onto `Query` (aliases, derived id, extras into metadata)."""
    data: dict[str, Any] = {}
    source_key: dict[str, str] = {}
    used: set[str] = set()

    text_key = next(_present(record, TEXT_KEYS), None)
    if text_key is not None:
        data["text"], source_key["text"] = record[text_key], text_key
        used.add(text_key)
    else:
        for key in _present(record, MESSAGE_KEYS):
            turn = _first_user_turn(record[key])
            if turn is not None:
                data["text"], source_key["text"] = turn, key
                break
        else:
            looked = ", ".join(repr(k) for k in TEXT_KEYS[1:] + MESSAGE_KEYS)
            raise QueryFileError(path, f"Field required (also looked for {looked})", where=where, field="text")

    id_key = next(_present(record, ID_KEYS), None)
    if id_key is not None:
        raw_id = record[id_key]
        is_int = isinstance(raw_id, int) and not isinstance(raw_id, bool)
        data["id"], source_key["id"] = str(raw_id) if is_int else raw_id, id_key
        used.add(id_key)
    else:  # stable across runs and files: the same text always gets the same id
        data["id"] = "q-" + sha256_hex(str(data["text"]))[:12]

    metadata: dict[str, Any] = {}
    category_key = next(_present(record, CATEGORY_KEYS), None)
    if category_key is not None:
        category = record[category_key]
        if isinstance(category, list):
            metadata[category_key] = category
            category = category[0]
        data["category"], source_key["category"] = category, category_key
        used.add(category_key)

    answer_key = next(_present(record, ANSWER_KEYS), None)
    if answer_key is not None:
        answer = record[answer_key]
        is_number = isinstance(answer, (int, float)) and not isinstance(answer, bool)
        data["answer"], source_key["answer"] = str(answer) if is_number else answer, answer_key
        used.add(answer_key)

    base = record.get("metadata")
    if isinstance(base, str):  # a metadata column written as JSON text (CSV, Parquet)
        try:
            base = json.loads(base)
        except json.JSONDecodeError:
            base = {"metadata": base}
    if isinstance(base, dict):
        used.add("metadata")
        metadata = {**base, **metadata}
    skip = used | data.keys()  # nulls (Parquet's missing cells) carry nothing worth keeping
    metadata.update({k: v for k, v in record.items() if k not in skip and v is not None})
    data["metadata"] = metadata

    try:
        return Query(**data), source_key.get("id", "id")
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "record"
        raise QueryFileError(path, error["msg"], where=where, field=source_key.get(field, field)) from exc
