"""What the service's handlers share: limits, errors, and the reads and writes behind endpoints."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from hivemind.inputs.queries import list_shipped, load_query_set
from hivemind.inputs.spec import QuerySet, json_safe, sha256_hex, store_name_problem
from hivemind.inputs.zoo import ZooError, load_zoo
from hivemind.inputs.zoo import field_path as _field_path
from hivemind.layout import StoreLayout, atomic_write_text
from hivemind.scans.scan import ScanBook, ScanError, ScanSpec, load_scans, next_fire
from hivemind.service.workers import JobManager
from hivemind.store.jobs import ACTIVE, Conflict
from hivemind.store.journal import Store, StoreError


@dataclass
class ServiceLimits:
    """Bounds on what one request may ask of the service."""

    max_upload_bytes: int = 10 * 2**20
    """Query-set uploads (JSON or file)."""
    max_body_bytes: int = 2**20
    """Every other request body."""
    max_queries_per_set: int = 20_000
    """Queries in one uploaded set."""
    max_samples_per_study: int = 200_000
    """Planned samples of one study (queries x deployments x conditions x samples)."""
    max_page_size: int = 1000
    """Largest page of near-duplicate pairs."""
    max_decoded_bytes: int = 64 * 2**20
    """Uncompressed size an uploaded Parquet file may decode to (read from its metadata first)."""


class ApiError(HTTPException):
    """A 4xx naming the field at fault."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(status, f"{field}: {message}")
        self.field, self.message = field, message


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", "deployments", 1)` -> `body.deployments[1]`; the body itself is `body`."""
    return _field_path(loc) or "body"


clean = json_safe
"""JSON-safe responses: non-finite floats become null."""

_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~-])(?:/[\w.@+~-]+)+/([\w.@+~-]+)")
"""An absolute POSIX path of two or more parts inside free text (not a URL's path: those follow
a host, which this look-behind excludes)."""


async def get_service(request: Request) -> Service:
    """FastAPI dependency: the app's `Service` (async: FastAPI would run a plain one in a thread)."""
    return request.app.state.service


