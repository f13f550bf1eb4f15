"""hivemind installs as a wheel: built from this checkout, installed into a fresh virtual
environment outside it, and used from another directory (zoo, init, a mock study, an import).

Installing every dependency anew would take many minutes, so the fresh environment gets the
wheel alone (`--no-deps`) and sees the shared environment's packages through a `.pth` line.
That line adds the directory without processing its own `.pth` files, so the shared editable
install of hivemind cannot shadow the wheel; the test checks `hivemind.__file__` to be sure.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "hivemind-store*", "runs"
)

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(bin directory of a fresh venv with the wheel installed, environment to run it in)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=IGNORE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(root / "dist"),
            str(source),
        ],
        root,
        env,
    )
    wheels = list((root / "dist").glob("hivemind_study-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
        for data in (
            "open-ended-v1.jsonl",
            "verifiable-v1.jsonl",
            "noveltybench-curated.jsonl",
            "NOVELTYBENCH-LICENSE",
            "noveltybench-gpt4o/gpt-4o.jsonl",
            "noveltybench-gpt4o/humans.jsonl",
            "noveltybench-gpt4o/LICENSE",
            "README.md",
            "providers.yaml",
        ):
            assert f"hivemind/data/{data}" in names, data
        # the checkout's link to ./providers.yaml went into the wheel as the file itself
        assert archive.read("hivemind/data/providers.yaml") == (REPO / "providers.yaml").read_bytes()

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheels[0]),
        ],
        root,
        env,
    )
    purelib = _run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env
    ).stdout.strip()
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "shared_deps.pth").write_text("\n".join(shared) + "\n")
    return venv / "bin", env


def test_wheel_runs_outside_the_checkout(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    bin_dir, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    located = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "import hivemind, hivemind.inputs.queries as q; print(hivemind.__file__); print(q.SHIPPED_DIR)",
        ],
        work,
        env,
    ).stdout.split()
    for path in located:  # the wheel's copy, not the checkout's nor the shared editable install
        assert Path(path).is_relative_to(bin_dir.parent), located
        assert not Path(path).is_relative_to(REPO)

    zoo = _run([str(bin_dir / "hivemind"), "zoo", "list"], work, env).stdout
    assert "mock-a" in zoo and "smollm2-135m-instruct" in zoo

    _run([str(bin_dir / "hivemind"), "init"], work, env)
    assert (work / "providers.yaml").read_text() == (REPO / "providers.yaml").read_text()
    assert "query_set: open-ended-v1" in (work / "study.yaml").read_text()
    ran = _run([str(bin_dir / "hivemind"), "run", "study.yaml", "--store", "store", "--no-progress"], work, env)
    assert (work / "store" / "my-first-study" / "report.html").is_file(), ran.stderr
    assert "sampled 40 now" in ran.stderr

    gens = work / "gens.jsonl"
    gens.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"curated-{i}",
                    "prompt": "p",
                    "model": "released/model",
                    "generations": [f"answer {j} to {i}" for j in range(3)],
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    imported = _run(
        [
            str(bin_dir / "hivemind"),
            "import",
            str(gens),
            "--study",
            "released",
            "--store",
            "store",
            "--query-set",
            "noveltybench-curated",
        ],
        work,
        env,
    )
    assert "imported 15 of 15 responses" in imported.stderr
    status = _run([str(bin_dir / "hivemind"), "status", "--store", "store"], work, env).stdout
    assert "released-model" in status and "my-first-study" in status
