"""The store's refusals, typed by what went wrong.

`StoreNotFound`, `StoreConflict`, `StoreInvalid`: a request the contract refuses, each with the
contract's status (`status_code`: the batch extension answers it per operation) and `detail`
(a message, or the 422 list of {loc, msg, type}). `StoreBusy`: the database could not take the
write now (locked past the busy timeout, conflicts that outlived their retries, the database
unreachable): nothing was written; retry after `retry_after_s`. `StoreSchemaError`: the
database cannot be used at all (a newer flowtrace's, or not flowtrace's);
`StoreUnavailable`: it cannot be reached to open it.

The server maps each type to its HTTP answer (server/_errors.py): 404, 409, 422, 503 with
Retry-After.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RetryTransaction",
    "StoreBusy",
    "StoreConflict",
    "StoreError",
    "StoreInvalid",
    "StoreNotFound",
    "StoreSchemaError",
    "StoreUnavailable",
    "conflict",
    "invalid",
    "not_found",
]


class StoreError(Exception):
    """A request the store refuses. `status_code`: the contract's status for it; `detail`: the
    body's "detail". The store raises the subclasses below."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.status_code = status_code
        self.detail = detail


class StoreNotFound(StoreError):
    """An unknown flow, version, environment or log."""

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(404, detail)


class StoreConflict(StoreError):
    """The request contradicts what is stored: a completed parent, a reopened log, a log id
    replayed with another body, a path of another kind of file."""

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(409, detail)


class StoreInvalid(StoreError):
    """A semantic validation failure, in the FastAPI 422 shape so clients parse one format."""

    def __init__(self, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(422, detail)


class StoreBusy(StoreError):
    """The write could not be done now; nothing was written. Retry after `retry_after_s`."""

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(503, detail)
        self.retry_after_s = retry_after_s


class StoreSchemaError(RuntimeError):
    """The database cannot be used: written by a newer flowtrace, or not flowtrace's."""


class StoreUnavailable(RuntimeError):
    """The database cannot be reached to open it (a server down, a wrong URL or password)."""


class RetryTransaction(Exception):
    """Inside the store only: the transaction met another one (a deadlock, a serialization
    failure, a row another transaction inserted meanwhile) and was rolled back; running it
    again from the start sees what the other one committed."""


def not_found(message: str) -> StoreNotFound:
    return StoreNotFound(message)


def conflict(message: str) -> StoreConflict:
    return StoreConflict(message)


def invalid(loc: list[str | int], message: str, kind: str = "value_error") -> StoreInvalid:
    return StoreInvalid([{"loc": loc, "msg": message, "type": kind}])
