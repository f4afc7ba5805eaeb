"""The per-log fallback's cost (issue 13): the requests a trace costs on a server without the
batch extension, each request in one write, and the parallel waves' worker pool."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

import flowtrace
from flowtrace import flow
from flowtrace.exporters import NOT_DELIVERED, Operation
from flowtrace.exporters.http import PARALLEL_FROM, HttpExporter, Parallel
from flowtrace.server._http_protocols import guarded_protocol
from flowtrace.server._one_write import OneWriteTransport
from tests.faultproxy import FaultProxy, Hang, SeenRequest
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.serverutil import RunningServer, serve_in_thread, start_server


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`flowtrace serve --no-batch`: a flowtrace server without the batch extension."""
    db = tmp_path_factory.mktemp("plain") / "plain.db"
    with start_server(db, extra_args=["--no-batch"]) as running:
        yield running


def test_a_three_log_trace_costs_four_requests_parents_first(plain_server: RunningServer) -> None:
    """A root with two children, ended before the worker plans them: the root's create
    (incomplete: its children follow), one complete create per child, and the root's closing
    update. Enough traces that they go in parallel waves; the proxy sees every request in the
    order the server got them."""
    traces = PARALLEL_FROM  # 4 operations each: well past the length that goes in waves
    proxy = FaultProxy.in_front_of(plain_server.root_url)
    roots: list[str] = []
    try:
        with fresh_pipeline(base_url=proxy.base_url, api_key=plain_server.api_key):
            with flow("perlog/warm"):  # discovery, and a connection, before the traces
                pass
            assert flowtrace.flush(WAIT_S)
            del proxy.requests[:]
            for i in range(traces):
                with flow("perlog/root", inputs={"i": i}) as root:
                    with flow("perlog/child"):
                        pass
                    with flow("perlog/child"):
                        pass
                roots.append(root.log_id)
            assert flowtrace.flush(WAIT_S)
            assert flowtrace.stats()["dropped"] == {}
        seen = list(proxy.requests)
    finally:
        proxy.stop()
    assert len(seen) == 4 * traces
    for root_id in roots:
        mine = [r for r in seen if _of_trace(r, root_id)]
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in mine] == [
            ("POST", "log"),
            ("POST", "log"),
            ("POST", "log"),
            ("PATCH", root_id),
        ]
        assert b'"trace_status":"incomplete"' in mine[0].body
        assert all(b'"trace_status":"complete"' in r.body for r in mine[1:])
    with plain_server.client() as client:
        for root_id in roots:
            record = client.get(f"/logs/{root_id}").json()
            assert record["trace_status"] == "complete"
            assert [c["trace_status"] for c in record["trace_children"]] == ["complete"] * 2


def _of_trace(request: SeenRequest, root_id: str) -> bool:
    if request.method == "PATCH":
        return request.path.endswith(f"/flows/logs/{root_id}")
    body = json.loads(request.body)
    return root_id in (body.get("log_id"), body.get("trace_parent_id"))


