"""OTLP payloads for tests, made by the real OpenTelemetry SDK and its OTLP encoder.

`record_spans` runs a function under a private TracerProvider with deterministic ids and
returns its finished spans; `protobuf`, `otlp_json` and `proto3_json` encode them in the three
spellings a server meets (protobuf; OTLP-JSON with hex ids and integer enums; proto3-JSON as
`MessageToJson` writes it, which the Humanloop SDK sends). `tree` reads a stored trace back as
nested (path, kind, children) tuples for comparisons.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict, MessageToJson
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Tracer

__all__ = [
    "CountingIds",
    "gzipped",
    "otlp_json",
    "proto3_json",
    "protobuf",
    "record_spans",
    "tree",
]


class CountingIds(IdGenerator):
    """Ids from counters (a trace per `base`): the same program gives the same ids."""

    def __init__(self, base: int = 1) -> None:
        self._traces = itertools.count(base << 64)
        self._spans = itertools.count(base << 32)

    def generate_span_id(self) -> int:
        return next(self._spans) + 1

    def generate_trace_id(self) -> int:
        return next(self._traces) + 1


def record_spans(program: Callable[[Tracer], None], base: int = 1) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tests"}), id_generator=CountingIds(base)
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    program(provider.get_tracer("tests.otlp", "1.0"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def protobuf(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


def proto3_json(spans: Sequence[ReadableSpan]) -> str:
    return str(MessageToJson(encode_spans(spans)))


def otlp_json(spans: Sequence[ReadableSpan]) -> str:
    """OTLP-JSON as the spec writes it: hex ids, integer enums, camelCase."""
    document = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource in document.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document)


def gzipped(body: bytes | str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return gzip.compress(data, mtime=0)


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


def tree(record: dict[str, Any]) -> tuple[Any, ...]:
    """A stored record (GET /logs/{id}) as (path, kind, placeholder, children) tuples."""
    kind = next(k for k in ("flow", "prompt", "tool") if k in record)
    children = tuple(tree(child) for child in record.get("trace_children", ()))
    return (record[kind]["path"], kind, bool(record.get("placeholder")), children)
