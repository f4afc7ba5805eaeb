"""The fast embedded path: operations built by flowtrace's own client, straight to the store's
rules, without what a request from the network needs.

A request from the network is JSON to parse, a pydantic model to validate, and the model's dump
to encode (`_prepare.prepare_log`). The body the client builds (`flowtrace._request_bodies`) is
already that dump: JSON-safe values in the contract's shapes, datetimes in the wire format. So
here a create becomes a `PreparedLog` directly (its stored JSON, its columns, its replay digest)
and goes through `create_log`, the same trace rules as every other write; an update becomes the
update request `update_log` reads, and no answer is built for it (nobody reads one).

Replay identity: a create's digest is what `prepare_log` digests for the same request (both
take it in `prepare_fields`, from the columns; the request model's dump of a client body is
the body itself: tests/test_store_ingest.py checks it over random logs). So a log sent over
HTTP, then replayed here from the spool (or the other way round), is recognised as the same
log.

Trusted input: bodies are not validated. `ingest` is for flowtrace's own client and its spool;
anything else goes through `Store.batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from flowtrace._contract import (
    FLOW,
)
from flowtrace.models import FlowKernel, FlowLogRequest, FlowLogUpdateRequest, LogQuery
from flowtrace.store._prepare import PreparedLog, body_layout, prepare_fields

__all__ = ["IngestItem", "IngestOperation", "prepare_create", "prepare_update"]

_M = TypeVar("_M", bound=BaseModel)

#: Update fields whose values are models (chat messages): such an update is validated.
_MODEL_UPDATE_FIELDS = frozenset({"messages", "output_message"})


class IngestItem(Protocol):
    """What `Store.ingest` reads of an operation: the exporters' `Operation` is one (handed
    over as it is, nothing made per operation), `IngestOperation` another."""

    @property
    def kind(self) -> str: ...
    @property
    def log_id(self) -> str: ...
    @property
    def body(self) -> Mapping[str, Any]: ...
    @property
    def query(self) -> Mapping[str, str] | None: ...


class IngestOperation(NamedTuple):
    """A create (`kind` "log", with the targeting `query`; "prompt_log" or "tool_log" for a
    span's log) or an update of `log_id`."""

    kind: str
    log_id: str
    body: Mapping[str, Any]
    query: Mapping[str, str] | None = None


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    return {name: field.default for name, field in model.model_fields.items()}


_DEFAULTS: dict[type[BaseModel], dict[str, Any]] = {
    model: _defaults(model) for model in (FlowLogUpdateRequest, LogQuery)
}
_DEFAULTS[FlowKernel] = {}


def _known_valid(model: type[_M], values: dict[str, Any]) -> _M:
    """A model instance of values known to be valid: pydantic's `model_construct`, without
    its per-field walk (every field has a plain default). A create's request (`_request_of`)
    gets its routing fields only: what `create_log` reads of it."""
    instance = model.__new__(model)
    fields = dict(_DEFAULTS[model])
    fields.update(values)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


# --- wire datetimes ----------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_second_memo: tuple[str, int] = ("", 0)


def wire_us(text: str) -> int:
    """`2025-03-01T12:00:00.000000Z` (the client's format) as microseconds since the epoch;
    the second is parsed once for a batch of logs that share it."""
    global _second_memo
    second = text[:19]
    memo_text, memo_us = _second_memo
    if second != memo_text:
        parsed = datetime.fromisoformat(second).replace(tzinfo=timezone.utc)
        memo_us = (parsed - _EPOCH) // timedelta(microseconds=1)
        _second_memo = (second, memo_us)
    if len(text) == _CLIENT_TIME_CHARS:  # the client's six digits and its `Z`
        return memo_us + int(text[20:26])
    fraction = text[20:-1] if len(text) > 20 and text[19] == "." else ""
    return memo_us + (int(fraction.ljust(6, "0")[:6]) if fraction else 0)


_CLIENT_TIME_CHARS = len("2025-03-01T12:00:00.000000Z")


def _wire_datetime(text: str) -> datetime:
    return _EPOCH + timedelta(microseconds=wire_us(text))


# --- creates -----------------------------------------------------------------------------------

# Every log of a flow shares one attributes snapshot (the client takes it once per flow), so
# the kernel made of it is kept for the next log that carries the very same object.
_kernel_memo: tuple[object, FlowKernel | None] = (None, None)


def _flow_kernel(attributes: Any) -> FlowKernel:
    global _kernel_memo
    known, kernel = _kernel_memo
    if known is attributes and kernel is not None:
        return kernel
    kernel = _known_valid(FlowKernel, {"attributes": attributes})
    _kernel_memo = (attributes, kernel)
    return kernel


def _request_of(body: Mapping[str, Any], routing: tuple[str, ...]) -> FlowLogRequest:
    """The create's request, with only what `create_log` reads of it (see `_known_valid`):
    the body's routing fields, its flow as a kernel."""
    get = body.get
    flow = get("flow")
    fields = {
        "log_id": get("log_id"),
        "path": get("path"),
        "id": get("id"),
        "trace_parent_id": get("trace_parent_id"),
        "flow": _flow_kernel(flow["attributes"]) if flow is not None else None,
    }
    instance = FlowLogRequest.__new__(FlowLogRequest)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(routing))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def prepare_create(
    body: Mapping[str, Any], query: Mapping[str, str] | None, now_us: int, now_wire: str
) -> PreparedLog:
    """What `prepare_log` makes of the same request, from the body as the client built it."""
    layout = body_layout(body)
    get = body.get
    start = get("start_time")
    end = get("end_time")
    targeting = _targeting(query) if query else None
    return prepare_fields(
        _request_of(body, layout.routing),
        body,
        _known_valid(LogQuery, targeting) if targeting else None,
        FLOW,
        None,
        wire_us(start) if start is not None else None,
        wire_us(end) if end is not None else None,
        now_us,
        now_wire,
        targeting,
        layout,
    )


def _targeting(query: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in query.items() if v is not None}


# --- updates -----------------------------------------------------------------------------------


def prepare_update(body: Mapping[str, Any]) -> FlowLogUpdateRequest:
    """The update request `update_log` reads. Chat messages are models there, so an update
    that carries them is validated; any other is taken as it is (its end time parsed)."""
    if _MODEL_UPDATE_FIELDS & body.keys():
        return FlowLogUpdateRequest.model_validate(body)
    values = dict(body)
    end = values.get("end_time")
    if isinstance(end, str):
        values["end_time"] = _wire_datetime(end)
    return _known_valid(FlowLogUpdateRequest, values)
