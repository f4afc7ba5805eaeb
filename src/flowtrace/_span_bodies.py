"""A span's log as the contract's request bodies (worker only, like `_request_bodies`).

The span is mapped once by the server's own mapping (`spans._mapping.map_span`): a prompt log
goes as `POST /prompts/log` with its kernel under `prompt`, a tool log as `POST /tools/log`
under `tool`, anything else as a flow log. Its parent is the log it was filed under on the
client (a flow, or a kept parent span), not the mapping's guess from span ids (a dropped span
is transparent).
"""

from __future__ import annotations

from typing import Any, Final

from flowtrace._config import get_settings
from flowtrace._contract import (
    BATCH_LOG,
    BATCH_PROMPT_LOG,
    BATCH_TOOL_LOG,
    COMPLETE,
    FLOW,
    INCOMPLETE,
    PROMPT,
    PROMPT_LOG_FIELDS,
    TOOL,
    StatusField,
    wire_time_ns,
)
from flowtrace._span_logs import SpanLog
from flowtrace.exporters import OperationKind
from flowtrace.spans._mapping import MappedLog, PathCap, map_span
from flowtrace.spans._model import Span, span_from_sdk

__all__ = [
    "mapped_of",
    "span_complete_body",
    "span_create_body",
]

#: The operation that creates a log of each kind.
_CREATE_KINDS: Final[dict[str, OperationKind]] = {
    FLOW: BATCH_LOG,
    PROMPT: BATCH_PROMPT_LOG,
    TOOL: BATCH_TOOL_LOG,
}

#: Bounds the distinct paths spans may create in this process (as the server's ingest does).
_paths = PathCap()


def mapped_of(log: SpanLog) -> MappedLog | None:
    """The log's span, mapped once (None while it runs)."""
    mapped = log.mapped
    if mapped is None and log.span is not None:
        span = log.span if isinstance(log.span, Span) else span_from_sdk(log.span)
        mapped = log.mapped = map_span(span, _paths)
    return mapped


def span_create_body(log: SpanLog, status_field: StatusField) -> dict[str, Any]:
    """The create of the span's log: complete once the span has ended (the planner sends one
    with children as incomplete first: it sets the status itself). Sets `log.op_kind`, the
    operation that carries this body (`log`, `prompt_log` or `tool_log`)."""
    mapped = mapped_of(log)
    if mapped is None:  # still running (at exit): a flow log of what is known so far
        log.op_kind = BATCH_LOG
        return _running_body(log, status_field)
    log.op_kind = _CREATE_KINDS[mapped.kind]
    return _body(log, mapped, status_field)


def _body(log: SpanLog, mapped: MappedLog, status_field: StatusField) -> dict[str, Any]:
    body: dict[str, Any] = {"log_id": log.log_id, "path": mapped.path}
    parent = log.parent
    if parent is not None:
        body["trace_parent_id"] = parent.log_id
    for name, value in mapped.fields.items():
        body[status_field if name == "trace_status" else name] = value
    environment = get_settings().environment
    if environment is not None:
        body["environment"] = environment
    if mapped.kind == FLOW:
        if mapped.kernel:
            body["flow"] = {"attributes": mapped.kernel}
    else:
        body[mapped.kind] = mapped.kernel
    return body


def _running_body(log: SpanLog, status_field: StatusField) -> dict[str, Any]:
    """A span still running, as an incomplete flow log: what its SDK span says so far (its
    kind and version are not known yet; its update closes it if it ends later)."""
    if log.live is None:
        body: dict[str, Any] = {"log_id": log.log_id, "path": f"{FLOW}/span"}
        body["start_time"] = wire_time_ns(log.start_ns)
        if log.parent is not None:
            body["trace_parent_id"] = log.parent.log_id
    else:
        mapped = map_span(span_from_sdk(log.live), _paths)
        body = _body(log, mapped, status_field)
        for name in (*PROMPT_LOG_FIELDS, "end_time", "provider_latency", PROMPT, TOOL):
            body.pop(name, None)
        body["path"] = FLOW + mapped.path[len(mapped.kind) :]
    body[status_field] = INCOMPLETE
    return body


def span_complete_body(log: SpanLog, status_field: StatusField) -> dict[str, Any]:
    """The update that closes a span's log created early (it had children): every field went
    with its create already, once the span had ended."""
    mapped = mapped_of(log)
    body: dict[str, Any] = {status_field: COMPLETE}
    if mapped is not None:
        body["end_time"] = mapped.fields["end_time"]
    return body
