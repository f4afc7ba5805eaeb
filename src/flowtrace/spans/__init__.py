"""OpenTelemetry spans as flowtrace logs: the neutral span (`Span`), the one mapping from spans
to logs (`map_span`), and the OTLP decoders (`flowtrace.spans._otlp_decode`, which import
`opentelemetry-proto` only when protobuf is decoded).

The mapping is pure and needs neither protobuf nor the server: the server's OTLP ingest and the
in-program OpenTelemetry bridge use it alike, so a trace looks the same whichever way it came.
"""

from __future__ import annotations

from flowtrace.spans._mapping import OTEL_METADATA_KEY, MappedLog, PathCap, map_span, map_spans
from flowtrace.spans._model import Span, SpanEvent, span_from_sdk

__all__ = [
    "OTEL_METADATA_KEY",
    "MappedLog",
    "PathCap",
    "Span",
    "SpanEvent",
    "map_span",
    "map_spans",
    "span_from_sdk",
]
