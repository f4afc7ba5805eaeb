"""Terminal rendering for the CLI: the logs table (`flowtrace logs`) and the trace tree
(`flowtrace show`).

Everything a log holds is untrusted (model output, user input): control characters are shown
escaped, so a log cannot move the cursor, recolour or retitle the reader's terminal.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flowtrace._contract import COMPLETE, INCOMPLETE, PENDING
from flowtrace._log_display import (
    VIEW_ERROR,
    ViewStatus,
    duration_seconds,
    error_excerpt,
    format_duration,
    format_time,
    llm_summary,
    traceback_text,
    view_status,
)
from flowtrace.models import FlowLogResponse

__all__ = ["render_logs_table", "render_trace_tree", "sanitize"]

# C0 controls except tab and newline, DEL, and C1 controls (which include the 8-bit CSI).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_STATUS_MARKS: dict[ViewStatus, str] = {
    COMPLETE: "✓",
    INCOMPLETE: "…",
    VIEW_ERROR: "✗",
    PENDING: "?",
}
_OUTPUT_EXCERPT_WIDTH = 80


def sanitize(text: str) -> str:
    """Make untrusted text inert for a terminal: control characters become visible escapes."""
    return _CONTROL_CHARS.sub(lambda match: repr(match.group())[1:-1], text)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(sanitize(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- the logs table ------------------------------------------------------------------------

_TABLE_HEADER = ("ID", "FLOW", "STATUS", "DURATION", "START", "ERROR")


def _table_row(log: FlowLogResponse) -> tuple[str, ...]:
    return (
        sanitize(log.id),
        sanitize(log.flow.path),
        view_status(log),
        format_duration(duration_seconds(log)),
        format_time(log.start_time),
        _one_line(error_excerpt(log), 60),
    )


def render_logs_table(logs: Sequence[FlowLogResponse]) -> str:
    """One line per log under a header, columns padded to their widest cell."""
    rows = [_TABLE_HEADER, *(_table_row(log) for log in logs)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_TABLE_HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + "\n"


# --- the trace tree ------------------------------------------------------------------------


def _head_line(log: FlowLogResponse, marked: bool) -> str:
    status = view_status(log)
    kind = f" ({log.flow.type})" if log.flow.type != "flow" else ""
    parts = [
        sanitize(log.flow.path) + kind,
        f"{_STATUS_MARKS[status]} {status}",
        format_duration(duration_seconds(log)),
        format_time(log.start_time),
        f"[{sanitize(log.id)}]",
    ]
    if marked:
        parts.append("◀")
    return "  ".join(parts)


def _detail_lines(log: FlowLogResponse) -> list[str]:
    """What a reader of a trace looks for under each log: the error, its traceback, stdout,
    and a one-line taste of the output."""
    lines: list[str] = []
    summary = llm_summary(log)
    if summary is not None:
        lines.append(f"llm: {sanitize(summary)}")
    if log.error:
        error_lines = sanitize(log.error).splitlines() or [""]
        lines.append(f"error: {error_lines[0]}")
        lines.extend(f"       {line}" for line in error_lines[1:])
    traceback = traceback_text(log)
    if traceback:
        lines.extend(f"  {line}" for line in sanitize(traceback).rstrip("\n").splitlines())
    if log.stdout:
        lines.append("stdout:")
        lines.extend(f"  │ {line}" for line in sanitize(log.stdout).rstrip("\n").splitlines())
    if log.output:
        lines.append(f"output: {_one_line(log.output, _OUTPUT_EXCERPT_WIDTH)}")
    elif log.output_message is not None:
        message = log.output_message
        content = message.content
        if content is not None and not isinstance(content, str):
            content = "[content parts]"
        calls = ", ".join(f"{call.function.name}()" for call in message.tool_calls or ())
        text = f"{message.role}: {content or ''}" + (f" → {calls}" if calls else "")
        lines.append(f"output message: {_one_line(text, _OUTPUT_EXCERPT_WIDTH)}")
    return lines


def render_trace_tree(root: FlowLogResponse, *, marked: str | None = None) -> str:
    """The trace as a box-drawn tree: each log's flow, status, duration, start and id, with
    its error, traceback and stdout indented under it; the log `marked` gets a pointer."""
    lines: list[str] = []
    # (log, prefix of its own line, prefix of the lines under it); a stack keeps deep traces
    # clear of the recursion limit.
    stack: list[tuple[FlowLogResponse, str, str]] = [(root, "", "")]
    while stack:
        log, own_prefix, under_prefix = stack.pop()
        lines.append(own_prefix + _head_line(log, log.id == marked))
        children = log.trace_children
        detail_prefix = under_prefix + ("│   " if children else "    ")
        lines.extend((detail_prefix + line).rstrip() for line in _detail_lines(log))
        for index in reversed(range(len(children))):
            last = index == len(children) - 1
            stack.append(
                (
                    children[index],
                    under_prefix + ("└── " if last else "├── "),
                    under_prefix + ("    " if last else "│   "),
                )
            )
    return "\n".join(lines) + "\n"
