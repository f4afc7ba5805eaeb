"""Delivery: the sender thread's loop. It takes batches from the outbox, hands them to the
exporter, settles what became of each operation, and retries what a retry may fix, with
backoff and `Retry-After`, never losing the order.

- Delivered (2xx, or a 409 answering a retry: the earlier attempt got through, only its answer
  was lost): settled.
- Refused (any other non-2xx answer): that log is dropped (`rejected`), and so, before they are
  sent, are the later operations of that log and the creates of its children
  (`parent_dropped`).
- Worth a retry (no answer, 408, 429, 502, 503, 504): everything from the first such failure
  on is retried, in order. With a spool, it is kept on disk from that moment (a crash loses
  nothing) and retried from there for as long as it takes (backoff capped at 30 s); flushes
  waiting for it give up after `retry_deadline_s`. Without one it is retried from memory until
  `retry_deadline_s`, then dropped (`retry_deadline`).

Time, sleeping and randomness are injected (`clock`, `wait`, `rng`), so the retry schedule is
tested exactly, without sleeping. The sender never plans and never touches the call path; it
does the network and store I/O so that the worker never waits for either.
"""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flowtrace import _guard
from flowtrace._accounting import Counters, Warnings
from flowtrace._contract import BATCH_UPDATE
from flowtrace._outbox import Batch, Outbox
from flowtrace._planner import FlushMarker, PlannedOp, Planner
from flowtrace._retry import backoff_delay_s, describe_rejection, is_retryable
from flowtrace.exporters import Outcome, not_delivered

__all__ = ["Backoff", "Classified", "Ledger", "Sender", "Waiter", "classify", "safe_export"]

Clock = Callable[[], float]


@dataclass
class Classified:
    """What an export's outcomes mean, operation by operation."""

    delivered: list[PlannedOp] = field(default_factory=list)
    rejected: list[tuple[PlannedOp, Outcome]] = field(default_factory=list)
    retry: list[PlannedOp] = field(default_factory=list)
    retry_after_s: float | None = None  # the longest Retry-After asked for
    error: str | None = None  # the last failure worth a retry, described


def classify(ops: Sequence[PlannedOp], outcomes: Sequence[Outcome]) -> Classified:
    """Delivered, refused, or to retry: everything not accepted from the first failure worth
    a retry on (a later operation may depend on it, as a child on its parent)."""
    result = Classified()
    for op, outcome in zip(ops, outcomes, strict=True):
        if outcome.ok or (outcome.status == 409 and op.attempts > 1):
            result.delivered.append(op)
        elif result.retry or is_retryable(outcome.status):
            result.retry.append(op)
            if outcome.retry_after_s is not None:
                result.retry_after_s = max(result.retry_after_s or 0.0, outcome.retry_after_s)
            if is_retryable(outcome.status) and result.error is None:
                result.error = transient_error(outcome)  # the first: the cause of the rest
        else:
            result.rejected.append((op, outcome))
    return result


def transient_error(outcome: Outcome) -> str:
    if outcome.error:
        return outcome.error
    _, message = describe_rejection(outcome.status, outcome.body)
    return message


