"""Loopback servers for the two batch protocols, for tests: OpenAI's Batch API and Anthropic's
Message Batches, over real HTTP with their real wire format.

OpenAI: `POST /v1/files` (multipart JSONL, purpose `batch`), `POST /v1/batches`, `GET /v1/batches`
(with `metadata`), `GET /v1/batches/{id}`, `GET /v1/files/{id}/content` (output and error files).
Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches`, `GET /v1/messages/batches/{id}`,
`GET /v1/messages/batches/{id}/results`. A batch stays in progress for `polls_to_finish` polls (or
`seconds_to_finish`); items can fail once, a batch can expire half done, creation can meet 429s,
and any endpoint can be held (`hold`) so a test can kill the client at that point.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hivemind.testing.openai_server import free_port, serve_in_thread

WORDS = ["river", "thief", "tailor", "lighthouse", "gardener", "train", "letter", "candle"]


@dataclass
class BatchScript:
    """What the server does; tests change it between calls (and read what it saw)."""

    polls_to_finish: int = 1
    """A batch reports `in_progress` to this many status polls, then it has ended."""
    seconds_to_finish: float = 0.0
    """...and not before this many seconds after its creation."""
    fail_once_every: int = 0
    """When > 0: every Nth request (by its content) fails the first time the server sees it."""
    fail_status: int = 500
    expire: bool = False
    """Batches end `expired` with only their first half answered."""
    create_429: int = 0
    """The first N batch creations get a 429 with `Retry-After: 0.05`."""
    required_key: str | None = None
    hold: set[str] = field(default_factory=set)
    """Endpoint names (upload, create, created: after the batch is made, poll, download, results)
    that block once reached."""
    down: set[str] = field(default_factory=set)
    """Endpoint names that answer 503 (a provider's outage)."""
    reached: set[str] = field(default_factory=set)
    """Endpoint names reached (set before a held one blocks)."""
    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per batch id, the requests it was created with ({custom_id, body})."""
    calls: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submitted_custom_ids(self) -> list[str]:
        """Every custom_id of every created batch (a request submitted twice shows twice)."""
        return [item["custom_id"] for items in self.items.values() for item in items]

    def submitted_bodies(self) -> list[dict[str, Any]]:
        return [item["body"] for items in self.items.values() for item in items]


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, by name (the standard library's MIME parser)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            fields[name] = payload if isinstance(payload, bytes) else b""
    return fields


def _answer(body: dict[str, Any]) -> str:
    seed = int(body.get("seed") or 0)
    turns = json.dumps(body.get("messages"), sort_keys=True)
    pick = int(hashlib.sha256(f"{seed}|{turns}".encode()).hexdigest(), 16)
    return f"Time is a {WORDS[pick % len(WORDS)]} ({seed})."


def _fails(script: BatchScript, body: dict[str, Any]) -> bool:
    if script.fail_once_every <= 0:
        return False
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    if int(digest, 16) % script.fail_once_every or digest in script.seen:
        return False
    script.seen.add(digest)
    return True


def create_app(script: BatchScript) -> Any:
    """The Starlette app speaking both batch protocols."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def held(name: str) -> None:
        script.reached.add(name)
        while name in script.hold:
            await asyncio.sleep(0.02)

    async def gate(name: str, request: Request) -> Response | None:
        script.calls[name] = script.calls.get(name, 0) + 1
        script.reached.add(name)
        key = request.headers.get("authorization", "").removeprefix("Bearer ") or request.headers.get("x-api-key")
        if script.required_key is not None and key != script.required_key:
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        if name in script.down:
            return JSONResponse({"error": {"message": "service unavailable"}}, status_code=503)
        await held(name)
        return None

    def ended(batch: dict[str, Any]) -> bool:
        batch["polls"] = batch.get("polls", 0) + 1
        return batch["polls"] > script.polls_to_finish and time.time() - batch["created"] >= script.seconds_to_finish

    def finish(batch_id: str) -> None:
        """Answer a batch's items once: successes, scripted failures, expiry's unanswered half."""
        batch = script.batches[batch_id]
        if "results" in batch:
            return
        items = script.items[batch_id]
        cut = len(items) // 2 if script.expire else len(items)
        results = []
        for i, item in enumerate(items):
            body = item["body"]
            if i >= cut:
                results.append({"custom_id": item["custom_id"], "outcome": "expired"})
            elif _fails(script, body):
                results.append({"custom_id": item["custom_id"], "outcome": "error"})
            else:
                results.append({"custom_id": item["custom_id"], "outcome": "ok", "text": _answer(body), "body": body})
        batch["results"] = results

    # --- OpenAI ------------------------------------------------------------------------
    async def upload(request: Request) -> Response:
        if (refused := await gate("upload", request)) is not None:
            return refused
        form = _multipart(request.headers.get("content-type", ""), await request.body())
        if form.get("purpose") != b"batch" or "file" not in form:
            return JSONResponse({"error": {"message": "purpose must be batch, with a file"}}, status_code=400)
        data = form["file"]
        file_id = f"file-{len(script.files) + 1}"
        script.files[file_id] = data
        return JSONResponse({"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch"})

    def openai_batch(batch_id: str) -> dict[str, Any]:
        batch = script.batches[batch_id]
        view = {k: batch[k] for k in ("id", "input_file_id", "metadata", "endpoint", "completion_window")}
        view["object"] = "batch"
        view["created_at"] = int(batch["created"])
        view["status"] = batch["status"]
        view["output_file_id"] = batch.get("output_file_id")
        view["error_file_id"] = batch.get("error_file_id")
        return view

    async def create_openai(request: Request) -> Response:
        if (refused := await gate("create", request)) is not None:
            return refused
        if script.calls["create"] <= script.create_429:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0.05"})
        body = await request.json()
        lines = script.files[body["input_file_id"]].decode().splitlines()
        with script.lock:
            batch_id = f"batch_{len(script.batches) + 1}"
            script.items[batch_id] = [
                {"custom_id": x["custom_id"], "body": x["body"]} for x in map(json.loads, filter(None, lines))
            ]
            script.batches[batch_id] = {
                "id": batch_id,
                "protocol": "openai",
                "input_file_id": body["input_file_id"],
                "metadata": body.get("metadata"),
                "endpoint": body["endpoint"],
                "completion_window": body["completion_window"],
                "created": time.time(),
                "status": "validating",
            }
        await held("created")  # made, not yet answered: a client killed now never learns its id
        return JSONResponse(openai_batch(batch_id))

    async def list_openai(request: Request) -> Response:
        if (refused := await gate("list", request)) is not None:
            return refused
        ids = [i for i, b in script.batches.items() if b["protocol"] == "openai"]
        return JSONResponse({"object": "list", "data": [openai_batch(i) for i in reversed(ids)], "has_more": False})

    async def poll_openai(request: Request) -> Response:
        if (refused := await gate("poll", request)) is not None:
            return refused
        batch_id = request.path_params["id"]
        batch = script.batches[batch_id]
        if batch["status"] in {"validating", "in_progress"}:
            batch["status"] = "in_progress"
            if ended(batch):
                finish(batch_id)
                results = batch["results"]
                out = [r for r in results if r["outcome"] == "ok"]
                bad = [r for r in results if r["outcome"] != "ok"]
                if out:
                    script.files[f"{batch_id}-out"] = "".join(json.dumps(_openai_line(r)) + "\n" for r in out).encode()
                    batch["output_file_id"] = f"{batch_id}-out"
                if bad:
                    script.files[f"{batch_id}-err"] = "".join(json.dumps(_openai_line(r)) + "\n" for r in bad).encode()
                    batch["error_file_id"] = f"{batch_id}-err"
                batch["status"] = "expired" if script.expire else "completed"
        return JSONResponse(openai_batch(batch_id))

    async def content(request: Request) -> Response:
        if (refused := await gate("download", request)) is not None:
            return refused
        data = script.files.get(request.path_params["id"])
        if data is None:
            return JSONResponse({"error": {"message": "no such file"}}, status_code=404)
        return Response(data, media_type="application/jsonl")

    # --- Anthropic ---------------------------------------------------------------------
    def anthropic_batch(batch_id: str, base: str) -> dict[str, Any]:
        batch = script.batches[batch_id]
        done = batch["status"] == "ended"
        counts = {"processing": 0 if done else len(script.items[batch_id])}
        for kind in ("succeeded", "errored", "canceled", "expired"):
            counts[kind] = sum(1 for r in batch.get("results", []) if _anthropic_kind(r) == kind)
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": batch["status"],
            "request_counts": counts,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(batch["created"])),
            "results_url": f"{base}/v1/messages/batches/{batch_id}/results" if done else None,
        }

    def base_of(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    async def create_anthropic(request: Request) -> Response:
        if (refused := await gate("create", request)) is not None:
            return refused
        if request.headers.get("anthropic-version") is None:
            return JSONResponse({"error": {"message": "anthropic-version header is required"}}, status_code=400)
        if script.calls["create"] <= script.create_429:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0.05"})
        body = await request.json()
        with script.lock:
            batch_id = f"msgbatch_{len(script.batches) + 1}"
            script.items[batch_id] = [{"custom_id": r["custom_id"], "body": r["params"]} for r in body["requests"]]
            script.batches[batch_id] = {
                "id": batch_id,
                "protocol": "anthropic",
                "created": time.time(),
                "status": "in_progress",
            }
        await held("created")
        return JSONResponse(anthropic_batch(batch_id, base_of(request)))

    async def list_anthropic(request: Request) -> Response:
        if (refused := await gate("list", request)) is not None:
            return refused
        ids = [i for i, b in script.batches.items() if b["protocol"] == "anthropic"]
        return JSONResponse({"data": [anthropic_batch(i, base_of(request)) for i in reversed(ids)], "has_more": False})

    async def poll_anthropic(request: Request) -> Response:
        if (refused := await gate("poll", request)) is not None:
            return refused
        batch_id = request.path_params["id"]
        batch = script.batches[batch_id]
        if batch["status"] == "in_progress" and ended(batch):
            finish(batch_id)
            batch["status"] = "ended"
        return JSONResponse(anthropic_batch(batch_id, base_of(request)))

    async def results_anthropic(request: Request) -> Response:
        if (refused := await gate("results", request)) is not None:
            return refused
        batch = script.batches[request.path_params["id"]]
        lines = [json.dumps(_anthropic_line(r)) + "\n" for r in batch.get("results", [])]
        return Response("".join(lines).encode(), media_type="application/binary")

    return Starlette(
        routes=[
            Route("/v1/files", upload, methods=["POST"]),
            Route("/v1/files/{id}/content", content),
            Route("/v1/batches", create_openai, methods=["POST"]),
            Route("/v1/batches", list_openai, methods=["GET"]),
            Route("/v1/batches/{id}", poll_openai),
            Route("/v1/messages/batches", create_anthropic, methods=["POST"]),
            Route("/v1/messages/batches", list_anthropic, methods=["GET"]),
            Route("/v1/messages/batches/{id}", poll_anthropic),
            Route("/v1/messages/batches/{id}/results", results_anthropic),
        ]
    )


USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def _openai_line(result: dict[str, Any]) -> dict[str, Any]:
    custom_id = result["custom_id"]
    if result["outcome"] == "expired":
        return {"id": f"req-{custom_id}", "custom_id": custom_id, "response": None,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}  # fmt: skip
    if result["outcome"] == "error":
        body = {"error": {"message": "The server had an error processing your request.", "type": "server_error"}}
        return {"id": f"req-{custom_id}", "custom_id": custom_id, "response": {"status_code": 500, "body": body}, "error": None}  # fmt: skip
    chat = {
        "id": f"chatcmpl-{custom_id}",
        "object": "chat.completion",
        "model": result["body"].get("model", "stub"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    return {"id": f"req-{custom_id}", "custom_id": custom_id, "response": {"status_code": 200, "body": chat}, "error": None}  # fmt: skip


def _anthropic_kind(result: dict[str, Any]) -> str:
    return {"ok": "succeeded", "error": "errored", "expired": "expired"}[result["outcome"]]


def _anthropic_line(result: dict[str, Any]) -> dict[str, Any]:
    kind = _anthropic_kind(result)
    line: dict[str, Any] = {"custom_id": result["custom_id"], "result": {"type": kind}}
    if kind == "succeeded":
        line["result"]["message"] = {
            "id": f"msg_{result['custom_id']}",
            "type": "message",
            "role": "assistant",
            "model": result["body"].get("model", "stub"),
            "content": [{"type": "text", "text": result["text"]}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": USAGE["prompt_tokens"], "output_tokens": USAGE["completion_tokens"]},
        }
    elif kind == "errored":
        line["result"]["error"] = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    return line


@contextmanager
def serve(script: BatchScript | None = None) -> Iterator[tuple[str, BatchScript]]:
    """Run the server in a background thread; yields (base URL without /v1, script)."""
    script = script or BatchScript()
    port = free_port()
    with serve_in_thread(create_app(script), port, "the batch server"):
        try:
            yield f"http://127.0.0.1:{port}", script
        finally:
            script.hold.clear()  # a held endpoint lets go before the server is asked to stop
