"""`FlowtraceMiddleware`: an ASGI middleware that continues the caller's trace in each request.

    app.add_middleware(FlowtraceMiddleware)            # FastAPI / Starlette
    app = FlowtraceMiddleware(app, trusted=is_internal)  # any ASGI app

Every flow a request runs becomes a child of the calling service's log, as
`flowtrace.continue_trace(headers)` makes it; a request without (valid) trace headers runs as
it would without the middleware. Pure ASGI: no framework is imported, the request and the
response pass through untouched, and only `traceparent` and `tracestate` are read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flowtrace._accounting import Warnings
from flowtrace._remote import continue_trace
from flowtrace._w3c import TRACEPARENT, TRACESTATE

__all__ = ["FlowtraceMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NAMES = (TRACEPARENT.encode(), TRACESTATE.encode())
_warnings = Warnings()
#: Header lines looked at per request (a server bounds them too; this bounds our own work).
MAX_HEADERS_READ = 256


class FlowtraceMiddleware:
    """Continue the caller's trace (W3C `traceparent`, flowtrace's `tracestate` member) for the
    duration of each HTTP or WebSocket request.

    `trusted`: link to the caller's log (True), only note its ids in metadata (False), or
    decide per request from the ASGI scope (a callable, e.g. by the client's address). Behind
    a public endpoint anyone can send these headers: a caller that knows a log id could hang
    its logs under it."""

    def __init__(self, app: ASGIApp, *, trusted: bool | Callable[[Scope], bool] = True) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with continue_trace(_trace_headers(scope), trusted=self._trusts(scope)):
            await self.app(scope, receive, send)

    def _trusts(self, scope: Scope) -> bool:
        trusted = self.trusted
        if not callable(trusted):
            return bool(trusted)
        try:
            return bool(trusted(scope))
        except Exception as exc:  # the user's predicate failed: its request is not trusted
            _warnings.once(
                "asgi-trusted",
                "flowtrace: FlowtraceMiddleware's trusted() raised %r; such requests continue "
                "the caller's trace untrusted (its ids noted, not linked)",
                exc,
            )
            return False


def _trace_headers(scope: Scope) -> list[tuple[str, str]] | None:
    found: list[tuple[str, str]] = []
    try:
        headers = scope.get("headers") or ()
        for index, (name, value) in enumerate(headers):
            if index >= MAX_HEADERS_READ:
                break
            lowered = name.lower()
            if lowered in _NAMES:
                found.append((lowered.decode("latin-1"), value.decode("latin-1")))
    except (TypeError, ValueError, AttributeError):  # not ASGI's (bytes, bytes) pairs
        return None
    return found
