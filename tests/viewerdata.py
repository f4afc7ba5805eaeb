"""Sample traces for the viewer and CLI tests, written through the store's own API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flowtrace.models import (
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    PromptLogRequest,
    ToolLogRequest,
)
from flowtrace.store import SpanWrite, Store
from flowtrace.store._prepare import prepare_log

T0 = datetime(2026, 1, 2, 9, 0, 0, tzinfo=timezone.utc)
HOSTILE_OUTPUT = '<img src=x onerror="window.__pwned=1">'
HOSTILE_INPUT = "<script>window.__pwned=2</script>"
HOSTILE_STDOUT = "</pre><script>window.__pwned=3</script>"
HOSTILE_USER = '"><script>window.__pwned=4</script>'
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "agent.py", line 12, in call_model\n'
    "    raise ValueError('model refused')\n"
    "ValueError: model refused\n"
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Sample:
    root: str
    search: str
    failing: str
    hostile: str


def _log(store: Store, **fields: Any) -> str:
    return str(store.log(FlowLogRequest.model_validate(fields)).id)


def populate(store: Store) -> Sample:
    """Two finished traces. The first: a root with a chat, a tool child with stdout and
    provider payloads, and a failing model call with a traceback. The second: hostile text."""
    root = _log(
        store,
        path="support/answer",
        log_id="log_root",
        flow={"attributes": {"model": "gpt-test", "prompt": "Answer kindly."}},
        inputs={"question": "How do I reset my password?"},
        messages=[
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "How do I reset my password?"},
        ],
        user="alice",
        start_time=at(0),
        trace_status="incomplete",
    )
    search = _log(
        store,
        path="tools/search",
        log_id="log_search",
        flow={"attributes": {"index": "docs"}},
        trace_parent_id=root,
        inputs={"query": "reset password"},
        output="3 results",
        stdout="searching docs\nfound 3 results\n",
        provider_request={"query": "reset password", "top_k": 3},
        provider_response={"hits": [{"title": "Resetting"}, {"title": "Accounts"}]},
        start_time=at(0.1),
        end_time=at(0.4),
        trace_status="complete",
    )
    failing = _log(
        store,
        path="llm/call",
        log_id="log_failing",
        flow={"attributes": {"model": "gpt-test"}},
        trace_parent_id=root,
        inputs={"prompt": "Answer kindly."},
        error="ValueError: model refused",
        stdout="retrying once\n",
        metadata={"flowtrace": {"traceback": TRACEBACK, "truncated": True}, "team": "support"},
        start_time=at(0.5),
        end_time=at(1.2),
        trace_status="complete",
    )
    store.update(
        root,
        FlowLogUpdateRequest.model_validate(
            {
                "output": "Use the reset link on the sign-in page.",
                "output_message": {"role": "assistant", "content": "Use the reset link."},
                "trace_status": "complete",
            }
        ),
    )
    hostile = add_hostile_trace(store)
    return Sample(root=root, search=search, failing=failing, hostile=hostile)


def add_hostile_trace(store: Store) -> str:
    """A trace whose every text field tries to run script in the page."""
    return _log(
        store,
        path="attack/xss",
        log_id="log_hostile",
        flow={"attributes": {"note": HOSTILE_INPUT}},
        inputs={"q": HOSTILE_INPUT},
        output=HOSTILE_OUTPUT,
        stdout=HOSTILE_STDOUT,
        error=HOSTILE_OUTPUT,
        user=HOSTILE_USER,
        messages=[{"role": "user", "content": HOSTILE_INPUT}],
        metadata={HOSTILE_INPUT: HOSTILE_OUTPUT},
        start_time=at(10),
        end_time=at(11),
        trace_status="complete",
    )


def make_log(log_id: str, path: str, *, seconds: float = 1.0, **fields: Any) -> FlowLogResponse:
    """A stored log's record, built without a store (for renderers)."""
    flow = {
        "path": path,
        "id": f"fl_{path}",
        "name": path.rsplit("/", 1)[-1],
        "created_at": T0,
        "updated_at": T0,
    }
    record = {
        "id": log_id,
        "trace_id": log_id,
        "trace_flow_id": "fl",
        "flow": flow,
        "start_time": T0,
        "end_time": fields.get("start_time", T0) + timedelta(seconds=seconds),
        "trace_status": "complete",
    }
    return FlowLogResponse.model_validate({**record, **fields})


@dataclass(frozen=True)
class LlmSample:
    root: str
    prompt: str
    tool: str
    pending: str
    pending_child: str


def populate_llm(store: Store) -> LlmSample:
    """An agent trace with an LLM call (a chat with a tool call and its result, tokens and
    cost) and a tool call; and a child span whose parent never arrived (a pending root)."""
    root = _log(
        store,
        path="agents/weather",
        log_id="llm_root",
        inputs={"question": "Weather in Paris?"},
        start_time=at(30),
        trace_status="incomplete",
    )
    prompt = store.log_file(
        PromptLogRequest.model_validate(
            {
                "path": "prompts/forecaster",
                "log_id": "llm_prompt",
                "trace_parent_id": root,
                "prompt": {"model": "gpt-4o", "provider": "openai", "temperature": 0.2},
                "messages": [
                    {"role": "system", "content": "You forecast weather."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city":"Paris"}',
                                },
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
                ],
                "output_message": {"role": "assistant", "content": "Sunny and 21C in Paris."},
                "prompt_tokens": 1200,
                "output_tokens": 80,
                "cache_read_tokens": 1000,
                "prompt_cost": 0.003,
                "output_cost": 0.0008,
                "finish_reason": "stop",
                "start_time": at(30.1),
                "end_time": at(31.3),
                "provider_latency": 1.2,
            }
        )
    )["id"]
    tool = store.log_file(
        ToolLogRequest.model_validate(
            {
                "path": "tools/get_weather",
                "log_id": "llm_tool",
                "trace_parent_id": root,
                "tool": {"function": {"name": "get_weather", "parameters": {"type": "object"}}},
                "inputs": {"city": "Paris"},
                "output": "sunny, 21C",
                "start_time": at(31.4),
                "end_time": at(31.5),
            }
        )
    )["id"]
    store.update(root, FlowLogUpdateRequest(output="Sunny and 21C.", trace_status="complete"))
    child = prepare_log(
        FlowLogRequest(
            path="jobs/child",
            log_id="orphan_child",
            trace_parent_id="never_arrives",
            start_time=at(40),
            end_time=at(41),
            trace_status="complete",
        ),
        None,
        store.now_us(),
    )
    (stored,) = store.ingest_spans([SpanWrite(child)])
    assert stored == "orphan_child"
    return LlmSample(
        root=root,
        prompt=str(prompt),
        tool=str(tool),
        pending="never_arrives",
        pending_child="orphan_child",
    )
