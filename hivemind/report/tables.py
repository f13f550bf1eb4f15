"""The analysis tables as the report's sections read them (`Tables`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


@dataclass
class Tables:
    """The analysis tables by name; a missing one reads as an empty frame."""

    frames: dict[str, pl.DataFrame]

    def __getitem__(self, name: str) -> pl.DataFrame:
        import polars as pl

        return self.frames.get(name, pl.DataFrame())

    def get(self, name: str) -> pl.DataFrame | None:
        return self.frames.get(name)
