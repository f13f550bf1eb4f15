"""The core install compiles nothing: without the `local` extra (llama-cpp-python) the CLI works
and a local deployment is refused before sampling with the exact install line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.conftest import REPO, mock_deployment

WITHOUT_LLAMA = "import sys\nsys.modules['llama_cpp'] = None\nfrom hivemind.cli import main\nsys.argv = ['hivemind', *sys.argv[1:]]\nmain()\n"


def test_llama_cpp_is_an_extra_not_a_core_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("llama-cpp-python")]
    assert [d for d in project["optional-dependencies"]["local"] if d.startswith("llama-cpp-python")]


def test_a_local_deployment_without_the_extra_stops_with_the_install_line(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    mock_deployment("m1"),
                    {"name": "tiny", "provider": "llamacpp", "model": "tiny", "options": {"path": str(zoo)}},
                ]
            }
        )
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "s", "query_set": "open-ended-v1", "deployments": ["m1", "tiny"], "samples": 1, "zoo": str(zoo)}
        )
    )
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-c", WITHOUT_LLAMA, *a], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    helped = run("--help")
    assert helped.returncode == 0 and "run" in helped.stdout
    out = run("run", str(spec), "--store", str(tmp_path / "store"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'hivemind-study[local]'" in out.stderr and "'tiny'" in out.stderr
    if (tmp_path / "store").exists():  # nothing sampled, not even the deployment that could run
        from hivemind.store.journal import Store

        with Store(tmp_path / "store") as store:
            assert not store.has_samples("s")
