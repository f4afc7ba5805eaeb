"""The per-log requests' lean HTTP/1.1 sender (`exporters/_http1.py`, issue 13), against a real
`flowtrace serve --no-batch` (through the fault proxy where the server must misbehave) and, for
the answer framings no flowtrace server sends, a socket pair."""

from __future__ import annotations

import gzip
import select
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from flowtrace.exporters import NOT_DELIVERED, Operation, Outcome
from flowtrace.exporters._http1 import _Connection, _Refused
from flowtrace.exporters.http import HttpExporter
from tests.faultproxy import FaultProxy, Hang, ResetAfterForward, Respond, SeenRequest
from tests.serverutil import RunningServer, start_server

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    db = tmp_path_factory.mktemp("http1") / "plain.db"
    with start_server(db, extra_args=["--no-batch"]) as running:
        yield running


@pytest.fixture
def proxy(plain_server: RunningServer) -> Iterator[FaultProxy]:
    running = FaultProxy.in_front_of(plain_server.root_url)
    yield running
    running.stop()


@pytest.fixture
def exporter(proxy: FaultProxy, plain_server: RunningServer) -> Iterator[HttpExporter]:
    made = HttpExporter(proxy.base_url, plain_server.api_key)
    assert made._sender is not None  # plain http, no proxy: the lean sender
    assert made.export([]) == []  # discovered: a per-log server
    yield made
    made.close()


def _create(log_id: str, **fields: object) -> Operation:
    return Operation("log", log_id, {"path": "http1/t", "log_id": log_id, **fields})


def _creates(proxy: FaultProxy) -> list[SeenRequest]:
    return [r for r in proxy.requests if r.path == "/v5/flows/log"]


def test_requests_go_one_after_another_over_one_kept_connection(
    exporter: HttpExporter, proxy: FaultProxy, plain_server: RunningServer
) -> None:
    ops = [
        _create("seq-root", trace_status="incomplete"),
        _create("seq-child", trace_parent_id="seq-root", trace_status="complete"),
        Operation("update", "seq-root", {"trace_status": "complete", "output": "done"}),
    ]
    outcomes = exporter.export(ops)
    assert [o.status for o in outcomes] == [200, 200, 200]
    assert [o.body["id"] for o in outcomes if o.body] == ["seq-root", "seq-child", "seq-root"]
    assert [(r.method, r.path) for r in proxy.requests] == [
        ("GET", "/v5/health"),
        ("POST", "/v5/flows/log"),
        ("POST", "/v5/flows/log"),
        ("PATCH", "/v5/flows/logs/seq-root"),
    ]
    assert exporter._sender is not None and len(exporter._sender._open) == 1
    record = plain_server.stored_log("seq-root")
    assert record["trace_status"] == "complete" and record["output"] == "done"


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    exporter: HttpExporter, proxy: FaultProxy, plain_server: RunningServer
) -> None:
    """A kept connection the server has closed reads as ready: it is dropped before use, so
    even an update (never sent twice) goes out once, on a new connection, and succeeds."""
    assert [o.status for o in exporter.export([_create("idle-1", trace_status="incomplete")])] == [
        200
    ]
    assert exporter._sender is not None
    (kept,) = exporter._sender._idle
    proxy.hang_up()  # as a server's keep-alive timeout closes idle connections
    assert select.select([kept.sock], [], [], 10)[0]  # the close has reached the client
    update = Operation("update", "idle-1", {"trace_status": "complete"})
    (outcome,) = exporter.export([update])
    assert outcome.status == 200, outcome.error
    assert len(proxy.seen("/flows/logs/idle-1")) == 1
    assert plain_server.stored_log("idle-1")["trace_status"] == "complete"


def test_a_create_left_unanswered_on_a_kept_connection_is_sent_once_more(
    exporter: HttpExporter, proxy: FaultProxy, plain_server: RunningServer
) -> None:
    """The server closed the kept connection in the instant the request went out (it got it,
    or not): a create that names its log is sent again on a new connection, and answered as
    the original (the contract's replay identity); an update is not (applied twice it may be
    refused): it fails as a transport error, for the pipeline to retry."""
    assert exporter.export([_create("race-0")])[0].status == 200  # the connection is kept
    proxy.script(ResetAfterForward())
    (created,) = exporter.export([_create("race-1", trace_status="incomplete")])
    assert created.status == 200 and created.body is not None
    assert created.body["id"] == "race-1"
    assert sum(b'"log_id":"race-1"' in r.body for r in _creates(proxy)) == 2
    assert plain_server.stored_log("race-1")["trace_status"] == "incomplete"  # stored once

    proxy.script(ResetAfterForward())
    (updated,) = exporter.export([Operation("update", "race-1", {"trace_status": "complete"})])
    assert updated.status == NOT_DELIVERED
    assert updated.error is not None and "ReadError" in updated.error
    assert len(proxy.seen("/flows/logs/race-1")) == 1


