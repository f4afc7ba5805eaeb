"""Request headers read straight from an ASGI scope, for the pure ASGI middleware."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["first_header"]


def first_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lowercase, as ASGI servers give names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
