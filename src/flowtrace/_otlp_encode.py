"""Logs to OTLP: a log's request bodies as an OpenTelemetry span, and spans as the protobuf body
of an OTLP/HTTP traces request (the official `opentelemetry-proto` messages, imported lazily:
extra `otlp`).

The reverse of `_otlp_decode` and `_mapping`, for the export to other backends: what a log
says goes where those backends look for it.
- ids: given by the caller (derived from log ids, `flowtrace._w3c`);
- name: the log's path; times: its start and end;
- status: ERROR with the log's error as message, and an `exception` event (type, message, the
  traceback), else UNSET;
- inputs and output: OpenInference's `input.value` / `output.value` (JSON), chat messages as
  GenAI `gen_ai.input.messages` / `gen_ai.output.messages`;
- prompt logs: the GenAI attributes (operation, provider, request model and parameters, token
  usage, finish reasons); tool logs: the tool's name;
- the rest under `flowtrace.*`: log id, parent log id, path, status, user, environment,
  metadata (JSON), stdout.
Every string is bounded (MAX_ATTRIBUTE_CHARS).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Final

from flowtrace._contract import (
    COMPLETE,
    RECORDER_METADATA_KEY,
    RECORDER_TRACEBACK,
    TOKEN_FIELDS,
    truncated_chars,
)
from flowtrace.spans import _genai as gen_ai

__all__ = [
    "MAX_ATTRIBUTE_CHARS",
    "SpanDraft",
    "draft_attributes",
    "encode_export_request",
    "wire_ns",
]

MAX_ATTRIBUTE_CHARS: Final = 65536
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: GenAI names of the contract's token counts.
_USAGE_ATTRIBUTES: Final = {
    "prompt_tokens": gen_ai.USAGE_INPUT_TOKENS,
    "output_tokens": gen_ai.USAGE_OUTPUT_TOKENS,
    "reasoning_tokens": gen_ai.USAGE_REASONING_OUTPUT_TOKENS,
    "cache_read_tokens": gen_ai.USAGE_CACHE_READ_INPUT_TOKENS,
    "cache_write_tokens": gen_ai.USAGE_CACHE_CREATION_INPUT_TOKENS,
}
assert set(_USAGE_ATTRIBUTES) == set(TOKEN_FIELDS)
#: GenAI names of a prompt kernel's request parameters.
_REQUEST_ATTRIBUTES: Final = {
    "temperature": gen_ai.REQUEST_TEMPERATURE,
    "max_tokens": gen_ai.REQUEST_MAX_TOKENS,
    "top_p": gen_ai.REQUEST_TOP_P,
    "presence_penalty": gen_ai.REQUEST_PRESENCE_PENALTY,
    "frequency_penalty": gen_ai.REQUEST_FREQUENCY_PENALTY,
    "seed": gen_ai.REQUEST_SEED,
}
_OPENINFERENCE_KIND: Final = {"flow": "CHAIN", "prompt": "LLM", "tool": "TOOL"}


@dataclass(slots=True)
class SpanDraft:
    """One log as a span, before encoding."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    remote_parent: bool = False  # the parent span is in another service (kind SERVER)


def wire_ns(text: Any) -> int | None:
    """The contract's datetime text as nanoseconds since the epoch (None if it is not one)."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bounded(text: str) -> str:
    if len(text) <= MAX_ATTRIBUTE_CHARS:
        return text
    return text[:MAX_ATTRIBUTE_CHARS] + truncated_chars(len(text))


def _json(value: Any) -> str:
    return _bounded(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _parts(message: Mapping[str, Any]) -> dict[str, Any]:
    """A contract chat message in the GenAI conventions' parts form."""
    parts: list[dict[str, Any]] = []
    content = message.get("content")
    if message.get("role") == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}
        )
    elif isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        for item in content:
            text = item.get("text") if isinstance(item, dict) else None
            parts.append({"type": "text", "content": text if text is not None else item})
    for call in message.get("tool_calls") or ():
        call = _dict(call)
        function = _dict(call.get("function"))
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
            }
        )
    shaped: dict[str, Any] = {"role": message.get("role"), "parts": parts}
    if message.get("name"):
        shaped["name"] = message["name"]
    return shaped


def _messages(value: Any) -> str | None:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return None
    return _json([_parts(m) for m in value if isinstance(m, dict)])


