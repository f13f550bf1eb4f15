"""Where everything lives in a store directory, and the one way files are written there.

A store is a directory: the journal and the embedding cache at its top, one folder per study
(samples, sampling summary, analysis tables, report, import logs), uploaded query sets and
scan reports beside them. `StoreLayout` is the only place those names are spelled out;
`hivemind.store.journal.Store` owns one (`store.layout`), the doors and the pipeline ask it for paths,
and `spec.STORE_ENTRIES` (names a study may not take) is derived from it.

The REST service serves these files while they are being rewritten, so every one of them is
written through `atomic_write`: a reader sees the old file or the whole new one, never half.
This module imports nothing of hivemind's, so every other module may use it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JOURNAL = "hivemind.sqlite"
EMBEDDING_CACHE = "embeddings.sqlite"
QUERY_SETS = "query-sets"
SCANS = "scans"
SERVICE_LOCK = "service.lock"
SERVICE_TOKEN = "service.token"
TMP = ".tmp"

# inside STORE/<study>/
SAMPLES = "samples.parquet"
SAMPLING_SUMMARY = "sampling.json"
ANALYSIS = "analysis"
SUMMARY = "summary.json"
REPORT = "report.html"
IMPORTS = "imports"

LOGS = "logs"

TOP_LEVEL_ENTRIES = frozenset({JOURNAL, EMBEDDING_CACHE, QUERY_SETS, SCANS, SERVICE_LOCK, SERVICE_TOKEN, LOGS})
"""The store's own names at its top level, where each study has its folder (`.tmp` cannot be a name)."""


@dataclass(frozen=True)
class StoreLayout:
    """Every path of one store directory (nothing is created or read here)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- top level -----------------------------------------------------------------------
    @property
    def journal(self) -> Path:
        """The SQLite journal (WAL): studies, samples, jobs, scans."""
        return self.root / JOURNAL

    @property
    def embedding_cache(self) -> Path:
        """Embeddings keyed by (embedder id, sha256(text))."""
        return self.root / EMBEDDING_CACHE

    @property
    def query_sets(self) -> Path:
        """Uploaded query sets (`NAME.jsonl`)."""
        return self.root / QUERY_SETS

    def query_set(self, name: str) -> Path:
        return self.query_sets / f"{name}.jsonl"

    def scan_report(self, scan: str) -> Path:
        """A scan's history as HTML."""
        return self.root / SCANS / scan / REPORT

    @property
    def service_lock(self) -> Path:
        """Held by the one service that runs this store's jobs."""
        return self.root / SERVICE_LOCK

    @property
    def service_token(self) -> Path:
        """The service's generated bearer token (mode 0600)."""
        return self.root / SERVICE_TOKEN

    @property
    def logs(self) -> Path:
        """What local engines print (llama.cpp's load lines), one file per engine, unless --verbose."""
        return self.root / LOGS

    @property
    def tmp(self) -> Path:
        """Scratch files served once and removed (e.g. a samples export on request)."""
        return self.root / TMP

    def exists(self) -> bool:
        """Whether a store is here (reading commands create none)."""
        return self.journal.is_file()

    # --- per study -----------------------------------------------------------------------
    def study(self, study: str) -> Path:
        return self.root / study

    def samples(self, study: str) -> Path:
        """The study's samples exported from the journal (Parquet)."""
        return self.study(study) / SAMPLES

    def sampling_summary(self, study: str) -> Path:
        """What the last sampling run did (`StudyRun.summary()`)."""
        return self.study(study) / SAMPLING_SUMMARY

    def analysis(self, study: str) -> Path:
        """The analysis tables (`<table>.parquet`) and `summary.json`."""
        return self.study(study) / ANALYSIS

    def summary(self, study: str) -> Path:
        return self.analysis(study) / SUMMARY

    def table(self, study: str, table: str) -> Path:
        return self.analysis(study) / f"{table}.parquet"

    def report(self, study: str) -> Path:
        return self.study(study) / REPORT

    def imports(self, study: str) -> Path:
        """One JSON log per imported response file."""
        return self.study(study) / IMPORTS


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write `path` atomically: `write(tmp)` fills a temporary file in the same directory,
    which `os.replace` then puts in place (a rename on one file system: readers see the old
    file or the new one). On error the temporary file is removed and `path` is untouched.
    Missing parent folders are made.

    The temporary name is hidden and ends in `.tmp`, so a `*.parquet` glob never picks it up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # created by `write`: usual mode
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
