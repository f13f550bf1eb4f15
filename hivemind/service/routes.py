"""The `/v1` endpoints: query sets, studies, results and scans (thin: rows in, rows out)."""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Request, Response
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask

from hivemind.analysis.summary import SummaryError, read_summary
from hivemind.errors import HivemindError
from hivemind.inputs.queries import QueryFileError, TooManyRecords, list_shipped, load_query_set
from hivemind.inputs.spec import NAME_PATTERN, QuerySet, StudySpec, canonical_json, sha256_hex
from hivemind.inputs.zoo import judge_deployment
from hivemind.sampling.plan import plan_study
from hivemind.sampling.stage import planned_counts
from hivemind.scans.report import write_scan_report
from hivemind.scans.scan import ScanError, ScanSpec, queue_scan_run, scan_history
from hivemind.service import schemas as S
from hivemind.service.context import ApiError, Service, clean, field_path, get_service
from hivemind.store.jobs import ACTIVE, Conflict

router = APIRouter()
Svc = Annotated[Service, Depends(get_service)]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200)]
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": S.ErrorResponse} for c in (400, 401, 403, 404, 409, 413, 415, 422)
}
"""400: a Host the service does not answer to; 403: a foreign Origin (both before any handler)."""
FILE_TYPES = {
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/x-jsonlines": ".jsonl",
    "application/json": ".json",
}


@router.post("/v1/query-sets", response_model=S.QuerySetInfo, status_code=201, responses=ERRORS, tags=["query sets"])
def upload_json(svc: Svc, body: S.QuerySetUpload, response: Response) -> dict[str, Any]:
    """Save a query set sent as JSON. A retried identical upload answers 200."""
    seen: dict[str, int] = {}
    for i, q in enumerate(body.queries):
        if q.id in seen:
            raise ApiError(422, f"body.queries[{i}].id", f"duplicate id {q.id!r} (first at queries[{seen[q.id]}])")
        seen[q.id] = i
    info, created = svc.save_set(QuerySet(**body.model_dump()), "body.name")
    response.status_code = 201 if created else 200
    return info


upload_doc = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}, "name": {"type": "string"}},
                }
            },
        },
    }
}


