"""Prompt and tool logs in the batch extension: the server takes them as their own routes do
(both store backends), the exporter sends a trace of them in one request where the health
answer says so, one by one where it does not, and falls back without loss where a server
refuses them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowtrace._contract import BATCH_OPERATIONS_FIELD, BATCH_OPS
from flowtrace.exporters import Operation
from flowtrace.exporters.http import HttpExporter
from tests.serverutil import InProcessServer, serve_in_thread
from tests.test_server_contract import app_server, client

__all__ = ["app_server", "client"]  # the server over each backend, and its client

PROMPT = {"model": "gpt-4o", "provider": "openai", "temperature": 0.2}
TOOL = {"function": {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}}
# Fields the server sets from its own clock or counts: not part of what a path stored.
_CLOCK_FIELDS = {"created_at", "updated_at", "last_used_at"}


def _at(second: int) -> str:
    return f"2026-03-01T12:00:{second:02d}.000000Z"


def trace_operations(prefix: str, prompts: int = 2, tools: int = 2) -> list[Operation]:
    """A flow root (open), prompt and tool logs under it (one tool under the first prompt),
    an update of the first prompt log, and the root's close: what an agent's trace sends."""
    root = f"{prefix}root"
    ops = [
        Operation(
            "log",
            root,
            {"log_id": root, "path": "agents/a", "inputs": {"q": "hi"}, "start_time": _at(0)},
        )
    ]
    for n in range(prompts):
        log_id = f"{prefix}p{n}"
        body = {
            "log_id": log_id,
            "path": "prompts/answer",
            "prompt": PROMPT,
            "trace_parent_id": root,
            "messages": [{"role": "user", "content": f"question {n}"}],
            "output_message": {"role": "assistant", "content": f"answer {n}"},
            "prompt_tokens": 10 + n,
            "output_tokens": 2,
            "finish_reason": "stop",
            "start_time": _at(1 + n),
            "end_time": _at(2 + n),
            "log_status": "incomplete" if n == 0 else "complete",
        }
        ops.append(Operation("prompt_log", log_id, body))
    for n in range(tools):
        log_id = f"{prefix}t{n}"
        parent = f"{prefix}p0" if n == 0 else root
        body = {
            "log_id": log_id,
            "path": "tools/lookup",
            "tool": TOOL,
            "trace_parent_id": parent,
            "inputs": {"key": n},
            "output": f"found {n}",
            "start_time": _at(10 + n),
            "end_time": _at(11 + n),
        }
        ops.append(Operation("tool_log", log_id, body))
    if prompts:
        first = f"{prefix}p0"
        ops.append(Operation("update", first, {"log_status": "complete", "end_time": _at(20)}))
    ops.append(Operation("update", root, {"log_status": "complete", "output": "done"}))
    return ops


def stored_trace(client: httpx.Client, root: str, prefix: str) -> Any:
    """The stored trace under `root`, its ids without their path's prefix and the server's
    clock left out, so that two paths' traces compare equal."""
    response = client.get(f"/logs/{root}")
    assert response.status_code == 200, response.text

    def normal(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items() if k not in _CLOCK_FIELDS}
        if isinstance(value, list):
            return [normal(v) for v in value]
        if isinstance(value, str) and value.startswith(prefix):
            return "~" + value[len(prefix) :]
        return value

    trace = normal(response.json())
    for kind in ("flow", "prompt", "tool"):  # counters of the file, shared by both paths
        _drop_counts(trace, kind)
    return trace


def _drop_counts(record: Any, kind: str) -> None:
    if isinstance(record, dict):
        file = record.get(kind)
        if isinstance(file, dict):
            file.pop("total_logs_count", None)
            file.pop("version_logs_count", None)
        for child in record.get("trace_children", ()):
            _drop_counts(child, kind)


# --- the server -----------------------------------------------------------------------------


def test_a_batch_stores_prompt_and_tool_logs_as_their_own_routes_do(client: httpx.Client) -> None:
    batched = trace_operations("a-")
    response = client.post(
        "/flows/logs/batch", json={"operations": [op.to_batch_item() for op in batched]}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200] * len(batched)
    assert [r["body"]["id"] for r in results] == [op.log_id for op in batched]
    assert results[1]["body"]["prompt_id"].startswith("pr_")
    assert results[3]["body"]["tool_id"].startswith("tl_")
    for op in trace_operations("b-"):  # the single routes, one request each
        if op.kind == "update":
            answer = client.patch(f"/flows/logs/{op.log_id}", json=op.body)
        else:
            route = {"log": "/flows/log", "prompt_log": "/prompts/log", "tool_log": "/tools/log"}
            answer = client.post(route[op.kind], json=op.body)
        assert answer.status_code == 200, answer.text
    one_by_one = stored_trace(client, "b-root", "b-")
    assert stored_trace(client, "a-root", "a-") == one_by_one
    prompt = one_by_one["trace_children"][0]
    assert (prompt["prompt"]["model"], prompt["prompt_tokens"]) == ("gpt-4o", 10)
    assert prompt["trace_children"][0]["tool"]["function"]["name"] == "lookup"


