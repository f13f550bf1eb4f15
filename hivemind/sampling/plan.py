"""`hivemind plan`: what a study will send and may cost, before any request is sent.

Per (deployment, condition): the requests still to send (rows the store already holds are
subtracted), their prompt tokens (counted with litellm's tokenizer for models whose tokenizer it
knows: OpenAI's; otherwise litellm's default tokenizer, flagged as an estimate), the completion
tokens at most (`max_tokens` x requests, or the model's output limit from litellm's map) and as
expected from the rows the store already has, the cost at most from litellm's bundled price
map (and at the batch price where the map has one), and the shortest wall time the
deployment's `rpm` / `tpm` allow. A study with an equivalence judge (`analysis.classes`) adds
`judge`: its calls at most (`hivemind.analysis.judge.CALL_BOUND_RULE`) and their cost at most
where litellm's price map knows the judge model. Nothing is sent and nothing is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hivemind.inputs.spec import Deployment, Query, StudySpec
from hivemind.providers.prices import litellm_offline, model_info, token_cost
from hivemind.sampling.requests import iter_requests
from hivemind.sampling.sampler import PendingRequests
from hivemind.store.journal import Store

EXACT_TOKENIZER_PROVIDERS = frozenset({"openai", "azure", "text-completion-openai"})
"""litellm providers whose models litellm counts with their own tokenizer (tiktoken)."""


@dataclass
class PlanRow:
    """One (deployment, condition) of the plan."""

    deployment: str
    condition: str
    model: str
    requests: int
    prompt_tokens: int
    prompt_tokens_estimated: bool
    completion_tokens_max: int | None
    completion_tokens_expected: int | None
    cost_usd_max: float | None
    cost_usd_batch_max: float | None
    min_wall_s: float | None
    batch: bool = False
    """Sampled through the provider's batch API: billed at the batch price, within its 24 h window
    (no wall time of its own: `min_wall_s` is null)."""


def _expected_completion(store: Store | None, spec: StudySpec) -> dict[tuple[str, str], float]:
    """Mean completion tokens of the successful rows per (deployment, condition)."""
    if store is None or spec.name not in store.studies():
        return {}
    import polars as pl

    frame = store.samples_frame(spec.name, include_errors=False)
    means: dict[tuple[str, str], float] = {}
    for row in frame.group_by("deployment", "condition").agg(pl.col("completion_tokens").mean()).to_dicts():
        if row["completion_tokens"] is not None:
            means[(row["deployment"], row["condition"])] = float(row["completion_tokens"])
    return means


def plan_deployment(
    spec: StudySpec,
    queries: list[Query],
    deployment: Deployment,
    store: Store | None,
    expected: dict[tuple[str, str], float],
    batch: bool = False,
) -> list[PlanRow]:
    """The plan rows of one deployment, one per condition."""
    litellm = litellm_offline()
    info = model_info(deployment.model)
    exact = info is not None and info.get("litellm_provider") in EXACT_TOKENIZER_PROVIDERS
    requests: Counter[str] = Counter()
    prompt: Counter[str] = Counter()
    max_tokens: dict[str, int | None] = {}
    counted: dict[tuple[str, str], int] = {}  # a (condition, query)'s prompt is the same for every sample
    stream = iter_requests(spec, queries, deployment)
    for request in PendingRequests(store, stream) if store is not None else stream:
        key = (request.condition, request.query_id)
        if key not in counted:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            # litellm's own tokenizer where it is exact (tiktoken, bundled); else its default one,
            # flagged as an estimate: it would fetch other tokenizers from the Hugging Face hub
            counted[key] = int(litellm.token_counter(model=deployment.model if exact else None, messages=messages))
        requests[request.condition] += 1
        prompt[request.condition] += counted[key]
        max_tokens[request.condition] = request.params.max_tokens
    rows = []
    for condition in spec.effective_conditions():
        name, sent = condition.name, requests[condition.name]
        limit = max_tokens.get(name) or (info or {}).get("max_output_tokens")
        completion_max = int(limit) * sent if limit is not None else None
        mean = expected.get((deployment.name, name))
        wall = [sent * 60.0 / deployment.rpm] if deployment.rpm and not batch else []
        if deployment.tpm and completion_max is not None and not batch:
            wall.append((prompt[name] + completion_max) * 60.0 / deployment.tpm)
        rows.append(
            PlanRow(
                deployment=deployment.name,
                condition=name,
                model=deployment.model,
                requests=sent,
                prompt_tokens=prompt[name],
                prompt_tokens_estimated=not exact,
                completion_tokens_max=completion_max,
                completion_tokens_expected=round(mean * sent) if mean is not None else None,
                cost_usd_max=token_cost(prompt[name], completion_max, info),
                cost_usd_batch_max=token_cost(prompt[name], completion_max, info, "_batches"),
                min_wall_s=max(wall) if wall else None,
                batch=batch,
            )
        )
    return rows


def _billed(row: PlanRow | dict[str, Any]) -> float | None:
    """What this run may be billed for a row at most: the batch price where it is batched."""
    data = asdict(row) if isinstance(row, PlanRow) else row
    return data["cost_usd_batch_max"] if data["batch"] else data["cost_usd_max"]


def _sum(values: list[Any]) -> Any:
    """The sum, or None when any part is unknown (an upper bound cannot skip a part)."""
    return None if any(v is None for v in values) else sum(values)


def study_plan(
    spec: StudySpec, queries: list[Query], deployments: list[Deployment], store: Store | None
) -> dict[str, Any]:
    """The plan as JSON-ready data: `rows` (one per deployment and condition) and `total`."""
    from hivemind.sampling.stage import batch_deployments

    expected = _expected_completion(store, spec)
    batched = batch_deployments(spec, deployments, store)
    rows = [row for d in deployments for row in plan_deployment(spec, queries, d, store, expected, d.name in batched)]
    walls: dict[str, list[float | None]] = {}
    for row in rows:
        walls.setdefault(row.deployment, []).append(row.min_wall_s)
    per_deployment = [_sum(w) for w in walls.values()]  # conditions share a pace; deployments run at once
    total = {
        "requests": sum(r.requests for r in rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "prompt_tokens_estimated": any(r.prompt_tokens_estimated for r in rows),
        "completion_tokens_max": _sum([r.completion_tokens_max for r in rows]),
        "cost_usd_max": _sum([r.cost_usd_max for r in rows]),
        "cost_usd_batch_max": _sum([r.cost_usd_batch_max for r in rows]),
        "cost_usd_run_max": _sum([_billed(r) for r in rows]),
        "min_wall_s": max((w for w in per_deployment if w is not None), default=None),
        "unpriced": sorted({r.deployment for r in rows if r.cost_usd_max is None and r.requests}),
        "budget_usd": spec.budget_usd,
    }
    priced = sum(c for c in map(_billed, rows) if c is not None)
    total["over_budget"] = spec.budget_usd is not None and priced > spec.budget_usd  # the priced part already
    judge = judge_plan(spec, queries, store)  # `analysis.classes.judge`: its calls at most, or None
    embedding = embedding_plan(spec, total["completion_tokens_max"])
    return {
        "study": spec.name,
        "rows": [asdict(r) for r in rows],
        "total": total,
        "judge": judge,
        "embedding": embedding,
    }


def embedding_plan(spec: StudySpec, tokens_max: int | None) -> dict[str, Any]:
    """What embedding the new answers may cost: nothing in process; for a zoo `embedders:` entry,
    every new answer at `max_tokens` (an upper bound: answers already embedded are cached and
    cost nothing) at litellm's price for the model, where it is a hosted one litellm prices."""
    from hivemind.providers.embedders import embedding_price, zoo_embedders

    entry = zoo_embedders(spec.zoo).get(spec.embedder)
    if entry is None:
        return {"embedder": spec.embedder, "remote": False, "tokens_max": tokens_max, "cost_usd_max": 0.0}
    price = embedding_price(entry)
    cost = None if price is None or tokens_max is None else tokens_max * price
    return {
        "embedder": entry.name,
        "remote": True,
        "model": entry.model,
        "tokens_max": tokens_max,
        "cost_usd_max": cost,
    }


