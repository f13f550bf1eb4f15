"""`POST /v1/studies/import`: a file of responses someone already has becomes a study.

The file travels in the JSON body (text for JSONL/CSV/TSV/JSON, base64 for Parquet) and goes
through `hivemind.imports.importer.import_responses`, as `hivemind import` does; a bad file answers 422
naming the file, line and field, and leaves the store as it was.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from hivemind.imports.importer import Columns, ImportFileError, ImportLimits, import_responses
from hivemind.inputs.queries import SUFFIXES, QueryFileError, list_shipped
from hivemind.inputs.spec import NAME_PATTERN, store_name_problem
from hivemind.service.context import ApiError, Service, clean, get_service
from hivemind.store.jobs import ACTIVE
from hivemind.store.journal import StoreError

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {c: {"description": "error naming the field"} for c in (401, 409, 413, 422)}


class ImportRequest(BaseModel):
    """A response file and where it goes."""

    model_config = ConfigDict(extra="forbid")
    study: str = Field(pattern=NAME_PATTERN, max_length=200)
    """Study to create, or to add the imported deployments to (matched on its queries)."""
    filename: str = Field(min_length=1, max_length=255)
    """The file's name: its extension says the format (.jsonl, .csv, .tsv, .json, .parquet)."""
    content: str | None = None
    """The file as text (JSONL, CSV, TSV, JSON)."""
    content_base64: str | None = None
    """The file as base64 (Parquet, or any of the others)."""
    columns: Columns = Field(default_factory=Columns)
    deployment: str | None = Field(None, pattern=NAME_PATTERN, max_length=200)
    """One deployment name for a file without a model column."""
    query_set: str | None = Field(None, pattern=NAME_PATTERN, max_length=200)
    """For a new study: a shipped or uploaded query set (a name, never a path) to match rows against."""
    condition: str | None = Field(None, pattern=NAME_PATTERN, max_length=200)
    """The condition the responses belong to; added to the study when it lacks it."""
    reference: bool = False
    """The file's deployments are reference arms (human answers), not models under test."""
    on_unmatched: Literal["error", "skip", "add"] = "error"
    replace: bool = False
    analyze: bool = False
    """Analyse the study and write its report before answering (can take a while)."""


def _named_set(svc: Service, name: str | None) -> str | None:
    """What the importer loads for `name`: an uploaded set's stored file, or a shipped set's name.

    Names only: a path (or a name that is no set) is a 422 with the same message whether or not
    such a file exists, so the service reads nothing outside its store and tells nothing of it.
    """
    if name is None:
        return None
    row = svc.db.query_set(name)
    if row is not None:
        return str(svc.store.layout.query_set(name))
    if name in list_shipped():
        return name
    known = ", ".join(list_shipped() + [r["name"] for r in svc.db.query_sets()])
    raise ApiError(422, "body.query_set", f"unknown query set {name!r} (known: {known})")


@router.post("/v1/studies/import", status_code=201, responses=ERRORS, tags=["studies"])
async def import_study(svc: Annotated[Service, Depends(get_service)], body: ImportRequest) -> dict[str, Any]:
    """Import a response file into a study; the answer says what matched and what did not."""
    name = Path(body.filename).name
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8")) > 200:
        raise ApiError(422, "body.filename", "a plain file name: no control characters, at most 200 bytes")
    problem = store_name_problem(body.study)
    if problem:
        raise ApiError(422, "body.study", problem)
    if Path(name).suffix.lower() not in SUFFIXES:
        raise ApiError(422, "body.filename", f"unknown file extension (accepted: {', '.join(SUFFIXES)})")
    if (body.content is None) == (body.content_base64 is None):
        raise ApiError(422, "body.content", "send exactly one of content and content_base64")
    try:
        data = (
            body.content.encode("utf-8")
            if body.content is not None
            else base64.b64decode(body.content_base64 or "", validate=True)
        )
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "body.content_base64", f"not base64: {exc}") from None
    query_set = _named_set(svc, body.query_set)
    job = svc.db.job(body.study)
    if job is not None and job["state"] in ACTIVE:
        raise ApiError(409, "body.study", f"study {body.study!r} is {job['state']}; import when it is done")

    lim = svc.limits
    held = sum(c["ok"] + c["failed"] for c in svc.store.progress(body.study).values())
    limits = ImportLimits(
        max_rows=lim.max_samples_per_study,
        max_decoded_bytes=lim.max_decoded_bytes,
        max_samples=lim.max_samples_per_study,
        max_queries=lim.max_queries_per_set,
        samples_held=0 if body.replace else held,
    )

    def work() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="hivemind-import-") as folder:
            path = Path(folder) / name
            path.write_bytes(data)
            result = import_responses(
                path,
                body.study,
                svc.store,
                columns=body.columns,
                deployment=body.deployment,
                query_set=query_set,
                condition=body.condition,
                on_unmatched=body.on_unmatched,
                replace=body.replace,
                source_name=name,
                reference=body.reference,
                limits=limits,
            )
        out = result.summary()
        if body.analyze:
            from hivemind.pipeline import write_report

            write_report(svc.store_dir, body.study)
        return out

    try:
        summary = await run_in_threadpool(work)
    except (ImportFileError, QueryFileError) as exc:
        raise ApiError(422, "body.content", str(exc)) from None
    except StoreError as exc:
        raise ApiError(409, "body.study", str(exc)) from None
    summary["store"] = None  # the server's paths are not the client's business
    return clean({**summary, "status": svc.status_of(body.study)})