@dataclass
class Service:
    """The store, the job runner and the configuration one app serves."""

    store_dir: Path
    zoo_file: Path
    scans_path: Path | None
    limits: ServiceLimits
    manager: JobManager
    store: Store
    redact: Callable[[str], str]
    embedders: tuple[str, ...]
    """The embedders studies may use; the first is the default."""

    @property
    def db(self) -> Any:
        return self.manager.db

    @property
    def query_set_dir(self) -> Path:
        return StoreLayout(self.store_dir).query_sets

    def public(self, value: Any) -> Any:
        """`value` (JSON: text, lists, mappings) with no absolute server path, for a response.

        Paths in the store become store-relative (`query-sets/x.jsonl`, the store itself `.`), the
        zoo and scans files their file names, and any other absolute path its last part.
        """
        if isinstance(value, dict):
            return {k: self.public(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.public(v) for v in value]
        if not isinstance(value, str) or "/" not in value and "\\" not in value:
            return value
        known = [
            (str(self.store_dir) + os.sep, ""),
            (str(self.store_dir), "."),
            (str(self.zoo_file), self.zoo_file.name),
        ]
        if self.scans_path is not None:
            scans = Path(self.scans_path).resolve()
            known.append((str(scans), scans.name))
        for prefix, replacement in known:
            value = value.replace(prefix, replacement)
        return _PATH_IN_TEXT.sub(r"\1", value)

    def embedder(self, asked: str | None, field: str) -> str:
        """`asked` when the server offers it (None: the default); else a 422 naming `field`.

        Only the operator's list: a client-given path or hub id would make the server read
        (and hash) files of its choosing, or download a model.
        """
        if asked is None:
            return self.embedders[0]
        if asked not in self.embedders:
            raise ApiError(
                422,
                field,
                f"not an embedder this server offers (it offers: "
                f"{', '.join(self.embedders)}; the operator adds more with --embedder)",
            )
        return asked

    # --- query sets ----------------------------------------------------------------------
    @staticmethod
    def set_info(qs: QuerySet, source: str, row: dict[str, Any] | None = None) -> dict[str, Any]:
        cats: dict[str, int] = {}
        for q in qs.queries:
            cats[q.category] = cats.get(q.category, 0) + 1
        return {
            "name": qs.name,
            "source": source,
            "description": qs.description,
            "n_queries": len(qs.queries),
            "categories": cats,
            "sha256": row and row["sha256"],
            "created_at": row and row["created_at"],
        }

    def load_set(self, name: str, field: str) -> tuple[QuerySet, str, dict[str, Any] | None]:
        """An uploaded or shipped set by name; 404 (path) or 422 (body) naming `field` if unknown."""
        row = self.db.query_set(name)
        if row is not None:
            return (
                load_query_set(row["path"], name=name).model_copy(update={"description": row["description"]}),
                "uploaded",
                row,
            )
        if name in list_shipped():
            return load_query_set(name), "shipped", None
        known = ", ".join(list_shipped() + [r["name"] for r in self.db.query_sets()])
        raise ApiError(404 if field.startswith("path") else 422, field, f"unknown query set {name!r} (known: {known})")

    def save_set(self, qs: QuerySet, field: str) -> tuple[dict[str, Any], bool]:
        """Write `STORE/query-sets/NAME.jsonl` and its row together; (info, created)."""
        problem = store_name_problem(qs.name)
        if problem:
            raise ApiError(422, field, problem)
        if qs.name in list_shipped():
            raise ApiError(409, field, f"{qs.name!r} is a shipped query set; choose another name")
        limit = self.limits.max_queries_per_set
        if len(qs.queries) > limit:
            raise ApiError(422, "body.queries", f"{len(qs.queries)} queries: the limit is {limit} queries per set")
        # ASCII-escaped: a raw U+2028 or U+0085 in a text would split a line for str.splitlines()
        content = "".join(json.dumps(q.model_dump(), ensure_ascii=True, sort_keys=True) + "\n" for q in qs.queries)
        path = StoreLayout(self.store_dir).query_set(qs.name)
        row = {
            "name": qs.name,
            "path": str(path),
            "description": qs.description,
            "n_queries": len(qs.queries),
            "categories_json": "{}",
            "sha256": sha256_hex(content),
            "created_at": time.time(),
        }

        def write() -> None:
            atomic_write_text(path, content)  # a reader sees the old file or the whole new one

        try:
            created = self.db.add_query_set(row, write)
        except Conflict as exc:
            raise ApiError(409, field, exc.message) from None
        return self.set_info(qs, "uploaded", self.db.query_set(qs.name)), created

    # --- studies -------------------------------------------------------------------------
    def check_deployments(self, deployments: list[str]) -> None:
        """Every name is in the zoo, once, with its key variable set (names only, no values)."""
        try:
            zoo = load_zoo(self.zoo_file)
        except ZooError as exc:
            raise ApiError(503, "zoo", str(exc)) from None
        names = {d.name: d for d in zoo.deployments}
        for i, d in enumerate(deployments):
            if d not in names:
                raise ApiError(
                    422, f"body.deployments[{i}]", f"unknown deployment {d!r} (the zoo has: {', '.join(names)})"
                )
            if deployments.index(d) != i:
                raise ApiError(422, f"body.deployments[{i}]", f"deployment {d!r} appears twice")
            var = names[d].api_key_env
            if var and not os.environ.get(var):
                raise ApiError(
                    422,
                    f"body.deployments[{i}]",
                    f"deployment {d!r} needs the environment variable {var}, which is not set on the server",
                )

    def status_of(self, name: str) -> dict[str, Any]:
        """A study's state and per-deployment counts (404 naming `path.name` if unknown)."""
        job = self.db.job(name)
        external = None
        if job is None:
            try:
                external = (self.store.study_spec(name), self.store.query_count(name))
            except StoreError:
                raise ApiError(404, "path.name", f"no study named {name!r}") from None
        return self._status(name, job, external, self.store.progress(name))

    def study_list(self) -> list[dict[str, Any]]:
        """`status_of` every study: the service's jobs (oldest first), then the store's others.

        A fixed handful of indexed queries whatever the number of studies (none per study)."""
        jobs = self.db.jobs()
        progress = self.store.progress_all()
        out = [self._status(job["study"], job, None, progress.get(job["study"], {})) for job in jobs]
        seen = {job["study"] for job in jobs}
        for name, external in self.store.study_overview().items():
            if name not in seen:
                out.append(self._status(name, None, external, progress.get(name, {})))
        return out

    def _status(
        self,
        name: str,
        job: dict[str, Any] | None,
        external: tuple[Any, int] | None,
        counts: dict[str, dict[str, int]],
    ) -> dict[str, Any]:
        """The status of a study from its job row (or, not the service's, its spec and query
        count) and its sample counts."""
        if job is not None:
            planned: dict[str, int] = json.loads(job["planned_json"])
            out = {k: job[k] for k in ("state", "created_at", "started_at", "finished_at")}
            out |= self.public({k: job[k] for k in ("error", "note")})
            out |= {
                "kind": job["kind"],
                "request": self.public(json.loads(job["request_json"])),
                "cancel_requested": bool(job["cancel_requested"]) and job["state"] in ACTIVE,
            }
        else:
            assert external is not None
            spec, n_queries = external
            per = n_queries * len(spec.effective_conditions()) * spec.samples
            planned = {d: per for d in spec.deployments}
            out = {"state": "external", "kind": "external", "cancel_requested": False}
        progress = {}
        for d in list(planned) + [d for d in counts if d not in planned]:
            ok, failed = counts.get(d, {}).get("ok", 0), counts.get(d, {}).get("failed", 0)
            progress[d] = {
                "planned": planned.get(d, 0),
                "ok": ok,
                "failed": failed,
                "pending": max(planned.get(d, 0) - ok - failed, 0),
            }
        total = {k: sum(p[k] for p in progress.values()) for k in ("planned", "ok", "failed", "pending")}
        base = f"/v1/studies/{name}"
        links = {
            "self": base,
            "results": f"{base}/results",
            "tables": f"{base}/tables",
            "near_duplicates": f"{base}/near-duplicates",
            "report": f"{base}/report",
            "cancel": f"{base}/cancel",
        }
        return {"name": name, **out, "progress": progress, "total": total, "links": links}

    # --- scans ---------------------------------------------------------------------------
    def scans_book(self) -> ScanBook:
        try:
            return load_scans(self.zoo_file, self.scans_path, self.store_dir)
        except ScanError as exc:
            raise ApiError(503, "scans", str(exc)) from None

    def scan_info(self, scan: ScanSpec) -> dict[str, Any]:
        runs = self.db.scan_runs(scan.name)
        keys = ("id", "study", "state", "started_at", "finished_at")
        return {
            "name": scan.name,
            "schedule": scan.schedule,
            "deployments": scan.deployments,
            "query_set": self.public(scan.query_set),
            "samples": scan.samples,
            "enabled": scan.enabled,
            "next_run": next_fire(scan.schedule, time.time()) if scan.enabled else None,
            "last_run": {k: runs[-1][k] for k in keys} if runs else None,
        }
