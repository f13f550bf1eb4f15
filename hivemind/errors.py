"""The one base of hivemind's own errors: `HivemindError`, with the input field at fault.

`field` is a dotted path into what the user wrote (`categories`, `deployments[1]`,
`query_set`), or None when no single field is to blame. Doors map it without reading the
message: the REST service prefixes it with where the input came from (`body.categories`), the
CLI prints the message (which names the field already).
"""

from __future__ import annotations


class HivemindError(Exception):
    """A problem hivemind explains to its user; `field` names the input at fault, if one is."""

    field: str | None = None

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:  # a subclass may have set its own `field` before calling this
            self.field = field
