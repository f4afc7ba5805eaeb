"""`POST /v5/flows/log` and `PATCH /v5/flows/logs/{log_id}` answered in front of the app:
without its middleware chain, FastAPI's routing and dependency solving.

The contract costs one HTTP request per log (and one more per log created before its end, such
as a trace's root), so these routes' fixed cost per request is the per-log ingest rate. Through
FastAPI a create cost ~270 us of the app's ~370 us (routing over every route, dependency
solving, request objects), more than the store's write (~100 us); an update, a sync endpoint,
cost more again: a hop to the shared threadpool, and a write of its own contending with the
creates' writer for the store's lock (~3 ms a request under load, issue 13). This pure ASGI
handler does only what the routes need and gives the same answers, byte for byte: the same
body parsing (strict JSON, Content-Type rules), the same validation errors, the same store
errors. `tests/test_server_fast_log.py` sends the same requests to both and compares the
answers. Creates and updates go through one `_GroupWriter` (group commit), in arrival order.

It sits in front of the app itself (`_app._App.__call__` hands it the requests it `match`es,
before FastAPI's and Starlette's entry and the whole middleware chain), so it does the chain's
checks for these two routes itself, in the chain's order and with the chain's own code and
answers: without API keys the Host and Origin rules (403), the API key (401), the JSON
Content-Type (415), the body limit (413), and the 500 of an unexpected error. The chain's eight
layers (Starlette's and FastAPI's error, telemetry and body-limit middlewares, then
flowtrace's) had no other work for these requests: ~36,000 instructions a request (callgrind,
~3% of the app's cost of a log; issue 13, second pass).

The FastAPI routes stay: they describe the operations in the OpenAPI document, and answer
what this handler does not match (other methods, other paths).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from flowtrace._contract import minimal_answer
from flowtrace.models import (
    CreateFlowLogResponse,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    LogQuery,
    StatusField,
)
from flowtrace.store import Store, StoreError, UpdateWrite

from ._auth import ApiKeys
from ._body_limit import DISCONNECTED, TOO_LARGE, read_limited, too_large
from ._content_type import content_type_refusal
from ._errors import store_error_response, unexpected_error_response, validation_error_response
from ._json import is_json_media_type, parse_json
from ._keyless_guard import KeylessGuardMiddleware
from ._prefer import MINIMAL_APPLIED_RAW, scope_prefers_minimal
from ._responses import json_response, render_created, render_log, status_field_of
from ._store_thread import StoreThread

__all__ = ["FastLogFront", "LogRoute", "parse_log_request"]

_MISSING = object()
_JSON = "application/json"


class LogRoute(NamedTuple):
    """A request `FastLogFront` serves: a create (`log_id` None) or the update of `log_id`."""

    log_id: str | None


_CREATE = LogRoute(None)


class FastLogFront:
    """Answers `POST {prefix}/flows/log` and `PATCH {prefix}/flows/logs/{log_id}` (`match`
    says which requests are these), checked as the app's middleware chain checks them.

    `keyless`: without API keys, the chain's Host and Origin rules (`_keyless_guard`)."""

    def __init__(
        self,
        *,
        store: Store,
        prefix: str,
        status_field_default: StatusField,
        api_keys: ApiKeys,
        max_body_bytes: int,
        keyless: KeylessGuardMiddleware | None,
    ) -> None:
        self._writer = _GroupWriter(store)
        self._create_path = f"{prefix}/flows/log"
        self._update_prefix = f"{prefix}/flows/logs/"
        self._default = status_field_default
        self._keys = api_keys
        self._max_body_bytes = max_body_bytes
        self._keyless = keyless

    def match(self, scope: Scope) -> LogRoute | None:
        """The route of an HTTP request this front answers; None for any other request."""
        path, method = scope["path"], scope["method"]
        if method == "POST" and path == self._create_path:
            return _CREATE
        if method == "PATCH" and path.startswith(self._update_prefix):
            log_id = path[len(self._update_prefix) :]
            if log_id and "/" not in log_id:  # the route's `{log_id}`: one path segment
                return LogRoute(log_id)
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send, log_id: str | None) -> None:
        """Answer a create (`log_id` None) or the update of `log_id`."""
        refused = self._refusal(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        body = await read_limited(scope, receive, self._max_body_bytes)
        if body is DISCONNECTED:  # the client went away mid-body: nobody to answer
            return
        if body is TOO_LARGE:
            await too_large(self._max_body_bytes)(scope, receive, send)
            return
        assert isinstance(body, bytes)
        try:
            response = await self._answer(scope, body, log_id)
        except Exception as exc:  # as the chain's UnexpectedErrorMiddleware: a 500, logged
            response = unexpected_error_response(scope, exc)
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> Response | None:
        """The chain's refusals before the body is read, in its order."""
        if self._keyless is not None:
            reason = self._keyless.refusal(scope)
            if reason is not None:
                return JSONResponse({"detail": reason}, status_code=403)
        if self._keys:
            reason = self._keys.refusal(scope)
            if reason is not None:
                return JSONResponse({"detail": reason}, status_code=401)
        reason = content_type_refusal(scope)
        if reason is not None:
            return JSONResponse({"detail": reason}, status_code=415)
        return None

    async def _answer(
        self, scope: Scope, body: bytes, log_id: str | None
    ) -> Response | _JsonAnswer:
        content_type = _header(scope, b"content-type")
        try:
            if log_id is None:
                return await self._create(scope, parse_log_request(body, content_type))
            return await self._update(scope, log_id, _parse_update(body, content_type))
        except _RequestInvalid as invalid:
            return validation_error_response(invalid.errors)
        except StoreError as refusal:
            return store_error_response(refusal)

    async def _create(self, scope: Scope, request: FlowLogRequest) -> _JsonAnswer:
        query = None
        if scope["query_string"]:  # most creates have none: not parsed then
            params = QueryParams(scope["query_string"])
            version_id, environment = params.get("version_id"), params.get("environment")
            if version_id is not None or environment is not None:
                query = LogQuery(version_id=version_id, environment=environment)
        created = await self._writer.write((request, query))
        assert isinstance(created, CreateFlowLogResponse)
        answer = render_created(created, status_field_of(request, self._default))
        return _JsonAnswer(to_json(answer))

    async def _update(
        self, scope: Scope, log_id: str, request: FlowLogUpdateRequest
    ) -> Response | _JsonAnswer:
        minimal = scope_prefers_minimal(scope)
        updated = await self._writer.write(UpdateWrite(log_id, request, record=not minimal))
        if updated is None:
            return _JsonAnswer(to_json(minimal_answer(log_id)), MINIMAL_APPLIED_RAW)
        assert isinstance(updated, FlowLogResponse)
        return json_response(render_log(updated, status_field_of(request, self._default)))


class _JsonAnswer:
    """A 200 JSON answer as the two ASGI messages Starlette's `Response` sends, with the same
    headers in the same order, without making one (~3% of a log's time on the event loop):
    the answer of every create and of every minimal update."""

    __slots__ = ("_body", "_headers")

    def __init__(self, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self._body = body
        self._headers = [*headers, (b"content-length", b"%d" % len(body)), _JSON_TYPE]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body})


