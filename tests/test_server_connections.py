"""The server's HTTP layer against hostile connections, over raw sockets to a real server.

Each test runs against `flowtrace serve` in a subprocess under both of uvicorn's HTTP
implementations (`--http h11`, the default install; `--http httptools`, the `server-fast`
extra): request framing that could smuggle a request (issue 9 item 14), clients that trickle
their headers or send nothing (slowloris, item 15), and the bound on connections (item 15).
"""

from __future__ import annotations

import importlib.util
import os
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.serverutil import RunningServer, start_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 3
# Bound on waiting for the server to answer or close, seconds: far above HEADER_TIMEOUT_S, so
# only a server that never closes reaches it.
CLOSE_WAIT_S = 15.0
TRICKLE_EVERY_S = 0.1
SLOWLORIS_CONNECTIONS = 50

HTTP_IMPLEMENTATIONS = ["h11", "httptools"]


def _require(implementation: str) -> None:
    if importlib.util.find_spec(implementation) is None:
        if os.environ.get("CI"):  # CI installs the dev extra, which has both
            pytest.fail(f"{implementation} is not installed")
        pytest.skip(f"{implementation} is not installed (pip install -e '.[dev]')")


def serve(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, *args: str
) -> Iterator[RunningServer]:
    """A keyless `flowtrace serve` under the fixture's HTTP implementation, with `args`."""
    _require(request.param)
    db = tmp_path_factory.mktemp(request.param) / "flowtrace.db"
    with start_server(db, api_keys=(), extra_args=["--http", request.param, *args]) as running:
        yield running