class Backoff:
    """The retry schedule of the operation at the head: attempts since the last success, when
    the failures began, and the earliest next attempt (never before the server's Retry-After)."""

    def __init__(self, base_s: float, rng: random.Random, clock: Clock) -> None:
        self.base_s = base_s
        self._rng = rng
        self._clock = clock
        self.attempt = 0
        self.failing_since: float | None = None
        self.not_before = 0.0  # the server's Retry-After, as a time
        self.resume_at = 0.0

    def failed(self, retry_after_s: float | None) -> float:
        """A send failed; returns when to try again."""
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        delay = backoff_delay_s(self.attempt, self.base_s, self._rng)
        self.attempt += 1
        self.not_before = now + retry_after_s if retry_after_s is not None else now
        self.resume_at = max(now + delay, self.not_before)
        return self.resume_at

    def succeeded(self) -> None:
        self.attempt = 0
        self.failing_since = None
        self.not_before = 0.0
        self.resume_at = 0.0

    def failing_for(self) -> float:
        """Seconds since the failures began (0 when the last send succeeded)."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since


class Waiter:
    """Waits until a time, on the injected clock, cut short by a flush (once per flush, never
    before `not_before`) or by the stop deadline. `sleep(seconds)` may return early: the time
    is checked again."""

    def __init__(self, clock: Clock, sleep: Callable[[float], None]) -> None:
        self._clock = clock
        self._sleep = sleep
        self._flushes = 0
        self.flush_requests = 0  # bumped by flush() from any thread
        self.stop_at: float | None = None  # the stop deadline (shutdown, exit)
        self._lock = threading.Lock()

    def request_flush(self) -> None:
        with self._lock:
            self.flush_requests += 1

    def until(
        self, resume_at: float, not_before: float, poll_s: float, seen: int | None = None
    ) -> bool:
        """Wait; True if a flush cut the wait short. `seen`: the flush requests counted when
        the failed attempt began (a flush that came during it counts too)."""
        if seen is None:
            seen = self.flush_requests
        flushed = False
        while True:
            now = self._clock()
            if self.flush_requests != seen:  # a flush: try again now (Retry-After permitting)
                seen = self.flush_requests
                flushed = True
                resume_at = min(resume_at, max(not_before, now))
            stop_at = self.stop_at
            if stop_at is not None:
                resume_at = min(resume_at, max(not_before, stop_at))
            if now >= resume_at:
                return flushed
            self._sleep(min(resume_at - now, poll_s))


def safe_export(
    export: Callable[[Sequence[PlannedOp], float | None], list[Outcome]],
    ops: Sequence[PlannedOp],
    timeout_s: float | None,
) -> list[Outcome]:
    """The exporter's outcomes; an exporter that raises or miscounts is a bug (reported once),
    answered as no delivery so the operations are retried."""
    try:
        outcomes = export(ops, timeout_s)
        if len(outcomes) != len(ops):
            raise RuntimeError(f"{len(outcomes)} outcomes for {len(ops)} operations")
    except Exception as exc:
        _guard.internal_error("exporter", exc)
        return not_delivered(f"exporter failed: {exc!r}", len(ops))
    return outcomes


class Ledger:
    """What became of each operation, settled against the planner (logs still in memory), the
    counters and the outbox (entries on disk); what must not be sent after a refusal; and the
    flushes waiting for all of it. Every method is called under the pipeline's lock."""

    def __init__(
        self,
        planner: Planner,
        counters: Counters,
        warnings: Warnings,
        *,
        destination: Callable[[], str],
        retry_deadline_s: float,
    ) -> None:
        self._planner = planner
        self._counters = counters
        self._warnings = warnings
        self._destination = destination  # where logs go, as a warning names it
        self.retry_deadline_s = retry_deadline_s
        self.outbox: Outbox | None = None  # set once the destination's spool is known
        self._failed_ids: set[str] = set()  # refused logs: their later operations are not sent
        # This process's operations not settled yet (a heap of their sequence numbers, with
        # those settled out of order set aside until they reach its top).
        self._unsettled: list[int] = []
        self._settled_early: set[int] = set()
        self._last_planned = 0
        self.backlog_known = False  # the spool's backlog was claimed (at the warm-up)
        self.markers: list[FlushMarker] = []  # planned, waiting for their operations
        self.stopping = False  # the pipeline is past its stop deadline

    def _outbox(self) -> Outbox:
        assert self.outbox is not None
        return self.outbox

    def planned(self, ops: Sequence[PlannedOp]) -> None:
        """The worker planned `ops` (flushes wait for them)."""
        for op in ops:
            heapq.heappush(self._unsettled, op.seq)
        if ops:
            self._last_planned = max(self._last_planned, ops[-1].seq)

    def settled_seq(self) -> int:
        """Every operation of this process up to this one is settled."""
        heap = self._unsettled
        early = self._settled_early
        while heap and heap[0] in early:
            early.discard(heapq.heappop(heap))
        return heap[0] - 1 if heap else self._last_planned

    # --- before a send -------------------------------------------------------------------------
    def prepare(self, batch: Batch) -> list[PlannedOp]:
        """The operations of `batch` to send (counted as retries when sent again): those of a
        refused log, and the creates of its children, are dropped here instead (the
        destination would refuse them)."""
        counters = self._counters
        for op in batch.ops:
            if op.attempts:
                counters.retried += 1
            op.attempts += 1
        self._outbox().attempted(batch.ops)
        failed = self._failed_ids
        if not failed:
            return batch.ops
        keep: list[PlannedOp] = []
        for op in batch.ops:
            operation = op.operation
            parent = (
                operation.body.get("trace_parent_id") if operation.kind != BATCH_UPDATE else None
            )
            if operation.log_id in failed:
                self._drop(op, "rejected")
            elif parent is not None and parent in failed:
                failed.add(operation.log_id)
                self._drop(op, "parent_dropped")
            else:
                keep.append(op)
        batch.ops = keep
        return keep

    # --- after a send --------------------------------------------------------------------------
    def settle(self, batch: Batch, result: Classified) -> None:
        counters = self._counters
        outbox = self._outbox()
        for op in result.delivered:
            if op.spool_id is None and op.log is not None:
                self._planner.delivered(op)
            elif op.final:
                counters.spooled -= 1
                counters.sent += 1
            self._done(op)
        for op, outcome in result.rejected:
            self._reject(op, outcome)
            self._done(op)
        if result.error is not None and not self.stopping:  # not our own interruption
            counters.last_error = result.error
        batch.ops = result.retry
        if not result.retry:
            outbox.finish()

    def retry_later(self, batch: Batch, result: Classified, backoff: Backoff) -> bool:
        """A send failed in a way a retry may fix. With a spool the operations are kept on
        disk (retried for as long as it takes); without one they are retried from memory
        until `retry_deadline_s`, then dropped. True: wait, then retry."""
        outbox = self._outbox()
        if outbox.keep_on_disk(result.retry):
            outbox.finish()
            if not self.stopping:  # at the deadline the failure is our own interruption
                self._warn_failing()
            return True
        if backoff.resume_at - (backoff.failing_since or 0.0) > self.retry_deadline_s:
            self.give_up(result.retry, "retry_deadline")
            outbox.finish()
            backoff.succeeded()
            return False
        outbox.retry_first(Batch(result.retry))
        self._warn_failing()
        return True

    def give_up(self, ops: Sequence[PlannedOp], reason: str) -> None:
        """`ops` will not be delivered: their logs are dropped (once each), said once."""
        logs = 0
        for op in ops:
            if op.log is not None and op.spool_id is None:
                if not op.log.delivery.failed:
                    logs += 1
                self._planner.give_up(op, reason)
            elif op.final:
                logs += 1
                self._counters.spooled -= 1
                self._counters.drop(reason)
            self._done(op)
        if logs:
            self._warnings.dropped(reason, logs, self._counters.last_error)

    def _drop(self, op: PlannedOp, reason: str) -> None:
        if op.log is not None and op.spool_id is None:
            self._planner.give_up(op, reason)
        elif op.final:
            self._counters.spooled -= 1
            self._counters.drop(reason)
            if op.log is not None:
                op.log.delivery.failed = True
        self._done(op)

    def _done(self, op: PlannedOp) -> None:
        self._outbox().settled(op)
        self.forget(op)

    def forget(self, op: PlannedOp) -> None:
        """`op` needs nothing more (settled, or its log failed before it was sent)."""
        if op.own:
            self._settled_early.add(op.seq)

    def _reject(self, op: PlannedOp, outcome: Outcome) -> None:
        key, message = describe_rejection(outcome.status, outcome.body)
        counters = self._counters
        counters.last_error = message
        self._failed_ids.add(op.operation.log_id)
        if op.spool_id is None and op.log is not None:
            self._planner.give_up(op, "rejected")
        else:
            if op.log is not None:
                op.log.delivery.failed = True
            if op.final:
                counters.spooled -= 1
                counters.drop("rejected")
        self._warnings.once(
            f"reject:{key}",
            "flowtrace: %s refused log %s (%s); it was dropped. Further refusals like "
            "this one are only counted in flowtrace.stats().",
            self._destination(),
            op.operation.log_id,
            message,
        )

    def _warn_failing(self) -> None:
        spool = self._outbox().spool
        where = (
            f"they are kept in the spool at {spool.path} and delivered when it answers"
            if spool is not None
            else "they are retried from memory for up to retry_deadline_s"
        )
        self._warnings.once(
            "failing",
            "flowtrace: %s did not take logs (%s); %s.",
            self._destination(),
            self._counters.last_error,
            where,
        )

    # --- flushes -------------------------------------------------------------------------------
    def add_markers(self, markers: Sequence[FlushMarker], now: float) -> None:
        """Flushes reached by the planner; each waits for the backlog claimed so far too (or,
        before the warm-up claimed it, for whatever it claims)."""
        target = self._backlog_target()
        for marker in markers:
            marker.backlog_target = target
            marker.since = now
            self.markers.append(marker)

    def _backlog_target(self) -> int:
        outbox = self._outbox()
        if not self.backlog_known:
            return -1
        return outbox.backlog_settled + outbox.backlog_on_disk

    def release_markers(
        self,
        now: float,
        failing_since: float | None,
        stopping: bool = False,
        attempts: Attempts | None = None,
    ) -> None:
        """Answer the flushes whose operations are all settled; give up on those that have
        waited while the destination failed for `retry_deadline_s` (their logs stay spooled),
        and on every one when the pipeline stops. With the sender's `attempts`, a flush gives
        up only once an attempt begun after it asked has failed, and none is in flight."""
        if not self.markers:
            return
        outbox = self.outbox
        settled = self.settled_seq()
        still: list[FlushMarker] = []
        for marker in self.markers:
            if marker.backlog_target < 0 and self.backlog_known:
                marker.backlog_target = self._backlog_target()
            backlog_done = marker.backlog_target >= 0 and (
                outbox is None
                or outbox.backlog_on_disk == 0
                or outbox.backlog_settled >= marker.backlog_target
            )
            failed_for = 0.0 if failing_since is None else now - max(failing_since, marker.since)
            if marker.target_seq <= settled and backlog_done:
                marker.done.set()
            elif stopping or (
                failed_for >= self.retry_deadline_s
                and (attempts is None or attempts.failed_since(marker.since))
            ):
                marker.ok = False
                marker.done.set()
            else:
                still.append(marker)
        self.markers = still


