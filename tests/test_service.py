"""The REST service against real servers: uvicorn on 127.0.0.1 (a port of its choosing), httpx as the client.

Covers auth (token on everything but /healthz, a token made and kept by `hivemind serve` when none is
configured, `--no-auth` on loopback only, no secret echoed), web pages kept out (foreign Host and
Origin refused), embedders only from the server's list, names reserved for the store's own files,
no absolute server path in a response, near-duplicate paging through every pair,
bad input (4xx naming the field, nothing half-written), idempotent study creation, progress,
results, cancel (also mid-analysis, and racing a job's start), log redaction, a SIGKILL-and-restart
resume with exactly one row per sample, and a schemathesis run against the OpenAPI schema with no
server errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import uvicorn

from hivemind.inputs.spec import STORE_ENTRIES
from hivemind.service.app import create_app
from hivemind.service.auth import TOKEN_FILE, BindError, check_bind
from hivemind.service.context import ServiceLimits
from hivemind.service.redaction import RedactingFilter, Redactor

REPO = Path(__file__).resolve().parent.parent
TOKEN_ENV = "HIVEMIND_TEST_TOKEN"
TOKEN = "test-token-7f3a9c2e51"
PROVIDER_KEY_ENV = "HIVEMIND_TEST_PROVIDER_KEY"
PROVIDER_KEY = "sk-test-provider-secret-0042"
ZOO = f"""
deployments:
  - {{name: mock-fast, provider: mock, model: mock, max_concurrency: 16, options: {{diversity: 2}}}}
  - {{name: mock-b, provider: mock, model: mock, max_concurrency: 16, options: {{diversity: 6, style: varied}}}}
  - {{name: mock-slow, provider: mock, model: mock, max_concurrency: 2, options: {{latency_s: 0.05}}}}
  - {{name: mock-crawl, provider: mock, model: mock, max_concurrency: 2, options: {{latency_s: 0.2}}}}
  - {{name: keyed, provider: openai, model: x, api_base: "http://127.0.0.1:9/v1",
      api_key_env: HIVEMIND_TEST_UNSET_KEY}}
  - {{name: keyed-set, provider: openai, model: x, api_base: "http://127.0.0.1:9/v1",
      api_key_env: {PROVIDER_KEY_ENV}}}
  - {{name: mock-same-a, provider: mock, model: mock, max_concurrency: 16, options: {{diversity: 1}}}}
  - {{name: mock-same-b, provider: mock, model: mock, max_concurrency: 16, options: {{diversity: 1}}}}
"""
OTHER_EMBEDDER = "an-embedder-the-operator-listed"
QUERIES = [
    {"id": f"q{i}", "text": t, "category": c}
    for i, (t, c) in enumerate(
        [
            ("Write a metaphor about time.", "metaphor"),
            ("Name a bakery.", "naming"),
            ("Describe the sea in one line.", "poetry"),
        ]
    )
]
LIMITS = ServiceLimits(
    max_upload_bytes=64 * 1024, max_body_bytes=16 * 1024, max_samples_per_study=5000, max_page_size=100
)


@contextlib.contextmanager
def serving(store: Path, zoo: Path, **kwargs: Any) -> Iterator[str]:
    """uvicorn in a thread on 127.0.0.1, on a port it binds itself (port 0: no race for a free
    port); stops (and its workers) on exit."""
    app = create_app(store, zoo, TOKEN_ENV, kwargs.pop("limits", LIMITS), **kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        mp.setenv(PROVIDER_KEY_ENV, PROVIDER_KEY)
        mp.delenv("HIVEMIND_TEST_UNSET_KEY", raising=False)
        yield


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "providers.yaml"
    path.write_text(ZOO)
    return path


@pytest.fixture(scope="module")
def server(env: None, zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("store")
    with serving(store, zoo, scheduler=False, embedders=["all-MiniLM-L6-v2", OTHER_EMBEDDER]) as url:
        yield url, store


@pytest.fixture
def client(server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        yield c


def wait_for(client: httpx.Client, study: str, states: tuple[str, ...], timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while True:
        status = client.get(f"/v1/studies/{study}").json()
        if status["state"] in states:
            return status
        assert time.time() < deadline, f"study {study} stuck in {status['state']}: {status}"
        time.sleep(0.05)


def upload(client: httpx.Client, name: str, queries: list[dict] = QUERIES) -> None:
    response = client.post("/v1/query-sets", json={"name": name, "queries": queries})
    assert response.status_code in (200, 201), response.text


# --- auth ---------------------------------------------------------------------------------------
def test_healthz_is_open_and_every_other_path_needs_the_token(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    for path in ("/v1/studies", "/v1/query-sets", "/v1/studies/nope", "/docs", "/openapi.json", "/v1/nowhere"):
        bare = httpx.get(url + path)
        assert bare.status_code == 401, path
        assert bare.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer guessed-wrong-token-123"})
        assert wrong.status_code == 401 and "guessed-wrong-token-123" not in wrong.text
        assert TOKEN not in bare.text + wrong.text
    ok = httpx.get(f"{url}/docs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "swagger" in ok.text.lower()


def test_no_auth_is_refused_off_loopback_and_writes_nothing(env: None, zoo: Path, tmp_path: Path) -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", "a-token")
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        with pytest.raises(BindError, match="loopback"):
            check_bind(host, None)
    with pytest.raises(BindError, match="loopback"):
        create_app(tmp_path / "api-store", zoo, TOKEN_ENV, auth=False, host="0.0.0.0", run_jobs=False)
    from typer.testing import CliRunner

    from hivemind.cli import app

    store = tmp_path / "cli-store"
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--no-auth", "--store", str(store), "--zoo", str(zoo)]
    )
    assert result.exit_code == 2 and "loopback" in result.output, result.output
    assert not store.exists() and not (tmp_path / "api-store").exists()


def test_no_auth_on_loopback_serves_without_a_token(env: None, zoo: Path, tmp_path: Path) -> None:
    with serving(tmp_path / "store", zoo, auth=False, scheduler=False, run_jobs=False) as url:
        assert httpx.get(f"{url}/v1/studies").status_code == 200
        assert httpx.get(f"{url}/v1/studies", headers={"Host": "evil.example"}).status_code == 400
    assert not (tmp_path / "store" / TOKEN_FILE).exists()


def test_a_foreign_host_is_refused_and_allowed_hosts_are_served(
    server: tuple[str, Path], zoo: Path, tmp_path: Path
) -> None:
    """DNS rebinding: a page's own name resolving to 127.0.0.1 reaches the server with its Host."""
    url, _ = server
    port = url.rsplit(":", 1)[1]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for host in (
        "evil.example",
        f"evil.example:{port}",
        "127.0.0.1.evil.example",
        f"localhost.:{port}",
        "",
        f"127.0.0.1@evil.example:{port}",
    ):
        for path in ("/healthz", "/v1/studies"):
            refused = httpx.get(url + path, headers={**auth, "Host": host})
            assert refused.status_code == 400, (host, path, refused.text)
            assert refused.json()["errors"][0]["field"] == "header.Host" and TOKEN not in refused.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert httpx.get(f"{url}/v1/studies", headers={**auth, "Host": host}).status_code == 200, host
    with serving(tmp_path / "store", zoo, scheduler=False, run_jobs=False, allowed_hosts=["hivemind.lan"]) as other:
        assert httpx.get(f"{other}/v1/studies", headers={**auth, "Host": "hivemind.lan:8321"}).status_code == 200
        assert httpx.get(f"{other}/v1/studies", headers={**auth, "Host": "other.lan"}).status_code == 400