_JSON_TYPE = (b"content-type", _JSON.encode("latin-1"))

#: A create `(request, query)` or an update, as `Store.write_many` takes them.
_Write = tuple[FlowLogRequest, LogQuery | None] | UpdateWrite
#: None: an update answered without its record.
_Answer = CreateFlowLogResponse | FlowLogResponse | None
_Waiting = tuple[_Write, "asyncio.Future[_Answer]"]


class _GroupWriter:
    """Group commit: writes that arrive while the store is writing wait, then go in together.

    A write that finds the store idle is done at once (one request at a time: nothing
    changes). Writes that arrive during it are done in the next transaction, all of them, in
    their order of arrival, with one thread hop and one commit (`Store.write_many`); each is
    stored or refused on its own and answered only once its commit returned. Creates and
    updates share the one queue: a client sends an update only after its log's create was
    answered, so arrival order is an order the store can apply.

    The store is synchronous, so it runs on a thread, never on the event loop: one thread of
    this writer's own (`_store_thread`), since its writes go one after another anyway, and
    handing work to it costs less than to the shared threadpool (~30 us a request) or to an
    executor of one thread (~90,000 instructions a request). The thread ends when the writer
    is garbage collected.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._busy = False
        self._waiting: list[_Waiting] = []
        # The running group's task: the event loop keeps only a weak reference to tasks.
        self._group_task: asyncio.Task[None] | None = None
        self._thread = StoreThread("flowtrace-log-writer")

    async def write(self, write: _Write) -> _Answer:
        """The store's answer to `write`; raises its StoreError."""
        if self._busy:
            answer: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
            self._waiting.append((write, answer))
            return await answer
        self._busy = True
        try:
            return await self._thread.run(self._write_alone, write)
        finally:
            self._next()

    def _write_alone(self, write: _Write) -> _Answer:
        (answer,) = self._store.write_many([write])
        if isinstance(answer, StoreError):
            raise answer
        return answer

    def _next(self) -> None:
        """The store is free: write what waited, or mark it idle."""
        if self._waiting:
            group, self._waiting = self._waiting, []
            self._group_task = asyncio.get_running_loop().create_task(self._write_group(group))
        else:
            self._busy = False
            self._group_task = None

    async def _write_group(self, group: list[_Waiting]) -> None:
        try:
            writes = [write for write, _ in group]
            results = await self._thread.run(self._store.write_many, writes)
        except BaseException as failure:
            for _, answer in group:
                if not answer.done():
                    answer.set_exception(failure)
            if not isinstance(failure, Exception):
                raise
        else:
            for (_, answer), result in zip(group, results, strict=True):
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
    return _parse_body(FlowLogRequest, body, content_type)


def _parse_update(body: bytes, content_type: str | None) -> FlowLogUpdateRequest:
    return _parse_body(FlowLogUpdateRequest, body, content_type)


_Model = TypeVar("_Model", bound=BaseModel)


def _parse_body(model: type[_Model], body: bytes, content_type: str | None) -> _Model:
    value = _json_body(body, content_type)
    if value is _MISSING:
        raise _RequestInvalid([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    try:
        # from_attributes, as FastAPI validates: a body that is not JSON is validated as bytes.
        return model.model_validate(value, from_attributes=True)
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


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's `Headers.get` gives it."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
