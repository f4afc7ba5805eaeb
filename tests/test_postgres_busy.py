"""A really busy PostgreSQL: every attempt of a write deadlocks, the retries run out, and the
store says StoreBusy (the server 503 with Retry-After); nothing is half-written, and once the
other transaction goes away the same write goes through.

The deadlock is real and provoked on each attempt by another connection (`DeadlockEachTry`):
it holds the flow's row; the store's write locks the parent log's row (FOR NO KEY UPDATE),
then waits for the flow's row to update its counters; the other connection then asks for the
parent's row. PostgreSQL finds the cycle and aborts the store's transaction, the one with the
short deadlock_timeout (10 ms; the other's is 10 minutes), and the other connection gives the
parent's row back (ROLLBACK TO SAVEPOINT) for the next attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from flowtrace.models import FlowLogRequest
from flowtrace.store import _MAX_ATTEMPTS as MAX_ATTEMPTS
from flowtrace.store import Store, StoreBusy, StoreNotFound
from tests.serverutil import start_server

_PATH = "busy/agent"
_PARENT = "busy-parent"
_CHILD = {
    "path": _PATH,
    "log_id": "busy-child",
    "trace_parent_id": _PARENT,
    "output": "done",
    "start_time": "2025-01-01T00:00:01Z",
    "end_time": "2025-01-01T00:00:02Z",
    "trace_status": "complete",
}
_JOIN_S = 60.0


def _with_setting(url: str, name: str, value: str) -> str:
    """The URL with one more server setting for its sessions (libpq's `options`)."""
    assert "options=" in url, "a schema URL of tests/pgutil.py"
    return url + f"%20-c{name}%3D{value}"


class DeadlockEachTry:
    """Another transaction that deadlocks with each attempt of the store's write (see the
    module's text); `deadlocks`: how many times it did."""

    def __init__(self, url: str, flow_path: str, parent_id: str) -> None:
        self._conn = psycopg.connect(_with_setting(url, "deadlock_timeout", "10min"))
        self._parent_id = parent_id
        self._conn.execute("SELECT 1 FROM flows WHERE path = %s FOR UPDATE", (flow_path,))
        row = self._conn.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
        assert row is not None
        self._xid = row[0]
        self._stop = threading.Event()
        self.deadlocks = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _store_waits_for_the_flow(self) -> bool:
        """A transaction waits for this one's own xid: the flow's row, not the parent's (that
        one, while held, is a subtransaction's)."""
        row = self._conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
            " AND transactionid = %s::xid AND NOT granted",
            (self._xid,),
        ).fetchone()
        return row is not None and row[0] > 0

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._store_waits_for_the_flow():
                self._stop.wait(0.002)  # PostgreSQL announces a lock wait nowhere else
                continue
            self._conn.execute("SAVEPOINT parent")
            # blocks on the store's lock of the parent: the cycle, resolved by aborting the
            # store's transaction (which releases the parent to us)
            self._conn.execute("SELECT 1 FROM logs WHERE id = %s FOR UPDATE", (self._parent_id,))
            self.deadlocks += 1
            self._conn.execute("ROLLBACK TO SAVEPOINT parent")

    @contextmanager
    def running(self) -> Iterator[DeadlockEachTry]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=_JOIN_S)
            assert not self._thread.is_alive()

    def go_away(self) -> None:
        self._conn.rollback()
        self._conn.close()


def _seed_parent(url: str) -> None:
    with Store(url) as store:
        store.log(
            FlowLogRequest.model_validate(
                {"path": _PATH, "log_id": _PARENT, "start_time": "2025-01-01T00:00:00Z"}
            )
        )


def _flow_state(url: str) -> tuple[Any, ...]:
    """The rows a half-written child would have changed: its own, the parent's times, the
    flow's and version's counters."""
    with psycopg.connect(url) as conn:
        child = conn.execute("SELECT count(*) FROM logs WHERE id = 'busy-child'").fetchone()
        parent = conn.execute(
            "SELECT start_us, end_us FROM logs WHERE id = %s", (_PARENT,)
        ).fetchone()
        flow = conn.execute(
            "SELECT log_count, root_count, error_count FROM flows WHERE path = %s", (_PATH,)
        ).fetchone()
        versions = conn.execute("SELECT sum(log_count) FROM versions").fetchone()
    return child, parent, flow, versions


@pytest.fixture
def busy_url(postgres_url: str) -> str:
    """The store's sessions give up waiting on a deadlock after 10 ms (PostgreSQL's default
    is 1 s: 8 attempts would take 8 s)."""
    _seed_parent(postgres_url)
    return _with_setting(postgres_url, "deadlock_timeout", "10ms")


def test_retries_run_out_to_store_busy_on_a_real_deadlock_then_the_write_succeeds(
    busy_url: str,
) -> None:
    before = _flow_state(busy_url)
    blocker = DeadlockEachTry(busy_url, _PATH, _PARENT)
    with Store(busy_url) as store:
        with blocker.running(), pytest.raises(StoreBusy, match="deadlock detected") as busy:
            store.log(FlowLogRequest.model_validate(_CHILD))
        assert blocker.deadlocks == MAX_ATTEMPTS  # each attempt met the other transaction
        assert f"met other writers {MAX_ATTEMPTS} times" in str(busy.value)
        assert busy.value.status_code == 503
        assert _flow_state(busy_url) == before  # nothing half-written
        with pytest.raises(StoreNotFound):
            store.get_log("busy-child")

        blocker.go_away()
        created = store.log(FlowLogRequest.model_validate(_CHILD))
        assert created.id == "busy-child"
        parent = store.get_log(_PARENT)
    assert [child.id for child in parent.trace_children or []] == ["busy-child"]
    child, times, flow, versions = _flow_state(busy_url)
    assert child == (1,)
    assert flow == (2, 1, 0) and versions == (2,)  # the counters count it once
    start_us = before[1][0]
    assert times == (start_us, start_us + 2_000_000)  # the parent widened to the child's end


def test_the_server_answers_503_with_retry_after_when_the_retries_run_out(
    busy_url: str,
) -> None:
    before = _flow_state(busy_url)
    blocker = DeadlockEachTry(busy_url, _PATH, _PARENT)
    server = start_server(busy_url)  # type: ignore[arg-type]
    with server, server.client() as client:
        with blocker.running():
            refused = client.post("/flows/log", json=_CHILD)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert blocker.deadlocks == MAX_ATTEMPTS
        assert _flow_state(busy_url) == before
        assert client.get("/logs/busy-child").status_code == 404

        blocker.go_away()
        accepted = client.post("/flows/log", json=_CHILD)  # what the client's retry sends
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["id"] == "busy-child"
    assert _flow_state(busy_url)[0] == (1,)
