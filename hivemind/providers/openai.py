"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, LM Studio) over plain httpx.

This is the lean path: one pooled `httpx.AsyncClient` per deployment, no SDK, so the sampler's
overhead over a bare HTTP loop stays small (see `bench/sampling.py`). Hosted APIs with their
own dialects go through the `litellm` provider instead.
"""

from __future__ import annotations

from typing import Any

import httpx

from hivemind.providers.base import (
    RETRYABLE_STATUS,
    Provider,
    ProviderError,
    parse_retry_after,
    register,
)
from hivemind.spec import Completion, Deployment, SampleRequest

def chat_body(model: str, request: SampleRequest) -> dict[str, Any]:
    """The JSON body of one `/chat/completions` call (one choice: we fan out per sample).

    `min_p` and `top_k` go as top-level keys, which vLLM and llama.cpp's server accept.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.model_dump() for m in request.messages],
        "n": 1,
        "seed": request.seed,
    }
    body.update(request.params.explicit())
    return body


@register("openai")
class OpenAICompatibleProvider(Provider):
    """POST /chat/completions to `api_base`; the key, if any, as a bearer token."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        if not deployment.api_base:
            raise ValueError(f"deployment {deployment.name!r}: provider 'openai' needs api_base")
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {}
            key = self.api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            limits = httpx.Limits(
                max_connections=self.max_connections(),
                max_keepalive_connections=self.max_connections(),
            )
            self._client = httpx.AsyncClient(
                base_url=str(self.deployment.api_base).rstrip("/"),
                headers=headers,
                timeout=self.deployment.timeout_s,
                limits=limits,
            )
        return self._client

    async def generate(self, request: SampleRequest) -> Completion:
        try:
            response = await self._http().post(
                "/chat/completions", json=chat_body(self.deployment.model, request)
            )
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise ProviderError(
                f"{type(exc).__name__}: {self.redact(str(exc))}", retryable=True
            ) from None
        if response.status_code >= 400:
            raise ProviderError(
                f"HTTP {response.status_code}: {self.redact(response.text[:300])}",
                retryable=response.status_code in RETRYABLE_STATUS,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                status=response.status_code,
            )
        return parse_chat_response(response.json())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def parse_chat_response(payload: dict[str, Any]) -> Completion:
    """Read one choice out of an OpenAI chat response, refusing empty `choices`."""
    choices = payload.get("choices") or []
    if len(choices) < 1:
        raise ProviderError("response had no choices", retryable=True)
    choice = choices[0]
    message = choice.get("message") or {}
    usage = payload.get("usage") or {}
    return Completion(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        model=payload.get("model"),
    )
