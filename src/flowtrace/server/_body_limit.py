"""413 for request bodies above a limit, whether declared (Content-Length) or streamed.

Pure ASGI: the body is read here, counted as it arrives, and handed to the app in one piece
(every route of this API reads its whole JSON body anyway, so buffering costs nothing extra).
A body over the limit is drained and discarded before the 413 goes out, so the client is never
cut off mid-upload and always gets to read the answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DISCONNECTED", "TOO_LARGE", "BodyLimitMiddleware", "read_limited", "too_large"]

TOO_LARGE = object()
DISCONNECTED = object()


class BodyLimitMiddleware:
    """`path_limits`: paths with a limit of their own (OTLP's is larger than the API's)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._path_limits.get(scope["path"], self.max_body_bytes)
        body = await read_limited(scope, receive, limit)
        if body is DISCONNECTED:  # the client went away mid-body: nobody to answer
            return
        if body is TOO_LARGE:
            await too_large(limit)(scope, receive, send)
            return
        assert isinstance(body, bytes)
        await self.app(scope, _replaying(body, receive), send)


async def read_limited(scope: Scope, receive: Receive, limit: int) -> bytes | object:
    """The whole body; `TOO_LARGE` (the rest drained) past the limit, declared or streamed;
    or `DISCONNECTED`."""
    declared = _content_length(scope)
    if declared is not None and declared > limit:
        return DISCONNECTED if await _drain(receive) else TOO_LARGE
    message = await receive()  # most bodies come in one message
    if message["type"] == "http.disconnect":
        return DISCONNECTED
    chunk: bytes = message.get("body", b"")
    more = message.get("more_body", False)
    if not more and len(chunk) <= limit:
        return chunk
    chunks: list[bytes] = []
    size = 0
    while True:
        size += len(chunk)
        if size > limit:
            if more and await _drain(receive):
                return DISCONNECTED
            return TOO_LARGE
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)
        message = await receive()
        if message["type"] == "http.disconnect":
            return DISCONNECTED
        chunk = message.get("body", b"")
        more = message.get("more_body", False)


def too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive) -> bool:
    """Read and discard the rest of the body; True if the client disconnected instead."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True
        if not message.get("more_body", False):
            return False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then defers to the real one."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
