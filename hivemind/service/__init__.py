"""The REST service: `create_app` (FastAPI), job workers, and the service's own tables.

Importing this package is light; FastAPI loads with `hivemind.service.app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from hivemind.service.app import create_app

        return create_app
    raise AttributeError(f"module 'hivemind.service' has no attribute {name!r}")
