"""Read response files: records of any accepted layout -> `Row`s, each error naming its place.

The layouts (flat rows, NoveltyBench generation files, INFINITY-CHAT-style records) are
described in `hivemind.imports.importer`; this module only maps a record's keys onto a response.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivemind.inputs.queries import ANSWER_KEYS, CATEGORY_KEYS, ID_KEYS, QueryFileError
from hivemind.inputs.spec import NAME_PATTERN, Columns

QUERY_KEYS: tuple[str, ...] = ("query", "prompt", "question", "instruction", "query_text", "input")
MODEL_KEYS: tuple[str, ...] = ("model", "deployment", "model_name", "generator", "model_id")
TEXT_KEYS: tuple[str, ...] = ("text", "response", "completion", "output", "generation", "answer_text")
LIST_KEYS: tuple[str, ...] = ("generations", "responses", "completions", "outputs")
INDEX_KEYS: tuple[str, ...] = ("sample_index", "sample", "generation_index", "index")
MAX_SAMPLES = 10000
"""Sample indices stay below a study's largest `samples`."""
CLASS_KEYS: tuple[str, ...] = ("partition", "class", "equivalence_class", "class_label")


class ImportFileError(QueryFileError):
    """A response file that cannot be imported; names the file, the line/row and the field."""


@dataclass
class Row:
    """One response of the file, before it is matched to a query."""

    where: str
    query_id: str | None
    query_text: str | None
    deployment: str
    model: str
    text: str
    sample_index: int | None
    category: str | None
    answer: str | None
    class_label: str | None
    condition: str | None = None


def _pick(record: dict[str, Any], mapped: str | None, keys: tuple[str, ...]) -> str | None:
    """The mapped column, else the first usual name present with a value."""
    if mapped is not None:
        return mapped
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return key
    return None


def _chat_turn(messages: Any, roles: tuple[str, ...]) -> str | None:
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") in roles:
                content = message.get("content", message.get("value"))
                return content if isinstance(content, str) else None
    return None


def deployment_name(model: str) -> str:
    """A valid deployment name from a model string (`google/gemini-1.5-pro` -> `google-gemini-1.5-pro`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", model).strip("-_.")
    return cleaned or "imported"


def normalise(text: str) -> str:
    """Query text for matching: Unicode NFKC, case-folded, whitespace collapsed, outer punctuation
    dropped, so `Write a poem.` and ` write a POEM ` are the same query."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", folded).strip(" \t\n\"'.!?;:,")


def _string(path: Path, where: str, key: str, value: Any, *, numbers: bool = True) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    shown = "empty" if value in (None, "") else type(value).__name__
    raise ImportFileError(path, f"expected a non-empty string, got {shown}", where=where, field=key)


def _index(path: Path, where: str, key: str, value: Any) -> int:
    try:
        number = int(value)
        if number != float(value) or not 0 <= number < MAX_SAMPLES:
            raise ValueError
    except (TypeError, ValueError):
        raise ImportFileError(
            path, f"expected a whole number from 0 to {MAX_SAMPLES - 1}, got {value!r}", where=where, field=key
        ) from None
    return number