def test_a_foreign_origin_is_refused_even_for_preflightless_posts(
    client: httpx.Client, server: tuple[str, Path]
) -> None:
    """A page's form or `fetch` with a simple content type reaches the server with no preflight:
    the Origin it carries must stop it, token or not, before anything is written."""
    url, store = server
    port = url.rsplit(":", 1)[1]
    before = _state(store)
    csv_text = "id,text\na,Write a haiku\n"
    for origin in (
        "http://evil.example",
        f"http://evil.example:{port}",
        "null",
        f"http://localhost:{port}",
        f"https://127.0.0.1:{port}",
        "http://127.0.0.1",
        "file://",
    ):
        for method, path, kwargs in [
            (
                "POST",
                "/v1/query-sets/upload?name=from-a-page",
                {"content": csv_text, "headers": {"Content-Type": "text/plain"}},
            ),
            (
                "POST",
                "/v1/query-sets/upload?name=from-a-page",
                {"content": csv_text, "headers": {"Content-Type": "text/csv"}},
            ),
            ("POST", "/v1/scans/any-scan/run", {}),
            (
                "POST",
                "/v1/studies",
                {"json": {"name": "from-a-page", "query_set": "open-ended-v1", "deployments": ["mock-fast"]}},
            ),
            ("GET", "/v1/studies", {}),
        ]:
            headers = {**kwargs.pop("headers", {}), "Origin": origin}
            refused = client.request(method, path, headers=headers, **kwargs)
            assert refused.status_code == 403, (origin, path, refused.text)
            assert refused.json()["errors"][0]["field"] == "header.Origin"
    assert _state(store) == before
    same = client.post(
        "/v1/query-sets/upload?name=same-origin", content=csv_text, headers={"Content-Type": "text/csv", "Origin": url}
    )
    assert same.status_code == 201, same.text


