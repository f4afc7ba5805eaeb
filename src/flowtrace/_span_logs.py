"""Spans as logs of the current trace: the one entry point of every in-program span source
(`flowtrace.otel`'s processor and private provider, the LLM client instrumentation).

`record_span(span, parent)` delivers an ended span as a log: filed under `parent` (a flow log,
usually `current_log()` when the span started) unless the span's own parent span is an open
kept span nested inside it, mapped on the worker by the server's own mapping
(`spans._mapping.map_span`), so a trace looks the same whatever route it took. It only makes a
small object and hands it to the sinks: on the caller's thread it costs about what opening and
closing a flow log does, and it never raises.

One LLM call recorded twice (the direct instrumentation inside another instrumentor's
OpenTelemetry span of the same SDK call, or the reverse) is one log: the direct record wins.
An LLM call's span kept at its start (`SpanLog.span_ids`) hands its log to the direct
call recorded inside it (`record_span` into such a log ends it with what the direct call
saw, under the span's ids); a GenAI span that starts while a direct call runs is dropped by
`flowtrace.otel`'s processor.

A span that may have children while it runs (an OpenTelemetry span kept at its start) is a log
for its whole life instead: `open_span_log` at the start (the log is pushed as the context's
current log, so a flow opened inside the span nests under it) and `SpanLog.end(span)` at the
end. Its fields, its kind and its version are known only once the span has ended, so the
planner creates such a log only then (`SpanLog.waits_for_end`); children that end first wait
for it on the worker.
"""

from __future__ import annotations

import dataclasses
import os
from contextvars import Token
from typing import Any, Final

from flowtrace import _config, _guard
from flowtrace import _log as log_clock
from flowtrace._context import Current, current, current_here, open_ancestor
from flowtrace._contract import BATCH_LOG, FLOW, PROMPT, LogKind, span_log_id
from flowtrace._log import Log
from flowtrace._options import FlowOptions, LogOptions
from flowtrace.exporters import OperationKind
from flowtrace.spans._mapping import MappedLog, log_kind
from flowtrace.spans._model import Span, status_code_of

__all__ = [
    "SpanLog",
    "has_open_span_logs",
    "innermost",
    "open_span_log",
    "record_span",
    "span_parent",
]

#: What a span's log shares with a recorder's log (its path and fields come from the span).
_SPAN_OPTIONS: Final = LogOptions(FlowOptions(), "span")

#: Span logs open now, by log id: a span whose parent span is one of them goes under its log.
_open: dict[str, SpanLog] = {}

_enabled = True


def _apply_settings(settings: _config.Settings) -> None:
    global _enabled
    _enabled = settings.enabled


_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())


class SpanLog(Log):
    """The log a span becomes. Its id is the span's (`span_<trace>_<span>`, as the server's
    OTLP ingest names it); its parent is a recorder's log or another span's log."""

    is_span = True
    # The ended span (None while it runs): a neutral `Span`, or an OpenTelemetry SDK span,
    # read (`span_from_sdk`) on the worker: an ended SDK span does not change any more.
    span: Any = None
    mapped: MappedLog | None = None  # the span mapped, on the worker, once
    live: Any = None  # the running SDK span: what a log sent before its end says (at exit)
    op_kind: OperationKind = BATCH_LOG  # how its create goes (set on the worker with its body)
    name = "span"  # the span's name while it runs (a log sent before its end is named so)
    # A span kept at its start: its (trace, span, parent span) ids, for a direct record of the
    # same LLM call made inside it, which ends its log under them (`record_span`).
    span_ids: tuple[str, str, str | None] | None = None
    _token: Token[Current] | None = None

    def __init__(self, log_id: str, parent: Log | None) -> None:
        self._log_id = log_id
        self.options = _SPAN_OPTIONS
        # A span's log goes with its trace's sampling decision, as a flow's does: held (and
        # dropped or kept whole) with an unsampled trace.
        self.trace_hold = None if parent is None else parent.trace_hold
        if parent is not None and parent.duration_ns is not None:
            if not parent.is_span:  # the context held a flow that had ended: noted, as the
                self.late_child_of = parent.log_id  # recorder notes it (metadata["flowtrace"])
            parent = open_ancestor(parent)
        self.parent = parent
        self._start_mono_ns = log_clock._mono_ns()
        self.duration_ns = None

    @property
    def path(self) -> str:
        """Its path (`prompt/chat gpt-4o`, ...): known once its span has ended."""
        mapped = _span_bodies.mapped_of(self)
        return mapped.path if mapped is not None else f"span/{self.name}"

    @property
    def kind(self) -> LogKind:
        """`flow`, `prompt` or `tool`: known once its span has ended (`flow` until then)."""
        mapped = _span_bodies.mapped_of(self)
        return mapped.kind if mapped is not None else FLOW

    def end(self, span: Any) -> None:
        """The span ended (a `Span`, or an ended OpenTelemetry SDK span): record it, leave the
        context it entered, hand it to the sinks."""
        if self.duration_ns is not None:
            return
        self.span = span
        _open.pop(self.log_id, None)
        self._leave_context()
        self.duration_ns = max(0, log_clock._mono_ns() - self._start_mono_ns)
        try:
            # in an unsampled trace, the tail rule keeps it for a failed span
            if self.trace_hold is not None and status_code_of(span) == "error":
                self.error = f"span {self.name!r} failed"
            self.announce_end()
        except Exception as exc:
            _guard.internal_error("span-log", exc)

    def _leave_context(self) -> None:
        token, self._token = self._token, None
        if token is None or current.get() is not self:
            return  # not entered, or the context moved on (a flow inside is still open)
        try:
            current.reset(token)
        except ValueError:  # ended in another context than it started in
            current.set(open_ancestor(self.parent))

    def __repr__(self) -> str:
        return f"<SpanLog {self.name!r} id={self.log_id} {self.status}>"


