"""A study's equivalence judge (`analysis: {classes: ...}`): its options, default prompt and bound.

The judging itself is `hivemind.analysis.judge`; `hivemind plan` reads the bound from here.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from hivemind.errors import HivemindError
from hivemind.inputs.spec_base import NAME_PATTERN, Strict

JUDGE_PLACEHOLDERS = ("{a}", "{b}")
"""What a judge prompt must contain: the two responses (`{query}`, the query, is optional)."""


class JudgeClasses(Strict):
    """Equivalence classes decided by a judge deployment (`hivemind.analysis.judge`)."""

    judge: str = Field(pattern=NAME_PATTERN)
    """A deployment of the zoo (any provider: llamacpp, openai, litellm, mock) that decides
    whether two responses to a query say the same thing."""
    prompt: str | None = Field(None, min_length=1)
    """The judge's user message, with `{a}` and `{b}` (the two responses) and optionally
    `{query}`; None: `hivemind.analysis.judge.DEFAULT_PROMPT`. The reply is read as yes or no."""
    max_tokens: int = Field(16, ge=1, le=4096)
    """Tokens the judge may answer with (at temperature 0)."""

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, value: str | None) -> str | None:
        missing = [p for p in JUDGE_PLACEHOLDERS if value is not None and p not in value]
        if missing:
            raise ValueError(f"the judge prompt must contain {' and '.join(missing)} (the two responses)")
        return value


DEFAULT_PROMPT = (
    "Request: {query}\n"
    "Response A: {a}\n"
    "Response B: {b}\n"
    "Do A and B name the same thing or give the same answer? Answer yes or no."
)
"""The judge's user message unless the spec gives its own (`{query}`, `{a}`, `{b}` are filled in)."""
CALL_BOUND_RULE = (
    "At most n (n - 1) / 2 judge calls per group of n responses (reached when every response is its own "
    "class), before the cache; cached judgments and identical texts are not sent."
)


class JudgeError(HivemindError, ValueError):
    """The judge cannot be used (unknown deployment, provider not ready); one line naming the field."""


def call_bound(n: int) -> int:
    """`CALL_BOUND_RULE`: the most judge calls a group of `n` responses can need."""
    return n * (n - 1) // 2
