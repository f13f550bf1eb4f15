"""hivemind: measure how alike different language models answer open-ended queries.

Public API (imported lazily so `import hivemind` stays light):

    from hivemind import StudySpec, run_study
    run = run_study(StudySpec(name="demo", query_set="open-ended-v1",
                              deployments=["smollm2-135m-instruct"], samples=4), "runs/demo")

Responses you already have: `import_responses("gens.jsonl", "nb", "runs")` turns a file into a
study; `analyze(frame)` embeds and analyses a DataFrame (query, deployment, text columns).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Condition": "hivemind.inputs.spec",
    "Deployment": "hivemind.inputs.spec",
    "Query": "hivemind.inputs.spec",
    "QuerySet": "hivemind.inputs.spec",
    "SamplingParams": "hivemind.inputs.spec",
    "StudySpec": "hivemind.inputs.spec",
    "load_zoo": "hivemind.inputs.zoo",
    "load_query_set": "hivemind.inputs.queries",
    "load_spec": "hivemind.study",
    "run_study": "hivemind.study",
    "sample_study": "hivemind.study",
    "Store": "hivemind.store.journal",
    "Provider": "hivemind.providers.base",
    "register": "hivemind.providers.base",
    "run_pipeline": "hivemind.pipeline",
    "analyze_store": "hivemind.pipeline",
    "write_report": "hivemind.pipeline",
    "import_responses": "hivemind.imports.importer",
    "analyze": "hivemind.frames",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hivemind' has no attribute {name!r}")
