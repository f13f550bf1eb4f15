"""The leaves of the data models: names a store reserves, the strict base model, canonical JSON.

`hivemind.inputs.spec` re-exports every name here; this module imports nothing of hivemind but its
layout, so any model module can build on it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hivemind.layout import TOP_LEVEL_ENTRIES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
STORE_ENTRIES = TOP_LEVEL_ENTRIES
"""Names of a store's own files and folders at its top level, where each study has its folder
(`hivemind.layout`, the one place they are spelled out)."""


def store_name_problem(name: str) -> str | None:
    """Why `name` cannot name a study, query set or scan (it would be a store's own file), or None.

    Compared case-insensitively (macOS and Windows folders are), and SQLite's side files
    (`hivemind.sqlite-wal`, ...) count as the database's.
    """
    folded = name.casefold()
    for entry in sorted(STORE_ENTRIES):
        if folded == entry or (entry.endswith(".sqlite") and folded.startswith(entry)):
            return (
                f"{name!r} would collide with the store's own {entry!r} "
                f"(reserved: {', '.join(sorted(STORE_ENTRIES))}); choose another name"
            )
    return None


def check_store_name(name: str) -> str:
    """`name`, or a ValueError when it would collide with a store's own files (a pydantic validator)."""
    problem = store_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


StoreName = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(check_store_name)]
"""A study, query-set or scan name: a plain file name that is not one of `STORE_ENTRIES`."""


class Strict(BaseModel):
    """Base for every edge model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) so equal content hashes equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: NaN/inf -> None, numpy scalars -> Python, keys -> str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sha256_hex(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
