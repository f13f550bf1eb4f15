"""Where a study's work runs: in this process (the default) or on a Ray cluster.

An executor changes *where* work runs, never *what* it computes: the sampler, the SQLite
journal and every analysis stay the same code. It offers three seams:

* `providers(...)`: the providers the sampler calls (local: as they are; Ray: proxies whose
  `generate` is a call into one actor per deployment);
* `map_groups(fn, groups, *args)`: a per-query analysis over groups of responses (local: one
  call; Ray: shards of queries as tasks, concatenated in order);
* `pair_search(...)`: near-duplicate pairs (local: `near_duplicate_pairs`; Ray: sharded);
* `embedder(model)`: what embeds the texts missing from the cache (Ray: Ray Data actors).

This module imports nothing heavy: `hivemind --help` and the single-process path never
import Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from hivemind.embed import Embedder
    from hivemind.providers.base import Provider

EXECUTORS = ("local", "ray")


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
        self, vectors: np.ndarray, deployments: Sequence[str], groups: Sequence[Hashable] | None,
        threshold: float, use_gpu: bool | None = None,
    ) -> pl.DataFrame:
        """`hivemind.index.near_duplicate_pairs` (same arguments, same table)."""
        from hivemind.index import near_duplicate_pairs

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


def open_executor(executor: str | Executor | None = "local", address: str | None = None) -> Executor:
    """An executor by name ("local" or "ray"); an `Executor` instance is returned as is.

    For "ray", `address` joins a running cluster ("auto", "ray://host:10001", "host:6379");
    without one a local Ray instance is started (and stopped on `close`).
    """
    if isinstance(executor, Executor):
        return executor
    name = executor or "local"
    if name == "local":
        if address is not None:
            raise ValueError("a Ray address needs executor='ray'")
        return Executor()
    if name == "ray":
        from hivemind.executors.ray import RayExecutor

        return RayExecutor(address)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