class _Writes:
    """Counts the writes (`send`, `sendall`) reaching the sockets connected to `port`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, port: int) -> None:
        self.count = 0
        for name in ("send", "sendall"):
            original = getattr(socket.socket, name)

            def counted(sock: socket.socket, *args: Any, original: Any = original) -> Any:
                # (an event loop wakes itself through a Unix socket pair: no port to compare)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    with contextlib.suppress(OSError):
                        self.count += sock.getpeername()[1] == port
                return original(sock, *args)

            monkeypatch.setattr(socket.socket, name, counted)


@pytest.mark.parametrize("batch", [False, True], ids=["per-log sender", "httpcore"])
def test_each_request_reaches_the_socket_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    """httpcore writes a request's head and body apart: two system calls, and two reads and
    wake-ups of the server. The per-log sender writes each request whole, and so do the
    exporter's httpcore streams (the batch route's)."""
    with serve_in_thread(tmp_path / "s.db", batch=batch) as server:
        exporter = HttpExporter(server.base_url, server.api_key)
        try:
            assert exporter.export([]) == []  # discovery: the connection is open
            writes = _Writes(monkeypatch, int(server.root_url.rsplit(":", 1)[1]))
            ops = [
                Operation("log", "one-0", {"path": "one/write", "log_id": "one-0"}),
                Operation("update", "one-0", {"trace_status": "complete"}),
            ]
            outcomes = exporter.export(ops)
        finally:
            exporter.close()
    assert [o.status for o in outcomes] == [200, 200]
    assert writes.count == (1 if batch else len(ops))  # one batch request, or one per log


def test_parallel_map_keeps_order_and_raises_an_item_s_error_after_the_rest() -> None:
    pool = Parallel(4, "test-parallel")
    try:
        assert pool.map(lambda n: n * 2, list(range(50))) == [n * 2 for n in range(50)]
        threads: set[str] = set()
        release = threading.Barrier(2, timeout=5)

        def meet(n: int) -> int:
            threads.add(threading.current_thread().name)
            if n < 2:
                release.wait()  # two items at once, on two threads, or this fails
            return n

        assert pool.map(meet, [0, 1]) == [0, 1]
        assert len(threads) == 2

        def fail_on_three(n: int) -> int:
            if n == 3:
                raise ValueError("three")
            return n

        with pytest.raises(ValueError, match="three"):
            pool.map(fail_on_three, list(range(8)))
        assert pool.map(lambda n: n + 1, [1, 2, 3]) == [2, 3, 4]  # its threads are still there
    finally:
        pool.close()


def test_a_write_that_fails_before_the_read_leaves_the_answer_to_the_read() -> None:
    """As httpcore does: a request the server cut short may still have been answered."""
    from flowtrace.exporters._interruptible import InterruptibleBackend, _Stream

    class Inner(httpcore.NetworkStream):
        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            raise httpcore.WriteError("closed early")

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return b"HTTP/1.1 413 Payload Too Large\r\n\r\n"

        def close(self) -> None:
            pass

    stream = _Stream(Inner(), InterruptibleBackend())
    stream.write(b"POST / HTTP/1.1\r\n\r\n")  # held: the request is not complete yet
    assert stream.read(100).startswith(b"HTTP/1.1 413")


def test_a_per_log_request_keeps_to_the_export_s_timeout(plain_server: RunningServer) -> None:
    """The bound an export is given (the exit flush's, for one) holds for per-log requests
    too, not only the batch route's: a hung server costs that long, not the client's 10 s."""
    proxy = FaultProxy.in_front_of(plain_server.root_url)
    exporter = HttpExporter(proxy.base_url, plain_server.api_key, timeout_s=10.0)
    try:
        assert exporter.export([]) == []  # discovered: a per-log server
        proxy.set_default(Hang())
        started = time.monotonic()
        (outcome,) = exporter.export([Operation("log", "hung", {"path": "perlog/hung"})], 0.3)
        assert time.monotonic() - started < 5.0
    finally:
        exporter.close()
        proxy.stop()
    assert outcome.status == NOT_DELIVERED
    assert outcome.error is not None and "Timeout" in outcome.error


class _AnswerWrites(list[bytes]):
    """What reaches the connections' transports from behind `OneWriteTransport`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        made = OneWriteTransport.__init__
        writes = self

        class Recording:
            def __init__(self, transport: Any) -> None:
                self._transport = transport

            def write(self, data: bytes) -> None:
                writes.append(data)
                self._transport.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._transport, name)

        def recording(one: OneWriteTransport, transport: Any, cycle: Any) -> None:
            made(one, Recording(transport), cycle)

        monkeypatch.setattr(OneWriteTransport, "__init__", recording)


def test_an_answer_leaves_the_server_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn writes an answer's head and body apart (two segments: the client reads the head
    alone, then waits and is woken for the body); the server's protocol sends them as one. A
    HEAD answer (a head with no body) is not held back."""
    writes = _AnswerWrites(monkeypatch)
    protocol = guarded_protocol(
        httptools=True, header_timeout=10.0, body_timeout=60.0, max_connections=100
    )
    with (
        serve_in_thread(tmp_path / "w.db", batch=False, http=protocol) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers) as client,
    ):
        for n in range(3):  # on one kept connection: every answer, not only the first
            body = {"path": "perlog/one-write", "log_id": f"w{n}"}
            answer = client.post("/flows/log", json=body)
            assert answer.status_code == 200
            assert writes[-1].startswith(b"HTTP/1.1 200") and writes[-1].endswith(answer.content)
        assert len(writes) == 3
        assert client.head("/health").status_code in (200, 405)  # answered, not held
    assert len(writes) == 3  # HEAD's answer went straight to the connection