def parse_records(path: Path, records: Any, columns: Columns | None = None, deployment: str | None = None) -> list[Row]:
    """Turn raw records into `Row`s, each error naming `path`, the record's position and field."""
    cols = columns or Columns()
    rows: list[Row] = []
    for where, record in records:
        list_key = None if cols.text else _pick(record, None, LIST_KEYS)
        text_key = None if list_key else _pick(record, cols.text, TEXT_KEYS)
        if list_key is None and text_key is None:
            reply = _chat_turn(record.get("messages", record.get("conversation")), ("assistant", "gpt"))
            if reply is None:
                looked = ", ".join(repr(k) for k in TEXT_KEYS + LIST_KEYS)
                raise ImportFileError(path, f"no response (looked for {looked})", where=where, field="text")
            texts: list[tuple[Any, str | None]] = [(reply, "messages")]
        elif list_key is not None:
            values = record[list_key]
            if isinstance(values, str):  # a list column written as JSON text (CSV)
                try:
                    values = json.loads(values)
                except json.JSONDecodeError:
                    values = None
            if not isinstance(values, list) or not values:
                raise ImportFileError(path, "expected a non-empty list of responses", where=where, field=list_key)
            texts = [(v, f"{list_key}[{i}]") for i, v in enumerate(values)]
        else:
            texts = [(record.get(text_key), text_key)]

        query_key = _pick(record, cols.query, QUERY_KEYS)
        query_text = record.get(query_key) if query_key else None
        if query_text is None and cols.query is None:
            query_text = _chat_turn(record.get("messages", record.get("conversation")), ("user", "human"))
            query_key = "messages"
        id_key = _pick(record, cols.id, ID_KEYS)
        raw_id = record.get(id_key) if id_key else None
        if raw_id is None and query_text is None:
            raise ImportFileError(
                path,
                "no query (looked for " + ", ".join(repr(k) for k in QUERY_KEYS + ID_KEYS) + ")",
                where=where,
                field=cols.query or "query",
            )
        query_id = _string(path, where, id_key, raw_id) if raw_id is not None else None  # type: ignore[arg-type]
        if query_text is not None:
            query_text = _string(path, where, query_key or "query", query_text, numbers=False)

        model_key = _pick(record, cols.model, MODEL_KEYS)
        model_value = record.get(model_key) if model_key else None
        if model_value is None and deployment is None:
            raise ImportFileError(
                path,
                "no model (looked for "
                + ", ".join(repr(k) for k in MODEL_KEYS)
                + "; or name one deployment for the whole file)",
                where=where,
                field=cols.model or "model",
            )
        model = _string(path, where, model_key or "model", model_value) if model_value is not None else deployment
        name = deployment or deployment_name(model)  # type: ignore[arg-type]
        if re.fullmatch(NAME_PATTERN, name) is None:
            raise ImportFileError(path, f"invalid deployment name {name!r}", where=where, field="deployment")

        category_key = _pick(record, cols.category, CATEGORY_KEYS)
        category = record.get(category_key) if category_key else None
        if isinstance(category, list):
            category = category[0] if category else None
        answer_key = _pick(record, cols.answer, ANSWER_KEYS)
        answer = record.get(answer_key) if answer_key else None

        index_key = _pick(record, cols.sample_index, INDEX_KEYS)
        base_index = (
            _index(path, where, index_key, record[index_key])
            if index_key and record.get(index_key) is not None
            else None
        )

        class_key = _pick(record, cols.classes, CLASS_KEYS)
        labels: list[Any] = [None] * len(texts)
        if class_key and record.get(class_key) is not None:
            raw = record[class_key]
            if isinstance(raw, str) and list_key:
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError:
                    pass
            if list_key:
                if not isinstance(raw, list) or len(raw) != len(texts):
                    got = len(raw) if isinstance(raw, list) else type(raw).__name__
                    raise ImportFileError(
                        path,
                        f"expected one class label per response ({len(texts)}), got {got}",
                        where=where,
                        field=class_key,
                    )
                labels = list(raw)
            else:
                labels = [raw]

        row_condition = None
        if cols.condition is not None and record.get(cols.condition) is not None:
            row_condition = _string(path, where, cols.condition, record[cols.condition])
            if re.match(NAME_PATTERN, row_condition) is None:
                raise ImportFileError(
                    path, f"invalid condition name {row_condition!r}", where=where, field=cols.condition
                )

        for offset, ((value, key), label) in enumerate(zip(texts, labels)):
            text = _string(path, where, key or "text", value, numbers=False)
            rows.append(
                Row(
                    where=where if len(texts) == 1 else f"{where} {key}",
                    query_id=query_id,
                    query_text=query_text,
                    deployment=name,
                    model=model,  # type: ignore[arg-type]
                    text=text,
                    sample_index=None if base_index is None else base_index + offset,
                    category=None if category is None else str(category),
                    answer=None if answer is None else str(answer),
                    class_label=None if label is None else str(label),
                    condition=row_condition,
                )
            )
    if not rows:
        raise ImportFileError(path, "empty file: no responses")
    return rows
