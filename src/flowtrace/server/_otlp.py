"""OTLP/HTTP trace ingest: `POST /v1/traces` (where OpenTelemetry exporters send, given
`OTEL_EXPORTER_OTLP_ENDPOINT=http://host:port`) and Humanloop's `POST /v5/import/otel/v1/traces`.

A writing route with its own rules, kept apart from the JSON routes (its paths are the
constants below, so a rule for JSON writes can leave them out by path):
- Bodies: protobuf (`application/x-protobuf`) or JSON (OTLP-JSON or proto3-JSON), told by the
  Content-Type (parameters allowed) or, without one (the Humanloop SDK sends none), by the
  first byte; gzip by `Content-Encoding: gzip` or its magic bytes, inflated in bounded steps:
  past `MAX_OTLP_BYTES` it is a 413 without allocating more.
- Answers as OTLP says: 200, with `partial_success` counting the spans that could not be stored
  (never a 4xx for one bad span: a non-200 kills the Humanloop SDK's only upload thread); 400
  for a body that is not a traces request; each in the request's encoding (a protobuf `Status`
  for errors to protobuf requests). Humanloop's route answers `{"records": [log_id, ...]}`.
- `/v1/metrics` and `/v1/logs` answer 200 and drop what they got.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from flowtrace._contract import FLOW, PROMPT, TOOL, wire_time_us
from flowtrace.models import (
    FlowKernel,
    FlowLogRequest,
    FlowLogUpdateRequest,
    PromptLogRequest,
    PromptLogUpdateRequest,
    ToolLogRequest,
    ToolLogUpdateRequest,
)
from flowtrace.spans import MappedLog, PathCap, map_span
from flowtrace.spans._model import Span
from flowtrace.spans._otlp_decode import BadSpan, OtlpDecodeError, decode_json, decode_protobuf
from flowtrace.store import SpanWrite, Store, StoreError
from flowtrace.store._prepare import PreparedLog, prepare_built

from ._json import dump_json, parse_json

__all__ = [
    "HUMANLOOP_TRACES_PATH",
    "MAX_OTLP_BYTES",
    "OTLP_DROPPED_PATHS",
    "OTLP_PATHS",
    "OTLP_TRACES_PATH",
    "otlp_router",
]

OTLP_TRACES_PATH: Final = "/v1/traces"
HUMANLOOP_TRACES_PATH: Final = "/v5/import/otel/v1/traces"
OTLP_DROPPED_PATHS: Final = ("/v1/metrics", "/v1/logs")
#: Every OTLP path: writes with their own Content-Type rule (see the module's docstring).
OTLP_PATHS: Final = (OTLP_TRACES_PATH, HUMANLOOP_TRACES_PATH, *OTLP_DROPPED_PATHS)
#: The body limit of OTLP requests, before and after gunzip.
MAX_OTLP_BYTES: Final = 20 * 2**20

_PROTOBUF: Final = "application/x-protobuf"
_JSON: Final = "application/json"
_PROTOBUF_TYPES: Final = frozenset({_PROTOBUF, "application/protobuf", "application/octet-stream"})
_GZIP_MAGIC: Final = b"\x1f\x8b"
_INFLATE_STEP: Final = 1 << 20
_INVALID_ARGUMENT: Final = 3  # google.rpc.Code
_MAX_ERROR_REASONS: Final = 5

_UPDATES: Final[dict[str, type[BaseModel]]] = {
    FLOW: FlowLogUpdateRequest,
    PROMPT: PromptLogUpdateRequest,
    TOOL: ToolLogUpdateRequest,
}
_KERNEL_FIELDS: Final = {FLOW: "flow", PROMPT: "prompt", TOOL: "tool"}
# Requests holding only a span log's routing fields, copied per span (model_construct resolves
# every default each time: ten times the cost).
_ROUTING_TEMPLATES: Final[dict[str, FlowLogRequest | PromptLogRequest | ToolLogRequest]] = {
    FLOW: FlowLogRequest.model_construct(),
    PROMPT: PromptLogRequest.model_construct(),
    TOOL: ToolLogRequest.model_construct(),
}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- the body ----------------------------------------------------------------------------------


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _inflate(body: bytes) -> bytes:
    """gunzip within MAX_OTLP_BYTES, a step at a time: a bomb costs one step past the limit."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while True:
            chunk = inflater.decompress(data, _INFLATE_STEP)
            size += len(chunk)
            if size > MAX_OTLP_BYTES:
                raise _Refused(413, f"request body larger than {MAX_OTLP_BYTES} bytes inflated")
            out.append(chunk)
            data = inflater.unconsumed_tail
            # a full step may leave output pending inside zlib even with no input left
            if inflater.eof or (not data and len(chunk) < _INFLATE_STEP):
                break
        if not inflater.eof:
            raise _Refused(400, "truncated gzip body")
    except zlib.error as error:
        raise _Refused(400, f"malformed gzip body: {error}") from None
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class _Decoded:
    spans: list[Span | BadSpan]
    protobuf: bool


