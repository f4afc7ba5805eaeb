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

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flowtrace import _guard
from flowtrace._outbox import Batch
from flowtrace._planner import PlannedOp
from flowtrace._retry import backoff_delay_s, describe_rejection, is_retryable
from flowtrace.exporters import Outcome

__all__ = ["Backoff", "Classified", "Sender", "SenderHost", "Waiter", "classify", "safe_export"]

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
            if is_retryable(outcome.status):
                result.error = transient_error(outcome)
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

    def until(self, resume_at: float, not_before: float, poll_s: float) -> None:
        seen = self.flush_requests
        while True:
            now = self._clock()
            if self.flush_requests != seen:  # a flush: try again now (Retry-After permitting)
                seen = self.flush_requests
                resume_at = min(resume_at, max(not_before, now))
            stop_at = self.stop_at
            if stop_at is not None:
                resume_at = min(resume_at, max(not_before, stop_at))
            if now >= resume_at:
                return
            self._sleep(min(resume_at - now, poll_s))


def safe_export(
    export: Callable[[Sequence[PlannedOp], float | None], list[Outcome]],
    ops: Sequence[PlannedOp],
    timeout_s: float | None,
) -> list[Outcome]:
    """The exporter's outcomes; an exporter that raises or miscounts is a bug (reported once),
    answered as no delivery so the operations are retried."""
    from flowtrace.exporters import not_delivered

    try:
        outcomes = export(ops, timeout_s)
        if len(outcomes) != len(ops):
            raise RuntimeError(f"{len(outcomes)} outcomes for {len(ops)} operations")
    except Exception as exc:
        _guard.internal_error("exporter", exc)
        return not_delivered(f"exporter failed: {exc!r}", len(ops))
    return outcomes


class SenderHost(Protocol):
    """What the sender needs of the pipeline (all but `export` called under `lock`)."""

    lock: threading.Lock

    def next_batch(self) -> Batch | None: ...

    def prepare(self, batch: Batch) -> list[PlannedOp]: ...

    def export(self, ops: Sequence[PlannedOp], timeout_s: float | None) -> list[Outcome]: ...

    def settle(self, batch: Batch, result: Classified) -> None: ...

    def retry_later(self, batch: Batch, result: Classified, backoff: Backoff) -> bool: ...

    def sent(self) -> None: ...


class Sender:
    """The sender thread's loop: one batch at a time, in order, retried as the module says."""

    def __init__(
        self,
        host: SenderHost,
        *,
        clock: Clock,
        wait: Callable[[float], None],
        rng: random.Random,
        backoff_s: float,
        poll_s: float,
    ) -> None:
        self._host = host
        self._clock = clock
        self._wait = wait  # sleeps until woken (work arrived, a flush, stop) or the timeout
        self.backoff = Backoff(backoff_s, rng, clock)
        self.waiter = Waiter(clock, wait)  # its `stop_at` is the stop deadline
        self._poll_s = poll_s
        self.stopped = False  # stop once the outbox is empty

    def run(self) -> None:
        host = self._host
        while True:
            stop_at = self.waiter.stop_at
            if stop_at is not None and self._clock() >= stop_at:
                return
            with host.lock:
                batch = host.next_batch()
                ops = host.prepare(batch) if batch is not None else []
            if batch is None:
                if self.stopped:
                    return
                self._wait(self._poll_s)
            elif ops:
                self._send(batch, ops)
            else:
                with host.lock:
                    host.settle(batch, Classified())

    def _send(self, batch: Batch, ops: list[PlannedOp]) -> None:
        host = self._host
        stop_at = self.waiter.stop_at
        # Bounded by the stop deadline when there is one, so the sender reaches a safe point
        # in time (at exit, no thread of flowtrace may be inside the network or SQLite).
        timeout = None if stop_at is None else max(0.05, stop_at - self._clock())
        outcomes = host.export(ops, timeout)
        result = classify(ops, outcomes)
        with host.lock:
            host.settle(batch, result)
            if not result.retry:
                self.backoff.succeeded()
                host.sent()
                return
            resume_at = self.backoff.failed(result.retry_after_s)
            keep = host.retry_later(batch, result, self.backoff)
        if keep:
            self.waiter.until(resume_at, self.backoff.not_before, self._poll_s)
