"""The retry policy and the embedded default, without a server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from flowtrace._queue import Backpressure
from flowtrace._retry import backoff_delay_s, describe_rejection, is_retryable, parse_retry_after
from flowtrace.store import ListQuery, Store

SRC = Path(__file__).resolve().parents[1] / "src"
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("status", [0, 408, 429, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    assert is_retryable(status)


@pytest.mark.parametrize("status", [200, 400, 401, 404, 409, 413, 422, 500])
def test_not_retryable_statuses(status: int) -> None:
    assert not is_retryable(status)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt in range(6):
        delay = backoff_delay_s(attempt, 1.0, rng)
        assert 0.8 * 2**attempt <= delay <= 1.2 * 2**attempt
    assert backoff_delay_s(50, 1.0, rng) <= 30.0 * 1.2


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2", NOW) == 2.0
    assert parse_retry_after(" 0 ", NOW) == 0.0
    later = format_datetime(NOW + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(later, NOW) == 7.0
    earlier = format_datetime(NOW - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_rejection_names_the_field_or_the_reason() -> None:
    detail = {"detail": [{"loc": ["body", "path"], "msg": "bad path", "type": "value_error"}]}
    key, message = describe_rejection(422, detail)
    assert "body.path" in key
    assert message == "422 body.path: bad path"
    assert describe_rejection(401, {"detail": "invalid API key"})[1] == "401 invalid API key"
    assert "api_key" in describe_rejection(401, "garbage")[1]


def _run(code: str, cwd: Path, env: dict[str, str]) -> None:
    full = {**os.environ, "PYTHONPATH": str(SRC), **env}
    for name in ("FLOWTRACE_BASE_URL", "FLOWTRACE_DB_PATH"):
        if name not in env:
            full.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=full,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()


SCRIPT = """
    from flowtrace import flow
    with flow("quick/start", inputs={"q": "hi"}) as root:
        with flow("quick/step") as step:
            step.output = "ok"
"""


def _roots(db: Path) -> list[object]:
    store = Store(db)
    try:
        return list(
            store.list_logs(ListQuery(roots_only=True, include_trace_children=True)).records
        )
    finally:
        store.close()


def test_embedded_default_writes_the_local_store(tmp_path: Path) -> None:
    _run(SCRIPT, tmp_path, {})
    [root] = _roots(tmp_path / ".flowtrace" / "flowtrace.db")
    assert root.trace_status == "complete"  # type: ignore[attr-defined]
    assert root.trace_children[0].output == "ok"  # type: ignore[attr-defined]


def test_embedded_default_db_path_from_environment(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "traces.db"
    _run(SCRIPT, tmp_path, {"FLOWTRACE_DB_PATH": str(db)})
    assert len(_roots(db)) == 1
    assert not (tmp_path / ".flowtrace").exists()


# --- backpressure: slow is not stalled --------------------------------------------------------


class SteppedClock:
    """Returns the given readings in turn (and the last one from then on)."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)
        self.reads = 0
        self.on_read: dict[int, Callable[[], None]] = {}  # after the n-th reading

    def __call__(self) -> float:
        self.reads += 1
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        self.on_read.get(self.reads, lambda: None)()
        return reading


def test_a_waiting_thread_calls_the_worker_stalled_after_max_wait_without_an_export() -> None:
    # The wait begins; 2.5 s later, no progress: stalled (the worker is woken to move the
    # overflow to the spool), and the thread waits as long again; no progress either: refused.
    clock = SteppedClock(0.0, 2.5, 2.5, 5.0)
    backpressure = Backpressure(max_wait_s=2.0, clock=clock)
    wakes = []
    assert backpressure.wait(lambda: wakes.append(clock.reads)) is False
    assert backpressure.stalled and clock.reads == 4 and wakes == [0, 2]
    assert backpressure.wait(lambda: None) is False  # stalled: nobody waits until room is made
    backpressure.has_room()
    assert not backpressure.stalled


def test_the_thread_that_found_the_stall_goes_on_once_the_spool_makes_room() -> None:
    clock = SteppedClock(0.0, 2.5, 2.5)
    backpressure = Backpressure(max_wait_s=2.0, clock=clock)
    clock.on_read[3] = backpressure.has_room  # the worker spilled the overflow
    assert backpressure.wait(lambda: None) is True  # its log is kept, not refused
    assert not backpressure.stalled


def test_an_export_in_flight_gets_the_patience_its_size_needs() -> None:
    # An export of 1,000 logs took 3 s (a deep batch on a loaded machine): 3 ms a log.
    clock = SteppedClock(0.0, 3.0, 3.0, 3.0, 8.0, 16.0, 16.0, 30.0)
    backpressure = Backpressure(max_wait_s=2.0, clock=clock)
    backpressure.progressed(1000)
    backpressure.progressed(0)
    assert backpressure.patience() == 2.0  # nothing in flight
    backpressure.progressed(1000)  # the next one, as long
    assert backpressure.patience() == pytest.approx(4 * 3.0)
    # 5 s without progress is not a stall now (it was, before); 13 s is.
    assert backpressure.wait(lambda: None) is False
    assert clock.reads == 8  # the look at 8.0 went on waiting; the one at 16.0 found the stall


def test_the_worker_planning_a_batch_is_progress() -> None:
    clock = SteppedClock(0.0, 1.0, 1.5, 3.0, 4.0, 4.0, 7.0)
    backpressure = Backpressure(max_wait_s=2.0, clock=clock)
    clock.on_read[2] = backpressure.worked  # while the thread waits, the worker plans
    assert backpressure.wait(lambda: None) is False
    # Without that, the look at 3.0 would have found a stall (3 s idle); it waited from 1.5.
    assert clock.reads == 7
