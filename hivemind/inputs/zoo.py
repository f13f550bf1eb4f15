"""The model zoo: `providers.yaml` -> validated deployments, selected by name.

Keys are never in the file: each entry names an environment variable, and a missing one is an
error raised before any sampling starts, naming the variable (never printing a value).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from hivemind.errors import HivemindError
from hivemind.inputs.embedder_entry import EmbedderEntry, unique_embedder_names
from hivemind.inputs.spec import Deployment, Strict, StudySpec

REPO_ZOO = Path(str(files("hivemind") / "data" / "providers.yaml"))
"""The shipped zoo (package data; in a checkout, a link to the repository's providers.yaml)."""


class ZooError(HivemindError, ValueError):
    """The zoo file is missing, malformed, or names something it does not define."""


class Zoo(Strict):
    """The parsed zoo file. Other top-level sections (e.g. `scans`) are read by their own modules."""

    deployments: list[Deployment] = Field(default_factory=list)
    """Every deployment the lab can sample."""
    scans: list[dict[str, Any]] = Field(default_factory=list)
    """Scheduled scans (validated by `hivemind.scans.scan`)."""
    # --- embedders: remote embedding endpoints (`hivemind.providers.embedders`) ---
    embedders: list[EmbedderEntry] = Field(default_factory=list)
    """Embedders specs, `--embedder` and the service refer to by name."""

    @model_validator(mode="after")
    def _unique_embedder_names(self) -> Zoo:
        unique_embedder_names(self.embedders)
        return self

    def embedder(self, name: str) -> EmbedderEntry | None:
        """The embedder entry called `name`, or None (then `name` is a sentence-transformers model)."""
        return next((e for e in self.embedders if e.name == name), None)

    # --- deployments ---

    @model_validator(mode="after")
    def _unique_names(self) -> Zoo:
        seen: set[str] = set()
        for position, deployment in enumerate(self.deployments):
            if deployment.name in seen:
                raise ValueError(f"deployments[{position}].name: duplicate name {deployment.name!r}")
            seen.add(deployment.name)
        return self

    def get(self, name: str) -> Deployment:
        """One deployment by name, with the known names in the error."""
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        known = ", ".join(d.name for d in self.deployments) or "none"
        raise ZooError(f"unknown deployment {name!r} (the zoo has: {known})", field="deployments")

    def select(self, names: list[str] | None = None) -> list[Deployment]:
        """The named deployments in order, or every enabled one when `names` is None."""
        if names is None:
            return [d for d in self.deployments if d.enabled]
        return [self.get(name) for name in names]


def default_zoo_path() -> Path:
    """`providers.yaml` in the working directory, else the shipped one."""
    local = Path("providers.yaml")
    return local if local.exists() else REPO_ZOO


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as a path: `("deployments", 2, "model")` -> `deployments[2].model`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem, each naming the path of the field (`deployments[2].model`)."""
    return "\n".join(f"{source}: {field_path(item['loc']) or '(root)'}: {item['msg']}" for item in error.errors())


def load_zoo(path: str | Path | None = None) -> Zoo:
    """Read and validate a zoo file."""
    zoo_path = Path(path) if path is not None else default_zoo_path()
    if not zoo_path.exists():
        raise ZooError(f"zoo file {zoo_path} does not exist")
    try:
        raw = yaml.safe_load(zoo_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ZooError(f"{zoo_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ZooError(f"{zoo_path}: expected a mapping with a `deployments:` list")
    try:
        return Zoo.model_validate(raw)
    except ValidationError as exc:
        raise ZooError(format_validation_error(str(zoo_path), exc)) from None


def missing_keys(deployments: list[Deployment]) -> list[str]:
    """Messages for each deployment whose key variable is unset (names only, never values)."""
    return [
        f"deployment {d.name!r} needs the environment variable {d.api_key_env}, which is not set"
        for d in deployments
        if d.api_key_env and not os.environ.get(d.api_key_env)
    ]


def judge_deployment(spec: StudySpec, zoo: str | Path | None = None) -> Deployment | None:
    """The judge deployment the spec names (None without `analysis.classes`), or one clear error."""
    from hivemind.inputs.judge_entry import JudgeError  # here: zoo -> judge_entry, never back

    options = spec.analysis.classes
    if options is None:
        return None
    try:
        return load_zoo(zoo or spec.zoo).get(options.judge)
    except ZooError as exc:
        raise JudgeError(f"analysis.classes.judge: {exc}", field="analysis.classes.judge") from None
