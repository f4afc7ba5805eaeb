"""OTLP trace requests to neutral spans: protobuf, OTLP-JSON and proto3-JSON.

- Protobuf (`application/x-protobuf`) is parsed with the official `opentelemetry-proto`
  messages (extra `server`, imported on first use).
- JSON is walked directly (never `json_format.Parse`, an order of magnitude slower). It comes
  in two spellings: OTLP-JSON (the OTLP spec: hex ids, integer enums, camelCase) and proto3-JSON
  as protobuf's `MessageToJson` writes it (base64 ids, enum names, int64s as strings: what the
  Humanloop SDK sends). Field names are read in both camelCase and snake_case.

Structure problems fail the whole request (`OtlpDecodeError`: the server's 400); a single span
that cannot be read is returned as a `BadSpan` in its place (reported, never a 4xx).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from flowtrace.spans._model import SPAN_KINDS, STATUS_CODES, Span, SpanEvent, SpanKind, StatusCode

__all__ = ["BadSpan", "OtlpDecodeError", "decode_json", "decode_protobuf"]

MAX_ATTRIBUTES: Final = 1024  # per span (or event, resource); the rest are counted, not read
MAX_EVENTS: Final = 128
MAX_VALUE_DEPTH: Final = 16
MAX_ARRAY_ITEMS: Final = 1000


class OtlpDecodeError(ValueError):
    """The body is not an OTLP traces request."""


@dataclass(frozen=True, slots=True)
class BadSpan:
    """A span that could not be read, and why."""

    reason: str


# --- values shared by both decoders ------------------------------------------------------------


def _enum(value: Any, names: tuple[str, ...], prefix: str) -> int:
    """An enum as a number or (proto3-JSON) its name, e.g. SPAN_KIND_CLIENT."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        name = value.upper().removeprefix(prefix).lower()
        if name in names:
            return names.index(name)
    return 0


def _span_kind(number: int) -> SpanKind:
    return SPAN_KINDS[number] if 0 <= number < len(SPAN_KINDS) else "unspecified"


def _status(number: int) -> StatusCode:
    return STATUS_CODES[number] if 0 <= number < len(STATUS_CODES) else "unset"


def _hex_id(raw: Any, size: int) -> str | None:
    """An id as lowercase hex: from bytes (protobuf), hex text (OTLP-JSON) or base64 text
    (proto3-JSON). None when absent or all zeros (OTLP's "no id"); ValueError when malformed."""
    if raw is None or raw == b"" or raw == "":
        return None
    if isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str):
        if len(raw) == size * 2:
            try:
                data = bytes.fromhex(raw)
            except ValueError:
                data = _base64(raw)
        else:
            data = _base64(raw)
    else:
        raise ValueError("an id is a string")
    if len(data) != size:
        raise ValueError(f"an id has {size} bytes, not {len(data)}")
    return None if not any(data) else data.hex()


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("an id is neither hex nor base64") from None


def _nanos(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value[:20])
    if isinstance(value, float) and value == value and abs(value) < 2**64:
        return int(value)
    return 0


# --- JSON ------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _list(obj: Mapping[str, Any], camel: str, snake: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{camel} is not a list")
    return value


_JSON_SCALARS: Final = (
    ("stringValue", "string_value"),
    ("boolValue", "bool_value"),
    ("doubleValue", "double_value"),
)


def _json_value(value: Any, depth: int = 0) -> Any:
    """An OTLP AnyValue in JSON as a plain value."""
    if not isinstance(value, Mapping) or depth > MAX_VALUE_DEPTH:
        return None
    for camel, snake in _JSON_SCALARS:
        found = _get(value, camel, snake)
        if found is not None:
            return found
    number = _get(value, "intValue", "int_value")
    if number is not None:
        try:
            return int(number)
        except (TypeError, ValueError):
            return None
    array = _get(value, "arrayValue", "array_value")
    if isinstance(array, Mapping):
        items = array.get("values") or []
        return [_json_value(item, depth + 1) for item in items[:MAX_ARRAY_ITEMS]]
    kvlist = _get(value, "kvlistValue", "kvlist_value")
    if isinstance(kvlist, Mapping):
        return _json_attributes(kvlist.get("values") or [], depth + 1)
    raw = _get(value, "bytesValue", "bytes_value")
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw).hex()
        except (binascii.Error, ValueError):
            return None
    return None


def _json_attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    attributes: dict[str, Any] = {}
    for item in items[:MAX_ATTRIBUTES]:
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            attributes[item["key"]] = _json_value(item.get("value"), depth)
    return attributes


