"""One logical LLM call, from the SDK method's entry to its end, and the span it becomes.

The caller's side does only what cannot wait: a shallow snapshot of the request (the user may
append to their message list right after the call), the clock, the parent log, the attempt
count, the response's status and request id, references to the parsed body or stream chunks.
Everything else, reading the wire JSON into GenAI attributes, runs when the span's attributes
are first read: on the worker, in the span-to-log mapping (`_LazyAttributes`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from flowtrace._context import current_log
from flowtrace._contract import ENDED_CLOSED_EARLY, FLOWTRACE_ENDED_ATTRIBUTE
from flowtrace._guard import internal_error
from flowtrace._span_logs import record_span
from flowtrace.spans import _genai as gen_ai
from flowtrace.spans._model import Span, SpanEvent

__all__ = ["Builder", "LlmCall", "snapshot_request"]

#: Reads a finished call into its span's attributes (runs on the worker).
Builder = Callable[["LlmCall"], dict[str, Any]]

#: Request keys whose list values are copied at call time (the user may mutate them after).
_COPIED_LISTS: Final = ("messages", "input", "tools", "system", "stop", "stop_sequences")

#: The provider's request id (no GenAI convention names it): kept in the log's metadata.
REQUEST_ID_ATTRIBUTE: Final = "flowtrace.request_id"

#: Span ids of our own generator: a user's `random.seed(42)` must not repeat them run after run
#: (a log id seen again is a replay to the store); reseeded in a forked child for the same reason.
_ids = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)


def snapshot_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the call sent it: a shallow copy, its message and tool lists copied."""
    request = dict(kwargs)
    for key in _COPIED_LISTS:
        value = request.get(key)
        if type(value) is list:
            request[key] = list(value)
    return request


def _no_response() -> None:
    return None


class LlmCall:
    """The facts of one call as they arrive; `end` (once) turns them into a span."""

    __slots__ = (
        "body",
        "build",
        "chunks",
        "end_ns",
        "ended_as",
        "error",
        "first_chunk_ns",
        "operation",
        "parent",
        "provider",
        "raw_body",
        "request",
        "request_id",
        "response",
        "retries",
        "start_ns",
        "status_code",
        "streamed",
    )

    def __init__(
        self, provider: str, operation: str, build: Builder, request: dict[str, Any], streamed: bool
    ) -> None:
        self.provider = provider
        self.operation = operation
        self.build = build
        self.request = request
        self.streamed = streamed
        self.parent = current_log()
        self.start_ns = time.time_ns()
        self.first_chunk_ns = 0
        self.end_ns = 0
        self.retries = 0
        self.status_code = 0
        self.request_id: str | None = None
        self.response: Callable[[], Any] = _no_response  # a weak reference, once there is one
        self.body: Any = None  # the parsed JSON body (a call not streamed)
        self.raw_body: bytes | None = None  # the body's bytes, when nothing parsed it
        self.chunks: list[Any] = []  # the parsed JSON of each stream event
        self.error: tuple[str, str] | None = None  # (qualified type, message)
        self.ended_as: str | None = None

    @property
    def done(self) -> bool:
        return self.end_ns != 0

    def add_chunk(self, data: Any) -> None:
        if not self.chunks:
            self.first_chunk_ns = time.time_ns()
        self.chunks.append(data)

    def fail(self, exc: BaseException) -> None:
        """The call raised `exc` (the user's exception, re-raised by the caller untouched)."""
        kind = type(exc)
        self.error = (f"{kind.__module__}.{kind.__qualname__}", str(exc))
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            self.status_code = status
        request_id = getattr(exc, "request_id", None)
        if isinstance(request_id, str):
            self.request_id = request_id
        self.end()

    def restart(self) -> None:
        """The request is sent now (a stream manager opened before its `with`)."""
        self.start_ns = time.time_ns()

    def abandon(self) -> None:
        """The response was collected with the call still open: a stream never read to its
        end was closed early; a body read without the SDK's parse ends without an output."""
        if self.streamed:
            self.close_early()
        else:
            self.end()

    def close_early(self) -> None:
        if not self.end_ns:  # what the span says is set before its end, never after
            self.ended_as = ENDED_CLOSED_EARLY
            self.end()

    def end(self) -> None:
        if self.end_ns:
            return  # a stream's close after its end, a finalizer after a close
        self.end_ns = time.time_ns()
        try:
            record_span(self.span(), self.parent)
        except Exception as exc:
            internal_error("llm.deliver", exc)

    def span(self) -> Span:
        events: tuple[SpanEvent, ...] = ()
        if self.error is not None:
            kind, message = self.error
            events = (
                SpanEvent(
                    "exception",
                    self.end_ns,
                    {"exception.type": kind, "exception.message": message},
                ),
            )
        model = self.request.get("model")
        return Span(
            trace_id=f"{_ids.getrandbits(128):032x}",
            span_id=f"{_ids.getrandbits(64):016x}",
            name=f"{self.operation} {model}" if isinstance(model, str) else self.operation,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            kind="client",
            attributes=_LazyAttributes(self),
            events=events,
            status_code="error" if self.error is not None else "unset",
            status_message=self.error[1] if self.error is not None else "",
            scope_name="flowtrace.llm",
        )

    def common_attributes(self) -> dict[str, Any]:
        """What every provider's span says about the call itself."""
        attributes: dict[str, Any] = {
            gen_ai.OPERATION_NAME: self.operation,
            gen_ai.PROVIDER_NAME: self.provider,
            gen_ai.REQUEST_STREAM: self.streamed,
        }
        if self.first_chunk_ns:
            seconds = (self.first_chunk_ns - self.start_ns) / 1e9
            attributes[gen_ai.RESPONSE_TIME_TO_FIRST_CHUNK] = seconds
        if self.retries:
            attributes["http.request.resend_count"] = self.retries
        if self.status_code:
            attributes["http.response.status_code"] = self.status_code
        if self.request_id:
            attributes[REQUEST_ID_ATTRIBUTE] = self.request_id
        if self.error is not None:
            attributes["error.type"] = self.error[0]
        if self.ended_as is not None:
            attributes[FLOWTRACE_ENDED_ATTRIBUTE] = self.ended_as
        return attributes


class _LazyAttributes(Mapping[str, Any]):
    """A call's attributes, built from its wire JSON when first read (on the worker)."""

    __slots__ = ("_built", "_call")

    def __init__(self, call: LlmCall) -> None:
        self._call: LlmCall | None = call
        self._built: dict[str, Any] | None = None

    def _attributes(self) -> dict[str, Any]:
        built = self._built
        if built is None:
            call = self._call
            assert call is not None
            built = call.common_attributes()
            try:
                built.update(call.build(call))
            except Exception as exc:  # a body no builder expected: the call's own facts stay
                internal_error("llm.attributes", exc)
            self._built, self._call = built, None
        return built

    def __getitem__(self, key: str) -> Any:
        return self._attributes()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._attributes())

    def __len__(self) -> int:
        return len(self._attributes())
