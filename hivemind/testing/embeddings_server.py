"""A loopback OpenAI-compatible embeddings server that serves a real sentence-transformers model.

It stands in for hosted embedders (OpenAI, TEI, vLLM, Ollama) that cannot be reached here,
speaking their wire protocol over real HTTP: `POST /v1/embeddings` with `input` (a string or a
list of strings), `model`, `encoding_format` (`float`, or `base64` as the OpenAI SDK asks by
default) and `dimensions` (a shorter vector is cut and renormalised, as OpenAI's v3 models do);
429s with `Retry-After`, 5xx, 400 for too-long inputs and scripted bad vectors for tests.

The vectors are `hivemind.vectors.embed.Embedder.encode`'s (chunked and mean-pooled), so a client's
vectors can be compared with the in-process ones exactly.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hivemind.testing.openai_server import free_port, serve_in_thread


@dataclass
class EmbedScript:
    """What the server does, and what it saw; tests change it between calls."""

    fail_first: int = 0
    """The first N requests (server-wide) fail with `fail_status`."""
    fail_status: int = 429
    retry_after: str | None = "0.05"
    required_key: str | None = None
    """When set, requests without `Authorization: Bearer <key>` get a 401."""
    max_input_chars: int | None = None
    """Longer inputs get a 400 naming the model's maximum context length."""
    corrupt: str | None = None
    """`nan` (a NaN in the first vector), `short` (the first vector one number short) or
    `missing` (one vector fewer than texts)."""
    requests: int = 0
    """Requests received (failed ones included)."""
    texts: int = 0
    """Texts embedded."""
    tokens: int = 0
    """Tokens reported in `usage`, summed."""
    batch_sizes: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    """The `model` of each request."""
    encodings: list[str] = field(default_factory=list)
    """The `encoding_format` of each request (`float` when absent)."""
    in_flight: int = 0
    max_in_flight: int = 0


def create_app(script: EmbedScript, embedder: Any) -> Any:
    """The Starlette app that answers like OpenAI's `/v1/embeddings`, with `embedder`'s vectors."""
    import numpy as np
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    lock = threading.Lock()  # one forward pass at a time (torch models are not re-entrant)

    def encode(texts: list[str]) -> tuple[Any, int]:
        with lock:
            vectors = embedder.encode(texts, progress=False)
            tokens = sum(len(ids) for ids in embedder.token_ids(texts))
        return vectors, tokens

    def error(status: int, message: str, kind: str = "invalid_request_error", **headers: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)

    async def embeddings(request: Request) -> JSONResponse:
        script.requests += 1
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            return await answer(request)
        finally:
            script.in_flight -= 1

    async def answer(request: Request) -> JSONResponse:
        if script.required_key is not None and request.headers.get("authorization") != f"Bearer {script.required_key}":
            return error(401, "Incorrect API key provided", "authentication_error")
        if script.requests <= script.fail_first:
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            return error(script.fail_status, "slow down", "rate_limit_error", **headers)
        try:
            body = await request.json()
        except ValueError:
            return error(400, "body is not JSON")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return error(400, "'input' must be a string or a non-empty list of strings (token arrays are not served)")
        if script.max_input_chars is not None and any(len(t) > script.max_input_chars for t in texts):
            return error(400, f"This model's maximum context length is {script.max_input_chars} characters")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return error(400, f"unknown encoding_format {encoding!r}")
        script.models.append(str(body.get("model")))
        script.encodings.append(encoding)
        script.batch_sizes.append(len(texts))
        vectors, tokens = await asyncio.to_thread(encode, texts)
        script.tokens += tokens
        dimensions = body.get("dimensions")
        if dimensions is not None:
            if not isinstance(dimensions, int) or not 1 <= dimensions <= vectors.shape[1]:
                return error(400, f"dimensions must be between 1 and {vectors.shape[1]}")
            vectors = vectors[:, :dimensions].astype(np.float64)
            vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        script.texts += len(texts)
        rows: list[Any] = [v.astype("<f4") for v in vectors]
        if script.corrupt == "nan":
            rows[0] = rows[0].copy()
            rows[0][0] = np.nan
        elif script.corrupt == "short":
            rows[0] = rows[0][:-1]
        elif script.corrupt == "missing":
            rows = rows[:-1]
        data: list[dict[str, Any]] = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.tobytes()).decode() if encoding == "base64" else v.tolist(),
            }
            for i, v in enumerate(rows)
        ]
        if script.corrupt == "nan" and encoding == "float":
            data[0]["embedding"][0] = "NaN"  # JSON has no NaN; a broken server sends something
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": embedder.model_name, "object": "model"}]})

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/v1/models", models)])


@contextmanager
def serve(
    script: EmbedScript | None = None, model: str = "all-MiniLM-L6-v2", embedder: Any = None, port: int | None = None
) -> Iterator[tuple[str, EmbedScript]]:
    """Run the server in a background thread; yields (api_base ending in /v1, script)."""
    from hivemind.vectors.embed import Embedder

    script = script or EmbedScript()
    embedder = embedder or Embedder(model, device="cpu", progress=False)
    port = port or free_port()
    with serve_in_thread(create_app(script, embedder), port, "the loopback embeddings server"):
        yield f"http://127.0.0.1:{port}/v1", script


def main() -> None:
    """`python -m hivemind.testing.embeddings_server --port N [--model M]`: serve in the foreground."""
    import argparse

    import uvicorn

    from hivemind.vectors.embed import Embedder

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    app = create_app(EmbedScript(), Embedder(args.model, progress=False))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="error", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
