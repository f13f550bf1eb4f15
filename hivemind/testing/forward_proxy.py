"""A loopback HTTP forward proxy that counts what goes through it, for the proxy tests.

It speaks what clients send a proxy: absolute-form requests (`POST http://host:port/path
HTTP/1.1`) for plain HTTP, which it forwards on a fresh upstream connection, and `CONNECT
host:port` for HTTPS, which it answers with 200 and then tunnels bytes both ways. `requests`
counts forwarded requests, `tunnels` CONNECTs, `targets` the upstream `host:port` of each.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ProxyStats:
    """What went through the proxy."""

    requests: int = 0
    tunnels: int = 0
    targets: list[str] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP message with a Content-Length (or no body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head, await reader.readexactly(length) if length else b""


async def _forward(head: bytes, body: bytes, stats: ProxyStats) -> bytes:
    """Send one absolute-form request upstream (origin-form, `Connection: close`); its raw answer."""
    request_line, *headers = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, version = request_line.split(" ", 2)
    url = urlsplit(target)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    stats.requests += 1
    stats.targets.append(f"{host}:{port}")
    kept = [h for h in headers if h.split(":", 1)[0].strip().lower() not in ("connection", "proxy-connection")]
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    message = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
    upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    upstream_writer.write(message + body)
    await upstream_writer.drain()
    answer = await upstream_reader.read()  # read to close: the upstream was told to close
    upstream_writer.close()
    return answer


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: ProxyStats) -> None:
    try:
        while True:
            head, body = await _read_message(reader)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                stats.tunnels += 1
                stats.targets.append(target)
                host, _, port = target.rpartition(":")
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
                return
            answer = await _forward(head, body, stats)
            # The upstream answer was read to its close; tell the client this connection ends too.
            status_and_headers, sep, rest = answer.partition(b"\r\n\r\n")
            lines = [line for line in status_and_headers.split(b"\r\n") if not line.lower().startswith(b"connection:")]
            writer.write(b"\r\n".join([*lines, b"Connection: close"]) + sep + rest)
            await writer.drain()
            return
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


@contextmanager
def forward_proxy() -> Iterator[tuple[str, ProxyStats]]:
    """Run the proxy on 127.0.0.1 in a background thread; yields (proxy URL, stats)."""
    stats = ProxyStats()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    async def main() -> asyncio.AbstractServer:
        server = await asyncio.start_server(lambda r, w: _handle(r, w, stats), "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        return server

    def run() -> None:
        server = loop.run_until_complete(main())
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the forward proxy did not start")
    try:
        yield f"http://127.0.0.1:{port[0]}", stats
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
