"""The delivery order (docs/architecture.md): which wire operations to send for which logs,
and when.

Runs on the pipeline's worker only (no locks). The rules:

- A leaf log that has ended goes out once, as a complete create.
- A log goes out early, as an *incomplete* create, when something needs it to exist (a child
  is about to be sent) or when it has been open longer than `live_after` (live visibility).
  Such a log is later closed by an update (PATCH) carrying its end-of-log fields.
- Before a log's closing operation, every child it started has had its create sent (children
  that ended go as complete creates, children still running go early). So no child ever
  arrives after its parent closed.

Operations come out in one sequence, and the pipeline delivers that sequence in order (a
failed prefix is retried before anything behind it), so "sent before" means "earlier in the
sequence". Each log's state lives in `log.delivery` (a `LogState`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from flowtrace import _guard
from flowtrace._contract import (
    INCOMPLETE,
    RECORDER_FORKED_FROM,
    RECORDER_METADATA_KEY,
    StatusField,
)
from flowtrace._log import Log
from flowtrace._request_bodies import complete_body, create_body, log_query
from flowtrace.exporters import Operation

__all__ = ["Counters", "FlushMarker", "LogState", "PlannedOp", "Planner"]


class FlushMarker:
    """Put in the stream of ended logs by `flush()`: done once every operation planned before
    it has been settled (delivered, or given up)."""

    __slots__ = ("done", "ok", "target_seq")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True  # False: the worker stopped before delivering what this waits for
        self.target_seq = -1


class LogState:
    """The pipeline's per-log bookkeeping (stored in `log.delivery`)."""

    __slots__ = ("created", "detached", "failed", "finished", "seen_at", "token", "unsent_children")

    def __init__(self, token: object, seen_at: float) -> None:
        self.token = token  # the pipeline generation that accepted the log (forks start anew)
        self.seen_at = seen_at  # when the worker learned of the log (for live_after)
        self.created = False  # an incomplete create was planned: closing needs an update
        self.finished = False  # the closing operation was planned, or the log was dropped
        self.failed = False  # refused or given up: its later operations and children are dropped
        self.detached = False  # its parent belongs to the process we were forked from
        self.unsent_children: set[Log] | None = None  # started children not yet created


class PlannedOp:
    """An operation in flight, with what it means for its log."""

    __slots__ = ("attempts", "final", "log", "operation", "seq")

    def __init__(self, operation: Operation, log: Log, final: bool, seq: int) -> None:
        self.operation = operation
        self.log = log
        self.final = final  # settling it finishes the log's delivery
        self.seq = seq
        self.attempts = 0


