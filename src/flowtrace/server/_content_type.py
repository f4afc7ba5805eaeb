"""415 for a write whose body is not declared JSON: a web page cannot write unasked.

A page on any site may send this server a POST without a preflight as long as it looks like a
form: `fetch(url, {mode: "no-cors", body})` or `navigator.sendBeacon(url, body)` send
`text/plain`, a form sends `application/x-www-form-urlencoded` or `multipart/form-data`, and
none of them can send `application/json` cross-origin without the browser asking the server
first (which it never allows). So a body is read as JSON only when it says it is:
`application/json` or `application/<...>+json`, parameters such as `charset` allowed. Every
other body on a write under `/v5` (POST, PUT, PATCH, DELETE) is answered 415 before it is read.

A write without a body passes: there is nothing to misread, and the Humanloop SDK sends its
DELETE `/logs?id=...` and its deploy (`?version_id=`) without a body or a Content-Type.
`_keyless_guard` turns foreign origins away as well; this rule holds with keys too.

The OTLP ingest routes own their content types (protobuf or JSON, and the Humanloop SDK's
OTLP export sends none at all), so they are exempt by path (`_otlp.OTLP_PATHS`, passed in).
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ._headers import first_header
from ._json import is_json_media_type

__all__ = ["JsonContentTypeMiddleware", "checks_content_type", "content_type_refusal"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JsonContentTypeMiddleware:
    def __init__(self, app: ASGIApp, *, prefix: str, exempt_paths: frozenset[str]) -> None:
        self.app = app
        self._prefix = prefix
        self._exempt = exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_checked_write(scope):
            await self.app(scope, receive, send)
            return
        refusal = content_type_refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": refusal}, status_code=415)(scope, receive, send)

    def _is_checked_write(self, scope: Scope) -> bool:
        return checks_content_type(scope["method"], scope["path"], self._prefix, self._exempt)


def checks_content_type(method: str, path: str, prefix: str, exempt: frozenset[str]) -> bool:
    """Whether a request's body must be declared JSON: a write under `prefix`, but to the
    `exempt` paths (which read bodies of their own kinds)."""
    return (
        method in WRITE_METHODS
        and (path == prefix or path.startswith(prefix + "/"))
        and path not in exempt
    )


def content_type_refusal(scope: Scope) -> str | None:
    """Why a checked write's body is refused (the 415's detail), or None: JSON, or no body."""
    declared = first_header(scope, b"content-type")
    content_type = declared.decode("latin-1") if declared is not None else None
    if (content_type is not None and is_json_media_type(content_type)) or not _has_body(scope):
        return None
    got = "none was sent" if content_type is None else f"got {content_type!r}"
    return f"Content-Type must be application/json ({got})"


def _has_body(scope: Scope) -> bool:
    if first_header(scope, b"transfer-encoding") is not None:
        return True
    length = first_header(scope, b"content-length")
    if length is None:
        return False
    try:
        return int(length) > 0
    except ValueError:  # the HTTP parser refuses these; if one got here, it is no JSON body
        return True
