"""The openai provider's keep-alive HTTP/1.1 pool against real loopback servers that answer with
scripted bytes: the framings real servers use, servers that close connections, limits, errors."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hivemind.providers.base import ProviderError
from hivemind.providers.http_pool import HttpPool, IncompleteResponse
from hivemind.providers.registry import create_provider
from hivemind.spec import Deployment, Message, SampleRequest, SamplingParams

CHAT = json.dumps(
    {
        "choices": [{"message": {"role": "assistant", "content": "Time is a river."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "model": "m",
    }
).encode()
Answer = Callable[[int, bytes], bytes | None]
"""(request number, request bytes) -> raw response bytes; None closes the connection unanswered.
Bytes starting with CLOSE are written (without the marker), then the connection is closed."""
CLOSE = b"<close>"


def framed(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


@asynccontextmanager
async def scripted_server(answer: Answer) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback server reading whole requests and writing what `answer` says."""
    stats = {"requests": 0, "connections": 0, "open": 0, "max_open": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                stats["requests"] += 1
                response = answer(stats["requests"], request)
                if response is None:
                    break
                closing = response.startswith(CLOSE) or b"connection: close" in response.lower()
                writer.write(response.removeprefix(CLOSE))
                await writer.drain()
                if closing:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            stats["open"] -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", stats
    finally:
        server.close()


def _request() -> SampleRequest:
    return SampleRequest(
        study="s",
        query_id="q",
        deployment="d",
        condition="default",
        sample_index=0,
        seed=1,
        messages=(Message(role="user", content="hi"),),
        params=SamplingParams(),
        deployment_identity={},
    )


async def test_content_length_chunked_gzip_and_close_delimited_bodies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (CHAT[:10], CHAT[10:]))
        + b"0\r\n\r\n"
    )
    zipped = gzip.compress(CHAT)
    answers = [
        framed(CHAT),
        chunked,
        framed(zipped, "Content-Encoding: gzip"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + framed(CHAT),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + CHAT,
    ]
    async with scripted_server(lambda n, _: answers[n - 1]) as (base, stats):
        pool = HttpPool(base, limit=1)
        bodies = [(await pool.post("/chat/completions", b"{}")).body for _ in answers]
        await pool.aclose()
    assert bodies == [CHAT] * len(answers)
    assert stats["connections"] == 1, "keep-alive: one connection until the server closes it"


async def test_a_connection_the_server_closed_is_replaced_transparently() -> None:
    # The server closes after each answer without saying so (an idle-timeout race).
    async with scripted_server(lambda n, _: framed(CHAT) if n % 2 else None) as (base, stats):
        pool = HttpPool(base, limit=1)
        for _ in range(3):
            assert (await pool.post("/chat/completions", b"{}")).status == 200
        await pool.aclose()
    assert stats["connections"] >= 3


async def test_a_truncated_answer_is_an_error_not_a_silent_retry() -> None:
    answers = [framed(CHAT), CLOSE + framed(CHAT)[:-5]]  # the second stops 5 bytes short
    async with scripted_server(lambda n, _: answers[n - 1]) as (base, stats):
        pool = HttpPool(base, limit=1)
        await pool.post("/chat/completions", b"{}")
        with pytest.raises(IncompleteResponse, match="before a whole response"):
            await pool.post("/chat/completions", b"{}")
        await pool.aclose()
    assert stats["requests"] == 2, "part of an answer arrived: the request is not sent again"


async def test_at_most_limit_connections_are_opened() -> None:
    async with scripted_server(lambda n, _: framed(CHAT)) as (base, stats):
        pool = HttpPool(base, limit=3)
        await asyncio.gather(*(pool.post("/chat/completions", b"{}") for _ in range(30)))
        await pool.aclose()
    assert stats["requests"] == 30 and stats["max_open"] <= 3 and stats["connections"] <= 3


async def test_the_provider_sends_the_body_and_key_and_classifies_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_TEST_KEY", "sk-pool-secret")
    seen: list[bytes] = []
    answers = [
        framed(CHAT),
        framed(b'{"error": "slow down"}', "Retry-After: 7", status="429 Too Many"),
        framed(b"<html>proxy</html>"),
        framed(b'{"error": "bad key sk-pool-secret"}', status="401 No"),
    ]

    def answer(n: int, request: bytes) -> bytes:
        seen.append(request)
        return answers[n - 1]

    async with scripted_server(answer) as (base, _):
        provider = create_provider(
            Deployment(name="d", provider="openai", model="m", api_base=base, api_key_env="POOL_TEST_KEY")
        )
        completion = await provider.generate(_request())
        with pytest.raises(ProviderError) as limited:
            await provider.generate(_request())
        with pytest.raises(ProviderError) as garbled:
            await provider.generate(_request())
        with pytest.raises(ProviderError) as denied:
            await provider.generate(_request())
        await provider.aclose()
    assert completion.text == "Time is a river." and completion.completion_tokens == 4
    head, body = seen[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert b"Authorization: Bearer sk-pool-secret" in head
    assert json.loads(body)["messages"] == [{"role": "user", "content": "hi"}]
    assert limited.value.retryable and limited.value.retry_after == 7 and limited.value.status == 429
    assert not garbled.value.retryable and "not JSON" in str(garbled.value)
    assert not denied.value.retryable and "sk-pool-secret" not in str(denied.value)


async def test_refused_connections_are_retryable_errors() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    provider = create_provider(
        Deployment(name="d", provider="openai", model="m", api_base=f"http://127.0.0.1:{port}/v1")
    )
    with pytest.raises(ProviderError) as refused:
        await provider.generate(_request())
    assert refused.value.retryable


def test_a_bad_api_base_is_refused_before_sampling() -> None:
    with pytest.raises(ValueError, match="http"):
        create_provider(Deployment(name="d", provider="openai", model="m", api_base="localhost:8000"))
