"""Every bad input on the command line gets one line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO

GOOD_SPEC = "name: s\nquery_set: open-ended-v1\ndeployments: [mock-a]\nsamples: 1\nmax_queries: 1\n"


def _spec(tmp: Path, content: bytes | str, name: str = "spec.yaml") -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _dir(tmp: Path) -> str:
    (tmp / "a-dir").mkdir()
    return str(tmp / "a-dir")


def _blocking_file(tmp: Path) -> str:
    (tmp / "plain-file").write_text("x")
    return str(tmp / "plain-file" / "store")  # a store under a regular file: NotADirectoryError


# (case, argv builder from a temp dir, words the one line must contain)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("spec not UTF-8", lambda t: ["run", _spec(t, b"name: s\xff\xfe\n"), "--store", str(t / "st")], "not UTF-8"),
    ("spec is a directory", lambda t: ["run", _dir(t), "--store", str(t / "st")], "is a directory"),
    ("spec missing", lambda t: ["run", str(t / "none.yaml"), "--store", str(t / "st")], "does not exist"),
    ("spec not YAML", lambda t: ["run", _spec(t, "name: [unclosed\n"), "--store", str(t / "st")], "not valid YAML"),
    ("spec a list", lambda t: ["run", _spec(t, "- 1\n- 2\n"), "--store", str(t / "st")], "expected a mapping"),
    (
        "unknown deployment",
        lambda t: ["run", _spec(t, GOOD_SPEC.replace("mock-a", "nope")), "--store", str(t / "st")],
        "unknown deployment 'nope'",
    ),
    (
        "store under a file",
        lambda t: ["run", _spec(t, GOOD_SPEC), "--store", _blocking_file(t), "--no-analyze"],
        "Not a directory",
    ),
    ("port too large", lambda t: ["serve", "--port", "99999", "--store", str(t / "st")], "less than or equal to 65535"),
    ("port negative", lambda t: ["serve", "--port", "-1", "--store", str(t / "st")], "greater than or equal to 0"),
    ("port not a number", lambda t: ["serve", "--port", "http", "--store", str(t / "st")], "as an integer"),
    (
        "import a directory",
        lambda t: ["import", _dir(t), "--study", "x", "--store", str(t / "st")],
        "a directory, not a file",
    ),
    (
        "import a missing file",
        lambda t: ["import", str(t / "none.jsonl"), "--study", "x", "--store", str(t / "st")],
        "no such file",
    ),
    (
        "import not UTF-8",
        lambda t: [
            "import",
            _spec(t, b'{"id": "q", "model": "m", "text": "\xff"}\n', "r.jsonl"),
            "--study",
            "x",
            "--store",
            str(t / "st"),
            "--query-set",
            "open-ended-v1",
            "--unmatched",
            "add",
        ],
        "UTF-8",
    ),
    ("report of no store", lambda t: ["report", str(t / "nowhere")], "not a hivemind store"),
    ("unknown executor", lambda t: ["run", _spec(t, GOOD_SPEC), "--store", str(t / "st"), "--executor", "x"], "x"),
]


@pytest.mark.parametrize("build,words", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_gets_one_line_and_exit_code_2(
    tmp_path: Path, build: Callable[[Path], list[str]], words: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hivemind.cli", *build(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    said = " ".join(out.stderr.replace("│", " ").split())  # typer's usage errors come boxed
    assert words in said, out.stderr
