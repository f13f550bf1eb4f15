"""Validated data models at every edge: deployments, sampling parameters, queries, studies.

Everything a user writes (YAML, JSON, REST bodies) becomes one of these pydantic models
before any work starts, so a typo fails fast with the field named, not mid-study.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hivemind.inputs.judge_entry import JudgeClasses as JudgeClasses
from hivemind.inputs.spec_base import NAME_PATTERN as NAME_PATTERN
from hivemind.inputs.spec_base import STORE_ENTRIES as STORE_ENTRIES
from hivemind.inputs.spec_base import StoreName as StoreName
from hivemind.inputs.spec_base import Strict as Strict
from hivemind.inputs.spec_base import canonical_json as canonical_json
from hivemind.inputs.spec_base import check_store_name as check_store_name
from hivemind.inputs.spec_base import json_safe as json_safe
from hivemind.inputs.spec_base import sha256_hex as sha256_hex
from hivemind.inputs.spec_base import store_name_problem as store_name_problem


class Novelty(Strict):
    """Diversity-guided decoding (ARGS-style, Khanov et al. 2024): every `every` tokens the `top_k`
    candidate tokens are rescored by `score + weight * (1 - max cosine)` of the partial response
    against the answers the deployment already gave to the query under the condition."""

    weight: float = Field(gt=0.0)
    top_k: int = Field(5, ge=2, le=100)
    every: int = Field(1, ge=1)
    embedder: str = "all-MiniLM-L6-v2"


LOCAL_DECODING_PARAMS: dict[str, str] = {
    "novelty": (
        "diversity-guided decoding runs on `provider: composite` deployments; a composite of one "
        "component runs a single model; or allow dropping it for the others"
    ),
}
"""Parameters that only hivemind's own token-stepping engine runs (composite deployments), each
with the way out a refusal names; every other provider refuses them."""


class SamplingParams(Strict):
    """Decoding parameters. `None` means "leave it to the deployment's or provider's default"."""

    temperature: float | None = Field(None, ge=0.0, le=5.0)
    """Softmax temperature."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    """Min-p sampling threshold (local models and servers that accept it)."""
    top_k: int | None = Field(None, ge=0)
    """Top-k cut-off (0 disables where supported)."""
    max_tokens: int | None = Field(None, ge=1, le=131072)
    """Upper bound on generated tokens."""
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """OpenAI-style presence penalty."""
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    """OpenAI-style frequency penalty."""
    stop: list[str] | None = None
    """Stop sequences."""
    novelty: Novelty | None = None
    """Diversity-guided decoding; composite deployments only (one component runs one model)."""

    def merged(self, *overrides: SamplingParams | None) -> SamplingParams:
        """Later overrides win field by field; unset (`None`) fields never erase earlier ones."""
        data = self.model_dump()
        for override in overrides:
            if override is None:
                continue
            data.update({k: v for k, v in override.model_dump().items() if v is not None})
        return SamplingParams(**data)

    def explicit(self) -> dict[str, Any]:
        """Only the parameters that are set, ready to send to a provider."""
        return {k: v for k, v in self.model_dump().items() if v is not None}

    def key_data(self) -> dict[str, Any]:
        """What cache keys and stored rows hash: every field, `novelty` only when set, so the
        keys of samples taken before it existed still match."""
        data = self.model_dump()
        if data["novelty"] is None:
            del data["novelty"]
        return data


ProviderName = str
# Options that change how a request runs but never what it returns: kept out of cache keys, so
# tuning threads or a test script's failures does not invalidate finished samples.
RUNTIME_OPTIONS = frozenset(
    {
        "n_threads",
        "verbose",
        "latency_s",
        "fail_first",
        "fail_rate",
        "error_status",
        "retry_after",
        "batch_poll_s",
        "batch_size",
    }
)


class Deployment(Strict):
    """One named model endpoint of the zoo (`providers.yaml`). Results are keyed by `name`."""

    name: str = Field(pattern=NAME_PATTERN)
    """Unique name used in results, plots and reports."""
    provider: ProviderName
    """Registered provider kind: `llamacpp`, `litellm`, `openai`, `mock`, or a plugin's name."""
    model: str
    """Model identifier as the provider expects it (litellm string, server model name, GGUF label)."""
    api_base: str | None = None
    """Base URL for OpenAI-compatible servers (vLLM, Ollama, llama.cpp server)."""
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the API key. Keys never live in YAML."""
    max_concurrency: int = Field(4, ge=1, le=4096)
    """Simultaneous requests allowed to this deployment."""
    rpm: float | None = Field(None, gt=0)
    """Requests per minute the deployment's API allows: one pace shared by every condition."""
    tpm: float | None = Field(None, gt=0)
    """Tokens (prompt + completion) per minute the deployment's API allows."""
    params: SamplingParams = Field(default_factory=SamplingParams)
    """Default sampling parameters for this deployment (the study's and a condition's win)."""
    family: str | None = None
    """Model family for lineage studies (e.g. `llama-3`)."""
    stage: str | None = None
    """Post-training stage for lineage studies: base, sft, dpo, rl, ..."""
    reference: bool = False
    """A reference arm (human answers, or any arm that is not a model under test): shown in the
    per-query tables, the matrix and the report, left out of the model statistics."""
    enabled: bool = True
    """Disabled deployments stay in the zoo but are not sampled unless named explicitly."""
    batch: bool = False
    """Sample through the provider's batch API (OpenAI Batch API, Anthropic Message Batches):
    half price, hours not seconds. Not part of the identity: a batch answer is the same sample.
    `options.batch_poll_s` (30) and `options.batch_size` (50,000) tune it."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Provider-specific settings (GGUF source and checksum, chat format, mock script, ...)."""

    @field_validator("options")
    @classmethod
    def _no_secrets_in_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if re.search(r"(api_?key|secret|token|password)", key, re.IGNORECASE):
                raise ValueError(
                    f"options.{key}: secrets must not be written in the zoo; "
                    "set `api_key_env` to the name of an environment variable instead"
                )
        return value

    def identity(self) -> dict[str, Any]:
        """What about this deployment can change an output (goes into every cache key)."""
        options = {k: v for k, v in self.options.items() if k not in RUNTIME_OPTIONS}
        return {
            "provider": self.provider,
            "model": self.model,
            "api_base": self.api_base,
            "options": options,
        }


