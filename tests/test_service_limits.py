"""The service's limits hold on every door, against a real `hivemind serve` on 127.0.0.1.

One test per finding of issue 25: an import names query sets (never paths) and reads no file
outside the store; scans obey the per-study sample limit at creation and at each run, and a cancel
stops one within seconds; imports obey the row, query and sample limits, and a compressed Parquet
bomb is refused from its metadata; an oversized query-set upload is refused while it is read; a
client's mistakes are 4xx naming the field, never 500; reports carry a restrictive CSP and
`nosniff` and no server path; the store is private (0600/0700). The bomb and large-upload tests
assert the server's peak RSS (VmHWM of its process) stays under a bound.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
TOKEN_ENV = "HIVEMIND_TEST_LIMITS_TOKEN"
TOKEN = "limits-token-5be1d09a"
MAX_SAMPLES, MAX_QUERIES = 20_000, 2_000
ZOO = """
deployments:
  - {name: mock-a, provider: mock, model: mock, max_concurrency: 4, options: {latency_s: 0.05}}
  - {name: mock-b, provider: mock, model: mock, max_concurrency: 4, options: {latency_s: 0.05, diversity: 4}}
"""


@contextlib.contextmanager
def spawn(root: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen, Path]]:
    """`hivemind serve` started in `root` (its working directory, where `secret.csv` lies)."""
    store, log = root / "store", root / "server.log"
    (root / "providers.yaml").write_text(ZOO)
    env = {**os.environ, TOKEN_ENV: TOKEN, "PYTHONPATH": str(REPO)}
    args = ["--store", str(store), "--zoo", str(root / "providers.yaml"), "--port", "0", "--token-env", TOKEN_ENV]
    args += ["--no-scheduler", "--max-samples", str(MAX_SAMPLES), "--max-queries", str(MAX_QUERIES)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemind.cli", "serve", *args],
        cwd=root,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 90
        while not (
            found := re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text("utf-8", "replace"))
        ):
            assert proc.poll() is None, "server exited: " + log.read_text()[-3000:]
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.1)
        with httpx.Client(base_url=found.group(1), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
            yield c, proc, store
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, subprocess.Popen, Path]]:
    root = tmp_path_factory.mktemp("limits")
    (root / "secret.csv").write_text("id,text\nsec1,the operator's secret row\n")
    with spawn(root) as served:
        yield served


@pytest.fixture
def client(served: tuple[httpx.Client, subprocess.Popen, Path]) -> httpx.Client:
    return served[0]


def _kib(proc: subprocess.Popen, key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text(), re.M)
    assert found, f"no {key} in /proc/{proc.pid}/status"
    return int(found.group(1))


@contextlib.contextmanager
def peak_rss_growth(proc: subprocess.Popen) -> Iterator[dict[str, float]]:
    """The server's peak RSS growth (MiB) over the block: VmHWM is reset first (clear_refs 5)."""
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
    before = _kib(proc, "VmRSS")
    out: dict[str, float] = {}
    yield out
    out["mib"] = (_kib(proc, "VmHWM") - before) / 1024


