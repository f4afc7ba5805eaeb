"""A network backend for httpcore whose open connections another thread can interrupt: at exit,
a request blocked on a hung server must end now, not when its timeout runs out, so that no
thread of flowtrace is inside the network while the interpreter finalizes.

`InterruptibleBackend` is httpcore's own `SyncBackend`, keeping the streams it opened (and the
TLS streams they became); `interrupt()` shuts their sockets down, which makes a blocked read
or write fail at once, and does so for good: a connection opened afterwards (one that was being
made meanwhile) is shut down as it opens. A DNS lookup in progress cannot be interrupted: it
ends on its own.

Its streams also send each request in one piece. httpcore writes a request's head, its body
and its end separately, and every write to a socket is a system call and, on the other side
(often a local server sharing the machine's cores), one more wake-up and one more read: the
head alone in one segment and the body in the next cost both sides more than the request's
JSON does (issue 13: about a third of the client's CPU per request). So writes are held until
the request is all there (the empty write of its end, or a read, or `_FLUSH_AT` bytes), then
go out as one.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import httpcore

__all__ = ["InterruptibleBackend", "install_on"]

#: Held writes go out once they reach this size, whatever follows (a long streamed body).
_FLUSH_AT = 256 * 1024


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: InterruptibleBackend) -> None:
        self._inner = inner
        self._backend = backend
        self._held: list[bytes] = []  # written, not sent yet
        self._held_bytes = 0
        self._held_timeout: float | None = None
        backend.opened(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._held:
            # As httpcore does with a write that failed: the server may have answered already
            # (and closed early); the read says what became of the request.
            with contextlib.suppress(httpcore.WriteError):
                self._flush()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._held.append(buffer)
            self._held_bytes += len(buffer)
            self._held_timeout = timeout
            if self._held_bytes < _FLUSH_AT:
                return
        # The request's end (httpcore's empty write) or enough to send now.
        if self._held:
            self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, []
        self._held_bytes = 0
        self._inner.write(held[0] if len(held) == 1 else b"".join(held), self._held_timeout)

    def close(self) -> None:
        self._held = []
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shut_down(self) -> None:
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class InterruptibleBackend(httpcore.SyncBackend):
    def __init__(self) -> None:
        super().__init__()
        self._streams: weakref.WeakSet[_Stream] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._interrupted = False

    def opened(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)
            interrupted = self._interrupted
        if interrupted:
            stream.shut_down()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        inner = super().connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(inner, self)

    def interrupt(self) -> None:
        """From any thread, for good: every connection this backend opened, or opens, fails
        its next (or current) read or write."""
        with self._lock:
            self._interrupted = True
            streams = list(self._streams)
        for stream in streams:
            stream.shut_down()


def install_on(client: Any) -> InterruptibleBackend | None:
    """Give the httpx client's own connection pool (proxies from the environment and all) an
    interruptible backend; None where this httpx keeps its pool elsewhere (no interruption
    then: the requests' timeouts still bound them)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    if pool is None or not hasattr(pool, "_network_backend"):
        return None
    if not isinstance(pool._network_backend, httpcore.SyncBackend):
        return None
    backend = InterruptibleBackend()
    pool._network_backend = backend
    return backend