class Query(Strict):
    """One open-ended (or verifiable) prompt of a query set."""

    id: str = Field(min_length=1, max_length=200)
    """Stable identifier, unique within its set."""
    text: str = Field(min_length=1)
    """The prompt as sent to every model."""
    category: str = "uncategorized"
    """Taxonomy label (creative writing, brainstorming, ...), used for per-category breakdowns."""
    answer: str | None = None
    """Reference answer for verifiable queries (checked by `hivemind.analysis.verify`)."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Anything else the source file carried."""


class QuerySet(Strict):
    """A named, ordered collection of queries with unique ids."""

    name: str = Field(pattern=NAME_PATTERN)
    """Name of the set (shipped sets: `open-ended-v1`, `verifiable-v1`)."""
    description: str = ""
    """What the set is for."""
    queries: list[Query] = Field(min_length=1)
    """The queries, in order."""

    @model_validator(mode="after")
    def _unique_ids(self) -> QuerySet:
        seen: set[str] = set()
        for position, query in enumerate(self.queries):
            if query.id in seen:
                raise ValueError(f"queries[{position}].id: duplicate id {query.id!r}")
            seen.add(query.id)
        return self

    @property
    def verifiable(self) -> bool:
        """True when every query carries a reference answer."""
        return all(q.answer is not None for q in self.queries)


DEFAULT_FOLLOW_UP = "Can you generate a different answer?"
"""NoveltyBench's follow-up turn for in-context regeneration."""


