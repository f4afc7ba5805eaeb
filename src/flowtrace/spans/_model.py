"""The neutral span: what the mapping reads, whatever the span came in as.

Decoders (OTLP protobuf, OTLP-JSON, proto3-JSON: `_otlp_decode`) and, in the program, the
OpenTelemetry SDK's finished spans (`span_from_sdk`) all become `Span`s, so one mapping turns
every kind of span into logs. Plain frozen dataclasses: no protobuf, no OpenTelemetry import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "SPAN_KINDS",
    "STATUS_CODES",
    "Span",
    "SpanEvent",
    "SpanKind",
    "StatusCode",
    "span_from_sdk",
    "status_code_of",
]

#: OTLP's span kinds, by their enum number (0 is unspecified).
SpanKind = Literal["unspecified", "internal", "server", "client", "producer", "consumer"]
SPAN_KINDS: Final[tuple[SpanKind, ...]] = (
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
)
StatusCode = Literal["unset", "ok", "error"]
STATUS_CODES: Final[tuple[StatusCode, ...]] = ("unset", "ok", "error")


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Span:
    """One finished span. Ids are lowercase hex (32 and 16 digits); attribute values are
    plain JSON-like values (str, bool, int, float, lists, dicts; bytes as hex text)."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    parent_span_id: str | None = None
    kind: SpanKind = "internal"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    status_code: StatusCode = "unset"
    status_message: str = ""
    resource: Mapping[str, Any] = field(default_factory=dict)
    scope_name: str = ""
    scope_version: str = ""


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def status_code_of(span: Any) -> StatusCode:
    """An ended span's status: a neutral `Span`'s, or an OpenTelemetry SDK span's."""
    if isinstance(span, Span):
        return span.status_code
    return _sdk_status_code(getattr(span, "status", None))


def _sdk_status_code(status: Any) -> StatusCode:
    number = int(getattr(getattr(status, "status_code", None), "value", 0))
    return STATUS_CODES[number] if 0 <= number < 3 else "unset"


def span_from_sdk(span: Any) -> Span:
    """An OpenTelemetry SDK `ReadableSpan` as a neutral span (read by duck typing, so this
    module needs no OpenTelemetry import)."""
    context = span.context
    parent = span.parent
    status = span.status
    scope = getattr(span, "instrumentation_scope", None)
    resource = getattr(span, "resource", None)
    kind_number = int(getattr(span.kind, "value", 0))
    return Span(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
        name=str(span.name),
        # the SDK numbers kinds from INTERNAL = 0; OTLP from UNSPECIFIED = 0
        kind=SPAN_KINDS[kind_number + 1] if 0 <= kind_number < 5 else "internal",
        start_ns=int(span.start_time or 0),
        end_ns=int(span.end_time or span.start_time or 0),
        attributes={key: _plain(value) for key, value in (span.attributes or {}).items()},
        events=tuple(
            SpanEvent(
                name=str(event.name),
                time_ns=int(event.timestamp or 0),
                attributes={k: _plain(v) for k, v in (event.attributes or {}).items()},
            )
            for event in span.events
        ),
        status_code=_sdk_status_code(status),
        status_message=str(getattr(status, "description", None) or ""),
        resource={k: _plain(v) for k, v in (getattr(resource, "attributes", None) or {}).items()},
        scope_name=str(getattr(scope, "name", "") or ""),
        scope_version=str(getattr(scope, "version", "") or ""),
    )
