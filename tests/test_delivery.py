"""Delivery on its own (`_delivery`): the sender's loop, the retry schedule, the ledger, with an
injected clock, sleep and randomness, so every delay is exact and nothing sleeps for real.

Each test plans real logs (as the worker would), puts them in a real outbox (with a real spool
file where it matters) and runs the sender step by step on the test's thread, against a
scripted MemoryExporter.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flowtrace._accounting import Counters, Warnings
from flowtrace._delivery import Attempts, Backoff, Ledger, Sender, Waiter, classify
from flowtrace._log import Log
from flowtrace._options import FlowOptions, LogOptions
from flowtrace._outbox import Outbox
from flowtrace._planner import FlushMarker, PlannedOp, Planner
from flowtrace._spool import Spool
from flowtrace.exporters import NOT_DELIVERED, Operation, Outcome
from flowtrace.exporters.halving import HalvingExporter
from flowtrace.exporters.memory import MemoryExporter


class FakeClock:
    """Time that moves only when the sender sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.on_sleep: list[Any] = []  # called (once each) at the next sleeps

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.on_sleep:
            self.on_sleep.pop(0)()
        self.now += seconds


class NoJitter(random.Random):
    """The backoff's jitter factor is always 1: delays are exactly base * 2^n."""

    def uniform(self, a: float, b: float) -> float:
        return 1.0