class Condition(Strict):
    """A decoding-time intervention crossed with every deployment (temperature, min-p, prompt)."""

    name: str = Field(pattern=NAME_PATTERN)
    """Label in results (e.g. `t1.5`, `ask-for-variety`)."""
    params: SamplingParams = Field(default_factory=SamplingParams)
    """Parameter overrides for this condition."""
    system_prompt: str | None = None
    """System prompt added to every request of this condition."""
    paraphrase: int | Literal["each"] | None = None
    """Send each query's N-th rewording (1-based; NoveltyBench `prompt_paraphrases`) instead of
    its text: "the same request, reworded". Every query of the study needs N paraphrases.
    `each`: sample i answers rewording i mod n of the query's n (NoveltyBench's paraphrase method)."""
    mode: Literal["independent", "in-context"] = "independent"
    """`in-context`: one conversation per (query, deployment, condition); sample i is asked after
    samples 0..i-1, each answer followed by the `follow_up` user turn (NoveltyBench's in-context
    regeneration). `independent`: every sample is a call of its own."""
    follow_up: str = Field(DEFAULT_FOLLOW_UP, min_length=1)
    """The user turn after each answer of an in-context chain."""
    allow_dropped_params: bool | list[str] = False
    """Parameters a deployment may leave out of its requests when its provider does not honour
    them (`true`: any). Without this a study stops before sampling; with it, each row records
    what was not sent and the report shows it."""

    @field_validator("allow_dropped_params")
    @classmethod
    def _known_params(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list):
            unknown = sorted(set(value) - set(SamplingParams.model_fields))
            if unknown:
                known = ", ".join(SamplingParams.model_fields)
                raise ValueError(f"allow_dropped_params: unknown parameter(s) {unknown} (known: {known})")
        return value

    @field_validator("paraphrase", mode="before")
    @classmethod
    def _rewording(cls, value: object) -> object:
        if value is None or value == "each" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError(f"paraphrase must be a rewording number (1, 2, ...) or each, not {value!r}")

    @model_validator(mode="after")
    def _mode_fits(self) -> Condition:
        if self.mode == "in-context" and self.paraphrase == "each":
            raise ValueError("paraphrase: each asks every sample separately; it cannot be mode: in-context")
        if self.mode != "in-context" and self.follow_up != DEFAULT_FOLLOW_UP:
            raise ValueError("follow_up is the user turn of mode: in-context; set mode: in-context or remove it")
        return self

    def allows_dropping(self, param: str) -> bool:
        """Whether this condition accepts samples taken without `param`."""
        return self.allow_dropped_params is True or (
            isinstance(self.allow_dropped_params, list) and param in self.allow_dropped_params
        )


DEFAULT_CONDITION = Condition(name="default")


class AnalysisOptions(Strict):
    """How a study's responses are analysed (`hivemind analyze` flags override these)."""

    complete_only: bool = False
    """Analyse complete responses only: leave out those cut off at max_tokens (finish reason `length`)."""
    answer_checker: str = Field("final", min_length=1)
    """How answers to verifiable queries are judged: final, exact, numeric[:tolerance], regex, or
    module:function (see `hivemind.analysis.verify`)."""
    corpus_index: Literal["exact", "ivf"] = "exact"
    """Index of the corpus-wide near-duplicate search: exact (quadratic), or FAISS IVF
    (approximate, for corpora of hundreds of thousands of responses; the summary names it)."""
    ensemble_k: Literal["auto", "all", "sparse"] = "auto"
    """Which k the ensemble curves are computed at: `all` (every k = 1..K), `sparse` (every k up to
    the number of deployments, then about x1.25 apart to K; the same values at those k for about a
    sixth of the Vendi cost) or `auto` (all while K <= 16, sparse beyond; the summary says which)."""
    classes: JudgeClasses | None = None
    """Equivalence classes by a judge deployment beside the cosine ones (`hivemind.analysis.judge`)."""


