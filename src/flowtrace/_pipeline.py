"""The delivery pipeline: a bounded queue, one worker thread, batching, retries, flush,
shutdown, exit and fork handling, and the counters behind `flowtrace.stats()`.

While logs keep coming, the sink's `log_started` and `log_ended` *are* two deques' bound
`append` methods (C calls, no Python frame on the user's thread). The worker does all the
thinking at intake (`_collect`): it accepts or refuses each log (parent dropped, shutdown,
queue bound), learns of logs, asks the Planner (`_planner.py`) what to send in which order,
hands batches to the exporter, and retries what failed, in order, reusing the same operations
(same `log_id`), so replays are idempotent at the store.

Nobody wakes a busy worker: it polls every `first_batch_after_s` while its last intake found
new logs. When an intake finds nothing, the worker publishes small Python methods as the sink
instead (`_idle_started`/`_idle_ended`: append, wake the worker, republish the plain appends)
and sleeps; so the first log after a quiet spell wakes it, and a quiet process costs (almost)
no CPU. The very first log starts the worker the same way.

The queue bound is enforced at intake: the newest logs beyond `queue_size` are refused there
(`queue_full`). Between two intakes the deques may hold more than the bound: at most what the
program produces in one polling interval (`first_batch_after_s`): a small guard thread
(`_guard_queue`) looks at the deque's length every interval while the plain appends are
published, and switches to checking callables (`_guarded_started`: the bound and the parent
check on the user's thread, as before) once the bound is reached, since the worker may be stuck
in a connect or a long export. The worker refuses any excess at its next intake, in one pass
(it also takes logs in after every export and while backing off), keeps the checking callables
while the queue is at least half full, and returns to the plain appends below half.

Nothing here raises into user code or blocks it: a full queue drops the newest logs (counted,
warned once), and at exit delivery is bounded by `exit_flush_timeout_s`.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from flowtrace import _config, _guard
from flowtrace._log import Log
from flowtrace._planner import Counters, FlushMarker, PlannedOp, Planner
from flowtrace._retry import backoff_delay_s, describe_rejection, is_retryable
from flowtrace._sinks import add_sink, refresh_sinks, remove_sink
from flowtrace.exporters import Exporter, Outcome, not_delivered

__all__ = ["Pipeline", "flush", "shutdown", "stats", "use_exporter"]

logger = logging.getLogger("flowtrace")

#: `log.delivery` of a log that was not accepted (queue full, shutting down, parent dropped).
DROPPED = object()

#: When the backlog is deep, one request carries up to this many times `batch_size` operations,
#: so the worker catches up with fewer round trips (an answer of 413 halves the batch).
DEEP_BATCH_FACTOR = 8

#: The worker's thread name; records that other libraries (httpx) log on it are not shown.
WORKER_NAME = "flowtrace-worker"
GUARD_NAME = "flowtrace-queue-guard"

Clock = Callable[[], float]

#: The sink's modes while the worker is busy: plain appends, or checks once the queue fills.
_LOAD_MODES = ("busy", "guarded")


class Pipeline:
    """One per process (a forked child resets its copy). Is the recorder's sink."""

    def __init__(self) -> None:
        self._clock: Clock = time.monotonic
        self._rng = random.Random()
        self._exporter_override: Exporter | None = None
        self._reset()
        self._apply_settings(_config.get_settings())

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose locks, thread and
        connections belong to the parent)."""
        self._token = object()  # marks logs this generation accepted
        self._started: deque[Log] = deque()
        self._ended: deque[Log | FlushMarker] = deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._mode_lock = threading.Lock()
        self._mode = "idle"  # published callables: "idle", "busy", "guarded" or "closed"
        self._busy = threading.Event()  # set while the plain appends are published
        self.log_started: Callable[[Log], object] = self._idle_started
        self.log_ended: Callable[[Log], object] = self._idle_ended
        self._drop_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._intake = 0  # logs the last intake found
        self._closed = False  # shutdown began: new logs are dropped
        self._stopping = False
        self._stop_deadline: float | None = None
        self._flush_requests = 0  # each flush may cut one backoff sleep short
        self._counters = Counters()
        self._planner = Planner(self._token, self._counters)
        self._early_drops: dict[str, int] = {}  # drops decided at intake (or after shutdown)
        self._warned: set[str] = set()
        self._markers: list[FlushMarker] = []  # reached, waiting for their operations
        self._settled_seq = 0
        self._abandoned = False  # the worker stopped with logs undelivered
        self._exporter: Exporter | None = None
        self._retarget = True

    def _apply_settings(self, settings: _config.Settings) -> None:
        self._settings = settings
        self._queue_limit = max(1, settings.queue_size)
        self._batch_size = max(1, settings.batch_size)
        self._retarget = True

    def settings_changed(self, settings: _config.Settings) -> None:
        """configure() was called: new limits now, a new destination at the next request."""
        self._apply_settings(settings)

    def use_exporter(self, exporter: Exporter | None) -> None:
        """Deliver to `exporter` (tests, custom destinations); None returns to the settings."""
        self._exporter_override = exporter
        self._retarget = True

    # --- the sink: called on the user's thread, O(1), never raises -----------------------
    # Busy: `log_started`/`log_ended` are `self._started.append`/`self._ended.append`.
    def _idle_started(self, log: Log) -> None:
        """The sink while the worker is idle or not started: queue, wake, go busy."""
        self._started.append(log)
        self._wake_up()

    def _idle_ended(self, log: Log) -> None:
        self._ended.append(log)
        self._wake_up()

    def _wake_up(self) -> None:
        if self._thread is None:
            self._start_worker()
            if self._thread is None:
                return  # could not start (shutting down): stay on the idle callables
        self._set_mode("busy")
        self._wake.set()

    def _guarded_started(self, log: Log) -> None:
        """The sink while the queue is (at least half) full: refuse here, as the intake would,
        so that a backlog does not also keep refused logs alive in the deque."""
        parent = log.parent
        if parent is not None and parent.delivery is DROPPED:
            self._refuse(log, "parent_dropped")
        elif len(self._started) + self._counters.held >= self._queue_limit:
            self._refuse(log, "queue_full")
        else:
            self._started.append(log)

    def _guarded_ended(self, log: Log) -> None:
        if log.delivery is not DROPPED:
            self._ended.append(log)

    def _closed_started(self, log: Log) -> None:
        """The sink after shutdown: new logs are refused."""
        self._refuse(log, "shutdown")

    def _closed_ended(self, log: Log) -> None:
        pass

    def _set_mode(self, mode: str, *, only_from: tuple[str, ...] | None = None) -> None:
        """Publish the callables for `mode` (a closed pipeline stays closed)."""
        with self._mode_lock:
            if self._mode == mode or self._mode == "closed":
                return
            if only_from is not None and self._mode not in only_from:
                return
            self._mode = mode
            if mode == "busy":
                self._busy.set()
                self.log_started = self._started.append
                self.log_ended = self._ended.append
            else:
                self._busy.clear()
            if mode == "busy":
                pass  # set above
            elif mode == "idle":
                self.log_started = self._idle_started
                self.log_ended = self._idle_ended
            elif mode == "guarded":
                self.log_started = self._guarded_started
                self.log_ended = self._guarded_ended
            else:
                self.log_started = self._closed_started
                self.log_ended = self._closed_ended
            refresh_sinks()

    def _refuse(self, log: Log, reason: str) -> None:
        log.delivery = DROPPED
        with self._drop_lock:
            self._early_drops[reason] = self._early_drops.get(reason, 0) + 1

    def _start_worker(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed or sys.is_finalizing():
                return
            thread = threading.Thread(target=self._run, name=WORKER_NAME, daemon=True)
            guard = threading.Thread(target=self._guard_queue, name=GUARD_NAME, daemon=True)
            try:
                thread.start()
                guard.start()
            except RuntimeError as exc:  # e.g. the interpreter is shutting down
                _guard.internal_error("pipeline-start", exc)
                return
            self._thread = thread

    def _guard_queue(self) -> None:
        """While the plain appends are published, look at the queue every polling interval:
        once it reaches the bound (the worker is stuck in an export, a connect, a long
        encoding), publish the checking callables, which refuse beyond the bound on the user's
        thread. Sleeps on an event otherwise (no CPU while idle or guarded)."""
        try:
            busy = self._busy
            while True:
                busy.wait()
                time.sleep(self._settings.first_batch_after_s)
                if self._mode == "busy" and (
                    len(self._started) + self._counters.held >= self._queue_limit
                ):
                    self._set_mode("guarded", only_from=("busy",))
        except BaseException as exc:  # a bug: report it, never take the process down
            _guard.internal_error("pipeline-guard", exc)

    # --- the public operations -----------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every log that ended before this call is delivered (or given up);
        False if `timeout` seconds ran out first. Never raises."""
        try:
            thread = self._thread
            if thread is None or threading.current_thread() is thread:
                return self._nothing_waiting()
            if not thread.is_alive():
                return self._nothing_waiting()
            marker = FlushMarker()
            self._ended.append(marker)
            self._flush_requests += 1
            self._wake.set()
            return marker.done.wait(timeout) and marker.ok
        except Exception as exc:
            _guard.internal_error("flush", exc)
            return False

    def shutdown(self, timeout: float | None = None) -> None:
        """Deliver what is waiting (within `timeout` seconds), then stop the worker. Later logs
        are dropped. Idempotent."""
        try:
            self._shutdown(timeout)
        except Exception as exc:
            _guard.internal_error("shutdown", exc)

    def _shutdown(self, timeout: float | None) -> None:
        start = self._clock()
        with self._start_lock:
            first = not self._closed
            self._closed = True
        self._set_mode("closed")
        thread = self._thread
        if thread is None or threading.current_thread() is thread:
            return
        if first:
            self._stop_deadline = None if timeout is None else start + timeout
            marker = FlushMarker()
            self._ended.append(marker)
            self._stopping = True
            self._flush_requests += 1
            self._wake.set()
        remaining = None if timeout is None else max(0.0, start + timeout - self._clock())
        thread.join(remaining)

    def stats(self) -> dict[str, Any]:
        counters = self._counters
        with self._drop_lock:
            dropped = dict(self._early_drops)
        for reason, count in dict(counters.dropped).items():
            dropped[reason] = dropped.get(reason, 0) + count
        return {
            "queued": len(self._started) + counters.held,
            "sent": counters.sent,
            "retried": counters.retried,
            "dropped": dropped,
            "last_error": counters.last_error,
        }

    def _nothing_waiting(self) -> bool:
        return len(self._started) + self._counters.held == 0

    def at_exit(self) -> None:
        """Interpreter exit: deliver what is waiting, bounded by `exit_flush_timeout_s`."""
        timeout = self._settings.exit_flush_timeout_s
        self.shutdown(timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            with _guard.guarded("at-exit"):
                logger.warning(
                    "flowtrace: %d log(s) not delivered at exit: the destination did not answer "
                    "within exit_flush_timeout_s=%s (last error: %s)",
                    len(self._started) + self._counters.held,
                    timeout,
                    self._counters.last_error,
                )

    def before_fork(self) -> None:
        self._build_lock.acquire()

    def after_fork_in_parent(self) -> None:
        self._build_lock.release()

    def after_fork_in_child(self) -> None:
        """The child starts empty with its own (not yet started) worker; what the parent had
        queued is the parent's to deliver."""
        self._reset()
        refresh_sinks()  # the inherited callables append to the parent's deques

    # --- the worker ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: report it, never take the process down
            _guard.internal_error("pipeline-worker", exc)
        finally:
            self._close_exporter()
            self._fail_markers()

    def _fail_markers(self) -> None:
        """The worker stopped: nobody will deliver what flushes wait for; answer them."""
        markers = self._markers
        self._markers = []
        while self._ended:
            item = self._ended.popleft()
            if isinstance(item, FlushMarker):
                markers.append(item)
        for marker in markers:
            marker.ok = not self._abandoned and self._nothing_waiting()
            marker.done.set()

    def _loop(self) -> None:
        next_send_at = self._clock() + self._settings.first_batch_after_s
        # Warm up now (imports, connection, discovery; an empty export), while the program
        # runs, rather than in the first batch, which may only come at exit.
        with _guard.guarded("exporter-warm-up"):
            self._current_exporter().export([])
        while True:
            self._collect()
            now = self._clock()
            if self._stopping and self._stop_deadline is not None and now >= self._stop_deadline:
                self._abandon("shutdown")
                return
            if self._due(now, next_send_at):
                sent = self._send_next(now)
                if sent:
                    next_send_at = self._clock() + self._settings.batch_interval_s
                    continue
                if self._stopping and not self._planner.ready_logs:
                    return
            next_send_at = self._sleep(now, next_send_at)

    def _collect(self) -> None:
        """Move what the user's threads appended into the planner. Ends are counted first and
        starts drained after, so every start that happened before a collected end is known."""
        planner = self._planner
        planner.now = self._clock()
        ended_count = len(self._ended)
        started = self._started
        found = ended_count
        if started:
            found += self._take_started(started)
        ended = self._ended
        for _ in range(ended_count):
            item = ended.popleft()
            if isinstance(item, FlushMarker):
                planner.add_marker(item)
            else:
                planner.ended(item)  # ignores logs that are not ours (refused, pre-fork)
        self._intake = found
        self._warn_early_drops()
        # Plain appends while the queue has room; the checking callables once it is half full.
        load = "guarded" if 2 * self._counters.held >= self._queue_limit else "busy"
        if self._mode != load and self._mode in _LOAD_MODES:
            self._set_mode(load, only_from=_LOAD_MODES)

    def _take_started(self, started: deque[Log]) -> int:
        """Accept or refuse the logs that started, in order; returns how many there were. (Logs
        after shutdown are refused by the closed callables; what was queued before is ours.)"""
        planner = self._planner
        counters = self._counters
        token = self._token
        limit = self._queue_limit
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
            with self._drop_lock:
                drops = self._early_drops
                for reason, n in refused.items():
                    drops[reason] = drops.get(reason, 0) + n
        return count

    def _due(self, now: float, next_send_at: float) -> bool:
        planner = self._planner
        if planner.has_marker or self._stopping or planner.ready_logs >= self._batch_size:
            return True
        if planner.ready_logs and now >= next_send_at:
            return True
        live_at = planner.next_live_at(self._settings.live_after_s)
        return live_at is not None and now >= live_at

    def _send_next(self, now: float) -> bool:
        """Plan and deliver one batch. False when there was nothing to send."""
        waiting = self._planner.ready_logs
        max_ops = self._batch_size
        if waiting > max_ops:
            max_ops = min(waiting, self._batch_size * DEEP_BATCH_FACTOR)
        ops, markers = self._planner.plan(
            max_ops,
            now,
            self._settings.live_after_s,
            self._settings.status_field,
            include_open=self._stopping,
        )
        self._markers.extend(markers)
        if ops:
            self._deliver(ops)
        self._settled_seq = self._planner.planned_seq
        self._release_markers()
        return bool(ops)

    def _sleep(self, now: float, next_send_at: float) -> float:
        """Wait for work; returns the (possibly new) time of the next send."""
        planner = self._planner
        deadlines = []
        if planner.ready_logs:
            deadlines.append(next_send_at)
        live_at = planner.next_live_at(self._settings.live_after_s)
        if live_at is not None:
            deadlines.append(live_at)
        if self._stopping and self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        settings = self._settings
        self._wake.clear()
        if self._intake:
            # Logs are arriving and nobody wakes us: look again soon (this bounds how far the
            # deques can grow past the queue bound between intakes).
            timeout = min(deadlines) - now if deadlines else settings.batch_interval_s
            poll = min(settings.first_batch_after_s, settings.batch_interval_s)
            self._wake.wait(max(0.0, min(timeout, poll)))
            return next_send_at
        # The last intake found nothing: let the next log wake us (the idle callables), then
        # check again, since a log may have come meanwhile.
        self._set_mode("idle")
        if self._started or self._ended:
            self._set_mode("busy")
            return next_send_at
        waiting = bool(deadlines or planner.open_logs())
        timeout = min(deadlines) - now if deadlines else settings.batch_interval_s
        # Bounded even when nothing is open: a thread that read the busy callables just before
        # we published the idle ones may still append without waking us.
        self._wake.wait(max(0.0, min(timeout, settings.batch_interval_s)))
        if waiting:
            return next_send_at
        return self._clock() + settings.first_batch_after_s

    def _release_markers(self) -> None:
        still: list[FlushMarker] = []
        for marker in self._markers:
            if marker.target_seq <= self._settled_seq:
                marker.done.set()
            else:
                still.append(marker)
        self._markers = still

    def _abandon(self, reason: str) -> None:
        count = self._planner.abandon(reason)
        self._abandoned = True
        if count:
            self._warn_once(
                f"abandon:{reason}",
                "flowtrace: %d log(s) not delivered before shutdown (the destination did not "
                "accept them in time); last error: %s",
                count,
                self._counters.last_error,
            )

    # --- delivery and retries ------------------------------------------------------------
    def _deliver(self, ops: list[PlannedOp]) -> None:
        """Deliver `ops` in order: retry a failed suffix with backoff inside the deadline."""
        settings = self._settings
        deadline = self._clock() + settings.retry_deadline_s
        attempt = 0
        pending = ops
        while pending:
            outcomes = self._export(pending)
            if len(pending) > 1 and all(o.status == 413 for o in outcomes):
                half = len(pending) // 2  # too large for the server: send it in halves
                self._deliver(pending[:half])
                self._deliver(pending[half:])
                return
            pending, retry_after_s = self._settle(pending, outcomes)
            if not pending:
                return
            delay = backoff_delay_s(attempt, settings.retry_backoff_s, self._rng)
            attempt += 1
            now = self._clock()
            not_before = now + retry_after_s if retry_after_s is not None else now
            resume_at = max(now + delay, not_before)
            if resume_at > deadline:
                self._give_up(pending, "retry_deadline")
                return
            if (
                self._stopping
                and self._stop_deadline is not None
                and (not_before >= self._stop_deadline)
            ):
                self._give_up(pending, "shutdown")
                return
            self._backoff(resume_at, not_before)
            if (
                self._stopping
                and self._stop_deadline is not None
                and (self._clock() >= self._stop_deadline)
            ):
                self._give_up(pending, "shutdown")
                return

    def _export(self, ops: Sequence[PlannedOp]) -> list[Outcome]:
        operations = [op.operation for op in ops]
        for op in ops:
            if op.attempts:
                self._counters.retried += 1
            op.attempts += 1
        try:
            exporter = self._current_exporter()
            outcomes = exporter.export(operations)
            if len(outcomes) != len(operations):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(operations)} operations")
        except Exception as exc:
            _guard.internal_error("exporter", exc)
            outcomes = not_delivered(f"exporter failed: {exc!r}", len(operations))
        # Take in what arrived during the call, judged against the queue as it was meanwhile
        # (these operations still held): the deques never grow past one export's production.
        self._collect()
        return outcomes

    def _settle(
        self, ops: list[PlannedOp], outcomes: list[Outcome]
    ) -> tuple[list[PlannedOp], float | None]:
        """Settle what is final; return what to retry (everything not accepted from the first
        retryable failure on, in order) and the longest `Retry-After` asked for."""
        planner = self._planner
        retry: list[PlannedOp] = []
        retry_after_s: float | None = None
        for op, outcome in zip(ops, outcomes, strict=True):
            if outcome.ok or (outcome.status == 409 and op.attempts > 1):
                # 409 on a retry: our earlier attempt got through and only its answer was lost.
                planner.delivered(op)
            elif retry or is_retryable(outcome.status):
                retry.append(op)
                if outcome.retry_after_s is not None:
                    retry_after_s = max(retry_after_s or 0.0, outcome.retry_after_s)
                if is_retryable(outcome.status):
                    self._counters.last_error = _transient_error(outcome)
            else:
                self._reject(op, outcome)
        return retry, retry_after_s

    def _reject(self, op: PlannedOp, outcome: Outcome) -> None:
        key, message = describe_rejection(outcome.status, outcome.body)
        self._counters.last_error = message
        self._planner.give_up(op, "rejected")
        self._warn_once(
            f"reject:{key}",
            "flowtrace: %s refused log %s (%s); it was dropped. Further refusals like "
            "this one are only counted in flowtrace.stats().",
            self._destination(),
            op.operation.log_id,
            message,
        )

    def _destination(self) -> str:
        """Where logs go, as a warning names it."""
        if self._exporter_override is not None:
            return "the exporter"
        if self._settings.base_url:
            return f"the server at {self._settings.base_url}"
        return f"the embedded store at {self._settings.db_path}"

    def _give_up(self, ops: Sequence[PlannedOp], reason: str) -> None:
        for op in ops:
            self._planner.give_up(op, reason)
        self._warn_once(
            f"give-up:{reason}",
            "flowtrace: %d log(s) dropped after retrying (%s); last error: %s. Counts are in "
            "flowtrace.stats().",
            len(ops),
            reason,
            self._counters.last_error,
        )

    def _backoff(self, resume_at: float, not_before: float) -> None:
        """Sleep until `resume_at`. A flush or shutdown cuts the sleep short (once per call),
        but never before `not_before` (the server's Retry-After)."""
        flushes = self._flush_requests
        while True:
            now = self._clock()
            if now >= resume_at:
                return
            if self._flush_requests != flushes:
                flushes = self._flush_requests
                resume_at = max(not_before, now)
                continue
            if self._stopping and self._stop_deadline is not None:
                resume_at = min(resume_at, max(not_before, self._stop_deadline))
            self._wake.clear()
            # Keep taking logs in while backing off (the queue bound is enforced at intake).
            self._wake.wait(min(resume_at - now, self._settings.first_batch_after_s))
            self._collect()

    def _current_exporter(self) -> Exporter:
        if self._retarget or self._exporter is None:
            self._retarget = False
            self._close_exporter()
            override = self._exporter_override
            if override is not None:
                self._exporter = override
            else:
                # Held while modules are imported: a fork waits for it (before_fork), so a
                # child never inherits a half-imported module.
                with self._build_lock:
                    self._exporter = _default_exporter(self._settings)
        return self._exporter

    def _close_exporter(self) -> None:
        exporter, self._exporter = self._exporter, None
        if exporter is not None and exporter is not self._exporter_override:
            with _guard.guarded("exporter-close"):
                exporter.close()

    # --- warnings: once per kind, on the flowtrace logger (never captured into logs) ------
    def _warn_early_drops(self) -> None:
        if self._early_drops.get("queue_full") and "queue_full" not in self._warned:
            self._warn_once(
                "queue_full",
                "flowtrace: the delivery queue is full (%d logs waiting); new logs are dropped "
                "until it drains. Counts are in flowtrace.stats().",
                self._queue_limit,
            )

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key in self._warned:
            return
        if len(self._warned) < 1000:
            self._warned.add(key)
        logger.warning(message, *args)


