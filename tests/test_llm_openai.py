"""`flowtrace.instrument_openai()`: the real OpenAI SDK against a fake server on loopback.

Each instrumented call is one span, mapped by the span-to-log mapping into one prompt log:
messages, tools, output with tool calls, finish reason, tokens, timings, errors. The request
sent and the objects returned are those of an uninstrumented client."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import random
from typing import Any

import openai
import pytest

import flowtrace
from flowtrace._llm._openai import instrument_openai
from flowtrace.spans import map_span
from tests.fake_llm import (
    FakeLLM,
    chat_body,
    chat_chunks,
    json_reply,
    responses_body,
    sse_reply,
    tool_call,
)
from tests.llm_util import Recorded, async_client_of, client_of, fake, metadata, recorded

__all__ = ["fake", "recorded"]

MODEL = "gpt-4o-mini"
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_a_call_is_one_prompt_log_with_messages_tools_output_and_tokens(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    weather = tool_call("call_1", "get_weather", {"city": "Paris"})
    fake.reply(json_reply(chat_body("", tool_calls=[weather]), **{"x-request-id": "req_42"}))
    client.chat.completions.create(
        model=MODEL, messages=HELLO, tools=[WEATHER_TOOL], temperature=0.2, max_tokens=50
    )
    log = recorded.one()
    assert log.kind == "prompt"
    assert log.path == "prompt/chat gpt-4o-mini"
    assert log.fields["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert log.fields["output_message"] == {
        "role": "assistant",
        "tool_calls": [weather],
    }
    assert log.fields["finish_reason"] == "tool_calls"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (12, 5)
    assert (log.fields["cache_read_tokens"], log.fields["reasoning_tokens"]) == (4, 2)
    assert log.kernel["model"] == "gpt-4o-mini-2024-07-18"  # the response's model
    assert log.kernel["provider"] == "openai"
    assert log.kernel["temperature"] == 0.2
    assert log.kernel["max_tokens"] == 50
    assert log.kernel["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    meta = metadata(log)
    assert meta["gen_ai.request.model"] == MODEL
    assert meta["flowtrace.request_id"] == "req_42"
    assert meta["http.response.status_code"] == 200
    assert meta["gen_ai.request.stream"] is False
    assert "error" not in log.fields


def test_the_request_sent_and_the_response_returned_are_the_uninstrumented_ones(
    fake: FakeLLM, recorded: Recorded
) -> None:
    plain, traced = client_of(fake), instrument_openai(client_of(fake))
    answers = []
    for client in (plain, traced):
        fake.reply(json_reply(chat_body("Hello!")))
        answers.append(client.chat.completions.create(model=MODEL, messages=HELLO, seed=7))
    assert answers[0] == answers[1]
    assert type(answers[1]) is openai.types.chat.ChatCompletion
    assert fake.requests[0].body == fake.requests[1].body
    assert len(recorded.calls) == 1  # the uninstrumented client recorded nothing


def test_messages_are_those_sent_even_when_the_list_changes_after_the_call(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    messages: list[Any] = [{"role": "user", "content": "Hi"}]
    answer = client.chat.completions.create(model=MODEL, messages=messages)
    messages.append(answer.choices[0].message)  # an agent loop's next turn, an SDK model
    messages.append({"role": "user", "content": "And then?"})
    client.chat.completions.create(model=MODEL, messages=messages)
    first, second = recorded.logs
    assert first.fields["messages"] == [{"role": "user", "content": "Hi"}]
    assert second.fields["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "And then?"},
    ]


def test_n_choices_the_first_is_the_output_the_others_kept(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(json_reply(chat_body("one", "two")))
    client.chat.completions.create(model=MODEL, messages=HELLO, n=2)
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "one"}
    assert metadata(log)["other_choices"] == [{"role": "assistant", "content": "two"}]
    assert metadata(log)["gen_ai.request.choice.count"] == 2


def test_a_stream_is_one_log_with_tool_call_deltas_joined_and_the_usage_chunk(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    weather = tool_call("call_1", "get_weather", {"city": "Paris"})
    fake.reply(sse_reply(chat_chunks(["Let me ", "check."], tool_calls=[weather])))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert type(stream) is openai.Stream
    chunks = list(stream)
    assert chunks[-1].choices == []  # the usage-only last chunk reached the user as it was
    log = recorded.one()
    assert log.fields["output_message"] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [weather],
    }
    assert log.fields["finish_reason"] == "tool_calls"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (9, 3)
    meta = metadata(log)
    assert meta["gen_ai.request.stream"] is True
    assert 0 < meta["gen_ai.response.time_to_first_chunk"] <= log.fields["provider_latency"]
    assert "ended" not in meta.get("flowtrace", {})


def test_a_stream_of_two_choices(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(sse_reply(chat_chunks(["a", "b"], choices=2)))
    for _ in client.chat.completions.create(model=MODEL, messages=HELLO, n=2, stream=True):
        pass
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "ab"}
    assert metadata(log)["other_choices"] == [{"role": "assistant", "content": "ab"}]
    assert log.fields["output_tokens"] == 6


def test_an_error_mid_stream_is_raised_as_is_and_logged_with_what_arrived(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    events = chat_chunks(["partial "], usage=False, done=False)[:2]
    events.append((None, {"error": {"message": "the model fell over", "type": "server_error"}}))
    fake.reply(sse_reply(events))
    received: list[Any] = []
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="the model fell over") as raised:
        received.extend(stream)  # what arrived before the error is kept
    assert type(raised.value) is openai.APIError
    assert len(received) == 2
    log = recorded.one()
    assert log.fields["error"] == "openai.APIError: the model fell over"
    assert log.fields["output_message"] == {"role": "assistant", "content": "partial "}
    assert metadata(log)["error.type"] == "openai.APIError"
    assert metadata(log)["flowtrace"]["ended"] == "error"


def test_leaving_a_stream_early_logs_it_closed_early_with_what_arrived(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(sse_reply(chat_chunks(["one ", "two ", "three"])))
    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content == "two ":
            break
    assert recorded.calls == []  # still open: the user may read on
    del stream, chunk
    gc.collect()  # a dropped stream is closed when collected (it is in a cycle: the GC's)
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "one two "}
    assert metadata(log)["flowtrace"]["ended"] == "closed early"
    assert "error" not in log.fields


def test_closing_a_stream_early_logs_it_then(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(sse_reply(chat_chunks(["one ", "two"])))
    with client.chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        next(iter(stream))
    log = recorded.one()
    assert metadata(log)["flowtrace"]["ended"] == "closed early"
    assert "output_message" not in log.fields  # the role-only first chunk carries no text


def test_a_retried_429_is_one_log_with_the_retries_counted(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake, max_retries=2))
    busy = {"error": {"message": "Rate limit reached", "type": "requests"}}
    fake.reply(
        json_reply(busy, status=429, **{"retry-after-ms": "1"}),
        json_reply(busy, status=429, **{"retry-after-ms": "1"}),
        json_reply(chat_body("At last.")),
    )
    client.chat.completions.create(model=MODEL, messages=HELLO)
    assert len(fake.requests) == 3
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "At last."}
    assert metadata(log)["http.request.resend_count"] == 2
    assert "error" not in log.fields


def test_a_failed_call_is_logged_with_type_status_and_request_id_and_raised_as_is(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake, max_retries=1))
    busy = {"error": {"message": "Rate limit reached", "type": "requests"}}
    fake.reply(
        json_reply(busy, status=429, **{"retry-after-ms": "1", "x-request-id": "req_a"}),
        json_reply(busy, status=429, **{"retry-after-ms": "1", "x-request-id": "req_b"}),
    )
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.status_code == 429
    assert raised.value.request_id == "req_b"
    log = recorded.one()
    assert log.fields["error"].startswith("openai.RateLimitError: Error code: 429")
    meta = metadata(log)
    assert meta["http.response.status_code"] == 429
    assert meta["flowtrace.request_id"] == "req_b"
    assert meta["http.request.resend_count"] == 1
    assert meta["error.type"] == "openai.RateLimitError"
    assert log.fields["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_a_connection_error_is_logged_and_raised(recorded: Recorded) -> None:
    with FakeLLM() as gone:
        url = gone.openai_url
    client = instrument_openai(openai.OpenAI(api_key="k", base_url=url, max_retries=0))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert recorded.one().fields["error"] == "openai.APIConnectionError: Connection error."


def test_async_client_call_and_stream(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(async_client_of(fake))

    async def run() -> list[str]:
        fake.reply(json_reply(chat_body("async answer")))
        answer = await client.chat.completions.create(model=MODEL, messages=HELLO)
        fake.reply(sse_reply(chat_chunks(["stre", "amed"])))
        stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        assert type(stream) is openai.AsyncStream
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        return [answer.choices[0].message.content or "", "".join(p or "" for p in pieces)]

    assert asyncio.run(run()) == ["async answer", "streamed"]
    first, second = recorded.logs
    assert first.fields["output_message"]["content"] == "async answer"
    assert second.fields["output_message"]["content"] == "streamed"
    assert metadata(second)["gen_ai.request.stream"] is True
    assert "ended" not in metadata(second).get("flowtrace", {})


def test_async_stream_left_early(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(async_client_of(fake))

    async def run() -> None:
        fake.reply(sse_reply(chat_chunks(["one ", "two ", "three"])))
        stream = await client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content == "one ":
                break
        await stream.close()

    asyncio.run(run())
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": "one "}
    assert metadata(log)["flowtrace"]["ended"] == "closed early"


def test_with_raw_response_json_and_stream(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(json_reply(chat_body("raw answer"), **{"x-request-id": "req_raw"}))
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert raw.headers["x-request-id"] == "req_raw"
    log = recorded.one()  # logged from the body the raw response read, before any parse
    assert log.fields["output_message"]["content"] == "raw answer"
    assert raw.parse().choices[0].message.content == "raw answer"
    fake.reply(sse_reply(chat_chunks(["raw ", "stream"])))
    raw_stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices)
    assert text == "raw stream"
    assert recorded.logs[1].fields["output_message"]["content"] == "raw stream"
    assert len(recorded.calls) == 2


def test_with_streaming_response_json_and_stream(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(json_reply(chat_body("streamed body")))
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO
    ) as response:
        assert recorded.calls == []  # the body is not read yet
        assert response.parse().choices[0].message.content == "streamed body"
    assert recorded.one().fields["output_message"]["content"] == "streamed body"
    fake.reply(sse_reply(chat_chunks(["sse ", "body"])))
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO, stream=True
    ) as response:
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "sse body"
    assert recorded.logs[1].fields["output_message"]["content"] == "sse body"


def test_with_options_copies_of_an_instrumented_client_record_others_do_not(
    fake: FakeLLM, recorded: Recorded
) -> None:
    traced = instrument_openai(client_of(fake))
    traced.with_options(timeout=5).chat.completions.create(model=MODEL, messages=HELLO)
    traced.copy(max_retries=0).chat.completions.create(model=MODEL, messages=HELLO)
    other = client_of(fake)
    other.chat.completions.create(model=MODEL, messages=HELLO)
    other.with_options(timeout=5).chat.completions.create(model=MODEL, messages=HELLO)
    assert len(recorded.calls) == 2
    assert len(fake.requests) == 4


def test_every_client_when_none_is_given(fake: FakeLLM, recorded: Recorded) -> None:
    assert instrument_openai() is None
    assert instrument_openai() is None  # twice: still one log per call
    client_of(fake).chat.completions.create(model=MODEL, messages=HELLO)
    asyncio.run(async_client_of(fake).chat.completions.create(model=MODEL, messages=HELLO))
    assert len(recorded.calls) == 2


def test_the_call_is_a_child_of_the_current_flow(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    client.chat.completions.create(model=MODEL, messages=HELLO)
    with flowtrace.flow("agents/outer") as outer:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    (_, root_parent), (_, child_parent) = recorded.calls
    assert root_parent is None
    assert child_parent is outer


def test_responses_api_call_and_stream(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    weather = {"call_id": "call_9", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    body = responses_body("Bonjour", weather)
    fake.reply(json_reply(body))
    answer = client.responses.create(
        model="gpt-4.1",
        instructions="Speak French.",
        input="Hello",
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    )
    assert answer.output_text == "Bonjour"
    log = recorded.one()
    assert log.fields["messages"] == [
        {"role": "system", "content": "Speak French."},
        {"role": "user", "content": "Hello"},
    ]
    assert log.fields["output_message"] == {
        "role": "assistant",
        "content": "Bonjour",
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (30, 8)
    assert (log.fields["cache_read_tokens"], log.fields["reasoning_tokens"]) == (10, 3)
    assert log.fields["finish_reason"] == "completed"
    assert log.kernel["tools"] == [{"name": "get_weather", "parameters": {"type": "object"}}]
    in_progress = {**body, "status": "in_progress", "output": [], "usage": None}
    events = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": 0, "response": in_progress},
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "m1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Bon",
                "logprobs": [],
            },
        ),
        (
            "response.completed",
            {"type": "response.completed", "sequence_number": 2, "response": body},
        ),
    ]
    fake.reply(sse_reply(events))
    for _ in client.responses.create(model="gpt-4.1", input="Hello", stream=True):
        pass
    streamed = recorded.logs[1]
    assert streamed.fields["output_message"]["content"] == "Bonjour"
    assert streamed.fields["prompt_tokens"] == 30


def test_no_sdk_or_a_wrong_client_is_one_warning_never_an_error(
    caplog: pytest.LogCaptureFixture, recorded: Recorded
) -> None:
    from flowtrace._llm._hooks import SdkState
    from flowtrace._llm._sdk import instrument

    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        assert instrument("flowtrace_no_such_sdk", SdkState("x"), (), (), None) is None
        not_a_client = object()
        assert instrument_openai(not_a_client) is not_a_client
    messages = [record.getMessage() for record in caplog.records]
    assert "the flowtrace_no_such_sdk package is not installed" in messages[0]
    assert "wants one of openai.OpenAI, openai.AsyncOpenAI, not object" in messages[1]


def test_span_attributes_are_read_on_first_use_not_at_the_call(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    client.chat.completions.create(model=MODEL, messages=HELLO)
    ((span, _),) = recorded.calls
    attributes = span.attributes
    assert type(attributes).__name__ == "_LazyAttributes"
    assert attributes._built is None  # type: ignore[attr-defined]
    assert json.loads(json.dumps(dict(attributes)))["gen_ai.provider.name"] == "openai"


def _as_otel_would_carry_it(value: Any) -> Any:
    """OpenTelemetry attribute values are primitives or arrays of them: structured values
    travel as JSON text (as GenAI instrumentations send them)."""
    if isinstance(value, dict) or (
        isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value)
    ):
        return json.dumps(value)
    return value


def test_the_otel_route_gives_the_same_log(fake: FakeLLM, recorded: Recorded) -> None:
    """The same call's attributes as an OpenTelemetry span would carry them (JSON text) map
    to the same log: a trace does not depend on the route it took."""
    client = instrument_openai(client_of(fake))
    weather = tool_call("call_1", "get_weather", {"city": "Paris"})
    fake.reply(json_reply(chat_body("Sure.", tool_calls=[weather])))
    client.chat.completions.create(model=MODEL, messages=HELLO, tools=[WEATHER_TOOL], stop="x")
    ((span, _),) = recorded.calls
    otel_span = dataclasses.replace(
        span, attributes={k: _as_otel_would_carry_it(v) for k, v in span.attributes.items()}
    )
    assert any(isinstance(v, str) and v.startswith("[{") for v in otel_span.attributes.values())
    direct, via_otel = map_span(span), map_span(otel_span)
    assert via_otel.fields == direct.fields
    assert via_otel.kernel == direct.kernel
    assert (via_otel.kind, via_otel.path) == (direct.kind, direct.path)


def test_a_body_off_the_apis_shape_is_returned_as_is_and_logged_without_output(
    fake: FakeLLM, recorded: Recorded
) -> None:
    """The SDK hands back what a server (a proxy, a local model) sent, even off the API's
    shape; the log keeps what it can read, and no fault of ours reaches the caller."""
    client = instrument_openai(client_of(fake))
    odd = {**chat_body("x"), "choices": [1, {"message": "text", "index": 0}], "usage": "many"}
    fake.reply(json_reply(odd))
    answer = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert answer.choices[0] == 1  # type: ignore[comparison-overlap]
    fake.reply(sse_reply([(None, {"choices": "none"}), (None, {"choices": [{"delta": 3}]})]))
    assert len(list(client.chat.completions.create(model=MODEL, messages=HELLO, stream=True))) == 2
    whole, streamed = recorded.logs
    for log in (whole, streamed):
        assert log.kind == "prompt"
        assert log.fields["messages"][1] == {"role": "user", "content": "Hi"}
        assert "prompt_tokens" not in log.fields
    assert "output_message" not in streamed.fields


def test_a_seeded_random_module_does_not_repeat_log_ids(fake: FakeLLM, recorded: Recorded) -> None:
    """A script that calls `random.seed(42)` (most ML scripts) runs the same way each time:
    its calls' log ids must not (a log id seen again is a replay to the store)."""
    client = instrument_openai(client_of(fake))
    for _ in range(2):
        random.seed(42)
        client.chat.completions.create(model=MODEL, messages=HELLO)
    first, second = recorded.logs
    assert first.log_id != second.log_id
