"""The zoo's `embedders:` entries: what a remote embedder is, validated (light: pydantic only).

`hivemind.inputs.zoo` validates the section with these models; `hivemind.providers.embedders` runs them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from hivemind.errors import HivemindError
from hivemind.inputs.spec import NAME_PATTERN, Strict

ID_SCHEME = "remote-v1"
"""Version of what a remote id hashes; a change gives new ids (and new cache rows)."""


class EmbedderError(HivemindError, ValueError):
    """A remote embedder is misconfigured, refused a text, or returned unusable vectors."""

    field = "embedders"


class EmbedderEntry(Strict):
    """One entry of the zoo's `embedders:` section."""

    name: str = Field(pattern=NAME_PATTERN)
    """What specs, `--embedder` and the service's allow-list call it."""
    provider: Literal["openai", "litellm"]
    """`openai`: any OpenAI-compatible `/v1/embeddings` (vLLM, TEI, Ollama, llama.cpp server,
    OpenAI itself); `litellm`: litellm's routing (OpenAI, Cohere, Voyage, Gemini, ...)."""
    model: str = Field(min_length=1, max_length=500)
    """The model as the provider names it (`openai/...`, `cohere/...` for litellm)."""
    api_base: str | None = None
    """Base URL ending before `/embeddings`, e.g. `http://127.0.0.1:8080/v1` (required for `openai`)."""
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the key; keys never live in the zoo."""
    dimensions: int | None = Field(None, ge=1, le=65536)
    """Requested output dimension (sent as `dimensions`); every vector is checked against it."""
    batch_size: int = Field(64, ge=1, le=2048)
    """Texts per request."""
    max_concurrency: int = Field(4, ge=1, le=256)
    """Requests in flight at once."""
    rpm: float | None = Field(None, gt=0)
    """Requests per minute (paced evenly); unset: no pacing."""
    tpm: float | None = Field(None, gt=0)
    """Tokens per minute (a request's tokens estimated as its characters / 4, paced evenly); unset:
    no token pacing."""
    max_input_chars: int | None = Field(None, ge=1)
    """Texts longer than this are refused before anything is sent; unset: the provider's limit."""
    timeout_s: float = Field(60.0, gt=0)
    """Per-request timeout."""
    max_retries: int = Field(6, ge=0, le=20)
    """Retries of a request that failed with 429, 5xx or a connection error."""

    @model_validator(mode="after")
    def _endpoint(self) -> EmbedderEntry:
        if self.provider == "openai" and not self.api_base:
            raise ValueError("provider 'openai' needs api_base (e.g. http://127.0.0.1:8080/v1)")
        if self.api_base is not None:
            url = urlsplit(self.api_base)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"api_base must be an http(s) URL, not {self.api_base!r}")
        return self

    def endpoint(self) -> str:
        """The endpoint's identity: scheme, host, port and path of `api_base` (no credentials,
        query or fragment); litellm without `api_base`: its provider's default endpoint."""
        if not self.api_base:
            return "default"
        url = urlsplit(self.api_base)
        port = url.port or (443 if url.scheme == "https" else 80)
        return f"{url.scheme}://{(url.hostname or '').lower()}:{port}{url.path.rstrip('/')}"

    def embedder_id(self) -> str:
        """`provider:model[:dims]@hash`; the hash covers provider, model, dims and endpoint."""
        recipe = {
            "scheme": ID_SCHEME,
            "provider": self.provider,
            "model": self.model,
            "dimensions": self.dimensions,
            "endpoint": self.endpoint(),
        }
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
        dims = f":{self.dimensions}" if self.dimensions else ""
        return f"{self.provider}:{self.model}{dims}@{digest}"


class EmbedderSection(Strict):
    """The `embedders:` section alone (read without validating the rest of the zoo)."""

    embedders: list[EmbedderEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> EmbedderSection:
        unique_embedder_names(self.embedders)
        return self


def unique_embedder_names(entries: Sequence[EmbedderEntry]) -> None:
    """Raise (a pydantic-friendly ValueError) when two entries share a name."""
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if entry.name in seen:
            raise ValueError(f"embedders[{position}].name: duplicate name {entry.name!r}")
        seen.add(entry.name)
