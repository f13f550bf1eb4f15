"""Who may talk to the service: bearer token, Host and Origin checks, loopback rule, body limits.

Authentication is the default. The token comes from an environment variable named at start-up
(default `HIVEMIND_TOKEN`); without one, the service makes one and keeps it in the store
(`STORE/service.token`, readable by its owner only), so a restart keeps it. It guards every path
but `/healthz`. Only an explicit `--no-auth` serves without a token, and only on loopback.

A web page the user visits must not drive the service: a request whose `Host` is not the
service's own name (DNS rebinding) is refused with 400, and one whose `Origin` is another site
(a page's form or `fetch`, which needs no preflight for a plain POST) with 403.

Secrets are kept out of responses and logs by `hivemind.service.redaction`.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hivemind.layout import SERVICE_TOKEN
from hivemind.service.redaction import MIN_SECRET_LENGTH

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths served without a token."""
TOKEN_FILE = SERVICE_TOKEN
"""The generated token's file in the store (mode 0600)."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""Host names a loopback-bound service answers to."""
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class BindError(ValueError):
    """The service was asked to listen where it must not (non-loopback without a token)."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_env: str) -> str | None:
    """The bearer token from `token_env`, or None when unset or blank."""
    value = os.environ.get(token_env, "").strip()
    return value or None


def store_token(store_dir: str | Path) -> tuple[str, bool]:
    """The store's own token, made on first use: (token, created now).

    Written to a private temporary file (mode 0600 from the start) and linked into place, so no
    reader ever sees a partial token and two services starting at once agree on one. A file left
    readable by others is narrowed to 0600 before its token is used; an empty one is replaced.
    """
    path = Path(store_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        stored = path.read_text(encoding="utf-8").strip()
        if len(stored) >= MIN_SECRET_LENGTH:
            return stored, False
    token = secrets.token_urlsafe(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{TOKEN_FILE}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        if path.exists():  # empty or damaged
            os.replace(tmp, path)
            return token, True
        try:
            os.link(tmp, path)  # fails if another process made it meanwhile: then use theirs
        except FileExistsError:
            return path.read_text(encoding="utf-8").strip(), False
        return token, True
    finally:
        Path(tmp).unlink(missing_ok=True)


def resolve_token(store_dir: str | Path, token_env: str, auth: bool = True) -> tuple[str | None, str]:
    """The token the service requires and where it comes from: `env`, `store`, `created` or `none`."""
    if not auth:
        return None, "none"
    token = read_token(token_env)
    if token is not None:
        return token, "env"
    token, created = store_token(store_dir)
    return token, "created" if created else "store"


def check_bind(host: str, token: str | None) -> None:
    """Refuse serving without a token anywhere but on loopback."""
    if token is None and not is_loopback(host):
        raise BindError(
            f"refusing to serve without authentication on {host!r}: --no-auth works on loopback "
            "only (127.0.0.1, ::1, localhost); drop --no-auth to require a bearer token"
        )


def allowed_host_names(host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """Host names the service answers to (lower case, IPv6 without brackets); None allows any.

    The bound address itself, the loopback names for a loopback or wildcard bind, and `extra`
    (`--allowed-host`; `*` allows any, for a proxy that checks names itself). A wildcard bind
    (`0.0.0.0`, `::`) also answers to any IP literal (`HostOriginMiddleware`): DNS rebinding
    needs a name, and clients on the network reach such a service by its address.
    """
    names = {h.strip().lower().strip("[]") for h in extra if h.strip()}
    if "*" in names:
        return None
    bound = host.strip().lower().strip("[]")
    names.add(bound)
    if is_loopback(bound) or bound in WILDCARD_HOSTS:
        names.update(LOOPBACK_NAMES)
    return frozenset(names - {""})


def _split_host(value: str) -> tuple[str, int | None] | None:
    """`name:port` / `[v6]:port` -> (name lower case, port); None when malformed."""
    if any(c in value for c in "/\\@?# \t"):
        return None
    try:
        parts = urlsplit("//" + value.strip())
        return (parts.hostname or ""), parts.port
    except ValueError:
        return None


def _error_body(field: str, message: str) -> bytes:
    import json

    return json.dumps({"detail": f"{field}: {message}", "errors": [{"field": field, "message": message}]}).encode()


def _plain_response(status: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> list[dict]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    return [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class HostOriginMiddleware:
    """Pure ASGI guard against web pages: a foreign `Host` is a 400, a foreign `Origin` a 403.

    `hosts` are the names the service answers to (None: any). An `Origin` is the service's own
    when its host and port are the request's `Host`; anything else (another site, `null`) is
    refused, whatever the method, since a page's plain POST reaches the server without a preflight.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, *, any_ip: bool = False) -> None:
        self.app = app
        self.hosts = hosts
        self.any_ip = any_ip

    def _known(self, name: str) -> bool:
        if self.hosts is None or name in self.hosts:
            return True
        if not self.any_ip:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the service has no websockets
            await self.app(scope, receive, send)
            return
        seen: dict[str, list[str]] = {"host": [], "origin": []}
        for name, value in scope.get("headers", ()):
            if name in (b"host", b"origin"):
                seen[name.decode()].append(value.decode("latin-1"))
        if len(seen["origin"]) > 1:  # which one a browser or proxy honoured is unknowable
            await _refuse(send, 403, "header.Origin", "more than one Origin header")
            return
        headers = {k: v[0] for k, v in seen.items() if len(v) == 1}
        host = _split_host(headers.get("host", ""))
        if host is None or not host[0] or not self._known(host[0]):
            await _refuse(
                send,
                400,
                "header.Host",
                "this service does not answer to that host name (start it with --allowed-host NAME to add one)",
            )
            return
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host, scope.get("scheme", "http")):
            await _refuse(send, 403, "header.Origin", "requests from another origin (a web page) are refused")
            return
        await self.app(scope, receive, send)


