"""A really busy PostgreSQL: every attempt of a write meets another transaction, the retries
run out, and the store says StoreBusy (the server 503 with Retry-After); nothing is
half-written, and once the other transactions go away the same write goes through.

The conflict is real and provoked on each attempt (`ConflictEachTry`): two other connections
take turns holding the flow's row updated, uncommitted. Each attempt of the store's write
locks the parent log's row, then waits for the flow's row (to update its counters); the
connection waiting behind it takes the next turn, and the holder commits: the store's
transaction finds the row changed since its snapshot, "could not serialize access due to
concurrent update", at once. Its writes run at REPEATABLE READ here (the session default its
URL sets; the store leaves the isolation level to the server): at READ COMMITTED PostgreSQL
would update the new row instead. Every step waits for a lock PostgreSQL shows in `pg_locks`,
no step for a time (a deadlock would: PostgreSQL looks for one once, after deadlock_timeout).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
_WAITS_FOR_XID = "locktype = 'transactionid' AND transactionid = %s::xid"


def _with_setting(url: str, name: str, value: str) -> str:
    """The URL with one more server setting for its sessions (libpq's `options`)."""
    assert "options=" in url, "a schema URL of tests/pgutil.py"
    return url + f"%20-c{name}%3D{value}"


class ConflictEachTry:
    """Two connections taking turns to hold the flow's row updated, so that each attempt of
    the store's write fails (see the module's text); `conflicts`: how many times."""

    def __init__(self, url: str, flow_path: str) -> None:
        self._turns = [psycopg.connect(url) for _ in range(2)]
        self._watch = psycopg.connect(url, autocommit=True)
        self._update = ("UPDATE flows SET updated_us = updated_us WHERE path = %s", (flow_path,))
        self._holder = 0
        self._turns[0].execute(*self._update)
        self._stop = threading.Event()
        self.conflicts = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._queued = ThreadPoolExecutor(1)

    def _waiting(self, condition: str, value: object) -> bool:
        row = self._watch.execute(
            f"SELECT count(*) FROM pg_locks WHERE NOT granted AND {condition}", (value,)
        ).fetchone()
        return row is not None and row[0] > 0

    def _wait_until(self, condition: str, value: object) -> bool:
        """False when stopped first."""
        while not self._waiting(condition, value):
            if self._stop.wait(0.002):  # PostgreSQL announces a lock wait nowhere else
                return False
        return True

    def _run(self) -> None:
        while True:
            holder, queued = self._turns[self._holder], self._turns[1 - self._holder]
            xid = holder.execute("SELECT pg_current_xact_id()::xid::text").fetchone()
            assert xid is not None
            # the store's write, waiting for the holder's transaction (the flow's row)
            if not self._wait_until(_WAITS_FOR_XID, xid[0]):
                return
            taking = self._queued.submit(queued.execute, *self._update)  # behind the store
            assert self._wait_until("pid = %s", queued.info.backend_pid)
            holder.commit()  # the store's transaction fails; the queued one takes the row
            taking.result(timeout=_JOIN_S)
            self.conflicts += 1
            self._holder = 1 - self._holder

    @contextmanager
    def running(self) -> Iterator[ConflictEachTry]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=_JOIN_S)
        assert not self._thread.is_alive()

    def go_away(self) -> None:
        for conn in (*self._turns, self._watch):
            if not conn.closed:
                conn.rollback()
                conn.close()
        self._queued.shutdown()


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
    """The store's URL: its writes at REPEATABLE READ; lock_timeout, a failure rather than a
    hang, should the store ever wait for a lock the blockers do not expect."""
    _seed_parent(postgres_url)
    url = _with_setting(postgres_url, "default_transaction_isolation", "repeatable%5C%20read")
    return _with_setting(url, "lock_timeout", "60s")


@pytest.fixture
def blocker(postgres_url: str, busy_url: str) -> Iterator[ConflictEachTry]:
    conflict = ConflictEachTry(postgres_url, _PATH)  # after busy_url: the flow exists
    try:
        yield conflict
    finally:
        conflict.go_away()


def test_retries_run_out_to_store_busy_on_real_conflicts_then_the_write_succeeds(
    busy_url: str, blocker: ConflictEachTry
) -> None:
    before = _flow_state(busy_url)
    with Store(busy_url) as store:
        with blocker.running(), pytest.raises(StoreBusy, match="could not serialize") as busy:
            store.log(FlowLogRequest.model_validate(_CHILD))
        assert blocker.conflicts == MAX_ATTEMPTS  # each attempt met the other transaction
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
    busy_url: str, blocker: ConflictEachTry
) -> None:
    before = _flow_state(busy_url)
    server = start_server(busy_url)  # type: ignore[arg-type]
    with server, server.client() as client:
        with blocker.running():
            refused = client.post("/flows/log", json=_CHILD)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert blocker.conflicts == MAX_ATTEMPTS
        assert _flow_state(busy_url) == before
        assert client.get("/logs/busy-child").status_code == 404

        blocker.go_away()
        accepted = client.post("/flows/log", json=_CHILD)  # what the client's retry sends
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["id"] == "busy-child"
    assert _flow_state(busy_url)[0] == (1,)