class Timed(MemoryExporter):
    """A MemoryExporter that notes when (on the fake clock) each export came."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.at: list[float] = []

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        if operations:
            self.at.append(self.clock.now)
        return super().export(operations, timeout_s)


class Rig:
    """A planner, a ledger, an outbox and a sender, as the pipeline wires them."""

    def __init__(
        self,
        *,
        spool: Spool | None = None,
        retry_deadline_s: float = 60.0,
        backoff_s: float = 1.0,
        exporter: Any = None,
    ) -> None:
        self.clock = FakeClock()
        self.exporter = exporter if exporter is not None else Timed(self.clock)
        self.token = object()
        self.counters = Counters()
        self.planner = Planner(self.token, self.counters)
        self.ledger = Ledger(
            self.planner,
            self.counters,
            Warnings(),
            destination=lambda: "the test's exporter",
            retry_deadline_s=retry_deadline_s,
        )
        self.unavailable: list[str] = []
        self.outbox = Outbox(
            spool,
            always=False,
            spooled=self.planner.spooled,
            forget=self.ledger.forget,
            refused=self.ledger.give_up,
            unavailable=self.unavailable.append,
            chunk=100,
        )
        self.ledger.outbox = self.outbox
        self.ledger.backlog_known = True
        self.sender = Sender(
            threading.Lock(),
            self.ledger,
            lambda: self.outbox,
            lambda ops, timeout: self.exporter.export([op.operation for op in ops], timeout),
            clock=self.clock,
            wait=self.clock.sleep,
            rng=NoJitter(),
            backoff_s=backoff_s,
            poll_s=0.5,
        )

    def trace(self, name: str, children: int = 0) -> list[Log]:
        """A root with `children` children, all ended, handed to the planner."""
        root = Log(LogOptions(FlowOptions(), name), None)
        logs = [root] + [
            Log(LogOptions(FlowOptions(), f"{name}.{i}"), root) for i in range(children)
        ]
        for log in logs:
            log.delivery = self.token
            self.planner.started(log)
        for log in reversed(logs):
            log.duration_ns = 1000
            self.planner.ended(log)
        return logs

    def plan(self) -> list[PlannedOp]:
        ops, markers = self.planner.plan(1000, self.clock.now, 60.0, "trace_status")
        self.ledger.planned(ops)
        self.ledger.add_markers(markers, self.clock.now)
        self.outbox.put(ops)
        return ops

    def deliver(self, max_steps: int = 1000) -> None:
        """Run the sender until the outbox is empty."""
        for _ in range(max_steps):
            if self.outbox.empty() and self.outbox.in_flight is None:
                return
            self.sender.step()
        pytest.fail("the sender did not empty the outbox")


def refuse(status: int, retry_after_s: float | None = None) -> Any:
    return lambda ops: [Outcome(status, {"detail": "no"}, retry_after_s)] * len(ops)


# --- the schedule ----------------------------------------------------------------------------


def test_retries_back_off_doubling_from_retry_backoff_s() -> None:
    rig = Rig(backoff_s=1.0)
    for _ in range(4):
        rig.exporter.script(refuse(503))
    rig.trace("a")
    rig.plan()
    rig.deliver()
    assert rig.exporter.at == [0.0, 1.0, 3.0, 7.0, 15.0]  # waits of 1, 2, 4, 8
    assert (rig.counters.sent, rig.counters.retried, rig.counters.held) == (1, 4, 0)
    assert rig.counters.dropped == {}


def test_the_backoff_is_capped_at_30_s_and_jittered_by_the_injected_randomness() -> None:
    backoff = Backoff(1.0, NoJitter(), FakeClock())
    assert [round(backoff.failed(None), 3) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    jittered = Backoff(1.0, random.Random(3), FakeClock())
    delays = [jittered.failed(None) for _ in range(3)]
    assert [0.8 * 2**n <= delay <= 1.2 * 2**n for n, delay in enumerate(delays)] == [True] * 3


def test_retry_after_is_the_earliest_next_attempt() -> None:
    rig = Rig(backoff_s=1.0)
    rig.exporter.script(refuse(429, retry_after_s=5.0))
    rig.exporter.script(refuse(503, retry_after_s=0.5))  # shorter than the backoff: backoff wins
    rig.trace("a")
    rig.plan()
    rig.deliver()
    assert rig.exporter.at == [0.0, 5.0, 7.0]


def test_a_flush_cuts_the_backoff_short_once_but_never_before_retry_after() -> None:
    rig = Rig(backoff_s=4.0)
    rig.exporter.script(refuse(503))
    rig.exporter.script(refuse(429, retry_after_s=3.0))
    rig.exporter.script(refuse(503))
    waiter: Waiter = rig.sender.waiter
    rig.clock.on_sleep = [waiter.request_flush, waiter.request_flush]
    rig.trace("a")
    rig.plan()
    rig.deliver()
    # 1st wait (4 s) cut by a flush after its first slice (0.5 s); a flush restarts the
    # backoff, so the 2nd wait is 4 s again, cut by a flush but not before Retry-After (3 s);
    # the 3rd wait (4 s again, after that flush) is not cut.
    assert rig.exporter.at == [0.0, 0.5, 3.5, 7.5]


class FlushDuringExport(Timed):
    """Asks for a flush while its first (failing) export is in flight."""

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        if not self.at:
            self.waiter.request_flush()
        return super().export(operations, timeout_s)


def test_a_flush_during_a_failing_export_cuts_the_backoff_that_follows() -> None:
    # A flush came while the attempt was in flight (an outage ends, the program flushes):
    # the retry is now, not after the backoff the outage grew (it was missed before).
    rig = Rig(backoff_s=4.0)
    exporter = FlushDuringExport(rig.clock)
    exporter.waiter = rig.sender.waiter
    rig.exporter = exporter
    exporter.script(refuse(503))
    rig.trace("a")
    rig.plan()
    rig.deliver()
    assert exporter.at == [0.0, 0.0]
    assert (rig.counters.sent, rig.counters.retried) == (1, 1)


def test_without_a_spool_a_batch_is_dropped_after_retry_deadline_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(retry_deadline_s=5.0, backoff_s=1.0)
    for _ in range(10):
        rig.exporter.script(refuse(503))
    rig.trace("a", children=2)  # 3 logs, 4 operations
    rig.plan()
    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        rig.deliver()
    assert rig.exporter.at == [0.0, 1.0, 3.0]  # the next would start at 7 > 0 + 5
    assert rig.counters.dropped == {"retry_deadline": 3}  # logs, not operations
    assert (rig.counters.sent, rig.counters.held) == (0, 0)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1
    assert dropped[0].startswith("flowtrace: 3 log(s) dropped:")


def test_with_a_spool_a_failed_batch_waits_on_disk_and_is_delivered_from_there(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.spool", "memory:test", max_bytes=1 << 30, max_age_s=3600)
    rig = Rig(spool=spool, retry_deadline_s=5.0)
    for _ in range(6):  # longer than the retry deadline: nothing is dropped
        rig.exporter.script(refuse(503))
    a, a1 = rig.trace("a", children=1)
    rig.plan()
    rig.sender.step()  # the first attempt fails: the operations go to disk
    assert spool.counts()["own_entries"] == 3
    assert (rig.counters.held, rig.counters.spooled) == (0, 2)
    rig.deliver()
    assert rig.exporter.at == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 61.0]  # capped at 30 s
    assert spool.counts()["entries"] == 0
    assert (rig.counters.sent, rig.counters.spooled, rig.counters.dropped) == (2, 0, {})
    assert rig.exporter.status_of(a.log_id) == rig.exporter.status_of(a1.log_id) == "complete"


def test_a_409_answering_a_retry_counts_as_delivered() -> None:
    rig = Rig()
    rig.exporter.script(lambda ops: [Outcome(NOT_DELIVERED, None, None, "reset")] * len(ops))
    rig.exporter.script(lambda ops: [Outcome(409, {"detail": "exists"})] * len(ops))
    rig.trace("a")
    rig.plan()
    rig.deliver()
    assert (rig.counters.sent, rig.counters.dropped) == (1, {})


def test_a_refused_log_takes_its_later_operations_and_its_children_s_creates_with_it() -> None:
    rig = Rig()
    root, _ = rig.trace("a", children=1)
    # create a (incomplete) refused; create a.0 and update a are never sent
    rig.exporter.script(lambda ops: [Outcome(422, {"detail": "bad"})])
    ops = rig.plan()
    assert [op.operation.kind for op in ops] == ["log", "log", "update"]
    # one export per operation, so the refusal is settled before the rest is prepared
    rig.outbox.memory.clear()
    rig.outbox.memory_ops = 0
    for op in ops:
        rig.outbox.put([op])
    rig.deliver()
    assert [op.log_id for op in rig.exporter.operations()] == [root.log_id]
    assert rig.counters.dropped == {"rejected": 1, "parent_dropped": 1}
    assert rig.counters.held == 0


def test_a_flush_is_answered_once_what_it_waits_for_is_settled() -> None:
    rig = Rig()
    rig.trace("a")
    marker = FlushMarker()
    rig.planner.add_marker(marker)
    rig.plan()
    assert not marker.done.is_set()
    rig.deliver()
    assert marker.done.is_set() and marker.ok


def test_a_flush_gives_up_after_retry_deadline_s_of_failures(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", "memory:test", max_bytes=1 << 30, max_age_s=3600)
    rig = Rig(spool=spool, retry_deadline_s=5.0)
    for _ in range(4):
        rig.exporter.script(refuse(503))
    rig.trace("a")
    marker = FlushMarker()
    rig.planner.add_marker(marker)
    rig.plan()
    for _ in range(3):  # attempts at 0, 1, 3: failing for 3 s
        rig.sender.step()
    assert not marker.done.is_set()
    rig.sender.step()  # at 7: failing for 7 s > 5
    assert marker.done.is_set() and not marker.ok
    assert rig.counters.spooled == 1  # the log is not lost: it waits on disk
    rig.deliver()
    assert rig.counters.sent == 1


def test_a_flush_gives_up_only_once_the_destination_failed_after_it_asked() -> None:
    # The destination failed for longer than retry_deadline_s, then came back. Under load the
    # sender took longer than the deadline to wake and read its batch: the flush gave up on a
    # destination that was answering again. Now it gives up once an attempt begun after it
    # asked has failed, and none is in flight.
    rig = Rig(retry_deadline_s=1.0)
    rig.trace("a")
    marker = FlushMarker()
    rig.planner.add_marker(marker)
    rig.clock.now = 2.0
    rig.plan()  # the flush is reached at 2.0, waiting for trace a
    attempts = Attempts()
    attempts.failed_began = 1.0  # the outage, before the flush
    rig.ledger.release_markers(5.0, failing_since=0.0, attempts=attempts)
    assert not marker.done.is_set()  # not tried since it asked
    attempts.began = 3.0
    rig.ledger.release_markers(5.0, failing_since=0.0, attempts=attempts)
    assert not marker.done.is_set()  # tried, and the answer is not in yet
    attempts.began, attempts.failed_began = None, 3.0
    rig.ledger.release_markers(5.0, failing_since=0.0, attempts=attempts)
    assert marker.done.is_set() and not marker.ok  # tried since, and failed


def test_classify_retries_what_was_not_accepted_from_the_first_failure_worth_a_retry() -> None:
    ops = [PlannedOp(Operation("log", f"log_{i}", {}), None, True, i) for i in range(5)]
    outcomes = [Outcome(200), Outcome(422), Outcome(503, None, 2.0), Outcome(200), Outcome(400)]
    result = classify(ops, outcomes)
    assert [op.seq for op in result.delivered] == [0, 3]  # the batch route applied it
    assert [op.seq for op, _ in result.rejected] == [1]
    assert [op.seq for op in result.retry] == [2, 4]  # a 400 behind a 503 may depend on it
    assert result.retry_after_s == 2.0


# --- 413: the halving exporter -----------------------------------------------------------------


class AtMostTwo:
    """A destination that refuses requests of more than two operations with 413."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        self.sizes.append(len(operations))
        status = 413 if len(operations) > 2 else 200
        return [Outcome(status)] * len(operations)

    def close(self) -> None:
        pass


def test_a_batch_too_large_is_sent_in_halves() -> None:
    inner = AtMostTwo()
    operations = [Operation("log", f"log_{i}", {}) for i in range(7)]
    outcomes = HalvingExporter(inner).export(operations)
    assert [o.status for o in outcomes] == [200] * 7
    assert inner.sizes == [7, 3, 1, 2, 4, 2, 2]


def test_a_failure_worth_a_retry_in_the_first_half_holds_back_the_second() -> None:
    class FirstHalfDown(AtMostTwo):
        def export(
            self, operations: Sequence[Operation], timeout_s: float | None = None
        ) -> list[Outcome]:
            if len(operations) <= 2 and operations[0].log_id == "log_0":
                self.sizes.append(len(operations))
                return [Outcome(503)] * len(operations)
            return super().export(operations, timeout_s)

    inner = FirstHalfDown()
    operations = [Operation("log", f"log_{i}", {}) for i in range(4)]
    outcomes = HalvingExporter(inner).export(operations)
    assert [o.status for o in outcomes] == [503, 503, NOT_DELIVERED, NOT_DELIVERED]
    assert inner.sizes == [4, 2]