def _same_origin(origin: str, host: tuple[str, int | None], scheme: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != scheme or scheme not in ("http", "https") or not parts.hostname:
        return False
    default = {"http": 80, "https": 443}
    origin_port = port if port is not None else default[parts.scheme]
    host_port = host[1] if host[1] is not None else default.get(scheme, 80)
    return parts.hostname == host[0] and origin_port == host_port


async def _refuse(send: Send, status: int, field: str, message: str) -> None:
    for event in _plain_response(status, _error_body(field, message), [(b"connection", b"close")]):
        await send(event)


class BearerAuthMiddleware:
    """Pure ASGI guard: every HTTP path but the public ones needs `Authorization: Bearer TOKEN`.

    With no token (`--no-auth`, loopback only) every request passes.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._token is None or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        supplied = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = credentials.strip()
                break
        if supplied and hmac.compare_digest(supplied, self._token):
            await self.app(scope, receive, send)
            return
        message = b"missing or invalid bearer token" if supplied else b"missing bearer token"
        body = (
            b'{"detail":"' + message + b' (send Authorization: Bearer <token>)",'
            b'"errors":[{"field":"header.Authorization","message":"' + message + b'"}]}'
        )
        for event in _plain_response(401, body, [(b"www-authenticate", b"Bearer")]):
            await send(event)


class BodyTooLarge(HTTPException):
    """A request body went over its limit while being read (a 413 naming the field `body`)."""

    def __init__(self, limit: int, what: str) -> None:
        super().__init__(413, f"body: {what} exceeds the limit of {limit} bytes")
        self.field = "body"


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes: at once from Content-Length, else while streaming.

    Paths in `overrides` get their own limit (uploads are larger than JSON requests).
    """

    def __init__(self, app: ASGIApp, limit: int, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.overrides.get(scope.get("path", ""), self.limit)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    body = (
                        f'{{"detail":"body: request of {declared} bytes exceeds the limit of '
                        f'{limit} bytes","errors":[{{"field":"body","message":"request of '
                        f'{declared} bytes exceeds the limit of {limit} bytes"}}]}}'
                    ).encode()
                    for event in _plain_response(413, body, [(b"connection", b"close")]):
                        await send(event)
                    return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, "streamed request body")
            return message

        await self.app(scope, limited_receive, send)
