"""The two batch protocols, over plain HTTP (aiohttp): OpenAI's Batch API and Anthropic's Message
Batches. Independent requests at the providers' batch price (half the live one for both) and
limits of their own: the workload of a study.

Each client only speaks the wire protocol (build a request's body, upload, create, find a batch
created by a run that died before journaling its id, poll, read results); the journal and the
state machine are `hivemind.sampling.batches`. Proxies (HTTP(S)_PROXY, NO_PROXY) and CA bundles
are honoured as by the `openai` provider.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hivemind.inputs.samples import Completion, SampleRequest
from hivemind.inputs.spec import Deployment
from hivemind.providers.base import RETRYABLE_STATUS, ProviderError, parse_retry_after
from hivemind.providers.openai import chat_body, environment_proxy, parse_chat_response, tls_context

if TYPE_CHECKING:
    import aiohttp

OPENAI_BASE = "https://api.openai.com/v1"
ANTHROPIC_BASE = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
ENDED_OPENAI = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class ItemResult:
    """One request's outcome in a batch: a completion, or an error (retryable or not)."""

    completion: Completion | None
    error: str | None = None
    retryable: bool = False


def batch_protocol(deployment: Deployment) -> str | None:
    """`openai` or `anthropic` where the deployment has a batch API, else None."""
    model = deployment.model
    if deployment.provider == "openai":
        return "openai"
    if deployment.provider == "litellm":
        if model.startswith(("anthropic/", "claude")):
            return "anthropic"
        if model.startswith(("openai/", "gpt-", "o1", "o3", "o4", "chatgpt-")):
            return "openai"
    return None


class BatchClient(ABC):
    """One deployment's batch endpoint."""

    protocol: str

    def __init__(self, deployment: Deployment, api_key: str | None) -> None:
        self.deployment = deployment
        self.api_key = api_key
        self.model = deployment.model.split("/", 1)[1] if "/" in deployment.model else deployment.model
        self._session: aiohttp.ClientSession | None = None

    @property
    @abstractmethod
    def base(self) -> str: ...

    def headers(self) -> dict[str, str]:
        return {"User-Agent": "hivemind", "Accept": "application/json"}

    async def _call(self, method: str, url: str, **kwargs: Any) -> bytes:
        """One HTTP call; a non-2xx answer is a `ProviderError` (retryable per its status)."""
        import aiohttp

        if self._session is None:
            tls = tls_context() if urlsplit(url).scheme == "https" else False
            self._session = aiohttp.ClientSession(
                headers=self.headers(),
                connector=aiohttp.TCPConnector(ssl=tls),
                timeout=aiohttp.ClientTimeout(total=self.deployment.timeout_s * 5),
            )
        proxy, proxy_auth = environment_proxy(url)
        async with self._session.request(method, url, proxy=proxy, proxy_auth=proxy_auth, **kwargs) as response:
            body = await response.read()
            if response.status >= 300:
                raise ProviderError(
                    f"{method} {urlsplit(url).path}: HTTP {response.status}: {body[:300].decode('utf-8', 'replace')}",
                    retryable=response.status in RETRYABLE_STATUS,
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                    status=response.status,
                )
            return body

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        return dict(json.loads(await self._call(method, url, **kwargs)))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @abstractmethod
    def body(self, request: SampleRequest) -> dict[str, Any]:
        """The request as this protocol carries it."""

    async def upload(self, items: list[tuple[str, dict[str, Any]]]) -> str | None:
        """Upload the input (custom_id, body) where the protocol has a file step; its id."""
        return None

    @abstractmethod
    async def create(self, key: str, input_file_id: str | None, items: list[tuple[str, dict[str, Any]]]) -> str:
        """Create the batch; its remote id."""

    @abstractmethod
    async def find(
        self, key: str, input_file_id: str | None, n_items: int, since: float, taken: set[str]
    ) -> str | None:
        """A batch this key already created (a run killed between create and its journal write)."""

    @abstractmethod
    async def poll(self, remote_id: str) -> tuple[str, bool, dict[str, Any]]:
        """(status, ended, the batch object)."""

    @abstractmethod
    async def results(self, batch: dict[str, Any]) -> dict[str, ItemResult]:
        """custom_id -> outcome, for every item the provider answered (a missing one expired)."""


