"""OpenTelemetry spans inside a flow become its child logs (extra `otel`: opentelemetry-sdk).

Nothing global is touched unless asked:

- `span_processor(should_capture=None)`: a span processor for your own `TracerProvider`. It
  keeps only spans started inside a flow that look like LLM or agent work: GenAI
  (`gen_ai.*`), OpenInference (`openinference.*`, `llm.*`) or OpenLLMetry (`traceloop.*`)
  attributes, or a known LLM instrumentation scope (pydantic-ai, OpenInference, OpenLLMetry's
  `opentelemetry.instrumentation.openai` and peers), plus any span `should_capture(span)` says
  yes to. Everything else (HTTP, database spans...) is left to your exporters, untouched.
- `tracer_provider()`: a private provider to hand to a producer (pydantic-ai's
  `InstrumentationSettings(tracer_provider=...)`, `Instrumentor().instrument(tracer_provider=
  ...)`): it records every span it makes, inside a flow or not (outside: a trace of its own).
- `install_global()`: the explicit opt-in. Joins the global provider when one is set (adds
  the processor to it), else sets a provider of ours as the global one.

Parenting: a kept span's log goes under the innermost of its own kept parent span's log and
the current flow; a dropped span is transparent (its kept children go under the log above
it). A kept span is the current log while it runs, so a flow opened inside it nests under its
log. Spans are mapped on the worker by the server's OTLP mapping (`spans._mapping`): a trace
looks the same whether it came in over OTLP or from inside the program.

One call, one log: a call of a client `flowtrace.instrument_openai()` /
`instrument_anthropic()` records is logged once even when an instrumentor's span of it reaches
this processor, and the direct record wins, whichever was instrumented first (an LLM span
started while the direct call runs is dropped; an LLM call's span kept at its start becomes
the direct record's log). Your own spans, and calls only the instrumentor sees, are kept.

The caller's cost: a few dictionary reads per span started (nothing more for a span that is
not kept); for a kept span, one small log object handed to the pipeline at each end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

try:
    from opentelemetry import trace as trace_api
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace import Span as SdkSpan
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "flowtrace.otel needs the OpenTelemetry SDK: pip install 'flowtrace[otel]'"
    ) from error

from flowtrace import _guard
from flowtrace._context import current_here, get_current, open_ancestor
from flowtrace._llm._hooks import calling
from flowtrace._span_logs import SpanLog, has_open_span_logs, open_span_log, span_parent
from flowtrace.spans import _genai as gen_ai

__all__ = [
    "FlowtraceSpanProcessor",
    "install_global",
    "looks_like_llm_work",
    "span_processor",
    "tracer_provider",
]

#: A user's say on a span at its start: True keeps it (besides what looks like LLM work).
ShouldCapture = Callable[[ReadableSpan], bool]

#: Attribute prefixes of the LLM conventions the mapping reads.
LLM_ATTRIBUTE_PREFIXES: Final = (
    gen_ai.PREFIX,
    "llm.",
    "openinference.",
    "traceloop.",
    "humanloop.",
)

#: Instrumentation scopes (tracer names) of LLM and agent producers, by prefix. Generic
#: instrumentations (`opentelemetry.instrumentation.httpx`, `...fastapi`) are not among them.
LLM_SCOPE_PREFIXES: Final = (
    "pydantic-ai",
    "pydantic_ai",
    "openinference.instrumentation",
    "traceloop",
    "anthropic",
    "openai",
    "gcp.vertex.agent",
    "strands",
    *(
        f"opentelemetry.instrumentation.{name}"
        for name in (
            "openai",
            "anthropic",
            "bedrock",
            "cohere",
            "google_generativeai",
            "groq",
            "langchain",
            "llamaindex",
            "mistralai",
            "ollama",
            "replicate",
            "together",
            "transformers",
            "vertexai",
            "watsonx",
            "crewai",
            "haystack",
            "mcp",
            "agno",
            "alephalpha",
            "sagemaker",
            "writer",
        )
    ),
)


def _has_llm_attributes(attributes: Mapping[str, Any] | None) -> bool:
    if attributes:
        for key in attributes:
            if key.startswith(LLM_ATTRIBUTE_PREFIXES):
                return True
    return False


def looks_like_llm_work(span: ReadableSpan) -> bool:
    """Whether a span is LLM or agent work: by its instrumentation scope or its attributes."""
    scope = span.instrumentation_scope
    if scope is not None and scope.name.startswith(LLM_SCOPE_PREFIXES):
        return True
    return _has_llm_attributes(span.attributes)


def _key(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    return (context.trace_id, context.span_id) if context is not None else (0, 0)


def _hex_ids(key: tuple[int, int], span: ReadableSpan) -> tuple[str, str, str | None]:
    """The span's trace, own and parent span ids as the mapping writes them."""
    parent = span.parent
    return (
        f"{key[0]:032x}",
        f"{key[1]:016x}",
        f"{parent.span_id:016x}" if parent is not None else None,
    )


#: The span this thread last recorded at its end (its processors' on_end run one after the
#: other, on the thread that ended it).
_late = threading.local()


def _maybe_inside_a_flow() -> bool:
    """The cheap check first: most spans of a program are not started inside a flow."""
    return get_current() is not None or has_open_span_logs()  # (a held record counts)


def _inside_a_flow(trace: str, parent: str | None) -> bool:
    """Whether a flow is open here, or the span's parent span is a kept one's."""
    return open_ancestor(current_here()) is not None or span_parent(trace, parent) is not None


#: Spans dropped for a direct record and not ended yet, at most (see `_recorded_directly`).
_MAX_DROPPED_RUNNING: Final = 4096