def test_a_create_without_its_log_id_or_on_a_new_connection_is_not_resent(
    proxy: FaultProxy, plain_server: RunningServer
) -> None:
    exporter = HttpExporter(proxy.base_url, plain_server.api_key)
    try:
        assert exporter.export([]) == []
        proxy.script(ResetAfterForward())
        (first,) = exporter.export([_create("fresh-1")])  # the sender's first connection
        assert first.status == NOT_DELIVERED
        assert exporter.export([_create("fresh-2")])[0].status == 200
        proxy.script(ResetAfterForward())
        (anonymous,) = exporter.export([Operation("log", "x", {"path": "http1/anonymous"})])
        assert anonymous.status == NOT_DELIVERED
    finally:
        exporter.close()
    assert len(_creates(proxy)) == 3


def test_the_server_s_statuses_and_retry_after_reach_the_outcomes(
    exporter: HttpExporter, proxy: FaultProxy
) -> None:
    proxy.script(Respond(503, b'{"detail": "busy"}', {"Retry-After": "7"}))
    busy, rest = exporter.export([_create("status-1"), _create("status-2")])
    assert (busy.status, busy.retry_after_s, busy.body) == (503, 7.0, {"detail": "busy"})
    assert rest == Outcome(NOT_DELIVERED, None, 7.0, "not attempted")
    proxy.script(Respond(200, b"<html>hello</html>", {"Content-Type": "text/html"}))
    (page,) = exporter.export([_create("status-3")])
    assert page.status == NOT_DELIVERED
    assert page.error is not None and "text/html: '<html>hello</html>'" in page.error
    proxy.script(Respond(413, b'{"detail": "too large"}'))
    assert exporter.export([_create("status-4")])[0].status == 413


def test_interrupt_ends_a_request_blocked_on_a_hung_server_for_good(
    exporter: HttpExporter, proxy: FaultProxy
) -> None:
    arrived = threading.Event()
    next_action = proxy._next_action

    def noticed(path: str) -> object:
        arrived.set()
        return next_action(path)

    proxy._next_action = noticed  # type: ignore[method-assign,assignment]
    proxy.set_default(Hang())
    outcomes: list[Outcome] = []
    sending = threading.Thread(target=lambda: outcomes.extend(exporter.export([_create("h")])))
    sending.start()
    assert arrived.wait(10)
    exporter.interrupt()
    sending.join(10)
    assert not sending.is_alive()  # ended now, not at the 10 s timeout
    assert outcomes[0].status == NOT_DELIVERED
    (after,) = exporter.export([_create("h-after")])
    assert after.status == NOT_DELIVERED
    assert after.error is not None and "interrupted" in after.error


def test_a_proxy_from_the_environment_or_https_leaves_the_requests_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert HttpExporter("http://logs.example/v5")._sender is None
    monkeypatch.setenv("NO_PROXY", "logs.example")
    assert HttpExporter("http://logs.example/v5")._sender is not None
    assert HttpExporter("https://logs.example/v5")._sender is None
    assert HttpExporter("http://user:secret@logs.example/v5")._sender is None


def _answered(raw: bytes, close: bool = False) -> tuple[int, bytes, bool, bytes]:
    """A request over a socket pair answered with `raw` (then closed): status, body, whether
    the connection may be kept, and the request as the peer got it."""
    mine, theirs = socket.socketpair()
    try:
        theirs.sendall(raw)
        if close:
            theirs.shutdown(socket.SHUT_WR)
        response, keep = _Connection(mine).exchange(b"POST /x HTTP/1.1\r\n\r\n{}", TIMEOUT)
        return response.status_code, response.content, keep, theirs.recv(1000)
    finally:
        mine.close()
        theirs.close()


def test_every_framing_of_an_answer_is_read_whole() -> None:
    head = b"HTTP/1.1 200 OK\r\n"
    assert _answered(head + b"Content-Length: 2\r\n\r\n{}") == (
        200,
        b"{}",
        True,
        b"POST /x HTTP/1.1\r\n\r\n{}",
    )
    chunked = (
        b'Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{"a\r\n4\r\n":1}\r\n0\r\nX-T: 1\r\n\r\n'
    )
    assert _answered(head + chunked)[:3] == (200, b'{"a":1}', True)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + head + b"Content-Length: 0\r\n\r\n"
    assert _answered(interim)[:3] == (200, b"", True)
    closing = head + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
    assert _answered(closing)[:3] == (200, b"{}", False)
    assert _answered(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}")[2] is False
    assert _answered(head + b"\r\n{} up to the close", close=True)[:3] == (
        200,
        b"{} up to the close",
        False,
    )
    packed = gzip.compress(b'{"id":"z"}')
    zipped = head + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
    assert _answered(zipped)[:2] == (200, b'{"id":"z"}')
    assert _answered(b"HTTP/1.1 204 No Content\r\n\r\n")[:3] == (204, b"", True)


def test_an_answer_cut_short_or_garbled_is_a_protocol_error() -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="mid-answer"):
        _answered(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", close=True)
    with pytest.raises(httpx.RemoteProtocolError, match="status line"):
        _answered(b"SMTP ready\r\n\r\n")
    with pytest.raises(_Refused) as unanswered:  # no answer at all: maybe resent (see above)
        _answered(b"", close=True)
    assert isinstance(unanswered.value.error, httpx.RemoteProtocolError)
