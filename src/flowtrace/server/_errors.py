"""Error answers in the contract's shapes, and their OpenAPI descriptions.

Every failure a client can cause gets `{"detail": ...}` with the contract's status: 422 with a
list naming each wrong field and why; 400 for malformed JSON (FastAPI would say 422); the
store's refusals (404, 409, 503 with Retry-After when the database is busy) with the
store's message. Anything else is a server fault:
logged, reported to the internal-error guard, and answered 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowtrace import _guard
from flowtrace.store import StoreBusy, StoreError

from ._content_type import checks_content_type

__all__ = [
    "ErrorResponse",
    "UnexpectedErrorMiddleware",
    "ValidationErrorResponse",
    "document_refusals",
    "error_responses",
    "install_error_handlers",
    "store_error_response",
    "unexpected_error_response",
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
    503: "The database is busy (other writers, a lock held too long): retry after Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses (422 is always documented)."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}
        for status in statuses
    }
    documented[422] = {"model": ValidationErrorResponse, "description": "Invalid field"}
    return documented


#: What the middleware refuses before any route runs, as OpenAPI responses of `ErrorResponse`.
_REFUSALS = {
    "403": "Refused without API keys: a Host that is not this machine, or a foreign Origin",
    "415": "A write whose body is not declared JSON",
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


def document_refusals(
    schema: dict[str, Any], *, keyless: bool, prefix: str, exempt: frozenset[str]
) -> None:
    """Add the middleware's refusals to an OpenAPI document, in place (FastAPI documents only
    what the routes declare): 403 on every operation of a server without keys (`_keyless_guard`),
    415 on every write with a body under `prefix`, but for the `exempt` paths
    (`_content_type`)."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            statuses = ["403"] if keyless else []
            checked = checks_content_type(method.upper(), path, prefix, exempt)
            if checked and "requestBody" in operation:
                statuses.append("415")
            for status in statuses:
                responses.setdefault(
                    status,
                    {
                        "description": _REFUSALS[status],
                        "content": {"application/json": {"schema": _ERROR_REF}},
                    },
                )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
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


_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the app's OpenAPI document gives the resource at `path` (empty when it
    documents none). Starlette's 405 names only the first route whose path matched, though two
    routes may share a path (GET and POST /flows). As OpenAPI says, a concrete path outranks a
    template: /flows/log is POST only, though /flows/{flow_id} would match it too."""
    paths: dict[str, Any] = app.openapi().get("paths", {})  # built once, then cached
    matching = [template for template in paths if compile_path(template)[0].fullmatch(path)]
    concrete = [template for template in matching if "{" not in template]
    methods: set[str] = set()
    for template in concrete or matching:
        methods.update(key for key in paths[template] if key in _METHODS)
    return [method.upper() for method in _METHODS if method in methods]


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        methods = allowed_methods(request.app, request.url.path)
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
    return await http_exception_handler(request, exc)


def _on_store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    return store_error_response(exc)


def store_error_response(exc: StoreError) -> JSONResponse:
    """The refusal's status and detail; a busy database (503) says when to retry (the
    client's retry policy honours Retry-After)."""
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, StoreBusy) else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


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
            response = unexpected_error_response(scope, exc)
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await response(scope, receive, send)


def unexpected_error_response(scope: Scope, exc: Exception) -> JSONResponse:
    """A server fault, logged and reported to the internal-error guard; its 500 answer, which
    says nothing of the internals."""
    method, path = scope.get("method", ""), scope.get("path", "")
    logger.error("unhandled error in %s %s", method, path, exc_info=exc)
    _guard.internal_error("server.unhandled", exc, "unhandled error answering a request")
    return JSONResponse({"detail": "internal server error"}, status_code=500)
