"""A minimal OpenAI-compatible chat server that answers every request after a fixed latency.

It stands in for vLLM or a hosted API as seen from the client: each request costs the server
almost nothing (a timer and one write, no framework, no coroutine), so the rate a client reaches
against it is the client's own ceiling, not the server's. Run it in its own process so it never
shares the client's event loop:

    python bench/latency_server.py --port 8900 --latency 0.1

It prints `ready <port>` on stdout once it listens. HTTP/1.1 keep-alive, `Content-Length`
bodies only (no chunked uploads): what every HTTP client sends for a small JSON POST.
"""

from __future__ import annotations

import argparse
import asyncio
import json

_CHAT = json.dumps(
    {
        "id": "chatcmpl-latency",
        "object": "chat.completion",
        "created": 0,
        "model": "latency",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Time is a river."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "latency", "object": "model"}]}).encode()


def _response(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode() + body


CHAT_RESPONSE = _response("200 OK", _CHAT)
MODELS_RESPONSE = _response("200 OK", _MODELS)
NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found"}}')


class LatencyProtocol(asyncio.Protocol):
    """One connection: parse each request's head and body length, answer after `latency` s."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker)
                length = int(head[marker + 15 : stop if stop >= 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            if head.startswith(b"post /v1/chat/completions"):
                asyncio.get_running_loop().call_later(self.latency, self._send, CHAT_RESPONSE)
            elif head.startswith(b"get /v1/models"):
                self._send(MODELS_RESPONSE)
            else:
                self._send(NOT_FOUND)

    def _send(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LatencyProtocol(latency), "127.0.0.1", port, backlog=4096)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each answer")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.latency))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
