"""Graceful shutdown: a request already being handled finishes; then the store is closed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import httpx

from flowtrace.models import CreateFlowLogResponse, FlowLogRequest, FlowLogResponse, LogQuery
from flowtrace.store import Store, StoreError, UpdateWrite
from tests.serverutil import serve_in_thread

# Bound on any wait for a condition in this test, seconds.
WAIT_LIMIT = 60.0


class GatedStore(Store):
    """Holds a log to path `slow` inside the store until the test lets it through."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_many(
        self, writes: Sequence[tuple[FlowLogRequest, LogQuery | None] | UpdateWrite]
    ) -> list[CreateFlowLogResponse | FlowLogResponse | StoreError | None]:
        if any(not isinstance(w, UpdateWrite) and w[0].path == "slow" for w in writes):
            self.entered.set()
            assert self.release.wait(WAIT_LIMIT), "the test never released the request"
        return super().write_many(writes)


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url, timeout=5.0)
    except httpx.TransportError:
        return True
    return False


def test_in_flight_request_finishes_before_the_store_closes(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = GatedStore(db)
    running = serve_in_thread(db, store=store)
    answers: list[httpx.Response] = []

    def post_slow() -> None:
        with running.client() as client:
            answers.append(client.post("/flows/log", json={"path": "slow", "log_id": "s"}))

    request = threading.Thread(target=post_slow)
    request.start()
    assert store.entered.wait(WAIT_LIMIT)

    stopper = threading.Thread(target=running.stop)  # what SIGTERM does in a process
    stopper.start()
    health = running.root_url + "/healthz"
    for _ in range(10_000):  # bounded: the listener closes within uvicorn's next tick
        if refuses_connections(health):
            break
        threading.Event().wait(0.01)
    assert refuses_connections(health), "shutdown never began"
    assert stopper.is_alive(), "shutdown finished while a request was still in flight"

    store.release.set()
    request.join(WAIT_LIMIT)
    stopper.join(WAIT_LIMIT)
    assert not stopper.is_alive()
    assert [answer.status_code for answer in answers] == [200]
    with Store(db) as reopened:
        assert reopened.get_log("s").id == "s"
