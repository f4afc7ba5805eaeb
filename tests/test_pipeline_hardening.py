"""Hardening of the delivery (issue 9): each test failed on the code before the fix.

- item 1: a deep trace no longer kills the worker; a worker that fails on one trace drops that
  trace (counted, warned) and goes on.
- item 2 (embedded store): a deep trace is stored, nothing retried, nothing else taken with it.
- item 7: a 200 that is not the contract's answer is no delivery, said once, naming the URL.
- item 10: start times follow the wall clock (recalibrated on the worker); durations do not.
- item 17: one accounting, in logs: the warnings say what stats() says.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import flowtrace
from flowtrace import _log, flow
from flowtrace._log import Log
from flowtrace._planner import Planner
from flowtrace.exporters import Outcome
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.store import Store
from tests.faultproxy import FaultProxy, Respond
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.serverutil import RunningServer, start_server


def flowtrace_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowtrace"]


def deep_trace(depth: int, path: str = "deep/level") -> list[Log]:
    """`depth` nested `with flow(...)` blocks (opened without recursion)."""
    logs: list[Log] = []
    with contextlib.ExitStack() as stack:
        for _ in range(depth):
            logs.append(stack.enter_context(flow(path)))
    return logs


# --- item 1 ----------------------------------------------------------------------------------


def test_a_trace_thousands_of_levels_deep_is_delivered_and_the_worker_lives_on() -> None:
    exporter = MemoryExporter()
    with fresh_pipeline(exporter):
        logs = deep_trace(3000)
        assert flowtrace.flush(WAIT_S)
        with flow("after/deep") as after:
            pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert stats["dropped"] == {}
    assert stats["sent"] == 3001
    assert all(exporter.status_of(log.log_id) == "complete" for log in logs)
    assert exporter.logs[logs[-1].log_id]["trace_parent_id"] == logs[-2].log_id
    assert exporter.status_of(after.log_id) == "complete"


def test_a_worker_that_fails_on_one_trace_drops_that_trace_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fail_on_internal_errors: list[tuple[str, BaseException | None]],
) -> None:
    exporter = MemoryExporter()
    close = Planner._close

    def breaks_on_poison(self: Planner, log: Log, *args: object) -> None:
        if log.path == "poison/root":
            raise RecursionError("a bug that only this trace meets")
        close(self, log, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Planner, "_close", breaks_on_poison)
    with fresh_pipeline(exporter), caplog.at_level(logging.WARNING, logger="flowtrace"):
        with flow("fine/before"):
            pass
        with flow("poison/root"):
            pass
        with flow("fine/after"):
            pass
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert sorted(body["path"] for body in exporter.logs.values()) == ["fine/after", "fine/before"]
    assert stats["dropped"] == {"internal_error": 1}
    assert stats["sent"] == 2
    assert [kind for kind, _ in fail_on_internal_errors] == ["plan-log"]
    fail_on_internal_errors.clear()  # expected here: the guard reported the bug once
    said = [w for w in flowtrace_warnings(caplog) if "dropped" in w]
    assert said == [
        "flowtrace: 1 log(s) dropped: planning their delivery failed (an internal error, "
        "reported once). Further drops are only counted in flowtrace.stats()['dropped']."
    ]


# --- item 2: the embedded store --------------------------------------------------------------


def test_a_deep_trace_is_stored_by_the_embedded_store_without_retries(tmp_path: Path) -> None:
    db = tmp_path / "deep.db"
    with fresh_pipeline(db_path=str(db), spool_dir=str(tmp_path / "spool")):
        with flow("deep/neighbour"):  # in the same batch as the deep trace
            logs = deep_trace(350)
        assert flowtrace.flush(WAIT_S)
        stats = flowtrace.stats()
    assert stats["dropped"] == {}
    assert stats["retried"] == 0  # nothing failed, so nothing was retried
    assert stats["sent"] == 351
    with Store(db) as store:
        assert sum(f.log_count for f in store.list_flows()) == 351
        assert store.get_log(logs[-1].log_id).trace_status == "complete"


# --- item 7 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("server") / "flowtrace.db") as running:
        yield running


def test_a_200_that_is_not_the_contract_s_answer_is_a_failed_delivery_said_once(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = FaultProxy.in_front_of(server.root_url)
    page = b"<html><body>It works!</body></html>"
    proxy.set_default(Respond(200, page, {"Content-Type": "text/html"}))
    try:
        with (
            fresh_pipeline(base_url=proxy.base_url, spool_dir=str(tmp_path)),
            caplog.at_level(logging.WARNING, logger="flowtrace"),
        ):
            for _ in range(5):
                with flow("html/answer"):
                    pass
            assert flowtrace.flush(1.0) is False
            stats = flowtrace.stats()
    finally:
        proxy.stop()
    assert stats["sent"] == 0
    assert stats["spooled"] == 5  # not lost: kept for when the URL is right
    assert stats["dropped"] == {}
    said = flowtrace_warnings(caplog)
    assert len(said) == 1
    assert f"{proxy.base_url}/" in said[0]
    assert "text/html" in said[0]
    assert "not the contract's answer" in said[0]


# --- item 10 -----------------------------------------------------------------------------------


def test_start_times_follow_a_step_of_the_wall_clock_and_durations_do_not() -> None:
    exporter = MemoryExporter()
    second = 1_000_000_000
    wall = [1_700_000_000 * second]
    mono = itertools.count(5 * second, 1000)  # 1 us per read
    lock = threading.Lock()

    def wall_ns() -> int:
        return wall[0]

    def mono_ns() -> int:
        with lock:
            return next(mono)

    _log.set_clock(wall_ns=wall_ns, mono_ns=mono_ns)
    try:
        with fresh_pipeline(exporter, live_after_s=60.0) as pipe:
            pipe._last_calibration = float("-inf")
            with flow("clock/before") as before:
                pass
            assert flowtrace.flush(WAIT_S)
            wall[0] += 3600 * second  # the wall clock steps an hour ahead (NTP, a resume)
            pipe._last_calibration = float("-inf")  # (recalibration is at most once a second)
            with flow("clock/after") as after:
                pass
            assert flowtrace.flush(WAIT_S)
    finally:
        _log.set_clock()
    first = exporter.logs[before.log_id]
    later = exporter.logs[after.log_id]
    assert first["start_time"].startswith("2023-11-14T22:13:")
    assert later["start_time"].startswith("2023-11-14T23:13:")  # an hour later, not the same
    # durations come from the monotonic clock: the step is not in them
    assert 0 < later["provider_latency"] < 0.001
    assert 0 < first["provider_latency"] < 0.001


# --- item 17 -----------------------------------------------------------------------------------


def test_the_warnings_count_logs_as_stats_does_and_never_contradict_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = MemoryExporter()
    for _ in range(100):
        exporter.script(lambda ops: [Outcome(503, {"detail": "down"})] * len(ops))
    with (
        caplog.at_level(logging.WARNING, logger="flowtrace"),
        fresh_pipeline(exporter, spool="off", retry_deadline_s=0.1),
    ):
        for _ in range(5):  # 5 traces of 3 logs: 20 operations
            with flow("count/root"), flow("count/child"):
                pass
            with flow("count/solo"):
                pass
        assert flowtrace.flush(WAIT_S) is True  # settled: dropped after the deadline
        stats = flowtrace.stats()
        flowtrace.shutdown(1.0)
    assert stats["dropped"] == {"retry_deadline": 15}
    said = flowtrace_warnings(caplog)
    dropped = [w for w in said if "dropped" in w]
    assert len(dropped) == 1
    assert dropped[0].startswith("flowtrace: 15 log(s) dropped:")
    assert not any("0 log(s)" in w for w in said)  # no "0 not delivered" after "15 dropped"
