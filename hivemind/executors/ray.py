"""The Ray executor: deployments as Ray actors, per-query analyses and pair search as Ray tasks.

Sampling: the driver keeps running `hivemind.sampling.sampler.Sampler` (retries, budget, resume and
the SQLite journal stay in one place, on the driver's disk). Only the call into a provider
moves: each deployment gets one actor holding its provider (`max_concurrency` = the
deployment's connection limit, so the limit holds cluster-wide), and the sampler sees a
`RayProvider` whose `generate` awaits the actor. A result counts once the driver has committed
it, so killing the driver or an actor loses nothing committed; a lost actor is restarted by
Ray and its request retried like any transient error.

Analysis: see `map_groups` and `pair_search` (hivemind.executors.ray_analysis); embedding:
`embedder` (hivemind.executors.ray_embed).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemind.executors.local import Executor
from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import Provider, ProviderError

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from hivemind.vectors.embed import Embedder

NAMESPACE = "hivemind"
ACTOR_RESTARTS = 4
"""How often Ray restarts a deployment's actor that died (its requests are retried meanwhile)."""

Outcome = tuple[Any, ...]
"""("ok", Completion) or ("error", message, retryable, retry_after, status)."""


def start_local_ray(num_cpus: int | None = None, **init: Any) -> Any:
    """Start a local Ray instance whose workers import this very hivemind (not another copy).

    Workers inherit the environment of the raylet `ray.init` starts, so the directory that
    holds the driver's `hivemind` package goes first on their PYTHONPATH for the start.
    """
    import ray

    import hivemind

    root = str(Path(hivemind.__file__).resolve().parent.parent)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *([before] if before else [])])
    try:
        return ray.init(
            num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=False, logging_level="warning", **init
        )
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


class DeploymentWorker:
    """The body of a deployment's actor: one provider, called concurrently (async actor)."""

    def __init__(self, deployment: Deployment) -> None:
        from hivemind.providers.registry import create_provider

        self.provider = create_provider(deployment)

    async def generate(self, request: SampleRequest) -> Outcome:
        """The completion, or the error classified here, where the provider's types live
        (exceptions need not be picklable to cross the wire)."""
        try:
            return ("ok", await self.provider.generate(request))
        except Exception as exc:  # noqa: BLE001 - classified and returned, like the sampler would
            message = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
            return (
                "error",
                message,
                bool(self.provider.should_retry(exc)),
                self.provider.retry_after(exc),
                getattr(exc, "status", None),
            )

    def pid(self) -> int:
        """The actor's process id (tests kill it)."""
        return os.getpid()

    async def aclose(self) -> None:
        """Release the provider's connections or model."""
        await self.provider.aclose()


class RayProvider(Provider):
    """What the sampler calls for a deployment sampled on Ray: a proxy for its actor.

    Classification and redaction stay those of the deployment's own provider (`inner`, made
    and checked on the driver); only `generate` crosses to the actor.
    """

    name = "ray"

    def __init__(self, inner: Provider, actor: Any) -> None:
        super().__init__(inner.deployment)
        self.inner = inner
        self.actor = actor
        self.cancellable = inner.cancellable  # type: ignore[misc]  # per instance: the inner's word

    def max_connections(self) -> int:
        return self.inner.max_connections()

    async def generate(self, request: SampleRequest) -> Completion:
        import ray
        from ray.exceptions import RayActorError

        ref = self.actor.generate.remote(request)
        try:
            outcome = await ref
        except asyncio.CancelledError:  # the sampler's timeout: stop the work on the actor too
            ray.cancel(ref)
            raise
        except RayActorError as exc:  # died or restarting (ActorDiedError, ActorUnavailableError)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProviderError(f"Ray worker of {self.deployment.name} lost: {first}", retryable=True) from None
        if outcome[0] == "ok":
            return outcome[1]
        _, message, retryable, retry_after, status = outcome
        raise ProviderError(message, retryable=retryable, retry_after=retry_after, status=status)

    def redact(self, text: str) -> str:
        return self.inner.redact(text)

    async def aclose(self) -> None:
        import ray

        try:
            await self.actor.aclose.remote()
        except Exception:  # noqa: BLE001 - an actor that is gone has nothing left to close
            pass
        ray.kill(self.actor)
        await self.inner.aclose()


class RayExecutor(Executor):
    """Runs sampling, per-query analyses and pair search on Ray (local instance or cluster)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, shards: int | None = None) -> None:
        import ray

        self.started = False
        self.dashboard_url: str | None = None
        if not ray.is_initialized():
            if address is None:
                context = start_local_ray(num_cpus)
                self.started = True
            else:
                context = ray.init(address=address, namespace=NAMESPACE, logging_level="warning")
            self.dashboard_url = getattr(context, "dashboard_url", None) or None
        self.address = address or "local"
        self._shards = shards
        self.run_id = uuid.uuid4().hex[:8]

    @property
    def shards(self) -> int:
        """How many shards analyses are split into (default: the cluster's CPUs)."""
        import ray

        if self._shards is not None:
            return max(1, self._shards)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def describe(self) -> str:
        import ray

        where = "a local Ray instance" if self.address == "local" else f"the Ray cluster at {self.address}"
        text = f"{where} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        return text + (f", dashboard http://{self.dashboard_url}" if self.dashboard_url else "")

    def providers(self, providers: dict[str, Provider]) -> dict[str, Provider]:
        """One actor per deployment (concurrency = its connection limit), behind a proxy."""
        import ray

        worker = ray.remote(DeploymentWorker)
        proxies: dict[str, Provider] = {}
        for name, provider in providers.items():
            actor = worker.options(  # type: ignore[attr-defined]
                name=f"{name}:{self.run_id}",
                namespace=NAMESPACE,
                max_concurrency=max(1, provider.max_connections()),
                max_restarts=ACTOR_RESTARTS,
                max_task_retries=0,
                # a model in the actor's process keeps a CPU busy; an HTTP client does not
                num_cpus=0 if provider.cancellable else 1,
            ).remote(provider.deployment)
            proxies[name] = RayProvider(provider, actor)
        return proxies

    def embedder(self, model: Embedder) -> Embedder:
        """Forward passes on Ray Data actors, one per CPU, with the driver's torch threads."""
        import torch

        from hivemind.executors.ray_embed import RayEmbedder

        return RayEmbedder(model, concurrency=self.shards, threads=torch.get_num_threads())

    def map_groups(self, fn: Callable[..., pl.DataFrame], groups: list[Any], *args: Any, **kwargs: Any) -> pl.DataFrame:
        from hivemind.executors.ray_analysis import map_groups

        return map_groups(fn, groups, args, kwargs, self.shards)

    def pair_search(
        self,
        vectors: np.ndarray,
        deployments: Sequence[str],
        groups: Sequence[Hashable] | None,
        threshold: float,
        use_gpu: bool | None = None,
    ) -> pl.DataFrame:
        from hivemind.executors.ray_analysis import sharded_pairs

        return sharded_pairs(vectors, deployments, groups, threshold, use_gpu, self.shards)

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False
