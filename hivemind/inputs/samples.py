"""One sample as it travels: the request a provider is asked (`SampleRequest`, its `Message`s,
its seed from `sample_seed`) and what comes back (`Completion`).

The frozen request is what the store keys a row by (`row_key`) and what the cache keys an
answer by (`cache_key`); the spec's declarations it is built from are `hivemind.inputs.spec`.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hivemind.inputs.spec import SamplingParams
from hivemind.inputs.spec_base import Strict, canonical_json, sha256_hex


class Message(Strict):
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


class SampleRequest(Strict):
    """One frozen sample: (study, query, deployment, condition, params, sample_index, seed).

    Its `cache_key` covers everything that can change the output, the sample index included,
    so K samples of one query never collapse into one cached answer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    study: str
    query_id: str
    deployment: str
    condition: str
    sample_index: int = Field(ge=0)
    seed: int
    messages: tuple[Message, ...]
    params: SamplingParams
    deployment_identity: dict[str, Any]
    dropped_params: tuple[str, ...] = ()
    """Parameters of `params` not sent because the provider does not honour them and the
    condition allows that; recorded with the row. Not in the cache key: it follows from the
    deployment and the parameters, which are."""

    def sent_params(self) -> dict[str, Any]:
        """The set parameters a provider sends: `params` less the ones recorded as not sent."""
        return {k: v for k, v in self.params.explicit().items() if k not in self.dropped_params}

    @cached_property
    def cache_key(self) -> str:
        """sha256 of the canonical JSON of every output-relevant field."""
        return sha256_hex(
            canonical_json(
                {
                    "deployment": self.deployment_identity,
                    "messages": [m.model_dump() for m in self.messages],
                    "params": self.params.key_data(),
                    "sample_index": self.sample_index,
                    "seed": self.seed,
                }
            )
        )

    @property
    def row_key(self) -> tuple[str, str, str, str, int]:
        """The store's unique key: exactly one row per (study, query, deployment, condition, index)."""
        return (self.study, self.query_id, self.deployment, self.condition, self.sample_index)


def sample_seed(base_seed: int, query_id: str, deployment: str, condition: str, index: int) -> int:
    """A distinct, reproducible 31-bit seed per sample (a repeated seed gives identical samples)."""
    digest = hashlib.sha256(canonical_json([base_seed, query_id, deployment, condition, index]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Completion(BaseModel):
    """What a provider returns for one request."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    model: str | None = None
    """The model name the provider reports (may differ from the requested one)."""
