"""`POST /v5/flows/log` answered without FastAPI's routing and dependency solving.

The contract costs one HTTP request per log, so this route's fixed cost per request is the
per-log ingest rate. Through FastAPI it was ~270 us of the app's ~370 us per log (routing over
every route, dependency solving, request objects), more than the store's write (~100 us). This
pure ASGI handler does only what the route needs and gives the same answers, byte for byte:
the same body parsing (strict JSON, Content-Type rules), the same validation errors, the same
store errors. `tests/test_server_fast_log.py` sends the same requests to both and compares the
answers. Its writes go through `_GroupWriter` (group commit).

The FastAPI route stays: it describes the operation in the OpenAPI document, and answers
whatever this handler passes on (other methods, other paths).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from flowtrace.models import CreateFlowLogResponse, FlowLogRequest, LogQuery, StatusField
from flowtrace.store import Store, StoreError

from ._errors import store_error_response, validation_error_response
from ._json import is_json_media_type, parse_json
from ._responses import render_created, status_field_of

__all__ = ["FastLogMiddleware", "parse_log_request"]

_MISSING = object()
_JSON = "application/json"


class FastLogMiddleware:
    """Answers `POST {path}` itself; passes every other request on to `app`."""

    def __init__(
        self, app: ASGIApp, *, store: Store, path: str, status_field_default: StatusField
    ) -> None:
        self.app = app
        self._writer = _GroupWriter(store)
        self._path = path
        self._default = status_field_default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self._path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away mid-body: nobody to answer
            return
        response = await self._answer(scope, body)
        await response(scope, receive, send)

    async def _answer(self, scope: Scope, body: bytes) -> Response:
        try:
            request = parse_log_request(body, _header(scope, b"content-type"))
        except _RequestInvalid as invalid:
            return validation_error_response(invalid.errors)
        params = QueryParams(scope["query_string"])
        version_id, environment = params.get("version_id"), params.get("environment")
        query = None
        if version_id is not None or environment is not None:
            query = LogQuery(version_id=version_id, environment=environment)
        try:
            created = await self._writer.log(request, query)
        except StoreError as refusal:
            return store_error_response(refusal)
        answer = render_created(created, status_field_of(request, self._default))
        return Response(to_json(answer), media_type=_JSON)


_Waiting = tuple[FlowLogRequest, LogQuery | None, "asyncio.Future[CreateFlowLogResponse]"]


class _GroupWriter:
    """Group commit: logs that arrive while the store is writing wait, then go in together.

    A log that finds the store idle is written at once (one request at a time: nothing
    changes). Logs that arrive during a write are written in the next transaction, all of
    them, with one thread hop and one commit (`Store.log_many`); each is stored or refused on
    its own and answered only once its commit returned.

    The store is synchronous, so it runs on a thread, never on the event loop: one thread of
    this writer's own, since its writes go one after another anyway, and handing work to it
    costs less than to the shared threadpool (~30 us a request). The thread ends when the
    writer is garbage collected.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._busy = False
        self._waiting: list[_Waiting] = []
        # The running group's task: the event loop keeps only a weak reference to tasks.
        self._group_task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="flowtrace-log-writer")

    async def log(self, request: FlowLogRequest, query: LogQuery | None) -> CreateFlowLogResponse:
        if self._busy:
            answer: asyncio.Future[CreateFlowLogResponse] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiting.append((request, query, answer))
            return await answer
        self._busy = True
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._store.log, request, query)
        finally:
            self._next()

    def _next(self) -> None:
        """The store is free: write the logs that waited, or mark it idle."""
        if self._waiting:
            group, self._waiting = self._waiting, []
            self._group_task = asyncio.get_running_loop().create_task(self._write(group))
        else:
            self._busy = False
            self._group_task = None

    async def _write(self, group: list[_Waiting]) -> None:
        try:
            logs = [(request, query) for request, query, _ in group]
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self._thread, self._store.log_many, logs)
        except BaseException as failure:
            for _, _, answer in group:
                if not answer.done():
                    answer.set_exception(failure)
            if not isinstance(failure, Exception):
                raise
        else:
            for (_, _, answer), result in zip(group, results, strict=True):
                if answer.done():  # its request was cancelled
                    continue
                if isinstance(result, StoreError):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)
        finally:
            self._next()


class _RequestInvalid(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def parse_log_request(body: bytes, content_type: str | None) -> FlowLogRequest:
    """The body as FastAPI reads a required JSON body parameter (`strict_content_type=False`,
    parsed by `parse_json`); raises `_RequestInvalid` with FastAPI's errors."""
    value = _json_body(body, content_type)
    if value is _MISSING:
        raise _RequestInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        # from_attributes, as FastAPI validates: a body that is not JSON is validated as bytes.
        return FlowLogRequest.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise _RequestInvalid([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _json_body(body: bytes, content_type: str | None) -> Any:
    if not body:
        return _MISSING
    # Without a Content-Type FastAPI reads JSON (strict_content_type=False); behind
    # _content_type.JsonContentTypeMiddleware no such body gets this far.
    if not content_type or is_json_media_type(content_type):
        try:
            return parse_json(body)
        except json.JSONDecodeError as exc:
            raise _RequestInvalid(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", exc.pos),
                        "msg": "JSON decode error",
                        "ctx": {"error": exc.msg},
                    }
                ]
            ) from None
    return body  # not JSON: FastAPI validates the raw bytes


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's `Headers.get` gives it."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
