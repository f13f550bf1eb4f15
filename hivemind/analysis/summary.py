"""`summary.json`: the typed, versioned contract between the analysis and its readers.

The analysis (`hivemind.pipeline`) writes one `Summary` per study next to its tables; the report,
the REST results and `write_report`'s staleness check read it back through `read_summary`, so a
renamed or misspelt key is an error at the writer (unknown top-level keys are refused) and an
attribute error at a reader, not a silently empty `.get(..., {})`.

The JSON keeps the keys it always had (REST clients read it as is) plus `version`. Summaries
written before the version existed (no `version` key) have the same keys and are read as
version 0; a summary from a newer hivemind, or one that does not fit, is refused with a
`SummaryError` that says to re-analyse. Nested analysis results are typed where the report
reads them field by field; tables-shaped parts stay `dict[str, Any]`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivemind.errors import HivemindError
from hivemind.layout import atomic_write_text

SUMMARY_VERSION = 1
"""Bump when a key changes meaning or shape, and teach `read_summary` the older version."""


class SummaryError(HivemindError, ValueError):
    """A `summary.json` that this hivemind cannot read (newer, damaged, or not a summary)."""


class _Part(BaseModel):
    """A nested part: keys the analysis may add later are kept, not dropped."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Estimate(_Part):
    """A point estimate with its 95% interval (None where not computable)."""

    estimate: float | None = None
    lo: float | None = None
    hi: float | None = None


class GapEstimate(Estimate):
    p_permutation: float | None = None
    """One-sided permutation p of gap > 0 (intra > inter; deployment labels shuffled within each query)."""


class RandomBaseline(Estimate):
    n_pairs: int | None = None
    n_queries: int | None = None


class HivemindGap(Estimate):
    k_star: int | None = None
    """Ensemble size the gap is measured at."""
    realized: float | None = None
    promised: float | None = None
    n_queries: int | None = None


class NearestNeighbours(_Part):
    """Mean distinct deployments among each response's j nearest (same query), at j = K."""

    j: int | None = None
    estimate: float | None = None
    of: int | None = None
    """Deployments in the condition."""
    most: int | None = None
    """The largest count possible at this j: min(j, deployments)."""
    least: int | None = None
    """The smallest count possible at this j (1)."""


class Headline(_Part):
    """The numbers at the top of the report, for the baseline condition."""

    condition: str | None = None
    n_queries: int | None = None
    intra_similarity: Estimate = Field(default_factory=Estimate)
    inter_similarity: Estimate = Field(default_factory=Estimate)
    gap: GapEstimate = Field(default_factory=GapEstimate)
    random_baseline: RandomBaseline = Field(default_factory=RandomBaseline)
    share_queries_intra_above: dict[str, float | None] = Field(
        default_factory=dict, alias="share_queries_intra_above_0.8"
    )
    """Per deployment: share of queries whose intra-model similarity exceeds 0.8."""
    hivemind_gap: HivemindGap = Field(default_factory=HivemindGap)
    ensemble_at_k_star: dict[str, float | None] = Field(default_factory=dict)
    """The ensemble curve at k*: diff_lo/diff_hi pointwise 95%, diff_band_lo/diff_band_hi the
    simultaneous band over k (family-wise 95%)."""
    nn_distinct_deployments: NearestNeighbours = Field(default_factory=NearestNeighbours)
    near_duplicate_pairs: int = 0
    near_duplicate_pairs_corpus: int | None = None
    near_duplicate_pairs_cross_query: int | None = None


class Footing(_Part):
    """How many queries each kind of figure of one condition stands on."""

    queries_analysed: int | None = None
    queries_every_deployment: int | None = None
    queries_complete: int | None = None
    """Queries every deployment under test answered with the common K: the headline's queries."""
    queries_headline: int | None = None
    queries_ensemble_curve: int | None = None
    ensemble_k_max: int | None = None
    missing: dict[str, int] = Field(default_factory=dict)
    """Per deployment: on how many analysed queries it is absent (those are left out of the headline)."""


class Truncation(_Part):
    per_deployment: dict[str, dict[str, Any]] = Field(default_factory=dict)
    complete_only: bool = False
    analysed: str | None = None
    warning_share: float = 0.1


class EmbedderInfo(_Part):
    name: str | None = None
    id: str | None = None
    prompt_tokens: int | None = None
    """Tokens a remote embedder's provider reported for this analysis (cached texts send none)."""
    cost_usd: float | None = None
    """Their cost at litellm's price for a hosted model; null when unknown or in process."""


class SamplesFingerprint(_Part):
    """What the analysis was computed from (`Store.samples_fingerprint`)."""

    n_ok: int
    n_rows: int
    max_created_at: float | None = None


class KRange(_Part):
    min: int | None = None
    max: int | None = None


class DroppedParams(_Part):
    deployment: str
    condition: str
    params: list[str]
    rows: int


