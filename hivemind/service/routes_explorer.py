"""The explorer over REST: the query list and one query's responses, and the page itself.

`GET /v1/studies/{name}/queries` pages through the queries with their figures (sortable,
filterable as the page's list); `GET /v1/studies/{name}/queries/{query_id}` gives one query's
responses, classes, nearest cross-deployment neighbours, near-duplicate pairs and map
coordinates. Both read the explorer's data files (`hivemind.report.explorer`), written by the
report step. `explorer.html` and its data files are served beside the report, at the paths
the page asks for (`/v1/studies/{name}/explorer/...`), behind the same bearer token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse, HTMLResponse

from hivemind.inputs.spec import NAME_PATTERN
from hivemind.report.explorer import DATA, INDEX, PAGE, read_data, shard_name
from hivemind.service.context import ApiError, Service, clean, get_service

router = APIRouter()
Svc = Annotated[Service, Depends(get_service)]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=200)]
ERRORS: dict[int | str, dict[str, Any]] = {c: {"description": "error naming the field"} for c in (401, 404, 409, 422)}
SORTS = ("order", "intra", "inter", "gap", "n_dup", "n_responses", "category", "text")


def _folder(svc: Service, name: str) -> Path:
    status = svc.status_of(name)  # 404 for an unknown study
    folder = svc.store.layout.study(name) / DATA
    if not (folder / INDEX).is_file():
        raise ApiError(409, "path.name", f"study {name!r} has no explorer yet (state: {status['state']})")
    return folder


def _index(svc: Service, name: str) -> dict[str, Any]:
    data: dict[str, Any] = read_data(_folder(svc, name) / INDEX)
    return data


def _key(row: dict[str, Any], sort: str, condition: str) -> Any:
    if sort in ("intra", "inter", "gap"):
        figures = row["figures"].get(condition) or [None, None, None]
        return figures[("intra", "inter", "gap").index(sort)]
    if sort == "order":
        return row["n"]
    return row.get(sort)


@router.get("/v1/studies/{name}/queries", responses=ERRORS, tags=["results"])
def queries(
    svc: Svc,
    name: Name,
    offset: Annotated[int, QueryParam(ge=0, le=2**31)] = 0,
    limit: Annotated[int, QueryParam(ge=1)] = 50,
    sort: Literal["order", "intra", "inter", "gap", "n_dup", "n_responses", "category", "text"] = "order",
    order: Literal["asc", "desc"] = "asc",
    deployment: Annotated[str | None, QueryParam(max_length=200)] = None,
    condition: Annotated[str | None, QueryParam(max_length=200)] = None,
    category: Annotated[str | None, QueryParam(max_length=200)] = None,
    search: Annotated[str | None, QueryParam(max_length=500)] = None,
) -> dict[str, Any]:
    """A page of the study's queries, each with its figures (intra, inter, gap per condition),
    near-duplicate count, deployments and conditions; `sort` by one of them (the figures of
    `condition`, default the baseline), filtered as the explorer's list is."""
    if limit > svc.limits.max_page_size:
        raise ApiError(422, "query.limit", f"at most {svc.limits.max_page_size} per page")
    index = _index(svc, name)
    if deployment is not None and deployment not in index["deployments"]:
        raise ApiError(422, "query.deployment", f"no deployment {deployment!r} in study {name!r}")
    if condition is not None and condition not in index["conditions"]:
        raise ApiError(422, "query.condition", f"no condition {condition!r} in study {name!r}")
    shown = condition or index.get("baseline") or (index["conditions"] or [""])[0]
    term = (search or "").lower()
    rows = [
        r
        for r in index["queries"]
        if (deployment is None or deployment in r["deployments"])
        and (condition is None or condition in r["conditions"])
        and (category is None or r["category"] == category)
        and (not term or term in f"{r['text']} {r['id']} {r['category']}".lower())
    ]
    present = [r for r in rows if _key(r, sort, shown) is not None]
    missing = [r for r in rows if _key(r, sort, shown) is None]  # always last
    present.sort(key=lambda r: _key(r, sort, shown), reverse=order == "desc")
    rows = present + missing
    total = len(rows)
    items = [{k: v for k, v in r.items() if k != "n"} for r in rows[offset : offset + limit]]
    return clean(
        {
            "study": name,
            "offset": offset,
            "limit": limit,
            "total": total,
            "sort": sort,
            "order": order,
            "condition": shown,
            "items": items,
            "next_offset": offset + limit if offset + limit < total else None,
        }
    )


