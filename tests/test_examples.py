"""Every shipped example spec loads, names deployments of the shipped zoo and queries that exist,
and passes the pre-sampling parameter check: a user never meets a broken example halfway."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind.providers.registry import create_provider
from hivemind.sampling.stage import check_modes, check_params, load_spec, resolve_study
from tests.conftest import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"quick-local.yaml", "decoding-time.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_load_and_pass_the_parameter_check(path: Path) -> None:
    spec = load_spec(path)
    queries, deployments = resolve_study(spec)
    assert queries and len(deployments) == len(spec.deployments)
    providers = {d.name: create_provider(d) for d in deployments}  # validates options, loads nothing
    assert check_params(spec, deployments, providers) == {}  # nothing dropped, nothing refused
    check_modes(spec, deployments, providers)  # in-context conditions only on deployments that take turns
