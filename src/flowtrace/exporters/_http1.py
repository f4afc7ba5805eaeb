"""A lean HTTP/1.1 keep-alive sender for the per-log requests of `HttpExporter` (issue 13).

The per-log fallback costs one request per log, so a request's fixed CPU is its rate. Through
httpx and httpcore a request cost ~1 ms of CPU on a small virtual machine (httpcore's pool
alone ~0.55 ms: its lock, its state machines, h11's event objects), several times what the
request needs. This sender does only what these requests need:

- a request is one prebuilt head (method, target, the client's headers, `Content-Length`)
  and the body, sent in one `sendall`;
- idle connections are kept in a list (`pop` and `append` are atomic: no lock), so each of
  the exporter's sending threads takes one, uses it and gives it back; at most as many open
  as requests were in flight at once;
- the answer is read whole: `Content-Length`, chunked, or up to the close; 1xx skipped.

Where it applies: plain `http://` without a proxy from the environment (the exporter keeps
httpx for https, for proxies and for an injected transport, and for everything but the
per-log requests). It keeps httpx's behaviour where the exporter relies on it: the same
timeouts per operation (connect, write, read), the same exception types (`httpx.ConnectError`,
`httpx.ReadTimeout`, ...), and at exit `interrupt()` ends blocked requests at once, for good.

A kept connection the server closed while it was idle (its keep-alive timeout) is found
before it is reused (it reads as ready: EOF) and dropped. If the server closes it in the
instant between that check and the request, the request gets no answer at all: a create is
then sent once more on a new connection (a create replayed is answered as the original, 200,
by its `log_id`: the contract's replay identity), anything else fails as a transport error
and the pipeline retries it later (an update applied twice may be refused, 409).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import weakref
import zlib
from collections.abc import Mapping
from typing import Any, overload
from urllib.parse import urlencode

import httpx

__all__ = ["Http1Sender", "WireResponse", "sender_for"]

_RECV = 65536
_HEAD_END = b"\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})
_HAS_POLL = hasattr(select, "poll")


class WireResponse:
    """An answer read whole: what the exporter asks of an `httpx.Response`."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = _Headers(headers)
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Headers:
    """Response headers by lowercase name (the last value of a repeated one, except that
    `Set-Cookie` and the like are of no interest here)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name.lower(), default)


class _Refused(Exception):
    """The connection gave no answer at all (closed or reset before the first byte)."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.used = False  # has answered a request: a kept connection, maybe stale

    def is_stale(self) -> bool:
        """Readable while idle: the server closed it (or sent something unasked)."""
        try:
            if _HAS_POLL:  # no limit on the descriptor's number, as select() has (1024)
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def exchange(self, data: bytes, timeout: httpx.Timeout) -> tuple[WireResponse, bool]:
        """Send one request, read its answer; and whether the connection may be kept."""
        try:
            self.sock.settimeout(timeout.write)
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            # The server may have answered and closed early (a 413 for a long body): the
            # read says what became of the request, as httpcore does.
            with contextlib.suppress(httpx.TransportError, _Refused):
                return self._read(timeout.read)
            raise _Refused(httpx.WriteError(str(exc) or type(exc).__name__)) from exc
        return self._read(timeout.read)

    def _read(self, timeout: float | None) -> tuple[WireResponse, bool]:
        self.sock.settimeout(timeout)
        buffer = b""
        while True:
            head_end = buffer.find(_HEAD_END)
            while head_end < 0:
                chunk = self._recv(first=not buffer)
                if not chunk:
                    if not buffer:
                        raise _Refused(
                            httpx.RemoteProtocolError(
                                "Server disconnected without sending a response."
                            )
                        )
                    raise httpx.RemoteProtocolError("Server disconnected mid-answer.")
                buffer += chunk
                head_end = buffer.find(_HEAD_END)
            status, version, headers = _parse_head(buffer[:head_end])
            buffer = buffer[head_end + 4 :]
            if 100 <= status < 200 and status != 101:
                continue  # an interim answer (100 Continue): the real one follows
            break
        content, leftover, closed = self._body(status, headers, buffer)
        keep = (
            not closed
            and not leftover
            and headers.get("connection", "").lower() != "close"
            and (version == "HTTP/1.1" or headers.get("connection", "").lower() == "keep-alive")
        )
        encoding = headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            content = _decompress(content, encoding)
        self.used = True
        return WireResponse(status, headers, content), keep

    def _body(
        self, status: int, headers: dict[str, str], buffer: bytes
    ) -> tuple[bytes, bytes, bool]:
        """The body, what came after it, and whether the server closed the connection."""
        if status in _NO_BODY_STATUSES:
            return b"", buffer, False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked(buffer)
        length = headers.get("content-length")
        if length is None:  # delimited by the close
            chunks = [buffer]
            while chunk := self._recv():
                chunks.append(chunk)
            return b"".join(chunks), b"", True
        try:
            size = int(length)
        except ValueError:
            raise httpx.RemoteProtocolError(f"malformed Content-Length {length!r}") from None
        while len(buffer) < size:
            chunk = self._recv()
            if not chunk:
                raise httpx.RemoteProtocolError("Server disconnected mid-answer.")
            buffer += chunk
        return buffer[:size], buffer[size:], False

    def _chunked(self, buffer: bytes) -> tuple[bytes, bytes, bool]:
        parts: list[bytes] = []
        while True:
            line_end = buffer.find(b"\r\n")
            while line_end < 0:
                buffer = self._more(buffer)
                line_end = buffer.find(b"\r\n")
            try:
                size = int(buffer[:line_end].split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError("malformed chunked answer") from None
            buffer = buffer[line_end + 2 :]
            if size == 0:
                trailer_end = buffer.find(b"\r\n")
                while trailer_end != 0 and buffer.find(_HEAD_END) < 0:
                    buffer = self._more(buffer)
                    trailer_end = buffer.find(b"\r\n")
                end = 2 if trailer_end == 0 else buffer.find(_HEAD_END) + 4
                return b"".join(parts), buffer[end:], False
            while len(buffer) < size + 2:
                buffer = self._more(buffer)
            parts.append(buffer[:size])
            buffer = buffer[size + 2 :]

    def _more(self, buffer: bytes) -> bytes:
        chunk = self._recv()
        if not chunk:
            raise httpx.RemoteProtocolError("Server disconnected mid-answer.")
        return buffer + chunk

    def _recv(self, first: bool = False) -> bytes:
        try:
            return self.sock.recv(_RECV)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            error = httpx.ReadError(str(exc) or type(exc).__name__)
            if first:  # reset before any answer: as good as closed unanswered
                raise _Refused(error) from exc
            raise error from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


def _decompress(content: bytes, encoding: str) -> bytes:
    try:
        return zlib.decompress(content, 16 + zlib.MAX_WBITS if encoding == "gzip" else 0)
    except zlib.error as exc:
        raise httpx.DecodingError(f"{encoding} answer: {exc}") from None


class Http1Sender:
    """Requests to one `http://host:port[/base]`, over kept connections."""

    def __init__(
        self, host: str, port: int, base_path: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """`headers`: every header line but `Content-Length`, as sent (`Host` included)."""
        self._address = (host, port)
        self._base_path = base_path.rstrip("/")
        self._fixed_head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self._idle: list[_Connection] = []
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()  # opening and interrupting only, never per request
        self._interrupted = False
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        content: bytes,
        timeout: httpx.Timeout,
        params: Mapping[str, str] | None = None,
        *,
        resend_unanswered: bool = False,
    ) -> WireResponse:
        """One request, its answer read whole; raises httpx's transport errors.
        `resend_unanswered`: the request may be sent once more on a new connection when a
        kept one closed without a word (see the module's docstring)."""
        target = self._base_path + path
        if params:
            target += "?" + urlencode(params)
        data = (
            f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
            + self._fixed_head
            + b"Content-Length: %d\r\n\r\n" % len(content)
            + content
        )
        connection = self._take(timeout)
        try:
            return self._exchange(connection, data, timeout)
        except _Refused as refused:
            if not (connection.used and resend_unanswered):
                raise refused.error from None
        # A kept connection the server had closed: once more, on a new one.
        connection = self._connect(timeout)
        try:
            return self._exchange(connection, data, timeout)
        except _Refused as refused:
            raise refused.error from None

    def _exchange(
        self, connection: _Connection, data: bytes, timeout: httpx.Timeout
    ) -> WireResponse:
        try:
            response, keep = connection.exchange(data, timeout)
        except BaseException:
            self._discard(connection)
            raise
        if keep and not self._closed and not self._interrupted:
            self._idle.append(connection)
        else:
            self._discard(connection)
        return response

    def _take(self, timeout: httpx.Timeout) -> _Connection:
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return self._connect(timeout)
            if not connection.is_stale():
                return connection
            self._discard(connection)

    def _connect(self, timeout: httpx.Timeout) -> _Connection:
        if self._interrupted:
            raise httpx.ConnectError("interrupted: the process is exiting")
        try:
            sock = socket.create_connection(self._address, timeout=timeout.connect)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        with self._lock:
            self._open.add(connection)
            interrupted = self._interrupted
        if interrupted:  # opened while being interrupted: shut down as it opens
            _shut_down(connection.sock)
        return connection

    def _discard(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)
        connection.close()

    def interrupt(self) -> None:
        """From any thread, for good: every connection open, or opening, fails its next (or
        current) read or write."""
        with self._lock:
            self._interrupted = True
            connections = list(self._open)
        for connection in connections:
            _shut_down(connection.sock)

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def sender_for(client: httpx.Client, base_url: str) -> Http1Sender | None:
    """A sender for the client's per-log requests to `base_url`, where it can stand in for the
    client: plain http, no user info, and no proxy from the environment for that URL (the
    client's transport for it is its own). None elsewhere: the client sends them."""
    url = httpx.URL(base_url)
    if url.scheme != "http" or url.userinfo or not url.host:
        return None
    if client._transport_for_url(url) is not client._transport:
        return None  # a proxy applies
    # The client's headers as it sends them, but no compression asked for (nothing to decode
    # for a few hundred bytes of JSON) and keep-alive as HTTP/1.1's default.
    skipped = {b"host", b"content-length", b"accept-encoding", b"connection"}
    headers = [(b"Host", url.netloc)]
    headers += [(name, value) for name, value in client.headers.raw if name.lower() not in skipped]
    return Http1Sender(url.host, url.port or 80, url.path, headers)
