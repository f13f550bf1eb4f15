"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, LM Studio) over lean HTTP/1.1.

This is the fast path: one keep-alive connection pool per deployment (`http_pool.HttpPool`), no
SDK. The client was chosen on evidence: `bench/http_sampling.py` runs it beside one
`httpx.AsyncClient`, several pooled httpx clients, aiohttp and a raw socket client against a
fixed-latency server; httpx's pool collapses past ~16 connections and aiohttp's per-request
bookkeeping costs more CPU than the rest of the sampler. Hosted APIs with their own dialects go
through the `litellm` provider instead.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from hivemind.providers.base import (
    RETRYABLE_STATUS,
    Provider,
    ProviderError,
    parse_retry_after,
    register,
)
from hivemind.providers.http_pool import HttpPool
from hivemind.spec import Completion, Deployment, SampleRequest


def chat_body(model: str, request: SampleRequest) -> dict[str, Any]:
    """The JSON body of one `/chat/completions` call (one choice: we fan out per sample).

    `min_p` and `top_k` go as top-level keys, which vLLM and llama.cpp's server accept.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "n": 1,
        "seed": request.seed,
    }
    body.update(request.sent_params())
    return body


@register("openai")
class OpenAICompatibleProvider(Provider):
    """POST /chat/completions to `api_base`; the key, if any, as a bearer token."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        if not deployment.api_base:
            raise ValueError(f"deployment {deployment.name!r}: provider 'openai' needs api_base")
        url = urlsplit(str(deployment.api_base))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"deployment {deployment.name!r}: api_base must be an http(s) URL, not {deployment.api_base!r}"
            )
        self._pool: HttpPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> HttpPool:
        """The deployment's pool, made in the running loop (connections cannot change loops)."""
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            headers = {}
            key = self.api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            # No timeout of its own: the sampler bounds every attempt by the deployment's
            # `timeout_s` (one timer per request, not two).
            self._pool = HttpPool(str(self.deployment.api_base), limit=self.max_connections(), headers=headers)
            self._loop = loop
        return self._pool

    async def generate(self, request: SampleRequest) -> Completion:
        body = json.dumps(chat_body(self.deployment.model, request), ensure_ascii=False).encode()
        try:
            response = await self._http().post("/chat/completions", body)
        except ssl.SSLCertVerificationError as exc:  # permanent until someone fixes the certificate
            raise ProviderError(f"{type(exc).__name__}: {self.redact(str(exc))}", retryable=False) from None
        except (OSError, TimeoutError) as exc:  # refused, reset, closed early, timed out
            raise ProviderError(f"{type(exc).__name__}: {self.redact(str(exc))}", retryable=True) from None
        if response.status >= 400:
            text = response.body[:300].decode("utf-8", "replace")
            raise ProviderError(
                f"HTTP {response.status}: {self.redact(text)}",
                retryable=response.status in RETRYABLE_STATUS,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                status=response.status,
            )
        try:
            decoded = json.loads(response.body)
        except ValueError:
            text = response.body[:200].decode("utf-8", "replace")
            raise ProviderError(f"response is not JSON: {self.redact(text)!r}", retryable=False) from None
        if not isinstance(decoded, dict):
            raise ProviderError("response is not a JSON object", retryable=False)
        return parse_chat_response(decoded)

    async def aclose(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.aclose()
        self._pool = None
        self._loop = None


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