@pytest.fixture(scope="module", params=HTTP_IMPLEMENTATIONS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Short header and body timeouts, and the default connection bound."""
    yield from serve(
        request,
        tmp_path_factory,
        *("--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S)),
    )


@pytest.fixture(scope="module", params=HTTP_IMPLEMENTATIONS)
def bounded_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """At most MAX_CONNECTIONS connections served at once."""
    yield from serve(request, tmp_path_factory, "--max-connections", str(MAX_CONNECTIONS))


def connect(server: RunningServer) -> socket.socket:
    host, port = server.root_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=CLOSE_WAIT_S)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    received = b""
    deadline = time.monotonic() + CLOSE_WAIT_S
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    pytest.fail(f"the server kept the connection open; it sent {received!r}")


def request(path: str, *, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"


def stored_logs(server: RunningServer) -> int:
    with server.client() as client:
        total: int = client.get("/logs").json()["total"]
        return total


def status_lines(received: bytes) -> list[bytes]:
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def answer_on(sock: socket.socket, extra: bytes = b"") -> bytes:
    """A health request's answer on a kept-open connection."""
    sock.sendall(request("/v5/health", extra=extra))
    return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One answer to a health request: its JSON ends it (a 503's text, or the close)."""
    received = b""
    while not received.endswith(b"}") and b"Service Unavailable" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


# --- item 14: Content-Length with Transfer-Encoding -----------------------------------------


@pytest.mark.parametrize("order", ["length-first", "encoding-first"])
def test_content_length_with_transfer_encoding_is_refused_and_closed(
    server: RunningServer, order: str
) -> None:
    body = b'{"path": "smuggled"}'
    framing = [b"Content-Length: %d\r\n" % len(body), b"Transfer-Encoding: chunked\r\n"]
    if order == "encoding-first":
        framing.reverse()
    smuggling = (
        b"POST /v5/flows/log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + b"".join(framing)
        + b"\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    with connect(server) as sock:
        sock.sendall(smuggling + request("/v5/health"))  # a second request pipelined behind
        received = read_until_closed(sock)
    assert status_lines(received) == [b"HTTP/1.1 400 Bad Request"], received
    assert stored_logs(server) == 0


# --- item 15: header timeout ----------------------------------------------------------------


def trickle_until_answered(sock: socket.socket, head: bytes) -> tuple[bytes, float]:
    """Send the start of a request head, then one more header byte every TRICKLE_EVERY_S
    (never finishing it) until the server answers; the answer and the seconds it took."""
    started = time.monotonic()
    sock.sendall(head)
    while time.monotonic() - started < CLOSE_WAIT_S:
        readable, _, _ = select.select([sock], [], [], TRICKLE_EVERY_S)
        if readable:
            return read_until_closed(sock), time.monotonic() - started
        try:
            sock.sendall(b"x")
        except (BrokenPipeError, ConnectionResetError):
            return read_until_closed(sock), time.monotonic() - started
    pytest.fail("the server let a client trickle its headers for ever")


def test_a_client_trickling_its_headers_gets_408_after_the_timeout(server: RunningServer) -> None:
    with connect(server) as sock:
        answer, seconds = trickle_until_answered(sock, request("/v5/health")[:-2] + b"X-Slow: ")
    assert status_lines(answer) == [b"HTTP/1.1 408 Request Timeout"], answer
    assert b"connection: close" in answer
    # Trickled bytes do not extend the deadline: closed at the timeout, not later.
    assert HEADER_TIMEOUT_S * 0.9 <= seconds < HEADER_TIMEOUT_S + 5


def test_a_connection_that_sends_nothing_gets_408_after_the_timeout(server: RunningServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        answer = read_until_closed(sock)
        seconds = time.monotonic() - started
    assert status_lines(answer) == [b"HTTP/1.1 408 Request Timeout"]
    assert HEADER_TIMEOUT_S * 0.9 <= seconds < HEADER_TIMEOUT_S + 5


def _log_post(body: bytes, declared: int) -> bytes:
    return (
        b"POST /v5/flows/log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (declared, body)
    )


def test_a_client_trickling_its_body_gets_408_after_the_body_timeout(
    server: RunningServer,
) -> None:
    body = b'{"path": "slow/body", "log_id": "slow-body-1"}'
    with connect(server) as sock:
        # the head whole, then the body a byte at a time, never finished
        answer, seconds = trickle_until_answered(sock, _log_post(body[:5], len(body) + 100))
    assert status_lines(answer) == [b"HTTP/1.1 408 Request Timeout"], answer
    assert b"request body not received within" in answer and b"connection: close" in answer
    assert BODY_TIMEOUT_S * 0.9 <= seconds < BODY_TIMEOUT_S + 5
    # nothing of it was stored, and the server goes on serving
    with server.client() as client:
        assert client.get("/logs/slow-body-1").status_code == 404
        assert client.post("/flows/log", json={"path": "after/slow"}).status_code == 200


def test_a_body_still_trickling_after_its_answer_is_closed_without_a_second_one(
    server: RunningServer,
) -> None:
    """Refused before its body is read (a foreign Host: 403): the answer stands, and the
    connection is closed at the body's deadline, with no 408 after it."""
    head = _log_post(b"{", 100).replace(b"Host: 127.0.0.1", b"Host: evil.example")
    with connect(server) as sock:
        started = time.monotonic()
        answer, _ = trickle_until_answered(sock, head)
        answer += read_until_closed(sock)
        seconds = time.monotonic() - started
    assert status_lines(answer) == [b"HTTP/1.1 403 Forbidden"], answer
    assert BODY_TIMEOUT_S * 0.9 <= seconds < BODY_TIMEOUT_S + 5


def test_a_body_sent_in_parts_within_the_body_timeout_is_served(server: RunningServer) -> None:
    body = b'{"path": "parts/body"}'
    with connect(server) as sock:
        sock.sendall(_log_post(body[:5], len(body)))
        time.sleep(BODY_TIMEOUT_S / 4)  # a pause of the client, well within the deadline
        sock.sendall(body[5:])
        answer = sock.recv(65536)
    assert status_lines(answer) == [b"HTTP/1.1 200 OK"], answer


def test_a_slowloris_flood_is_closed_while_normal_clients_are_served(
    server: RunningServer,
) -> None:
    flood = [connect(server) for _ in range(SLOWLORIS_CONNECTIONS)]
    try:
        for sock in flood:
            sock.sendall(request("/v5/health")[:-2])
        started = time.monotonic()
        with server.client() as client:
            for _ in range(5):
                assert client.get("/health").status_code == 200
        answers = [read_until_closed(sock) for sock in flood]
        seconds = time.monotonic() - started
    finally:
        for sock in flood:
            sock.close()
    assert all(status_lines(a) == [b"HTTP/1.1 408 Request Timeout"] for a in answers)
    assert seconds < HEADER_TIMEOUT_S + 5


def test_the_deadline_is_per_request_head_not_per_connection(server: RunningServer) -> None:
    """A keep-alive connection lives longer than the timeout, and a head sent in pieces within
    it is served: only a head that takes too long is cut off."""
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(request("/v5/health")[:20])
            time.sleep(HEADER_TIMEOUT_S * 0.3)  # the client's own pace, within the timeout
            sock.sendall(request("/v5/health")[20:])
            assert status_lines(read_answer(sock)) == [b"HTTP/1.1 200 OK"]
            time.sleep(HEADER_TIMEOUT_S * 0.8)  # idle between requests: not the head's time


# --- item 15: the bound on connections ------------------------------------------------------


def test_connections_beyond_the_bound_get_503_and_admitted_ones_keep_working(
    bounded_server: RunningServer,
) -> None:
    admitted = [connect(bounded_server) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in admitted:  # each served, and kept open (keep-alive)
            assert status_lines(answer_on(sock)) == [b"HTTP/1.1 200 OK"]
        with connect(bounded_server) as extra:
            # While it is open the admitted keep being served (uvicorn's own limit would
            # refuse them too), and its own request is refused.
            for sock in admitted:
                assert status_lines(answer_on(sock)) == [b"HTTP/1.1 200 OK"]
            extra.sendall(request("/v5/health"))
            refused = read_until_closed(extra)
        assert status_lines(refused) == [b"HTTP/1.1 503 Service Unavailable"]
        # One leaves; a new connection takes its place.
        closing = admitted.pop()
        assert status_lines(answer_on(closing, b"Connection: close\r\n")) == [b"HTTP/1.1 200 OK"]
        assert read_until_closed(closing) == b""
    finally:
        for sock in admitted:
            sock.close()
    assert admitted_soon(bounded_server)


def admitted_soon(server: RunningServer) -> bool:
    """Whether a new connection is served once the server has seen one close. Nothing tells a
    client when the server has counted a closed connection out, so this asks a few times."""
    for _ in range(50):
        response = httpx.get(server.root_url + "/healthz", timeout=CLOSE_WAIT_S)
        if response.status_code == 200:
            return True
        assert response.status_code == 503
    return False
