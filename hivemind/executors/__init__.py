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

from hivemind.executors.local import Executor

EXECUTORS = ("local", "ray")
__all__ = ["EXECUTORS", "Executor", "open_executor"]


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