@router.post(
    "/v1/query-sets/upload",
    response_model=S.QuerySetInfo,
    status_code=201,
    responses=ERRORS,
    openapi_extra=upload_doc,
    tags=["query sets"],
)
async def upload_file(
    svc: Svc,
    request: Request,
    response: Response,
    name: Annotated[str | None, QueryParam(pattern=NAME_PATTERN, max_length=100)] = None,
    description: Annotated[str, QueryParam(max_length=2000)] = "",
) -> dict[str, Any]:
    """Save a query set sent as a CSV/TSV/JSONL file: the raw body, or multipart field `file`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = await request.body()
    filename = None
    if ctype == "multipart/form-data":
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + data
        )
        parts = (
            {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
            if message.is_multipart()
            else {}
        )
        if "file" not in parts:
            raise ApiError(422, "body.file", "multipart body has no part named 'file'")
        filename = parts["file"].get_filename() or "upload"
        payload = parts["file"].get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name is None and "name" in parts:
            raw = parts["name"].get_payload(decode=True)
            name = (raw if isinstance(raw, bytes) else b"").decode("utf-8", "replace").strip()
            if len(name) > 100 or (name and re.fullmatch(NAME_PATTERN, name) is None):
                raise ApiError(
                    422, "body.name", f"not a valid set name (at most 100 of A-Z a-z 0-9 _ . -): {name[:40]!r}"
                )
        suffix = Path(filename).suffix.lower()
        ctype = next((c for c, s in FILE_TYPES.items() if s == suffix), "")
    if ctype not in FILE_TYPES:
        raise ApiError(
            415,
            "header.Content-Type",
            f"unsupported type {ctype or 'none'!r} (send {', '.join(FILE_TYPES)} or multipart/form-data with a 'file')",
        )
    name = name or (Path(filename).stem[:100] if filename else None)
    if not name:
        raise ApiError(422, "query.name", "a name is required for a file upload")
    limit = svc.limits.max_queries_per_set
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{FILE_TYPES[ctype]}"
        path.write_bytes(data)
        try:
            qs = load_query_set(path, name=name, max_queries=limit, max_decoded_bytes=svc.limits.max_decoded_bytes)
        except TooManyRecords:
            raise ApiError(422, "body", f"more than {limit} queries: the limit is {limit} queries per set") from None
        except QueryFileError as exc:
            raise ApiError(
                422,
                "query.name"
                if exc.field == "name"
                else f"body{'[' + exc.where + ']' if exc.where else ''}.{exc.field or 'file'}",
                str(exc),
            ) from None
    if description:
        qs = qs.model_copy(update={"description": description})
    info, created = svc.save_set(qs, "query.name")
    response.status_code = 201 if created else 200
    return info


@router.get("/v1/query-sets", response_model=S.QuerySetList, responses=ERRORS, tags=["query sets"])
def list_sets(svc: Svc) -> dict[str, Any]:
    """Shipped and uploaded query sets."""
    out = [svc.set_info(load_query_set(n), "shipped") for n in list_shipped()]
    for row in svc.db.query_sets():
        qs, source, row = svc.load_set(row["name"], "path.name")
        out.append(svc.set_info(qs, source, row))
    return {"query_sets": out}


@router.get("/v1/query-sets/{name}", response_model=S.QuerySetDetail, responses=ERRORS, tags=["query sets"])
def get_set(svc: Svc, name: Name) -> dict[str, Any]:
    """One query set with its queries."""
    qs, source, row = svc.load_set(name, "path.name")
    return svc.set_info(qs, source, row) | {"queries": [q.model_dump() for q in qs.queries]}


@router.post(
    "/v1/studies", response_model=S.StudyStatus | S.StudyPlan, status_code=202, responses=ERRORS, tags=["studies"]
)
def create_study(
    svc: Svc,
    body: S.StudyCreate,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)] = None,
) -> dict[str, Any]:
    """Queue a study; it samples in the background. Send an `Idempotency-Key` to retry safely.
    With `dry_run: true`, its plan instead (200): nothing is queued or written."""
    request_sha = sha256_hex(canonical_json(body.model_dump(mode="json")))
    svc.check_deployments(body.deployments)
    qs_row = svc.db.query_set(body.query_set)
    if qs_row is None and body.query_set not in list_shipped():
        svc.load_set(body.query_set, "body.query_set")  # raises, listing the known sets
    embedder = svc.embedder(body.embedder, "body.embedder")
    fields = body.model_dump(exclude={"analyze", "dry_run"})
    try:
        spec = StudySpec(
            **fields
            | {
                "query_set": qs_row["path"] if qs_row else body.query_set,
                "zoo": str(svc.zoo_file),
                "embedder": embedder,
            }
        )
        planned = planned_counts(spec)
        judge_deployment(spec)  # `analysis.classes.judge` names a deployment of the service's zoo
        plan = plan_study(spec, svc.store_dir) if body.dry_run else None
    except ValidationError as exc:
        raise ApiError(422, "body." + field_path(exc.errors()[0]["loc"]), exc.errors()[0]["msg"]) from None
    except QueryFileError as exc:
        raise ApiError(422, "body.query_set", str(exc)) from None
    except HivemindError as exc:  # StudyError: e.g. no query in the asked categories
        raise ApiError(422, f"body.{exc.field}" if exc.field else "body", svc.redact(str(exc))) from None
    except Exception as exc:  # anything else the resolution raises: the body as a whole
        raise ApiError(422, "body", svc.redact(str(exc))) from None
    total = sum(planned.values())
    if total > svc.limits.max_samples_per_study:
        raise ApiError(
            422, "body.samples", f"the study plans {total} samples; the limit is {svc.limits.max_samples_per_study}"
        )
    if plan is not None:
        response.status_code = 200
        return plan
    row = {
        "study": body.name,
        "kind": "study",
        "request_json": body.model_dump_json(),
        "spec_json": spec.model_dump_json(),
        "planned_json": json.dumps(planned),
        "analyze": int(body.analyze),
    }
    try:
        study, created = svc.db.create_job(row, idempotency_key=idempotency_key, request_sha256=request_sha)
    except Conflict as exc:
        where = exc.field or "body"
        raise ApiError(422 if where.startswith("header") else 409, where, exc.message) from None
    if created:
        svc.manager.submit(study)
    else:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return svc.status_of(study)


@router.get("/v1/studies", response_model=S.StudyList, responses=ERRORS, tags=["studies"])
async def list_studies(svc: Svc) -> dict[str, Any]:
    """Every study: those the service runs and those already in the store.

    On the event loop, not a thread: a handful of indexed reads on the loop's own read connection
    (WAL: never waiting on a writer) cost less than the hand-off to a thread under many clients."""
    return {"studies": svc.study_list()}


@router.get("/v1/studies/{name}", response_model=S.StudyStatus, responses=ERRORS, tags=["studies"])
async def get_study(svc: Svc, name: Name) -> dict[str, Any]:
    """A study's state and sample counts per deployment (on the event loop, as `list_studies`)."""
    return svc.status_of(name)