def _decode(body: bytes, content_type: str, content_encoding: str) -> _Decoded:
    encoding = content_encoding.strip().lower()
    if encoding == "gzip" or (encoding in ("", "identity") and body[:2] == _GZIP_MAGIC):
        body = _inflate(body)
    elif encoding not in ("", "identity"):
        raise _Refused(415, f"unsupported Content-Encoding {encoding!r} (use gzip)")
    if content_type in _PROTOBUF_TYPES:
        protobuf = True
    elif content_type == _JSON or content_type.endswith("+json"):
        protobuf = False
    else:  # none (the Humanloop SDK), or a vague one: JSON is text starting with `{`
        protobuf = body.lstrip()[:1] != b"{"
    try:
        if protobuf:
            return _Decoded(decode_protobuf(body), True)
        try:
            document = parse_json(body)
        except json.JSONDecodeError as error:
            raise OtlpDecodeError(f"malformed JSON: {error.msg}") from None
        return _Decoded(decode_json(document), False)
    except OtlpDecodeError as error:
        raise _Refused(400, str(error)) from None


# --- spans to store writes -------------------------------------------------------------------


def _prepared(mapped: MappedLog, now_us: int, now_wire: str) -> PreparedLog:
    """The span's log, prepared from the mapping's body without a pydantic round trip: the
    mapping builds only values the request models take (tests/test_span_mapping.py)."""
    body: dict[str, Any] = {**mapped.fields, "path": mapped.path, "log_id": mapped.log_id}
    if mapped.parent_id is not None:
        body["trace_parent_id"] = mapped.parent_id
    kernel_field = _KERNEL_FIELDS[mapped.kind]
    routing: dict[str, Any] = {
        "path": mapped.path,
        "log_id": mapped.log_id,
        "trace_parent_id": mapped.parent_id,
    }
    if mapped.kind == FLOW:
        body[kernel_field] = {"attributes": mapped.kernel}
        routing["flow"] = FlowKernel.model_construct(attributes=mapped.kernel)
    else:
        body[kernel_field] = mapped.kernel
    request = _ROUTING_TEMPLATES[mapped.kind].model_copy(update=routing)
    return prepare_built(
        request,
        body,
        mapped.kind,
        None if mapped.kind == FLOW else mapped.kernel,
        mapped.start_ns // 1000,
        mapped.end_ns // 1000,
        now_us,
        now_wire,
    )


def _update(mapped: MappedLog) -> Any:
    model = _UPDATES[mapped.kind]
    allowed = model.model_fields
    return model.model_validate({k: v for k, v in mapped.fields.items() if k in allowed})


def _writes(spans: Sequence[Span | BadSpan], paths: PathCap, now_us: int) -> list[SpanWrite | str]:
    """Each span as a store write, or the reason it cannot be one."""
    now_wire = wire_time_us(now_us)
    writes: list[SpanWrite | str] = []
    for span in spans:
        if isinstance(span, BadSpan):
            writes.append(span.reason)
            continue
        mapped = map_span(span, paths)
        try:
            prepared = _prepared(mapped, now_us, now_wire)
            update = _update(mapped) if mapped.completes else None
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            writes.append(f"span {span.span_id}: {where}: {first['msg']}")
            continue
        writes.append(SpanWrite(prepared, update))
    return writes


@dataclass(frozen=True, slots=True)
class _Outcome:
    log_ids: list[str]
    rejected: list[str]


def _ingest(store: Store, decoded: _Decoded, paths: PathCap, now_us: int) -> _Outcome:
    writes = _writes(decoded.spans, paths, now_us)
    valid = [write for write in writes if isinstance(write, SpanWrite)]
    results = iter(store.ingest_spans(valid) if valid else [])
    log_ids: list[str] = []
    rejected: list[str] = []
    for write in writes:
        if isinstance(write, str):
            rejected.append(write)
            continue
        result = next(results)
        if isinstance(result, StoreError):
            rejected.append(f"log {write.log.request.log_id}: {result}")
        else:
            log_ids.append(result)
    return _Outcome(log_ids, rejected)