class Attempts:
    """When the sender's attempts began: the one in flight, and the latest that failed. A
    flush gives up on a failing destination only once it was tried after the flush asked:
    under load, the time a sender takes to wake and read its batch is not a failure."""

    __slots__ = ("began", "failed_began")

    def __init__(self) -> None:
        self.began: float | None = None
        self.failed_began: float | None = None

    def failed_since(self, since: float) -> bool:
        """An attempt begun at `since` or later failed, and none begun since is in flight."""
        if self.began is not None and self.began >= since:
            return False
        return self.failed_began is not None and self.failed_began >= since


class Sender:
    """The sender thread's loop: one batch at a time, in order, retried as the module says."""

    def __init__(
        self,
        lock: threading.Lock,
        ledger: Ledger,
        outbox: Callable[[], Outbox],
        export: Callable[[Sequence[PlannedOp], float | None], list[Outcome]],
        *,
        clock: Clock,
        wait: Callable[[float], None],
        rng: random.Random,
        backoff_s: float,
        poll_s: float,
        progress: Callable[[int], None] = lambda in_flight: None,
    ) -> None:
        """`outbox()` is the destination's outbox; `export(ops, timeout_s)` sends (called
        without the lock); `wait(seconds)` sleeps until woken (work, a flush, stop) or the
        timeout; `progress(n)` tells the worker an export of n logs begins, `progress(0)` that
        one was settled."""
        self._lock = lock
        self._ledger = ledger
        self._outbox = outbox
        self._export = export
        self._clock = clock
        self._wait = wait
        self._progress = progress
        self.backoff = Backoff(backoff_s, rng, clock)
        self.waiter = Waiter(clock, wait)  # its `stop_at` is the stop deadline
        self._poll_s = poll_s
        self.stopped = False  # stop once the outbox is empty
        self.attempts = Attempts()

    def run(self) -> None:
        while self.step():
            pass

    def step(self) -> bool:
        """Send the next batch (or wait for one); False once stopped."""
        stop_at = self.waiter.stop_at
        if stop_at is not None and self._clock() >= stop_at:
            return False
        with self._lock:
            batch = self._outbox().take()
            ops = self._ledger.prepare(batch) if batch is not None else []
        if batch is None:
            if self.stopped:
                return False
            self._wait(self._poll_s)
        elif ops:
            self._send(batch, ops)
        else:
            with self._lock:
                self._ledger.settle(batch, Classified())
                self._ledger.release_markers(
                    self._clock(), self.backoff.failing_since, attempts=self.attempts
                )
        return True

    def _send(self, batch: Batch, ops: list[PlannedOp]) -> None:
        flushes_before = self.waiter.flush_requests
        self._progress(len(ops))  # an export begins: a recording thread waiting for room waits on
        stop_at = self.waiter.stop_at
        # Bounded by the stop deadline when there is one, so the sender reaches a safe point
        # in time (at exit, no thread of flowtrace may be inside the network or SQLite).
        timeout = None if stop_at is None else max(0.05, stop_at - self._clock())
        attempts = self.attempts
        began = attempts.began = self._clock()
        try:
            outcomes = safe_export(self._export, ops, timeout)
        finally:
            attempts.began = None
        result = classify(ops, outcomes)
        attempts.failed_began = began if result.retry else None
        with self._lock:
            self._ledger.settle(batch, result)
            if result.retry:
                resume_at = self.backoff.failed(result.retry_after_s)
                wait = self._ledger.retry_later(batch, result, self.backoff)
            else:
                self.backoff.succeeded()
                wait = False
            self._ledger.release_markers(
                self._clock(), self.backoff.failing_since, attempts=self.attempts
            )
        self._progress(0)  # it ended
        if wait and self.waiter.until(
            resume_at, self.backoff.not_before, self._poll_s, flushes_before
        ):
            # A flush asks now: its wait (retry_deadline_s) gets the retries of a fresh
            # failure, not the long backoff an outage has grown to.
            self.backoff.attempt = 0
