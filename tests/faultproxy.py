"""A small HTTP/1.1 proxy that injects faults in front of a real server, for delivery tests.

    proxy = FaultProxy("127.0.0.1", server_port).start()
    proxy.script(Respond(503), Respond(503))        # the next two requests get 503
    proxy.down(); ...; proxy.up()                   # connections refused, then accepted again
    proxy.hang_up()                                 # open connections closed (FIN)
    proxy.requests                                  # every request seen, with its time

Actions apply to one request each, in order; when the script is empty, requests are forwarded.
`when(path_part, action)` scripts requests whose path contains `path_part` only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["FaultProxy", "Forward", "Hang", "ResetAfterForward", "Respond", "SeenRequest"]


@dataclass(frozen=True)
class SeenRequest:
    at: float  # time.monotonic() when the request was fully received
    method: str
    path: str
    body: bytes


@dataclass(frozen=True)
class Forward:
    """Pass the request to the server and its answer back."""


@dataclass(frozen=True)
class Respond:
    """Answer without asking the server."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (until the proxy stops)."""


@dataclass(frozen=True)
class ResetAfterForward:
    """Forward the request (the server applies it), then reset the connection unanswered."""


Action = Forward | Respond | Hang | ResetAfterForward

_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.requests: list[SeenRequest] = []
        self.port = 0
        self._script: list[tuple[str | None, Action]] = []
        self._default: Action = Forward()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()

    # --- control -------------------------------------------------------------------------
    @classmethod
    def in_front_of(cls, root_url: str) -> FaultProxy:
        """A started proxy to the server at `root_url` (`http://host:port`)."""
        address = urlsplit(root_url)
        return cls(address.hostname or "127.0.0.1", address.port or 80).start()

    def start(self) -> FaultProxy:
        self._listen()
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v5"

    def script(self, *actions: Action) -> None:
        with self._lock:
            self._script.extend((None, action) for action in actions)

    def when(self, path_part: str, *actions: Action) -> None:
        """The next requests whose path contains `path_part` get `actions`, one each."""
        with self._lock:
            self._script.extend((path_part, action) for action in actions)

    def set_default(self, action: Action) -> None:
        with self._lock:
            self._default = action

    def down(self) -> None:
        """Refuse connections (nothing listens) and drop the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would not
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._close_connections()

    def hang_up(self) -> None:
        """Close the open connections cleanly (FIN), as a server's keep-alive timeout closes
        idle ones; new connections are still accepted."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        self._listen()

    def stop(self) -> None:
        self._stopped.set()
        self.down()

    def seen(self, path_part: str = "") -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if path_part in r.path]

    # --- serving -------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _close_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _reset(connection)

    def _next_action(self, path: str) -> Action:
        with self._lock:
            for index, (part, action) in enumerate(self._script):
                if part is None or part in path:
                    del self._script[index]
                    return action
            return self._default

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        upstream_reader: _Reader | None = None
        reader = _Reader(client)
        try:
            while True:
                request = reader.read_message()
                if request is None:
                    return
                head, body = request
                method, path = head.split(b" ", 2)[:2]
                seen = SeenRequest(time.monotonic(), method.decode(), path.decode(), body)
                with self._lock:
                    self.requests.append(seen)
                action = self._next_action(seen.path)
                if isinstance(action, Respond):
                    client.sendall(_response(action))
                    continue
                if isinstance(action, Hang):
                    self._stopped.wait()
                    return
                if upstream is None or upstream_reader is None:
                    upstream = socket.create_connection(self.upstream)
                    upstream_reader = _Reader(upstream)
                upstream.sendall(head + body)
                answer = upstream_reader.read_message()
                if answer is None:
                    return
                if isinstance(action, ResetAfterForward):
                    _reset(client)
                    return
                client.sendall(answer[0] + answer[1])
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(client)
            client.close()
            if upstream is not None:
                upstream.close()


class _Reader:
    """Reads whole HTTP/1.1 messages (head, body) from a socket: Content-Length or chunked."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        if not data:
            return False
        self._buffer += data
        return True

    def _take(self, count: int) -> bytes | None:
        while len(self._buffer) < count:
            if not self._fill():
                return None
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _line(self) -> bytes | None:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                return None
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_message(self) -> tuple[bytes, bytes] | None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                return None
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        head += b"\r\n\r\n"
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            return self._chunked(head)
        body = self._take(int(headers.get(b"content-length", b"0") or 0))
        return None if body is None else (head, body)

    def _chunked(self, head: bytes) -> tuple[bytes, bytes] | None:
        raw = b""
        while True:
            size_line = self._line()
            if size_line is None:
                return None
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            chunk = self._take(size + 2)
            if chunk is None:
                return None
            raw += chunk
            if size == 0:
                return head, raw


def _response(action: Respond) -> bytes:
    headers = {
        "Content-Type": "application/json",
        **action.headers,
        "Content-Length": str(len(action.body)),
    }
    lines = [f"HTTP/1.1 {action.status} {_REASONS.get(action.status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + action.body


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', not a clean close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
