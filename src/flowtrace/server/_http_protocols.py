"""uvicorn's HTTP protocols with the guards that belong to the HTTP layer: a deadline for each
request head, a bound on the connections served, and (h11) a close after ambiguous framing.

Why subclasses of uvicorn's protocols. uvicorn only times out idle keep-alive connections: its
timer runs between requests and stops at the first byte of the next one, so a client that
sends a head a byte at a time (slowloris), or connects and sends nothing, holds a connection
for ever. uvicorn has no option for this, and a guard outside the protocol (around the
transport or the event loop) sees bytes but not where a request's head ends. The protocol
knows: h11's `their_state` leaves IDLE, httptools calls `on_headers_complete`. So the deadline
lives there: started when a connection opens and when the first byte of a later request
arrives, stopped when the head is complete, never extended by trickled bytes. When it passes
the client gets 408 and the connection is closed. A body has a deadline of its own
(`body_timeout`), from the end of its head to its last byte: past it the client gets 408 (if
nothing was answered yet) and the connection is closed, which the app's `receive()` sees as a
disconnect.

The bound. uvicorn's own `limit_concurrency` answers 503 to every request while the server
holds that many connections, on every connection: a flood of new connections would turn away
the clients already being served too. Here a connection is admitted or not when it opens:
while `max_connections` others are open, its request is answered 503 and it is closed, by
uvicorn's own code for its limit (the connection's `limit_concurrency` set to 0, which is
always reached). Admitted connections are never refused for others' sake, and a refused one
that never completes its head is closed by the deadline: it holds a socket for at most
`header_timeout` seconds.

Framing (RFC 9112 §6.1). A request with both Content-Length and Transfer-Encoding must not
leave its connection open, or a proxy in front and this server may disagree on where the next
request begins (request smuggling). httptools (llhttp) refuses it: 400, connection closed. h11
reads it by its Transfer-Encoding and keeps the connection, so the h11 connection here raises
the protocol error h11 raises for any malformed head, and uvicorn answers 400 and closes, as
it does under httptools.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = [
    "ConnectionLimits",
    "Deadline",
    "guarded_protocol",
    "open_connection",
    "time_out",
    "time_out_body",
]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int
    body_timeout: float
    timeout_answer: bytes = field(init=False)
    body_timeout_answer: bytes = field(init=False)

    def __post_init__(self) -> None:
        heads = f"request headers not received within {self.header_timeout:g} s"
        body = f"request body not received within {self.body_timeout:g} s"
        object.__setattr__(self, "timeout_answer", _timeout_answer(heads))
        object.__setattr__(self, "body_timeout_answer", _timeout_answer(body))

    def admits(self, open_connections: int) -> bool:
        """Whether a connection that just opened (and is counted) is served."""
        return open_connections <= self.max_connections


class Deadline:
    """One connection's deadline for a request's head, or for its body."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, overdue: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._seconds = seconds
        self._overdue = overdue
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the clock, unless it runs already (trickled bytes do not extend it)."""
        if self._timer is None:
            self._timer = self._loop.call_later(self._seconds, self._expire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._overdue()


def _timeout_answer(why: str) -> bytes:
    text = f"{why}\n".encode()
    head = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(text)
    )
    return head + text


class _Cycle(Protocol):
    response_started: bool


def time_out_body(
    transport: asyncio.Transport, cycle: _Cycle | None, limits: ConnectionLimits
) -> None:
    """A body past its deadline: 408 unless an answer has begun, and close (the app's
    `receive()` then says the client disconnected)."""
    if transport.is_closing():
        return
    if cycle is None or not cycle.response_started:
        transport.write(limits.body_timeout_answer)
    transport.close()


def time_out(transport: asyncio.Transport, limits: ConnectionLimits) -> None:
    """408 and close, on a connection that is between responses (nothing else is written)."""
    if not transport.is_closing():
        transport.write(limits.timeout_answer)
        transport.close()


class _UvicornProtocol(Protocol):
    loop: asyncio.AbstractEventLoop
    connections: set[Any]  # the server's open connections, this one included
    limit_concurrency: int | None


def open_connection(
    protocol: _UvicornProtocol, limits: ConnectionLimits, overdue: Callable[[], None]
) -> Deadline:
    """At `connection_made`: admit the connection or not, and start the clock for its first
    request's head (`overdue` runs when it passes)."""
    if not limits.admits(len(protocol.connections)):
        # uvicorn answers a request 503 and closes its connection when
        # `len(connections) >= limit_concurrency`, which 0 always is.
        protocol.limit_concurrency = 0
    deadline = Deadline(protocol.loop, limits.header_timeout, overdue)
    deadline.start()
    return deadline


class _StrictFramingConnection(h11.Connection):
    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                raise h11.RemoteProtocolError(
                    "both Content-Length and Transfer-Encoding", error_status_hint=400
                )
        return event


class GuardedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]
    _deadline: Deadline

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._body_deadline = Deadline(self.loop, self.limits.body_timeout, self._body_overdue)
        size = config.h11_max_incomplete_event_size
        self.conn = (
            _StrictFramingConnection(h11.SERVER)
            if size is None
            else _StrictFramingConnection(h11.SERVER, max_incomplete_event_size=size)
        )

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._deadline = open_connection(self, self.limits, self._head_overdue)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # a head has begun and is not complete
            self._deadline.start()
        else:
            self._deadline.stop()
        if state is h11.SEND_BODY:  # a head is complete, its body is not
            self._body_deadline.start()
        else:
            self._body_deadline.stop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.stop()
        self._body_deadline.stop()
        super().connection_lost(exc)

    def _head_overdue(self) -> None:
        if self.conn.their_state is h11.IDLE:
            time_out(self.transport, self.limits)

    def _body_overdue(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            time_out_body(self.transport, self.cycle, self.limits)


def guarded_protocol(
    *, httptools: bool, header_timeout: float, body_timeout: float, max_connections: int
) -> type[asyncio.Protocol]:
    """uvicorn's httptools or h11 protocol class, with these limits (for uvicorn's `http`)."""
    limits = ConnectionLimits(header_timeout, max_connections, body_timeout)
    base: type[asyncio.Protocol]
    if httptools:  # imported only now: httptools is an optional dependency
        from ._httptools_protocol import GuardedHttpToolsProtocol

        base = GuardedHttpToolsProtocol
    else:
        base = GuardedH11Protocol
    return type(base.__name__, (base,), {"limits": limits})