def _transient_error(outcome: Outcome) -> str:
    if outcome.error:
        return outcome.error
    _, message = describe_rejection(outcome.status, outcome.body)
    return message


def _default_exporter(settings: _config.Settings) -> Exporter:
    """The settings' destination: the HTTP contract if a base URL is set, else the embedded
    SQLite store."""
    if settings.base_url:
        from flowtrace.exporters.http import HttpExporter

        return HttpExporter.from_settings(settings)
    from flowtrace.exporters.store import StoreExporter

    return StoreExporter(settings.db_path)


class _HideWorkerRecords(logging.Filter):
    """Drops records that libraries (httpx, httpcore) log on the worker thread: a request per
    batch is our business, not the user's log output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != WORKER_NAME


# --- the process's pipeline --------------------------------------------------------------

_pipeline = Pipeline()


def _at_exit() -> None:
    _pipeline.at_exit()


def _before_fork() -> None:
    _pipeline.before_fork()


def _after_fork_in_parent() -> None:
    _pipeline.after_fork_in_parent()


def _after_fork_in_child() -> None:
    _pipeline.after_fork_in_child()


def _settings_changed(settings: _config.Settings) -> None:
    _pipeline.settings_changed(settings)


def _install() -> None:
    add_sink(_pipeline)
    _config.on_change(_settings_changed)
    # Registered at import, not at the first log: atexit runs handlers last-in first-out, so
    # ours runs after exit handlers the program registers later (which may still log).
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
    hide = _HideWorkerRecords()
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).addFilter(hide)


_install()


def flush(timeout: float | None = None) -> bool:
    """Wait until every log recorded so far is delivered; False if `timeout` ran out."""
    return _pipeline.flush(timeout)


def shutdown(timeout: float | None = None) -> None:
    """Flush (within `timeout` seconds), then stop the worker; later logs are not delivered."""
    _pipeline.shutdown(timeout)


def stats() -> dict[str, Any]:
    """Delivery counters: queued, sent, retried, dropped (by reason), last_error."""
    return _pipeline.stats()


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
