"""`POST /v1/studies/import` on a real uvicorn server: an imported study is served like a
sampled one (status, results, report); a bad file answers 422 naming file, line and field."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from test_service import TOKEN, serving  # the service tests' real-server helper


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    from test_service import TOKEN_ENV

    root = tmp_path_factory.mktemp("import-service")
    zoo = root / "providers.yaml"
    zoo.write_text("deployments:\n  - {name: mock-a, provider: mock, model: mock}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        with (
            serving(root / "store", zoo, scheduler=False) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as c,
        ):
            yield c


def test_import_noveltybench_file_then_read_it_like_any_study(client: httpx.Client) -> None:
    from hivemind.inputs.queries import load_query_set

    queries = load_query_set("noveltybench-curated").queries[:3]
    lines = [
        json.dumps(
            {
                "id": q.id,
                "prompt": q.text,
                "model": "gemini-1.5-pro",
                "generations": [f"{q.text} answer {j}" if j < 2 else f"other {j} {i}" for j in range(4)],
                "partition": [0, 0, 1, 2],
            }
        )
        for i, q in enumerate(queries)
    ]
    response = client.post(
        "/v1/studies/import",
        json={
            "study": "gemini-nb",
            "filename": "gemini.jsonl",
            "content": "\n".join(lines) + "\n",
            "query_set": "noveltybench-curated",
            "analyze": True,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["imported"], body["match_rate"], body["has_classes"]) == (12, 1.0, True)
    assert body["file"] == "gemini.jsonl" and body["store"] is None
    assert body["status"]["progress"]["gemini-1.5-pro"]["ok"] == 12

    assert client.get("/v1/studies/gemini-nb").json()["total"]["ok"] == 12
    summary = client.get("/v1/studies/gemini-nb/results").json()["summary"]
    assert summary["deployments"] == ["gemini-1.5-pro"]
    assert summary["external_classes"]["per_deployment"][0]["external_classes"] == 3
    report = client.get("/v1/studies/gemini-nb/report")
    assert report.status_code == 200 and "Imported equivalence classes" in report.text


def test_import_parquet_as_base64(client: httpx.Client) -> None:
    import polars as pl

    buffer = io.BytesIO()
    pl.DataFrame({"q": ["Name a cat.", "Name a cat."], "reply": ["Tom", "Felix"]}).write_parquet(buffer)
    response = client.post(
        "/v1/studies/import",
        json={
            "study": "cats",
            "filename": "cats.parquet",
            "deployment": "my-model",
            "columns": {"query": "q", "text": "reply"},
            "content_base64": base64.b64encode(buffer.getvalue()).decode(),
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["deployments"] == {"my-model": 2}


def test_bad_file_is_a_422_naming_line_and_field_and_imports_nothing(client: httpx.Client) -> None:
    before = {s["name"] for s in client.get("/v1/studies").json()["studies"]}
    response = client.post(
        "/v1/studies/import",
        json={
            "study": "broken",
            "filename": "bad.csv",
            "content": "query,model,text,sample_index\nA?,m,one,0\nA?,m,two,x\n",
        },
    )
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == "body.content"
    assert error["message"].startswith("bad.csv line 3: field 'sample_index': expected a whole number")
    assert {s["name"] for s in client.get("/v1/studies").json()["studies"]} == before
    unknown = client.post("/v1/studies/import", json={"study": "x", "filename": "a.txt", "content": "hi"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "body.filename"


def test_import_needs_the_token(client: httpx.Client) -> None:
    response = httpx.post(
        str(client.base_url.join("/v1/studies/import")), json={"study": "x", "filename": "a.jsonl", "content": "{}"}
    )
    assert response.status_code == 401


def test_imported_study_tables_are_served(client: httpx.Client) -> None:
    """The analysis wrote the same tables a sampled study gets, the imported classes among them."""
    listing = client.get("/v1/studies/gemini-nb/tables").json()
    names = {t["name"] for t in listing["tables"]}
    assert {"samples", "pairs", "external_classes"} <= names
