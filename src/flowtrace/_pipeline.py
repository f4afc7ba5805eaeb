"""The delivery pipeline: the recorder's sink, and the two threads that deliver what it hears.

    user threads -> call-path queue (_queue) -> worker -> outbox (_outbox) -> sender -> exporter
                                          planner (_planner)   memory/spool   retries (_delivery)

- The **worker** (`flowtrace-worker`) takes in what the user's threads appended, accepts or
  refuses each log, asks the planner for the next operations and puts them in the outbox. It
  recalibrates the wall clock, moves the overflow to disk when more than `queue_size` logs are
  held, and never waits for the network or the store.
- The **sender** (`flowtrace-sender`, in `_delivery`) takes batches from the outbox and hands
  them to the exporter, retrying what a retry may fix.
- Both share one lock (`lock`) over the planner, the counters, the outbox and the flush markers;
  the network and store I/O happen outside it.

Lifecycle (flush, shutdown, exit, fork, multiprocessing children) is in `_lifecycle`; this module
makes one `Pipeline` per process and offers `flush`, `shutdown` and `stats`.

Nothing here raises into user code, and nothing blocks it: a recording thread waits only when the
queue is at its bound and the overflow can go to disk (see `_queue.Backpressure`), never for the
network.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from flowtrace import _config, _guard, _log, _op_taps, _otlp_export, _sampling
from flowtrace._accounting import Counters, Warnings
from flowtrace._delivery import Ledger, Sender
from flowtrace._destination import Destination
from flowtrace._log import Log
from flowtrace._outbox import Outbox
from flowtrace._outgoing import Outgoing
from flowtrace._planner import FlushMarker, PlannedOp, Planner
from flowtrace._queue import DROPPED, LOAD_MODES, Backpressure, CallPathQueue, Mode
from flowtrace._sinks import add_sink, refresh_sinks, remove_sink
from flowtrace._spool import Spool
from flowtrace.exporters import Exporter, Outcome

__all__ = ["Pipeline", "flush", "shutdown", "stats", "use_exporter"]

logger = logging.getLogger("flowtrace")

#: When the backlog is deep, one request carries up to this many times `batch_size` operations,
#: so the sender catches up with fewer round trips (an answer of 413 halves the batch).
DEEP_BATCH_FACTOR = 8

#: The threads' names; records that other libraries (httpx) log on them are not shown.
WORKER_NAME = "flowtrace-worker"
SENDER_NAME = "flowtrace-sender"

#: After a stop deadline, how long `shutdown` still waits for the threads to reach a safe point
#: (each blocking step they take is bounded by the deadline; this covers the step in progress).
STOP_GRACE_S = 0.5
#: And how long the worker may still spend moving what is left to the spool (planning and
#: encoding it on the way, ~20-40 us a log) after the deadline: it goes on while it is making
#: progress (every step is a batch), for at most this long; what is left then is dropped
#: (`shutdown`). The deadline itself is brought forward by the time the spooling is expected to
#: take (`Pipeline._time_to_spill`), so this is needed only when that was too little.
SPILL_GRACE_S = 5.0
#: What moving a log to the spool costs (planned, encoded, written) before it was measured.
INITIAL_SPILL_COST_S = 40e-6

#: The worker measures the wall clock's offset again at most this often (a step of the clock or
#: a suspend/resume then shows in the start times of later logs within this long).
CALIBRATE_EVERY_S = 1.0
#: The shortest look the worker takes at a flood of logs (below this, waking costs the program
#: more than the few logs that come meanwhile).
MIN_POLL_S = 0.001

Clock = Callable[[], float]


class Pipeline:
    """One per process (a forked child starts a fresh one). Is the recorder's sink."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._settings = _config.get_settings()
        self._reset()
        self._apply_settings(self._settings)

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose locks, threads and
        connections belong to the parent)."""
        self._token = object()  # marks logs this generation accepted
        self.lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._counters = Counters()
        _sampling.reset_counts()  # this pipeline's (a forked child's start at 0)
        self._outgoing = Outgoing(self._settings)
        self._planner = Planner(self._token, self._counters, self._outgoing)
        self._warnings = Warnings()
        old = getattr(self, "_destination", None)
        self._destination = Destination(self._settings, self._warnings)
        if old is not None:
            self._destination.override = old.override
        self._ledger = Ledger(
            self._planner,
            self._counters,
            self._warnings,
            destination=self._destination.describe,
            retry_deadline_s=self._settings.retry_deadline_s,
        )
        self._backpressure = Backpressure()
        self._wake = threading.Event()  # the worker's
        self._queue = CallPathQueue(
            self._start_threads, self._wake_worker, self._held, self._backpressure
        )
        self._send_wake = threading.Event()  # the sender's
        self._worker: threading.Thread | None = None
        self._sender_thread: threading.Thread | None = None
        self._sender: Sender | None = None
        self._outbox: Outbox | None = None
        self._intake = 0  # logs the last intake found
        self._intake_rate = 0.0  # logs per second, as the last intakes found them
        self._last_collect = 0.0
        self._closed = False  # shutdown began: new logs are refused
        self._stopping = False
        self._stop_deadline: float | None = None
        self._last_calibration = float("-inf")
        self._warmed = threading.Event()  # the sender is ready (exporter built, backlog claimed)
        self._worker_done = threading.Event()  # set by each thread as the last thing it does
        self._sender_done = threading.Event()
        self._spill_cost_s = INITIAL_SPILL_COST_S  # per log, measured when spilling

    def _apply_settings(self, settings: _config.Settings) -> None:
        self._settings = settings
        self._queue.limit = max(1, settings.queue_size)
        self._batch_size = max(1, settings.batch_size)
        self._ledger.retry_deadline_s = settings.retry_deadline_s
        self._destination.retarget(settings)
        with self.lock:  # the worker may be encoding a body with the old scrubber
            self._outgoing.configure(settings)

    def settings_changed(self, settings: _config.Settings) -> None:
        """configure() was called: new limits now, a new destination at the next batch."""
        self._apply_settings(settings)

    def use_exporter(self, exporter: Exporter | None) -> None:
        """Deliver to `exporter` (tests, custom destinations); None returns to the settings."""
        self._destination.override = exporter
        self._destination.retarget()

    # --- the sink (read by flowtrace._sinks) -------------------------------------------------
    @property
    def log_started(self) -> Callable[[Log], object]:
        return self._queue.log_started

    @property
    def log_ended(self) -> Callable[[Log], object]:
        return self._queue.log_ended

    def _held(self) -> int:
        return self._counters.held

    # --- threads -----------------------------------------------------------------------------
    def _start_threads(self) -> bool:
        """Start the worker and the sender (at the first log). False if they cannot run."""
        if self._worker is not None:
            return True
        with self._start_lock:
            if self._worker is not None:
                return True
            if self._closed or sys.is_finalizing():
                return False
            self._ensure_outbox()  # whether there is a spool decides how the queue overflows
            sender = Sender(
                self.lock,
                self._ledger,
                self._ensure_outbox,
                self._export,
                clock=self._clock,
                wait=self._sender_wait,
                rng=self._rng,
                backoff_s=self._settings.retry_backoff_s,
                poll_s=self._settings.first_batch_after_s,
                progress=self._progressed,
            )
            worker = threading.Thread(target=self._run_worker, name=WORKER_NAME, daemon=True)
            sending = threading.Thread(
                target=self._run_sender, args=(sender,), name=SENDER_NAME, daemon=True
            )
            self._sender = sender
            self._sender_thread = sending
            try:
                sending.start()
                worker.start()
            except RuntimeError as exc:  # e.g. the interpreter is shutting down
                _guard.internal_error("pipeline-start", exc)
                return False
            self._worker = worker
        from flowtrace import _lifecycle

        _lifecycle.threads_started(self)
        return True

    def _wake_worker(self) -> None:
        self._wake.set()

    def _progressed(self, in_flight: int = 0) -> None:
        """The sender settled a batch (room may have been made), or begins an export of
        `in_flight` logs."""
        self._backpressure.progressed(in_flight)
        self._wake.set()

    def _sender_wait(self, timeout: float) -> None:
        self._send_wake.wait(timeout)
        self._send_wake.clear()

    def _run_sender(self, sender: Sender) -> None:
        try:
            self._warm_up()
            sender.run()
        except BaseException as exc:  # a bug: report it, never take the process down
            _guard.internal_error("pipeline-sender", exc)
        finally:
            try:
                self._destination.close()
            finally:
                self._sender_done.set()

    def _warm_up(self) -> None:
        """On the sender, first thing: imports, connection, discovery (an empty export), and
        the spool's backlog, while the program runs rather than at exit."""
        try:
            with _guard.guarded("exporter-warm-up"):
                self._destination.exporter().export([])
            with self.lock:
                outbox = self._ensure_outbox()
            if not self._stopping:  # no backlog taken over on the way out
                claim = outbox.claim()  # the spool's I/O, outside the lock
                with self.lock:
                    self._counters.spooled += outbox.claimed(claim)
                    self._expire(outbox)
        finally:
            with self.lock:
                self._ledger.backlog_known = True
            self._warmed.set()
            self._progressed()  # recording threads may have waited for the warm-up
        self._send_wake.set()

    def _expire(self, outbox: Outbox) -> None:
        """Drop what waited in the spool longer than `spool_max_age_s` (counted, said once)."""
        expired = outbox.expire()
        if expired:
            self._counters.spooled -= expired
            self._counters.drop("spool_expired", expired)
            self._warnings.dropped("spool_expired", expired, None)

    def _export(self, ops: Sequence[PlannedOp], timeout_s: float | None) -> list[Outcome]:
        """The sender's send (without the lock: the network or the store)."""
        outcomes = self._destination.exporter().export([op.operation for op in ops], timeout_s)
        with self.lock:
            # Take in what arrived during the export, judged against the queue as it was
            # meanwhile (these operations still held).
            self._collect()
        self._wake.set()
        return outcomes

    # --- the public operations ---------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every log that ended before this call is delivered (or dropped); False
        if `timeout` seconds ran out first, or the destination kept failing for
        `retry_deadline_s` (the logs then stay spooled). Never raises."""
        try:
            worker = self._worker
            if worker is None or threading.current_thread() in (worker, self._sender_thread):
                return self._nothing_waiting()
            if not worker.is_alive():
                return self._nothing_waiting()
            marker = FlushMarker()
            self._queue.ended.append(marker)
            sender = self._sender
            if sender is not None:
                sender.waiter.request_flush()
            self._wake.set()
            self._send_wake.set()
            return marker.done.wait(timeout) and marker.ok
        except Exception as exc:
            _guard.internal_error("flush", exc)
            return False

    def drain(self, timeout: float | None = None) -> bool:
        """Deliver what processes that are gone left in this destination's spool (and anything
        waiting here): `flowtrace spool drain`. True if all of it was delivered in time."""
        try:
            start = self._clock()
            if not self._start_threads():
                return False
            if not self._warmed.wait(timeout):
                return False
            remaining = None if timeout is None else max(0.0, start + timeout - self._clock())
            return self.flush(remaining)
        except Exception as exc:
            _guard.internal_error("drain", exc)
            return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Deliver what is waiting (within `timeout` seconds; what is left is spooled), then
        stop both threads. Later logs are refused. Idempotent."""
        try:
            self._shutdown(timeout)
        except Exception as exc:
            _guard.internal_error("shutdown", exc)

    def _shutdown(self, timeout: float | None) -> None:
        start = self._clock()
        with self._start_lock:
            first = not self._closed
            self._closed = True
        self._queue.switch(Mode.CLOSED)
        worker = self._worker
        if worker is None or threading.current_thread() in (worker, self._sender_thread):
            return
        if first:
            self._stop_deadline = None if timeout is None else start + timeout
            self._queue.ended.append(FlushMarker())
            self._stopping = True
            sender = self._sender
            if sender is not None:
                sender.waiter.stop_at = self._stop_deadline
                sender.waiter.request_flush()
            self._wake.set()
            self._send_wake.set()
        self.join(self._stop_deadline)

    def join(self, deadline: float | None) -> bool:
        """Wait for both threads to stop: until `deadline`, plus the graces for the step in
        progress and the spooling of what is left (no deadline: no bound). True if they did."""
        bound = None if deadline is None else deadline + STOP_GRACE_S + SPILL_GRACE_S
        return self._stopped_by(bound)

    def stopped_within(self, seconds: float) -> bool:
        """Wait at most `seconds` more for both threads to stop. True if they did."""
        return self._stopped_by(self._clock() + seconds)

    def _stopped_by(self, bound: float | None) -> bool:
        # Events the threads set last, not Thread.join: a join that a KeyboardInterrupt cuts
        # short marks a running thread stopped (CPython 3.11, bpo-45274).
        for thread, done in (
            (self._worker, self._worker_done),
            (self._sender_thread, self._sender_done),
        ):
            if thread is None:
                continue
            remaining = None if bound is None else max(0.0, bound - self._clock())
            if not done.wait(remaining):
                return False
            thread.join(STOP_GRACE_S)  # only its return into the threading module is left
        return True

    def stop_deadline(self) -> float | None:
        return self._stop_deadline

    def own_spooled(self) -> int:
        """Logs this process spooled that are still waiting there."""
        outbox = self._outbox
        backlog = outbox.backlog_logs if outbox is not None else 0
        return max(0, self._counters.spooled - backlog)

    def cut_short(self) -> None:
        """Stop delivering now (a KeyboardInterrupt during the exit flush): what is left is
        spooled, or dropped without a spool."""
        now = self._clock()
        if self._stop_deadline is None or self._stop_deadline > now:
            self._stop_deadline = now
        sender = self._sender
        if sender is not None:
            sender.waiter.stop_at = now
        self._destination.interrupt()
        self._wake.set()
        self._send_wake.set()

    def spool(self) -> Spool | None:
        """A handle on the spool of the configured destination (not opened yet)."""
        return self._destination.spool()

    def stats(self) -> dict[str, Any]:
        counters = self._counters
        dropped = self._queue.refusals()
        for reason, count in dict(counters.dropped).items():
            dropped[reason] = dropped.get(reason, 0) + count
        outbox = self._outbox
        spool = outbox.spool if outbox is not None else None
        return {
            "queued": self._queue.waiting() + counters.held,
            "spooled": counters.spooled,
            "sent": counters.sent,
            "left_open": counters.left_open,
            "retried": counters.retried,
            "dropped": dropped,
            "last_error": counters.last_error,
            "spool": str(spool.path) if spool is not None else None,
            **self._outgoing.stats(),
            **_sampling.stats(),
        }

    def _nothing_waiting(self) -> bool:
        return self._queue.waiting() + self._counters.held + self._counters.spooled == 0

    def after_fork_in_child(self) -> None:
        """The child starts empty with its own (not yet started) threads; what the parent had
        queued is the parent's to deliver."""
        self._reset()
        self._apply_settings(self._settings)
        refresh_sinks()  # the inherited callables append to the parent's deques

    # --- the worker ----------------------------------------------------------------------------
    def _run_worker(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # a bug: report it, never take the process down
            _guard.internal_error("pipeline-worker", exc)
        finally:
            try:
                self._finish_stop()
            except BaseException as exc:
                _guard.internal_error("pipeline-stop", exc)
            finally:
                self._worker_done.set()

    def _work(self) -> None:
        next_send_at = self._clock() + self._settings.first_batch_after_s
        while True:
            with self.lock:
                self._collect()
                now = self._clock()
                if self._stopping:
                    if self._stop_ready(now):
                        return
                    stopping = True
                else:
                    stopping = False
                planned = not stopping and self._due(now, next_send_at) and self._plan_batch(now)
                pressed = self._relieve_pressure(now)
                self._release_markers()
                self._warn_drops()
            if planned:
                self._backpressure.worked()
                self._send_wake.set()
                next_send_at = self._clock() + self._settings.batch_interval_s
            if planned or pressed or (stopping and self._planner.ready_logs):
                continue
            next_send_at = self._sleep(now, next_send_at)

    def _stop_ready(self, now: float) -> bool:
        """Stopping: plan the next batch (open logs as incomplete creates); True once all is
        planned and delivered, or when what is left must go to the spool now to be there by
        the deadline. One batch per call: the lock is let go between batches (the sender
        settles meanwhile)."""
        deadline = self._stop_deadline
        if deadline is not None and now + self._time_to_spill() >= deadline:
            return True
        planner = self._planner
        if (
            planner.ready_logs
            or planner.has_marker
            or planner.next_live_at(0.0) is not None
            or planner.waiting_spans  # spans' logs still running (flowtrace.otel)
        ):
            self._plan_batch(now, include_open=True)
            self._send_wake.set()
            return False
        outbox = self._outbox
        return outbox is None or (outbox.empty() and outbox.in_flight is None)

    def _time_to_spill(self) -> float:
        """How long moving what is left to the spool would take (planning and encoding what is
        not planned yet), by what it took so far in this process (with a margin)."""
        outbox = self._outbox
        waiting = self._planner.ready_logs + self._planner.open_logs()
        if outbox is not None and outbox.usable:
            waiting += outbox.memory_ops // 2  # encoded already: half the cost
        elif outbox is not None:
            return 0.0  # nothing can go to disk: deliver until the deadline
        return 1.5 * waiting * self._spill_cost_s

    def _collect(self) -> None:
        """Move what the user's threads appended into the planner. Ends are counted first and
        starts drained after, so every start that happened before a collected end is known."""
        planner = self._planner
        now = self._clock()
        planner.now = now
        queue = self._queue
        ended_count = len(queue.ended)
        started = queue.started
        found = ended_count
        if started:
            if now - self._last_calibration >= CALIBRATE_EVERY_S:
                # Before the logs are first seen (their start times are fixed then): a step of
                # the wall clock shows in the logs that start after it. Two clock reads.
                _log.calibrate()
                self._last_calibration = now
            found += self._take_started(started)
        ended = queue.ended
        for _ in range(ended_count):
            item = ended.popleft()
            if isinstance(item, FlushMarker):
                planner.add_marker(item)
            else:
                planner.ended(item)  # ignores logs that are not ours (refused, pre-fork)
        self._intake = found
        self._measure_intake(found, now)
        if queue.refusals().get("queue_full"):
            why = (
                "the worker made no progress for a while (a hanging disk?)"
                if queue.wait_at_bound
                else "there is no spool to take the overflow"
            )
            self._warnings.once(
                "queue_full",
                "flowtrace: the delivery queue is full (%d logs held) and %s; new logs are "
                "dropped until it drains. Counts are in flowtrace.stats().",
                queue.limit,
                why,
            )
        # Plain appends while the queue has room; the checking callables once it is a quarter
        # full, or while the overflow goes to disk (a flood of plain appends would outrun it).
        outbox = self._outbox
        spilling = outbox is not None and outbox.own_on_disk > 0 and not outbox.always
        loaded = 4 * self._counters.held >= queue.limit or spilling
        load = Mode.GUARDED if loaded else Mode.BUSY
        if queue.mode is not load and queue.mode in LOAD_MODES:
            queue.switch(load, only_from=LOAD_MODES)

    def _measure_intake(self, found: int, now: float) -> None:
        elapsed = now - self._last_collect
        self._last_collect = now
        if elapsed > 0:
            self._intake_rate = 0.5 * self._intake_rate + 0.5 * (found / elapsed)

    def _time_to_quarter_bound(self) -> float:
        """How long the program takes, at its current pace, to fill what is left of a quarter
        of the bound: between two intakes nobody checks the bound (the plain appends), so the
        worker looks again before then, even when it has nothing to plan (a local sender busy)."""
        rate = self._intake_rate
        if rate <= 0:
            return float("inf")
        room = self._queue.limit / 4 - self._counters.held
        return max(MIN_POLL_S, room / rate)

    def _warn_drops(self) -> None:
        """Each reason logs were dropped for is said once, with the count so far (in logs);
        a refusal is said by the sender, with the destination's reason."""
        for reason, count in self._counters.dropped.items():
            if reason != "rejected":
                self._warnings.dropped(reason, count, self._counters.last_error)

    def _take_started(self, started: Any) -> int:
        """Accept or refuse the logs that started, in order; returns how many there were. (Logs
        after shutdown are refused by the closed callables; what was queued before is ours.)
        With a spool every log is accepted (the overflow goes to disk); without one, logs
        beyond the bound are refused."""
        planner = self._planner
        counters = self._counters
        token = self._token
        limit = self._queue.limit if not self._queue.wait_at_bound else sys.maxsize
        count = 0
        refused: dict[str, int] = {}
        popleft = started.popleft
        while started:
            log = popleft()
            count += 1
            parent = log.parent
            if parent is not None and parent.delivery is DROPPED:
                reason = "parent_dropped"
            elif counters.held >= limit:
                reason = "queue_full"
            else:
                log.delivery = token
                planner.started(log)
                continue
            log.delivery = DROPPED
            refused[reason] = refused.get(reason, 0) + 1
        if refused:
            self._queue.count_refusals(refused)
        return count

    def _due(self, now: float, next_send_at: float) -> bool:
        planner = self._planner
        if self._sender_busy_locally():
            return False
        if planner.has_marker or self._stopping or planner.ready_logs >= self._batch_size:
            return True
        if planner.ready_logs and now >= next_send_at:
            return True
        live_at = planner.next_live_at(self._settings.live_after_s)
        return live_at is not None and now >= live_at

    def _sender_busy_locally(self) -> bool:
        """The sender is writing to the local disk (the embedded store) and the next batch is
        planned already. Planning more now would only slow it: both are Python on one GIL,
        and each SQLite statement lets the GIL go, to get it back only when the planning
        thread yields it (up to the 5 ms switch interval). So for a local destination the
        worker plans while the sender is idle; a remote one (the network waits) overlaps."""
        outbox = self._outbox
        if outbox is None or not (outbox.memory or outbox.in_flight is not None):
            return False
        return self._destination.local()

    def _plan_batch(
        self, now: float, include_open: bool = False, max_ops: int | None = None
    ) -> bool:
        """Plan one batch and put it in the outbox. False when there was nothing to plan."""
        planner = self._planner
        if max_ops is None:
            max_ops = self._batch_size
            if planner.ready_logs > max_ops:
                # Deep batches, but never one that holds most of the queue's bound (room is
                # made as a batch is settled).
                deep = min(self._batch_size * DEEP_BATCH_FACTOR, self._queue.limit // 4)
                max_ops = max(max_ops, min(planner.ready_logs, deep))
        ops, markers = planner.plan(
            max_ops,
            now,
            self._settings.live_after_s,
            self._settings.status_field,
            include_open=include_open or self._stopping,
        )
        outbox = self._ensure_outbox()
        self._ledger.planned(ops)
        self._ledger.add_markers(markers, now)
        if ops:
            if _op_taps.taps:  # the OTLP export: a copy of each operation, on its own queue
                _op_taps.tell(ops)
            outbox.put(ops)
        elif markers:
            self._release_markers()
        return bool(ops) or bool(markers)

    def _relieve_pressure(self, now: float) -> bool:
        """Near the bound (90%) in memory, make room: when the destination is remote, plan a
        batch of what has ended and move what waits in memory to disk (the overflow); when it
        is the local disk itself, let the sender deliver it, unless it is stalled (then to
        disk too). Recording threads at the bound wait meanwhile (`_queue.Backpressure`).
        True while there is more to move (the worker goes on without sleeping)."""
        queue = self._queue
        if not queue.wait_at_bound:
            return False
        local = self._destination.local()
        low = int(queue.limit * 0.9)
        if self._counters.held + queue.waiting() < low:
            self._backpressure.has_room()
            return False
        outbox = self._ensure_outbox()
        if not outbox.usable or (local and not self._backpressure.stalled):
            return False
        planned = bool(self._planner.ready_logs) and self._plan_batch(now, max_ops=self._batch_size)
        if outbox.spill():
            self._backpressure.progressed()
        if self._counters.held < low:
            self._backpressure.has_room()
        return planned

    def _sleep(self, now: float, next_send_at: float) -> float:
        """Wait for work; returns the (possibly new) time of the next send."""
        planner = self._planner
        deadlines = []
        # The next send is due only once a local sender is idle again (it wakes us then): a
        # due time that passed while it was busy would make this loop spin, taking the
        # interpreter lock from the sender at each of its SQLite calls.
        if planner.ready_logs and not self._sender_busy_locally():
            deadlines.append(next_send_at)
        live_at = planner.next_live_at(self._settings.live_after_s)
        if live_at is not None:
            deadlines.append(live_at)
        if self._stopping and self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        if self._ledger.markers:  # flushes give up on a failing destination in time
            deadlines.append(now + self._settings.batch_interval_s)
        settings = self._settings
        self._wake.clear()
        queue = self._queue
        if self._intake:
            # Logs are arriving and nobody wakes us: look again soon (this bounds how far the
            # deques grow between intakes).
            timeout = min(deadlines) - now if deadlines else settings.batch_interval_s
            poll = min(
                settings.first_batch_after_s,
                settings.batch_interval_s,
                self._time_to_quarter_bound(),
            )
            self._wake.wait(max(0.0, min(timeout, poll)))
            return next_send_at
        # The last intake found nothing: let the next log wake us (the idle callables), then
        # check again, since a log may have come meanwhile. Not while the backlog is large: the
        # checking callables stay (the idle ones would let a flood in).
        if queue.mode is not Mode.GUARDED:
            queue.switch(Mode.IDLE, only_from=LOAD_MODES)
        if queue.started or queue.ended:
            queue.switch(Mode.BUSY, only_from=(Mode.IDLE,))
            return next_send_at
        waiting = bool(deadlines or planner.open_logs())
        timeout = min(deadlines) - now if deadlines else settings.batch_interval_s
        # Bounded even when nothing is open: a thread that read the busy callables just before
        # we published the idle ones may still append without waking us.
        self._wake.wait(max(0.0, min(timeout, settings.batch_interval_s)))
        if waiting:
            return next_send_at
        return self._clock() + settings.first_batch_after_s

    def _release_markers(self, stopping: bool = False) -> None:
        sender = self._sender
        if sender is None:
            self._ledger.release_markers(self._clock(), None, stopping)
            return
        self._ledger.release_markers(
            self._clock(), sender.backoff.failing_since, stopping, sender.attempts
        )

    # --- stopping --------------------------------------------------------------------------------
    def _finish_stop(self) -> None:
        """The worker is stopping (shutdown, exit, or a bug): let the sender finish within the
        deadline, then spool what is left (or count it dropped), and answer every flush."""
        sender = self._sender
        deadline = self._stop_deadline
        if deadline is not None:
            deadline = min(deadline, self._clock())  # what is left goes to disk now
            with self.lock:
                self._ledger.stopping = True
        if sender is not None:
            if deadline is not None:
                sender.waiter.stop_at = deadline
            sender.stopped = True
            self._send_wake.set()
            thread = self._sender_thread
            if thread is not None and thread is not threading.current_thread():
                done = self._sender_done
                if not done.wait(None if deadline is None else max(0.0, deadline - self._clock())):
                    # The deadline came during an export: end it now (its operations are
                    # reported undelivered, and spooled below).
                    self._destination.interrupt()
                    done.wait(STOP_GRACE_S)
        self._leave_the_rest()

    def _leave_the_rest(self) -> None:
        """What was not delivered by the deadline goes to the spool if there is one (what is
        not planned yet is planned first, a batch at a time, within `SPILL_GRACE_S`), else it
        is dropped (`shutdown`); logs still open were delivered as incomplete creates
        (`left_open`). Every flush is answered."""
        deadline = self._stop_deadline
        give_up_at = max(self._clock(), deadline or 0.0) + SPILL_GRACE_S
        while True:
            with self.lock:
                self._collect()  # what the program recorded last (the queue is closed now)
                outbox = self._ensure_outbox()
                if not outbox.usable or self._clock() >= give_up_at:
                    break
                started, held = self._clock(), self._counters.held
                planned = self._plan_batch(
                    self._clock(), include_open=True, max_ops=self._batch_size
                )
                outbox.spill()
                moved = held - self._counters.held
                if moved > 0:  # what a log costs to move, for the next exit's estimate
                    cost = (self._clock() - started) / moved
                    self._spill_cost_s = 0.7 * self._spill_cost_s + 0.3 * cost
                if not planned:
                    break
        with self.lock:
            self._collect()
            outbox = self._ensure_outbox()
            outbox.spill()  # what is in memory is encoded already: to disk, if it can be
            while outbox.memory:
                self._ledger.give_up(outbox.memory.popleft().ops, "shutdown")
            outbox.memory_ops = 0
            self._planner.abandon("shutdown")
            spool = outbox.spool
            if spool is not None:
                with _guard.guarded("spool-release"):
                    spool.release()
            self._release_markers(stopping=True)

    # --- the outbox --------------------------------------------------------------------------
    def _ensure_outbox(self) -> Outbox:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox(
                self._destination.spool(),
                always=self._settings.spool == "always",
                spooled=self._planner.spooled,
                forget=self._ledger.forget,
                refused=self._ledger.give_up,
                unavailable=self._spool_unavailable,
                chunk=self._batch_size,
            )
            self._ledger.outbox = outbox
            self._queue.wait_at_bound = outbox.usable or self._destination.local()
        return outbox

    def _spool_unavailable(self, error: str) -> None:
        self._queue.wait_at_bound = self._destination.local()
        self._counters.last_error = error
        self._warnings.once(
            "spool-unavailable",
            "flowtrace: the spool cannot be used (%s); logs that cannot be delivered now are "
            "kept in memory only.",
            error,
        )


# --- the process's pipeline --------------------------------------------------------------

_pipeline = Pipeline()


def current() -> Pipeline:
    return _pipeline


def flush(timeout: float | None = None) -> bool:
    """Wait until every log recorded so far is delivered; False if `timeout` ran out."""
    return _pipeline.flush(timeout)


def shutdown(timeout: float | None = None) -> None:
    """Flush (within `timeout` seconds), then stop delivering; later logs are not delivered.
    What is left is spooled (or dropped without a spool), said in one warning."""
    from flowtrace import _lifecycle

    _lifecycle.shutdown_and_report(_pipeline, timeout)


def stats() -> dict[str, Any]:
    """Delivery counters, in logs: queued, spooled, sent, left_open, retried (operations),
    dropped (by reason), last_error, and the spool's path; with an OTLP endpoint configured,
    the export's own under `otlp`."""
    counters = _pipeline.stats()
    otlp = _otlp_export.stats()
    if otlp is not None:
        counters["otlp"] = otlp
    return counters


def use_exporter(exporter: Exporter | None) -> None:
    """Send logs to `exporter` instead of the configured destination (None: back to it)."""
    _pipeline.use_exporter(exporter)


def replace_pipeline(new: Pipeline) -> Pipeline:
    """Swap the process's pipeline (tests): the old one is shut down; returns the new one."""
    global _pipeline
    old, _pipeline = _pipeline, new
    old.shutdown(0)
    remove_sink(old)
    add_sink(new)
    return new


def _install() -> None:
    from flowtrace import _lifecycle

    add_sink(_pipeline)
    _lifecycle.install()
    _otlp_export.install()


_install()