class Summary(BaseModel):
    """One study's analysis summary. Defaults stand for parts an analysis did not produce."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: int = SUMMARY_VERSION
    """Format version; 0 = written before the format carried one (same keys)."""
    study: str
    store: str | None = None
    """Store directory of the analysis (None where a door hides server paths)."""
    created_at: str | None = None
    spec: dict[str, Any] | None = None
    """The study spec, as JSON (kept untyped: an old spec must stay readable)."""
    embedder: EmbedderInfo = Field(default_factory=EmbedderInfo)
    versions: dict[str, str] = Field(default_factory=dict)
    n_samples: int | None = None
    samples_fingerprint: SamplesFingerprint | None = None
    dropped_params: list[DroppedParams] = Field(default_factory=list)
    n_failed: int = 0
    n_empty: int = 0
    n_excluded_truncated: int = 0
    n_dropped_for_equal_k: int = 0
    n_responses: int = 0
    n_queries: int = 0
    deployments: list[str] = Field(default_factory=list)
    conditions: list[str] = Field(default_factory=list)
    baseline_condition: str | None = None
    k_per_deployment: KRange = Field(default_factory=KRange)
    equal_k_rule: str = ""
    footing_rule: str = ""
    interval_rule: str = ""
    """How the intervals are made: BCa over queries; ensemble per-k pointwise beside a simultaneous band."""
    near_duplicate_threshold: float | None = None
    near_duplicate_corpus_index: Literal["exact", "ivf"] = "exact"
    """Index of the corpus-wide search: exact, or FAISS IVF (approximate: may miss pairs)."""
    ensemble_k: Literal["all", "sparse"] = "all"
    """Which k the ensemble curves computed: all, or sparse (fewer k; the same values there).
    `analysis.ensemble_k: auto` (the default) is resolved here: all while K <= 16, sparse beyond."""
    n_boot: int | None = None
    n_perm: int | None = None
    headline: Headline = Field(default_factory=Headline)
    footing: dict[str, Footing] = Field(default_factory=dict)
    answer_checker: str = "final"
    clustering: dict[str, dict[str, Any]] = Field(default_factory=dict)
    references: list[str] = Field(default_factory=list)
    """Reference arms (human answers): in the per-query tables and the matrix, not in the model statistics."""
    deployments_under_test: list[str] = Field(default_factory=list)
    """The deployments the model statistics (headline, ensemble, clustering, nearest neighbours) stand on."""
    external_classes: dict[str, Any] | None = None
    """Classes an imported file carried, beside hivemind's (absent when none did)."""
    judge_classes: dict[str, Any] | None = None
    """Classes a judge deployment decided (`hivemind.analysis.judge`; absent without `analysis.classes`)."""
    truncation: Truncation = Field(default_factory=Truncation)
    warnings: list[str] = Field(default_factory=list)
    tables: list[str] = Field(default_factory=list)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON content: the keys `summary.json` always had, plus `version`."""
        out = self.model_dump(mode="json", by_alias=True)
        for key in ("external_classes", "judge_classes"):
            if out[key] is None:
                del out[key]
        return out

    def write(self, path: str | Path) -> Path:
        """Write atomically (a reader sees the old summary or this one)."""
        return atomic_write_text(path, json.dumps(self.to_json_dict(), indent=2, allow_nan=False))


def parse_summary(data: Any, source: str = "summary") -> Summary:
    """A summary from its JSON content, read through its version, or a `SummaryError`."""
    if not isinstance(data, dict):
        raise SummaryError(f"{source}: not an analysis summary (expected a JSON object)")
    version = data.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise SummaryError(f"{source}: version: not a summary version ({version!r})", field="version")
    if version > SUMMARY_VERSION:
        raise SummaryError(
            f"{source}: written by a newer hivemind (summary version {version}; this one reads "
            f"up to {SUMMARY_VERSION}): upgrade hivemind or re-run `hivemind analyze`",
            field="version",
        )
    # version 0 (no `version` key) has the same keys as version 1
    try:
        return Summary.model_validate({**data, "version": version})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SummaryError(
            f"{source}: {where}: {first['msg']} ({exc.error_count()} problem(s)); "
            "re-run `hivemind analyze` to rewrite it",
            field=where,
        ) from None


def read_summary(path: str | Path) -> Summary:
    """`summary.json` at `path`, typed; a `SummaryError` naming the file when it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SummaryError(f"{path}: no analysis summary (run `hivemind analyze` first)") from None
    except (OSError, ValueError) as exc:
        raise SummaryError(f"{path}: cannot read the analysis summary: {exc}") from None
    return parse_summary(data, str(path))


KEY_PACKAGES = (
    "numpy",
    "polars",
    "scipy",
    "torch",
    "transformers",
    "sentence-transformers",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "matplotlib",
    "sacrebleu",
    "pydantic",
    "litellm",
    "llama-cpp-python",
)
"""Packages whose versions a summary records (`versions`): what an analysis depends on."""


def versions() -> dict[str, str]:
    """hivemind, Python and the installed key packages (not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    import hivemind

    out = {"hivemind": hivemind.__version__, "python": platform.python_version()}
    for package in KEY_PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out