class FlowtraceSpanProcessor(SpanProcessor):
    """Spans as logs of the current trace (see the module's docstring). `record_all`: every
    span, inside a flow or not (the private provider's); else only LLM and agent work started
    inside a flow (or inside a kept span), and what `should_capture` says yes to.

    A call of a client `flowtrace.instrument_openai()` / `instrument_anthropic()` records is
    one log however many instrumentations see it: the direct record wins. A span that looks
    like LLM work and starts while such a call runs (an instrumentor wrapping the SDK method
    inside flowtrace's) is dropped, transparent; an LLM call's span kept at its start (an
    instrumentor wrapping it outside flowtrace's) gives its log to the direct record made
    inside it (`_span_logs.record_span`)."""

    def __init__(self, should_capture: ShouldCapture | None = None, *, record_all: bool = False):
        self._should_capture = should_capture
        self._record_all = record_all
        self._logs: dict[tuple[int, int], SpanLog] = {}  # open kept spans, by their ids
        # Spans dropped for a direct record of their call, until their end (bounded: some
        # instrumentors never end a span whose stream a helper closed through its response).
        self._recorded_directly: dict[tuple[int, int], None] = {}

    def _looks_kept(self, span: ReadableSpan) -> bool:
        if not _maybe_inside_a_flow():
            return False  # not inside a flow: the user's own exporters have it
        if looks_like_llm_work(span):
            return True
        should_capture = self._should_capture
        return should_capture is not None and bool(should_capture(span))

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        try:
            if not self._record_all and not self._looks_kept(span):
                return
            key = _key(span)
            if calling() and looks_like_llm_work(span):
                self._drop_for_the_direct_record(key)
                return
            trace, span_id, parent = _hex_ids(key, span)
            if not self._record_all and not _inside_a_flow(trace, parent):
                return
            log = open_span_log(trace, span_id, parent, span.name)
            if log is not None:
                log.live = span  # what its log says if the program exits before its end
                log.span_ids = (trace, span_id, parent)  # for a direct record of an LLM call
                self._logs[key] = log
        except Exception as exc:  # the user's should_capture included: never into their code
            _guard.internal_error("otel-span", exc)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            logs = self._logs
            log = logs.pop(_key(span), None) if logs else None
            if log is not None:
                log.end(span)  # read on the worker: an ended span does not change any more
            elif self._recorded_directly and _key(span) in self._recorded_directly:
                del self._recorded_directly[_key(span)]
            elif (
                not self._record_all
                and _maybe_inside_a_flow()
                and _has_llm_attributes(span.attributes)
                and not calling()  # attributes set late on a span of a direct call
            ):
                self._record_late(_key(span), span)
        except Exception as exc:
            _guard.internal_error("otel-span", exc)

    def _drop_for_the_direct_record(self, key: tuple[int, int]) -> None:
        """An LLM span started while a directly instrumented call runs: that call's own record
        wins; the span is transparent, and its end is not recorded late either."""
        dropped = self._recorded_directly
        if len(dropped) >= _MAX_DROPPED_RUNNING:
            dropped.pop(next(iter(dropped)), None)  # the oldest: a span that never ended
        dropped[key] = None

    def _record_late(self, key: tuple[int, int], span: ReadableSpan) -> None:
        """A span whose LLM attributes were set after its start (it was not kept then): its
        log, inside the flow current at its end (flows inside it could not nest under it)."""
        if getattr(_late, "key", None) == key:
            return  # another of flowtrace's processors on this provider recorded it just now
        _late.key = key
        trace, span_id, parent = _hex_ids(key, span)
        if not _inside_a_flow(trace, parent):
            return
        log = open_span_log(trace, span_id, parent, span.name, enter=False)
        if log is not None:
            log.end(span)

    def shutdown(self) -> None:
        pass  # the logs are the pipeline's to deliver (flowtrace.flush, at exit)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # the pipeline flushes on its own (flowtrace.flush)


def span_processor(should_capture: ShouldCapture | None = None) -> FlowtraceSpanProcessor:
    """A processor for your own provider: `provider.add_span_processor(span_processor())`."""
    return FlowtraceSpanProcessor(should_capture)


_lock = threading.Lock()
_private: TracerProvider | None = None
_installed: object | None = None  # the global provider install_global joined (or set)


def tracer_provider() -> TracerProvider:
    """flowtrace's private provider (one per process): every span it makes becomes a log,
    under the current flow, or the root of a trace of its own outside any flow. It is not the
    global provider (see `install_global`)."""
    global _private
    with _lock:
        if _private is None:
            provider = TracerProvider(shutdown_on_exit=False)
            provider.add_span_processor(FlowtraceSpanProcessor(record_all=True))
            _private = provider
        return _private


def install_global(should_capture: ShouldCapture | None = None) -> Any:
    """The explicit opt-in: the global provider's LLM and agent spans inside flows become logs.
    A global SDK provider already set gets the processor (once); with none set, a provider of
    ours (with only the processor) becomes the global one. Returns the global provider."""
    global _installed
    with _lock:
        provider = trace_api.get_tracer_provider()
        if _installed is not None and provider is _installed:
            return provider
        if isinstance(provider, TracerProvider):
            provider.add_span_processor(FlowtraceSpanProcessor(should_capture))
        elif isinstance(provider, trace_api.ProxyTracerProvider):
            ours = TracerProvider()
            ours.add_span_processor(FlowtraceSpanProcessor(should_capture))
            trace_api.set_tracer_provider(ours)
            provider = trace_api.get_tracer_provider()
        else:  # another SDK's provider: it has no span processors to join
            _guard.logger.warning(
                "flowtrace.otel.install_global: the global tracer provider %s is not the "
                "OpenTelemetry SDK's; add flowtrace.otel.span_processor() to it yourself",
                type(provider).__name__,
            )
            return provider
        _installed = provider
        return provider
