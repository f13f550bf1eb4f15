"""Rate limits per deployment: the pacer alone (a fake clock), then whole studies against a
loopback OpenAI-compatible server that enforces requests and tokens per minute with 429s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hivemind.inputs.spec import Condition, Deployment, Query, SamplingParams, StudySpec
from hivemind.inputs.zoo import ZooError, load_zoo
from hivemind.providers.ratelimit import RECOVERY, SLOWEST, Pacer, estimate_tokens, parse_duration
from hivemind.providers.registry import create_provider
from hivemind.sampling.requests import iter_requests
from hivemind.sampling.sampler import Sampler
from hivemind.store.journal import Store
from hivemind.testing.openai_server import USAGE, Script, serve


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), (None, None)],
)
def test_reset_durations_are_read_as_servers_write_them(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_a_429_pauses_and_halves_the_pace_and_successes_win_it_back_gradually() -> None:
    clock = Clock()
    pacer = Pacer(rpm=600, clock=clock)
    assert pacer.pace() == "600 rpm"
    pacer.throttled(2.0)
    assert pacer.factor == 0.5 and pacer.throttles == 1
    assert pacer.pace() == "300 rpm, paused 2s"
    for _ in range(10):
        pacer.throttled(0.0)
    assert pacer.factor == SLOWEST, "never slower than the floor"
    pacer.settle(0, None)
    assert pacer.factor == SLOWEST + RECOVERY
    for _ in range(100):
        pacer.settle(0, None)
    assert pacer.factor == 1.0


def test_exhausted_headers_pause_until_their_reset_even_without_a_configured_limit() -> None:
    clock = Clock()
    pacer = Pacer(clock=clock)
    pacer.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "9s"})
    assert pacer.pace() == ""
    pacer.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"})
    assert pacer.pace() == "paused 90s"
    pacer.throttled(1.0)
    assert pacer.factor == 1.0, "no configured pace to slow: only the pause"
    clock.now += 91
    assert pacer.pace() == ""


async def test_requests_leave_evenly_spaced_and_tokens_are_corrected_from_usage() -> None:
    pacer = Pacer(rpm=6000)  # one every 10 ms
    started = time.monotonic()
    await asyncio.gather(*(pacer.acquire() for _ in range(21)))
    assert 0.18 <= time.monotonic() - started <= 0.4
    tokens = Pacer(tpm=60_000)  # 1000 tokens a second
    await tokens.acquire(100)  # leaves at once, reserves 0.1 s
    tokens.settle(100, 10)  # used 10: the 0.09 s it did not use are given back
    started = time.monotonic()
    await tokens.acquire(10)
    assert time.monotonic() - started < 0.05


def test_zoo_limits_are_validated(tmp_path: Path) -> None:
    zoo = tmp_path / "providers.yaml"
    zoo.write_text("deployments:\n  - {name: d, provider: mock, model: m, rpm: 500, tpm: 30000}\n")
    assert (load_zoo(zoo).get("d").rpm, load_zoo(zoo).get("d").tpm) == (500, 30000)
    zoo.write_text("deployments:\n  - {name: d, provider: mock, model: m, rpm: 0}\n")
    with pytest.raises(ZooError, match=r"deployments\[0\]\.rpm: Input should be greater than 0"):
        load_zoo(zoo)


def run_study(
    tmp_path: Path, deployment: Deployment, samples: int, params: SamplingParams | None = None, attempts: int = 4
) -> tuple[float, list[dict[str, object]], Pacer]:
    """Sample one query under two conditions (sharing the deployment's pace); (seconds, rows, pacer)."""
    queries = [Query(id="q0", text="Write a metaphor about time.")]
    conditions = [Condition(name="plain"), Condition(name="varied", system_prompt="Be original.")]
    spec = StudySpec(
        name="s",
        query_set="-",
        deployments=[deployment.name],
        samples=samples,
        conditions=conditions,
        params=params or SamplingParams(),
    )
    provider = create_provider(deployment)

    async def run() -> float:
        sampler = Sampler(store, {deployment.name: provider}, progress=False, max_attempts=attempts)
        started = time.perf_counter()
        try:
            await sampler.run({deployment.name: iter_requests(spec, queries, deployment)})
        finally:
            await provider.aclose()
        return time.perf_counter() - started

    with Store(tmp_path / "store") as store:
        store.register_study(spec, queries, [deployment])
        elapsed = asyncio.run(run())
        return elapsed, store.samples_frame(spec.name).to_dicts(), provider.pacer


def test_a_paced_study_meets_no_429_and_takes_requests_over_rpm(tmp_path: Path) -> None:
    with serve(Script(rpm=600, record_bodies=False)) as (base, script):
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base, max_concurrency=8, rpm=600)
        elapsed, rows, pacer = run_study(tmp_path, deployment, samples=40)
    assert len(rows) == 80 and all(r["error"] is None for r in rows)
    assert script.limited == 0 and pacer.throttles == 0, "no 429 at steady state"
    expected = 80 / 600 * 60
    assert abs(elapsed - expected) <= 0.1 * expected, f"{elapsed:.2f}s for 80 requests at 600 rpm ({expected:.1f}s)"


def test_a_token_limit_is_paced_from_estimates_corrected_by_usage(tmp_path: Path) -> None:
    tpm = 1200 * USAGE["total_tokens"]  # 1200 requests a minute
    with serve(Script(tpm=tpm, record_bodies=False)) as (base, script):
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base, max_concurrency=8, tpm=tpm)
        params = SamplingParams(max_tokens=16)  # the usual case: max_tokens bounds, answers are shorter
        elapsed, rows, pacer = run_study(tmp_path, deployment, samples=40, params=params)
    estimated = estimate_tokens(len("Write a metaphor about time."), 16)
    assert estimated >= 1.5 * USAGE["total_tokens"], "paced on estimates alone, it would take 50% longer"
    assert len(rows) == 80 and all(r["error"] is None for r in rows)
    assert script.limited == 0 and pacer.throttles == 0
    expected = 80 / 1200 * 60
    assert abs(elapsed - expected) <= 0.1 * expected, f"{elapsed:.2f}s, expected {expected:.1f}s"


def test_a_zoo_figure_above_the_real_limit_slows_down_on_429s_and_loses_nothing(tmp_path: Path) -> None:
    with serve(Script(rpm=600, record_bodies=False)) as (base, script):
        deployment = Deployment(name="d", provider="openai", model="stub", api_base=base, max_concurrency=8, rpm=2400)
        elapsed, rows, pacer = run_study(tmp_path, deployment, samples=30, attempts=8)
    assert len(rows) == 60 and all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]]
    assert script.limited > 0 and pacer.throttles == script.limited
    assert script.limited < 30, f"{script.limited} 429s for 60 requests: the pace slowed"
    assert elapsed >= 0.8 * 60 / 600 * 60, "never faster than the server allows"
