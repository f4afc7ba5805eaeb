"""The trace JSON the page's script draws: order, depth, offsets, and open logs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flowtrace.server.viewer._trace_json import STALE_AFTER, trace_view
from tests.viewerdata import T0, make_log


def test_logs_come_in_pre_order_with_offsets_from_the_trace_start() -> None:
    grandchild = make_log("c", "leaf", start_time=T0 + timedelta(seconds=2), seconds=1)
    child = make_log(
        "b", "mid", start_time=T0 + timedelta(seconds=1), seconds=3, trace_children=[grandchild]
    )
    other = make_log("d", "other", start_time=T0 + timedelta(seconds=5), seconds=1)
    root = make_log("a", "root", seconds=1, trace_children=[child, other])
    view = trace_view(root, selected="c")
    assert [(log["id"], log["depth"]) for log in view["logs"]] == [
        ("a", 0),
        ("b", 1),
        ("c", 2),
        ("d", 1),
    ]
    assert view["selected"] == "c"
    assert view["live"] is False
    by_id = {log["id"]: log for log in view["logs"]}
    assert by_id["c"]["offset_ms"] == pytest.approx(2000)
    assert by_id["c"]["end_ms"] == pytest.approx(3000)
    assert view["span_ms"] == pytest.approx(6000)


def test_a_running_log_reaches_now() -> None:
    root = make_log("a", "root", end_time=None, trace_status="incomplete")
    view = trace_view(root, now=T0 + timedelta(seconds=4))
    assert view["live"] is True
    assert view["logs"][0]["running"] is True
    assert view["logs"][0]["end_ms"] == pytest.approx(4000)
    assert view["status"] == "incomplete"


def test_an_abandoned_trace_stops_at_its_last_known_time() -> None:
    child = make_log("b", "step", start_time=T0 + timedelta(seconds=1), seconds=1)
    root = make_log("a", "root", end_time=None, trace_status="incomplete", trace_children=[child])
    view = trace_view(root, now=T0 + STALE_AFTER + timedelta(hours=1))
    assert view["logs"][0]["end_ms"] == pytest.approx(2000)


def test_recorder_facts_are_split_from_user_metadata() -> None:
    log = make_log(
        "a",
        "root",
        error="boom",
        metadata={"flowtrace": {"traceback": "Traceback...", "dropped": 2}, "k": 1},
    )
    shown = trace_view(log)["logs"][0]
    assert shown["status"] == "error"
    assert shown["traceback"] == "Traceback..."
    assert shown["flowtrace"] == {"dropped": 2}
    assert shown["metadata"] == {"k": 1}


def _prompt(log_id: str, **fields: object) -> object:
    flow = {
        "path": "prompts/p",
        "id": "pr_p",
        "name": "p",
        "type": "prompt",
        "attributes": {"model": "gpt-4o", "provider": "openai", "attributes": {"x": 1}},
        "created_at": T0,
        "updated_at": T0,
    }
    return make_log(log_id, "prompts/p", flow=flow, **fields)


def test_trace_totals_count_prompt_logs_only_and_pending_placeholders() -> None:
    calls = [
        _prompt("p1", prompt_tokens=100, output_tokens=10, prompt_cost=0.001, output_cost=0.002),
        _prompt("p2", prompt_tokens=50, output_tokens=5, cache_read_tokens=20),
    ]
    # an agent's own usage is in its metadata, never a token field: nothing to add twice
    agent = make_log(
        "agent", "agents/a", metadata={"gen_ai.usage.input_tokens": 150}, trace_children=calls
    )
    root = make_log("root", "flowtrace/pending", placeholder=True, trace_children=[agent])
    view = trace_view(root)
    assert view["totals"] == {
        "prompt_tokens": 150,
        "output_tokens": 15,
        "cache_read_tokens": 20,
        "prompt_cost": 0.001,
        "output_cost": 0.002,
        "prompt_logs": 2,
        "pending": 1,
    }
    by_id = {log["id"]: log for log in view["logs"]}
    assert by_id["root"]["status"] == "pending"
    assert by_id["p1"]["kind"] == "prompt"
    assert by_id["p1"]["kernel"] == {
        "model": "gpt-4o",
        "provider": "openai",
        "attributes": {"x": 1},
    }
    assert by_id["agent"]["kernel"] == {}
