"""The provider contract: what every provider kind implements, and how its errors are classified.

`hivemind.providers.registry` maps a zoo entry's `provider:` to a class; this module imports no
implementation, so provider modules depend on it and never the other way round.

A provider turns one frozen `SampleRequest` into one `Completion`. It never retries on its
own and never catches errors: the sampler owns retries, so every provider gets the same
backoff, `Retry-After` handling and error rows. Providers only classify their errors.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC
from functools import cached_property
from typing import Any, ClassVar

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import LOCAL_DECODING_PARAMS, Deployment
from hivemind.providers.ratelimit import Pacer

EXTRAS: dict[str, str] = {"llama_cpp": "local"}
"""The optional package each importable module comes from (`pip install 'hivemind-study[EXTRA]'`)."""


def require_module(module: str, who: str) -> None:
    """Stop before any sampling when `module` is not installed, with the exact install line."""
    missing = sys.modules[module] is None if module in sys.modules else importlib.util.find_spec(module) is None
    if missing:
        extra = EXTRAS.get(module, module)
        raise ValueError(f"{who} needs {module}, which is not installed: pip install 'hivemind-study[{extra}]'")


class ProviderError(Exception):
    """An error a provider raises with its retry classification already decided."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class MissingKeyError(RuntimeError):
    """A deployment names an API-key variable that is not set. Raised before sampling starts."""


RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds form; HTTP dates are rare for APIs)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        from datetime import datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Provider(ABC):
    """One instance per deployment, shared by all of its requests."""

    name: ClassVar[str]
    cancellable: ClassVar[bool] = True
    """Whether abandoning a request stops its work. In-process models are not: a timed-out call
    would keep the model busy and every retry would queue behind it, so they get no timeout."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def api_key(self) -> str | None:
        """The key from the environment variable the deployment names (never from YAML)."""
        var = self.deployment.api_key_env
        if var is None:
            return None
        value = os.environ.get(var)
        if not value:
            raise MissingKeyError(
                f"deployment {self.deployment.name!r} needs the environment variable {var}, which is not set"
            )
        return value

    def check_ready(self) -> None:
        """Cheap checks run before any sampling (missing keys, missing files)."""
        self.api_key()

    def unsupported_params(self, params: dict[str, Any]) -> set[str]:
        """The names among `params` (the set sampling parameters) this deployment would ignore or
        reject. The study stops before sampling on any its condition does not allow dropping.

        By default only hivemind's own decoding parameters (`novelty`): OpenAI-compatible
        servers, llama.cpp and the mock take every other one.
        """
        return set(params) & LOCAL_DECODING_PARAMS.keys()

    @cached_property
    def pacer(self) -> Pacer:
        """The deployment's rate limits (`rpm`, `tpm`), shared by all of its requests."""
        return Pacer(self.deployment.rpm, self.deployment.tpm)

    def takes_conversation(self) -> bool:
        """Whether requests may carry a multi-turn conversation (`mode: in-context` conditions):
        chat endpoints and chat templates do; a plain-completion prompt does not."""
        return True

    def max_connections(self) -> int:
        """How many requests may be in flight at once for this deployment."""
        return self.deployment.max_concurrency

    @abstractmethod
    async def generate(self, request: SampleRequest) -> Completion:
        """Produce exactly one completion for `request`."""

    def should_retry(self, exc: BaseException) -> bool:
        """Whether `exc` is transient (rate limit, 5xx, timeout, connection reset)."""
        if isinstance(exc, ProviderError):
            return exc.retryable
        import asyncio

        return isinstance(exc, (asyncio.TimeoutError, ConnectionError, TimeoutError))

    def retry_after(self, exc: BaseException) -> float | None:
        """Seconds the server asked us to wait, when it said."""
        return exc.retry_after if isinstance(exc, ProviderError) else None

    def redact(self, text: str) -> str:
        """Remove this deployment's key from any text bound for a log, a row or an error."""
        var = self.deployment.api_key_env
        secret = os.environ.get(var) if var else None
        return text.replace(secret, "***") if secret else text

    async def aclose(self) -> None:
        """Release connections or models."""


ProviderFactory = Callable[[Deployment], Provider]
REGISTERED: dict[str, ProviderFactory] = {}
"""Providers registered by `@register` (built-in ones once their module is imported)."""


def register(name: str) -> Callable[[type[Provider]], type[Provider]]:
    """Class decorator: make a provider available under `provider: NAME` in the zoo."""

    def decorate(cls: type[Provider]) -> type[Provider]:
        cls.name = name
        REGISTERED[name] = cls
        return cls

    return decorate
