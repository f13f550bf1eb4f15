"""A scripted OpenAI-compatible chat server on loopback, for tests and `bench/sampling.py`.

It stands in for hosted APIs that cannot be reached here, speaking their real wire protocol
over real HTTP: `POST /v1/chat/completions`, 429s with `Retry-After`, 5xx, auth failures.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    """What the server does; tests change it between calls."""

    fail_first: int = 0
    """The first N requests (server-wide) fail with `fail_status`."""
    fail_status: int = 429
    retry_after: str | None = "0.05"
    required_key: str | None = None
    """When set, requests without `Authorization: Bearer <key>` get a 401 that echoes the header."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    """Every request body received, in order."""
    record_bodies: bool = True
    served: int = 0
    rpm: float | None = None
    """When set, the server enforces it (and `tpm`) with a bucket holding `burst` requests'
    worth: a request beyond it gets a 429 with `Retry-After` and `x-ratelimit-*` headers. (Hosted
    APIs hold a minute's worth; 5 requests absorb a loaded machine's scheduling stalls.)"""
    tpm: float | None = None
    burst: float = 5.0
    limited: int = 0
    """429s the limits gave."""
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per limit, (level, when it was last filled)."""
    verdict: Callable[[dict[str, Any]], str] | None = None
    """When set, the reply text is `verdict(body)` (e.g. a scripted equivalence judge's yes/no)."""

    def over_limit(self, tokens: int) -> float | None:
        """Seconds until a request of `tokens` would fit, or None (then it is counted)."""
        now = time.monotonic()
        costs = {"requests": (self.rpm, 1.0), "tokens": (self.tpm, float(tokens))}
        levels: dict[str, float] = {}
        wait = 0.0
        for kind, (per_minute, cost) in costs.items():
            if per_minute is None:
                continue
            rate, capacity = per_minute / 60.0, self.burst * cost
            level, filled = self.buckets.get(kind, (capacity, now))
            levels[kind] = min(capacity, level + (now - filled) * rate)
            wait = max(wait, (cost - levels[kind]) / rate)
        if wait > 0:
            return wait
        for kind, level in levels.items():
            self.buckets[kind] = (level - costs[kind][1], now)
        return None


USAGE = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}
"""The usage every answer reports."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_app(script: Script) -> Any:
    """The Starlette app that answers like an OpenAI chat endpoint."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        if script.record_bodies:
            script.bodies.append(body)
        script.served += 1
        auth = request.headers.get("authorization", "")
        if script.required_key is not None and auth != f"Bearer {script.required_key}":
            return JSONResponse({"error": {"message": f"invalid key in header {auth!r}"}}, status_code=401)
        if script.served <= script.fail_first:
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            return JSONResponse({"error": {"message": "slow down"}}, status_code=script.fail_status, headers=headers)
        limited = script.over_limit(USAGE["total_tokens"]) if script.rpm or script.tpm else None
        if limited is not None:
            script.limited += 1
            kind = "requests" if script.rpm else "tokens"
            headers = {
                "retry-after": f"{limited:.3f}",
                f"x-ratelimit-remaining-{kind}": "0",
                f"x-ratelimit-reset-{kind}": f"{limited * 1000:.0f}ms",
            }
            return JSONResponse({"error": {"message": "rate limit reached"}}, status_code=429, headers=headers)
        words = ["river", "thief", "tailor", "lighthouse", "gardener", "train", "letter", "candle"]
        seed = int(body.get("seed") or 0)
        text = script.verdict(body) if script.verdict is not None else f"Time is a {words[seed % len(words)]} ({seed})."
        return JSONResponse(
            {
                "id": f"chatcmpl-{script.served}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "stub"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": USAGE,
            }
        )

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", models)])


@contextmanager
def serve_in_thread(app: Any, port: int, what: str, *, tls: tuple[str, str] | None = None) -> Iterator[None]:
    """Serve `app` with uvicorn on 127.0.0.1:`port` in a daemon thread until the block ends
    (`tls`: certificate and key files, for HTTPS); `what` names it if it does not start in 10 s."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        access_log=False,
        lifespan="off",
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve(
    script: Script | None = None, port: int | None = None, tls: tuple[str, str] | None = None
) -> Iterator[tuple[str, Script]]:
    """Run the server in a background thread; yields (api_base, script) and stops on exit.

    `tls` is (certificate file, key file): the server then speaks HTTPS.
    """
    script = script or Script()
    port = port or free_port()
    with serve_in_thread(create_app(script), port, "the stub OpenAI server", tls=tls):
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1", script


def main() -> None:
    """`python -m hivemind.testing.openai_server --port N`: serve in the foreground."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(
        create_app(Script(record_bodies=False)),
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
