"""Spans recorded inside the program (`_span_logs.record_span`, `open_span_log`): their logs
reach every exporter with their kind (prompt, tool, flow), under the right parent, in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import flowtrace
from flowtrace import flow
from flowtrace._contract import span_log_id
from flowtrace._span_logs import open_span_log, record_span
from flowtrace.exporters.http import HttpExporter
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.spans import Span
from flowtrace.store import Store
from flowtrace.testing import capture_logs
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.serverutil import start_server

TRACE = "0af7651916cd43dd8448eb211c80319c"
START_NS = 1_700_000_000_000_000_000


def chat_span(span_id: str = "00f067aa0ba902b7", parent_span_id: str | None = None) -> Span:
    """An LLM call as the GenAI conventions describe it (as pydantic-ai emits it)."""
    messages = [{"role": "user", "parts": [{"type": "text", "content": "What is 2+2?"}]}]
    output = [{"role": "assistant", "parts": [{"type": "text", "content": "4"}]}]
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent_span_id,
        name="chat gpt-4o",
        kind="client",
        start_ns=START_NS,
        end_ns=START_NS + 250_000_000,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 3,
            "gen_ai.input.messages": json.dumps(messages),
            "gen_ai.output.messages": json.dumps(output),
            "gen_ai.response.finish_reasons": ["stop"],
        },
        scope_name="pydantic-ai",
    )


def tool_span(span_id: str = "1111111111111111", parent_span_id: str | None = None) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        parent_span_id=parent_span_id,
        name="execute_tool add",
        start_ns=START_NS + 300_000_000,
        end_ns=START_NS + 310_000_000,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "add",
            "gen_ai.tool.call.arguments": '{"a": 2, "b": 2}',
            "gen_ai.tool.call.result": "4",
        },
    )


def agent_span(span_id: str = "2222222222222222") -> Span:
    return Span(
        trace_id=TRACE,
        span_id=span_id,
        name="invoke_agent support",
        start_ns=START_NS - 10_000_000,
        end_ns=START_NS + 400_000_000,
        attributes={"gen_ai.agent.name": "support", "gen_ai.operation.name": "invoke_agent"},
    )


# --- the memory exporter: kinds, parents, order ----------------------------------------------


def test_a_span_inside_a_flow_becomes_its_child_prompt_log() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("agent/run") as run:
            record_span(chat_span(), flowtrace.current_log())
        assert flowtrace.flush(WAIT_S)
    chat_id = span_log_id(TRACE, "00f067aa0ba902b7")
    assert [(op.kind, op.log_id) for op in exporter.operations()] == [
        ("log", run.log_id),
        ("prompt_log", chat_id),
        ("update", run.log_id),
    ]
    body = exporter.logs[chat_id]
    assert body["trace_parent_id"] == run.log_id
    assert body["path"] == "prompt/chat gpt-4o"
    assert body["prompt"] == {"model": "gpt-4o-2024-08-06", "provider": "openai"}
    assert (body["prompt_tokens"], body["output_tokens"]) == (12, 3)
    assert body["messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert body["output_message"] == {"role": "assistant", "content": "4"}
    assert body["finish_reason"] == "stop"
    assert body["trace_status"] == "complete"
    assert exporter.kinds[chat_id] == "prompt_log"


def test_the_status_goes_under_the_configured_name() -> None:
    exporter = MemoryExporter(status_field="log_status")
    with fresh_pipeline(exporter, status_field="log_status"):
        with flow("agent/run"):
            record_span(tool_span(), flowtrace.current_log())
        assert flowtrace.flush(WAIT_S)
    body = exporter.logs[span_log_id(TRACE, "1111111111111111")]
    assert body["log_status"] == "complete" and "trace_status" not in body
    assert body["tool"]["function"]["name"] == "add"
    assert body["inputs"] == {"a": 2, "b": 2}


def test_a_span_without_a_parent_is_a_root() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        record_span(chat_span(), None)
        assert flowtrace.flush(WAIT_S)
    [op] = exporter.operations()
    assert op.kind == "prompt_log" and "trace_parent_id" not in op.body


def test_record_span_is_nothing_when_disabled() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter, enabled=False):
        record_span(chat_span(), None)
        assert open_span_log(TRACE, "3333333333333333", None) is None
        assert flowtrace.flush(WAIT_S)
    assert exporter.operations() == []


def test_record_span_never_raises_on_a_broken_span(
    fail_on_internal_errors: list[tuple[str, BaseException | None]],
) -> None:
    with capture_logs() as captured:
        record_span(object(), None)  # type: ignore[arg-type]
    assert [kind for kind, _ in fail_on_internal_errors] == ["span-log"]
    fail_on_internal_errors.clear()  # reported once and swallowed, as it should be
    assert captured.logs == []


def test_capture_logs_shows_the_kind() -> None:
    with capture_logs() as captured, flow("agent/run"):
        record_span(chat_span(), flowtrace.current_log())
        record_span(tool_span(), flowtrace.current_log())
    assert [r["path"] for r in captured.by_kind("prompt")] == ["prompt/chat gpt-4o"]
    assert [r["path"] for r in captured.by_kind("tool")] == ["tool/add"]
    assert [r["path"] for r in captured.by_kind("flow")] == ["agent/run"]
    [tree] = captured.trees()
    assert [child["path"] for child in tree["children"]] == ["prompt/chat gpt-4o", "tool/add"]
    chat, tool, run = captured.logs
    assert (chat.path, chat.kind, tool.kind, run.path) == (  # type: ignore[attr-defined]
        "prompt/chat gpt-4o",
        "prompt",
        "tool",
        "agent/run",
    )


def test_a_kept_span_holds_its_children_until_it_ends() -> None:
    """An agent span kept at its start: the chat span and the flow that end inside it wait for
    it (its kind and version are known only at its end), then go under its log."""
    exporter = MemoryExporter()
    agent_id = span_log_id(TRACE, "2222222222222222")
    with fresh_pipeline(exporter):
        with flow("request") as request:
            agent = open_span_log(TRACE, "2222222222222222", None, "invoke_agent support")
            assert agent is not None and flowtrace.current_log() is agent
            record_span(chat_span(parent_span_id="2222222222222222"), request)
            with flow("lookup") as lookup:
                assert lookup.parent is agent
            assert flowtrace.flush(WAIT_S)
            assert agent_id not in exporter.logs  # not before the span ended
            agent.end(agent_span())
            assert flowtrace.current_log() is request
        assert flowtrace.flush(WAIT_S)
    chat_id = span_log_id(TRACE, "00f067aa0ba902b7")
    order = [(op.kind, op.log_id, op.body.get("trace_status")) for op in exporter.operations()]
    assert order[0] == ("log", request.log_id, "incomplete")
    assert order[1:] == [
        ("log", agent_id, "incomplete"),
        ("prompt_log", chat_id, "complete"),
        ("log", lookup.log_id, "complete"),
        ("update", agent_id, "complete"),
        ("update", request.log_id, "complete"),
    ]
    assert exporter.logs[agent_id]["path"] == "flow/support"
    assert exporter.logs[agent_id]["trace_parent_id"] == request.log_id
    assert exporter.logs[chat_id]["trace_parent_id"] == agent_id
    assert exporter.logs[lookup.log_id]["trace_parent_id"] == agent_id
    assert exporter.status_of(agent_id) == "complete"


def test_a_span_that_outlives_its_flow_is_filed_under_the_nearest_open_ancestor() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        with flow("outer") as outer:
            with flow("inner") as inner:
                agent = open_span_log(TRACE, "2222222222222222", None, enter=False)
                assert agent is not None
            assert flowtrace.flush(WAIT_S)  # inner is closed now
            agent.end(agent_span())
        assert flowtrace.flush(WAIT_S)
    body = exporter.logs[span_log_id(TRACE, "2222222222222222")]
    assert body["trace_parent_id"] == outer.log_id
    assert body["metadata"]["flowtrace"]["late_child_of"] == inner.log_id


def test_prompt_logs_go_through_the_spool_with_their_kind(tmp_path: Path) -> None:
    """Spooled (every batch written to disk first), then delivered from the spool after a
    refusal worth retrying: the prompt log keeps its route."""
    exporter = MemoryExporter(destination="memory:spooled")
    exporter.fail_next(503)
    with fresh_pipeline(exporter, spool="always", spool_dir=str(tmp_path)):
        with flow("agent/run") as run:
            record_span(chat_span(), flowtrace.current_log())
        assert flowtrace.flush(WAIT_S)
    chat_id = span_log_id(TRACE, "00f067aa0ba902b7")
    assert exporter.kinds == {run.log_id: "log", chat_id: "prompt_log"}
    assert exporter.logs[chat_id]["trace_parent_id"] == run.log_id
    assert exporter.status_of(run.log_id) == "complete"


# --- the embedded store and a real server ------------------------------------------------------


def _record_trace() -> str:
    """A chat span, then a tool span kept at its start with a flow inside it (the tool's log
    is created early, as incomplete, and closed by an update after the flow)."""
    with flow("agent/run") as run:
        record_span(chat_span(), flowtrace.current_log())
        tool = open_span_log(TRACE, "1111111111111111", None, "execute_tool add")
        assert tool is not None
        with flow("tools/add"):
            pass
        tool.end(tool_span())
    return run.log_id


def _assert_stored(store: Store, run_id: str) -> None:
    trace: Any = store.get_log(run_id)
    record = trace.model_dump(mode="json", exclude_none=True)
    children = {child["id"]: child for child in record["trace_children"]}
    chat = children[span_log_id(TRACE, "00f067aa0ba902b7")]
    assert chat["flow"]["type"] == "prompt" and chat["trace_parent_id"] == run_id
    assert chat["flow"]["attributes"]["model"] == "gpt-4o-2024-08-06"
    assert (chat["prompt_tokens"], chat["output_tokens"]) == (12, 3)
    assert chat["output_message"]["content"] == "4"
    tool = children[span_log_id(TRACE, "1111111111111111")]
    assert tool["flow"]["type"] == "tool" and tool["trace_parent_id"] == run_id
    assert tool["flow"]["attributes"]["function"]["name"] == "add"
    assert tool["output"] == "4" and tool["trace_status"] == "complete"
    [inside] = tool["trace_children"]
    assert inside["flow"]["path"] == "tools/add"


def test_the_embedded_store_keeps_the_kinds(tmp_path: Path) -> None:
    db = tmp_path / "flowtrace.db"
    with fresh_pipeline(db_path=str(db)):
        run_id = _record_trace()
        assert flowtrace.flush(WAIT_S)
    with Store(db) as store:
        _assert_stored(store, run_id)


def test_a_real_server_gets_prompt_and_tool_logs(tmp_path: Path) -> None:
    db = tmp_path / "server.db"
    with (
        start_server(db) as server,
        fresh_pipeline(base_url=server.base_url, api_key=server.api_key),
    ):
        run_id = _record_trace()
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["dropped"] == {}
    with Store(db) as store:
        _assert_stored(store, run_id)


def _contract_server_without_file_routes(seen: list[tuple[str, str]]) -> httpx.MockTransport:
    """A server of the contract with flow routes only (FastAPI's generic 404 elsewhere)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        path = request.url.path
        if path.endswith("/health"):
            return httpx.Response(404, json={"detail": "Not Found"})
        if path.endswith("/flows/log") or "/flows/logs/" in path:
            body = json.loads(request.content)
            return httpx.Response(200, json={"id": body.get("log_id", path.rsplit("/", 1)[-1])})
        return httpx.Response(404, json={"detail": "Not Found"})

    return httpx.MockTransport(handle)


def test_a_server_without_prompt_routes_gets_a_child_flow_log() -> None:
    seen: list[tuple[str, str]] = []
    exporter = HttpExporter(
        "http://contract/v5", transport=_contract_server_without_file_routes(seen)
    )
    with fresh_pipeline(exporter):
        with flow("agent/run"):
            record_span(chat_span(), flowtrace.current_log())
            record_span(chat_span("00f067aa0ba902b8"), flowtrace.current_log())
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["dropped"] == {}
    posts = [path for method, path in seen if method == "POST"]
    # the route is tried once; from then on the prompt logs go as flow logs
    assert posts == ["/v5/flows/log", "/v5/prompts/log", "/v5/flows/log", "/v5/flows/log"]


def test_the_fallback_keeps_the_prompt_fields_in_metadata() -> None:
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/prompts/log"):
            return httpx.Response(405)
        body = json.loads(request.content or b"{}")
        bodies.append(body)
        return httpx.Response(200, json={"id": body.get("log_id", "x")})

    exporter = HttpExporter("http://contract/v5", transport=httpx.MockTransport(handle))
    with fresh_pipeline(exporter):
        record_span(chat_span(), None)
        assert flowtrace.flush(WAIT_S)
    [body] = [b for b in bodies if b.get("log_id") == span_log_id(TRACE, "00f067aa0ba902b7")]
    assert "prompt" not in body and "prompt_tokens" not in body
    assert body["metadata"]["prompt"]["model"] == "gpt-4o-2024-08-06"
    assert body["metadata"]["prompt_tokens"] == 12
    assert body["output_message"] == {"role": "assistant", "content": "4"}


@pytest.mark.parametrize("status", [404, 409])
def test_a_refusal_by_the_prompt_route_is_not_taken_for_a_missing_route(status: int) -> None:
    """A 404 naming the log's parent is the route's answer: the prompt routes stay in use."""
    exporter = HttpExporter(
        "http://x/v5",
        transport=httpx.MockTransport(
            lambda r: httpx.Response(status, json={"detail": "trace parent log 'a' not found"})
        ),
    )
    try:
        from flowtrace.exporters import Operation

        [outcome] = exporter.export([Operation("prompt_log", "p", {"log_id": "p"})])
    finally:
        exporter.close()
    assert outcome.status == status and exporter.file_logs


def test_a_batch_mixes_routes_in_order_and_stops_at_a_failure_worth_retrying() -> None:
    """Flow logs through the batch route, the prompt log on its own route between them; after
    its 503 what follows is not attempted (it may depend on it)."""
    from flowtrace.exporters import Operation

    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"status": "ok", "batch": True})
        if request.url.path.endswith("/prompts/log"):
            return httpx.Response(503, json={"detail": "busy"})
        operations = json.loads(request.content)["operations"]
        results = [{"status": 200, "body": {"id": op["body"]["log_id"]}} for op in operations]
        return httpx.Response(200, json={"results": results})

    exporter = HttpExporter("http://x/v5", transport=httpx.MockTransport(handle))
    try:
        outcomes = exporter.export(
            [
                Operation("log", "a", {"log_id": "a"}),
                Operation("log", "b", {"log_id": "b", "trace_parent_id": "a"}),
                Operation("prompt_log", "p", {"log_id": "p", "trace_parent_id": "a"}),
                Operation("log", "c", {"log_id": "c", "trace_parent_id": "a"}),
            ]
        )
    finally:
        exporter.close()
    assert [o.status for o in outcomes] == [200, 200, 503, 0]
    assert outcomes[3].error == "not attempted"
    assert seen == ["/v5/health", "/v5/flows/logs/batch", "/v5/prompts/log"]