@router.get("/v1/studies/{name}/queries/{query_id}", responses=ERRORS, tags=["results"])
def query(svc: Svc, name: Name, query_id: Annotated[str, PathParam(max_length=500)]) -> dict[str, Any]:
    """One query: its prompt, every analysed response (deployment, condition, sample index,
    text, hivemind class, imported class, nearest response of another deployment with its
    cosine, map coordinates), its near-duplicate pairs and per deployment-pair similarities."""
    index = _index(svc, name)
    row = next((r for r in index["queries"] if r["id"] == query_id), None)
    if row is None:
        raise ApiError(404, "path.query_id", f"no query {query_id!r} in study {name!r}")
    data = read_data(_folder(svc, name) / shard_name(row["n"]))
    deployments, conditions = index["deployments"], index["conditions"]
    responses = data["responses"]
    by_row = {r["r"]: r for r in responses}
    out = [
        {
            "row": r["r"],
            "deployment": deployments[r["d"]],
            "condition": conditions[r["c"]],
            "sample_index": r["s"],
            "text": r["t"],
            "class": r["k"],
            "imported_class": r.get("x"),
            "nearest": (
                {
                    "row": r["nn"],
                    "deployment": deployments[by_row[r["nn"]]["d"]],
                    "sample_index": by_row[r["nn"]]["s"],
                    "cosine": r.get("nc"),
                }
                if r.get("nn") in by_row
                else None
            ),
            "xy": r.get("xy"),
        }
        for r in responses
    ]
    pairs = [{"row_a": responses[a]["r"], "row_b": responses[b]["r"], "cosine": c} for a, b, c in data["pairs"]]
    sims = [
        {"condition": conditions[c], "deployment_a": deployments[a], "deployment_b": deployments[b], "similarity": s}
        for c, a, b, s in data["sims"]
    ]
    return clean(
        {
            "study": name,
            "query_id": data["id"],
            "text": data["text"],
            "category": data["category"],
            "figures": row["figures"],
            "threshold": index["threshold"],
            "responses": out,
            "near_duplicates": pairs,
            "near_duplicates_total": data["n_pairs"],
            "similarities": sims,
            "map": "2-D PCA of the query's embeddings, scaled to [-1, 1]" if data["mapped"] else None,
        }
    )


def _file(svc: Service, name: str, path: Path, media: str) -> FileResponse:
    if not path.is_file():
        raise ApiError(404, "path", "no such explorer file")
    return FileResponse(path, media_type=media)


@router.get(f"/v1/studies/{{name}}/{PAGE}", response_class=HTMLResponse, responses=ERRORS, tags=["results"])
def explorer_page(svc: Svc, name: Name) -> FileResponse:
    """The study's explorer page (it loads its data from `explorer/` beside it)."""
    _folder(svc, name)
    return _file(svc, name, svc.store.layout.study(name) / PAGE, "text/html")


@router.get("/v1/studies/{name}/report.html", response_class=HTMLResponse, responses=ERRORS, tags=["results"])
def report_page(svc: Svc, name: Name) -> FileResponse:
    """The report under its file name, the explorer's link back to it."""
    svc.status_of(name)
    return _file(svc, name, svc.store.layout.report(name), "text/html")


@router.get(f"/v1/studies/{{name}}/{DATA}/{INDEX}", responses=ERRORS, tags=["results"])
def explorer_index(svc: Svc, name: Name) -> FileResponse:
    return _file(svc, name, _folder(svc, name) / INDEX, "text/javascript")


@router.get(f"/v1/studies/{{name}}/{DATA}/q/{{n}}.js", responses=ERRORS, tags=["results"])
def explorer_query(svc: Svc, name: Name, n: Annotated[int, PathParam(ge=0, le=2**31)]) -> FileResponse:
    return _file(svc, name, _folder(svc, name) / shard_name(n), "text/javascript")
