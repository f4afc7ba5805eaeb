"""The store's refusals: a `StoreError` carries the HTTP status the server answers with."""

from __future__ import annotations

from typing import Any

__all__ = ["StoreError", "StoreSchemaError", "conflict", "invalid", "not_found"]


class StoreError(Exception):
    """A request the contract refuses. `status_code` is the HTTP status the server answers;
    `detail` is the body's "detail" (a message, or the 422 list of {loc, msg, type})."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.status_code = status_code
        self.detail = detail


class StoreSchemaError(RuntimeError):
    """The database file cannot be used: written by a newer flowtrace, or not flowtrace's."""


def not_found(message: str) -> StoreError:
    return StoreError(404, message)


def conflict(message: str) -> StoreError:
    return StoreError(409, message)


def invalid(loc: list[str | int], message: str, kind: str = "value_error") -> StoreError:
    """A semantic validation failure, in the FastAPI 422 shape so clients parse one format."""
    return StoreError(422, [{"loc": loc, "msg": message, "type": kind}])
