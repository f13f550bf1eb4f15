"""Rate limits per deployment: one pacer shared by every condition and worker of a deployment.

Hosted APIs limit requests and tokens per minute. A deployment's `rpm` and `tpm` (in the zoo)
become two schedules of the generic cell rate algorithm (a token bucket written as the time
the bucket is next free, with no burst): each request waits for its slot, so requests leave
evenly spaced at `60 / rpm` seconds and tokens at `tpm / 60` a second, and a server counting
over any window (a sliding minute, a refilling bucket) never sees more than its limit. Tokens are estimated before a call (prompt characters / 4 plus
`max_tokens`) and corrected from the usage the answer reports.

When the server still says 429 (another client shares the key, or the zoo's figures are too
high), every worker of the deployment pauses for the `Retry-After` the server gave (or the
sampler's backoff) and the pace drops by half; each success then wins back a little of it, so
the pace recovers gradually instead of hitting the wall again. `x-ratelimit-remaining-*: 0`
headers (OpenAI's, vLLM's, most gateways') pause the deployment until their `x-ratelimit-reset-*`.
A deployment without `rpm` or `tpm` is not paced, but its 429s and headers still pause all of
its workers, not only the one that was refused.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping

SLOWEST = 1 / 16
"""The lowest fraction of the configured pace 429s can push a deployment to."""
RECOVERY = 1 / 32
"""The fraction of the configured pace each success wins back after a slowdown."""
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str | None) -> float | None:
    """Seconds from an `x-ratelimit-reset-*` value: `1s`, `6m0s`, `20ms`, `1h2m3.5s` or `0.5`."""
    if text is None:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> int:
    """What a call will count against a token limit, before it is sent (corrected after)."""
    return prompt_chars // 4 + 1 + (max_tokens if max_tokens is not None else 256)


class Pacer:
    """The request and token schedules of one deployment, shared by all of its workers."""

    def __init__(
        self, rpm: float | None = None, tpm: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.factor = 1.0
        """The fraction of the configured pace in force (below 1 after 429s)."""
        self.throttles = 0
        """429s seen."""
        self._request_at = 0.0  # when the next request may leave
        self._token_at = 0.0  # when the token bucket has room again
        self._paused_until = 0.0

    @property
    def limited(self) -> bool:
        """Whether the zoo gave this deployment a limit."""
        return self.rpm is not None or self.tpm is not None

    def pace(self) -> str:
        """The pace in force, for the progress line (empty for an unpaced deployment)."""
        parts = []
        if self.rpm is not None:
            parts.append(f"{self.rpm * self.factor:.0f} rpm")
        if self.tpm is not None:
            parts.append(f"{self.tpm * self.factor:.0f} tpm")
        paused = self._paused_until - self.clock()
        if paused > 0:
            parts.append(f"paused {paused:.0f}s")
        return ", ".join(parts)

    async def acquire(self, tokens: int = 0) -> None:
        """Wait for this request's slot (and room for its `tokens` when there is a `tpm`).

        The schedule is kept through small delays (a wake-up a little late does not slow the
        pace), but a request leaving more than an interval late starts the schedule again from
        now: workers a stalled loop wakes together leave spaced, not all at once.
        """
        while True:
            now = self.clock()
            start = max(self._paused_until, self._request_at, self._token_at)
            if start <= now:
                break
            await asyncio.sleep(start - now)
        if self.rpm is not None:
            interval = 60.0 / (self.rpm * self.factor)
            self._request_at = (start if now - start <= interval else now) + interval
        if self.tpm is not None:
            cost = tokens / (self.tpm * self.factor / 60.0)
            self._token_at = (start if now - start <= cost else now) + cost

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token schedule once a call's usage is known; a success wins back pace."""
        if self.tpm is not None and actual is not None:
            self._token_at += (actual - estimated) / (self.tpm * self.factor / 60.0)
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + RECOVERY)

    def throttled(self, wait_s: float) -> None:
        """A 429: every worker pauses `wait_s` and the pace halves (down to `SLOWEST`)."""
        self.throttles += 1
        self._paused_until = max(self._paused_until, self.clock() + wait_s)
        if self.limited:
            self.factor = max(SLOWEST, self.factor / 2)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Pause until the reset the server names when it says nothing remains (any response)."""
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is None or remaining.strip() not in ("0", "0.0"):
                continue
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            if reset is not None:
                self._paused_until = max(self._paused_until, self.clock() + reset)