@router.post(
    "/v1/studies/{name}/cancel", response_model=S.StudyStatus, status_code=202, responses=ERRORS, tags=["studies"]
)
def cancel_study(svc: Svc, name: Name) -> dict[str, Any]:
    """Stop a study within seconds; what it sampled stays in the store."""
    state = svc.status_of(name)["state"]
    if state == "external":
        raise ApiError(409, "path.name", f"study {name!r} was not started by the service")
    if state not in ACTIVE:
        raise ApiError(409, "path.name", f"study {name!r} is already {state}")
    svc.manager.cancel(name)
    return svc.status_of(name)


@router.get("/v1/studies/{name}/results", response_model=S.StudyResults, responses=ERRORS, tags=["results"])
def results(svc: Svc, name: Name) -> dict[str, Any]:
    """The analysis summary (`analysis/summary.json`) and the sampling summary."""
    layout, status = (svc.store.layout, svc.status_of(name))
    if not layout.summary(name).is_file():
        raise ApiError(409, "path.name", f"study {name!r} has no analysis yet (state: {status['state']})")
    try:
        summary = read_summary(layout.summary(name)).to_json_dict()
    except SummaryError as exc:  # written by a newer hivemind, or damaged: re-analyse
        raise ApiError(409, "path.name", svc.public(str(exc))) from None
    sampling = layout.sampling_summary(name)
    return clean(
        svc.public(
            {
                "study": name,
                "state": status["state"],
                "summary": summary,
                "sampling": json.loads(sampling.read_text()) if sampling.is_file() else None,
            }
        )
    )


@router.get("/v1/studies/{name}/tables", response_model=S.TableList, responses=ERRORS, tags=["results"])
def tables(svc: Svc, name: Name) -> dict[str, Any]:
    """Parquet tables of a study: `samples`, then the analysis tables."""
    layout, _ = (svc.store.layout, svc.status_of(name))
    found: list[dict[str, Any]] = [{"name": "samples", "url": f"/v1/studies/{name}/tables/samples", "bytes": None}]
    for p in sorted(layout.analysis(name).glob("*.parquet")):
        if p.stem != "samples":
            found.append({"name": p.stem, "url": f"/v1/studies/{name}/tables/{p.stem}", "bytes": p.stat().st_size})
    return {"study": name, "tables": found}


@router.get("/v1/studies/{name}/tables/{table}", response_class=FileResponse, responses=ERRORS, tags=["results"])
def table(svc: Svc, name: Name, table: Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200)]) -> FileResponse:
    """Download one table as Parquet (`samples` is exported from the journal on request)."""
    layout, _ = (svc.store.layout, svc.status_of(name))
    stem = table.removesuffix(".parquet")
    media = "application/vnd.apache.parquet"
    if stem == "samples":
        tmp_dir = layout.tmp
        tmp_dir.mkdir(exist_ok=True)
        target = svc.store.export_parquet(name, tmp_dir / f"{name}.{uuid.uuid4().hex}.parquet")
        return FileResponse(
            target,
            media_type=media,
            filename=f"{name}-samples.parquet",
            background=BackgroundTask(target.unlink, missing_ok=True),
        )
    path = layout.table(name, stem)
    if not path.is_file():
        raise ApiError(404, "path.table", f"study {name!r} has no table {stem!r}")
    return FileResponse(path, media_type=media, filename=f"{name}-{stem}.parquet")


