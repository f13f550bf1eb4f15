"""Tokens/s of each composite deployment beside its components' own speeds, in one run.

For every composite of the zoo: each component alone through llama-cpp-python's own
`create_chat_completion` (its native speed) and the composite through hivemind's engine, on the
same prompts, seeds and token budget, interleaved prompt by prompt (same machine load), after one
untimed warm-up each. Stepping N models in series can at best reach
1 / sum(1 / speed_i) (the serial limit); the sum of the speeds is printed too, as the figure a
parallel stepper on enough cores could approach. Prompt processing is included in both.

    .venv/bin/python bench/composite.py                  # every composite of the zoo
    .venv/bin/python bench/composite.py --tokens 16 qwen2.5-coder-contrastive
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from hivemind.inputs.samples import Message, SampleRequest
from hivemind.inputs.spec import SamplingParams
from hivemind.inputs.zoo import load_zoo
from hivemind.providers.composite import CompositeEngine, load_llama_no_repack, parse_options
from hivemind.providers.gguf import resolve_gguf

PROMPTS = [
    "Write a metaphor about time.",
    "Name an unusual pet and say why.",
    "Describe a city at night in two sentences.",
]


def _request(prompt: str, seed: int, tokens: int) -> SampleRequest:
    return SampleRequest(
        study="bench",
        query_id="q",
        deployment="d",
        condition="c",
        sample_index=0,
        seed=seed,
        messages=(Message(role="user", content=prompt),),
        deployment_identity={},
        params=SamplingParams(temperature=1.0, top_p=0.95, max_tokens=tokens),
    )


def chat_alone(llama: Any, prompt: str, seed: int, tokens: int) -> tuple[int, float]:
    """llama-cpp-python alone: (generated tokens, seconds), prompt included."""
    llama.reset()
    started = time.perf_counter()
    out = llama.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], seed=seed, temperature=1.0, top_p=0.95, max_tokens=tokens
    )
    return out["usage"]["completion_tokens"], time.perf_counter() - started


def composite_once(engine: CompositeEngine, prompt: str, seed: int, tokens: int) -> tuple[int, float]:
    for stepper in engine.steppers:
        stepper.llama.reset()  # no prompt reuse between prompts, like the baseline
    started = time.perf_counter()
    out = engine.generate(_request(prompt, seed, tokens))
    return out.completion_tokens or 0, time.perf_counter() - started


def measure(name: str, tokens: int) -> None:
    """Components and composite interleaved prompt by prompt, so both see the same machine load."""
    deployment = load_zoo().get(name)
    options = parse_options(deployment)
    alone = [
        load_llama_no_repack(
            str(resolve_gguf(c.source(), "bench")),
            n_ctx=c.n_ctx or options.n_ctx,
            n_threads=options.n_threads or os.cpu_count(),
            verbose=False,
        )
        for c in options.components
    ]
    engine = CompositeEngine(options, name, deployment.model)
    totals = [[0, 0.0] for _ in range(len(alone) + 1)]
    try:
        # warm-up, not timed: loads what loads lazily (a novelty embedder) and, for novelty, gives
        # the query a first answer, so the timed prompts pay for the rescoring they would in a study
        for llama in alone:
            chat_alone(llama, PROMPTS[0], 99, 4)
        composite_once(engine, PROMPTS[0], 99, tokens)
        for seed, prompt in enumerate(PROMPTS):
            runs = [chat_alone(llama, prompt, seed, tokens) for llama in alone]
            runs.append(composite_once(engine, prompt, seed, tokens))
            for total, (n, seconds) in zip(totals, runs):
                total[0] += n
                total[1] += seconds
    finally:
        engine.close()
        for llama in alone:
            llama.close()
    speeds = [n / seconds for n, seconds in totals[:-1]]
    measured = totals[-1][0] / totals[-1][1]
    serial = 1.0 / sum(1.0 / s for s in speeds)
    parts = ", ".join(f"{c.name} ({c.role}) {s:.1f}" for c, s in zip(options.components, speeds))
    print(
        f"{name} [{options.form}]: components {parts} tok/s; sum {sum(speeds):.1f}; "
        f"serial limit {serial:.1f}; composite {measured:.1f} tok/s = {measured / serial:.0%} of the limit"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="composite deployments (default: all in the zoo)")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    zoo = load_zoo()
    names = args.names or [d.name for d in zoo.deployments if d.provider == "composite"]
    print(f"{len(PROMPTS)} prompts x {args.tokens} tokens, temperature 1.0 (shared machine: compare ratios)")
    for name in names:
        measure(name, args.tokens)


if __name__ == "__main__":
    main()
