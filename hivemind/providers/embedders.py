"""Embedders from any provider: the zoo's `embedders:` section, resolved by name.

An entry names a remote embedding endpoint:

    embedders:
      - name: oai-small
        provider: openai            # any OpenAI-compatible POST {api_base}/embeddings
        model: text-embedding-3-small
        api_base: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY
        dimensions: 512             # optional; sent as `dimensions`, and checked
        batch_size: 64
        max_concurrency: 4
        rpm: 3000                   # optional: requests per minute, paced
      - name: cohere-v3
        provider: litellm           # hosted providers through litellm's own request path
        model: cohere/embed-english-v3.0
        api_key_env: COHERE_API_KEY

`resolve_embedder(name, zoo)` gives a `RemoteEmbedder` for an entry and, for any other name,
today's in-process sentence-transformers `Embedder`, so a spec's `embedder:`, `--embedder` on
the CLI, the service's allow-list and the scans all take both kinds.

Rules every remote embedder follows:
- Its `embedder_id` hashes the provider, the model, `dimensions` and the endpoint's identity
  (scheme, host, port, path of `api_base`; never a key), so vector caches never mix.
- Texts go in batches of `batch_size`, at most `max_concurrency` requests at once, paced by
  `rpm`; 429, 5xx and connection errors are retried with the sampler's rules (exponential
  backoff with jitter, `Retry-After` honoured, `max_retries` tries).
- Vectors are checked (one per text, all of one dimension, `dimensions` when set, finite, not
  zero) and renormalised to unit length before they enter the cache.
- Long texts: each text is sent whole and never truncated or chunked here. A text longer than
  `max_input_chars` (when set) is refused before anything is sent, with a clear error; the
  provider's own limit otherwise applies, and its refusal is reported as one clear line.
- The key's variable is read only when something must be sent: a fully cached re-analysis
  needs no key and sends nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from hivemind.inputs.embedder_entry import (
    EmbedderEntry,
    EmbedderError,
    EmbedderSection,
)

if TYPE_CHECKING:
    import numpy as np

    from hivemind.vectors.embed import Embedder

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""The sampler's retryable statuses (`hivemind.providers.base.RETRYABLE_STATUS`)."""
_T = TypeVar("_T")


class _RequestError(Exception):
    """One failed request, classified for the retry loop."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def zoo_embedders(zoo_path: str | Path | None = None) -> dict[str, EmbedderEntry]:
    """The zoo's embedder entries by name; {} when the zoo file does not exist.

    Only the `embedders:` section is validated, so a study whose deployments changed in the zoo
    still analyses; a bad entry is one clear line per problem (`embedders[0].provider: ...`).
    """
    import yaml

    from hivemind.inputs.zoo import ZooError, default_zoo_path, format_validation_error

    path = Path(zoo_path) if zoo_path else default_zoo_path()
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ZooError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ZooError(f"{path}: expected a mapping with a `deployments:` list")
    try:
        section = EmbedderSection.model_validate({"embedders": raw.get("embedders") or []})
    except ValidationError as exc:
        raise ZooError(format_validation_error(str(path), exc), field="embedders") from None
    return {entry.name: entry for entry in section.embedders}


def embedding_price(entry: EmbedderEntry) -> float | None:
    """Dollars per input token from litellm's map, for a hosted model only (`litellm`, or the
    `openai` provider at OpenAI's own endpoint): a self-hosted server's model name is not a price."""
    from urllib.parse import urlsplit

    from hivemind.providers.prices import model_info

    hosted = (
        entry.provider == "litellm" or urlsplit(entry.api_base or "https://api.openai.com").hostname == "api.openai.com"
    )
    info = model_info(entry.model) if hosted else None
    price = (info or {}).get("input_cost_per_token")
    return float(price) if price is not None else None


def resolve_embedder(
    name: str, zoo_path: str | Path | None = None, *, progress: bool = False
) -> Embedder | RemoteEmbedder:
    """The zoo's embedder called `name`, else the in-process sentence-transformers model `name`."""
    entry = zoo_embedders(zoo_path).get(name)
    if entry is not None:
        return RemoteEmbedder(entry, progress=progress)
    from hivemind.vectors.embed import Embedder

    return Embedder(name, progress=progress)


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to its end from sync code, also when this thread runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _retry_after(headers: Any) -> float | None:
    from hivemind.providers.base import parse_retry_after

    value = headers.get("retry-after") if headers else None
    return parse_retry_after(value) if value is not None else None