def _errors(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


# --- 1. query sets are names ---------------------------------------------------------------------
def test_an_import_names_query_sets_and_reads_no_file_outside_the_store(client: httpx.Client) -> None:
    exact = {
        "study": "leak1",
        "filename": "r.jsonl",
        "content": '{"id": "sec1", "model": "m1", "text": "hello"}\n',
        "query_set": "secret.csv",
        "on_unmatched": "add",
    }
    response = client.post("/v1/studies/import", json=exact)
    assert response.status_code == 422 and _errors(response) == ["body.query_set"], response.text
    missing = client.post("/v1/studies/import", json=exact | {"query_set": "absent.csv"})
    # no probing: an existing file and a missing one answer alike (but for the name itself)
    assert missing.status_code == 422
    assert response.json()["detail"].replace("secret.csv", "X") == missing.json()["detail"].replace("absent.csv", "X")
    assert client.get("/v1/studies/leak1").status_code == 404
    # an uploaded set is found by its name, from the store
    assert client.post("/v1/query-sets", json={"name": "mine", "queries": [{"id": "sec1", "text": "hi"}]}).is_success
    ok = client.post("/v1/studies/import", json=exact | {"study": "ok1", "query_set": "mine", "on_unmatched": "error"})
    assert ok.status_code == 201 and ok.json()["matched_by_id"] == 1, ok.text


# --- 2. scans obey the sample limit; a cancel stops them -----------------------------------------
def _queries(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i}", "text": f"Name thing number {i}."} for i in range(n)]


def test_scans_obey_the_sample_limit_at_creation(client: httpx.Client) -> None:
    assert client.post("/v1/query-sets", json={"name": "q2k", "queries": _queries(MAX_QUERIES)}).is_success
    scan = {"name": "bigscan", "query_set": "q2k", "deployments": ["mock-a", "mock-b"], "samples": 1000}
    response = client.post("/v1/scans", json=scan | {"schedule": "@daily"})
    assert response.status_code == 422 and _errors(response) == ["body.samples"], response.text
    assert str(MAX_SAMPLES) in response.json()["detail"] and str(2 * 1000 * MAX_QUERIES) in response.json()["detail"]
    assert client.get("/v1/scans").json()["scans"] == []


def test_a_scan_run_over_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from hivemind.scans.scan import ScanError, ScanSpec, load_scans, queue_scan_run
    from hivemind.store.jobs import ServiceDB

    (tmp_path / "providers.yaml").write_text(ZOO)
    book = load_scans(tmp_path / "providers.yaml", None, tmp_path)
    scan = ScanSpec(
        name="s", query_set="open-ended-v1", deployments=["mock-a", "mock-b"], samples=1000, schedule="@daily"
    )
    with ServiceDB(tmp_path) as db:
        with pytest.raises(ScanError) as caught:
            queue_scan_run(db, scan, book, tmp_path, max_samples=100)
        assert caught.value.field == "samples" and "the limit is 100" in str(caught.value)
        assert db.scan_runs("s") == [] and db.jobs() == []


def test_a_cancel_stops_a_scan_within_seconds_and_keeps_its_samples(client: httpx.Client) -> None:
    scan = {"name": "slowscan", "query_set": "q2k", "deployments": ["mock-a", "mock-b"], "samples": 4}
    assert client.post("/v1/scans", json=scan | {"schedule": "@yearly"}).status_code == 201
    started = client.post("/v1/scans/slowscan/run")
    assert started.status_code == 202, started.text
    study = started.json()["study"]
    deadline = time.time() + 60
    while client.get(f"/v1/studies/{study}").json()["total"]["ok"] < 20:
        assert time.time() < deadline, "the scan sampled nothing"
        time.sleep(0.2)
    asked = time.time()
    assert client.post(f"/v1/studies/{study}/cancel").status_code == 202
    while (status := client.get(f"/v1/studies/{study}").json())["state"] != "cancelled":
        assert time.time() - asked < 5, f"still {status['state']} 5 s after the cancel"
        time.sleep(0.1)
    kept = status["total"]["ok"]
    time.sleep(2)
    after = client.get(f"/v1/studies/{study}").json()
    assert after["total"]["ok"] == kept >= 20 and after["total"]["planned"] == 2 * 4 * MAX_QUERIES
    assert client.get("/v1/scans/slowscan/history").status_code == 200


# --- 3. imports obey the limits; a Parquet bomb is refused from its metadata ----------------------
def test_an_import_over_the_sample_or_query_limit_is_a_422_naming_the_limit(client: httpx.Client) -> None:
    rows = "query,model,text\n" + "".join(f"q {i % 50},m1,answer {i}\n" for i in range(MAX_SAMPLES + 5000))
    response = client.post(
        "/v1/studies/import", json={"study": "big-rows", "filename": "r.csv", "content": rows, "on_unmatched": "add"}
    )
    assert response.status_code in (413, 422), response.text
    many = "query,model,text\n" + "".join(f"query {i},m1,a\n" for i in range(MAX_QUERIES + 1))
    response = client.post(
        "/v1/studies/import", json={"study": "big-q", "filename": "r.csv", "content": many, "on_unmatched": "add"}
    )
    assert response.status_code == 422 and f"the limit is {MAX_QUERIES}" in response.json()["detail"], response.text
    generations = "".join(  # 100 records, 20,100 responses: the sample limit, not the row limit
        json.dumps({"id": f"g{i}", "prompt": f"Prompt {i}.", "model": "m1", "generations": ["x"] * 201}) + "\n"
        for i in range(100)
    )
    big = client.post(
        "/v1/studies/import",
        json={"study": "big-s", "filename": "r.jsonl", "content": generations, "on_unmatched": "add"},
    )
    assert big.status_code == 422 and f"the limit is {MAX_SAMPLES} samples" in big.json()["detail"], big.text
    for name in ("big-rows", "big-q", "big-s"):
        assert client.get(f"/v1/studies/{name}").status_code == 404


def _parquet(rows: int, width: int) -> str:
    import polars as pl

    buffer = io.BytesIO()
    frame = pl.DataFrame({"query": ["q"] * rows, "model": ["m1"] * rows, "text": ["x" * width] * rows})
    frame.write_parquet(buffer, compression="zstd", compression_level=22)
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_parquet_bomb_is_refused_from_its_metadata_with_bounded_memory(
    served: tuple[httpx.Client, subprocess.Popen, Path],
) -> None:
    client, proc, _ = served
    many_rows = _parquet(1_000_000, 500)  # the 26 KB body: 1M rows of 500 characters
    wide_rows = _parquet(MAX_SAMPLES // 2, 20_000)  # under the row limit, 200 MB decoded
    assert len(many_rows) < 100_000 and len(wide_rows) < 200_000
    for body, expected in ((many_rows, f"the limit is {MAX_SAMPLES}"), (wide_rows, "decodes to")):
        with peak_rss_growth(proc) as rss:
            response = client.post(
                "/v1/studies/import",
                json={"study": "bomb", "filename": "b.parquet", "content_base64": body, "on_unmatched": "add"},
            )
        assert response.status_code == 422 and expected in response.json()["detail"], response.text
        assert rss["mib"] < 100, f"peak RSS grew {rss['mib']:.0f} MiB on a refused Parquet bomb"
    assert client.get("/v1/studies/bomb").status_code == 404


# --- 4. a query-set upload stops at the limit ----------------------------------------------------
def test_a_large_query_set_upload_is_refused_while_read_with_bounded_memory(
    served: tuple[httpx.Client, subprocess.Popen, Path],
) -> None:
    client, proc, _ = served
    body = "id,text\n" + "".join(f"{i},q{i}\n" for i in range(1_000_000))  # ~10 MB, 1M rows
    body = body[: 10 * 2**20 - 1000]
    body = body[: body.rindex("\n") + 1]
    with peak_rss_growth(proc) as rss:
        started = time.time()
        response = client.post("/v1/query-sets/upload?name=huge", content=body, headers={"Content-Type": "text/csv"})
        took = time.time() - started
    assert response.status_code == 422 and f"the limit is {MAX_QUERIES}" in response.json()["detail"], response.text
    assert rss["mib"] < 120, f"peak RSS grew {rss['mib']:.0f} MiB for a {len(body) >> 20} MiB upload"
    assert took < 10, f"the refusal took {took:.1f} s"
    assert client.get("/v1/query-sets/huge").status_code == 404


# --- smaller ones: no 500 for a client's mistake -------------------------------------------------
def test_client_mistakes_are_4xx_naming_the_field_never_500(client: httpx.Client) -> None:
    line = '{"query": "q", "model": "m1", "text": "t"}\n'
    base = {"study": "fine", "filename": "r.jsonl", "content": line, "on_unmatched": "add"}
    port = client.base_url.port
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/v1/studies/import", {"json": base | {"study": "service.token"}}, 422, "body.study"),
        ("POST", "/v1/studies/import", {"json": base | {"study": "hivemind.sqlite-wal"}}, 422, "body.study"),
        ("POST", "/v1/studies/import", {"json": base | {"filename": "r\x00.jsonl"}}, 422, "body.filename"),
        ("POST", "/v1/studies/import", {"json": base | {"filename": "é" * 124 + ".jsonl"}}, 422, "body.filename"),
        ("POST", "/v1/studies/import", {"json": base | {"filename": "r\n.jsonl"}}, 422, "body.filename"),
        ("POST", "/v1/studies/import", {"json": base | {"study": "x\n"}}, 422, "body.study"),
        (
            "POST",
            "/v1/query-sets/upload",
            {"files": {"file": ("a.csv", "id,text\na,x\n", "text/csv")}, "data": {"name": "n" * 300}},
            422,
            "body.name",
        ),
        (
            "POST",
            "/v1/query-sets/upload",
            {
                "content": b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename*=UTF-8''abc%0A.csv\r\n"
                b"Content-Type: text/csv\r\n\r\nid,text\na,x\n\r\n--B--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=B"},
            },
            422,
            "query.name",
        ),
        (
            "POST",
            "/v1/query-sets/upload?name=deep",
            {"content": "[" * 200_000, "headers": {"Content-Type": "application/json"}},
            422,
            "body",
        ),
        (
            "POST",
            "/v1/studies/import",
            {"json": base | {"filename": "d.json", "content": "[" * 200_000}},
            422,
            "body.content",
        ),
        (
            "POST",
            "/v1/query-sets",
            {"content": '{"name": "d", "queries": ' + "[" * 100_000, "headers": {"Content-Type": "application/json"}},
            422,
            "body",
        ),
        (
            "GET",
            "/v1/studies",
            {"headers": [("Origin", f"http://127.0.0.1:{port}"), ("Origin", "http://evil.example")]},
            403,
            "header.Origin",
        ),
        (
            "GET",
            "/v1/studies",
            {"headers": [("Origin", "http://evil.example"), ("Origin", f"http://127.0.0.1:{port}")]},
            403,
            "header.Origin",
        ),
    ]
    for method, path, kwargs, status, field in cases:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (path, kwargs.get("json", ""), response.text[:300])
        assert any(f.startswith(field) or field in f for f in _errors(response)), (path, field, response.text[:300])
    assert client.get("/v1/studies/fine").status_code == 404


