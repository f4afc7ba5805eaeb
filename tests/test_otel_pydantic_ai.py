"""A real agent framework: pydantic-ai, instrumented with flowtrace's private provider, runs
its `TestModel` (no network, no keys) and a tool inside a flow; its agent, chat and tool spans
become logs under the flow, with messages and token counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flowtrace
import flowtrace.otel
from flowtrace import flow
from flowtrace.store import Store
from flowtrace.testing import capture_logs
from tests.pipelineutil import WAIT_S, fresh_pipeline

pydantic_ai = pytest.importorskip("pydantic_ai")

from pydantic_ai.models.instrumented import InstrumentationSettings  # noqa: E402
from pydantic_ai.models.test import TestModel  # noqa: E402


def _agent() -> Any:
    agent = pydantic_ai.Agent(TestModel(), name="support", instructions="Be brief.")
    agent.instrument = InstrumentationSettings(tracer_provider=flowtrace.otel.tracer_provider())

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    return agent


def test_agent_chat_and_tool_logs_sit_under_the_enclosing_flow() -> None:
    agent = _agent()
    with capture_logs() as captured, flow("support/answer") as answer:
        result = agent.run_sync("What is 2+2?")
    [tree] = captured.trees()
    assert tree["log_id"] == answer.log_id
    [run] = tree["children"]
    assert run["path"] == "flow/support"
    assert run["output"] == result.output
    chat1, tool, chat2 = run["children"]
    assert [chat1["path"], tool["path"], chat2["path"]] == [
        "prompt/chat test",
        "tool/add",
        "prompt/chat test",
    ]
    # the first call: the question (and the instructions), answered by a tool call
    assert {"role": "user", "content": "What is 2+2?"} in chat1["messages"]
    assert any(m["role"] == "system" and m["content"] == "Be brief." for m in chat1["messages"])
    [call] = chat1["output_message"]["tool_calls"]
    assert call["function"]["name"] == "add"
    assert chat1["prompt"]["model"] == "test"
    assert chat1["prompt_tokens"] > 0 and chat1["output_tokens"] > 0
    # the tool ran with the model's arguments
    assert tool["tool"]["function"]["name"] == "add"
    assert tool["inputs"] == {"a": 0, "b": 0} and tool["output"] == "0"
    # the second call saw the tool's answer and gave the final output
    assert any(m["role"] == "tool" for m in chat2["messages"])
    assert chat2["output_message"]["content"] == result.output
    # an agent's usage totals stay in its metadata: the trace counts each call once
    assert "prompt_tokens" not in run


def test_the_agent_trace_in_the_embedded_store(tmp_path: Path) -> None:
    agent = _agent()
    db = tmp_path / "flowtrace.db"
    with fresh_pipeline(db_path=str(db)):
        with flow("support/answer") as answer:
            agent.run_sync("What is 2+2?")
        assert flowtrace.flush(WAIT_S)
        assert flowtrace.stats()["dropped"] == {}
    with Store(db) as store:
        record = store.get_log(answer.log_id).model_dump(mode="json", exclude_none=True)
    [run] = record["trace_children"]
    kinds = [child["flow"]["type"] for child in run["trace_children"]]
    assert kinds == ["prompt", "tool", "prompt"]
    assert all(child["trace_status"] == "complete" for child in run["trace_children"])