class RemoteEmbedder:
    """Embeds texts through a zoo entry's endpoint; same interface as `hivemind.vectors.embed.Embedder`
    where the pipeline uses it (`embedder_id`, `model_name`, `dim`, `encode`, `texts_encoded`)."""

    remote = True

    def __init__(self, entry: EmbedderEntry, *, progress: bool = False) -> None:
        self.entry = entry
        self.model_name = entry.name
        self.progress = progress
        self.texts_encoded = 0
        """Texts embedded so far (cache tests read it)."""
        self.requests_sent = 0
        """HTTP requests sent so far, retries included."""
        self.retries = 0
        self.prompt_tokens = 0
        """Tokens the provider reported (`usage.prompt_tokens`), when it reports them."""
        self._dim = entry.dimensions
        self._pace_lock = threading.Lock()
        self._next_start = 0.0
        self._next_token_start = 0.0
        self._client: Any = None

    def usage(self) -> dict[str, Any]:
        """Tokens the provider reported so far, and their cost at litellm's price (`embedding_price`)."""
        price = embedding_price(self.entry)
        return {"prompt_tokens": self.prompt_tokens, "cost_usd": None if price is None else self.prompt_tokens * price}

    @property
    def embedder_id(self) -> str:
        return self.entry.embedder_id()

    @property
    def dim(self) -> int:
        """The vectors' dimension: `dimensions`, else what the endpoint returned (asked once)."""
        if self._dim is None:
            self.encode(["dimension probe"], progress=False)
        assert self._dim is not None
        return self._dim

    def _key(self) -> str | None:
        env = self.entry.api_key_env
        if env and not os.environ.get(env):
            raise EmbedderError(f"embedder {self.entry.name!r} needs the environment variable {env}, which is not set")
        return os.environ.get(env) if env else None

    def _refuse_long(self, texts: Sequence[str]) -> None:
        limit = self.entry.max_input_chars
        if limit is None:
            return
        for text in texts:
            if len(text) > limit:
                digest = hashlib.sha256(text.encode()).hexdigest()[:12]
                raise EmbedderError(
                    f"embedder {self.entry.name!r}: a text of {len(text)} characters (sha256 {digest}...) "
                    f"exceeds max_input_chars {limit}; texts are never truncated: raise the limit, "
                    "or use an embedder that takes longer inputs"
                )

    def encode(self, texts: Sequence[str], progress: bool | None = None) -> np.ndarray:
        """Unit float32 vectors, one row per text, in order (checked, renormalised)."""
        import numpy as np

        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        self._refuse_long(texts)
        key = self._key()
        rows = _run(self._encode_all(texts, key, self.progress if progress is None else progress))
        vectors = self._checked(rows, len(texts))
        self.texts_encoded += len(texts)
        return vectors

    async def _encode_all(self, texts: list[str], key: str | None, progress: bool) -> list[list[float]]:
        size = self.entry.batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        gate = asyncio.Semaphore(self.entry.max_concurrency)
        session = await self._open_session(key)
        from rich.progress import Progress

        from hivemind.vectors.embed import PROGRESS_MIN_TEXTS

        bar = Progress(transient=True, disable=not (progress and len(texts) > PROGRESS_MIN_TEXTS))
        try:
            with bar:
                task = bar.add_task(f"embedding ({self.entry.name})", total=len(texts))

                async def one(batch: list[str]) -> list[list[float]]:
                    async with gate:
                        rows = await self._with_retries(session, batch, key)
                    bar.update(task, advance=len(batch))
                    return rows

                done = await asyncio.gather(*(one(b) for b in batches))
        finally:
            if session is not None:
                await session.close()
        return [row for rows in done for row in rows]

    async def _open_session(self, key: str | None) -> Any:
        if self.entry.provider != "openai":
            return None
        import aiohttp

        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = aiohttp.ClientTimeout(total=self.entry.timeout_s)
        return aiohttp.ClientSession(headers=headers, timeout=timeout)

    async def _pace(self, batch: list[str]) -> None:
        """Wait for this request's start slot under `rpm` and `tpm` (shared by every call of this
        embedder); its tokens are estimated as characters / 4, as OpenAI's guidance counts them."""
        rpm, tpm = self.entry.rpm, self.entry.tpm
        if rpm is None and tpm is None:
            return
        tokens = sum(len(text) for text in batch) / 4
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start, self._next_token_start)
            self._next_start = start + (60.0 / rpm if rpm else 0.0)
            self._next_token_start = start + (tokens * 60.0 / tpm if tpm else 0.0)
        if start > now:
            await asyncio.sleep(start - now)

    async def _with_retries(self, session: Any, batch: list[str], key: str | None) -> list[list[float]]:
        for attempt in range(self.entry.max_retries + 1):
            await self._pace(batch)
            self.requests_sent += 1
            try:
                if self.entry.provider == "openai":
                    return await self._post_openai(session, batch)
                return await asyncio.to_thread(self._post_litellm, batch, key)
            except _RequestError as exc:
                if not exc.retryable or attempt == self.entry.max_retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise EmbedderError(f"embedder {self.entry.name!r}{tries}: {exc}") from None
                self.retries += 1
                backoff = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random() / 2)
                await asyncio.sleep(exc.retry_after if exc.retry_after is not None else backoff)
        raise AssertionError("unreachable")

    def _body(self, batch: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.entry.model, "input": batch, "encoding_format": "float"}
        if self.entry.dimensions is not None:
            body["dimensions"] = self.entry.dimensions
        return body

    async def _post_openai(self, session: Any, batch: list[str]) -> list[list[float]]:
        import aiohttp

        url = f"{str(self.entry.api_base).rstrip('/')}/embeddings"
        try:
            async with session.post(url, data=json.dumps(self._body(batch), ensure_ascii=False)) as response:
                text = await response.text()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _RequestError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if status >= 400:
            raise _RequestError(
                _http_message(status, text), retryable=status in RETRYABLE_STATUS, retry_after=_retry_after(headers)
            )
        try:
            payload = json.loads(text)
        except ValueError:
            raise _RequestError(f"response is not JSON: {text[:200]!r}", retryable=False) from None
        return self._rows(payload, len(batch))

    def _post_litellm(self, batch: list[str], key: str | None) -> list[list[float]]:
        """One `litellm.embedding` call (sync, in a worker thread: its clients never outlive a loop)."""
        from hivemind.providers.litellm import _import_litellm

        litellm = _import_litellm()
        kwargs: dict[str, Any] = {}
        if self.entry.dimensions is not None:
            kwargs["dimensions"] = self.entry.dimensions
        client = self._openai_client(litellm, key)
        if client is not None:
            kwargs["client"] = client
        try:
            response = litellm.embedding(
                model=self.entry.model,
                input=batch,
                api_base=self.entry.api_base,
                api_key=key or ("none" if self.entry.api_base else None),
                timeout=self.entry.timeout_s,
                max_retries=0,  # one retry policy: ours
                num_retries=0,
                **kwargs,
            )
        except Exception as exc:  # litellm maps every provider's errors onto its own classes
            status = getattr(exc, "status_code", None)
            headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(
                exc, "litellm_response_headers", None
            )
            transient = type(exc).__name__ in {
                "Timeout",
                "APIConnectionError",
                "RateLimitError",
                "ServiceUnavailableError",
                "InternalServerError",
            }
            raise _RequestError(
                f"{type(exc).__name__}: {_one_line(str(exc))[:300]}",
                retryable=transient or status in RETRYABLE_STATUS,
                retry_after=_retry_after(headers),
            ) from None
        data = [item if isinstance(item, dict) else dict(item) for item in (getattr(response, "data", None) or [])]
        usage = getattr(response, "usage", None)
        return self._rows({"data": data, "usage": {"prompt_tokens": getattr(usage, "prompt_tokens", None)}}, len(batch))

    def _openai_client(self, litellm: Any, key: str | None) -> Any:
        """For litellm's OpenAI route, an OpenAI client that never retries by itself.

        litellm reads `max_retries=0` as "unset" there (`max_retries or DEFAULT_MAX_RETRIES`) and
        writes that onto any client it is given, so its SDK client would retry 429s before ours
        does; a client whose retries stay 0 keeps one policy (ours)."""
        if self._client is None:
            try:
                provider = litellm.get_llm_provider(model=self.entry.model, api_base=self.entry.api_base)[1]
            except Exception:  # noqa: BLE001 - an unroutable model: litellm's call says why
                provider = None
            if provider != "openai":
                self._client = False
            else:
                self._client = _no_retry_openai_client(key, self.entry.api_base, self.entry.timeout_s)
        return self._client or None

    def _rows(self, payload: Any, count: int) -> list[list[float]]:
        """The vectors of one response, in input order (by `index`), floats or base64 float32."""
        import numpy as np

        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise _RequestError(f"{got} vectors returned for {count} texts", retryable=False)
        ordered: list[Any] = [None] * count
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < count or ordered[index] is not None:
                raise _RequestError(f"vector {position} has a bad or repeated index {index!r}", retryable=False)
            vector = item.get("embedding")
            if isinstance(vector, str):  # encoding_format "base64": little-endian float32
                vector = np.frombuffer(base64.b64decode(vector), dtype="<f4").tolist()
            if not isinstance(vector, list):
                raise _RequestError(f"vector {position} is not a list of numbers", retryable=False)
            ordered[index] = vector
        tokens = (payload.get("usage") or {}).get("prompt_tokens")
        if isinstance(tokens, int):
            self.prompt_tokens += tokens
        return ordered

    def _checked(self, rows: list[list[float]], count: int) -> np.ndarray:
        """One row per text, one dimension (`dimensions` when set), finite, non-zero; unit length."""
        import numpy as np

        name = self.entry.name
        dims = {len(row) for row in rows}
        want = self._dim
        if len(rows) != count or len(dims) != 1 or (want is not None and dims != {want}):
            expected = f"{want}" if want is not None else "one dimension"
            raise EmbedderError(f"embedder {name!r}: vectors of dimension {sorted(dims)}, expected {expected}")
        try:
            vectors = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise EmbedderError(f"embedder {name!r}: a vector holds something other than numbers") from None
        if not np.isfinite(vectors).all():
            raise EmbedderError(f"embedder {name!r}: a vector holds NaN or infinite values; nothing was cached")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise EmbedderError(f"embedder {name!r}: a vector is all zeros; nothing was cached")
        self._dim = int(vectors.shape[1])
        return np.ascontiguousarray(vectors / norms, dtype=np.float32)


def _no_retry_openai_client(key: str | None, base_url: str | None, timeout: float) -> Any:
    """An `openai.OpenAI` whose `max_retries` is 0 whatever is written to it."""
    import openai

    class NoRetryOpenAI(openai.OpenAI):
        @property  # type: ignore[override]
        def max_retries(self) -> int:
            return 0

        @max_retries.setter
        def max_retries(self, value: int) -> None:
            pass

    # base_url None: the SDK's default (api.openai.com)
    return NoRetryOpenAI(api_key=key or "none", base_url=base_url, timeout=timeout, max_retries=0)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _http_message(status: int, body: str) -> str:
    """One line for an HTTP refusal: the status and the server's own message (first 300 chars)."""
    try:
        decoded = json.loads(body)
        error = decoded.get("error") if isinstance(decoded, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error or decoded.get("detail"))
        text = str(message) if message else body
    except (ValueError, AttributeError):
        text = body
    line = f"HTTP {status}: {_one_line(text)[:300]}"
    if status in (400, 413, 422) and any(w in text.lower() for w in ("length", "too long", "token", "too large")):
        line += " (texts are sent whole, never truncated: set max_input_chars to refuse long ones before sending)"
    return line
