"""The terminal renderer: table columns, tree shape, and inert untrusted text."""

from __future__ import annotations

from flowtrace._terminal import render_logs_table, render_trace_tree, sanitize
from tests.viewerdata import make_log


def test_table_has_header_and_one_row_per_log() -> None:
    logs = [
        make_log("log_a", "support/answer", seconds=0.25),
        make_log("log_b", "support/answer", error="ValueError: boom\nmore"),
    ]
    lines = render_logs_table(logs).splitlines()
    assert lines[0].split() == ["ID", "FLOW", "STATUS", "DURATION", "START", "ERROR"]
    assert lines[1].split()[:4] == ["log_a", "support/answer", "complete", "250"]
    assert lines[2].split()[2] == "error"
    assert lines[2].endswith("ValueError: boom")


def test_tree_draws_children_with_errors_and_stdout() -> None:
    traceback = "Traceback (most recent call last):\n  x"
    leaf = make_log(
        "log_c", "llm/call", error="boom", metadata={"flowtrace": {"traceback": traceback}}
    )
    tool = make_log("log_b", "tools/search", stdout="line one\nline two\n", trace_children=[leaf])
    other = make_log("log_d", "tools/other", seconds=75)
    root = make_log("log_a", "support/answer", trace_children=[tool, other], output="hi")
    text = render_trace_tree(root)
    lines = text.splitlines()
    assert lines[0].startswith("support/answer  ✓ complete  1.00 s")
    assert any(line.startswith("├── tools/search") for line in lines)
    assert any(line.startswith("│   └── llm/call  ✗ error") for line in lines)
    assert any(line.startswith("└── tools/other") and "1m 15s" in line for line in lines)
    assert "│   │     │ line two" in text
    assert "error: boom" in text
    assert "Traceback (most recent call last):" in text
    assert "output: hi" in text


def test_control_characters_are_shown_not_sent() -> None:
    assert sanitize("red\x1b[31m\x07bell\u009b") == "red\\x1b[31m\\x07bell\\x9b"
    root = make_log("log_a", "p", stdout="\x1b]0;pwned\x07")
    assert "\x1b" not in render_trace_tree(root)


def test_a_chat_message_output_is_shown_when_there_is_no_output() -> None:
    log = make_log(
        "log_chat", "agents/support", output_message={"role": "assistant", "content": "hi\nthere"}
    )
    assert "output message: assistant: hi there" in render_trace_tree(log)


def test_a_prompt_log_shows_its_llm_call() -> None:
    call = make_log(
        "log_llm",
        "prompts/forecaster",
        flow={
            "path": "prompts/forecaster",
            "id": "pr_1",
            "name": "forecaster",
            "type": "prompt",
            "attributes": {"model": "gpt-4o", "provider": "openai"},
            "created_at": "2026-01-02T09:00:00Z",
            "updated_at": "2026-01-02T09:00:00Z",
        },
        prompt_tokens=1200,
        output_tokens=80,
        prompt_cost=0.003,
        output_cost=0.0008,
        finish_reason="tool_calls",
        output_message={
            "role": "assistant",
            "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
    )
    pending = make_log(
        "never_arrived", "flowtrace/pending", placeholder=True, trace_children=[call]
    )
    text = render_trace_tree(pending)
    assert text.startswith("flowtrace/pending  ? pending")
    assert "└── prompts/forecaster (prompt)  ✓ complete" in text
    assert "llm: gpt-4o · openai · 1200 in · 80 out tokens · $0.0038 · finish: tool_calls" in text
    assert "output message: assistant: → get_weather()" in text
