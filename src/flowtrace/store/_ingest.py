"""The fast embedded path: operations built by flowtrace's own client, straight to the store's
rules, without what a request from the network needs.

A request from the network is JSON to parse, a pydantic model to validate, and the model's dump
to encode (`_prepare.prepare_log`). The body the client builds (`flowtrace._request_bodies`) is
already that dump: JSON-safe values in the contract's shapes, datetimes in the wire format. So
here a create becomes a `PreparedLog` directly (its stored JSON, its columns, its replay digest)
and goes through `create_log`, the same trace rules as every other write; an update becomes the
`LogChanges` that `update_log` applies, and no answer is built for it (nobody reads one). No
wire model is made or imported here (a short program's exit does not wait for pydantic to
build them): the trace rules read a create's routing fields from a `Routing`.

Replay identity: a create's digest is what `prepare_log` digests for the same request (both
take it in `prepare_fields`, from the columns; the request model's dump of a client body is
the body itself: tests/test_store_ingest.py checks it over random logs). So a log sent over
HTTP, then replayed here from the spool (or the other way round), is recognised as the same
log.

Trusted input: bodies are not validated. `ingest` is for flowtrace's own client and its spool;
anything else goes through `Store.batch`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

from flowtrace._contract import BATCH_PROMPT_LOG, BATCH_TOOL_LOG, BATCH_UPDATE, FLOW, STATUS_FIELDS
from flowtrace.store._logs import TIME_FIELDS, LogChanges, changes_of
from flowtrace.store._prepare import (
    Kernel,
    PreparedLog,
    Routing,
    Targeting,
    body_layout,
    prepare_fields,
)

__all__ = ["IngestItem", "IngestOperation", "needs_models", "prepare_create", "prepare_update"]

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


# --- creates -----------------------------------------------------------------------------------

# Every log of a flow shares one attributes snapshot (the client takes it once per flow), so
# the kernel made of it is kept for the next log that carries the very same object (by id,
# the snapshot kept alive with it so that its id is not another's).
_kernels: dict[int, tuple[object, Kernel]] = {}
_MAX_KERNELS = 1024


def _flow_kernel(attributes: Any) -> Kernel:
    known = _kernels.get(id(attributes))
    if known is not None and known[0] is attributes:
        return known[1]
    kernel = Kernel(attributes)
    if len(_kernels) >= _MAX_KERNELS:
        _kernels.clear()
    _kernels[id(attributes)] = (attributes, kernel)
    return kernel


def _routing_of(body: Mapping[str, Any]) -> Routing:
    """What `create_log` reads of the create's request: the body's routing fields."""
    get = body.get
    flow = get("flow")
    return Routing(
        get("log_id"),
        get("path"),
        get("id"),
        get("trace_parent_id"),
        _flow_kernel(flow["attributes"]) if flow is not None else None,
    )


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
        _routing_of(body),
        body,
        Targeting(**targeting) if targeting else None,
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


def prepare_update(body: Mapping[str, Any]) -> LogChanges:
    """The changes `update_log` applies. Chat messages are models there, so an update that
    carries them is validated (its model imported then: such updates are few); any other is
    taken as it is (its times parsed)."""
    if _MODEL_UPDATE_FIELDS & body.keys():
        from flowtrace.models import FlowLogUpdateRequest

        return changes_of(FlowLogUpdateRequest.model_validate(body))
    sent = frozenset(body.keys() - set(STATUS_FIELDS))
    start, end = body.get("start_time"), body.get("end_time")
    return LogChanges(
        sent,
        {name: body[name] for name in sent if name not in TIME_FIELDS},
        next((body[name] for name in STATUS_FIELDS if name in body), None),
        wire_us(start) if isinstance(start, str) else None,
        wire_us(end) if isinstance(end, str) else None,
    )


#: The creates `Store.ingest` validates as their request models (a span's prompt or tool log).
MODEL_CREATES = frozenset({BATCH_PROMPT_LOG, BATCH_TOOL_LOG})


def needs_models(operations: Iterable[IngestItem]) -> bool:
    """Whether ingesting these operations uses the wire models (the caller may import them
    first where it must: `flowtrace.exporters.store`, fork-safely)."""
    return any(
        op.kind in MODEL_CREATES
        or (op.kind == BATCH_UPDATE and _MODEL_UPDATE_FIELDS & op.body.keys())
        for op in operations
    )
