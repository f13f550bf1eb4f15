"""A lean keep-alive HTTP/1.1 client for one origin: small JSON POSTs at high concurrency.

Why not httpx or aiohttp: against a server with fixed latency (vLLM, hosted APIs), one
`httpx.AsyncClient` pool collapses past ~16 connections and aiohttp spends most of the
sampler's CPU in per-request bookkeeping; `bench/http_sampling.py` prints all of them beside a
raw socket client. This client does only what an OpenAI-compatible chat call needs: one request
at a time per connection (no pipelining), `Content-Length`, chunked or read-to-close bodies,
gzip/deflate if a server compresses anyway, TLS through asyncio, and a transparent reconnect
when the server had closed an idle connection. It does not follow redirects or use proxies.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpResponse:
    """Status, lower-cased headers and the (decoded) body of one response."""

    status: int
    headers: dict[str, str]
    body: bytes


class IncompleteResponse(ConnectionError):
    """The server closed the connection before a whole response arrived."""


def parse_response(buffer: bytes | bytearray, eof: bool) -> tuple[HttpResponse, bool] | None:
    """(response, keep_alive) once `buffer` holds a whole response, else None (read more).

    `eof` says the server has closed its side: a body without a length ends there.
    """
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            return None
        lines = bytes(buffer[start:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        try:
            status = int(rest[:3])
        except ValueError:
            raise IncompleteResponse(f"not an HTTP response: {lines[0][:80]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            start = body_start
            continue
        break
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    if status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _dechunk(buffer, body_start)
        if chunked is None:
            return None
        body = chunked
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if len(buffer) < body_start + length:
            return None
        body = bytes(buffer[body_start : body_start + length])
    else:  # delimited by the server closing the connection
        if not eof:
            return None
        body, keep_alive = bytes(buffer[body_start:]), False
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        body = zlib.decompress(body, 47)  # 47: detect a gzip or zlib header
    return HttpResponse(status, headers, body), keep_alive


def _dechunk(buffer: bytes | bytearray, position: int) -> bytes | None:
    """The body of a chunked message starting at `position`, or None while incomplete."""
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";")[0].strip() or b"0", 16)
        position = line_end + 2
        if size == 0:  # trailers (usually none) end with an empty line
            return b"".join(parts) if buffer.find(b"\r\n", position) >= 0 else None
        if len(buffer) < position + size + 2:
            return None
        parts.append(bytes(buffer[position : position + size]))
        position += size + 2


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request` sends one message and waits for its response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[HttpResponse, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver(eof=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deliver(eof=True)

    def _deliver(self, eof: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self.buffer, eof)
        except (ValueError, zlib.error) as exc:
            waiter.set_exception(IncompleteResponse(f"malformed HTTP response: {exc}"))
            return
        if parsed is not None:
            waiter.set_result(parsed)
        elif eof:
            waiter.set_exception(
                IncompleteResponse(
                    "the server closed the connection before a whole response"
                    + ("" if self.buffer else " (no byte of it arrived)")
                )
            )

    async def request(self, message: bytes) -> tuple[HttpResponse, bool]:
        if self.closed or self.transport is None:
            raise IncompleteResponse("the connection is closed (no byte of the response arrived)")
        self.buffer.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HttpPool:
    """At most `limit` keep-alive connections to the origin of `base_url`."""

    def __init__(
        self, base_url: str, *, limit: int, headers: dict[str, str] | None = None, timeout_s: float | None = None
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        self.timeout_s = timeout_s
        host_header = self.host if url.port is None else f"{self.host}:{url.port}"
        fixed = {"Host": host_header, "User-Agent": "hivemind", "Accept": "application/json", **(headers or {})}
        self._head = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
        )
        return connection

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> HttpResponse:
        """POST `body` to `path` (below the base URL's path); any status is returned, not raised."""
        message = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self._head}Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        if self.timeout_s is None:
            async with self._slots:
                return await self._exchange(message)
        async with self._slots, asyncio.timeout(self.timeout_s):
            return await self._exchange(message)

    async def _exchange(self, message: bytes) -> HttpResponse:
        """Send on an idle connection (skipping ones the server closed), else on a new one."""
        while self._idle:  # a reused connection the server has closed in the meantime
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return self._finish(connection, await connection.request(message))
            except IncompleteResponse:
                if connection.buffer:  # part of an answer came: not a stale connection
                    connection.close()
                    raise
                connection.close()
            except BaseException:
                connection.close()
                raise
        connection = await self._connect()
        try:
            return self._finish(connection, await connection.request(message))
        except BaseException:
            connection.close()
            raise

    def _finish(self, connection: _Connection, parsed: tuple[HttpResponse, bool]) -> HttpResponse:
        response, keep_alive = parsed
        if keep_alive and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def aclose(self) -> None:
        """Close every idle connection."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
