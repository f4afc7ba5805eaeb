"""Traces across services: `propagation_headers()` for a request going out, `continue_trace()`
for one coming in.

A continued trace puts a stand-in for the caller's log (`RemoteParent`) in the context, where
the innermost open log goes: flows opened inside it become its children like any others, and
nothing on the recorder's call path changes. The stand-in is never opened, delivered or
returned by `current_log()`; the planner files a log under it as a root of this process whose
body names the remote parent (`trace_parent_id`, when linked) and notes what the caller said
(metadata["flowtrace"]["remote_parent"]), which is how the store knows to accept it under a
parent that has not arrived or has already completed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

from flowtrace import _guard
from flowtrace._async_block import AsyncBlock
from flowtrace._capture import ensure_stdout_tee
from flowtrace._context import Current, current, current_here, open_ancestor
from flowtrace._contract import (
    REMOTE_LINKED,
    REMOTE_LOG_ID,
    REMOTE_SAMPLED,
    REMOTE_SPAN_ID,
    REMOTE_TRACE_ID,
)
from flowtrace._log import Log
from flowtrace._options import FlowOptions, LogOptions
from flowtrace._sampling import RemoteDecision
from flowtrace._w3c import (
    TRACEPARENT,
    TRACESTATE,
    RemoteContext,
    format_traceparent,
    format_tracestate,
    parse_headers,
    span_id_of,
    trace_id_of,
)

__all__ = [
    "ContinuedTrace",
    "RemoteParent",
    "continue_trace",
    "local_root",
    "propagation_headers",
    "remote_note",
    "sampled",
    "w3c_ids",
]

_REMOTE_OPTIONS = LogOptions(FlowOptions(), "flowtrace/remote")


class RemoteParent(Log):
    """The caller's log, as its headers named it: open for as long as the block lasts, so
    flows under it nest under it; never delivered from here (the caller delivers it)."""

    remote = True

    def __init__(self, context: RemoteContext, trusted: bool) -> None:  # no Log.__init__
        self._number = 0
        self.options = _REMOTE_OPTIONS
        self.parent = None
        self.duration_ns = None  # always open: its end is the caller's
        self._start_mono_ns = 0
        self.context = context
        self.trusted = trusted  # follow the caller's trace (W3C ids, and the link if any)
        self.linked = trusted and context.log_id is not None  # a child of its flowtrace log
        self._log_id = context.log_id or f"remote_{context.trace_id}_{context.span_id}"
        # Its local roots follow the caller's sampling decision (trusted headers), or are
        # decided here by the rate, as roots (untrusted); a sampled caller needs no decision.
        if not trusted:
            self.trace_hold = RemoteDecision(None)
        elif not context.sampled:
            self.trace_hold = RemoteDecision(False)

    def __repr__(self) -> str:
        return f"<RemoteParent {self._log_id} linked={self.linked}>"


class ContinuedTrace(AsyncBlock["ContinuedTrace"]):
    """`with continue_trace(headers):` (or `async with`): flows inside are the caller's
    children. Headers without a valid `traceparent` change nothing."""

    def __init__(self, parent: RemoteParent | None) -> None:
        self.parent = parent
        self._token: Token[Current] | None = None

    def __enter__(self) -> ContinuedTrace:
        if self.parent is not None:
            self._token = current.set(self.parent)
            try:
                ensure_stdout_tee()  # a root would have checked it (its parent is the stand-in)
            except Exception as exc:
                _guard.internal_error("continue-trace", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        try:
            current.reset(token)
        except ValueError:  # left in another context than entered (a generator): undo here
            if current.get() is self.parent:
                current.set(None)


def continue_trace(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None, *, trusted: bool = True
) -> ContinuedTrace:
    """Continue the caller's trace in this block: its flows become children of the log that
    sent `headers` (`traceparent` and `tracestate: flowtrace=<log id>`; other headers are not
    read). `trusted=False`: the caller's ids are kept in each root's metadata, not linked.
    Never raises: headers that are missing or invalid continue nothing."""
    parent = None
    try:
        context = parse_headers(headers) if headers is not None else None
        if context is not None:
            parent = RemoteParent(context, trusted)
    except Exception as exc:
        _guard.internal_error("continue-trace", exc)
    return ContinuedTrace(parent)


# --- ids -------------------------------------------------------------------------------------


def local_root(log: Log) -> Log:
    """The outermost log of this process above `log` (the stand-in of a remote parent is not
    one of them)."""
    while log.parent is not None and not log.parent.remote:
        log = log.parent
    return log


def w3c_ids(log: Log) -> tuple[str, str]:
    """(trace-id, span-id) of `log`: the trace's from its root log's id, or the caller's when
    the trace was continued from trusted headers."""
    if isinstance(log, RemoteParent):
        return log.context.trace_id, log.context.span_id
    root = local_root(log)
    parent = root.parent
    if isinstance(parent, RemoteParent) and parent.trusted:
        return parent.context.trace_id, span_id_of(log.log_id)
    return trace_id_of(root.log_id), span_id_of(log.log_id)


def sampled(log: Log) -> bool:
    """Whether `log`'s trace is sampled (the `sampled` flag sent on): the decision of its local
    root, which followed the caller's when the trace was continued from trusted headers. (An
    unsampled trace that the tail rule keeps is still unsampled here: the decision is the
    head's, as the callee must make the same one.)"""
    if isinstance(log, RemoteParent):
        return log.context.sampled if log.trusted else True
    return local_root(log).trace_hold is None


def propagation_headers() -> dict[str, str]:
    """W3C trace context for a request sent from inside a flow: `traceparent` (this trace and
    the current log, the sampled flag) and `tracestate: flowtrace=<the current log's id>`.
    Empty outside any flow and any continued trace. Never raises."""
    try:
        log = open_ancestor(current_here())
        if log is None:
            return {}
        trace_id, span_id = w3c_ids(log)
        headers = {TRACEPARENT: format_traceparent(trace_id, span_id, sampled(log))}
        if not isinstance(log, RemoteParent) or log.linked:
            headers[TRACESTATE] = format_tracestate(log.log_id)
        return headers
    except Exception as exc:
        _guard.internal_error("propagation-headers", exc)
        return {}


# --- the body of a log under a remote parent (on the worker) ---------------------------------


def remote_note(parent: RemoteParent) -> dict[str, Any]:
    """What the caller said, as a log under it notes it (metadata["flowtrace"]["remote_parent"])."""
    context = parent.context
    note: dict[str, Any] = {
        REMOTE_TRACE_ID: context.trace_id,
        REMOTE_SPAN_ID: context.span_id,
        REMOTE_SAMPLED: context.sampled,
        REMOTE_LINKED: parent.linked,
    }
    if context.log_id is not None:
        note[REMOTE_LOG_ID] = context.log_id
    return note