@router.get(
    "/v1/studies/{name}/near-duplicates", response_model=S.NearDuplicatePage, responses=ERRORS, tags=["results"]
)
def near_duplicates(
    svc: Svc,
    name: Name,
    offset: Annotated[int, QueryParam(ge=0, le=2**31)] = 0,
    limit: Annotated[int, QueryParam(ge=1)] = 50,
) -> dict[str, Any]:
    """Pairs of near-identical answers from different models, a page at a time (every pair
    the analysis found, most similar first)."""
    import polars as pl

    if limit > svc.limits.max_page_size:
        raise ApiError(422, "query.limit", f"at most {svc.limits.max_page_size} per page")
    layout, status = (svc.store.layout, svc.status_of(name))
    path = layout.table(name, "near_duplicates")
    if not path.is_file():
        raise ApiError(409, "path.name", f"study {name!r} has no near-duplicate table yet (state: {status['state']})")
    pairs = pl.scan_parquet(path)  # lazy: the count comes from the metadata, a page is read alone
    total = int(pairs.select(pl.len()).collect().item())
    items = pairs.slice(offset, limit).collect().to_dicts()
    found = _near_duplicates_found(layout.summary(name))
    nxt = offset + limit if offset + limit < total else None
    return clean(
        {
            "study": name,
            "offset": offset,
            "limit": limit,
            "total": total,
            "found": found,
            "truncated": found is not None and found > total,
            "items": items,
            "next_offset": nxt,
        }
    )


def _near_duplicates_found(path: Path) -> int | None:
    """How many near-duplicate pairs the analysis found, or None without a readable summary."""
    try:
        return read_summary(path).headline.near_duplicate_pairs
    except SummaryError:
        return None


@router.get("/v1/studies/{name}/report", response_class=HTMLResponse, responses=ERRORS, tags=["results"])
def report(svc: Svc, name: Name) -> HTMLResponse:
    """The study's HTML report."""
    path, status = (svc.store.layout.report(name), svc.status_of(name))
    if not path.is_file():
        raise ApiError(409, "path.name", f"study {name!r} has no report yet (state: {status['state']})")
    return _html(svc, path)


REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""A report is static HTML (inline styles, data-URI images, no script): a hostile text in it can
run nothing, load nothing and send nothing."""
_IMPORT_TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/hivemind-import-[^/\s\"'<>&]*/")


def _html(svc: Service, path: Path) -> HTMLResponse:
    """A report page without the server's paths (the store's, an import's temporary folder)."""
    text = _IMPORT_TMP.sub("", path.read_text(encoding="utf-8"))
    for prefix, replacement in (
        (str(svc.store_dir) + "/", ""),
        (str(svc.store_dir), "."),
        (str(svc.zoo_file), svc.zoo_file.name),
    ):
        text = text.replace(prefix, replacement)
    return HTMLResponse(text, headers=REPORT_HEADERS)


# --- scans ---------------------------------------------------------------------------
@router.get("/v1/scans", response_model=S.ScanList, responses=ERRORS, tags=["scans"])
def list_scans(svc: Svc) -> dict[str, Any]:
    """Declared scans (zoo file, scans file, and those created here)."""
    return {"scans": [svc.scan_info(s) for s in svc.scans_book().scans]}