class OpenAIBatches(BatchClient):
    """`/v1/files` + `/v1/batches`: a JSONL input file, a batch, output and error files."""

    protocol = "openai"

    @property
    def base(self) -> str:
        return str(self.deployment.api_base or OPENAI_BASE).rstrip("/")

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, request: SampleRequest) -> dict[str, Any]:
        return chat_body(self.model, request)

    async def upload(self, items: list[tuple[str, dict[str, Any]]]) -> str | None:
        import aiohttp

        lines = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
            for cid, body in items
        )
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", lines.encode(), filename="hivemind-batch.jsonl", content_type="application/jsonl")
        return str((await self._json("POST", f"{self.base}/files", data=form))["id"])

    async def create(self, key: str, input_file_id: str | None, items: list[tuple[str, dict[str, Any]]]) -> str:
        body = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"hivemind_batch": key},
        }
        return str((await self._json("POST", f"{self.base}/batches", json=body))["id"])

    async def find(
        self, key: str, input_file_id: str | None, n_items: int, since: float, taken: set[str]
    ) -> str | None:
        listed = await self._json("GET", f"{self.base}/batches", params={"limit": "100"})
        for batch in listed.get("data", []):
            metadata = batch.get("metadata") or {}
            mine = metadata.get("hivemind_batch") == key or (
                input_file_id and batch.get("input_file_id") == input_file_id
            )
            if mine and batch["id"] not in taken:
                return str(batch["id"])
        return None

    async def poll(self, remote_id: str) -> tuple[str, bool, dict[str, Any]]:
        batch = await self._json("GET", f"{self.base}/batches/{remote_id}")
        status = str(batch.get("status"))
        return status, status in ENDED_OPENAI, batch

    async def results(self, batch: dict[str, Any]) -> dict[str, ItemResult]:
        outcomes: dict[str, ItemResult] = {}
        for key in ("output_file_id", "error_file_id"):
            if not batch.get(key):
                continue
            data = await self._call("GET", f"{self.base}/files/{batch[key]}/content")
            for line in data.decode("utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    outcomes[str(record["custom_id"])] = _openai_item(record)
        return outcomes


def _openai_item(record: dict[str, Any]) -> ItemResult:
    response = record.get("response") or {}
    status = response.get("status_code")
    if status == 200:
        try:
            return ItemResult(parse_chat_response(response.get("body") or {}))
        except ProviderError as exc:
            return ItemResult(None, str(exc), exc.retryable)
    error = record.get("error") or (response.get("body") or {}).get("error") or {}
    message = error.get("message") or json.dumps(error)[:300]
    code = error.get("code") or error.get("type")
    retryable = status in RETRYABLE_STATUS or code in {"batch_expired", "batch_cancelled"} or status is None
    return ItemResult(None, f"batch item {'HTTP ' + str(status) if status else code}: {message}", retryable)


class AnthropicBatches(BatchClient):
    """`/v1/messages/batches`: the requests inline, results as JSONL at `results_url`."""

    protocol = "anthropic"

    @property
    def base(self) -> str:
        return str(self.deployment.api_base or ANTHROPIC_BASE).rstrip("/").removesuffix("/v1")

    def headers(self) -> dict[str, str]:
        headers = super().headers() | {"anthropic-version": ANTHROPIC_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def body(self, request: SampleRequest) -> dict[str, Any]:
        sent = request.sent_params()
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sent.get("max_tokens") or 1024,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"],
        }
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        if system:
            params["system"] = system
        for key in ("temperature", "top_p", "top_k"):
            if key in sent:
                params[key] = sent[key]
        if sent.get("stop"):
            params["stop_sequences"] = [sent["stop"]] if isinstance(sent["stop"], str) else list(sent["stop"])
        return params

    async def create(self, key: str, input_file_id: str | None, items: list[tuple[str, dict[str, Any]]]) -> str:
        body = {"requests": [{"custom_id": cid, "params": params} for cid, params in items]}
        return str((await self._json("POST", f"{self.base}/v1/messages/batches", json=body))["id"])

    async def find(
        self, key: str, input_file_id: str | None, n_items: int, since: float, taken: set[str]
    ) -> str | None:
        """Message Batches carry no metadata: a batch created since the journaled attempt (less
        a minute of clock skew) with as many requests, not adopted by another batch."""
        import datetime

        listed = await self._json("GET", f"{self.base}/v1/messages/batches", params={"limit": "100"})
        for batch in listed.get("data", []):
            created = datetime.datetime.fromisoformat(str(batch["created_at"]).replace("Z", "+00:00")).timestamp()
            counts = batch.get("request_counts") or {}
            if created >= since - 60 and sum(counts.values()) == n_items and batch["id"] not in taken:
                return str(batch["id"])
        return None

    async def poll(self, remote_id: str) -> tuple[str, bool, dict[str, Any]]:
        batch = await self._json("GET", f"{self.base}/v1/messages/batches/{remote_id}")
        status = str(batch.get("processing_status"))
        return status, status == "ended", batch

    async def results(self, batch: dict[str, Any]) -> dict[str, ItemResult]:
        url = batch.get("results_url") or f"{self.base}/v1/messages/batches/{batch['id']}/results"
        outcomes: dict[str, ItemResult] = {}
        for line in (await self._call("GET", str(url))).decode("utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                outcomes[str(record["custom_id"])] = _anthropic_item(record.get("result") or {})
        return outcomes


def _anthropic_item(result: dict[str, Any]) -> ItemResult:
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        text = "".join(block.get("text", "") for block in message.get("content") or [] if block.get("type") == "text")
        usage = message.get("usage") or {}
        stop = message.get("stop_reason")
        return ItemResult(
            Completion(
                text=text,
                finish_reason="length" if stop == "max_tokens" else "stop" if stop else None,
                prompt_tokens=usage.get("input_tokens"),
                completion_tokens=usage.get("output_tokens"),
                model=message.get("model"),
            )
        )
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or result.get("error") or {}
        retryable = error.get("type") in {"api_error", "overloaded_error", "rate_limit_error"}
        return ItemResult(None, f"batch item {error.get('type')}: {error.get('message')}", retryable)
    return ItemResult(None, f"batch item {kind}", True)  # canceled or expired: ask again


def batch_client(deployment: Deployment, api_key: str | None) -> BatchClient:
    protocol = batch_protocol(deployment)
    if protocol is None:
        raise ValueError(
            f"deployment {deployment.name!r} ({deployment.provider}, {deployment.model}) has no batch API: "
            "batches are OpenAI's (provider openai, or litellm with an OpenAI model) and Anthropic's "
            "(litellm with an anthropic/ model)"
        )
    if api_key is None and deployment.api_key_env is None:
        api_key = os.environ.get("ANTHROPIC_API_KEY" if protocol == "anthropic" else "OPENAI_API_KEY")
    return AnthropicBatches(deployment, api_key) if protocol == "anthropic" else OpenAIBatches(deployment, api_key)