def draft_attributes(body: Mapping[str, Any], kind: str, status: str) -> dict[str, Any]:
    """A log's merged request body as span attributes (see the module's docstring)."""
    attributes: dict[str, Any] = {
        "flowtrace.log_id": body.get("log_id"),
        "flowtrace.path": body.get("path"),
        "flowtrace.trace_status": status,
        "openinference.span.kind": _OPENINFERENCE_KIND.get(kind, "CHAIN"),
    }
    if body.get("trace_parent_id"):
        attributes["flowtrace.trace_parent_id"] = body["trace_parent_id"]
    if body.get("inputs") is not None:
        attributes["input.value"] = _json(body["inputs"])
        attributes["input.mime_type"] = "application/json"
    if body.get("output") is not None:
        attributes["output.value"] = _bounded(str(body["output"]))
    for name, key in (("messages", gen_ai.INPUT_MESSAGES), ("output_message", None)):
        shaped = _messages(body.get(name))
        if shaped is not None:
            attributes[key or gen_ai.OUTPUT_MESSAGES] = shaped
    for name, key in (
        ("user", "user.id"),
        ("environment", "deployment.environment.name"),
        ("source", "flowtrace.source"),
        ("stdout", "flowtrace.stdout"),
    ):
        if isinstance(body.get(name), str) and body[name]:
            attributes[key] = _bounded(body[name])
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata:
        attributes["flowtrace.metadata"] = _json(metadata)
    if kind == "prompt":
        _prompt_attributes(body, attributes)
    elif kind == "tool":
        function = _dict(_dict(body.get("tool")).get("function"))
        attributes[gen_ai.OPERATION_NAME] = "execute_tool"
        if function.get("name"):
            attributes[gen_ai.TOOL_NAME] = str(function["name"])
    return {k: v for k, v in attributes.items() if v is not None}


def _prompt_attributes(body: Mapping[str, Any], attributes: dict[str, Any]) -> None:
    prompt = _dict(body.get("prompt"))
    attributes[gen_ai.OPERATION_NAME] = "chat"
    if prompt.get("provider"):
        attributes[gen_ai.PROVIDER_NAME] = str(prompt["provider"])
    if prompt.get("model"):
        attributes[gen_ai.REQUEST_MODEL] = str(prompt["model"])
    response_model = (
        (body.get("provider_response") or {})
        if isinstance(body.get("provider_response"), dict)
        else {}
    )
    if isinstance(response_model.get("model"), str):
        attributes[gen_ai.RESPONSE_MODEL] = response_model["model"]
    for name, key in _REQUEST_ATTRIBUTES.items():
        value = prompt.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[key] = value
    for name, key in _USAGE_ATTRIBUTES.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[key] = value
    if isinstance(body.get("finish_reason"), str):
        attributes[gen_ai.RESPONSE_FINISH_REASONS] = [body["finish_reason"]]
    for name in ("prompt_cost", "output_cost"):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[f"flowtrace.{name}"] = float(value)


def error_parts(error: str) -> tuple[str, str]:
    """`Type: message` (the recorder's error text) as (type, message)."""
    kind, colon, message = error.partition(": ")
    if not colon or not kind or " " in kind:
        return "Error", error
    return kind, message


def traceback_of(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    note = metadata.get(RECORDER_METADATA_KEY) if isinstance(metadata, dict) else None
    found = note.get(RECORDER_TRACEBACK) if isinstance(note, dict) else None
    return found if isinstance(found, str) else None


# --- protobuf ----------------------------------------------------------------------------------


def _any_value(value: Any, out: Any) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, (list, tuple)):
        for item in value:
            _any_value(item, out.array_value.values.add())
    else:
        out.string_value = value if isinstance(value, str) else str(value)


def _key_values(attributes: Mapping[str, Any], out: Any) -> None:
    for key, value in attributes.items():
        entry = out.add()
        entry.key = key
        _any_value(value, entry.value)


def encode_export_request(
    drafts: Sequence[SpanDraft], resource: Mapping[str, Any], scope: tuple[str, str]
) -> bytes:
    """The serialized `ExportTraceServiceRequest` of `drafts` (one resource, one scope)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _key_values(resource, resource_spans.resource.attributes)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = scope
    for draft in drafts:
        span = scope_spans.spans.add()
        span.trace_id = bytes.fromhex(draft.trace_id)
        span.span_id = bytes.fromhex(draft.span_id)
        if draft.parent_span_id:
            span.parent_span_id = bytes.fromhex(draft.parent_span_id)
        span.name = draft.name
        span.kind = Span.SPAN_KIND_SERVER if draft.remote_parent else Span.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = max(0, draft.start_ns)
        span.end_time_unix_nano = max(draft.start_ns, draft.end_ns, 0)
        _key_values(draft.attributes, span.attributes)
        if draft.error is not None:
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = _bounded(draft.error)
            kind, message = error_parts(draft.error)
            event = span.events.add()
            event.name = "exception"
            event.time_unix_nano = span.end_time_unix_nano
            exception = {"exception.type": kind, "exception.message": _bounded(message)}
            if draft.traceback:
                exception["exception.stacktrace"] = _bounded(draft.traceback)
            _key_values(exception, event.attributes)
    return bytes(request.SerializeToString())


def status_of(body: Mapping[str, Any], status_field: str) -> str:
    value = body.get(status_field)
    return value if isinstance(value, str) else COMPLETE
