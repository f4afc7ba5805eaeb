"""`flowtrace.instrument_anthropic()`: the real Anthropic SDK against a fake server on loopback:
`messages.create` (JSON and `stream=True`) and `messages.stream()`, sync and async."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import anthropic
import pytest

import flowtrace
from tests.fake_llm import (
    FakeLLM,
    anthropic_body,
    anthropic_events,
    json_reply,
    sse_reply,
)
from tests.llm_util import Recorded, fake, metadata, recorded

__all__ = ["fake", "recorded"]

MODEL = "claude-sonnet-4-5"
WEATHER = {"id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
WEATHER_CALL = {
    "id": "toolu_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
CONVERSATION: list[Any] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": [{"type": "tool_use", **WEATHER}]},
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21C"},
            {"type": "text", "text": "Thanks, summarise."},
        ],
    },
]


def client_of(fake: FakeLLM, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=fake.anthropic_url, **options)


def async_client_of(fake: FakeLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="sk-ant-test", base_url=fake.anthropic_url)


def test_a_call_with_system_tools_and_tool_results(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake))
    fake.reply(json_reply(anthropic_body("Checking.", tool_use=WEATHER), **{"request-id": "req_7"}))
    plain = client_of(fake)
    client.messages.create(
        model=MODEL, max_tokens=256, system="Be brief.", messages=CONVERSATION, tools=TOOLS
    )
    plain.messages.create(
        model=MODEL, max_tokens=256, system="Be brief.", messages=CONVERSATION, tools=TOOLS
    )
    assert fake.requests[0].body == fake.requests[1].body  # the request as sent without us
    log = recorded.one()
    assert log.kind == "prompt"
    assert log.fields["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [WEATHER_CALL]},
        {"role": "tool", "content": "Sunny, 21C", "tool_call_id": "toolu_1"},
        {"role": "user", "content": "Thanks, summarise."},
    ]
    assert log.fields["output_message"] == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [WEATHER_CALL],
    }
    assert log.fields["finish_reason"] == "tool_use"
    # Anthropic counts cached input apart; the log counts it in, as the contract does
    assert log.fields["prompt_tokens"] == 20 + 5 + 3
    assert (log.fields["cache_read_tokens"], log.fields["cache_write_tokens"]) == (5, 3)
    assert log.fields["output_tokens"] == 7
    assert log.kernel["provider"] == "anthropic"
    assert log.kernel["max_tokens"] == 256
    assert log.kernel["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": TOOLS[0]["input_schema"],
        }
    ]
    assert metadata(log)["flowtrace.request_id"] == "req_7"


def test_stream_true_joins_text_and_tool_json_deltas(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake))
    fake.reply(sse_reply(anthropic_events(["Let me ", "check."], tool_use=WEATHER)))
    events = list(
        client.messages.create(model=MODEL, max_tokens=256, messages=CONVERSATION, stream=True)
    )
    assert events[0].type == "message_start"
    log = recorded.one()
    assert log.fields["output_message"] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [WEATHER_CALL],
    }
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (20, 11)
    assert log.fields["finish_reason"] == "tool_use"
    assert metadata(log)["gen_ai.request.stream"] is True
    assert metadata(log)["gen_ai.response.time_to_first_chunk"] > 0


def test_messages_stream_helper_sync_and_async(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake))
    fake.reply(sse_reply(anthropic_events(["Hel", "lo"])))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=CONVERSATION[:1]) as stream:
        assert recorded.calls == []
        assert stream.get_final_text() == "Hello"
    aclient = flowtrace.instrument_anthropic(async_client_of(fake))

    async def run() -> str:
        fake.reply(sse_reply(anthropic_events(["Bon", "jour"])))
        async with aclient.messages.stream(
            model=MODEL, max_tokens=64, messages=CONVERSATION[:1]
        ) as stream:
            return await stream.get_final_text()

    assert asyncio.run(run()) == "Bonjour"
    first, second = recorded.logs
    assert first.fields["output_message"] == {"role": "assistant", "content": "Hello"}
    assert second.fields["output_message"] == {"role": "assistant", "content": "Bonjour"}
    assert first.fields["finish_reason"] == second.fields["finish_reason"] == "end_turn"
    assert "ended" not in metadata(second).get("flowtrace", {})


def test_a_stream_left_early_is_closed_early_with_what_arrived(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake))
    fake.reply(sse_reply(anthropic_events(["one ", "two ", "three"])))
    stream = client.messages.create(model=MODEL, max_tokens=64, messages=CONVERSATION, stream=True)
    for event in stream:
        if event.type == "content_block_delta":
            break
    del stream, event
    gc.collect()
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "one "}
    assert metadata(log)["flowtrace"]["ended"] == "closed early"
    assert "finish_reason" not in log.fields


def test_an_error_event_mid_stream_and_an_error_status(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake, max_retries=0))
    events = anthropic_events(["half"], end=False)[:4]
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake.reply(sse_reply([*events, ("error", overloaded)]))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        for _ in client.messages.create(
            model=MODEL, max_tokens=64, messages=CONVERSATION, stream=True
        ):
            pass
    bad = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens"}}
    fake.reply(json_reply(bad, status=400, **{"request-id": "req_bad"}))
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=64, messages=CONVERSATION)
    assert raised.value.status_code == 400
    mid_stream, refused = recorded.logs
    assert mid_stream.fields["output_message"] == {"role": "assistant", "content": "half"}
    assert "Overloaded" in mid_stream.fields["error"]
    assert refused.fields["error"].startswith("anthropic.BadRequestError: Error code: 400")
    assert metadata(refused)["http.response.status_code"] == 400
    assert metadata(refused)["flowtrace.request_id"] == "req_bad"


def test_a_retried_overload_is_one_log(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake, max_retries=1))
    busy = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    fake.reply(json_reply(busy, status=429, **{"retry-after-ms": "1"}))
    fake.reply(json_reply(anthropic_body("done")))
    client.messages.create(model=MODEL, max_tokens=64, messages=CONVERSATION)
    log = recorded.one()
    assert metadata(log)["http.request.resend_count"] == 1
    assert log.fields["output_message"] == {"role": "assistant", "content": "done"}


def test_async_create_with_raw_response_and_copies(fake: FakeLLM, recorded: Recorded) -> None:
    client = flowtrace.instrument_anthropic(async_client_of(fake))

    async def run() -> None:
        await client.messages.create(model=MODEL, max_tokens=64, messages=CONVERSATION)
        raw = await client.with_options(timeout=9).messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=CONVERSATION
        )
        assert (await raw.parse()).content[0].text == "ok"  # type: ignore[union-attr]
        await async_client_of(fake).messages.create(
            model=MODEL, max_tokens=64, messages=CONVERSATION
        )

    asyncio.run(run())
    assert [log.fields["output_message"]["content"] for log in recorded.logs] == ["ok", "ok"]


def test_every_client_and_the_parent_flow(fake: FakeLLM, recorded: Recorded) -> None:
    flowtrace.instrument_anthropic()
    with flowtrace.flow("agents/claude") as agent:
        client_of(fake).messages.create(model=MODEL, max_tokens=64, messages=CONVERSATION)
    ((_, parent),) = recorded.calls
    assert parent is agent


def test_leaving_the_stream_helper_early_closes_the_call_then(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = flowtrace.instrument_anthropic(client_of(fake))
    fake.reply(sse_reply(anthropic_events(["one ", "two ", "three"])))
    with client.messages.stream(model=MODEL, max_tokens=64, messages=CONVERSATION) as stream:
        for text in stream.text_stream:
            if text == "two ":
                break
        assert recorded.calls == []
    log = recorded.one()  # the helper's exit closed the stream: logged then, not at collection
    assert log.fields["output_message"] == {"role": "assistant", "content": "one two "}
    assert metadata(log)["flowtrace"]["ended"] == "closed early"
