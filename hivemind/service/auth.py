"""Bearer-token guard, loopback rule and redaction for the service.

The token comes from an environment variable named at start-up (default `HIVEMIND_TOKEN`); it
guards every path but `/healthz`, `/docs` and the schema included. Secrets (the token and the
values of key-like environment variables) are scrubbed from error texts and log records, so
neither a response, a job's error nor a log line can carry them.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = frozenset({"/healthz"})
"""Paths served without a token."""
SECRET_ENV_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
"""Environment variables whose values are treated as secrets by the redactor."""
MIN_SECRET_LENGTH = 6
REDACTED = "***"


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


def check_bind(host: str, token: str | None, token_env: str) -> None:
    """Refuse a non-loopback address unless a token is set (names the variable, never a value)."""
    if token is None and not is_loopback(host):
        raise BindError(
            f"refusing to listen on {host!r} without a token: set the environment variable "
            f"{token_env} (every endpoint but /healthz will then need 'Authorization: Bearer ...'), "
            "or listen on 127.0.0.1"
        )


class Redactor:
    """Replaces known secret values in text with `***`."""

    def __init__(self, secrets: Iterable[str | None] = (), *, scan_environment: bool = True) -> None:
        found = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        if scan_environment:
            found |= {
                value for name, value in os.environ.items()
                if SECRET_ENV_PATTERN.search(name) and len(value) >= MIN_SECRET_LENGTH
            }
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(found, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        """Also scrub `secret` from now on."""
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


_PLAIN = (int, float, bool, type(None))


def redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Scrub secrets from a record in place: its message, arguments, traceback and stack.

    Arguments are scrubbed one by one (formatters such as uvicorn's access log unpack them);
    only when the rendered message still carries a secret is it replaced by the clean text.
    A traceback quoting a secret is rendered, scrubbed and kept as text.
    """
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    if isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(a, redact) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _clean_arg(v, redact) for k, v in record.args.items()}
    try:
        message = record.getMessage()
    except Exception:  # a malformed record: leave it to logging's own error path
        message = None
    if message is not None and redact(message) != message:
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[1] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        clean = redact(text)
        if clean != text:  # never let a formatter render the raw exception
            record.exc_info, record.exc_text = None, clean
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _clean_arg(value: object, redact: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value
    try:
        text = str(value)
    except Exception:
        return value
    clean = redact(text)
    return value if clean == text else clean


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from each record it sees (see `redact_record`)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.redact)
        return True


_REDACTORS: tuple[weakref.ref[Redactor], ...] = ()
"""The live apps' redactors; replaced whole (never mutated) so loggers on any thread read it safely."""
_FACTORY_LOCK = threading.Lock()


def _redact_all(text: str) -> str:
    for ref in _REDACTORS:
        redactor = ref()
        if redactor is not None:
            text = redactor(text)
    return text


def install_log_redaction(redact: Redactor) -> None:
    """Scrub `redact`'s secrets from every log record the process creates from now on.

    A log-record factory, installed once per process (again only if something replaced it),
    cleans each record as it is made, so every logger and handler sees clean records: those of
    libraries (litellm, httpx), `logging.lastResort`, and handlers added later (uvicorn's own
    logging set-up). Each redactor stays active while its app is alive.
    """
    global _REDACTORS
    with _FACTORY_LOCK:
        live = [r for r in _REDACTORS if r() is not None and r() is not redact]
        _REDACTORS = (*live, weakref.ref(redact))
        current = logging.getLogRecordFactory()
        if getattr(current, "hivemind_redacting", False):
            return

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = current(*args, **kwargs)
            if _REDACTORS:
                redact_record(record, _redact_all)
            return record

        factory.hivemind_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(factory)


def _plain_response(status: int, body: bytes, extra: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra]
    return [{"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body}]


class BearerAuthMiddleware:
    """Pure ASGI guard: every HTTP path but the public ones needs `Authorization: Bearer TOKEN`.

    With no token configured (loopback-only development) every request passes.
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
        body = (b'{"detail":"' + message + b' (send Authorization: Bearer <token>)",'
                b'"errors":[{"field":"header.Authorization","message":"' + message + b'"}]}')
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
                    body = (f'{{"detail":"body: request of {declared} bytes exceeds the limit of '
                            f'{limit} bytes","errors":[{{"field":"body","message":"request of '
                            f'{declared} bytes exceeds the limit of {limit} bytes"}}]}}').encode()
                    for event in _plain_response(413, body, [(b"connection", b"close")]):
                        await send(event)
                    return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, "streamed request body")
            return message

        await self.app(scope, limited_receive, send)