def _json_span(
    raw: Any, resource: Mapping[str, Any], scope_name: str, scope_version: str
) -> Span | BadSpan:
    if not isinstance(raw, Mapping):
        return BadSpan("a span is not an object")
    try:
        trace_id = _hex_id(_get(raw, "traceId", "trace_id"), 16)
        span_id = _hex_id(_get(raw, "spanId", "span_id"), 8)
        parent = _hex_id(_get(raw, "parentSpanId", "parent_span_id"), 8)
    except ValueError as error:
        return BadSpan(str(error))
    if trace_id is None or span_id is None:
        return BadSpan("a span needs a trace id and a span id")
    status: Mapping[str, Any] = raw["status"] if isinstance(raw.get("status"), Mapping) else {}
    events: list[Any] = raw["events"] if isinstance(raw.get("events"), list) else []
    name = raw.get("name")
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name if isinstance(name, str) else "",
        kind=_span_kind(_enum(raw.get("kind"), SPAN_KINDS, "SPAN_KIND_")),
        start_ns=_nanos(_get(raw, "startTimeUnixNano", "start_time_unix_nano")),
        end_ns=_nanos(_get(raw, "endTimeUnixNano", "end_time_unix_nano")),
        attributes=_json_attributes(raw.get("attributes")),
        events=tuple(
            SpanEvent(
                name=str(event.get("name") or ""),
                time_ns=_nanos(_get(event, "timeUnixNano", "time_unix_nano")),
                attributes=_json_attributes(event.get("attributes")),
            )
            for event in events[:MAX_EVENTS]
            if isinstance(event, Mapping)
        ),
        status_code=_status(_enum(status.get("code"), STATUS_CODES, "STATUS_CODE_")),
        status_message=str(status.get("message") or ""),
        resource=resource,
        scope_name=scope_name,
        scope_version=scope_version,
    )


def decode_json(document: Any) -> list[Span | BadSpan]:
    """A parsed JSON body (OTLP-JSON or proto3-JSON) as spans."""
    if not isinstance(document, Mapping):
        raise OtlpDecodeError("an OTLP traces request is a JSON object")
    if not ({"resourceSpans", "resource_spans"} & document.keys()) and document:
        raise OtlpDecodeError("not an OTLP traces request (no resourceSpans)")
    spans: list[Span | BadSpan] = []
    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, Mapping):
            raise OtlpDecodeError("resourceSpans holds objects")
        resource_obj = resource_spans.get("resource")
        resource = (
            _json_attributes(resource_obj.get("attributes"))
            if isinstance(resource_obj, Mapping)
            else {}
        )
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            if not isinstance(scope_spans, Mapping):
                raise OtlpDecodeError("scopeSpans holds objects")
            found = scope_spans.get("scope")
            scope: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
            scope_name = str(scope.get("name") or "")
            scope_version = str(scope.get("version") or "")
            spans.extend(
                _json_span(raw, resource, scope_name, scope_version)
                for raw in _list(scope_spans, "spans", "spans")
            )
    return spans


# --- protobuf ----------------------------------------------------------------------------------

_request_type: Callable[[], Any] | None = None


def _export_request() -> Any:
    global _request_type
    if _request_type is None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        _request_type = ExportTraceServiceRequest
    return _request_type()


def _proto_value(value: Any, depth: int = 0) -> Any:
    kind = value.WhichOneof("value")
    if kind is None or depth > MAX_VALUE_DEPTH:
        return None
    if kind == "array_value":
        return [
            _proto_value(item, depth + 1) for item in value.array_value.values[:MAX_ARRAY_ITEMS]
        ]
    if kind == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values, depth + 1)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _proto_attributes(items: Any, depth: int = 0) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for item in items[:MAX_ATTRIBUTES]:
        # the common case first, without the generic dispatch
        value = item.value
        if value.WhichOneof("value") == "string_value":
            attributes[item.key] = value.string_value
        else:
            attributes[item.key] = _proto_value(value, depth)
    return attributes


def _proto_span(
    raw: Any, resource: Mapping[str, Any], scope_name: str, scope_version: str
) -> Span | BadSpan:
    try:
        trace_id = _hex_id(raw.trace_id, 16)
        span_id = _hex_id(raw.span_id, 8)
        parent = _hex_id(raw.parent_span_id, 8)
    except ValueError as error:
        return BadSpan(str(error))
    if trace_id is None or span_id is None:
        return BadSpan("a span needs a trace id and a span id")
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=raw.name,
        kind=_span_kind(raw.kind),
        start_ns=raw.start_time_unix_nano,
        end_ns=raw.end_time_unix_nano,
        attributes=_proto_attributes(raw.attributes),
        events=tuple(
            SpanEvent(event.name, event.time_unix_nano, _proto_attributes(event.attributes))
            for event in raw.events[:MAX_EVENTS]
        ),
        status_code=_status(raw.status.code),
        status_message=raw.status.message,
        resource=resource,
        scope_name=scope_name,
        scope_version=scope_version,
    )


def decode_protobuf(body: bytes) -> list[Span | BadSpan]:
    """A protobuf `ExportTraceServiceRequest` as spans."""
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]

    request = _export_request()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as error:
        raise OtlpDecodeError(f"not an OTLP protobuf traces request: {error}") from None
    spans: list[Span | BadSpan] = []
    for resource_spans in request.resource_spans:
        resource = _proto_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            spans.extend(
                _proto_span(raw, resource, scope.name, scope.version) for raw in scope_spans.spans
            )
    if spans and not any(isinstance(span, Span) for span in spans):
        # Another OTLP message (logs, metrics) parses as traces with garbage in every span:
        # a request in which no span has ids is not a traces request.
        raise OtlpDecodeError("not an OTLP traces request: no span has a trace id and span id")
    return spans
