"""The real Humanloop SDKs against `flowtrace serve` on loopback, each in a venv of its own.

- 0.8.38 (the last stable release, the `log_status` era): `@flow` creates the flow log over
  REST, then every span (the flow's completing span, each `@tool`) goes to
  `/v5/import/otel/v1/traces` as proto3-JSON with no Content-Type, from one upload thread.
- 0.8.24: `prompts.log`, `tools.log` and `prompts.update_log` with `trace_parent_id`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sdkvenv import sdk_python
from tests.serverutil import RunningServer, start_server

# Building an SDK's venv on first use (pip, from PyPI) may take minutes on a fresh machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PROGRAMS = Path(__file__).with_name("humanloop_sdk")
CALLS = 100


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with start_server(tmp_path / "sdk.db") as running:
        yield running


def run(python: Path, program: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), str(PROGRAMS / program), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def logs_of(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    flows = client.get("/flows", params={"size": 1000}).json()["records"]
    files = {flow["path"]: flow["id"] for flow in flows}
    found = client.get("/logs", params={"file_id": files[path], "size": 1000})
    assert found.status_code == 200, found.text
    records: list[dict[str, Any]] = found.json()["records"]
    return records


def test_sdk_0_8_38_flows_and_tools(server: RunningServer) -> None:
    python = sdk_python("humanloop-0.8.38", ["humanloop==0.8.38", "requests"])
    outcome = run(python, "flows_and_tools.py", server.base_url, server.api_key or "", str(CALLS))
    assert outcome == {"threads_alive": [True], "unfinished": 0}
    with server.client() as client:
        flows = logs_of(client, "sdk/agent")
        assert len(flows) == CALLS
        for flow in flows:
            record = client.get(f"/logs/{flow['id']}").json()
            assert record["trace_status"] == "complete", record
            question = record["inputs"]["question"]
            assert record["output"] == f"{question}: 5"
            tools = record["trace_children"]
            assert [child["tool"]["path"] for child in tools] == (
                ["sdk/add", "sdk/divide"] if question.endswith("0") else ["sdk/add"]
            )
            add = tools[0]
            assert add["inputs"] == {"a": "2", "b": "3"}  # the SDK sends attributes as text
            assert add["output"] == "5"
            assert add["tool"]["function"]["name"] == "add"
            assert add["trace_parent_id"] == flow["id"]
            if len(tools) == 2:
                assert tools[1]["error"] == "division by zero"


def test_sdk_0_8_24_prompt_and_tool_logs(server: RunningServer) -> None:
    python = sdk_python("humanloop-0.8.24", ["humanloop==0.8.24"])
    outcome = run(python, "prompt_and_tool_logs.py", server.base_url, server.api_key or "")
    assert outcome["prompt_id"].startswith("pr_") and outcome["tool_id"].startswith("tl_")
    assert outcome["updated_type"] == "PromptLogResponse"
    assert outcome["updated_output_tokens"] == 4
    assert outcome["fetched_type"] == "FlowLogResponse"
    assert outcome["children"] == ["PromptLogResponse", "ToolLogResponse"]
    with server.client() as client:
        trace = client.get(f"/logs/{outcome['trace']}").json()
        prompt, tool = trace["trace_children"]
        assert prompt["prompt"]["model"] == "gpt-4o"
        assert prompt["prompt"]["temperature"] == 0.3
        assert prompt["prompt"]["version_id"] == outcome["prompt_version"]
        assert (prompt["prompt_tokens"], prompt["output_tokens"]) == (12, 4)
        assert prompt["output_message"] == {"role": "assistant", "content": "Sunny."}
        assert prompt["metadata"] == {"rated": "good"}
        assert prompt["trace_status"] == "complete"
        assert tool["tool"]["function"]["name"] == "lookup"
        assert tool["output"] == "found"
        assert trace["output"] == "Sunny."
