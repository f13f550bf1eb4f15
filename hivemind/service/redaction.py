"""Secrets kept out of responses and logs.

The values of the bearer token and of key-like environment variables are scrubbed from error
texts and log records, so neither a response, a job's error nor a log line can carry them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable

SECRET_ENV_PATTERN = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
"""Environment variables whose values are treated as secrets by the redactor."""
MIN_SECRET_LENGTH = 6
REDACTED = "***"


class Redactor:
    """Replaces known secret values in text with `***`."""

    def __init__(self, secrets: Iterable[str | None] = (), *, scan_environment: bool = True) -> None:
        found = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        if scan_environment:
            found |= {
                value
                for name, value in os.environ.items()
                if SECRET_ENV_PATTERN.search(name) and len(value) >= MIN_SECRET_LENGTH
            }
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = sorted(found, key=len, reverse=True)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values scrubbed (handed to the service's worker processes, never logged)."""
        return tuple(self._secrets)

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
