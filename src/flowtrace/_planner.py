"""The delivery order (docs/architecture.md): which wire operations to send for which logs,
and when.

Runs on the pipeline's worker only (no locks, no clock of its own: the worker sets `now`). The
rules:

- A leaf log that has ended goes out once, as a complete create.
- A log goes out early, as an *incomplete* create, when something needs it to exist (a child
  is about to be sent) or when it has been open longer than `live_after` (live visibility).
  Such a log is later closed by an update (PATCH) carrying its end-of-log fields.
- Before a log's closing operation, every child it started has had its create sent (children
  whose end the worker has collected go as complete creates, the others go early). So no child
  ever arrives after its parent closed.
- A child the worker learns of only after its parent's closing operation was planned (an
  asyncio task that first runs after the flow that created it returned) cannot go under that
  parent any more: it is filed under the nearest ancestor still open (or becomes the root of a
  trace of its own), noting its real parent (`metadata["flowtrace"]["late_child_of"]`).
- A log whose parent was refused is dropped before it is created; one that already exists on
  the server is still closed (its update does not need the parent).
- A span's log (`log.is_span`) is created only once its span has ended (its kind and version
  come from the ended span): what ends inside a running span waits for it.

Operations come out in one sequence, and the pipeline delivers that sequence in order (a
failed prefix is retried before anything behind it), so "sent before" means "earlier in the
sequence". Each log's state lives in `log.delivery` (a `LogState`). Every walk over a trace is
iterative: a trace may be thousands of levels deep.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from flowtrace import _guard
from flowtrace._accounting import Counters
from flowtrace._contract import (
    BATCH_LOG,
    INCOMPLETE,
    RECORDER_FORKED_FROM,
    RECORDER_LATE_CHILD_OF,
    StatusField,
)
from flowtrace._log import Log
from flowtrace._outgoing import Outgoing
from flowtrace._request_bodies import complete_body, create_body, log_query, note_recorder
from flowtrace.exporters import Operation, OperationKind

if TYPE_CHECKING:
    from flowtrace._span_logs import SpanLog

__all__ = ["Counters", "FlushMarker", "LogState", "PlannedOp", "Planner"]


class FlushMarker:
    """Put in the stream of ended logs by `flush()`: done once every operation planned before
    it has been settled (delivered, or given up)."""

    __slots__ = ("backlog_target", "done", "ok", "since", "target_seq")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True  # False: what this waits for was not delivered (given up, or spooled)
        self.target_seq = -1
        # and the spool's backlog, until the outbox has settled this many of its entries
        # (-1: the backlog is not claimed yet)
        self.backlog_target = 0
        self.since = 0.0  # when the worker reached it (it waits retry_deadline_s of failures)


class LogState:
    """The pipeline's per-log bookkeeping (stored in `log.delivery`)."""

    __slots__ = (
        "anchor",
        "created",
        "detached",
        "ended",
        "failed",
        "finished",
        "late",
        "seen_at",
        "start_ns",
        "token",
        "unsent_children",
    )

    def __init__(self, token: object, seen_at: float, start_ns: int) -> None:
        self.token = token  # the pipeline generation that accepted the log (forks start anew)
        self.seen_at = seen_at  # when the worker learned of the log (for live_after)
        # The wall-clock start, fixed when the worker first sees the log: every body of the log
        # (and every retry of it) carries the same times, whatever recalibration follows.
        self.start_ns = start_ns
        self.anchor: Log | None = None  # the log it is created under (None: a root)
        self.created = False  # a create was planned (incomplete or complete)
        self.finished = False  # the closing operation was planned, or the log was dropped
        self.failed = False  # refused or given up: its later operations and children are dropped
        self.ended = False  # the worker collected its end (not just `log.is_complete`)
        self.detached = False  # its parent belongs to the process we were forked from
        self.late = False  # started after its parent was closed: filed under `anchor`
        self.unsent_children: dict[Log, None] | None = None  # started, not created (in order)


