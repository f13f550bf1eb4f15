"""`hivemind zoo check`: does each deployment answer one short request right now?"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from hivemind.inputs.samples import Message, SampleRequest
from hivemind.inputs.spec import Deployment, SamplingParams
from hivemind.providers.registry import create_provider

PROBE = "Reply with one short sentence: what is a metaphor?"


@dataclass
class CheckResult:
    """One deployment's answer to the probe, or why it gave none."""

    name: str
    ok: bool
    latency_s: float
    detail: str


async def _check_one(deployment: Deployment) -> CheckResult:
    started = time.perf_counter()
    provider = None
    try:
        provider = create_provider(deployment)
        provider.check_ready()
        request = SampleRequest(
            study="zoo-check",
            query_id="probe",
            deployment=deployment.name,
            condition="default",
            sample_index=0,
            seed=1,
            messages=(Message(role="user", content=PROBE),),
            params=deployment.params.merged(SamplingParams(max_tokens=16)),
            deployment_identity=deployment.identity(),
        )
        try:
            completion = await asyncio.wait_for(provider.generate(request), deployment.timeout_s)
        finally:
            await provider.aclose()
    except Exception as exc:  # report every failure as a row; the check never crashes
        detail = f"{type(exc).__name__}: {exc}"
        return CheckResult(
            deployment.name, False, time.perf_counter() - started, provider.redact(detail) if provider else detail
        )
    text = completion.text.strip().replace("\n", " ")
    return CheckResult(deployment.name, bool(text), time.perf_counter() - started, text or "(empty answer)")


def check_deployments(deployments: list[Deployment]) -> list[CheckResult]:
    """Probe every deployment concurrently."""

    async def check_all() -> list[CheckResult]:
        return list(await asyncio.gather(*(_check_one(d) for d in deployments)))

    return asyncio.run(check_all())
