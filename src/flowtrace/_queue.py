"""The call-path queue: what the recorder's sink is, and the modes it goes through.

The recorder calls the sink's `log_started` when a log opens and `log_ended` when it closes, on
the user's thread. Which callables those are depends on the mode (`Mode`), published through
`flowtrace._sinks` so the next log sees a change:

- `IDLE`: the worker sleeps (or has not started). Small Python methods append and wake it.
- `BUSY`: the worker polls. The callables are the deques' bound `append` methods: C calls, no
  Python frame on the user's thread, nothing else.
- `GUARDED`: the backlog reached half the bound. Python methods append, refuse the children of a
  refused log, and at the bound either wait for the worker to make room (by moving the overflow
  to disk, or by delivering it when the destination is the local disk; briefly, never for the
  network: see `Backpressure`) or, when neither can be, refuse (`queue_full`).
- `CLOSED`: after shutdown; new logs are refused (`shutdown`).

Only the worker moves between IDLE, BUSY and GUARDED; CLOSED is final (until a fork resets).
Refusals made here are counted here (`refusals()`), under a lock, since any thread may make one.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from flowtrace._sinks import refresh_sinks

if TYPE_CHECKING:
    from flowtrace._log import Log
    from flowtrace._planner import FlushMarker

__all__ = ["DROPPED", "Backpressure", "CallPathQueue", "Mode"]

#: `log.delivery` of a log that was not accepted (queue full, shutting down, parent dropped).
DROPPED = object()


class Mode(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    GUARDED = "guarded"
    CLOSED = "closed"


#: The modes the worker switches between as the backlog grows and shrinks.
LOAD_MODES = (Mode.BUSY, Mode.GUARDED)


class Backpressure:
    """Room in the queue, as the worker sees it. A recording thread that finds the queue at
    its bound waits until the worker makes room, for as long as the worker makes progress
    (`progressed()`); if it makes none for its patience it is stalled (e.g. a disk that hangs):
    the worker then moves the overflow to the spool, and the thread that found the stall waits
    for that as long again before it refuses its log; until room is made again nobody else
    waits: logs beyond the bound are refused instead. So a program is slowed to the speed of
    its local disk at worst, never blocked by a stall for long, and never waits for the
    network.

    The patience is `max_wait_s`, or, while an export is in flight, what that export should
    take by the cost per log of the last ones (`EXPORT_PATIENCE` times it): a deep batch on a
    loaded machine is slow, not stalled, and refusing logs then would lose them for nothing."""

    def __init__(self, max_wait_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._room = threading.Event()
        self._stalled = False
        self._progress = 0
        self._in_flight = 0  # logs in the export under way (0: none)
        self._export_began = 0.0
        self._cost_per_log_s = 0.0  # of the last exports (moving average)

    def has_room(self) -> None:
        """The worker: the backlog is below the low mark: waiters may go on."""
        self._stalled = False
        self._room.set()

    def progressed(self, in_flight: int = 0) -> None:
        """The worker or the sender moved logs on (delivered, or to disk); `in_flight`: the
        sender begins an export of that many logs (0: it ended one, or other progress)."""
        now = self._clock()
        if self._in_flight and not in_flight:
            cost = (now - self._export_began) / self._in_flight
            last = self._cost_per_log_s
            self._cost_per_log_s = cost if not last else 0.5 * last + 0.5 * cost
        self._in_flight = in_flight
        self._export_began = now
        self._progress += 1

    def worked(self) -> None:
        """The worker planned a batch: it is making room (planning a deep batch on a loaded
        machine takes a while, and is not a stall)."""
        self._progress += 1

    def patience(self) -> float:
        """How long a waiting thread waits without progress before it calls the worker
        stalled."""
        expected = EXPORT_PATIENCE * self._cost_per_log_s * self._in_flight
        return max(self.max_wait_s, expected)

    @property
    def stalled(self) -> bool:
        """Recording threads gave up waiting: the worker made no progress for its patience."""
        return self._stalled

    def wait(self, wake: Callable[[], None]) -> bool:
        """A recording thread at the bound: wait for the worker (woken by `wake`) to make room.
        True once there is room, False if it should refuse (the worker is stalled)."""
        if self._stalled:
            return False
        self._room.clear()
        wake()
        seen = self._progress
        idle_since = self._clock()
        declared = False
        while not self._room.wait(_WAIT_SLICE_S):
            if self._progress != seen:
                seen = self._progress
                idle_since = self._clock()
            elif self._clock() - idle_since >= self.patience():
                if declared:
                    return False  # not even the spool makes room: refuse
                # Stalled: the worker now moves the overflow to the spool instead of waiting
                # for the destination; this thread waits for that, as long again.
                declared = self._stalled = True
                wake()
                idle_since = self._clock()
        return True


#: While an export is in flight, a waiting thread waits this many times what the export should
#: take (by the cost per log of the last exports) before it calls the worker stalled.
EXPORT_PATIENCE = 4.0

#: How often a waiting recording thread checks that the worker makes progress.
_WAIT_SLICE_S = 0.05


class CallPathQueue:
    """The two deques the recorder appends to, and the sink callables of each mode."""

    def __init__(
        self,
        start: Callable[[], bool],
        wake: Callable[[], None],
        backlog: Callable[[], int],
        backpressure: Backpressure,
    ) -> None:
        """`start()` starts the worker if need be (False if it cannot run), `wake()` wakes it;
        `backlog()` is how many logs the pipeline holds besides those in the deques."""
        self.started: deque[Log] = deque()
        self.ended: deque[Log | FlushMarker] = deque()
        self._start = start
        self._wake = wake
        self._backlog = backlog
        self.backpressure = backpressure
        self.limit = 1
        # At the bound, wait for room (the overflow goes to disk, or the destination is the
        # local disk itself) rather than refuse.
        self.wait_at_bound = False
        self._lock = threading.Lock()
        self._refusals: dict[str, int] = {}
        self._refusal_lock = threading.Lock()
        self.mode = Mode.IDLE
        self.log_started: Callable[[Log], object] = self._idle_started
        self.log_ended: Callable[[Log], object] = self._idle_ended

    # --- the sink's callables (user threads; O(1), never raise) ----------------------------
    # BUSY: `log_started`/`log_ended` are `self.started.append`/`self.ended.append`.
    def _idle_started(self, log: Log) -> None:
        self.started.append(log)
        self._go_busy()

    def _idle_ended(self, log: Log) -> None:
        self.ended.append(log)
        self._go_busy()

    def _go_busy(self) -> None:
        if self._start():
            # Busy first, then wake: the worker sees the plain appends published before it looks.
            self.switch(Mode.BUSY, only_from=(Mode.IDLE,))
            self._wake()

    def _guarded_started(self, log: Log) -> None:
        """Refuse here what the intake would refuse, so that a backlog does not also keep
        refused logs alive in the deque; at the bound, wait for room (or refuse)."""
        parent = log.parent
        if parent is not None and parent.delivery is DROPPED:
            self.refuse(log, "parent_dropped")
            return
        at_bound = len(self.started) + self._backlog() >= self.limit
        if at_bound and not (self.wait_at_bound and self.backpressure.wait(self._wake)):
            self.refuse(log, "queue_full")
            return
        self.started.append(log)

    def _guarded_ended(self, log: Log) -> None:
        if log.delivery is not DROPPED:
            self.ended.append(log)

    def _closed_started(self, log: Log) -> None:
        self.refuse(log, "shutdown")

    def _closed_ended(self, log: Log) -> None:
        pass

    # --- refusals ----------------------------------------------------------------------------
    def refuse(self, log: Log, reason: str) -> None:
        log.delivery = DROPPED
        with self._refusal_lock:
            self._refusals[reason] = self._refusals.get(reason, 0) + 1

    def count_refusals(self, refused: dict[str, int]) -> None:
        """The worker refused these at intake."""
        with self._refusal_lock:
            for reason, count in refused.items():
                self._refusals[reason] = self._refusals.get(reason, 0) + count

    def refusals(self) -> dict[str, int]:
        with self._refusal_lock:
            return dict(self._refusals)

    # --- modes -------------------------------------------------------------------------------
    def switch(self, mode: Mode, *, only_from: tuple[Mode, ...] | None = None) -> bool:
        """Publish the callables of `mode` (a closed queue stays closed). True if it changed."""
        with self._lock:
            current = self.mode
            if current is mode or current is Mode.CLOSED:
                return False
            if only_from is not None and current not in only_from:
                return False
            self.mode = mode
            if mode is Mode.BUSY:
                self.log_started = self.started.append
                self.log_ended = self.ended.append
            elif mode is Mode.IDLE:
                self.log_started = self._idle_started
                self.log_ended = self._idle_ended
            elif mode is Mode.GUARDED:
                self.log_started = self._guarded_started
                self.log_ended = self._guarded_ended
            else:
                self.log_started = self._closed_started
                self.log_ended = self._closed_ended
            refresh_sinks()
            return True

    def waiting(self) -> int:
        return len(self.started)