def judge_plan(spec: StudySpec, queries: list[Query], store: Store | None) -> dict[str, Any] | None:
    """`hivemind plan`'s judge entry: the upper bound of judge calls (`CALL_BOUND_RULE`, before the
    cache) and their cost at most where litellm's price map knows the judge model; None without
    a judge. Groups: every sampled (query, deployment, condition) with K = `samples`, and every
    group the store already holds (imported answers), each capped at `samples` (equal K)."""
    from hivemind.inputs.judge_entry import CALL_BOUND_RULE, DEFAULT_PROMPT, call_bound
    from hivemind.inputs.zoo import judge_deployment

    deployment = judge_deployment(spec)
    if deployment is None or spec.analysis.classes is None:
        return None
    sizes: dict[tuple[str, str, str], int] = {
        (q.id, d, c.name): spec.samples for q in queries for d in spec.deployments for c in spec.effective_conditions()
    }
    longest = ""
    if store is not None and spec.name in store.studies():
        frame = store.samples_frame(spec.name, include_errors=False)
        for (query_id, dep, condition), part in frame.group_by("query_id", "deployment", "condition"):
            key = (str(query_id), str(dep), str(condition))
            sizes[key] = max(sizes.get(key, 0), min(part.height, spec.samples))
        texts = [t for t in frame["text"].to_list() if t]
        longest = max(texts, key=len, default="")
    bound = sum(call_bound(n) for n in sizes.values())
    info = model_info(deployment.model)
    cost = None
    options = spec.analysis.classes
    prompt = options.prompt or DEFAULT_PROMPT
    response_max = spec.params.max_tokens
    if info is not None and (response_max is not None or longest):
        litellm = litellm_offline()
        tokenizer = deployment.model if info.get("litellm_provider") in EXACT_TOKENIZER_PROVIDERS else None
        count = int(litellm.token_counter(model=tokenizer, text=longest)) if longest else 0
        per_text = max(count, response_max or 0)
        query_max = max((q.text for q in queries), key=len, default="")
        template = int(litellm.token_counter(model=tokenizer, text=prompt.replace("{query}", query_max)))
        per_in, per_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
        if per_in is not None and per_out is not None:
            cost = float(bound * ((template + 2 * per_text) * per_in + options.max_tokens * per_out))
    return {
        "deployment": deployment.name,
        "model": deployment.model,
        "groups": len(sizes),
        "calls_max": bound,
        "cost_usd_max": cost,
        "rule": CALL_BOUND_RULE,
    }


def plan_study(spec: StudySpec, store_path: Path) -> dict[str, Any]:
    """`study_plan` for a spec and the store it would sample into (which may not exist yet: a
    plan never creates one)."""
    from hivemind.layout import StoreLayout
    from hivemind.sampling.stage import resolve_study

    if not StoreLayout(store_path).exists():
        queries, deployments = resolve_study(spec)
        return study_plan(spec, queries, deployments, None)
    with Store(store_path) as opened:
        queries, deployments = resolve_study(spec, opened)
        return study_plan(spec, queries, deployments, opened)


def over_budget_line(plan: dict[str, Any]) -> str | None:
    """One line when the plan's priced upper bound exceeds the study's `budget_usd`, else None."""
    total = plan["total"]
    if not total["over_budget"]:
        return None
    priced = sum(c for c in map(_billed, plan["rows"]) if c is not None)
    return (
        f"study {plan['study']!r} may cost up to ${priced:.4f} (litellm's prices, max_tokens on every answer), "
        f"over its budget_usd {total['budget_usd']}"
    )
