"""Shared fixtures: offline mode, a zoo of scripted mock deployments, small study specs,
and `require`, the one way a test says it needs a real part that may be missing."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ALL_VARIABLE = "HIVEMIND_REQUIRE_ALL"


def missing(what: str) -> NoReturn:
    """A real part this test needs is missing: skip, or fail under HIVEMIND_REQUIRE_ALL=1 (CI),
    so a green run can never hide tests that did not run. Works at module level too."""
    if os.environ.get(REQUIRE_ALL_VARIABLE) == "1":
        pytest.fail(f"{what} (required: {REQUIRE_ALL_VARIABLE}=1)", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def require(module: str, what: str | None = None) -> ModuleType:
    """Import `module` for a test, or call `missing` naming it (`what` says how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = str(exc)
    missing(f"{what or module} is missing ({reason})")  # outside `except`: no chained traceback


def require_that(present: object, what: str) -> None:
    """Go on when `present` is truthy, else call `missing(what)` (for programs and files)."""
    if not present:
        missing(what)


@pytest.fixture
def write_zoo(tmp_path: Path) -> Callable[..., Path]:
    """Write a zoo file of deployments (dicts) into tmp_path and return its path."""

    def write(*deployments: dict[str, Any], name: str = "zoo.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"deployments": list(deployments)}))
        return path

    return write


def mock_deployment(name: str, **options: Any) -> dict[str, Any]:
    """A mock deployment entry; `max_concurrency` may be passed among the options."""
    concurrency = options.pop("max_concurrency", 8)
    return {"name": name, "provider": "mock", "model": "mock", "max_concurrency": concurrency, "options": options}