def test_a_batch_refuses_a_prompt_or_tool_log_as_its_route_does(client: httpx.Client) -> None:
    parent = {"path": "agents/a", "log_id": "done-parent", "log_status": "complete"}
    assert client.post("/flows/log", json=parent).status_code == 200
    orphan = {"path": "prompts/answer", "prompt": PROMPT, "trace_parent_id": "missing"}
    late = {"path": "tools/lookup", "tool": TOOL, "trace_parent_id": "done-parent"}
    wrong_kind = {"path": "agents/a", "tool": TOOL}  # a flow's path
    single = [
        client.post("/prompts/log", json=orphan),
        client.post("/tools/log", json=late),
        client.post("/tools/log", json=wrong_kind),
    ]
    assert [r.status_code for r in single] == [404, 409, 409]
    operations = [
        {"op": "prompt_log", "body": orphan},
        {"op": "tool_log", "body": late},
        {"op": "tool_log", "body": wrong_kind},
        {"op": "prompt_log", "body": {"path": "prompts/answer", "bogus": 1}},
        {"op": "span", "body": {}},
        {"op": ["prompt_log"], "body": {}},
        {"op": "prompt_log", "log_id": "x", "body": {"path": "prompts/answer"}},
    ]
    response = client.post("/flows/logs/batch", json={"operations": operations})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for result, answer in zip(results[:3], single, strict=True):
        assert (result["status"], result["body"]) == (answer.status_code, answer.json())
    assert [r["status"] for r in results[3:]] == [422] * 4
    assert results[3]["body"]["detail"][0]["loc"] == ["body", "bogus"]
    assert [r["body"]["detail"][0]["loc"] for r in results[4:6]] == [["op"], ["op"]]
    assert results[6]["body"]["detail"][0]["loc"] == ["log_id"]  # creates name no log_id


# --- the exporter ---------------------------------------------------------------------------


class Recording(httpx.HTTPTransport):
    """The real transport, noting each request; `old` answers the health check as a server
    from before prompt and tool logs in batches (no `batch_operations`)."""

    def __init__(self, *, old: bool = False) -> None:
        super().__init__()
        self.requests: list[str] = []
        self._old = old

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        response = super().handle_request(request)
        if self._old and request.url.path.endswith("/health"):
            response.read()
            health = response.json()
            del health[BATCH_OPERATIONS_FIELD]
            return httpx.Response(200, json=health)
        return response


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[InProcessServer]:
    with serve_in_thread(tmp_path / "flowtrace.db") as running:
        yield running


def _export(server: InProcessServer, transport: httpx.BaseTransport, ops: list[Operation]) -> None:
    exporter = HttpExporter(server.base_url, server.api_key, transport=transport)
    try:
        outcomes = exporter.export(ops)
    finally:
        exporter.close()
    assert [(o.status, o.body["id"]) for o in outcomes] == [(200, op.log_id) for op in ops]


def test_a_trace_of_llm_and_tool_calls_goes_in_one_request(sqlite_server: InProcessServer) -> None:
    """One batch request for the whole trace where the server takes the kinds; one request per
    prompt or tool log where it is older; the same stored trace either way."""
    batched, old = Recording(), Recording(old=True)
    _export(sqlite_server, batched, trace_operations("a-", prompts=3, tools=2))
    _export(sqlite_server, old, trace_operations("b-", prompts=3, tools=2))
    assert batched.requests == ["GET /v5/health", "POST /v5/flows/logs/batch"]
    assert old.requests == [
        "GET /v5/health",
        "POST /v5/flows/logs/batch",  # the root
        *["POST /v5/prompts/log"] * 3,
        *["POST /v5/tools/log"] * 2,
        "POST /v5/flows/logs/batch",  # the updates
    ]
    with sqlite_server.client() as client:
        assert stored_trace(client, "a-root", "a-") == stored_trace(client, "b-root", "b-")


