"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, Ollama, LM Studio) over aiohttp.

This is the fast path: one `aiohttp.ClientSession` per deployment (and event loop), its
connection pool as large as the deployment's concurrency, no SDK. The library was chosen on
evidence: `bench/http_sampling.py` runs it beside httpx and a raw socket client against a
fixed-latency server, and aiohttp keeps ~0.9 of the raw client at 64 and 256 connections where
httpx's pool collapses. A kept library also brings what a lab's network needs: proxies from
HTTP_PROXY / HTTPS_PROXY / NO_PROXY (read as aiohttp's `trust_env` reads them), and TLS verified against the system store or
a custom CA bundle (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `SSL_CERT_DIR`).
Hosted APIs with their own dialects go through the `litellm` provider instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import (
    RETRYABLE_STATUS,
    Provider,
    ProviderError,
    parse_retry_after,
    register,
)

if TYPE_CHECKING:
    import aiohttp

CA_FILE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Environment variables naming a CA bundle, first set wins (OpenSSL's, then requests', curl's)."""


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


def tls_context() -> ssl.SSLContext:
    """A verifying TLS context: the CA bundle the environment names, else the system store.

    A variable naming a file or folder that does not exist is refused with one line.
    """
    cafile = next((os.environ[v] for v in CA_FILE_VARIABLES if os.environ.get(v)), None)
    capath = os.environ.get("SSL_CERT_DIR") or None
    for variable, value in (("CA bundle", cafile), ("SSL_CERT_DIR", capath)):
        if value is not None and not Path(value).exists():
            raise ValueError(f"{variable} {value!r} (from the environment) does not exist")
    try:
        if cafile is None and capath is None:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except ssl.SSLError as exc:
        raise ValueError(f"CA bundle {cafile!r} could not be read: {exc}") from None


def environment_proxy(url: str) -> tuple[Any, Any]:
    """(proxy URL, proxy auth) for `url` from HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and ~/.netrc
    for the proxy's credentials), else (None, None): what aiohttp's `trust_env` does, looked up
    once per session instead of in two worker threads per request."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
        return None, None


def _response_error(status: int, headers: Any, body: bytes, redact: Any) -> ProviderError:
    text = body[:300].decode("utf-8", "replace")
    return ProviderError(
        f"HTTP {status}: {redact(text)}",
        retryable=status in RETRYABLE_STATUS,
        retry_after=parse_retry_after(headers.get("retry-after")),
        status=status,
    )


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
        self.url = str(deployment.api_base).rstrip("/") + "/chat/completions"
        self._tls = tls_context() if url.scheme == "https" else None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: tuple[Any, Any] = (None, None)

    def _http(self) -> aiohttp.ClientSession:
        """The deployment's session, made in the running loop (connections cannot change loops)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            import aiohttp

            headers = {"User-Agent": "hivemind", "Accept": "application/json", "Content-Type": "application/json"}
            key = self.api_key()
            if key:
                headers["Authorization"] = f"Bearer {key}"
            connector = aiohttp.TCPConnector(limit=self.max_connections(), limit_per_host=0, ssl=self._tls or False)
            # No timeout of its own: the sampler bounds every attempt by the deployment's
            # `timeout_s` (one timer per request, not two).
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._proxy = environment_proxy(self.url)
            self._loop = loop
        return self._session

    async def _post(self, body: bytes) -> tuple[int, Any, bytes]:
        """(status, headers, body) of one POST; a connection the server had closed before any
        byte of the answer came (an idle keep-alive race) is replaced once, transparently."""
        import aiohttp

        for attempt in (1, 2):
            try:
                session = self._http()
                proxy, proxy_auth = self._proxy
                async with session.post(self.url, data=body, proxy=proxy, proxy_auth=proxy_auth) as response:
                    return response.status, response.headers, await response.read()
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def generate(self, request: SampleRequest) -> Completion:
        import aiohttp

        body = json.dumps(chat_body(self.deployment.model, request), ensure_ascii=False).encode()
        try:
            status, headers, payload = await self._post(body)
        except aiohttp.ClientConnectorCertificateError as exc:  # permanent until the certificate is fixed
            reason = getattr(exc, "certificate_error", exc)
            raise ProviderError(
                f"TLS certificate of {self.redact(self.url)} not verified: {reason} (a custom CA bundle goes in "
                "SSL_CERT_FILE or REQUESTS_CA_BUNDLE)",
                retryable=False,
            ) from None
        except aiohttp.ClientHttpProxyError as exc:  # the proxy refused the tunnel
            raise ProviderError(
                f"proxy refused the connection: HTTP {exc.status} {exc.message}",
                retryable=exc.status in RETRYABLE_STATUS,
                status=exc.status,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # refused, reset, truncated, timed out
            raise ProviderError(f"{type(exc).__name__}: {self.redact(str(exc))}", retryable=True) from None
        self.pacer.observe(headers)
        if status >= 400:
            raise _response_error(status, headers, payload, self.redact)
        try:
            decoded = json.loads(payload)
        except ValueError:
            text = payload[:200].decode("utf-8", "replace")
            raise ProviderError(f"response is not JSON: {self.redact(text)!r}", retryable=False) from None
        if not isinstance(decoded, dict):
            raise ProviderError("response is not a JSON object", retryable=False)
        return parse_chat_response(decoded)

    async def aclose(self) -> None:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
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
