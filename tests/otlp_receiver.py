"""A tiny OTLP/HTTP traces receiver on loopback for the export tests: it gunzips and decodes
each request with opentelemetry-proto, keeps the spans and the request headers, and answers
with the statuses it is scripted to (then 200), or 503 while it is `down`, or holds requests
until released."""

from __future__ import annotations

import contextlib
import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["Receiver", "attributes_of"]


def attributes_of(item: Any) -> dict[str, Any]:
    """A span's (or event's, or resource's) attributes as plain values."""
    found: dict[str, Any] = {}
    for entry in item.attributes:
        value = entry.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            found[entry.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            found[entry.key] = getattr(value, kind) if kind else None
    return found


class Receiver:
    def __init__(self, statuses: list[int] | None = None, hold: bool = False) -> None:
        self.statuses = list(statuses or [])  # answered first, in order, then 200
        self.hold = hold  # requests wait until `release()`
        self.down = False  # while set, every request is answered 503 (an outage)
        self.released = threading.Event()
        self.requested = threading.Event()  # a request arrived (held or not)
        self.requests: list[dict[str, str]] = []  # each request's headers
        self.resources: list[dict[str, Any]] = []
        self.spans: list[Span] = []
        self._lock = threading.Lock()
        self._got_spans = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # a short poll: stopping the receiver (every test's teardown) takes that long
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        body = handler.rfile.read(length)
        self.requested.set()
        if self.hold:
            self.released.wait(60)
        with self._lock:
            self.requests.append({k.lower(): v for k, v in handler.headers.items()})
            scripted = self.statuses.pop(0) if self.statuses else 200
            status = 503 if self.down else scripted
            if status == 200:
                raw = gzip.decompress(body) if handler.headers.get("Content-Encoding") else body
                request = ExportTraceServiceRequest.FromString(raw)
                for resource_spans in request.resource_spans:
                    self.resources.append(attributes_of(resource_spans.resource))
                    for scope_spans in resource_spans.scope_spans:
                        self.spans.extend(scope_spans.spans)
                self._got_spans.notify_all()
        answer = ExportTraceServiceResponse().SerializeToString() if status == 200 else b"no"
        # a client that gave up on a held request has gone: nobody to answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.send_response(status)
            if status != 200:
                handler.send_header("Retry-After", "0")
            handler.send_header("Content-Type", "application/x-protobuf")
            handler.send_header("Content-Length", str(len(answer)))
            handler.end_headers()
            handler.wfile.write(answer)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Span]:
        """The spans received, once there are at least `count` (an event, not a sleep)."""
        with self._lock:
            self._got_spans.wait_for(lambda: len(self.spans) >= count, timeout)
            return list(self.spans)

    def by_name(self) -> dict[str, Span]:
        with self._lock:
            return {span.name: span for span in self.spans}

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[Span]:
        return iter(self.wait_for(0))
