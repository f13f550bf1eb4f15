"""Equivalence classes decided by a judge deployment, beside the cosine ones and imported ones.

`analysis: {classes: {judge: DEPLOYMENT, prompt: ...}}` names any deployment of the zoo (local
GGUF, OpenAI-compatible, hosted through litellm, mock). The judge is asked, for two responses to
one query, whether they say the same thing; its reply is read by `VERDICT_RULE`.

Invariants:
- The partition is NoveltyBench's greedy one (`PARTITION_RULE`): per (deployment, condition,
  query) group, responses in sample-index order; each is compared with the first member of each
  class so far, in class order, and joins the first judged equivalent, else opens a class. So a
  group of n responses asks at most n (n - 1) / 2 judgments (`CALL_BOUND_RULE`), that many
  when every response is its own class and no pair is cached or identical. The judge is always
  asked (class representative, newcomer) in that order; its verdict stands for both orders.
- Every judgment is cached in `STORE/hivemind.sqlite` (table `judgments`, family `JUDGMENTS`)
  by (judge identity, query context, sha256 of each text) as an unordered pair: a re-analysis,
  or the same pair in another group, asks nothing twice. The judge identity is the sha256 of the
  judge deployment's `identity()`, the prompt and `max_tokens`; the query context is the sha256
  of the query text when the prompt shows the query (`{query}`), else empty.
- Two identical texts are equivalent without a call. A call that fails after the sampler's
  retries (`hivemind.sampling.sampler.Sampler`) counts as "not equivalent", is not cached (a
  re-analysis asks it again) and is counted in the summary's `failed`.
- Calls go through the provider layer (`create_provider`, `Provider.generate`), at most the
  deployment's `max_concurrency` at once; groups run concurrently, the comparisons of one group
  in order (each depends on the previous verdicts).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemind.inputs.judge_entry import (
    CALL_BOUND_RULE,
    DEFAULT_PROMPT,
    JudgeClasses,
    JudgeError,
    call_bound,
)
from hivemind.inputs.spec import Deployment, StudySpec, canonical_json, sha256_hex
from hivemind.migrations import Family, migrate
from hivemind.store.sqlite_file import JournalFile

if TYPE_CHECKING:
    import polars as pl

    from hivemind.providers.base import Provider
    from hivemind.store.journal import Store

TABLE = "judge_classes"
"""Per (query, condition, deployment): the judge's, the cosine and the imported classes, and ARIs."""
LABELS = "judge_labels"
"""Per analysed response: the judge's class id within its group."""

VERDICT_RULE = (
    "The judge's reply (reasoning blocks removed) is read by its first whole word `yes` or `no`, in any "
    "case: yes = equivalent, no = not. A reply with neither is unparseable and counts as not equivalent "
    "(cached as such, counted in `unparseable`)."
)
PARTITION_RULE = (
    "NoveltyBench's greedy partition: per (deployment, condition, query), responses in sample order; each "
    "is compared with the first member of each class so far and joins the first judged equivalent, else "
    "opens a new class. Identical texts are equivalent without a call."
)
JUDGMENTS = Family(
    "judgments",
    (
        """
    CREATE TABLE judgments (
        judge TEXT NOT NULL, context TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
        same INTEGER, reply TEXT NOT NULL, created_at REAL NOT NULL,
        PRIMARY KEY (judge, context, a, b)
    );
    """,
    ),
)
"""The judgment cache; `same` is 1, 0 or NULL (unparseable: not equivalent); a <= b."""

_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(reply: str) -> bool | None:
    """`VERDICT_RULE`: True (yes), False (no) or None (unparseable)."""
    from hivemind.analysis.data import answer_text

    found = _VERDICT.search(answer_text(reply) or "")
    return None if found is None else found.group(1).lower() == "yes"


def judge_identity(deployment: Deployment, options: JudgeClasses) -> str:
    """sha256 of what can change a verdict: the deployment's identity, the prompt, max_tokens."""
    prompt = options.prompt or DEFAULT_PROMPT
    return sha256_hex(
        canonical_json({"deployment": deployment.identity(), "prompt": prompt, "max_tokens": options.max_tokens})
    )


