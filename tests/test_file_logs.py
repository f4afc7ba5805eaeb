"""Prompt and tool logs through the contract's routes on a real server: kernels are versions,
typed answers, updates, kinds kept apart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.serverutil import InProcessServer, app_server

__all__ = ["app_server"]


@pytest.fixture
def client(app_server: InProcessServer) -> Iterator[httpx.Client]:
    with app_server.client() as http:
        yield http


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


PROMPT = {
    "model": "gpt-4o",
    "provider": "openai",
    "temperature": 0.2,
    "template": "Answer {{question}} for {{ user }}.",
}


def test_a_prompt_log_is_one_llm_call(client: httpx.Client) -> None:
    parent = ok(client.post("/flows/log", json={"path": "agents/a", "log_id": "p1"}))
    created = ok(
        client.post(
            "/prompts/log",
            json={
                "path": "prompts/answer",
                "prompt": PROMPT,
                "trace_parent_id": parent["id"],
                "messages": [{"role": "user", "content": "hi"}],
                "output_message": {"role": "assistant", "content": "hello"},
                "prompt_tokens": 10,
                "output_tokens": 2,
                "cache_read_tokens": 4,
                "prompt_cost": 0.001,
                "finish_reason": "stop",
                "log_status": "complete",
            },
        )
    )
    assert set(created) == {"id", "prompt_id", "version_id", "log_status"}
    assert created["prompt_id"].startswith("pr_")
    again = ok(client.post("/prompts/log", json={"path": "prompts/answer", "prompt": PROMPT}))
    assert again["version_id"] == created["version_id"]  # the same kernel, the same version
    assert "trace_status" in again and again["trace_status"] == "complete"  # no status: done
    other = ok(
        client.post(
            "/prompts/log",
            json={"path": "prompts/answer", "prompt": {**PROMPT, "temperature": 0.9}},
        )
    )
    assert other["version_id"] != created["version_id"]
    record = ok(client.get(f"/logs/{created['id']}"))
    assert "flow" not in record
    prompt = record["prompt"]
    assert (prompt["model"], prompt["temperature"], prompt["type"]) == ("gpt-4o", 0.2, "prompt")
    assert prompt["inputs"] == [{"name": "question"}, {"name": "user"}]
    assert prompt["total_logs_count"] >= 1
    assert (record["prompt_tokens"], record["cache_read_tokens"]) == (10, 4)
    assert record["finish_reason"] == "stop"
    updated = ok(
        client.patch(
            f"/prompts/{created['prompt_id']}/log/{created['id']}",
            json={"output_tokens": 3, "metadata": {"rated": 5}},
        )
    )
    assert (updated["output_tokens"], updated["metadata"]) == (3, {"rated": 5})
    assert other["prompt_id"] == created["prompt_id"]  # another version of the same prompt
    elsewhere = ok(client.post("/prompts/log", json={"path": "prompts/other", "prompt": PROMPT}))
    wrong_file = client.patch(f"/prompts/{elsewhere['prompt_id']}/log/{created['id']}", json={})
    assert wrong_file.status_code == 404
    only = ok(client.get("/logs", params={"kind": "prompt", "size": 100}))
    assert {log["id"] for log in only["records"]} >= {created["id"], again["id"]}
    assert all("prompt" in log for log in only["records"])
    flows = ok(client.get("/flows"))["records"]
    assert [flow["path"] for flow in flows] == ["agents/a"]  # the contract's flows only


def test_a_tool_log_and_kinds_kept_apart(client: httpx.Client) -> None:
    tool = {
        "function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}
    }
    created = ok(
        client.post(
            "/tools/log",
            json={"path": "tools/lookup", "tool": tool, "inputs": {"q": "x"}, "output": "found"},
        )
    )
    assert created["tool_id"].startswith("tl_")
    record = ok(client.get(f"/logs/{created['id']}"))
    assert record["tool"]["function"]["name"] == "lookup"
    assert record["tool"]["inputs"] == []
    done = ok(
        client.patch(
            f"/tools/{created['tool_id']}/log/{created['id']}", json={"error": "late failure"}
        )
    )
    assert done["error"] == "late failure"
    as_prompt = client.post("/prompts/log", json={"path": "tools/lookup", "prompt": PROMPT})
    assert as_prompt.status_code == 409
    as_flow = client.post("/flows/log", json={"path": "tools/lookup"})
    assert as_flow.status_code == 409
    assert (
        client.patch(f"/prompts/{created['tool_id']}/log/{created['id']}", json={}).status_code
        == 404
    )
    assert client.get("/logs", params={"kind": "nope"}).status_code == 422
