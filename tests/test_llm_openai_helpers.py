"""The OpenAI SDK's helpers, instrumented: `chat.completions.parse()` / `stream()` and
`responses.parse()` / `stream()`, sync and async, against the fake server on loopback.

Each helper call is exactly one prompt log with the fields `create` gives the same exchange
(the helpers post the request themselves, or send it through `create`: neither may give zero
logs or two), and the user's objects are those of an uninstrumented client (`.parsed`,
`output_parsed`, the helper's events)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import openai
import pydantic
import pytest

from flowtrace._llm._openai import instrument_openai
from flowtrace.spans import MappedLog
from tests.fake_llm import (
    FakeLLM,
    chat_body,
    chat_chunks,
    json_reply,
    responses_body,
    responses_events,
    sse_reply,
)
from tests.llm_util import Recorded, async_client_of, client_of, fake, metadata, recorded

__all__ = ["fake", "recorded"]

MODEL = "gpt-4o-mini"
HELLO = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Where?"}]
PARIS = '{"city": "Paris"}'
LOOKUP = {"call_id": "call_7", "name": "lookup", "arguments": '{"q": "Paris"}'}


class City(pydantic.BaseModel):
    city: str


#: What differs between two logs of the same exchange: its own ids and clock.
_PER_CALL = ("log_id", "start_time", "end_time", "provider_latency", "created_at")


def comparable(log: MappedLog) -> dict[str, Any]:
    """A log's fields and kernel without what is the call's own (ids, timings)."""
    fields = {k: v for k, v in log.fields.items() if k not in _PER_CALL}
    fields["metadata"] = {
        k: v
        for k, v in fields["metadata"].items()
        if k not in ("otel", "gen_ai.response.time_to_first_chunk")  # the span's ids, clock
    }
    return {"kind": log.kind, "path": log.path, "fields": fields, "kernel": log.kernel}


# --- chat.completions.parse ------------------------------------------------------------------


def test_parse_is_one_log_as_create_gives_and_parsed_still_works(
    fake: FakeLLM, recorded: Recorded
) -> None:
    """`parse()` posts the request itself (not through `create`): before, it logged nothing."""
    plain, client = client_of(fake), instrument_openai(client_of(fake))
    fake.reply(json_reply(chat_body(PARIS)), json_reply(chat_body(PARIS)))
    untraced = plain.chat.completions.parse(model=MODEL, messages=HELLO, response_format=City)
    answer = client.chat.completions.parse(model=MODEL, messages=HELLO, response_format=City)
    assert type(answer) is type(untraced)
    assert answer.choices[0].message.parsed == City(city="Paris")
    assert answer == untraced
    assert fake.requests[0].body == fake.requests[1].body  # the request is not modified
    log = recorded.one()
    assert log.fields["messages"] == HELLO
    assert log.fields["output_message"] == {"role": "assistant", "content": PARIS}
    assert log.fields["finish_reason"] == "stop"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (12, 5)
    assert metadata(log)["gen_ai.request.stream"] is False
    fake.reply(json_reply(chat_body(PARIS)))
    client.chat.completions.create(
        model=MODEL, messages=HELLO, response_format=fake.requests[1].body["response_format"]
    )
    parsed, created = recorded.logs
    assert comparable(parsed) == comparable(created)


def test_async_parse_and_a_failed_parse_raised_as_is(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(async_client_of(fake))
    refused = {"error": {"message": "bad schema", "type": "invalid_request_error"}}
    fake.reply(
        json_reply(chat_body(PARIS)), json_reply(refused, status=400, **{"x-request-id": "r_4"})
    )

    async def run() -> tuple[Any, BaseException]:
        answer = await client.chat.completions.parse(
            model=MODEL, messages=HELLO, response_format=City
        )
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.parse(model=MODEL, messages=HELLO, response_format=City)
        return answer, raised.value

    answer, error = asyncio.run(run())
    assert answer.choices[0].message.parsed == City(city="Paris")
    assert type(error) is openai.BadRequestError and error.request_id == "r_4"
    ok, failed = recorded.logs
    assert ok.fields["output_message"] == {"role": "assistant", "content": PARIS}
    assert failed.fields["error"].startswith("openai.BadRequestError: Error code: 400")
    assert metadata(failed)["http.response.status_code"] == 400
    assert metadata(failed)["flowtrace.request_id"] == "r_4"


# --- chat.completions.stream -----------------------------------------------------------------


def test_chat_stream_helper_is_one_log_as_create_stream_gives(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    fake.reply(sse_reply(chat_chunks(['{"city": ', '"Paris"}'])))
    with client.chat.completions.stream(
        model=MODEL, messages=HELLO, response_format=City
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "content.delta" in kinds and kinds[-1] == "chunk"
    assert final.choices[0].message.parsed == City(city="Paris")
    log = recorded.one()
    assert log.fields["output_message"] == {"role": "assistant", "content": PARIS}
    assert log.fields["finish_reason"] == "stop"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (9, 3)
    meta = metadata(log)
    assert meta["gen_ai.request.stream"] is True
    assert 0 < meta["gen_ai.response.time_to_first_chunk"] <= log.fields["provider_latency"]
    assert "ended" not in meta.get("flowtrace", {})
    fake.reply(sse_reply(chat_chunks(['{"city": ', '"Paris"}'])))
    response_format = fake.requests[0].body["response_format"]
    for _ in client.chat.completions.create(
        model=MODEL, messages=HELLO, response_format=response_format, stream=True
    ):
        pass
    helper, created = recorded.logs
    assert comparable(helper) == comparable(created)


def test_leaving_the_chat_stream_helper_early_logs_it_at_the_with_exit(
    fake: FakeLLM, recorded: Recorded
) -> None:
    """The helper's stream closes its HTTP response, not the SDK stream under it: before, the
    call was logged only once the stream was collected (never, while the user held it)."""
    client = instrument_openai(client_of(fake))
    fake.reply(sse_reply(chat_chunks(["one ", "two ", "three"])))
    with client.chat.completions.stream(model=MODEL, messages=HELLO) as stream:
        for event in stream:
            if event.type == "content.delta" and event.delta == "two ":
                break
        assert recorded.calls == []  # still open: the user may read on
    log = recorded.one()  # the `with` closed it; `stream` is still held here
    assert stream is not None
    assert log.fields["output_message"] == {"role": "assistant", "content": "one two "}
    assert metadata(log)["flowtrace"]["ended"] == "closed early"
    assert "error" not in log.fields


def test_async_chat_stream_helper_starts_its_clock_when_entered_and_closes_early(
    fake: FakeLLM, recorded: Recorded
) -> None:
    """The async helper makes `create`'s coroutine at `stream()` and awaits it on entering:
    the call opens (clock, parent, request) when the request is sent, not before."""
    client = instrument_openai(async_client_of(fake))
    fake.reply(sse_reply(chat_chunks(["a", "b"])), sse_reply(chat_chunks(["one ", "two"])))

    async def run() -> tuple[int, str, str]:
        manager = client.chat.completions.stream(model=MODEL, messages=HELLO)
        entered_ns = time.time_ns()
        async with manager as stream:
            async for _ in stream:
                pass
            text = (await stream.get_final_completion()).choices[0].message.content or ""
        async with client.chat.completions.stream(model=MODEL, messages=HELLO) as early:
            async for event in early:
                if event.type == "content.delta" and event.delta == "one ":
                    break
        return entered_ns, text, "done"

    entered_ns, text, _ = asyncio.run(run())
    assert text == "ab"
    (whole_span, _), _ = recorded.calls
    assert whole_span.start_ns >= entered_ns
    whole, early = recorded.logs
    assert whole.fields["output_message"] == {"role": "assistant", "content": "ab"}
    assert "ended" not in metadata(whole).get("flowtrace", {})
    assert early.fields["output_message"] == {"role": "assistant", "content": "one "}
    assert metadata(early)["flowtrace"]["ended"] == "closed early"


def test_an_error_mid_chat_stream_helper_is_raised_as_is_and_logged(
    fake: FakeLLM, recorded: Recorded
) -> None:
    client = instrument_openai(client_of(fake))
    events = chat_chunks(["partial "], usage=False, done=False)[:2]
    events.append((None, {"error": {"message": "the model fell over", "type": "server_error"}}))
    fake.reply(sse_reply(events))
    with (
        client.chat.completions.stream(model=MODEL, messages=HELLO) as stream,
        pytest.raises(openai.APIError, match="the model fell over") as raised,
    ):
        stream.until_done()
    assert type(raised.value) is openai.APIError
    log = recorded.one()
    assert log.fields["error"] == "openai.APIError: the model fell over"
    assert log.fields["output_message"] == {"role": "assistant", "content": "partial "}
    assert metadata(log)["flowtrace"]["ended"] == "error"


# --- responses.parse / responses.stream ------------------------------------------------------


def _assert_response_log(log: MappedLog) -> None:
    assert log.fields["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Where?"},
    ]
    assert log.fields["output_message"] == {
        "role": "assistant",
        "content": PARIS,
        "tool_calls": [
            {
                "id": "call_7",
                "type": "function",
                "function": {"name": "lookup", "arguments": LOOKUP["arguments"]},
            }
        ],
    }
    assert log.fields["finish_reason"] == "completed"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (30, 8)
    assert (log.fields["cache_read_tokens"], log.fields["reasoning_tokens"]) == (10, 3)
    assert log.kernel["model"] == "gpt-4.1-2025-04-14"


def test_responses_parse_sync_and_async_one_log_each(fake: FakeLLM, recorded: Recorded) -> None:
    sync, asynchronous = (
        instrument_openai(client_of(fake)),
        instrument_openai(async_client_of(fake)),
    )
    fake.reply(*[json_reply(responses_body(PARIS, LOOKUP)) for _ in range(2)])
    ask = {"model": "gpt-4.1", "instructions": "Answer in JSON.", "input": "Where?"}
    answer = sync.responses.parse(**ask, text_format=City)
    async_answer = asyncio.run(asynchronous.responses.parse(**ask, text_format=City))
    assert answer.output_parsed == City(city="Paris")
    assert async_answer.output_parsed == City(city="Paris")
    first, second = recorded.logs
    for log in (first, second):
        _assert_response_log(log)
        assert metadata(log)["gen_ai.request.stream"] is False
    assert comparable(first) == comparable(second)


def test_responses_stream_helper_one_log_as_create_gives(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(client_of(fake))
    ask = {"model": "gpt-4.1", "instructions": "Answer in JSON.", "input": "Where?"}
    fake.reply(sse_reply(responses_events(['{"city": ', '"Paris"}'], LOOKUP)))
    with client.responses.stream(**ask, text_format=City) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_parsed == City(city="Paris")
    log = recorded.one()
    _assert_response_log(log)
    meta = metadata(log)
    assert meta["gen_ai.request.stream"] is True
    assert 0 < meta["gen_ai.response.time_to_first_chunk"] <= log.fields["provider_latency"]
    fake.reply(sse_reply(responses_events(['{"city": ', '"Paris"}'], LOOKUP)))
    text = fake.requests[0].body["text"]
    for _ in client.responses.create(**ask, text=text, stream=True):
        pass
    helper, created = recorded.logs
    assert comparable(helper) == comparable(created)


def test_responses_stream_helper_left_early_sync_and_async(
    fake: FakeLLM, recorded: Recorded
) -> None:
    sync, asynchronous = (
        instrument_openai(client_of(fake)),
        instrument_openai(async_client_of(fake)),
    )
    fake.reply(*[sse_reply(responses_events(["Bon", "jour", "!"])) for _ in range(2)])
    with sync.responses.stream(model="gpt-4.1", input="Hello") as stream:
        for event in stream:
            if event.type == "response.output_text.delta" and event.delta == "jour":
                break
    assert len(recorded.calls) == 1  # logged at the `with` exit

    async def run() -> None:
        async with asynchronous.responses.stream(model="gpt-4.1", input="Hello") as stream:
            async for event in stream:
                if event.type == "response.output_text.delta":
                    break

    asyncio.run(run())
    first, second = recorded.logs
    assert first.fields["output_message"] == {"role": "assistant", "content": "Bonjour"}
    assert second.fields["output_message"] == {"role": "assistant", "content": "Bon"}
    for log in (first, second):
        assert metadata(log)["flowtrace"]["ended"] == "closed early"
        assert log.fields["messages"] == [{"role": "user", "content": "Hello"}]


def test_async_responses_stream_read_to_its_end(fake: FakeLLM, recorded: Recorded) -> None:
    client = instrument_openai(async_client_of(fake))
    fake.reply(sse_reply(responses_events(['{"city": ', '"Paris"}'], LOOKUP)))

    async def run() -> Any:
        async with client.responses.stream(
            model="gpt-4.1", instructions="Answer in JSON.", input="Where?", text_format=City
        ) as stream:
            async for _ in stream:
                pass
            return await stream.get_final_response()

    assert asyncio.run(run()).output_parsed == City(city="Paris")
    log = recorded.one()
    _assert_response_log(log)
    assert "ended" not in metadata(log).get("flowtrace", {})
    assert json.loads(log.fields["output_message"]["content"]) == {"city": "Paris"}