class JudgmentCache(JournalFile):
    """The `judgments` table of `STORE/hivemind.sqlite`, through its own connection."""

    def __init__(self, journal: Path) -> None:
        super().__init__(journal)
        with self._lock:
            migrate(self._db, JUDGMENTS)

    def get(self, judge: str, context: str, a: str, b: str) -> tuple[bool | None] | None:
        """The cached verdict of the unordered pair as a 1-tuple (its value may be None:
        unparseable), or None when it was never judged."""
        a, b = sorted((a, b))
        rows = self._rows(
            "SELECT same FROM judgments WHERE judge = ? AND context = ? AND a = ? AND b = ?", (judge, context, a, b)
        )
        if not rows:
            return None
        same = rows[0][0]
        return (None if same is None else bool(same),)

    def put(self, judge: str, context: str, a: str, b: str, same: bool | None, reply: str) -> None:
        a, b = sorted((a, b))
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)",
                (judge, context, a, b, None if same is None else int(same), reply, time.time()),
            )

    def count(self, judge: str | None = None) -> int:
        """Cached judgments (of one judge identity, or all)."""
        args: tuple[str, ...]
        sql, args = "SELECT COUNT(*) FROM judgments", ()
        if judge is not None:
            sql, args = sql + " WHERE judge = ?", (judge,)
        return int(self._rows(sql, args)[0][0])


@dataclass
class JudgeCounts:
    """What judging a study did: calls sent, answered from the cache, skipped, failed."""

    sent: int = 0
    cached: int = 0
    identical: int = 0
    unparseable: int = 0
    failed: int = 0
    retries: int = 0
    bound: int = 0
    """`CALL_BOUND_RULE` summed over the groups."""
    cost_usd: float = 0.0


@dataclass
class JudgeGroup:
    """One (query, condition, deployment) group: its responses in sample order."""

    query_id: str
    condition: str
    deployment: str
    query_text: str
    rows: list[int]
    sample_indices: list[int]
    texts: list[str]
    labels: list[int] = field(default_factory=list)


