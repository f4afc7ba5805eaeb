"""The calls of tests/test_llm_double_instrumentation.py, in a module light enough for the
fresh interpreter its script starts (no pytest, no test module)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import flowtrace
import flowtrace.otel

MODEL = "gpt-4o-mini"
HELLO = [{"role": "user", "content": "Hi"}]


def provider_via(via: str) -> TracerProvider:
    """Where the instrumentor's spans go: the user's provider with flowtrace's processor (it
    keeps LLM work inside flows, and the user's step by `should_capture`), or the private
    provider (it records every span)."""
    if via == "private provider":
        return flowtrace.otel.tracer_provider()
    provider = TracerProvider()
    provider.add_span_processor(flowtrace.otel.span_processor(lambda s: s.name == "user step"))
    return provider


def calls(client: Any, other: Any, provider: TracerProvider) -> None:
    """Inside a flow: a call inside the user's own span, a stream, a stream helper left
    early, and a call of a client only the instrumentor sees."""
    with flowtrace.flow("agent"):
        with provider.get_tracer("user").start_as_current_span("user step"):
            client.chat.completions.create(model=MODEL, messages=HELLO)
        for _ in client.chat.completions.create(model=MODEL, messages=HELLO, stream=True):
            pass
        with client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
            for event in stream:
                if event.type == "content.delta" and event.delta == "one ":
                    break
        other.chat.completions.create(model=MODEL, messages=HELLO)
