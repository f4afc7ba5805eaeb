"""Facts derived from a stored log, shared by the terminal renderer and the web viewer.

One place decides what "error", "duration" or "traceback" means for a log, so `flowtrace show`
and the viewer never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, Final, Literal

from flowtrace._contract import INCOMPLETE, PENDING, RECORDER_METADATA_KEY, RECORDER_TRACEBACK
from flowtrace.models import FlowLogResponse

__all__ = [
    "VIEW_ERROR",
    "ViewStatus",
    "duration_seconds",
    "error_excerpt",
    "flowtrace_flags",
    "format_cost",
    "format_duration",
    "format_time",
    "llm_summary",
    "traceback_text",
    "view_status",
    "walk",
]

#: A log's status as a reader sees it: a failed log shows as an error, whatever its trace status;
#: a placeholder (a parent span not received) as pending.
ViewStatus = Literal["complete", "incomplete", "error", "pending"]
VIEW_ERROR: Final = "error"


def view_status(log: FlowLogResponse) -> ViewStatus:
    """ "error" wins over the trace status: a failed call is what a reader looks for first."""
    if log.placeholder:
        return PENDING
    if log.error:
        return VIEW_ERROR
    return log.trace_status or log.log_status or INCOMPLETE


def duration_seconds(log: FlowLogResponse) -> float | None:
    """Wall time from start to end; the provider latency when the times are missing."""
    if log.start_time is not None and log.end_time is not None:
        return max(0.0, (log.end_time - log.start_time).total_seconds())
    return log.provider_latency


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def format_time(value: datetime | None) -> str:
    """UTC, to the second: the lists show when, the trace page shows the precise times."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _recorder_metadata(log: FlowLogResponse) -> dict[str, Any]:
    facts = (log.metadata or {}).get(RECORDER_METADATA_KEY)
    return facts if isinstance(facts, dict) else {}


def traceback_text(log: FlowLogResponse) -> str | None:
    text = _recorder_metadata(log).get(RECORDER_TRACEBACK)
    return text if isinstance(text, str) and text else None


def flowtrace_flags(log: FlowLogResponse) -> dict[str, Any]:
    """The recorder's other facts (truncation markers, dropped counts...), without the
    traceback, which is shown on its own."""
    return {k: v for k, v in _recorder_metadata(log).items() if k != RECORDER_TRACEBACK}


def error_excerpt(log: FlowLogResponse, width: int = 60) -> str:
    """The error's first line, cut to `width` characters for one table cell."""
    if not log.error:
        return ""
    first_line = log.error.strip().splitlines()[0] if log.error.strip() else ""
    return first_line if len(first_line) <= width else first_line[: width - 1] + "…"


def walk(log: FlowLogResponse, depth: int = 0) -> Iterator[tuple[FlowLogResponse, int]]:
    """Every log of a trace in pre-order (children in start order), with its depth."""
    # Iterative, so a deeply nested trace cannot hit the recursion limit.
    stack = [(log, depth)]
    while stack:
        current, level = stack.pop()
        yield current, level
        stack.extend((child, level + 1) for child in reversed(current.trace_children))


def format_cost(dollars: float) -> str:
    """Cents and up to the tenth of a cent; below, two significant digits ($0.0038)."""
    if dollars == 0:
        return "$0"
    return f"${dollars:.3f}" if dollars >= 0.01 else f"${dollars:.2g}"


def llm_summary(log: FlowLogResponse) -> str | None:
    """One line on an LLM call: model, provider, tokens in and out, cost, finish reason; None
    for a log that is not a prompt log."""
    if log.flow.type != "prompt":
        return None
    kernel = log.flow.attributes
    parts = [str(kernel[name]) for name in ("model", "provider") if kernel.get(name)]
    if log.prompt_tokens is not None or log.output_tokens is not None:
        parts.append(f"{log.prompt_tokens or 0} in · {log.output_tokens or 0} out tokens")
    if log.prompt_cost is not None or log.output_cost is not None:
        parts.append(format_cost((log.prompt_cost or 0.0) + (log.output_cost or 0.0)))
    if log.finish_reason:
        parts.append(f"finish: {log.finish_reason}")
    return " · ".join(parts) if parts else "LLM call"
