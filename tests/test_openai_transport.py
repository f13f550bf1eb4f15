"""The openai provider's transport (aiohttp) against real loopback servers: scripted bytes (the
framings real servers use, servers that close connections, limits, errors), a forward proxy
that counts what goes through it, and a TLS server whose CA the `openssl` CLI made."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hivemind.inputs.samples import Message, SampleRequest
from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec
from hivemind.providers.base import Provider, ProviderError
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import iter_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store
from hivemind.testing.forward_proxy import forward_proxy
from hivemind.testing.openai_server import serve

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


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


def _provider(base: str, concurrency: int = 4) -> Provider:
    return create_provider(
        Deployment(name="d", provider="openai", model="m", api_base=base, max_concurrency=concurrency)
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
        provider = _provider(base, concurrency=1)
        texts = [(await provider.generate(_request())).text for _ in answers]
        await provider.aclose()
    assert texts == ["Time is a river."] * len(answers)
    assert stats["connections"] == 1, "keep-alive: one connection until the server closes it"


async def test_a_connection_the_server_closed_is_replaced_transparently() -> None:
    # The server closes after each answer without saying so (an idle-timeout race).
    async with scripted_server(lambda n, _: framed(CHAT) if n % 2 else None) as (base, stats):
        provider = _provider(base, concurrency=1)
        for _ in range(3):
            assert (await provider.generate(_request())).text == "Time is a river."
        await provider.aclose()
    assert stats["connections"] >= 3


async def test_a_truncated_answer_is_an_error_not_a_silent_retry() -> None:
    answers = [framed(CHAT), CLOSE + framed(CHAT)[:-5]]  # the second stops 5 bytes short
    async with scripted_server(lambda n, _: answers[n - 1]) as (base, stats):
        provider = _provider(base, concurrency=1)
        await provider.generate(_request())
        with pytest.raises(ProviderError) as truncated:
            await provider.generate(_request())
        await provider.aclose()
    assert truncated.value.retryable, "the sampler retries it, counted as an attempt"
    assert stats["requests"] == 2, "part of an answer arrived: the request is not sent again"


async def test_at_most_limit_connections_are_opened() -> None:
    async with scripted_server(lambda n, _: framed(CHAT)) as (base, stats):
        provider = _provider(base, concurrency=3)
        await asyncio.gather(*(provider.generate(_request()) for _ in range(30)))
        await provider.aclose()
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


def _study(deployment: Deployment, samples: int) -> tuple[StudySpec, list[Query]]:
    queries = [Query(id="q0", text="Write a metaphor about time.")]
    spec = StudySpec(name="s", query_set="-", deployments=[deployment.name], samples=samples)
    return spec, queries


def sample(tmp_path: Path, deployment: Deployment, samples: int) -> list[dict[str, object]]:
    """Run a small study through the sampler; its rows (text or error) as dicts."""
    spec, queries = _study(deployment, samples)
    provider = create_provider(deployment)

    async def run() -> None:
        try:
            await Sampler(store, {deployment.name: provider}, progress=False, backoff_base_s=0.01).run(
                {deployment.name: iter_requests(spec, queries, deployment)}
            )
        finally:
            await provider.aclose()

    with Store(tmp_path / "store") as store:
        store.register_study(spec, queries, [deployment])
        asyncio.run(run())
        return store.samples_frame(spec.name).to_dicts()


def test_every_request_goes_through_the_proxy_unless_no_proxy_names_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve() as (base, script), forward_proxy() as (proxy, stats):
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base, max_concurrency=3)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        rows = sample(tmp_path / "through", deployment, samples=8)
        assert [r["error"] for r in rows] == [None] * 8
        assert stats.requests == 8 and script.served == 8, "all of them through the proxy"
        assert set(stats.targets) == {base.split("/")[2]}

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        rows = sample(tmp_path / "bypass", deployment, samples=5)
        assert [r["error"] for r in rows] == [None] * 5
        assert stats.requests == 8 and script.served == 13, "none of them through the proxy"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed, made by the `openssl` CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=hivemind test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)  # fmt: skip
    return {name: folder / f"{name}" for name in ("ca.pem", "server.pem", "server.key")}


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_tls_is_verified_against_the_ca_bundle_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificates: dict[str, Path], variable: str
) -> None:
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(certificates["ca.pem"]))
    tls = (str(certificates["server.pem"]), str(certificates["server.key"]))
    with serve(tls=tls) as (base, script):
        assert base.startswith("https://")
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base)
        rows = sample(tmp_path, deployment, samples=3)
    assert [r["error"] for r in rows] == [None] * 3 and script.served == 3
    assert all(str(r["text"]).startswith("Time is a") for r in rows)


def test_an_unknown_ca_is_refused_with_a_clear_error_row_and_no_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificates: dict[str, Path]
) -> None:
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    tls = (str(certificates["server.pem"]), str(certificates["server.key"]))
    with serve(tls=tls) as (base, script):
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base)
        rows = sample(tmp_path, deployment, samples=2)
    assert len(rows) == 2 and script.served == 0
    for row in rows:
        assert row["text"] is None and row["attempts"] == 1
        error = str(row["error"])
        assert "certificate" in error and "not verified" in error and "SSL_CERT_FILE" in error, error
        assert "\n" not in error


def test_a_ca_bundle_that_does_not_exist_is_one_line_before_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nowhere/ca.pem")
    with pytest.raises(ValueError, match="does not exist"):
        create_provider(Deployment(name="d", provider="openai", model="m", api_base="https://127.0.0.1:1/v1"))


def test_https_goes_through_the_proxy_as_a_connect_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificates: dict[str, Path]
) -> None:
    for name in CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca.pem"]))
    tls = (str(certificates["server.pem"]), str(certificates["server.key"]))
    with serve(tls=tls) as (base, script), forward_proxy() as (proxy, stats):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base, max_concurrency=2)
        rows = sample(tmp_path, deployment, samples=4)
    assert [r["error"] for r in rows] == [None] * 4 and script.served == 4
    assert 1 <= stats.tunnels <= 2 and stats.requests == 0, "TLS end to end, tunnelled (one per connection)"
