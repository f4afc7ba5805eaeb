"""Error answers in the contract's shapes, and their OpenAPI descriptions.

Every failure a client can cause gets `{"detail": ...}` with the contract's status: 422 with a
list naming each wrong field and why; 400 for malformed JSON (FastAPI would say 422); the
store's refusals (404, 409, ...) with the store's message. Anything else is a server fault:
logged, reported to the internal-error guard, and answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowtrace import _guard
from flowtrace.store import StoreError

__all__ = [
    "ErrorResponse",
    "UnexpectedErrorMiddleware",
    "ValidationErrorResponse",
    "error_responses",
    "install_error_handlers",
    "store_error_response",
    "validation_error_response",
]

logger = logging.getLogger("flowtrace.server")


class ErrorResponse(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    detail: list[FieldError]


_DESCRIPTIONS = {
    400: "Malformed JSON",
    401: "Missing or wrong X-API-KEY",
    404: "Unknown flow, version, environment or log",
    409: "Illegal state: completed parent, or a log id replayed with a different body",
    413: "Request body too large",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses (422 is always documented)."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
    documented[422] = {"model": ValidationErrorResponse, "description": "Invalid field"}
    return documented


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StoreError, _on_store_error)
    app.add_middleware(UnexpectedErrorMiddleware)


def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())


def validation_error_response(errors: Sequence[Any]) -> JSONResponse:
    """400 for malformed JSON, else 422 naming each field: from FastAPI-shaped errors."""
    malformed = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if malformed is not None:
        reason = (malformed.get("ctx") or {}).get("error") or malformed.get("msg", "")
        return JSONResponse({"detail": f"Malformed JSON: {reason}"}, status_code=400)
    detail = [_field_error(error) for error in errors]
    return JSONResponse({"detail": detail}, status_code=422)


def _field_error(error: Any) -> dict[str, Any]:
    # Only loc/msg/type: echoing `input` back could return megabytes of the client's body.
    loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


def _on_store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    return store_error_response(exc)


def store_error_response(exc: StoreError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


class UnexpectedErrorMiddleware:
    """Answers 500 for an exception nothing else handled, and ends it there.

    An `Exception` handler would do, except that Starlette re-raises after calling it, and
    uvicorn then drops the keep-alive connection; a client's next request on it would fail.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            method, path = scope.get("method", ""), scope.get("path", "")
            logger.error("unhandled error in %s %s", method, path, exc_info=exc)
            _guard.internal_error("server.unhandled", exc, "unhandled error answering a request")
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)