class Refusing:
    """A flowtrace server that says its batches take prompt and tool logs, then refuses them:
    the whole batch with a 422 (`whole`), or each of them with the 422 of an unknown `op`."""

    def __init__(self, refusal: str) -> None:
        self.refusal = refusal
        self.created: dict[str, str] = {}  # log id -> the route or op that stored it
        self.batches: list[list[str]] = []  # the ops of each batch request

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/health"):
            return httpx.Response(200, json={"status": "ok", "batch": True, **_ALL_KINDS})
        body = json.loads(request.content)
        if not path.endswith("/batch"):
            self.created.setdefault(body["log_id"], path.rsplit("/", 2)[-2])
            return httpx.Response(200, json={"id": body["log_id"]})
        operations = body["operations"]
        self.batches.append([op["op"] for op in operations])
        file_logs = [op for op in operations if op["op"] in ("prompt_log", "tool_log")]
        if file_logs and self.refusal == "whole":
            return httpx.Response(422, json={"detail": [{"loc": ["body"], "msg": "bad"}]})
        return httpx.Response(200, json={"results": [self._result(op) for op in operations]})

    def _result(self, op: dict[str, Any]) -> dict[str, Any]:
        if op["op"] == "update":
            return {"status": 200, "body": {"id": op["log_id"]}}
        if op["op"] != "log":
            unknown = [{"loc": ["op"], "msg": "op is 'log' or 'update'", "type": "literal_error"}]
            return {"status": 422, "body": {"detail": unknown}}
        self.created.setdefault(op["body"]["log_id"], "batch")
        return {"status": 200, "body": {"id": op["body"]["log_id"]}}


_ALL_KINDS = {BATCH_OPERATIONS_FIELD: list(BATCH_OPS)}


@pytest.mark.parametrize("refusal", ["whole", "each"])
def test_a_server_that_refuses_the_kinds_in_a_batch_gets_them_one_by_one(
    refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = Refusing(refusal)
    exporter = HttpExporter("http://flowtrace/v5", transport=server.transport())
    try:
        with caplog.at_level(logging.WARNING, logger="flowtrace"):
            first = exporter.export(trace_operations("a-"))
            second = exporter.export(trace_operations("b-"))
    finally:
        exporter.close()
    assert [o.status for o in [*first, *second]] == [200] * (len(first) + len(second))
    for prefix in ("a-", "b-"):  # every log stored, each prompt and tool log by its route
        assert server.created == server.created | {
            f"{prefix}root": "batch",
            f"{prefix}p0": "prompts",
            f"{prefix}p1": "prompts",
            f"{prefix}t0": "tools",
            f"{prefix}t1": "tools",
        }
    assert len(server.created) == 10
    # tried in a batch once; from then on no batch holds a prompt or tool log
    mixed = [ops for ops in server.batches if {"prompt_log", "tool_log"} & set(ops)]
    assert len(mixed) == 1
    warnings = [r for r in caplog.records if "refused prompt and tool logs" in r.getMessage()]
    assert len(warnings) == 1 and "/v5/flows/logs/batch" in warnings[0].getMessage()
    assert not exporter.batch_file_logs and exporter.batch


@pytest.mark.parametrize(
    "listed",
    [None, "prompt_log tool_log", [["prompt_log"], "tool_log"], ["log", "update", "prompt_log"]],
    ids=["absent", "not-a-list", "not-names", "no-tool-log"],
)
def test_only_a_health_answer_naming_both_kinds_puts_them_in_batches(listed: Any) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/health"):
            extra = {} if listed is None else {BATCH_OPERATIONS_FIELD: listed}
            return httpx.Response(200, json={"status": "ok", "batch": True, **extra})
        body = json.loads(request.content)
        if request.url.path.endswith("/batch"):
            ids = [op["body"].get("log_id", op.get("log_id")) for op in body["operations"]]
            return httpx.Response(
                200, json={"results": [{"status": 200, "body": {"id": i}} for i in ids]}
            )
        return httpx.Response(200, json={"id": body["log_id"]})

    exporter = HttpExporter("http://flowtrace/v5", transport=httpx.MockTransport(handle))
    try:
        outcomes = exporter.export(trace_operations("a-", prompts=1, tools=1))
    finally:
        exporter.close()
    assert all(o.ok for o in outcomes) and not exporter.batch_file_logs
    assert seen == [
        "/v5/health",
        "/v5/flows/logs/batch",
        "/v5/prompts/log",
        "/v5/tools/log",
        "/v5/flows/logs/batch",
    ]