def test_reports_are_served_with_a_restrictive_policy_and_no_server_path(
    served: tuple[httpx.Client, subprocess.Popen, Path],
) -> None:
    client, _, store = served
    lines = "".join(
        json.dumps({"query": f"Name a colour {q}.", "model": m, "text": f"colour {m} {q} {j}"}) + "\n"
        for q in range(3)
        for m in ("m1", "m2")
        for j in range(3)
    )
    response = client.post(
        "/v1/studies/import",
        json={"study": "rep", "filename": "r.jsonl", "content": lines, "on_unmatched": "add", "analyze": True},
    )
    assert response.status_code == 201, response.text
    report = client.get("/v1/studies/rep/report")
    assert report.status_code == 200 and "<html" in report.text.lower()
    csp = report.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
    assert report.headers["x-content-type-options"] == "nosniff"
    assert str(store) not in report.text and str(store.resolve()) not in report.text
    assert "hivemind-import-" not in report.text, re.findall(r".{40}hivemind-import-.{20}", report.text)


def test_the_store_is_private_to_the_operator(served: tuple[httpx.Client, subprocess.Popen, Path]) -> None:
    client, _, store = served
    assert client.post("/v1/query-sets", json={"name": "private", "queries": _queries(2)}).is_success
    found = [store, *store.rglob("*")]
    assert len(found) > 5
    for path in found:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(store.parent)} is {oct(mode)}"


def test_a_scan_made_through_the_service_reads_its_set_from_the_store_only(client: httpx.Client) -> None:
    # an uploaded set named like the operator's file in the service's working directory
    assert client.post("/v1/query-sets", json={"name": "secret.csv", "queries": _queries(3)}).is_success
    scan = {"name": "leakscan", "query_set": "secret.csv", "deployments": ["mock-a", "mock-b"], "samples": 2}
    assert client.post("/v1/scans", json=scan | {"schedule": "@yearly"}).status_code == 201
    started = client.post("/v1/scans/leakscan/run")
    assert started.status_code == 202, started.text
    status = client.get(f"/v1/studies/{started.json()['study']}").json()
    assert status["total"]["planned"] == 3 * 2 * 2, status  # the store's 3 queries, not the file's 1
    client.post(f"/v1/studies/{started.json()['study']}/cancel")