# --- answers -----------------------------------------------------------------------------------


def _status_protobuf(code: int, message: str) -> bytes:
    """A google.rpc.Status (code, message), encoded by hand: two fields need no dependency."""
    text = message.encode("utf-8")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _error(status: int, message: str, protobuf: bool) -> Response:
    if protobuf:
        return Response(
            _status_protobuf(_INVALID_ARGUMENT, message), status_code=status, media_type=_PROTOBUF
        )
    body = dump_json({"code": _INVALID_ARGUMENT, "message": message, "detail": message})
    return Response(body, status_code=status, media_type=_JSON)


def _message(rejected: list[str]) -> str:
    shown = "; ".join(rejected[:_MAX_ERROR_REASONS])
    more = len(rejected) - _MAX_ERROR_REASONS
    return f"{len(rejected)} span(s) not stored: {shown}" + (
        f"; and {more} more" if more > 0 else ""
    )


def _export_response(outcome: _Outcome, protobuf: bool) -> Response:
    if protobuf:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTracePartialSuccess,
            ExportTraceServiceResponse,
        )

        answer = ExportTraceServiceResponse()
        if outcome.rejected:
            answer.partial_success.CopyFrom(
                ExportTracePartialSuccess(
                    rejected_spans=len(outcome.rejected), error_message=_message(outcome.rejected)
                )
            )
        return Response(answer.SerializeToString(), media_type=_PROTOBUF)
    return _json_answer({}, outcome)


def _humanloop_response(outcome: _Outcome) -> Response:
    return _json_answer({"records": outcome.log_ids}, outcome)


def _json_answer(body: dict[str, Any], outcome: _Outcome) -> Response:
    """`body`, with OTLP-JSON's `partialSuccess` when some span was not stored."""
    if outcome.rejected:
        body["partialSuccess"] = {
            "rejectedSpans": len(outcome.rejected),
            "errorMessage": _message(outcome.rejected),
        }
    return Response(dump_json(body), media_type=_JSON)


# --- routes ------------------------------------------------------------------------------------


def _wants_protobuf(request: Request) -> bool:
    return _media_type(request.headers.get("content-type")) in _PROTOBUF_TYPES


def otlp_router(store: Store, *, max_paths: int | None = None) -> APIRouter:
    """The OTLP routes over `store`; `max_paths` bounds the paths spans may create."""
    router = APIRouter(tags=["otlp"])
    paths = PathCap() if max_paths is None else PathCap(max_paths)

    async def receive(request: Request) -> tuple[_Outcome | None, Response | None]:
        protobuf = _wants_protobuf(request)
        body = await request.body()
        content_type = _media_type(request.headers.get("content-type"))
        encoding = request.headers.get("content-encoding", "")
        now_us = store.now_us()

        def work() -> _Outcome:
            return _ingest(store, _decode(body, content_type, encoding), paths, now_us)

        try:
            return await run_in_threadpool(work), None
        except _Refused as refused:
            return None, _error(refused.status, refused.message, protobuf)

    @router.post(
        OTLP_TRACES_PATH,
        summary="OTLP/HTTP trace export (protobuf or JSON, gzip)",
        response_class=Response,
    )
    async def export_traces(request: Request) -> Response:
        outcome, refused = await receive(request)
        if refused is not None:
            return refused
        assert outcome is not None
        return _export_response(outcome, _wants_protobuf(request))

    @router.post(
        HUMANLOOP_TRACES_PATH,
        summary="Humanloop's OTLP import: spans of the Humanloop SDK's decorators",
        response_class=Response,
    )
    async def import_traces(request: Request) -> Response:
        outcome, refused = await receive(request)
        if refused is not None:
            return refused
        assert outcome is not None
        return _humanloop_response(outcome)

    async def dropped(request: Request) -> Response:
        await request.body()
        if _wants_protobuf(request):
            return Response(b"", media_type=_PROTOBUF)
        return Response(b"{}", media_type=_JSON)

    for path in OTLP_DROPPED_PATHS:
        router.add_api_route(
            path,
            dropped,
            methods=["POST"],
            summary="OTLP export of another signal: accepted and dropped",
            response_class=Response,
        )
    return router