@router.post("/v1/scans", response_model=S.ScanInfo, status_code=201, responses=ERRORS, tags=["scans"])
def create_scan(svc: Svc, body: Annotated[ScanSpec, Body()]) -> dict[str, Any]:
    """Declare a scheduled scan (kept in the store)."""
    if body.name in svc.scans_book().sources:
        raise ApiError(409, "body.name", f"a scan named {body.name!r} already exists")
    svc.check_deployments(body.deployments)
    svc.embedder(body.embedder, "body.embedder")
    if svc.db.query_set(body.query_set) is None and body.query_set not in list_shipped():
        svc.load_set(body.query_set, "body.query_set")  # raises, listing the known sets
    _check_scan_plan(svc, body)
    with svc.db.transaction() as conn:
        if conn.execute("SELECT 1 FROM service_scans WHERE name = ?", (body.name,)).fetchone():
            raise ApiError(409, "body.name", f"a scan named {body.name!r} already exists")
        conn.execute("INSERT INTO service_scans VALUES (?, ?, ?)", (body.name, body.model_dump_json(), time.time()))
    return svc.scan_info(body)


def _check_scan_plan(svc: Service, scan: ScanSpec) -> None:
    """A scan's runs obey the per-study sample limit: 422 naming `body.samples` before it is kept."""
    from hivemind.inputs.spec import SamplingPlan

    row = svc.db.query_set(scan.query_set)
    try:
        spec = StudySpec(
            **scan.model_dump(include=set(SamplingPlan.model_fields))
            | {"name": "scan-check", "zoo": str(svc.zoo_file), "query_set": row["path"] if row else scan.query_set}
        )
        total = sum(planned_counts(spec).values())
    except (ValidationError, HivemindError) as exc:
        raise ApiError(422, "body", svc.public(svc.redact(str(exc)))) from None
    limit = svc.limits.max_samples_per_study
    if total > limit:
        raise ApiError(422, "body.samples", f"each run of the scan plans {total} samples; the limit is {limit}")


@router.delete("/v1/scans/{name}", status_code=204, responses=ERRORS, tags=["scans"])
def delete_scan(svc: Svc, name: Name) -> Response:
    """Remove a scan created through the service (its history stays)."""
    source = svc.scans_book().sources.get(name)
    if source is None:
        raise ApiError(404, "path.name", f"no scan named {name!r}")
    if source != "service":
        raise ApiError(409, "path.name", f"scan {name!r} is declared in a file; edit the file")
    with svc.db.transaction() as conn:
        conn.execute("DELETE FROM service_scans WHERE name = ?", (name,))
    return Response(status_code=204)


@router.post("/v1/scans/{name}/run", response_model=S.ScanRunStarted, status_code=202, responses=ERRORS, tags=["scans"])
def run_scan_now(svc: Svc, name: Name) -> dict[str, Any]:
    """Queue one run of a scan now."""
    book = svc.scans_book()
    if name not in book.sources:
        raise ApiError(404, "path.name", f"no scan named {name!r}")
    if any(r["state"] == "running" for r in svc.db.scan_runs(name)):
        raise ApiError(409, "path.name", f"scan {name!r} has a run in progress")
    try:
        run_id, study = queue_scan_run(
            svc.db, book.get(name), book, svc.store_dir, max_samples=svc.limits.max_samples_per_study
        )
    except ScanError as exc:
        if exc.field == "samples":
            raise ApiError(422, "path.name", svc.public(svc.redact(str(exc)))) from None
        raise ApiError(409, "path.name", svc.redact(str(exc))) from None
    svc.manager.submit(study)
    return {"scan": name, "run_id": run_id, "study": study}


@router.get("/v1/scans/{name}/history", response_model=S.ScanHistory, responses=ERRORS, tags=["scans"])
def history(svc: Svc, name: Name) -> dict[str, Any]:
    """Finished runs with per-deployment similarity, CIs and drift flags."""
    if name not in svc.scans_book().sources and not svc.db.scan_runs(name):
        raise ApiError(404, "path.name", f"no scan named {name!r}")
    return clean(svc.public(scan_history(svc.db, name)))


@router.get("/v1/scans/{name}/report", response_class=HTMLResponse, responses=ERRORS, tags=["scans"])
def scan_report(svc: Svc, name: Name) -> HTMLResponse:
    """The scan history as an HTML page."""
    if not svc.db.scan_runs(name):
        raise ApiError(404, "path.name", f"scan {name!r} has no runs")
    return _html(svc, write_scan_report(svc.store_dir, name))
