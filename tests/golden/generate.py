"""Capture the golden OTLP payloads from real producers (run by hand, offline; not by the suite).

    python -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-common \
        pydantic-ai-slim anthropic openinference-instrumentation-langchain langchain-core
    /tmp/golden-venv/bin/python tests/golden/generate.py

Each producer runs under a private TracerProvider with counting ids and a fixed clock for
nothing but the ids (times are the producers' own), and its finished spans are encoded by the
OpenTelemetry exporter's own OTLP encoder into `<name>.otlp.pb` beside this file, in the order
an exporter sends them (as they end). tests/test_golden_otlp.py asserts each as a tree; the
suite needs none of these packages. The versions used are written into `VERSIONS.txt`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

HERE = Path(__file__).resolve().parent


class CountingIds(IdGenerator):
    def __init__(self, base: int) -> None:
        self._traces = itertools.count((base << 64) + 1)
        self._spans = itertools.count((base << 32) + 1)

    def generate_span_id(self) -> int:
        return next(self._spans)

    def generate_trace_id(self) -> int:
        return next(self._traces)


def capture(name: str, base: int, program: Callable[[TracerProvider], None]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"golden-{name}"}), id_generator=CountingIds(base)
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    program(provider)
    provider.shutdown()
    spans: list[ReadableSpan] = list(exporter.get_finished_spans())
    (HERE / f"{name}.otlp.pb").write_bytes(encode_spans(spans).SerializeToString())
    print(f"{name}: {len(spans)} spans: {[span.name for span in spans]}")


# --- an OpenTelemetry SDK program with GenAI attributes ----------------------------------------


def otel_genai(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("golden.genai", "1.0")
    with tracer.start_as_current_span(
        "invoke_agent travel",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "travel",
            "gen_ai.conversation.id": "conv-7",
        },
    ):
        with tracer.start_as_current_span(
            "chat gpt-4o",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.request.temperature": 0.1,
                "gen_ai.usage.input_tokens": 812,
                "gen_ai.usage.output_tokens": 41,
                "gen_ai.usage.cache_read.input_tokens": 512,
                "gen_ai.response.finish_reasons": ["tool_calls"],
                "gen_ai.system_instructions": json.dumps(
                    [{"type": "text", "content": "You plan trips."}]
                ),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "Lisbon in May?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "id": "call_w",
                                    "name": "weather",
                                    "arguments": {"city": "Lisbon", "month": 5},
                                }
                            ],
                            "finish_reason": "tool_calls",
                        }
                    ]
                ),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool weather",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "weather",
                "gen_ai.tool.call.id": "call_w",
                "gen_ai.tool.call.arguments": '{"city": "Lisbon", "month": 5}',
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                raise ConnectionError("weather service down")
            except ConnectionError as error:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)))


# --- pydantic-ai with its TestModel and a tool -------------------------------------------------


def pydantic_ai(provider: TracerProvider) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.capabilities.instrumentation import Instrumentation
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.test import TestModel

    agent = Agent(
        TestModel(),
        name="forecaster",
        instructions="Answer with the forecast.",
        capabilities=[Instrumentation(settings=InstrumentationSettings(tracer_provider=provider))],
    )

    @agent.tool_plain
    def forecast(city: str) -> str:
        """The forecast for a city."""
        return f"sunny in {city}"

    result = agent.run_sync("What is the weather in Oslo?")
    print("pydantic-ai output:", result.output)


# --- the Anthropic SDK's own spans, behind a mock transport ----------------------------------


def anthropic_sdk(provider: TracerProvider) -> None:
    import anthropic
    import httpx2

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            json={
                "id": "msg_01golden",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": "Bring an umbrella."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "output_tokens": 6,
                    "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0,
                },
            },
        )

    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
        open_telemetry={"tracer_provider": provider, "traces": {"content_mode": "content"}},
    )
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=128,
        system="You are terse.",
        messages=[{"role": "user", "content": "Rain in London tomorrow?"}],
    )


# --- an OpenInference LangChain run with a fake chat model -----------------------------------


def langchain_openinference(provider: TracerProvider) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from openinference.instrumentation.langchain import LangChainInstrumentor

    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        prompt = ChatPromptTemplate.from_messages(
            [("system", "You translate to French."), ("user", "{text}")]
        )
        chain = prompt | FakeListChatModel(responses=["Bonjour le monde"]) | StrOutputParser()
        print("langchain output:", chain.invoke({"text": "Hello world"}))
    finally:
        instrumentor.uninstrument()


def main() -> None:
    capture("otel_genai", 1, otel_genai)
    capture("pydantic_ai", 2, pydantic_ai)
    capture("anthropic", 3, anthropic_sdk)
    capture("langchain_openinference", 4, langchain_openinference)
    packages = [
        "opentelemetry-sdk",
        "pydantic-ai-slim",
        "anthropic",
        "langchain-core",
        "openinference-instrumentation-langchain",
    ]
    (HERE / "VERSIONS.txt").write_text("".join(f"{name}=={version(name)}\n" for name in packages))
    asyncio.get_event_loop_policy()  # nothing left running


if __name__ == "__main__":
    main()
