"""Shared fixtures: offline mode, a zoo of scripted mock deployments, small study specs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


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
    return {"name": name, "provider": "mock", "model": "mock", "max_concurrency": concurrency,
            "options": options}
