"""The span-to-log mapping on its own (pure: no server, no protobuf): each convention it reads,
the bounds it keeps, and the promise the server relies on to skip validation: whatever the
span holds, the log it builds validates against the request models."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrace import _contract
from flowtrace.models import (
    FlowLogRequest,
    FlowLogUpdateRequest,
    PromptLogRequest,
    PromptLogUpdateRequest,
    ToolLogRequest,
    ToolLogUpdateRequest,
)
from flowtrace.spans import PathCap, Span, SpanEvent, map_span
from flowtrace.spans._mapping import MAX_PATHS

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
PARENT = "00f067aa0ba902b7"


def span(name: str = "work", **attributes: Any) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=SPAN,
        parent_span_id=PARENT,
        name=name,
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_001_500_000_000,
        attributes=attributes,
    )


def test_ids_parent_times_and_facts() -> None:
    log = map_span(span())
    assert log.log_id == f"span_{TRACE}_{SPAN}"
    assert log.parent_id == f"span_{TRACE}_{PARENT}"
    assert log.fields["start_time"] == "2023-11-14T22:13:20.000000Z"
    assert log.fields["provider_latency"] == 1.5
    assert log.fields["trace_status"] == "complete"
    assert log.fields["metadata"]["otel"]["start_unix_nano"] == 1_700_000_000_000_000_000
    assert (log.kind, log.path) == ("flow", "flow/work")


def test_openinference_llm_messages_tools_and_tokens() -> None:
    log = map_span(
        span(
            "ChatOpenAI",
            **{
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai",
                "llm.invocation_parameters": json.dumps({"temperature": 0.5}),
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": "Be brief.",
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.content": "Weather?",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.tool_calls.0.tool_call.id": "c1",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "weather",
                "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
                "llm.token_count.prompt": 10,
                "llm.token_count.completion": 4,
                "llm.token_count.prompt_details.cache_read": 2,
                "input.value": "Weather?",
            },
        )
    )
    assert log.kind == "prompt"
    assert log.kernel == {"model": "gpt-4o-mini", "provider": "openai", "temperature": 0.5}
    assert [m["role"] for m in log.fields["messages"]] == ["system", "user"]
    assert log.fields["output_message"]["tool_calls"][0]["function"]["name"] == "weather"
    assert (log.fields["prompt_tokens"], log.fields["output_tokens"]) == (10, 4)
    assert log.fields["cache_read_tokens"] == 2
    assert "llm.token_count.prompt" not in log.fields["metadata"]


def test_openllmetry_prompt_and_completion() -> None:
    log = map_span(
        span(
            "anthropic.chat",
            **{
                "llm.request.type": "chat",
                "gen_ai.system": "Anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "Hi",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "Hello!",
                "gen_ai.completion.0.finish_reason": "end_turn",
                "gen_ai.usage.prompt_tokens": 3,
                "gen_ai.usage.completion_tokens": 2,
            },
        )
    )
    assert (log.kind, log.kernel["provider"]) == ("prompt", "anthropic")
    assert log.fields["messages"] == [{"role": "user", "content": "Hi"}]
    assert log.fields["output_message"] == {"role": "assistant", "content": "Hello!"}
    assert log.fields["finish_reason"] == "end_turn"
    assert log.fields["prompt_cost"] > 0  # genai-prices knows the model


def test_genai_events_and_the_exception_event() -> None:
    failing = Span(
        trace_id=TRACE,
        span_id=SPAN,
        name="chat m",
        start_ns=1,
        end_ns=2,
        attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
        events=(
            SpanEvent("gen_ai.system.message", 1, {"content": "Rules."}),
            SpanEvent("gen_ai.user.message", 1, {"content": "Go"}),
            SpanEvent("gen_ai.choice", 2, {"message": json.dumps({"content": "Done"})}),
            SpanEvent(
                "exception",
                2,
                {
                    "exception.type": "TimeoutError",
                    "exception.message": "slow",
                    "exception.stacktrace": "Traceback...",
                },
            ),
        ),
        status_code="error",
    )
    log = map_span(failing)
    assert [m["role"] for m in log.fields["messages"]] == ["system", "user"]
    assert log.fields["error"] == "TimeoutError: slow"
    facts = log.fields["metadata"][_contract.RECORDER_METADATA_KEY]
    assert facts == {"traceback": "Traceback...", "ended": "error"}
    assert log.parent_id is None


def test_pydantic_ai_agent_totals_are_not_token_fields() -> None:
    agent = map_span(
        span(
            "agent run",
            **{
                "agent_name": "support",
                "gen_ai.usage.input_tokens": 500,
                "final_result": "All good",
                "all_messages_events": json.dumps(
                    [
                        {"event.name": "gen_ai.user.message", "content": "Hi", "role": "user"},
                        {"event.name": "gen_ai.choice", "message": {"content": "All good"}},
                    ]
                ),
            },
        )
    )
    assert (agent.kind, agent.path) == ("flow", "flow/support")
    assert agent.fields["output"] == "All good"
    assert "prompt_tokens" not in agent.fields
    assert agent.fields["metadata"]["gen_ai.usage.input_tokens"] == 500
    assert agent.fields["messages"] == [{"role": "user", "content": "Hi"}]
    assert agent.fields["output_message"] == {"role": "assistant", "content": "All good"}


def test_humanloop_spans_name_their_log_and_parent() -> None:
    flow = map_span(
        span(
            "humanloop.flow",
            **{
                "humanloop.file.type": "flow",
                "humanloop.file.path": "support/agent",
                "humanloop.log.id": "log_1",
                "humanloop.log.log_status": "complete",
                "humanloop.log.output": "done",
                "humanloop.log.output_message.role": "assistant",
                "humanloop.log.output_message.content": "done",
            },
        )
    )
    assert (flow.log_id, flow.completes, flow.path) == ("log_1", True, "support/agent")
    assert flow.fields["output_message"] == {"role": "assistant", "content": "done"}
    tool = map_span(
        span(
            "humanloop.tool",
            **{
                "humanloop.file.type": "tool",
                "humanloop.file.path": "support/lookup",
                "humanloop.file.function.name": "lookup",
                "humanloop.file.function.parameters.required.0": "city",
                "humanloop.log.inputs.city": "Paris",
                "humanloop.log.trace_parent_id": "log_1",
            },
        )
    )
    assert (tool.kind, tool.parent_id) == ("tool", "log_1")
    assert tool.kernel["function"] == {"name": "lookup", "parameters": {"required": ["city"]}}
    assert tool.fields["inputs"] == {"city": "Paris"}


def test_genai_tool_definitions_choices_and_a_stream_closed_early() -> None:
    """What an LLM client's span says beyond messages: the tools it offered (either shape:
    the convention's flat one, OpenAI's `function` one), several choices (`n`: the first is
    the output, the others kept), a stream left before its end."""
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    log = map_span(
        span(
            "chat gpt-4o",
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.tool.definitions": json.dumps(
                    [
                        {"type": "function", "name": "weather", "parameters": parameters},
                        {"type": "function", "function": {"name": "time", "description": "Now"}},
                        {"type": "web_search"},
                    ]
                ),
                "gen_ai.output.messages": [
                    {"role": "assistant", "parts": [{"type": "text", "content": "one"}]},
                    {"role": "assistant", "parts": [{"type": "text", "content": "two"}]},
                ],
                "gen_ai.response.finish_reasons": ["stop", "length"],
                "flowtrace.ended": "closed early",
            },
        )
    )
    assert log.kernel["tools"] == [
        {"name": "weather", "parameters": parameters},
        {"name": "time", "description": "Now"},
    ]
    assert log.fields["output_message"] == {"role": "assistant", "content": "one"}
    assert log.fields["finish_reason"] == "stop"
    metadata = log.fields["metadata"]
    assert metadata["other_choices"] == [{"role": "assistant", "content": "two"}]
    assert metadata["flowtrace"] == {"ended": "closed early"}
    assert "gen_ai.tool.definitions" not in metadata
    assert "flowtrace.ended" not in metadata


def test_an_error_is_how_a_call_ended_whatever_the_ended_attribute_says() -> None:
    failed = Span(
        trace_id=TRACE,
        span_id=SPAN,
        name="chat",
        start_ns=1,
        end_ns=2,
        attributes={"gen_ai.operation.name": "chat", "flowtrace.ended": "closed early"},
        events=(
            SpanEvent("exception", 2, {"exception.type": "APIError", "exception.message": "x"}),
        ),
        status_code="error",
    )
    log = map_span(failed)
    assert log.fields["error"] == "APIError: x"
    assert log.fields["metadata"]["flowtrace"]["ended"] == "error"
    assert (
        map_span(span(**{"flowtrace.ended": "anything"})).fields["metadata"].get("flowtrace")
        is None
    )


def test_paths_of_span_names_are_bounded() -> None:
    assert map_span(span("GET /users/12345")).path == "flow/GET \u2215users\u2215{n}"
    uuid = "3f2b8c1e-2d4a-4b7e-9c1d-8e7f6a5b4c3d"
    assert map_span(span(f"job {uuid}")).path == "flow/job {uuid}"
    cap = PathCap(limit=2)
    paths = [map_span(span(f"step-{name}"), cap).path for name in "abc"]
    assert paths == ["flow/step-a", "flow/step-b", "flow/other"]
    assert map_span(span("x" * 10_000)).path == "flow/" + "x" * 120
    assert MAX_PATHS == 1000


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_KEYS = st.sampled_from(
    [
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.provider.name",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.request.temperature",
        "gen_ai.request.stop_sequences",
        "gen_ai.response.finish_reasons",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "flowtrace.ended",
        "gen_ai.tool.name",
        "gen_ai.tool.call.arguments",
        "openinference.span.kind",
        "llm.input_messages.0.message.role",
        "llm.input_messages.0.message.content",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name",
        "llm.invocation_parameters",
        "gen_ai.prompt.0.role",
        "gen_ai.completion.0.content",
        "humanloop.file.type",
        "humanloop.file.path",
        "humanloop.log.id",
        "humanloop.log.inputs.x",
        "humanloop.log.output_message.role",
        "humanloop.log.messages.0.content",
        "humanloop.file.prompt.temperature",
        "humanloop.file.function.name",
        "humanloop.file.function.strict",
        "humanloop.file.function.parameters.required.0",
        "humanloop.file.source_code",
        "humanloop.file.setup_values.key",
        "input.value",
        "output.value",
        "all_messages_events",
        "final_result",
        "user.id",
        "session.id",
        "anything.else",
    ]
)
_JSONISH = st.one_of(
    _VALUES,
    _VALUES.map(lambda value: json.dumps(value)),
    st.sampled_from(
        ["chat", "execute_tool", "LLM", "TOOL", "prompt", "tool", "flow", "closed early"]
    ),
)
_REQUESTS = {"flow": FlowLogRequest, "prompt": PromptLogRequest, "tool": ToolLogRequest}
_UPDATES = {
    "flow": FlowLogUpdateRequest,
    "prompt": PromptLogUpdateRequest,
    "tool": ToolLogUpdateRequest,
}


@settings(max_examples=300)
@given(
    attributes=st.dictionaries(_KEYS, _JSONISH, max_size=12),
    name=st.text(max_size=40),
    status=st.sampled_from(["unset", "ok", "error"]),
    times=st.tuples(st.integers(-(2**63), 2**64), st.integers(-(2**63), 2**64)),
)
def test_whatever_a_span_holds_its_log_validates(
    attributes: dict[str, Any], name: str, status: str, times: tuple[int, int]
) -> None:
    """The server stores span logs without pydantic validation (`prepare_built`): this is the
    promise that makes it safe."""
    raw = Span(
        trace_id=TRACE,
        span_id=SPAN,
        name=name,
        start_ns=times[0],
        end_ns=times[1],
        attributes=attributes,
        status_code=status,  # type: ignore[arg-type]
    )
    log = map_span(raw)
    body = {**log.fields, "path": log.path, "log_id": log.log_id}
    if log.parent_id:
        body["trace_parent_id"] = log.parent_id
    field = {"flow": "flow", "prompt": "prompt", "tool": "tool"}[log.kind]
    body[field] = {"attributes": log.kernel} if log.kind == "flow" else log.kernel
    request = _REQUESTS[log.kind].model_validate(body)
    # nothing is coerced: the validated body dumps back to what the mapping built
    assert request.model_dump(mode="json", exclude_unset=True, exclude={field}) == {
        key: value for key, value in body.items() if key != field
    }
    json.dumps(body, allow_nan=False)  # JSON as stored: no NaN, no infinity
    allowed = _UPDATES[log.kind].model_fields
    _UPDATES[log.kind].model_validate({k: v for k, v in log.fields.items() if k in allowed})