def test_secrets_are_redacted_from_text_and_logs(env: None) -> None:
    import logging

    redact = Redactor([TOKEN])
    assert redact(f"Bearer {TOKEN} and {PROVIDER_KEY}") == "Bearer *** and ***"
    logger = logging.getLogger("hivemind.test-redaction")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.addFilter(RedactingFilter(redact))
    try:
        logger.warning("key was %s", PROVIDER_KEY)
        try:
            raise RuntimeError(f"auth failed with {TOKEN}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    assert PROVIDER_KEY not in stream.getvalue() and TOKEN not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_records_of_loggers_and_handlers_made_after_start_are_redacted(
    server: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Not only the loggers known at create_app: a library's logger and handler made later, and
    `logging.lastResort` (a logger with no handler at all), get clean records too."""
    import logging

    stream = io.StringIO()
    late = logging.getLogger("litellm.test-made-after-start")
    handler = logging.StreamHandler(stream)
    late.addHandler(handler)
    late.propagate = False
    orphan = logging.getLogger("httpx.test-no-handler")
    orphan.propagate = False  # no handler up the chain: logging.lastResort writes to stderr
    try:
        late.warning("calling with key %s", PROVIDER_KEY)
        late.warning(f"Authorization: Bearer {TOKEN}")
        late.warning("failed: %s", RuntimeError(f"bad key {PROVIDER_KEY}"))
        try:
            try:
                raise ValueError(f"inner {TOKEN}")
            except ValueError as exc:
                raise RuntimeError("outer") from exc
        except RuntimeError:
            late.exception("request failed")
        orphan.warning("header was Bearer %s", TOKEN)
    finally:
        late.removeHandler(handler)
    written, stderr = stream.getvalue(), capsys.readouterr().err
    for text in (written, stderr):
        assert TOKEN not in text and PROVIDER_KEY not in text, text
    assert written.count("***") >= 4 and "Traceback" in written and "inner ***" in written
    assert "header was Bearer ***" in stderr


# --- query sets -----------------------------------------------------------------------------------
def test_query_sets_upload_as_json_jsonl_csv_and_multipart(client: httpx.Client, server: tuple[str, Path]) -> None:
    first = client.post("/v1/query-sets", json={"name": "up-json", "description": "d", "queries": QUERIES})
    assert first.status_code == 201 and first.json()["n_queries"] == 3
    assert (
        client.post("/v1/query-sets", json={"name": "up-json", "description": "d", "queries": QUERIES}).status_code
        == 200
    )
    jsonl = "".join(json.dumps(q) + "\n" for q in QUERIES)
    r = client.post(
        "/v1/query-sets/upload?name=up-jsonl", content=jsonl, headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 201, r.text
    csv_text = 'id,prompt,category\nc1,Write a haiku,poetry\nc2,"Name a cat, please",naming\n'
    r = client.post("/v1/query-sets/upload?name=up-csv", content=csv_text, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201 and r.json()["categories"] == {"poetry": 1, "naming": 1}
    r = client.post(
        "/v1/query-sets/upload", files={"file": ("my set.csv", csv_text, "text/csv")}, data={"name": "up-multipart"}
    )
    assert r.status_code == 201, r.text
    listed = {s["name"]: s for s in client.get("/v1/query-sets").json()["query_sets"]}
    assert {"up-json", "up-jsonl", "up-csv", "up-multipart", "open-ended-v1"} <= set(listed)
    assert listed["open-ended-v1"]["source"] == "shipped" and listed["up-csv"]["source"] == "uploaded"
    detail = client.get("/v1/query-sets/up-csv").json()
    assert [q["text"] for q in detail["queries"]] == ["Write a haiku", "Name a cat, please"]
    saved = server[1] / "query-sets" / "up-jsonl.jsonl"
    from hivemind.inputs.queries import load_query_set

    assert [q.id for q in load_query_set(saved).queries] == ["q0", "q1", "q2"]


def _state(store: Path) -> tuple[Any, ...]:
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        counts = tuple(
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("service_query_sets", "service_jobs", "service_idempotency", "service_scans", "studies")
        )
    files = sorted(p.name for p in (store / "query-sets").glob("*")) if (store / "query-sets").exists() else []
    return counts, files, sorted(p.name for p in store.iterdir())


def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(client: httpx.Client, server: tuple[str, Path]) -> None:
    upload(client, "bad-input-set")
    good = {
        "name": "bad-input-study",
        "query_set": "bad-input-set",
        "deployments": ["mock-fast"],
        "samples": 1,
        "analyze": False,
    }
    first = client.post("/v1/studies", json=good, headers={"Idempotency-Key": "bad-input-key"})
    assert first.status_code == 202
    wait_for(client, "bad-input-study", ("done",))
    before = _state(server[1])
    dup = [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]
    big = "id,text\n" + "".join(f"q{i},{'word ' * 40}\n" for i in range(400))
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        (
            "POST",
            "/v1/studies",
            {"content": b'{"name": ', "headers": {"Content-Type": "application/json"}},
            422,
            "body",
        ),
        ("POST", "/v1/studies", {"json": {**good, "name": "n1", "bogus": 1}}, 422, "body.bogus"),
        (
            "POST",
            "/v1/studies",
            {"json": {**good, "name": "n2", "deployments": ["mock-fast", "nope"]}},
            422,
            "body.deployments[1]",
        ),
        ("POST", "/v1/studies", {"json": {**good, "name": "n3", "deployments": ["keyed"]}}, 422, "body.deployments[0]"),
        ("POST", "/v1/studies", {"json": {**good, "name": "n4", "query_set": "no-such-set"}}, 422, "body.query_set"),
        ("POST", "/v1/studies", {"json": {**good, "name": "bad name!"}}, 422, "body.name"),
        ("POST", "/v1/studies", {"json": {**good, "name": "n5", "samples": 0}}, 422, "body.samples"),
        (
            "POST",
            "/v1/studies",
            {"json": {**good, "name": "n11", "analysis": {"classes": {"judge": "nope"}}}},
            422,
            "body.analysis.classes.judge",
        ),
        ("POST", "/v1/studies", {"json": {**good, "name": "n6", "samples": 4000}}, 422, "body.samples"),
        ("POST", "/v1/studies", {"json": {**good, "name": "n7", "categories": ["none-such"]}}, 422, "body.categories"),
        (
            "POST",
            "/v1/studies",
            {"json": {**good, "name": "n8", "params": {"temperature": -1}}},
            422,
            "body.params.temperature",
        ),
        ("POST", "/v1/studies", {"json": good}, 409, "body.name"),
        (
            "POST",
            "/v1/studies",
            {"json": {**good, "samples": 2}, "headers": {"Idempotency-Key": "bad-input-key"}},
            422,
            "header.Idempotency-Key",
        ),
        (
            "POST",
            "/v1/studies",
            {"json": {**good, "name": "n9", "conditions": [{"name": "a"}, {"name": "a"}]}},
            422,
            "body.conditions",
        ),
        *[
            ("POST", "/v1/studies", {"json": {**good, "name": reserved}}, 422, "body.name")
            for reserved in (*STORE_ENTRIES, "Scans", "HIVEMIND.sqlite", "hivemind.sqlite-wal", "embeddings.sqlite-shm")
        ],
        *[
            ("POST", "/v1/studies", {"json": {**good, "name": "n10", "embedder": embedder}}, 422, "body.embedder")
            for embedder in (
                "/",
                "/etc",
                "~",
                "..",
                "sentence-transformers/paraphrase-MiniLM-L3-v2",
                "sentence-transformers/all-MiniLM-L6-v2",
                "all-MiniLM-L6-v2 ",
            )
        ],
        (
            "POST",
            "/v1/studies",
            {"content": b"x" * (LIMITS.max_body_bytes + 1), "headers": {"Content-Type": "application/json"}},
            413,
            "body",
        ),
        ("POST", "/v1/query-sets", {"json": {"name": "dups", "queries": dup}}, 422, "body.queries[1].id"),
        ("POST", "/v1/query-sets", {"json": {"name": "empty", "queries": []}}, 422, "body.queries"),
        ("POST", "/v1/query-sets", {"json": {"name": "open-ended-v1", "queries": QUERIES}}, 409, "body.name"),
        ("POST", "/v1/query-sets", {"json": {"name": "bad-input-set", "queries": QUERIES[:1]}}, 409, "body.name"),
        ("POST", "/v1/query-sets", {"json": {"name": "query-sets", "queries": QUERIES}}, 422, "body.name"),
        (
            "POST",
            "/v1/query-sets/upload?name=hivemind.sqlite",
            {"content": "id,text\na,x\n", "headers": {"Content-Type": "text/csv"}},
            422,
            "query.name",
        ),
        (
            "POST",
            "/v1/query-sets/upload",
            {"files": {"file": ("scans.csv", "id,text\na,x\n", "text/csv")}},
            422,
            "query.name",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=dupcsv",
            {"content": "id,text\na,x\na,y\n", "headers": {"Content-Type": "text/csv"}},
            422,
            "line 3",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=notext",
            {"content": "id,other\na,x\n", "headers": {"Content-Type": "text/csv"}},
            422,
            "text",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=badjson",
            {"content": '{"id": 1, "text": \n', "headers": {"Content-Type": "application/x-ndjson"}},
            422,
            "line 1",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=big",
            {"content": big, "headers": {"Content-Type": "text/csv"}},
            413,
            "body",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=bigstream",
            {"content": iter([big.encode()[:40000], big.encode()[40000:]]), "headers": {"Content-Type": "text/csv"}},
            413,
            "body",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=xml",
            {"content": "<q/>", "headers": {"Content-Type": "application/xml"}},
            415,
            "header.Content-Type",
        ),
        (
            "POST",
            "/v1/query-sets/upload",
            {"content": "id,text\na,x\n", "headers": {"Content-Type": "text/csv"}},
            422,
            "query.name",
        ),
        (
            "POST",
            "/v1/scans",
            {
                "json": {
                    "name": "s1",
                    "schedule": "61 * * * *",
                    "deployments": ["mock-fast", "mock-b"],
                    "query_set": "bad-input-set",
                }
            },
            422,
            "body.schedule",
        ),
        (
            "POST",
            "/v1/scans",
            {
                "json": {
                    "name": "s2",
                    "schedule": "0 3 * * *",
                    "deployments": ["mock-fast", "ghost"],
                    "query_set": "bad-input-set",
                }
            },
            422,
            "body.deployments[1]",
        ),
        (
            "POST",
            "/v1/scans",
            {
                "json": {
                    "name": "s3",
                    "schedule": "0 3 * * *",
                    "deployments": ["mock-fast", "mock-b"],
                    "query_set": "ghost-set",
                }
            },
            422,
            "body.query_set",
        ),
        (
            "POST",
            "/v1/scans",
            {
                "json": {
                    "name": "scans",
                    "schedule": "0 3 * * *",
                    "deployments": ["mock-fast", "mock-b"],
                    "query_set": "bad-input-set",
                }
            },
            422,
            "body.name",
        ),
        (
            "POST",
            "/v1/scans",
            {
                "json": {
                    "name": "s4",
                    "schedule": "0 3 * * *",
                    "deployments": ["mock-fast", "mock-b"],
                    "query_set": "bad-input-set",
                    "embedder": "/",
                }
            },
            422,
            "body.embedder",
        ),
        ("GET", "/v1/studies/no-such-study", {}, 404, "path.name"),
        ("GET", "/v1/query-sets/no-such-set", {}, 404, "path.name"),
        ("GET", "/v1/studies/bad-input-study/near-duplicates?limit=100000", {}, 422, "query.limit"),
        ("GET", "/v1/studies/bad-input-study/tables/ghost", {}, 404, "path.table"),
        ("POST", "/v1/studies/bad-input-study/cancel", {}, 409, "path.name"),
    ]
    for method, path, kwargs, status, field in cases:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (path, kwargs.get("json"), response.text)
        body = response.json()
        assert any(field in e["field"] + " " + e["message"] for e in body["errors"]), (field, body)
        assert body["detail"] and TOKEN not in response.text and PROVIDER_KEY not in response.text
    assert (
        "HIVEMIND_TEST_UNSET_KEY"
        in client.post("/v1/studies", json={**good, "name": "n3", "deployments": ["keyed"]}).text
    )
    assert _state(server[1]) == before


# --- studies --------------------------------------------------------------------------------------
def test_a_dry_run_answers_the_plan_and_writes_nothing(client: httpx.Client, server: tuple[str, Path]) -> None:
    upload(client, "dry-set")
    body = {"name": "dry", "query_set": "dry-set", "deployments": ["mock-fast", "mock-b"], "samples": 4}
    before = _state(server[1])
    planned = client.post("/v1/studies", json={**body, "dry_run": True}, headers={"Idempotency-Key": "dry-1"})
    assert planned.status_code == 200, planned.text
    plan = planned.json()
    assert plan["study"] == "dry" and {r["deployment"] for r in plan["rows"]} == {"mock-fast", "mock-b"}
    assert [r["requests"] for r in plan["rows"]] == [len(QUERIES) * 4] * 2
    assert plan["total"]["requests"] == 2 * len(QUERIES) * 4 and plan["total"]["unpriced"] == ["mock-b", "mock-fast"]
    assert plan["embedding"]["remote"] is False and plan["embedding"]["cost_usd_max"] == 0.0
    assert _state(server[1]) == before, "nothing queued, no idempotency key taken, no file"
    real = client.post("/v1/studies", json=body, headers={"Idempotency-Key": "dry-1"})
    assert real.status_code == 202 and real.json()["name"] == "dry"
    wait_for(client, "dry", ("done",))


def test_study_lifecycle_idempotency_progress_and_results(client: httpx.Client, server: tuple[str, Path]) -> None:
    upload(client, "life-set")
    body = {
        "name": "life",
        "query_set": "life-set",
        "deployments": ["mock-fast", "mock-b"],
        "samples": 3,
        "analyze": False,
    }
    first = client.post("/v1/studies", json=body, headers={"Idempotency-Key": "life-1"})
    again = client.post("/v1/studies", json=body, headers={"Idempotency-Key": "life-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true" and again.json()["name"] == "life"
    assert [s["name"] for s in client.get("/v1/studies").json()["studies"]].count("life") == 1
    status = wait_for(client, "life", ("done",))
    assert status["total"] == {"planned": 18, "ok": 18, "failed": 0, "pending": 0}
    assert set(status["progress"]) == {"mock-fast", "mock-b"}
    samples = client.get("/v1/studies/life/tables/samples")
    assert samples.status_code == 200
    frame = pl.read_parquet(io.BytesIO(samples.content))
    assert frame.height == 18 and frame["text"].null_count() == 0
    assert client.get("/v1/studies/life/results").status_code == 409
    assert client.get("/v1/studies/life/report").status_code == 409

    analysis = server[1] / "life" / "analysis"  # what the pipeline writes, made by hand here
    analysis.mkdir(parents=True)
    # a summary written before summaries carried a version (read as version 0), NaN included
    (analysis / "summary.json").write_text(
        '{"study": "life", "near_duplicate_threshold": NaN, "headline": {"near_duplicate_pairs": 9}}'
    )
    pl.DataFrame({"a": list(range(7)), "similarity": [0.95] * 7}).write_parquet(analysis / "near_duplicates.parquet")
    pl.DataFrame({"x": [1.0]}).write_parquet(analysis / "matrix.parquet")
    (server[1] / "life" / "report.html").write_text("<html><body>report</body></html>")
    results = client.get("/v1/studies/life/results").json()
    summary = results["summary"]
    assert summary["version"] == 0 and summary["study"] == "life" and summary["near_duplicate_threshold"] is None
    assert summary["headline"]["near_duplicate_pairs"] == 9
    assert results["sampling"]["sampled_now"] == 18
    names = [t["name"] for t in client.get("/v1/studies/life/tables").json()["tables"]]
    assert names == ["samples", "matrix", "near_duplicates"]
    assert pl.read_parquet(io.BytesIO(client.get("/v1/studies/life/tables/matrix.parquet").content)).height == 1
    pages, offset = [], 0
    while offset is not None:
        page = client.get(f"/v1/studies/life/near-duplicates?offset={offset}&limit=3").json()
        # an older analysis kept 7 of the 9 pairs it found: said, not hidden
        assert page["total"] == 7 and page["found"] == 9 and page["truncated"] is True
        pages.append([item["a"] for item in page["items"]])
        offset = page["next_offset"]
    assert pages == [[0, 1, 2], [3, 4, 5], [6]]
    report = client.get("/v1/studies/life/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    summary_text = (analysis / "summary.json").read_text()
    (analysis / "summary.json").write_text('{"version": 99, "study": "life"}')  # from a newer hivemind
    refused = client.get("/v1/studies/life/results")
    assert refused.status_code == 409 and "newer hivemind (summary version 99" in refused.text
    (analysis / "summary.json").write_text(summary_text)


def test_a_study_with_analysis_runs_the_pipeline_and_serves_its_results(client: httpx.Client) -> None:
    body = {
        "name": "analyzed",
        "query_set": "open-ended-v1",
        "max_queries": 3,
        "deployments": ["mock-fast", "mock-b"],
        "samples": 3,
    }
    assert client.post("/v1/studies", json=body).status_code == 202
    status = wait_for(client, "analyzed", ("done", "failed"), timeout=90)
    assert status["state"] == "done" and status["error"] is None, status
    results = client.get("/v1/studies/analyzed/results").json()
    assert results["summary"]["study"] == "analyzed" and results["summary"]["n_samples"] == 18
    tables = {t["name"] for t in client.get("/v1/studies/analyzed/tables").json()["tables"]}
    assert {"samples", "matrix", "near_duplicates"} <= tables
    page = client.get("/v1/studies/analyzed/near-duplicates?limit=5").json()
    assert page["total"] >= len(page["items"]) and page["offset"] == 0
    report = client.get("/v1/studies/analyzed/report")
    assert report.status_code == 200 and "analyzed" in report.text


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_responses_carry_no_absolute_server_path(client: httpx.Client, server: tuple[str, Path], zoo: Path) -> None:
    """The summary and sampling files name the store, the zoo and the uploaded set's file; over
    the API they are store-relative or bare file names."""
    store = server[1]
    upload(client, "paths-set")
    body = {"name": "paths", "query_set": "paths-set", "deployments": ["mock-fast", "mock-b"], "samples": 2}
    assert client.post("/v1/studies", json=body).status_code == 202
    assert wait_for(client, "paths", ("done", "failed"), timeout=90)["state"] == "done"
    on_disk = json.loads((store / "paths" / "analysis" / "summary.json").read_text())
    assert on_disk["store"] == str(store.resolve())  # what the API must not pass on
    assert str(store.resolve()) in on_disk["spec"]["query_set"] and on_disk["spec"]["zoo"] == str(zoo.resolve())
    answers = [
        client.get(path)
        for path in (
            "/v1/studies/paths/results",
            "/v1/studies/paths",
            "/v1/studies",
            "/v1/query-sets",
            "/v1/query-sets/paths-set",
            "/v1/scans",
            "/v1/studies/paths/tables",
        )
    ]
    answers.append(client.post("/v1/studies", json={**body, "query_set": "ghost-set"}))
    for answer in answers:
        assert answer.status_code in (200, 422), answer.text
        assert str(store) not in answer.text and str(zoo.parent) not in answer.text, answer.text[:2000]
        absolute = [t for t in _strings(answer.json()) if t.startswith("/") and not t.startswith("/v1/")]
        assert absolute == [], absolute
    summary = answers[0].json()["summary"]
    assert summary["store"] == "." and summary["spec"]["query_set"] == "query-sets/paths-set.jsonl"
    assert summary["spec"]["zoo"] == zoo.name
    assert answers[0].json()["sampling"]["samples_parquet"] == "paths/samples.parquet"


def test_embedders_come_from_the_servers_list(client: httpx.Client, server: tuple[str, Path]) -> None:
    upload(client, "embedder-set")
    body = {"query_set": "embedder-set", "deployments": ["mock-fast"], "samples": 1, "analyze": False}
    assert client.post("/v1/studies", json={**body, "name": "emb-default"}).status_code == 202
    assert client.post("/v1/studies", json={**body, "name": "emb-other", "embedder": OTHER_EMBEDDER}).status_code == 202
    with sqlite3.connect(server[1] / "hivemind.sqlite") as db:
        specs = dict(db.execute("SELECT study, spec_json FROM service_jobs WHERE study LIKE 'emb-%'").fetchall())
    assert json.loads(specs["emb-default"])["embedder"] == "all-MiniLM-L6-v2"  # the list's first
    assert json.loads(specs["emb-other"])["embedder"] == OTHER_EMBEDDER
    refused = client.post("/v1/studies", json={**body, "name": "emb-path", "embedder": "/"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "body.embedder"
    assert OTHER_EMBEDDER in refused.json()["errors"][0]["message"]  # says what is offered


def test_near_duplicates_page_through_every_pair_with_the_true_total(env: None, zoo: Path, tmp_path: Path) -> None:
    """Two deployments that answer every sample alike: 2 queries x 40 x 40 = 3,200 cross pairs,
    more than the 2,000 the table used to keep."""
    limits = ServiceLimits(max_samples_per_study=5000, max_page_size=1000)
    with (
        serving(tmp_path / "store", zoo, limits=limits, scheduler=False) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client,
    ):
        upload(client, "dup-set", QUERIES[:2])
        body = {
            "name": "dups",
            "query_set": "dup-set",
            "deployments": ["mock-same-a", "mock-same-b"],
            "samples": 40,
            "params": {"max_tokens": 1},
        }
        assert client.post("/v1/studies", json=body).status_code == 202
        status = wait_for(client, "dups", ("done", "failed"), timeout=300)
        assert status["state"] == "done", status
        found = client.get("/v1/studies/dups/results").json()["summary"]["headline"]["near_duplicate_pairs"]
        assert found == 2 * 40 * 40
        pairs, offset, pages = [], 0, 0
        while offset is not None:
            page = client.get(f"/v1/studies/dups/near-duplicates?offset={offset}&limit=1000").json()
            assert page["total"] == page["found"] == found and page["truncated"] is False
            pairs += [(p["query_id"], p["condition"], p["i"], p["j"]) for p in page["items"]]
            offset, pages = page["next_offset"], pages + 1
        assert pages == 4 and len(pairs) == len(set(pairs)) == found
        assert all(p["deployment_a"] != p["deployment_b"] for p in page["items"])
        past = client.get(f"/v1/studies/dups/near-duplicates?offset={found}&limit=10").json()
        assert past["items"] == [] and past["next_offset"] is None and past["total"] == found


def test_cancel_stops_within_seconds_and_keeps_what_was_sampled(client: httpx.Client, server: tuple[str, Path]) -> None:
    upload(client, "cancel-set")
    body = {
        "name": "to-cancel",
        "query_set": "cancel-set",
        "deployments": ["mock-slow"],
        "samples": 100,
        "analyze": False,
    }
    assert client.post("/v1/studies", json=body).status_code == 202
    deadline = time.time() + 20
    while client.get("/v1/studies/to-cancel").json()["total"]["ok"] < 4:
        assert time.time() < deadline
        time.sleep(0.05)
    asked = time.time()
    assert client.post("/v1/studies/to-cancel/cancel").status_code == 202
    status = wait_for(client, "to-cancel", ("cancelled",), timeout=15)  # "within seconds", with CI slack
    assert time.time() - asked < 15
    kept = status["total"]["ok"]
    time.sleep(0.5)
    assert client.get("/v1/studies/to-cancel").json()["total"]["ok"] == kept
    assert 4 <= kept < 300
    assert client.post("/v1/studies/to-cancel/cancel").status_code == 409


def test_reserved_names_are_refused_in_python_and_the_cli_before_anything_is_written(
    env: None, zoo: Path, tmp_path: Path
) -> None:
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from hivemind.cli import app
    from hivemind.inputs.spec import StudySpec
    from hivemind.scans.scan import ScanSpec
    from hivemind.store.journal import StoreError
    from hivemind.study import run_study

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    fields = {"query_set": str(queries), "deployments": ["mock-fast"], "zoo": str(zoo), "samples": 1}
    for name in (*STORE_ENTRIES, "SCANS", "hivemind.sqlite-journal"):
        with pytest.raises(ValidationError, match="collide with the store"):
            StudySpec(name=name, **fields)
        with pytest.raises(ValidationError, match="collide with the store"):
            ScanSpec(name=name, schedule="@daily", deployments=["mock-fast", "mock-b"], query_set="open-ended-v1")
    store = tmp_path / "py-store"
    unchecked = StudySpec(name="fine", **fields).model_copy(update={"name": "scans"})  # skips validation
    with pytest.raises(StoreError, match="collide with the store"):
        run_study(unchecked, store, progress=False)
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith("hivemind.sqlite")) == []
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0

    cli_store = tmp_path / "cli-store"
    spec = tmp_path / "study.yaml"
    spec.write_text(json.dumps({"name": "embeddings.sqlite", **fields}))
    result = CliRunner().invoke(app, ["run", str(spec), "--store", str(cli_store), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "name" in result.output and "embeddings.sqlite" in result.output
    assert not cli_store.exists()


def test_the_store_holds_only_study_folders_and_reserved_names(client: httpx.Client, server: tuple[str, Path]) -> None:
    """Everything the service, the analysis and a scan wrote at the store's top level is either a
    study's folder or a name studies cannot take (so the reserved list is complete)."""
    store = server[1]
    upload(client, "layout-set")
    body = {"name": "layout", "query_set": "layout-set", "deployments": ["mock-fast", "mock-b"], "samples": 2}
    assert client.post("/v1/studies", json=body).status_code == 202
    scan = {
        "name": "layout-scan",
        "schedule": "@yearly",
        "deployments": ["mock-fast", "mock-b"],
        "query_set": "layout-set",
        "samples": 2,
    }
    assert client.post("/v1/scans", json=scan).status_code == 201
    run = client.post("/v1/scans/layout-scan/run").json()
    for study in ("layout", run["study"]):
        assert wait_for(client, study, ("done", "failed"), timeout=120)["state"] == "done"
    assert client.get("/v1/scans/layout-scan/report").status_code == 200
    assert client.get("/v1/studies/layout/tables/samples").status_code == 200  # a download's temporary file
    studies = {s["name"] for s in client.get("/v1/studies").json()["studies"]}
    assert (store / "embeddings.sqlite").exists() and (store / "query-sets").is_dir() and (store / "scans").is_dir()
    from hivemind.inputs.spec import store_name_problem

    for entry in store.iterdir():
        if entry.name in studies or entry.name.startswith("."):  # hidden names are not valid study names
            continue
        assert store_name_problem(entry.name), f"{entry.name} could also be a study's name"


# --- job workers --------------------------------------------------------------------------------
def _queue_job(
    db: Any,
    zoo: Path,
    tmp_path: Path,
    study: str,
    *,
    analyze: bool,
    deployments: tuple[str, ...] = ("mock-fast",),
    samples: int = 2,
) -> None:
    from hivemind.inputs.spec import StudySpec
    from hivemind.sampling.stage import planned_counts

    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    spec = StudySpec(name=study, query_set=str(queries), deployments=list(deployments), zoo=str(zoo), samples=samples)
    db.create_job(
        {
            "study": study,
            "kind": "study",
            "request_json": "{}",
            "spec_json": spec.model_dump_json(),
            "planned_json": json.dumps(planned_counts(spec)),
            "analyze": int(analyze),
        }
    )


def _wait_job(db: Any, study: str, states: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while (job := db.job(study))["state"] not in states:
        assert time.time() < deadline, f"job {study} stuck in {job['state']}"
        time.sleep(0.02)
    return job


STUB_WORKER = """
import os, sys, time
from hivemind import pipeline
from hivemind.service import job_process

marker = os.environ["HIVEMIND_TEST_MARKER"]

def analysis(store, run, *_):  # the pipeline's analysis and report steps, stood in for
    with open(os.path.join(marker, run.study), "w") as f:
        f.write(str(os.getpid()))
    if run.study == "analysis-a":
        time.sleep(600)  # an analysis that would run for minutes

pipeline._analyze_and_report = analysis
job_process.main()
"""


def test_a_cancel_during_analysis_kills_its_worker_and_the_next_job_runs(
    env: None, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hivemind.service import workers

    marker = tmp_path / "marker"
    marker.mkdir()
    monkeypatch.setenv("HIVEMIND_TEST_MARKER", str(marker))
    manager = workers.JobManager(tmp_path / "store", max_active=1, worker_command=[sys.executable, "-c", STUB_WORKER])
    for study in ("analysis-a", "analysis-b"):
        _queue_job(manager.db, zoo, tmp_path, study, analyze=True)
    manager.start()
    try:
        deadline = time.time() + 60
        while not (marker / "analysis-a").is_file() or not (marker / "analysis-a").read_text():
            assert time.time() < deadline, "the analysis did not start"
            time.sleep(0.02)
        pid = int((marker / "analysis-a").read_text())
        assert manager.db.job("analysis-a")["state"] == "analyzing"
        asked = time.time()
        assert manager.cancel("analysis-a") == "analyzing"
        cancelled = _wait_job(manager.db, "analysis-a", ("cancelled", "done", "failed"), timeout=15)
        assert time.time() - asked < 10  # the analysis was stopped, not waited for
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # its worker's process group is gone
        done = _wait_job(manager.db, "analysis-b", ("cancelled", "done", "failed"))
    finally:
        manager.stop()
    assert cancelled["state"] == "cancelled" and done["state"] == "done", (cancelled, done)
    assert int((marker / "analysis-b").read_text()) != pid  # a new worker took the next job
    with sqlite3.connect(tmp_path / "store" / "hivemind.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM samples WHERE study = 'analysis-a' AND error IS NULL").fetchone()[0]
    assert kept == len(QUERIES) * 2  # sampled before the analysis: kept


def test_a_cancel_landing_between_reading_a_job_and_starting_it_is_kept(
    env: None, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hivemind.service.workers import JobManager

    manager = JobManager(tmp_path / "store")
    _queue_job(manager.db, zoo, tmp_path, "racy", analyze=False)
    read = manager.db.job
    fired: list[str] = []

    def read_then_cancel(study: str) -> dict | None:  # the worker reads the row; a cancel lands at once
        row = read(study)
        if row is not None and row["state"] == "queued" and not fired:
            fired.append(study)
            assert manager.db.request_cancel(study) == "cancelled"
        return row

    monkeypatch.setattr(manager.db, "job", read_then_cancel)
    manager.start()
    try:
        job = _wait_job(manager.db, "racy", ("cancelled", "done", "failed"))
        time.sleep(0.3)
        job = read("racy")
    finally:
        manager.stop()
    assert fired == ["racy"]
    assert job["state"] == "cancelled" and job["runs"] == 0 and job["started_at"] is None, job
    with sqlite3.connect(tmp_path / "store" / "hivemind.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM samples WHERE study = 'racy'").fetchone()[0] == 0


def test_start_job_is_a_compare_and_set(tmp_path: Path) -> None:
    from hivemind.store.jobs import ServiceDB

    with ServiceDB(tmp_path / "store") as db:
        for study in ("cas-a", "cas-b"):
            db.create_job(
                {
                    "study": study,
                    "kind": "study",
                    "request_json": "{}",
                    "spec_json": "{}",
                    "planned_json": "{}",
                    "analyze": 0,
                }
            )
        assert db.request_cancel("cas-a") == "cancelled"
        assert not db.start_job("cas-a", "queued") and db.job("cas-a")["state"] == "cancelled"
        assert db.start_job("cas-b", "queued") and db.job("cas-b")["state"] == "sampling"
        assert not db.start_job("cas-b", "queued")  # already started by someone else
        assert db.request_cancel("cas-b") == "sampling"
        assert not db.start_job("cas-b", "sampling")  # a resumed job with a cancel asked stays put
        assert db.job("cas-b")["runs"] == 1


# --- restart --------------------------------------------------------------------------------------
def _spawn(store: Path, zoo: Path, log: Path, token: str | None = TOKEN) -> tuple[subprocess.Popen, str]:
    """`hivemind serve` on a port it binds itself (port 0); its URL, read from its start-up line.

    `token=None` starts it with no token in the environment (it uses the store's own)."""
    env = {**os.environ, PROVIDER_KEY_ENV: PROVIDER_KEY, "PYTHONPATH": str(REPO)}
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hivemind.cli",
            "serve",
            "--store",
            str(store),
            "--zoo",
            str(zoo),
            "--port",
            "0",
            "--token-env",
            TOKEN_ENV,
            "--no-scheduler",
            "--log-level",
            "info",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            url = found.group(1)
            break
        assert proc.poll() is None, "server exited: " + log.read_text(errors="replace")[-3000:]
        assert time.time() < deadline, "server did not come up"
        time.sleep(0.1)
    while True:
        assert proc.poll() is None, "server exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        assert time.time() < deadline, "server did not answer /healthz"
        time.sleep(0.1)


def test_sigkill_mid_study_then_restart_completes_with_one_row_per_sample(env: None, zoo: Path, tmp_path: Path) -> None:
    store, logs = tmp_path / "store", [tmp_path / "server-1.log", tmp_path / "server-2.log"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # mock-crawl answers 10 per second (2 at a time, 0.2 s each): its 60 samples take about 6 s, so
    # a kill after its first few rows lands mid-study even with slow polling on a loaded machine.
    deployments, samples = ("mock-crawl", "mock-fast"), 20
    planned = len(QUERIES) * len(deployments) * samples
    proc, url = _spawn(store, zoo, logs[0])
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            upload(client, "restart-set")
            body = {
                "name": "survivor",
                "query_set": "restart-set",
                "deployments": list(deployments),
                "samples": samples,
                "analyze": False,
            }
            assert client.post("/v1/studies", json=body).status_code == 202
            deadline = time.time() + 60
            while client.get("/v1/studies/survivor").json()["progress"]["mock-crawl"]["ok"] < 4:
                assert time.time() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        with sqlite3.connect(store / "hivemind.sqlite") as db:
            before = db.execute("SELECT COUNT(*) FROM samples WHERE study = 'survivor'").fetchone()[0]
        assert 4 <= before < planned, before  # killed mid-study
        proc, url = _spawn(store, zoo, logs[1])
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            status = wait_for(client, "survivor", ("done", "failed"), timeout=120)
        assert status["state"] == "done", status
        assert status["total"] == {"planned": planned, "ok": planned, "failed": 0, "pending": 0}
    finally:
        _stop(proc)
    with sqlite3.connect(store / "hivemind.sqlite") as db:
        rows = db.execute(
            "SELECT query_id, deployment, condition, sample_index, error FROM samples WHERE study = 'survivor'"
        ).fetchall()
        runs = db.execute("SELECT runs FROM service_jobs WHERE study = 'survivor'").fetchone()[0]
    keys = {(q, d, c, i) for q, d, c, i, _ in rows}
    expected = {(q["id"], d, "default", i) for q in QUERIES for d in deployments for i in range(samples)}
    assert len(rows) == len(keys) == planned and keys == expected
    assert all(error is None for *_, error in rows)
    assert runs == 2  # one start per process: the kill above was checked to land mid-study
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Uvicorn running" in text or "Application startup complete" in text
        assert TOKEN not in text and PROVIDER_KEY not in text


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_without_a_token_makes_one_keeps_it_private_prints_it_and_reuses_it(
    env: None, zoo: Path, tmp_path: Path
) -> None:
    store, logs = tmp_path / "store", [tmp_path / "serve-1.log", tmp_path / "serve-2.log"]
    printed = []
    for log in logs:
        proc, url = _spawn(store, zoo, log, token=None)
        try:
            found = re.findall(r"bearer token: (\S+)", log.read_text(errors="replace"))
            assert len(found) == 1, log.read_text(errors="replace")  # printed once
            token = found[0]
            printed.append(token)
            assert httpx.get(f"{url}/v1/studies").status_code == 401
            assert httpx.get(f"{url}/v1/studies", headers={"Authorization": "Bearer not-the-token"}).status_code == 401
            ok = httpx.get(f"{url}/v1/studies", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json() == {"studies": []}
        finally:
            _stop(proc)
        assert (store / TOKEN_FILE).stat().st_mode & 0o777 == 0o600
        (store / TOKEN_FILE).chmod(0o644)  # loosened by hand: the next start narrows it again
    path = store / TOKEN_FILE
    assert path.read_text().strip() == printed[0] == printed[1]  # the restart reused it
    assert len(printed[0]) >= 32
    assert "made now" in logs[0].read_text() and "made now" not in logs[1].read_text()
    for log in logs:  # uvicorn's own lines (access log included) never carry it
        lines = [line for line in log.read_text(errors="replace").splitlines() if printed[0] in line]
        assert len(lines) == 1, lines


# --- schema ---------------------------------------------------------------------------------------
def test_openapi_request_models_refuse_unknown_fields(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for model in ("StudyCreate", "QuerySetUpload", "ScanSpec", "SamplingParams"):
        assert components[model]["additionalProperties"] is False, model
    assert components["StudyCreate"]["properties"]["samples"]["description"]
    assert schema["security"] == [{"bearer": []}] and schema["paths"]["/healthz"]["get"]["security"] == []
    assert all(p == "/healthz" or p.startswith("/v1/") for p in schema["paths"])


def test_schemathesis_finds_no_server_errors(
    env: None, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = Path(sys.executable).parent / "st"
    from tests.conftest import require, require_that

    require("schemathesis", "schemathesis (pip install schemathesis)")
    require_that(st.exists(), f"the schemathesis CLI is missing at {st} (pip install schemathesis)")
    store = tmp_path / "store"
    hypothesis_dir = tmp_path / "hypothesis"  # hypothesis's files stay out of the repository
    monkeypatch.setenv("HYPOTHESIS_STORAGE_DIRECTORY", str(hypothesis_dir))
    # Known names, so the fuzzer reaches the handlers behind an existing study, not only 404s.
    (tmp_path / "schemathesis.toml").write_text(
        '[dictionaries.names]\nvalues = ["fuzz-study", "fuzz-set"]\n'
        '[dictionaries.tables]\nvalues = ["samples", "near_duplicates"]\n'
        '[parameters]\n"path.name" = { dictionary = "names", probability = 0.6 }\n'
        '"path.table" = { dictionary = "tables", probability = 0.6 }\n'
    )
    with serving(store, zoo, scheduler=False) as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            upload(client, "fuzz-set")
            client.post(
                "/v1/studies",
                json={
                    "name": "fuzz-study",
                    "query_set": "fuzz-set",
                    "deployments": ["mock-fast"],
                    "samples": 2,
                    "analyze": False,
                },
            )
            wait_for(client, "fuzz-study", ("done",))
        (store / "fuzz-study" / "analysis").mkdir(parents=True)
        (store / "fuzz-study" / "analysis" / "summary.json").write_text('{"x": 1}')
        pl.DataFrame({"a": [1, 2, 3]}).write_parquet(store / "fuzz-study" / "analysis" / "near_duplicates.parquet")
        (store / "fuzz-study" / "report.html").write_text("<html></html>")
        result = subprocess.run(
            [
                str(st),
                "run",
                f"{url}/openapi.json",
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "12",
                "--phases",
                "examples,coverage,fuzzing",
                "--generation-database",
                "none",
                "--seed",
                "7",
                "--no-color",
                "--request-timeout",
                "20",
                "--workers",
                "1",
            ],  # one worker: hypothesis's lambda introspection is not thread-safe on 3.11
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(hypothesis_dir)},
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert TOKEN not in output.replace(f"Bearer {TOKEN}", "")
