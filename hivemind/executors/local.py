"""The single-process executor: the default, and the interface every executor implements."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from hivemind.providers.base import Provider
    from hivemind.vectors.embed import Embedder


class Executor:
    """The single-process executor; also the interface every executor implements."""

    name = "local"

    def providers(self, providers: dict[str, Provider]) -> dict[str, Provider]:
        """The providers the sampler should call for these deployments."""
        return providers

    def map_groups(self, fn: Callable[..., pl.DataFrame], groups: list[Any], *args: Any, **kwargs: Any) -> pl.DataFrame:
        """`fn(groups, *args, **kwargs)` for an analysis whose rows depend on one query each."""
        return fn(groups, *args, **kwargs)

    def pair_search(
        self,
        vectors: np.ndarray,
        deployments: Sequence[str],
        groups: Sequence[Hashable] | None,
        threshold: float,
        use_gpu: bool | None = None,
    ) -> pl.DataFrame:
        """`hivemind.vectors.index.near_duplicate_pairs` (same arguments, same table)."""
        from hivemind.vectors.index import near_duplicate_pairs

        return near_duplicate_pairs(vectors, deployments, groups, threshold, use_gpu=use_gpu)

    def embedder(self, model: Embedder) -> Embedder:
        """The embedder that computes vectors missing from the cache."""
        return model

    def describe(self) -> str:
        """One line for the CLI: where the work runs."""
        return "single process"

    def close(self) -> None:
        """Release what the executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