class Judge:
    """Asks one judge deployment, through the cache, with the sampler's retries."""

    def __init__(
        self, deployment: Deployment, options: JudgeClasses, store: Store, study: str, max_attempts: int
    ) -> None:
        self.deployment, self.options, self.store, self.study = deployment, options, store, study
        self.max_attempts = max_attempts
        self.prompt = options.prompt or DEFAULT_PROMPT
        self.identity = judge_identity(deployment, options)
        self.counts = JudgeCounts()
        self._pending: dict[tuple[str, str, str], asyncio.Task[bool | None]] = {}

    def context(self, query_text: str) -> str:
        return sha256_hex(query_text) if "{query}" in self.prompt else ""

    def message(self, query_text: str, a: str, b: str) -> str:
        """The prompt filled in (placeholders replaced once each, so braces in texts stay)."""
        parts = re.split(r"(\{query\}|\{a\}|\{b\})", self.prompt)
        values = {"{query}": query_text, "{a}": a, "{b}": b}
        return "".join(values.get(p, p) for p in parts)

    async def run(self, groups: list[JudgeGroup]) -> JudgeCounts:
        """Partition every group (fills `labels`); returns the counts."""
        from hivemind.providers.registry import create_provider
        from hivemind.providers.worker import set_log_dir
        from hivemind.sampling.sampler import Sampler

        try:
            provider = create_provider(self.deployment)
            provider.check_ready()
        except Exception as exc:
            raise JudgeError(f"analysis.classes.judge: {exc}", field="analysis.classes.judge") from None
        set_log_dir(None if os.environ.get("HIVEMIND_VERBOSE") else self.store.layout.logs)  # as sampling does
        self.cache = JudgmentCache(self.store.layout.journal)
        sampler = Sampler(self.store, {self.deployment.name: provider}, max_attempts=self.max_attempts, progress=False)
        slots = asyncio.Semaphore(provider.max_connections())
        self.counts.bound = sum(call_bound(len(g.texts)) for g in groups)
        try:
            await asyncio.gather(*(self._partition(g, provider, sampler, slots) for g in groups))
        finally:
            self.counts.retries = sampler.report.retries
            self.cache.close()
            await provider.aclose()
        return self.counts

    async def _partition(self, group: JudgeGroup, provider: Provider, sampler: Any, slots: asyncio.Semaphore) -> None:
        reps: list[int] = []
        group.labels = []
        for i, text in enumerate(group.texts):
            for c, r in enumerate(reps):
                if await self._same(group, group.texts[r], text, provider, sampler, slots):
                    group.labels.append(c)
                    break
            else:
                reps.append(i)
                group.labels.append(len(reps) - 1)

    async def _same(
        self, group: JudgeGroup, a: str, b: str, provider: Provider, sampler: Any, slots: asyncio.Semaphore
    ) -> bool:
        if a == b:
            self.counts.identical += 1
            return True
        context, ha, hb = self.context(group.query_text), sha256_hex(a), sha256_hex(b)
        low, high = sorted((ha, hb))
        key = (context, low, high)
        if key in self._pending:  # the same pair asked by another group meanwhile: one call
            self.counts.cached += 1
            return bool(await self._pending[key])
        cached = self.cache.get(self.identity, context, ha, hb)
        if cached is not None:
            self.counts.cached += 1
            return bool(cached[0])
        task = asyncio.ensure_future(self._ask(group, a, b, ha, hb, provider, sampler, slots))
        self._pending[key] = task
        return bool(await task)

    async def _ask(
        self,
        group: JudgeGroup,
        a: str,
        b: str,
        ha: str,
        hb: str,
        provider: Provider,
        sampler: Any,
        slots: asyncio.Semaphore,
    ) -> bool | None:
        from hivemind.inputs.samples import Message, SampleRequest
        from hivemind.inputs.spec import SamplingParams

        request = SampleRequest(
            study=self.study,
            query_id=group.query_id,
            deployment=self.deployment.name,
            condition="judge",
            sample_index=0,
            seed=0,
            messages=(Message(role="user", content=self.message(group.query_text, a, b)),),
            params=self.deployment.params.merged(SamplingParams(temperature=0.0, max_tokens=self.options.max_tokens)),
            deployment_identity=self.deployment.identity(),
        )
        async with slots:
            self.counts.sent += 1
            completion, _error, _attempts = await sampler._attempt(provider, request)  # the sampler's retry rules
        if completion is None:
            self.counts.failed += 1
            return False
        self.counts.cost_usd += completion.cost_usd or 0.0
        verdict = parse_verdict(completion.text)
        if verdict is None:
            self.counts.unparseable += 1
        self.cache.put(self.identity, self.context(group.query_text), ha, hb, verdict, completion.text)
        return verdict


def judge_groups(responses: pl.DataFrame) -> list[JudgeGroup]:
    """The analysed responses as (query, condition, deployment) groups, in sample order."""
    import polars as pl

    frame = responses.select("row", "query_id", "condition", "deployment", "sample_index", "text", "query_text")
    grouped = frame.sort("sample_index", maintain_order=True).group_by(
        ["query_id", "condition", "deployment"], maintain_order=True
    )
    out = []
    for (query_id, condition, deployment), part in grouped:
        out.append(
            JudgeGroup(
                str(query_id),
                str(condition),
                str(deployment),
                str(part["query_text"][0] or ""),
                [int(r) for r in part["row"]],
                [int(i) for i in part["sample_index"]],
                [str(t) for t in part["text"].cast(pl.Utf8).fill_null("")],
            )
        )
    return out


