"""The REST door onto the pipeline: `create_app(store_dir, ...)` returns the FastAPI app.

Handlers (`routes.py`) only validate, read and write rows; studies run on `JobManager` workers
through the pipeline (`run_pipeline_async`), the same steps the CLI runs. Every 4xx names the field at fault (`body.deployments[1]`, `query.limit`,
`path.name`); a 500 says nothing but "internal server error" and logs a redacted line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from hivemind import __version__
from hivemind.inputs.zoo import default_zoo_path, load_zoo
from hivemind.scans.scan import load_scans, make_scheduler
from hivemind.service import schemas as S
from hivemind.service.auth import (
    WILDCARD_HOSTS,
    BearerAuthMiddleware,
    BodyLimitMiddleware,
    HostOriginMiddleware,
    allowed_host_names,
    check_bind,
    resolve_token,
)
from hivemind.service.context import ApiError, Service, ServiceLimits, field_path
from hivemind.service.redaction import Redactor, install_log_redaction
from hivemind.service.routes import router
from hivemind.service.routes_explorer import router as explorer_router
from hivemind.service.routes_import import router as import_router
from hivemind.service.workers import JobManager
from hivemind.store.journal import Store

__all__ = ["ApiError", "ServiceLimits", "create_app"]
log = logging.getLogger("hivemind.service")


def _error(status: int, items: list[tuple[str, str]], headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "detail": "; ".join(f"{f}: {m}" for f, m in items),
        "errors": [{"field": f, "message": m} for f, m in items],
    }
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(
    store_dir: str | Path,
    zoo_path: str | Path | None = None,
    token_env: str = "HIVEMIND_TOKEN",
    limits: ServiceLimits | None = None,
    *,
    scans_path: str | Path | None = None,
    workers: int = 2,
    run_jobs: bool = True,
    scheduler: bool = True,
    scheduler_interval_s: float = 30.0,
    auth: bool = True,
    host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
    embedders: Sequence[str] | None = None,
) -> FastAPI:
    """The service over `store_dir`, to be served on `host`.

    The bearer token is read once from the variable `token_env`; without one the store's own
    token is used, made on first start (`STORE/service.token`, mode 0600; `app.state.token` and
    `app.state.token_source` say which). `auth=False` serves without a token and is refused
    (`BindError`) unless `host` is loopback. Requests must name `host` (or a loopback name, or
    one of `allowed_hosts`) in their Host header, and carry no foreign Origin. Studies may use
    only the `embedders` listed (default: the shipped MiniLM), the first being the default: names
    of the zoo's `embedders:` entries (remote endpoints), else sentence-transformers models.
    Job workers start with the app and resume whatever was queued or running when it last
    stopped; with `scheduler`, due scans are queued every `scheduler_interval_s` seconds.
    """
    from hivemind.vectors.embed import DEFAULT_MODEL

    store_dir = Path(store_dir).resolve()
    zoo_file = Path(zoo_path).resolve() if zoo_path is not None else default_zoo_path().resolve()
    limits = limits or ServiceLimits()
    embedder_names = tuple(dict.fromkeys(e.strip() for e in (embedders or [DEFAULT_MODEL]) if e.strip()))
    if not embedder_names:
        raise ValueError("embedders: at least one embedder name is needed")
    if not auth:
        check_bind(host, None)
    zoo = load_zoo(zoo_file)  # fail fast (a bad `embedders:` entry too)
    key_names = [d.api_key_env for d in zoo.deployments if d.api_key_env]
    key_names += [e.api_key_env for e in zoo.embedders if e.api_key_env]
    token, token_source = resolve_token(store_dir, token_env, auth)  # the first write to the store
    with contextlib.suppress(OSError):  # the store is the operator's alone (its files: `hivemind serve`'s umask)
        store_dir.chmod(0o700)
    redact = Redactor([token, *(os.environ.get(name) for name in key_names)])
    install_log_redaction(redact)
    scans = Path(scans_path) if scans_path is not None else None
    ticker = (
        make_scheduler(lambda: load_scans(zoo_file, scans, store_dir), max_samples=limits.max_samples_per_study)
        if scheduler
        else None
    )
    manager = JobManager(
        store_dir, max_active=workers, redact=redact, scheduler=ticker, scheduler_interval_s=scheduler_interval_s
    )
    service = Service(store_dir, zoo_file, scans, limits, manager, Store(store_dir), redact, embedder_names)

    app = FastAPI(
        title="hivemind",
        version=__version__,
        lifespan=_lifespan(service, redact, run_jobs),
        description="Measure how alike language models answer open-ended queries. "
        "Every path but /healthz needs `Authorization: Bearer <token>`.",
    )
    app.state.service = service
    app.state.token, app.state.token_source = token, token_source
    _add_routes(app, manager)
    _add_middleware(app, limits, token, host, allowed_hosts)
    _add_error_handlers(app, service)
    _add_openapi(app)
    return app


def _lifespan(
    service: Service, redact: Redactor, run_jobs: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the job workers with the app (unless `run_jobs` is off); stop them and close the store after."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        install_log_redaction(redact)  # again, in case logging was set up anew since (a no-op if not)
        if run_jobs:
            service.manager.start()
        try:
            yield
        finally:
            service.manager.stop()
            service.store.close()

    return lifespan


def _add_routes(app: FastAPI, manager: JobManager) -> None:
    """The `/v1` endpoints, and `/healthz` (which needs no token)."""
    app.include_router(router)
    app.include_router(import_router)  # POST /v1/studies/import (hivemind.imports.importer)
    app.include_router(explorer_router)  # the explorer's queries, query and files (report step's data)

    @app.get("/healthz", response_model=S.Health, tags=["service"])
    async def healthz() -> dict[str, Any]:
        """Liveness (no token needed)."""
        return {"status": "ok", "version": __version__, "workers_alive": manager.alive}


def _add_middleware(
    app: FastAPI, limits: ServiceLimits, token: str | None, host: str, allowed_hosts: Iterable[str]
) -> None:
    """Body limits, then the token, then Host/Origin checks (the last added runs first)."""
    app.add_middleware(
        BodyLimitMiddleware,
        limit=limits.max_body_bytes,
        overrides={
            "/v1/query-sets": limits.max_upload_bytes,
            "/v1/query-sets/upload": limits.max_upload_bytes,
            "/v1/studies/import": limits.max_upload_bytes,
        },
    )
    app.add_middleware(BearerAuthMiddleware, token=token)  # nothing runs unauthenticated
    app.add_middleware(
        HostOriginMiddleware,
        hosts=allowed_host_names(host, allowed_hosts),  # outermost
        any_ip=host.strip().strip("[]") in WILDCARD_HOSTS,
    )


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    """Every 4xx names its field (`ErrorResponse`); a 500 says nothing but logs a redacted line."""
    redact = service.redact

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        items = []
        for e in exc.errors():
            loc = list(e.get("loc", ()))
            if e.get("type") == "json_invalid":
                items.append(("body", f"invalid JSON: {e.get('ctx', {}).get('error', 'cannot parse')}"))
                continue
            if loc[:1] == ["header"] and len(loc) > 1:
                loc[1] = "-".join(w.capitalize() for w in str(loc[1]).split("-"))
            items.append((field_path(loc), service.public(redact(str(e.get("msg", "invalid"))))))
        return _error(422, items or [("body", "invalid request")])

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        field = getattr(exc, "field", None) or ("path" if exc.status_code in (404, 405) else "request")
        message = getattr(exc, "message", None) or str(exc.detail)
        if exc.status_code == 400 and field == "request" and "parsing the body" in message:
            # FastAPI's answer to a body json.loads could not take (nested past the recursion limit)
            return _error(422, [("body", "invalid JSON: cannot parse (nested too deeply?)")])
        return _error(
            exc.status_code, [(field, service.public(redact(message)))], headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(exc).__name__, redact(str(exc)))
        return JSONResponse({"detail": "internal server error", "errors": []}, status_code=500)


def _add_openapi(app: FastAPI) -> None:
    """The OpenAPI schema, with the bearer scheme on every path but `/healthz`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            schema["paths"]["/healthz"]["get"]["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