def innermost(kept: Log | None, flow: Log | None) -> Log | None:
    """The innermost of a span's kept parent span's log and the current flow: the kept
    parent when it is nested inside the flow, else the flow."""
    if kept is None:
        return flow
    if flow is None:
        return kept
    ancestor = kept.parent
    while ancestor is not None:
        if ancestor is flow:
            return kept
        ancestor = ancestor.parent
    return flow


def has_open_span_logs() -> bool:
    return bool(_open)


def span_parent(trace_id: str, parent_span_id: str | None) -> SpanLog | None:
    """The open log of the span `parent_span_id` of `trace_id`, if it was kept."""
    if parent_span_id is None or not _open:
        return None
    return _open.get(span_log_id(trace_id, parent_span_id))


def open_span_log(
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str = "span",
    *,
    enter: bool = True,
) -> SpanLog | None:
    """Open the log of a span that starts now (ids as lowercase hex): under the innermost of
    its kept parent span's log and the current log. `enter`: it becomes the current log, so
    flows opened before `end` nest under it. None when flowtrace is disabled (or failed). A
    span already open (two processors on one provider) keeps its one log."""
    if not _enabled:
        return None
    try:
        log_id = span_log_id(trace_id, span_id)
        known = _open.get(log_id)
        if known is not None:
            return known
        flow = current_here()
        parent = innermost(span_parent(trace_id, parent_span_id), open_ancestor(flow))
        log = SpanLog(log_id, parent)
        log.name = name
        _open[log_id] = log
        log.announce_start()
        if enter:
            log._token = current.set(log)
        return log
    except Exception as exc:
        _guard.internal_error("span-log", exc)
        return None


def record_span(span: Span, parent: Log | None) -> None:
    """Deliver the ended `span` as a log of the current trace (see the module's docstring).
    Cheap on the caller (mapping happens on the worker), never raises, nothing when flowtrace
    is disabled."""
    if not _enabled:
        return
    try:
        if (
            parent is not None
            and parent.is_span  # an attribute test: the direct call's path pays nothing more
            and isinstance(parent, SpanLog)
            and parent.span_ids is not None
            and _is_an_llm_call(parent)
        ):
            _take_the_place_of(parent, span)
            return
        kept = span_parent(span.trace_id, span.parent_span_id)
        log = SpanLog(span_log_id(span.trace_id, span.span_id), innermost(kept, parent))
        log.name = span.name
        log.announce_start()
        log.end(span)
    except Exception as exc:
        _guard.internal_error("span-log", exc)


def _is_an_llm_call(log: SpanLog) -> bool:
    """Whether the running span of `log` is an LLM call (the mapping would make it a prompt
    log): read only when a direct record of a call ends inside a kept span, not per span."""
    attributes = getattr(log.live, "attributes", None)
    return attributes is not None and log_kind(attributes) == PROMPT


def _take_the_place_of(log: SpanLog, span: Span) -> None:
    """`span` (a direct record of an LLM call) ends the log of another instrumentor's span of
    that same call, now, under that span's ids: its later end changes nothing (and an
    instrumentor that never ends its span, as some do when a helper's stream is closed through
    its response, loses no log). Once: a second call inside the span is a call of its own. A
    log already ended stays as it is (the call's one log either way)."""
    trace_id, span_id, parent_span_id = log.span_ids or (span.trace_id, span.span_id, None)
    log.span_ids = None
    if log.duration_ns is None:
        log.end(
            dataclasses.replace(
                span, trace_id=trace_id, span_id=span_id, parent_span_id=parent_span_id
            )
        )


if hasattr(os, "register_at_fork"):  # after a fork the parent's spans are the parent's
    os.register_at_fork(after_in_child=_open.clear)


# Its logs' bodies, imported now rather than first on the worker (a fork must not catch a
# module half-imported).
from flowtrace import _span_bodies  # noqa: E402