def add_judge_classes(
    deployment: Deployment | None,
    store: Store,
    spec: StudySpec,
    study: str,
    responses: pl.DataFrame,
    vectors: np.ndarray,
    threshold: float,
    tables: dict[str, pl.DataFrame],
    summary: dict[str, Any],
) -> None:
    """Add the `judge_classes` and `judge_labels` tables and the summary entry (nothing when the
    spec names no judge). Runs the judge's calls with `asyncio.run` (the analysis step is sync)."""
    if deployment is None or spec.analysis.classes is None:
        return
    from hivemind.imports.importer import imported_classes

    judge = Judge(deployment, spec.analysis.classes, store, study, spec.max_attempts)
    groups = judge_groups(responses)
    counts = asyncio.run(judge.run(groups))
    table, labels = classes_tables(groups, vectors, threshold, imported_classes(store, study))
    tables[TABLE], tables[LABELS] = table, labels
    summary[TABLE] = {
        "judge": deployment.name,
        "model": deployment.model,
        "judge_identity": judge.identity,
        "prompt": judge.prompt,
        "threshold": threshold,
        "verdict_rule": VERDICT_RULE,
        "partition_rule": PARTITION_RULE,
        "call_bound_rule": CALL_BOUND_RULE,
        "calls": vars(counts),
        "per_deployment": classes_summary(table),
    }
    if counts.failed:
        summary.setdefault("warnings", []).append(
            f"judge {deployment.name}: {counts.failed} of {counts.sent} calls failed after retries and counted "
            "as not equivalent (a re-analysis asks them again)"
        )


def classes_tables(
    groups: list[JudgeGroup], vectors: np.ndarray, threshold: float, imported: dict[tuple[str, str, str, int], str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per group, the three methods' class counts and entropies and their pairwise ARIs (the
    imported ones null where the group carries no imported classes); and the labels per row."""
    import polars as pl

    from hivemind.imports.external_classes import adjusted_rand_index
    from hivemind.metrics.classes import cosine_equivalence, equivalence_classes, semantic_entropy

    records, label_rows = [], []
    for g in groups:
        cosine = equivalence_classes(len(g.rows), cosine_equivalence(vectors[g.rows], threshold))
        external = [imported.get((g.query_id, g.deployment, g.condition, i)) for i in g.sample_indices]
        has_external = bool(external) and all(label is not None for label in external)
        records.append(
            {
                "query_id": g.query_id,
                "condition": g.condition,
                "deployment": g.deployment,
                "k": len(g.rows),
                "judge_classes": len(set(g.labels)),
                "judge_entropy": semantic_entropy(g.labels),
                "cosine_classes": len(set(cosine)),
                "cosine_entropy": semantic_entropy(cosine),
                "external_classes": len(set(external)) if has_external else None,
                "external_entropy": semantic_entropy(external) if has_external else None,
                "ari_judge_cosine": adjusted_rand_index(g.labels, cosine),
                "ari_judge_external": adjusted_rand_index(g.labels, external) if has_external else None,
                "ari_cosine_external": adjusted_rand_index(cosine, external) if has_external else None,
            }
        )
        label_rows += [
            (row, g.query_id, g.condition, g.deployment, index, label)
            for row, index, label in zip(g.rows, g.sample_indices, g.labels, strict=True)
        ]
    floats = ("judge_entropy", "cosine_entropy", "external_entropy", "ari_judge_cosine", "ari_judge_external")
    schema = {
        "query_id": pl.Utf8,
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "k": pl.Int64,
        "judge_classes": pl.Int64,
        "judge_entropy": pl.Float64,
        "cosine_classes": pl.Int64,
        "cosine_entropy": pl.Float64,
        "external_classes": pl.Int64,
        "external_entropy": pl.Float64,
        "ari_judge_cosine": pl.Float64,
        "ari_judge_external": pl.Float64,
        "ari_cosine_external": pl.Float64,
    }
    table = pl.DataFrame(records, schema=schema, orient="row").with_columns(
        pl.col(c).fill_nan(None) for c in (*floats, "ari_cosine_external")
    )
    label_schema = {
        "row": pl.Int64,
        "query_id": pl.Utf8,
        "condition": pl.Utf8,
        "deployment": pl.Utf8,
        "sample_index": pl.Int64,
        "judge_class": pl.Int64,
    }
    return table, pl.DataFrame(label_rows, schema=label_schema, orient="row")


def classes_summary(table: pl.DataFrame) -> list[dict[str, Any]]:
    """Means per (condition, deployment) of `classes_tables`' table (nulls left out of a mean)."""
    import polars as pl

    if table.height == 0:
        return []
    columns = [c for c in table.columns if c not in ("query_id", "condition", "deployment")]
    means = table.group_by(["condition", "deployment"], maintain_order=True).agg(
        pl.len().alias("queries"), *[pl.col(c).mean() for c in columns]
    )
    return means.to_dicts()
