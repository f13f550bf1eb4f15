"""One study, sampled: the Python door most callers start from (`run_study`).

`run_study` is `hivemind.pipeline.run_pipeline` with the sampling steps (sample, export); the
stage itself lives in `hivemind.sampling.stage`, whose names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hivemind.inputs.spec import StudySpec
from hivemind.pipeline import SAMPLING_STEPS, run_pipeline
from hivemind.sampling.stage import (
    DroppedParams,
    StudyError,
    StudyRun,
    check_params,
    load_spec,
    prepare_providers,
    resolve_study,
    sample_study,
)

if TYPE_CHECKING:
    from hivemind.executors import Executor

__all__ = [
    "DroppedParams",
    "StudyError",
    "StudyRun",
    "check_params",
    "load_spec",
    "prepare_providers",
    "resolve_study",
    "run_study",
    "sample_study",
]


def run_study(
    spec: StudySpec | str | Path,
    store_dir: str | Path,
    *,
    progress: bool = True,
    executor: str | Executor = "local",
    ray_address: str | None = None,
) -> StudyRun:
    """Sample a study into `store_dir` (resuming if it was interrupted), export Parquet and
    write `sampling.json`.

    `executor="ray"` samples through Ray actors: a local Ray instance, or the cluster at
    `ray_address`. An `Executor` instance is used as is (and left open for the caller).
    """
    study_spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    run = run_pipeline(
        study_spec, store_dir, steps=SAMPLING_STEPS, progress=progress, executor=executor, ray_address=ray_address
    )
    return run.study_run()
