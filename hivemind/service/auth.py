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
from collections.abc import Iterable

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


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from the rendered message of each record."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if self.redact(str(exc)) != str(exc):  # never print a traceback quoting a secret
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} ({type(exc).__name__}: {self.redact(str(exc))})"
        return True


LOGGER_NAMES = ("uvicorn", "uvicorn.error", "uvicorn.access", "hivemind", "hivemind.service", "fastapi")
"""Loggers whose own records are scrubbed (a logger's filters do not see its children's records)."""


def install_log_redaction(redact: Redactor) -> RedactingFilter:
    """Attach one redacting filter to the service's loggers and their handlers, and the root's."""
    log_filter = RedactingFilter(redact)
    for handler in logging.getLogger().handlers:
        if log_filter not in handler.filters:
            handler.addFilter(log_filter)
    for name in LOGGER_NAMES:
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)
        for handler in logger.handlers:
            if log_filter not in handler.filters:
                handler.addFilter(log_filter)
    return log_filter


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
