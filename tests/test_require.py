"""HIVEMIND_REQUIRE_ALL=1 turns every "a real part is missing" skip into a failure naming the part.

Each case runs pytest in a subprocess on a small generated test file, once without the variable
(it must skip, as on a developer's machine) and once with it (it must fail, as in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, REQUIRE_ALL_VARIABLE

ABSENT = "hivemind_part_that_is_not_installed"
CASES = {
    # a module-level need (test_index.py's faiss, test_embed.py's embedder): a collection error
    "module_level": f"""
from tests.conftest import require
require("{ABSENT}", "the {ABSENT} package")

def test_uses_it():
    pass
""",
    # a need found inside a test (test_report.py's chromium, test_service.py's schemathesis CLI)
    "inside_a_test": f"""
from tests.conftest import require, require_that

def test_present_parts_pass():
    assert require("json").dumps([1]) == "[1]"
    require_that(True, "never reported")

def test_needs_a_program():
    require_that(None, "the {ABSENT} program is missing")
""",
}


def run_pytest(tmp_path: Path, case: str, require_all: bool) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / f"test_{case}.py"
    test_file.write_text(CASES[case])
    (tmp_path / "test_control.py").write_text("def test_control():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ALL_VARIABLE}
    env["PYTHONPATH"] = str(REPO)
    if require_all:
        env[REQUIRE_ALL_VARIABLE] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(test_file),
            str(tmp_path / "test_control.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_the_variable_a_missing_part_skips(tmp_path: Path, case: str) -> None:
    result = run_pytest(tmp_path, case, require_all=False)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = {"module_level": 1, "inside_a_test": 2}[case]
    assert f"{passed} passed, 1 skipped in" in result.stdout, result.stdout
    assert ABSENT in result.stdout, "the skip reason names the missing part"


@pytest.mark.parametrize("case", sorted(CASES))
def test_with_the_variable_a_missing_part_fails_naming_it(tmp_path: Path, case: str) -> None:
    result = run_pytest(tmp_path, case, require_all=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "skipped" not in result.stdout
    assert ABSENT in result.stdout and f"{REQUIRE_ALL_VARIABLE}=1" in result.stdout
    if case == "inside_a_test":
        assert "1 failed, 2 passed in" in result.stdout, "only the test that needs the part fails"
    else:
        assert "1 error in" in result.stdout, "the module cannot be collected"


def test_ci_runs_the_readme_test_command_with_the_variable_set() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if "pytest" in line and line.startswith("bash ")]
    assert len(commands) == 1, "the README shows one test command"
    command = commands[0]
    assert command in ci, "CI runs the README's test command verbatim"
    assert f"export {REQUIRE_ALL_VARIABLE}=1" in ci
    assert ci.index(f"export {REQUIRE_ALL_VARIABLE}=1") < ci.index(command)