@dataclass
class Counters:
    """Delivery counters, written by the worker only."""

    held: int = 0  # logs accepted and not yet settled (open, waiting, or in flight)
    sent: int = 0  # logs whose closing operation the destination accepted
    retried: int = 0  # operations sent again after a retryable failure
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class Planner:
    def __init__(self, token: object, counters: Counters) -> None:
        self._token = token
        self._counters = counters
        self._ready: deque[Log | FlushMarker] = deque()  # ended logs (and markers), in order
        self._ready_logs = 0
        self._open: deque[Log] = deque()  # open logs by registration time, for live_after
        self._seq = 0  # operations planned so far
        self.now = 0.0  # the worker's clock at the current cycle (registration times)

    # --- learning of logs ----------------------------------------------------------------
    def state(self, log: Log) -> LogState | None:
        """This pipeline's state for `log`, registering it if it was accepted but not seen yet;
        None for logs that are not ours (dropped, or from before a fork)."""
        current = log.delivery
        if current.__class__ is LogState:
            return current if current.token is self._token else None
        if current is not self._token:
            return None
        return self._register(log)

    def _register(self, log: Log) -> LogState:
        state = LogState(self._token, self.now)
        log.delivery = state
        self._counters.held += 1
        parent = log.parent
        if parent is not None:
            parent_state = self.state(parent)
            if parent_state is None:
                state.detached = True
            elif not parent_state.finished:
                if parent_state.unsent_children is None:
                    parent_state.unsent_children = set()
                parent_state.unsent_children.add(log)
        if not log.is_complete:
            self._open.append(log)
        return state

    def started(self, log: Log) -> None:
        self.state(log)

    def ended(self, log: Log) -> None:
        if self.state(log) is not None:
            self._ready.append(log)
            self._ready_logs += 1

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
        while self._ready and len(ops) < max_ops:
            item = self._ready.popleft()
            if isinstance(item, FlushMarker):
                item.target_seq = self._seq
                markers.append(item)
                continue
            self._ready_logs -= 1
            self._finish(item, ops, status_field)
        while len(ops) < max_ops:
            self._discard_settled_open()
            if not self._open:
                break
            log = self._open[0]
            if not include_open and now < log.delivery.seen_at + live_after_s:
                break
            self._open.popleft()
            self._create_early(log, ops, status_field)
        return ops, markers

    def _finish(self, log: Log, ops: list[PlannedOp], status_field: StatusField) -> None:
        """Plan the closing operation of an ended log (after its children's creates)."""
        state: LogState = log.delivery
        if state.finished:
            return
        if state.failed or self._parent_failed(log):
            self._drop(log, state, "parent_dropped")
            return
        for child in list(state.unsent_children or ()):
            if child.is_complete:
                self._finish(child, ops, status_field)
            else:
                self._create_early(child, ops, status_field)
        if state.created:
            body = self._encode(log, state, lambda: complete_body(log, status_field, True))
            if body is not None:
                self._emit(Operation("update", log.log_id, body), log, True, ops)
        else:
            self._create_parent(log, ops, status_field)
            body = self._encode(log, state, lambda: self._create_body(log, state, status_field))
            if body is not None:
                self._emit(Operation("log", log.log_id, body, log_query(log)), log, True, ops)
                self._child_created(log)
        state.finished = True

    def _create_early(self, log: Log, ops: list[PlannedOp], status_field: StatusField) -> None:
        """Plan an incomplete create: the log must exist (for a child, or to be seen live)."""
        state = self.state(log)
        if state is None or state.created or state.finished:
            return
        if state.failed or self._parent_failed(log):
            self._drop(log, state, "parent_dropped")
            return
        self._create_parent(log, ops, status_field)
        body = self._encode(log, state, lambda: self._create_body(log, state, status_field))
        if body is None:
            return
        # Even a log that has ended meanwhile goes as incomplete here: a child follows it, and
        # a complete parent would refuse the child. Its fields ride along; the update closes it.
        body[status_field] = INCOMPLETE
        self._emit(Operation("log", log.log_id, body, log_query(log)), log, False, ops)
        state.created = True
        self._child_created(log)

    def _create_parent(self, log: Log, ops: list[PlannedOp], status_field: StatusField) -> None:
        parent = log.parent
        if parent is not None:
            parent_state = self.state(parent)
            if parent_state is not None and not (parent_state.created or parent_state.finished):
                self._create_early(parent, ops, status_field)

    def _create_body(self, log: Log, state: LogState, status_field: StatusField) -> dict[str, Any]:
        body = create_body(log, status_field)
        if state.detached:
            # The parent lives in the process this one was forked from, which delivers it; this
            # process's part of the trace becomes a trace of its own, noting where it came from.
            parent_id = body.pop("trace_parent_id", None)
            metadata = dict(body.get("metadata") or {})
            note = dict(metadata.get(RECORDER_METADATA_KEY) or {})
            note[RECORDER_FORKED_FROM] = parent_id
            metadata[RECORDER_METADATA_KEY] = note
            body["metadata"] = metadata
        return body

    def _child_created(self, log: Log) -> None:
        parent = log.parent
        if parent is not None and parent.delivery.__class__ is LogState:
            children = parent.delivery.unsent_children
            if children is not None:
                children.discard(log)

    def _parent_failed(self, log: Log) -> bool:
        parent = log.parent
        if parent is None:
            return False
        parent_state = self.state(parent)
        return parent_state is not None and parent_state.failed

    def _encode(self, log: Log, state: LogState, encode: Any) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = encode()
            return body
        except Exception as exc:
            _guard.internal_error("encode-log", exc)
            self._drop(log, state, "encode_error")
            return None

    def _emit(self, operation: Operation, log: Log, final: bool, ops: list[PlannedOp]) -> None:
        self._seq += 1
        ops.append(PlannedOp(operation, log, final, self._seq))

    # --- settling ------------------------------------------------------------------------
    def delivered(self, op: PlannedOp) -> None:
        state: LogState = op.log.delivery
        if op.final and not state.failed:
            self._counters.sent += 1
            self._counters.held -= 1

    def give_up(self, op: PlannedOp, reason: str) -> None:
        """The operation will not be delivered: its log is dropped (once)."""
        state: LogState = op.log.delivery
        if not state.failed:
            state.failed = True
            self._counters.drop(reason)
            self._counters.held -= 1

    def _drop(self, log: Log, state: LogState, reason: str) -> None:
        """Drop a log before sending (its parent was dropped, or it could not be encoded)."""
        if not state.failed:
            state.failed = True
            self._counters.drop(reason)
            self._counters.held -= 1
        state.finished = True

    def abandon(self, reason: str) -> int:
        """Stop: every log still held is dropped with `reason`. Returns how many."""
        count = self._counters.held
        if count:
            self._counters.drop(reason, count)
            self._counters.held = 0
        for item in self._ready:
            if isinstance(item, FlushMarker):
                item.ok = False
                item.done.set()
        self._ready.clear()
        self._ready_logs = 0
        self._open.clear()
        return count
