"""A deterministic provider for tests and demos, registered like any other.

It is a real provider (same contract, same sampler path), not a patch: the text depends only on
the request's seed, query and deployment options, so reruns reproduce it and resumes can be
checked. Options script its behaviour: latency, transient failures, permanent failures, cost.

Options (all optional):
  latency_s: float          seconds per call (awaited, so concurrency shows)
  fail_first: int           the first N attempts of every request fail with `error_status`
  fail_rate: float          share of requests (by seed) that always fail with `error_status`
  error_status: int         429 (default, retryable), 500, 400 (not retryable), ...
  retry_after: float        value of the Retry-After the failures carry
  cost_usd: float           cost recorded per successful call
  style: str                word pool: "echo" (default) repeats query words; "varied" mixes more
  diversity: int            how many distinct openings the deployment picks from (1 = hivemind)
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import Provider, ProviderError, register

_OPENINGS = [
    "Time is a river",
    "Time is a thief",
    "Time is a quiet tailor",
    "Time is an old lighthouse",
    "Time is a patient gardener",
    "Time is a train without brakes",
    "Time is a sealed letter",
    "Time is a candle burning at both ends",
]
_WORDS = (
    "light shadow memory ocean stone glass ember whisper orbit harvest lantern "
    "thread mirror tide echo seed compass winter bridge paper"
).split()


@register("mock")
class MockProvider(Provider):
    """Scripted, deterministic completions; see the module docstring for options."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self._attempts: dict[str, int] = defaultdict(int)
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: SampleRequest) -> Completion:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._generate(request)
        finally:
            self.in_flight -= 1

    async def _generate(self, request: SampleRequest) -> Completion:
        options = self.deployment.options
        latency = float(options.get("latency_s", 0.0))
        if latency:
            await asyncio.sleep(latency)
        key = request.cache_key
        self._attempts[key] += 1
        status = int(options.get("error_status", 429))
        rng = random.Random(f"{request.seed}:{request.query_id}:{self.deployment.name}")
        always_fails = rng.random() < float(options.get("fail_rate", 0.0))
        if always_fails or self._attempts[key] <= int(options.get("fail_first", 0)):
            retry_after = options.get("retry_after")
            raise ProviderError(
                f"mock error {status}",
                retryable=status in {408, 429, 500, 502, 503, 504},
                retry_after=None if retry_after is None else float(retry_after),
                status=status,
            )
        text = self._text(request, rng)
        max_tokens = request.params.max_tokens
        words = text.split()
        finish = "stop"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish = words[:max_tokens], "length"
        return Completion(
            text=" ".join(words),
            finish_reason=finish,
            prompt_tokens=sum(len(m.content.split()) for m in request.messages),
            completion_tokens=len(words),
            cost_usd=float(options.get("cost_usd", 0.0)),
            model=self.deployment.model,
        )

    def _text(self, request: SampleRequest, rng: random.Random) -> str:
        diversity = max(1, int(self.deployment.options.get("diversity", 3)))
        opening = _OPENINGS[rng.randrange(min(diversity, len(_OPENINGS)))]
        prompt_words = [w.strip(".,!?").lower() for w in request.messages[-1].content.split()]
        pool = prompt_words if self.deployment.options.get("style", "echo") == "echo" else []
        pool = pool + _WORDS[: 4 + diversity * 2]
        tail = " ".join(rng.choice(pool) for _ in range(8))
        return f"{opening}: {tail}."
