"""The trace as the viewer's script draws it: a flat pre-order list of logs, each with its
depth, status and timing offsets already worked out.

The server does the date arithmetic once (microsecond ISO strings, open logs, widening), so
the page's script only positions bars and fills in text.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from flowtrace._contract import (
    COMPLETE,
    COST_FIELDS,
    PROMPT_KERNEL_FIELDS,
    PROMPT_LOG_FIELDS,
    RECORDER_METADATA_KEY,
    TOKEN_FIELDS,
)
from flowtrace._log_display import (
    duration_seconds,
    flowtrace_flags,
    traceback_text,
    view_status,
    walk,
)
from flowtrace.models import FlowLogResponse

__all__ = ["NOT_SHOWN", "SHOWN_AS_LOGGED", "SHOWN_DERIVED", "STALE_AFTER", "trace_view"]

STALE_AFTER = timedelta(minutes=10)

# Every field of a stored log is in one of the three below (tests/test_contract.py checks it
# against the models, and that the page's script renders each field shown as logged).

#: Fields the page shows as they were logged.
SHOWN_AS_LOGGED = (
    "inputs",
    "output",
    "output_message",
    "messages",
    "stdout",
    "error",
    "provider_request",
    "provider_response",
    "provider_latency",
    "user",
    "source",
    "environment",
    "run_id",
    "source_datapoint_id",
    "trace_parent_id",
    "start_time",
    "end_time",
    "created_at",
    *PROMPT_LOG_FIELDS,  # an LLM call's tokens, cost, finish reason and tool choice
)

#: Fields the page shows in another form, worked out below.
SHOWN_DERIVED = frozenset(
    {
        "id",
        "metadata",  # without the recorder's own facts, which are shown apart
        "trace_status",  # as the view status (error wins), under either name
        "log_status",
        "flow",  # its path, kind, id, version id and attributes (a prompt's model, provider)
        "trace_children",  # the tree and the timeline
        "placeholder",  # as the view status "pending"
    }
)

#: Fields the page does not show, and why.
NOT_SHOWN = {
    "save": "a log stored with save=false simply has no payloads to show",
    "trace_id": "the page is the trace: its root is the first row",
    "trace_flow_id": "the root's flow is shown with the root",
    "evaluator_logs": "always empty: flowtrace runs no evaluators",
}


def _milliseconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000.0


def _log_view(
    log: FlowLogResponse, depth: int, trace_start: datetime | None, open_end: datetime
) -> dict[str, Any]:
    data = log.model_dump(mode="json", include=set(SHOWN_AS_LOGGED), exclude_none=True)
    status = view_status(log)
    running = (log.trace_status or log.log_status) != COMPLETE
    # A running log without an end is drawn up to `open_end`; a finished one as an instant.
    end = log.end_time or (open_end if running else log.start_time)
    offset_ms = end_ms = None
    if trace_start is not None and log.start_time is not None and end is not None:
        offset_ms = _milliseconds(log.start_time, trace_start)
        end_ms = max(offset_ms, _milliseconds(end, trace_start))
    seconds = duration_seconds(log)
    metadata = {k: v for k, v in (log.metadata or {}).items() if k != RECORDER_METADATA_KEY}
    data.update(
        id=log.id,
        depth=depth,
        path=log.flow.path,
        flow_id=log.flow.id,
        version_id=log.flow.version_id,
        attributes=log.flow.attributes,
        status=status,
        running=running,
        duration_ms=None if seconds is None else seconds * 1000.0,
        offset_ms=offset_ms,
        end_ms=end_ms,
        metadata=metadata,
        flowtrace=flowtrace_flags(log),
        traceback=traceback_text(log),
        kind=log.flow.type,
        kernel=_kernel(log),
    )
    return data


def _kernel(log: FlowLogResponse) -> dict[str, Any]:
    """A prompt's model, provider and settings, from its version's kernel."""
    if log.flow.type != "prompt":
        return {}
    kernel = log.flow.attributes
    return {name: kernel[name] for name in PROMPT_KERNEL_FIELDS if name in kernel}


def _totals(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and cost of the trace: the sums over its prompt logs (the only logs that count
    usage, so an agent's own totals are not counted twice)."""
    totals: dict[str, Any] = {}
    for name in (*TOKEN_FIELDS, *COST_FIELDS):
        values = [log[name] for log in logs if log.get(name) is not None]
        if values:
            totals[name] = sum(values)
    totals["prompt_logs"] = sum(1 for log in logs if log["kind"] == "prompt")
    totals["pending"] = sum(1 for log in logs if log["status"] == "pending")
    return totals


def trace_view(
    root: FlowLogResponse, *, selected: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The JSON the trace page's script renders; `selected` is the log to show first."""
    now = now or datetime.now(timezone.utc)
    times = [t for log, _ in walk(root) for t in (log.start_time, log.end_time) if t is not None]
    trace_start = min(times, default=None)
    latest = max(times, default=now)
    # Open logs grow up to "now", so a live trace visibly advances; a trace abandoned long
    # ago (its process died) stops at its last known time instead of shrinking to a sliver.
    open_end = now if now - latest < STALE_AFTER else latest
    logs = [_log_view(log, depth, trace_start, open_end) for log, depth in walk(root)]
    span_ms = max((log["end_ms"] for log in logs if log["end_ms"] is not None), default=0.0)
    return {
        "root_id": root.id,
        "selected": selected or root.id,
        "status": view_status(root),
        "live": (root.trace_status or root.log_status) != COMPLETE,
        "span_ms": span_ms,
        "totals": _totals(logs),
        "logs": logs,
    }