class PlannedOp:
    """An operation on its way, with what it means for its log. One read back from the spool
    has no `log` (the log left memory when its operation was spooled) but a `spool_id`."""

    __slots__ = ("attempts", "final", "log", "operation", "own", "seq", "spool_id")

    def __init__(
        self,
        operation: Operation,
        log: Log | None,
        final: bool,
        seq: int,
        spool_id: int | None = None,
        own: bool = True,
    ) -> None:
        self.operation = operation
        self.log = log
        self.final = final  # settling it finishes the log's delivery
        self.seq = seq  # this pipeline's sequence number (0 for another process's)
        self.spool_id = spool_id  # its entry in the spool, when it is on disk
        self.own = own  # planned by this process (not a dead process's backlog)
        self.attempts = 0


class Planner:
    def __init__(self, token: object, counters: Counters, outgoing: Outgoing | None = None) -> None:
        self._token = token
        self._counters = counters
        # scrubs each body as it is encoded: once, so every retry and the spool carry the same
        self._outgoing = outgoing
        self._ready: deque[Log | FlushMarker] = deque()  # ended logs (and markers), in order
        self._ready_logs = 0
        self._open: deque[Log] = deque()  # open logs by registration time, for live_after
        self._seq = 0  # operations planned so far
        self.open_created = 0  # logs created early and not closed yet
        self.now = 0.0  # the worker's clock at the current cycle (registration times)
        self.spans = False  # a span's log was seen (see `_waits_for_span`)
        # Spans' logs still running that something waits for (created anyway when stopping).
        self._waiting: dict[Log, None] = {}
        self._draining = False

    # --- learning of logs ----------------------------------------------------------------
    def state(self, log: Log) -> LogState | None:
        """This pipeline's state for `log`, registering it if it was accepted but not seen yet;
        None for logs that are not ours (dropped, or from before a fork)."""
        current = log.delivery
        if current.__class__ is LogState:
            return current if current.token is self._token else None
        if current is not self._token:
            return None
        # Accepted, not registered yet: register its unregistered ancestors first, outermost
        # first (a loop, not recursion: a trace may be very deep).
        pending = [log]
        parent = log.parent
        while parent is not None and parent.delivery is self._token:
            pending.append(parent)
            parent = parent.parent
        for each in reversed(pending):
            self._register(each)
        state: LogState = log.delivery
        return state

    def _register(self, log: Log) -> None:
        state = LogState(self._token, self.now, log.start_ns)
        log.delivery = state
        self._counters.held += 1
        parent = log.parent
        if parent is not None and not parent.remote:  # under a remote parent: a root here
            parent_state = parent.delivery
            if parent_state.__class__ is not LogState or parent_state.token is not self._token:
                state.detached = True  # the parent is the forked-from process's to deliver
            elif parent_state.finished and not parent_state.failed:
                state.late = True
                self._adopt(log, state, self._open_ancestor(parent))
            else:
                self._adopt(log, state, parent)
        if not log.is_complete and not log.is_span:  # a span's log is not sent before its end
            self._open.append(log)
        elif log.is_span:
            self.spans = True

    def _open_ancestor(self, log: Log) -> Log | None:
        """The nearest of `log` and its ancestors whose closing is not planned yet (None when
        every one is closed, or the chain leaves this process's logs)."""
        current: Log | None = log
        while current is not None:
            state = current.delivery
            if state.__class__ is not LogState or state.token is not self._token:
                return None
            if not state.finished:
                return current
            current = current.parent
        return None

    def _adopt(self, log: Log, state: LogState, anchor: Log | None) -> None:
        state.anchor = anchor
        if anchor is not None:
            anchor_state: LogState = anchor.delivery
            if anchor_state.unsent_children is None:
                anchor_state.unsent_children = {}
            anchor_state.unsent_children[log] = None

    def started(self, log: Log) -> None:
        self.state(log)

    def ended(self, log: Log) -> None:
        state = self.state(log)
        if state is not None:
            state.ended = True
            self._ready.append(log)
            self._ready_logs += 1
            if log.is_span:
                self._waiting.pop(log, None)

    def add_marker(self, marker: FlushMarker) -> None:
        self._ready.append(marker)

    # --- what is waiting -----------------------------------------------------------------
    @property
    def ready_logs(self) -> int:
        return self._ready_logs

    @property
    def has_marker(self) -> bool:
        return len(self._ready) > self._ready_logs

    @property
    def planned_seq(self) -> int:
        return self._seq

    def next_live_at(self, live_after_s: float) -> float | None:
        """When the oldest open log not yet sent becomes due for early delivery."""
        self._discard_settled_open()
        if not self._open:
            return None
        state: LogState = self._open[0].delivery
        return state.seen_at + live_after_s

    def _discard_settled_open(self) -> None:
        while self._open:
            log = self._open[0]
            state = log.delivery
            if state.__class__ is LogState and not (
                state.created or state.finished or log.is_complete
            ):
                return
            self._open.popleft()

    def open_logs(self) -> int:
        return len(self._open)

    # --- planning ------------------------------------------------------------------------
    def plan(
        self,
        max_ops: int,
        now: float,
        live_after_s: float,
        status_field: StatusField,
        include_open: bool = False,
    ) -> tuple[list[PlannedOp], list[FlushMarker]]:
        """The next operations to send (about `max_ops`), and the flush markers reached."""
        ops: list[PlannedOp] = []
        markers: list[FlushMarker] = []
        ready = self._ready
        while ready and len(ops) < max_ops:
            item = ready.popleft()
            if item.__class__ is FlushMarker:
                assert isinstance(item, FlushMarker)
                item.target_seq = self._seq
                markers.append(item)
                continue
            assert isinstance(item, Log)
            self._ready_logs -= 1
            try:
                self._finish(item, ops, status_field)
            except Exception as exc:  # a bug on one trace: that trace goes, delivery goes on
                self._failed_on(item, exc)
        if include_open and self._waiting:
            self._drain_waiting(ops, status_field)
        while len(ops) < max_ops:
            self._discard_settled_open()
            if not self._open:
                break
            log = self._open[0]
            if not include_open and now < log.delivery.seen_at + live_after_s:
                break
            self._open.popleft()
            try:
                self._create(log, ops, status_field, closing=False)
            except Exception as exc:
                self._failed_on(log, exc)
        return ops, markers

    def _failed_on(self, log: Log, exc: Exception) -> None:
        """Planning `log` failed (a bug): it is dropped (`internal_error`), and so are the
        logs under it that are not created yet; the worker goes on with the others."""
        _guard.internal_error("plan-log", exc)
        state = log.delivery
        if state.__class__ is LogState and state.token is self._token:
            self._drop(log, state, "internal_error")

    def _finish(self, log: Log, ops: list[PlannedOp], status_field: StatusField) -> None:
        """Plan the closing operation of an ended log, after its children's creates: children
        whose end was collected are finished first (depth first), the others created early."""
        state: LogState = log.delivery
        if state.finished:
            return
        if not state.unsent_children:
            self._close(log, state, ops, status_field)
            return
        # An explicit stack of (log, its children still to look at): traces may be deep.
        stack: list[tuple[Log, list[Log] | None]] = [(log, None)]
        while stack:
            current, children = stack[-1]
            current_state: LogState = current.delivery
            if children is None:
                if current_state.finished:
                    stack.pop()
                    continue
                if current_state.failed:
                    stack.pop()
                    self._drop(current, current_state, "parent_dropped")
                    continue
                children = list(current_state.unsent_children or ())
                children.reverse()  # popped from the end: first started, first handled
                stack[-1] = (current, children)
            descended = False
            while children:
                child = children.pop()
                child_state: LogState = child.delivery
                if child_state.finished or child_state.anchor is not current:
                    continue
                if child_state.ended:
                    stack.append((child, None))
                    descended = True
                    break
                self._create(child, ops, status_field, closing=False)
            if not descended:
                stack.pop()
                self._close(current, current_state, ops, status_field)

    def _close(
        self, log: Log, state: LogState, ops: list[PlannedOp], status_field: StatusField
    ) -> None:
        """The closing operation of a log whose children are all created: an update if it was
        created early (its parent is not needed for that), else its complete create."""
        if state.finished:
            return
        if state.failed:
            self._drop(log, state, "parent_dropped")
            return
        if state.created:
            try:
                body = self._leaving(complete_body(log, status_field, True, state.start_ns))
            except Exception as exc:
                self._encode_failed(log, state, exc)
                return
            self._emit(Operation("update", log.log_id, body), log, True, ops)
            state.finished = True
            self.open_created -= 1
            return
        self._create(log, ops, status_field, closing=True, state=state)

    def _create(
        self,
        log: Log,
        ops: list[PlannedOp],
        status_field: StatusField,
        *,
        closing: bool,
        state: LogState | None = None,
    ) -> None:
        """Plan the create of `log` after those of its ancestors not created yet (outermost
        first, as incomplete creates). `closing`: the log has ended and this create closes it;
        otherwise it goes early, as incomplete. A log under a refused ancestor is dropped."""
        if state is None:
            state = self.state(log)
        if state is None or state.created or state.finished:
            return
        if self.spans and self._waits_for_span(log, state):
            return
        anchor = state.anchor
        if anchor is None or (anchor.delivery.created and not anchor.delivery.failed):
            self._emit_create(log, state, ops, status_field, closing)  # the common case
            return
        chain = self._uncreated_ancestors(log, state)
        if chain is None:
            return
        for ancestor in chain:
            if not self._emit_create(ancestor, ancestor.delivery, ops, status_field, False):
                self._drop_below(ancestor, log, state)
                return
        self._emit_create(log, state, ops, status_field, closing)

    def _waits_for_span(self, log: Log, state: LogState) -> bool:
        """Whether `log` must wait: it, or an ancestor it is created under that is not created
        yet, is a span's log whose span has not ended (its fields, kind and version are known
        only then). It is in that log's `unsent_children`: the span's end creates it. A span's
        log whose anchor was closed meanwhile (the span outlived its flow) is filed as a late
        child under the nearest ancestor still open."""
        current, current_state = log, state
        while True:
            running = current.is_span and not (
                current_state.ended or current_state.failed or current_state.created
            )
            if running and not self._draining:  # stopping: it is created as it is, below
                self._waiting[current] = None
                return True
            anchor = current_state.anchor
            if anchor is None:
                return False
            anchor_state: LogState = anchor.delivery
            if anchor_state.created or anchor_state.failed:
                if anchor_state.finished and not anchor_state.failed:
                    self._refile_late(current, current_state, anchor)
                return False
            current, current_state = anchor, anchor_state

    @property
    def waiting_spans(self) -> bool:
        """Whether logs wait for a span's log still running (stopping creates them anyway)."""
        return bool(self._waiting)

    def _drain_waiting(self, ops: list[PlannedOp], status_field: StatusField) -> None:
        """Stopping: a span that has not ended (a producer leaked it, or it runs past the
        exit) no longer holds back what ended inside it. Its log goes as an incomplete flow
        log of what its span says so far, and the logs that waited for it follow."""
        self._draining = True
        try:
            for span_log in list(self._waiting):
                del self._waiting[span_log]
                state = self.state(span_log)
                if state is None or state.finished or state.ended:
                    continue  # an ended one is planned as usual, from the ready logs
                self._create(span_log, ops, status_field, closing=False)
                for child in list(state.unsent_children or ()):
                    child_state: LogState = child.delivery
                    if child_state.ended and not child_state.finished:
                        self._finish(child, ops, status_field)
        finally:
            self._draining = False

    def _refile_late(self, log: Log, state: LogState, closed: Log) -> None:
        children = closed.delivery.unsent_children
        if children is not None:
            children.pop(log, None)
        state.late = True
        self._adopt(log, state, self._open_ancestor(closed))

    def _uncreated_ancestors(self, log: Log, state: LogState) -> list[Log] | None:
        """The ancestors `log` is created under that are not created yet, outermost first;
        None (and the log and those ancestors dropped) when one of its ancestors failed."""
        chain: list[Log] = []
        anchor = state.anchor
        while anchor is not None:
            anchor_state: LogState = anchor.delivery
            if anchor_state.failed:
                for waiting in chain:
                    self._drop(waiting, waiting.delivery, "parent_dropped")
                self._drop(log, state, "parent_dropped")
                return None
            if anchor_state.created:
                break
            chain.append(anchor)
            anchor = anchor_state.anchor
        chain.reverse()
        return chain

    def _drop_below(self, failed: Log, log: Log, state: LogState) -> None:
        """`failed` could not be encoded: the logs between it and `log`, and `log`, go too."""
        current: Log | None = log
        while current is not None and current is not failed:
            current_state: LogState = current.delivery
            self._drop(current, current_state, "parent_dropped")
            current = current_state.anchor

    def _emit_create(
        self,
        log: Log,
        state: LogState,
        ops: list[PlannedOp],
        status_field: StatusField,
        closing: bool,
    ) -> bool:
        try:
            body = self._create_body(log, state, status_field)
        except Exception as exc:
            self._encode_failed(log, state, exc)
            return False
        if not closing:
            # Even a log that has ended meanwhile goes as incomplete here: a child follows it,
            # and a complete parent would refuse the child. Its fields ride along; the update
            # closes it.
            body[status_field] = INCOMPLETE
        # a span's log is a flow's, a prompt's or a tool's: its body said which
        kind: OperationKind = BATCH_LOG if not log.is_span else cast("SpanLog", log).op_kind
        self._emit(Operation(kind, log.log_id, body, log_query(log)), log, closing, ops)
        state.created = True
        if closing:
            state.finished = True
        else:
            self.open_created += 1
        anchor = state.anchor
        if anchor is not None:
            children = anchor.delivery.unsent_children
            if children is not None:
                children.pop(log, None)
        return True

    def _create_body(self, log: Log, state: LogState, status_field: StatusField) -> dict[str, Any]:
        body = create_body(log, status_field, state.start_ns)
        if state.detached or state.late:
            # A detached log's parent lives in the process this one was forked from, which
            # delivers it; a late one's parent was already closed. Either is filed elsewhere
            # (its own trace, or the nearest open ancestor) and notes where it came from.
            parent_id = body.pop("trace_parent_id", None)
            if state.late and state.anchor is not None:
                body["trace_parent_id"] = state.anchor.log_id
            note_recorder(
                body, RECORDER_LATE_CHILD_OF if state.late else RECORDER_FORKED_FROM, parent_id
            )
        elif log.late_child_of is not None:  # the recorder filed it elsewhere when it started
            note_recorder(body, RECORDER_LATE_CHILD_OF, log.late_child_of)
        return self._leaving(body)

    def _leaving(self, body: dict[str, Any]) -> dict[str, Any]:
        outgoing = self._outgoing
        return body if outgoing is None else outgoing.body(body)

    def _encode_failed(self, log: Log, state: LogState, exc: Exception) -> None:
        _guard.internal_error("encode-log", exc)
        self._drop(log, state, "encode_error")

    def _emit(self, operation: Operation, log: Log, final: bool, ops: list[PlannedOp]) -> None:
        self._seq += 1
        ops.append(PlannedOp(operation, log, final, self._seq))

    # --- settling (operations of logs still in memory) ------------------------------------
    def delivered(self, op: PlannedOp) -> None:
        assert op.log is not None
        state: LogState = op.log.delivery
        if op.final and not state.failed:
            self._counters.sent += 1
            self._counters.held -= 1

    def give_up(self, op: PlannedOp, reason: str) -> None:
        """The operation will not be delivered: its log is dropped (once)."""
        assert op.log is not None
        state: LogState = op.log.delivery
        if not state.failed:
            state.failed = True
            self._counters.drop(reason)
            self._counters.held -= 1
            if state.created and not state.finished:
                self.open_created -= 1

    def spooled(self, op: PlannedOp) -> None:
        """The operation went to the spool: a log whose closing operation did leaves memory
        (from now on its delivery is the spool's)."""
        assert op.log is not None
        state: LogState = op.log.delivery
        if op.final and not state.failed:
            self._counters.held -= 1
            self._counters.spooled += 1

    def _drop(self, log: Log, state: LogState, reason: str) -> None:
        """Drop a log before sending (its parent was dropped, or it could not be encoded)."""
        if not state.failed:
            state.failed = True
            self._counters.drop(reason)
            self._counters.held -= 1
        if state.created and not state.finished:
            self.open_created -= 1
        state.finished = True

    def abandon(self, reason: str) -> int:
        """Stop: every log still held is dropped with `reason`, except those sent early that
        never ended (they stay incomplete at the destination: `left_open`). Returns how many
        were dropped."""
        left_open = max(0, min(self.open_created, self._counters.held))
        count = self._counters.held - left_open
        self._counters.left_open += left_open
        self._counters.drop(reason, count)
        self._counters.held = 0
        self.open_created = 0
        for item in self._ready:
            if isinstance(item, FlushMarker):
                item.ok = False
                item.done.set()
        self._ready.clear()
        self._ready_logs = 0
        self._open.clear()
        return count
