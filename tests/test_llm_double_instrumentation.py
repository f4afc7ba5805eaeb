"""One LLM call seen by two instrumentations is one log: `flowtrace.instrument_openai()` and a
real OpenTelemetry instrumentor (`opentelemetry-instrumentation-openai-v2`, emitting GenAI
spans into a provider with `flowtrace.otel`'s processor, or into `flowtrace.otel`'s private
provider), in both orders of instrumenting; and the Anthropic SDK's own spans. The direct
record wins: its log says what the direct instrumentation saw (request id, streamed, time to
first chunk, early exit). A call only the instrumentor sees, and the user's own spans, are
kept as they are."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

import flowtrace
import flowtrace.otel
from flowtrace._llm._anthropic import instrument_anthropic
from flowtrace._llm._openai import instrument_openai
from flowtrace.testing import capture_logs
from tests.fake_llm import FakeLLM, chat_body, chat_chunks, json_reply, sse_reply
from tests.llm_util import fake, recorded
from tests.otel_llm_calls import HELLO, MODEL, calls, provider_via
from tests.scriptutil import run_script, script_env

__all__ = ["fake", "recorded"]

ROOT = Path(__file__).resolve().parents[1]


def _replies(fake: FakeLLM) -> None:
    """What the fake answers `calls` (its last call gets the default JSON answer)."""
    fake.reply(
        json_reply(chat_body("ok")),
        sse_reply(chat_chunks(["o", "k"])),
        sse_reply(chat_chunks(["one ", "two"])),
    )


def _assert_one_log_per_call(records: list[dict[str, Any]], requests: int) -> None:
    """Each of the 4 calls is one prompt log (3 direct records, one of the instrumentor's
    span), under the flow or the user's own span, which is kept too."""
    assert requests == 4  # the requests are not repeated either
    by_path = {}
    for record in records:
        by_path.setdefault(record["path"], []).append(record)
    (agent,) = by_path.pop("agent")
    (step,) = by_path.pop("flow/user step")  # the user's own span: never dropped
    prompts = by_path.pop(f"prompt/chat {MODEL}")
    assert by_path == {}
    assert len(prompts) == 4, [p["metadata"].get("otel", {}).get("scope") for p in prompts]
    direct = [p for p in prompts if "flowtrace.request_id" in p["metadata"]]
    (instrumentor_only,) = [p for p in prompts if p not in direct]
    assert len(direct) == 3  # the direct record won each of the instrumented client's calls
    first, streamed, left_early = sorted(direct, key=lambda p: p["start_time"])
    assert first["trace_parent_id"] == step["log_id"]
    assert step["trace_parent_id"] == agent["log_id"]
    for prompt in (streamed, left_early, instrumentor_only):
        assert prompt["trace_parent_id"] == agent["log_id"]
    assert first["metadata"]["gen_ai.request.stream"] is False
    assert streamed["metadata"]["gen_ai.request.stream"] is True
    assert streamed["metadata"]["gen_ai.response.time_to_first_chunk"] > 0
    assert streamed["output_message"]["content"] == "ok"
    assert left_early["metadata"]["flowtrace"]["ended"] == "closed early"
    assert left_early["output_message"]["content"] == "one "
    assert instrumentor_only["metadata"]["gen_ai.system"] == "openai"  # the instrumentor's


@pytest.fixture
def instrumentor() -> Iterator[OpenAIInstrumentor]:
    instrumentor = OpenAIInstrumentor()
    yield instrumentor
    instrumentor.uninstrument()


@pytest.mark.parametrize("via", ["processor", "private provider"])
def test_an_instrumentor_outside_the_direct_instrumentation(
    fake: FakeLLM, recorded: object, instrumentor: OpenAIInstrumentor, via: str
) -> None:
    """flowtrace's patch first, the instrumentor's after (outside it): the instrumentor's span
    is kept at its start, and the direct record made inside it becomes its log."""
    client = instrument_openai(openai.OpenAI(api_key="k", base_url=fake.openai_url))
    other = openai.OpenAI(api_key="k", base_url=fake.openai_url)
    provider = provider_via(via)
    instrumentor.instrument(tracer_provider=provider)
    _replies(fake)
    with capture_logs() as captured:
        calls(client, other, provider)
    _assert_one_log_per_call(captured.records, len(fake.requests))


_INSTRUMENTOR_FIRST = """
import json, sys
import openai
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
import flowtrace, flowtrace.otel
from flowtrace.testing import capture_logs
from tests.otel_llm_calls import calls, provider_via

provider = provider_via(sys.argv[2])
OpenAIInstrumentor().instrument(tracer_provider=provider)  # first: flowtrace's patch is outside
client = flowtrace.instrument_openai(openai.OpenAI(api_key="k", base_url=sys.argv[1]))
other = openai.OpenAI(api_key="k", base_url=sys.argv[1])
with capture_logs() as captured:
    calls(client, other, provider)
print(json.dumps(captured.records))
"""


def test_an_instrumentor_inside_the_direct_instrumentation(fake: FakeLLM) -> None:
    """The instrumentor first, flowtrace's patch after (outside it), in a fresh interpreter
    (this one's SDK is patched already): the instrumentor's span starts while the direct call
    runs, and is dropped. (The private provider's processor makes the same check.)"""
    _replies(fake)
    env = script_env()
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{ROOT}"
    done = run_script(_INSTRUMENTOR_FIRST, env, fake.openai_url, "processor")
    assert done.returncode == 0, done.stderr
    _assert_one_log_per_call(json.loads(done.stdout), len(fake.requests))


@pytest.mark.parametrize("via", ["processor", "private provider"])
def test_the_anthropic_sdks_own_spans_of_a_directly_instrumented_client(
    fake: FakeLLM, recorded: object, via: str
) -> None:
    """The Anthropic SDK traces its own calls (`open_telemetry=`): its span starts inside
    the call flowtrace's patch opened, and is dropped; a client the SDK traces but flowtrace
    does not instrument keeps its span's log."""
    provider = provider_via(via)
    option: Any = {"tracer_provider": provider, "traces": True}
    client = instrument_anthropic(
        anthropic.Anthropic(api_key="k", base_url=fake.anthropic_url, open_telemetry=option)
    )
    other = anthropic.Anthropic(api_key="k", base_url=fake.anthropic_url, open_telemetry=option)
    ask: Any = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": HELLO}
    with capture_logs() as captured, flowtrace.flow("agent"):
        client.messages.create(**ask)
        for _ in client.messages.create(**ask, stream=True):
            pass
        with client.messages.stream(**ask) as stream:
            assert stream.get_final_text() == "ok"
        other.messages.create(**ask)
    assert len(fake.requests) == 4
    (agent,) = captured.by_kind("flow")
    prompts = captured.by_kind("prompt")
    scopes = sorted(p["metadata"]["otel"]["scope"] for p in prompts)
    assert scopes == ["com.anthropic.sdk.python"] + ["flowtrace.llm"] * 3
    assert all(p["trace_parent_id"] == agent["log_id"] for p in prompts)
