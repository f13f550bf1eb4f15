"""Every bad input on the command line gets one line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, missing

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


def _cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-m", "hivemind.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs
    )


# Linux capabilities that let root write through file permissions (capability.h).
_ROOT_OVERRIDES = (1, 2, 3, 9)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_LINUX_IMMUTABLE
_PR_CAPBSET_DROP = 24


def _without_root_overrides() -> None:
    """In the child before exec: drop the overrides from the bounding set, so the CLI, though
    uid 0, meets file permissions as their owner does (a no-op for other users)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _ROOT_OVERRIDES:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _can_drop_root_overrides() -> bool:
    try:
        return subprocess.run(["true"], preexec_fn=_without_root_overrides, check=False).returncode == 0
    except subprocess.SubprocessError:
        return False


def _samples(store: Path) -> int:
    import sqlite3

    with sqlite3.connect(store / "hivemind.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])


def _one_clean_line(out: subprocess.CompletedProcess[str], words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], out.stderr


def test_a_store_that_refuses_writes_gets_one_line_and_keeps_its_samples(tmp_path: Path) -> None:
    """A store directory the user may not write (read-only permissions; a root user runs the CLI
    without the capabilities that override them): one line, exit 2; the samples already there
    stay, and once writable again the rerun completes the study."""
    if os.geteuid() == 0 and not _can_drop_root_overrides():
        missing("dropping root's permission-override capabilities (prctl PR_CAPBSET_DROP) is refused here")
    store = tmp_path / "st"
    spec = _spec(tmp_path, GOOD_SPEC.replace("samples: 1", "samples: 3").replace("max_queries: 1", "max_queries: 4"))
    assert _cli(["run", spec, "--store", str(store), "--no-analyze"]).returncode == 0
    assert _samples(store) == 12
    bigger = _spec(tmp_path, Path(spec).read_text().replace("samples: 3", "samples: 6"), "bigger.yaml")
    for p in [store, *store.iterdir()]:
        p.chmod(0o500 if p.is_dir() else 0o400)
    try:
        refused = _cli(["run", bigger, "--store", str(store), "--no-analyze"], preexec_fn=_without_root_overrides)
        _one_clean_line(refused, "store")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(store)], check=True)
    assert _samples(store) == 12
    done = _cli(["run", bigger, "--store", str(store), "--no-analyze"])
    assert done.returncode == 0, done.stderr
    assert _samples(store) == 24


def test_a_store_on_a_full_disk_gets_one_line_and_keeps_its_samples(tmp_path: Path) -> None:
    """The journal stops growing mid-study (a file-size limit stands in for a full disk: the
    same refused write): one line, exit 2; every sample committed before stays, and the rerun
    without the limit completes the study with each sample once."""
    import resource
    import signal

    spec = _spec(
        tmp_path,
        GOOD_SPEC.replace("samples: 1", "samples: 50")
        .replace("max_queries: 1", "max_queries: 20")
        .replace("[mock-a]", "[mock-a, mock-b]"),
    )
    store = tmp_path / "st"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    _one_clean_line(_cli(["run", spec, "--store", str(store), "--no-analyze"], preexec_fn=limit_file_size), "journal")
    kept = _samples(store)
    assert 0 < kept < 2000
    done = _cli(["run", spec, "--store", str(store), "--no-analyze"])
    assert done.returncode == 0, done.stderr
    assert f"{2000 - kept} now, {kept} already in the store" in " ".join((done.stdout + done.stderr).split())
    assert _samples(store) == 2000