class SamplingPlan(Strict):
    """What every door's study request has: a query set crossed with deployments, K samples each.

    The shared base of `StudySpec`, the service's `StudyCreate` and the scans' `ScanSpec`; a
    subclass redeclares a field only to bound it more tightly at its door (with its own doc).
    """

    name: StoreName
    """Study name; a store can hold several studies (each in its folder `STORE/<name>/`)."""
    query_set: str
    """A shipped set's name (`open-ended-v1`) or a path to a JSONL/CSV/Parquet file."""
    deployments: list[str] = Field(min_length=1)
    """Deployment names from the zoo, each at most once."""
    samples: int = Field(8, ge=1, le=10000)
    """Samples per (query, deployment, condition): equal K for every deployment."""
    params: SamplingParams = Field(default_factory=SamplingParams)
    """Study-wide sampling parameters (override each deployment's defaults)."""
    max_queries: int | None = Field(None, ge=1)
    """Use only the first N queries of the set (quick studies)."""
    seed: int = 0
    """Base seed; each sample gets its own seed derived from it."""
    embedder: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model (name or path) used by the analysis."""

    @field_validator("deployments")
    @classmethod
    def _unique_deployments(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("deployments: each deployment may appear only once")
        return value


class StudyOptions(SamplingPlan):
    """A sampling plan with what a full study may add: conditions, category filter, budget, retries."""

    conditions: list[Condition] = Field(default_factory=list)
    """Decoding conditions to cross with deployments; empty means one `default` condition."""
    categories: list[str] | None = None
    """Use only queries of these categories."""
    budget_usd: float | None = Field(None, ge=0)
    """Stop sampling cleanly once the recorded cost reaches this many dollars."""
    max_attempts: int = Field(4, ge=1, le=20)
    """Attempts per sample before it is recorded as an error row."""
    batch: bool = False
    """Sample every deployment that has a batch API through it (`hivemind run --batch`); the
    others are sampled live."""
    analysis: AnalysisOptions = Field(default_factory=AnalysisOptions)
    """Analysis options: complete responses only, answer checker."""

    @field_validator("conditions")
    @classmethod
    def _unique_conditions(cls, value: list[Condition]) -> list[Condition]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError("conditions: condition names must be unique")
        return value

    def effective_conditions(self) -> list[Condition]:
        """The conditions to sample; a study without any has one `default` condition."""
        return self.conditions or [DEFAULT_CONDITION]


class Columns(Strict):
    """Which source column holds what; None means "look for the usual names"."""

    query: str | None = None
    """The query text (by default the first present of query, prompt, question, ...)."""
    id: str | None = None
    """The query id (by default the first present of id, query_id, prompt_id, ...)."""
    model: str | None = None
    """The model that answered (by default the first present of model, deployment, ...)."""
    text: str | None = None
    """The response (by default the first present of text, response, completion, ...)."""
    sample_index: str | None = None
    """The sample's index among the model's answers to the query."""
    category: str | None = None
    """The query's category."""
    answer: str | None = None
    """The reference answer of a verifiable query."""
    classes: str | None = None
    """Equivalence-class labels the file carries (NoveltyBench `partition`)."""
    condition: str | None = None
    """The condition each row belongs to (a file holding several prompting strategies); rows
    without a value take the import's condition."""


class ResponseSource(Strict):
    """A file of released answers a spec imports before sampling (`hivemind.imports.spec_responses`)."""

    file: str = Field(min_length=1)
    """JSONL/CSV/JSON/Parquet file (relative to the spec file), or `package:NAME` for a file
    shipped in `hivemind/data/` (e.g. `package:noveltybench-gpt4o/gpt-4o.jsonl`)."""
    deployment: str | None = Field(None, pattern=NAME_PATTERN)
    """One deployment name for every row (default: the file's model column)."""
    condition: str | None = Field(None, pattern=NAME_PATTERN)
    """The condition its answers belong to (created when the study lacks it)."""
    reference: bool = False
    """Its deployments are reference arms (human answers): not counted as models under test."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Which column holds what (keys as `hivemind import`'s --*-col flags: query, id, model,
    text, sample_index, category, answer, classes, condition)."""
    on_unmatched: Literal["error", "skip", "add"] = "error"
    """Rows matching no query: fail, leave out (listed), or add as new queries."""

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(Columns.model_fields))
        if unknown:
            raise ValueError(f"unknown column key(s) {unknown} (known: {', '.join(Columns.model_fields)})")
        return value


class StudySpec(StudyOptions):
    """A whole study: which queries, which deployments, how many samples, under which conditions."""

    deployments: list[str] = Field(default_factory=list)
    """Deployment names from the zoo to sample, each at most once (may be empty when `responses`
    brings every deployment)."""
    zoo: str | None = None
    """Path to the zoo file; default `providers.yaml` in the working directory, else the shipped one."""
    references: list[str] = Field(default_factory=list)
    """Deployments that are reference arms (human answers, zoo deployments with `reference:
    true`, imports with `--reference`): in the per-query tables, the matrix and the report, not
    in the model statistics (hivemind gap, ensemble curves, clustering, nearest neighbours)."""
    responses: list[ResponseSource] = Field(default_factory=list)
    """Files of released answers imported before sampling, idempotently by their sha256."""

    @model_validator(mode="after")
    def _something_to_study(self) -> StudySpec:
        if not self.deployments and not self.responses:
            raise ValueError("deployments: name at least one deployment to sample, or files under `responses`")
        return self

    def under_test(self) -> list[str]:
        """The deployments whose statistics are the study's: all but the reference arms."""
        return [d for d in self.deployments if d not in set(self.references)]


Seed31 = Annotated[int, Field(ge=0, le=2**31 - 1)]
"""A seed that fits every backend's seed type (REST bodies and scans are bounded to it)."""
