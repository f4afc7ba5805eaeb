"""The examples run as a user runs them (`python examples/X.py`, in a fresh directory) and leave
the trace they describe: in the embedded store, or on a real `flowtrace serve` over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from flowtrace.store import Store
from tests.serverutil import start_server

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SRC = ROOT / "src"
RUN_TIMEOUT_S = 60.0

AGENT_CHILDREN = Counter(
    {
        "agents/support/plan": 1,
        "agents/support/tools/search_docs": 1,
        "agents/support/tools/lookup_order": 2,
        "agents/support/tools/fetch_invoice": 1,
        "agents/support/answer": 1,
    }
)


def run_example(name: str, cwd: Path, **env_vars: str | None) -> subprocess.CompletedProcess[str]:
    """`python examples/<name>` in `cwd`, with no FLOWTRACE_* setting but `env_vars`."""
    return run_python(str(EXAMPLES / name), cwd=cwd, **env_vars)


def run_python(*args: str, cwd: Path, **env_vars: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    env.update({key: value for key, value in env_vars.items() if value is not None})
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def stored_traces(db_path: Path) -> list[dict[str, Any]]:
    """Every trace in a database, as `GET /logs/{root id}` returns it (JSON, no nulls)."""
    assert db_path.is_file()
    with Store(db_path) as store:
        roots = store.list_logs(roots_only=True, size=100).records
        return [store.get_log(root.id).model_dump(mode="json", exclude_none=True) for root in roots]


def children_by_path(root: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for child in root["trace_children"]:
        found.setdefault(child["flow"]["path"], []).append(child)
    return found


def check_agent_trace(root: dict[str, Any], stdout: str) -> None:
    """The trace examples/agent.py describes; `stdout` is what the run printed."""
    assert root["flow"]["path"] == "agents/support"
    assert root["flow"]["attributes"]["model"] == "fake-llm-1"
    assert root.get("trace_parent_id") is None
    assert root["inputs"]["ticket"]["order_id"] == "A-1042"
    assert [m["role"] for m in root["messages"]] == ["system", "user"]
    assert root.get("error") is None
    assert root["metadata"]["order_lookups"] == 2
    answer = root["output_message"]["content"]
    assert root["output_message"]["role"] == "assistant"
    assert answer.startswith("Your order A-1042 is shipped")
    assert answer in stdout
    # Printed progress lands in the innermost open log: the agent's lines in the root.
    assert "[agent] planning" in root["stdout"]
    assert (
        "[agent] lookup_order failed (order service unavailable (503)); retrying"
        in (root["stdout"])
    )
    assert "search_docs:" not in root["stdout"]

    # Every log is a direct child of the root, the thread-pool tool included (propagated).
    assert Counter(c["flow"]["path"] for c in root["trace_children"]) == AGENT_CHILDREN
    logs = [root, *root["trace_children"]]
    assert all(log["trace_id"] == root["id"] for log in logs)
    assert all(log["trace_status"] == "complete" for log in logs)
    assert all(c.get("trace_parent_id") == root["id"] for c in root["trace_children"])
    assert not any(c["trace_children"] for c in root["trace_children"])
    children = children_by_path(root)

    (planner,) = children["agents/support/plan"]
    assert planner["flow"]["attributes"] == {"model": "fake-llm-1", "temperature": 0}
    assert planner["messages"] == root["messages"]
    assert json.loads(planner["output"])["steps"] == [
        "search_docs",
        "lookup_order",
        "fetch_invoice",
    ]

    # The flaky tool: two logs, the first with the error, the retry with the order.
    failed, retried = sorted(children["agents/support/tools/lookup_order"], key=_start)
    assert failed.get("error") == "ConnectionError: order service unavailable (503)"
    assert "Traceback" in failed["metadata"]["flowtrace"]["traceback"]
    assert failed["inputs"] == {"order_id": "A-1042"}  # `self` left out
    assert "attempt 1" in failed["stdout"]
    assert retried.get("error") is None
    assert json.loads(retried["output"])["status"] == "shipped"
    assert "attempt 2" in retried["stdout"]
    assert sum(1 for log in logs if log.get("error")) == 1

    (invoice,) = children["agents/support/tools/fetch_invoice"]
    assert invoice["output"] == "https://shop.example.com/invoices/A-1042.pdf"
    assert "fetch_invoice: rendering the invoice of A-1042 (blocking)" in invoice["stdout"]

    (search,) = children["agents/support/tools/search_docs"]
    assert search["inputs"] == {"query": "shipping status", "k": 1}
    assert "search_docs: searching for 'shipping status'" in search["stdout"]

    (streamed,) = children["agents/support/answer"]
    assert streamed["output"] == answer  # the generator's tokens, joined
    assert streamed.get("error") is None


def _start(log: dict[str, Any]) -> tuple[str, str]:
    # Wire timestamps are ISO UTC at microseconds; ids break a tie (they grow in a process).
    return log["start_time"], log["id"]


def test_quickstart(tmp_path: Path) -> None:
    db_path = tmp_path / "traces.db"
    result = succeeded(run_example("quickstart.py", tmp_path, FLOWTRACE_DB_PATH=str(db_path)))

    assert "quickstart/answer" in result.stdout  # the printed tree
    assert "ERROR ValueError: the answer would leak a password" in result.stdout
    (root,) = stored_traces(db_path)
    assert root["flow"]["path"] == "quickstart/answer"
    assert root["inputs"] == {"question": "what does flowtrace do?"}
    assert root["output_message"]["role"] == "assistant"
    assert "policy check failed; answering anyway" in root["stdout"]
    retrieve, check = root["trace_children"]
    assert retrieve["flow"]["path"] == "quickstart/retrieve"
    assert "searching for 'what does flowtrace do?'" in retrieve["stdout"]
    assert check["flow"]["path"] == "quickstart/check_policy"
    assert check.get("error") == "ValueError: the answer would leak a password"
    assert not (tmp_path / ".flowtrace").exists()


def test_agent_writes_its_trace_to_the_embedded_store(tmp_path: Path) -> None:
    db_path = tmp_path / "traces.db"
    result = succeeded(run_example("agent.py", tmp_path, FLOWTRACE_DB_PATH=str(db_path)))

    (root,) = stored_traces(db_path)
    check_agent_trace(root, result.stdout)
    assert f"trace {root['id']} recorded" in result.stdout
    assert f"flowtrace show {root['id']}" in result.stdout
    assert "flowtrace ui" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / ".flowtrace").exists()


def test_agent_hint_shows_the_trace(tmp_path: Path) -> None:
    """With nothing configured: .flowtrace/flowtrace.db here, which `flowtrace show` reads."""
    result = succeeded(run_example("agent.py", tmp_path))

    (root,) = stored_traces(tmp_path / ".flowtrace" / "flowtrace.db")
    check_agent_trace(root, result.stdout)
    shown = run_python("-m", "flowtrace", "show", root["id"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "agents/support/tools/fetch_invoice" in shown.stdout
    assert "ConnectionError: order service unavailable (503)" in shown.stdout


def test_llm_agent_traces_its_model_calls_as_prompt_logs(tmp_path: Path) -> None:
    """The first example a new user runs: the real OpenAI SDK against the fake model the
    example starts; with nothing configured, the embedded store here, read by `show last`."""
    result = succeeded(run_example("llm_agent.py", tmp_path))
    assert "In Paris it is sunny, 21 °C right now." in result.stdout
    assert result.stderr == ""

    (root,) = stored_traces(tmp_path / ".flowtrace" / "flowtrace.db")
    assert root["flow"]["path"] == "agents/weather"
    assert root["inputs"] == {"question": "What's the weather in Paris?"}
    assert root["output"] == "In Paris it is sunny, 21 °C right now."
    asked, tool, answered = sorted(root["trace_children"], key=_start)
    assert [c["flow"]["type"] for c in (asked, tool, answered)] == ["prompt", "flow", "prompt"]
    assert all(c["trace_parent_id"] == root["id"] for c in (asked, tool, answered))

    assert asked["flow"]["path"] == "prompt/chat fake-gpt"
    assert asked["flow"]["attributes"]["tools"][0]["name"] == "get_weather"
    assert [m["role"] for m in asked["messages"]] == ["system", "user"]
    (call,) = asked["output_message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert asked["finish_reason"] == "tool_calls"
    assert (asked["prompt_tokens"], asked["output_tokens"]) == (20, 10)

    assert tool["flow"]["path"] == "agents/weather/tools/get_weather"
    assert tool["output"] == "sunny, 21 °C"

    assert [m["role"] for m in answered["messages"]] == ["system", "user", "assistant", "tool"]
    assert answered["output_message"]["content"] == root["output"]
    assert answered["metadata"]["gen_ai.request.stream"] is True
    assert answered["metadata"]["gen_ai.response.time_to_first_chunk"] > 0
    assert answered["prompt_tokens"] > asked["prompt_tokens"]

    shown = run_python("-m", "flowtrace", "show", "last", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "prompt/chat fake-gpt (prompt)" in shown.stdout
    assert "output message: assistant: → get_weather()" in shown.stdout


def test_team_server_sends_the_trace_over_http(tmp_path: Path) -> None:
    embedded = tmp_path / "embedded.db"
    with start_server(tmp_path / "server.db", api_keys=("dev-key",)) as server:
        result = succeeded(
            run_example(
                "team_server.py",
                tmp_path,
                FLOWTRACE_BASE_URL=server.base_url,
                FLOWTRACE_API_KEY="dev-key",
                FLOWTRACE_DB_PATH=str(embedded),
            )
        )
        with server.client() as client:
            roots = client.get("/logs", params={"roots_only": True}).raise_for_status().json()
            (listed,) = roots["records"]
            root = client.get(f"/logs/{listed['id']}").raise_for_status().json()

    check_agent_trace(root, result.stdout)
    assert f"sending logs to {server.base_url}" in result.stdout
    assert f"trace {root['id']} delivered to {server.base_url}" in result.stdout
    assert f"{server.root_url}/traces/{root['id']}" in result.stdout
    assert "'dropped': {}" in result.stdout
    assert not embedded.exists()  # nothing went to the embedded store
    # The server's own database holds the same trace.
    (stored,) = stored_traces(server.db_path)
    assert stored["id"] == root["id"]


def test_team_server_reports_a_refused_key(tmp_path: Path) -> None:
    with start_server(tmp_path / "server.db", api_keys=("dev-key",)) as server:
        result = run_example(
            "team_server.py",
            tmp_path,
            FLOWTRACE_BASE_URL=server.base_url,
            FLOWTRACE_API_KEY="not-the-key",
            FLOWTRACE_DB_PATH=str(tmp_path / "embedded.db"),
        )
        with server.client() as client:
            page = client.get("/logs").raise_for_status().json()

    assert result.returncode == 1, result.stderr
    assert "NOT delivered" in result.stdout
    assert "401" in result.stdout
    assert page["records"] == []
