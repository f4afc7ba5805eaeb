"""A network backend for httpcore whose open connections another thread can interrupt: at exit,
a request blocked on a hung server must end now, not when its timeout runs out, so that no
thread of flowtrace is inside the network while the interpreter finalizes.

`InterruptibleBackend` is httpcore's own `SyncBackend`, keeping the streams it opened (and the
TLS streams they became); `interrupt()` shuts their sockets down, which makes a blocked read
or write fail at once, and does so for good: a connection opened afterwards (one that was being
made meanwhile) is shut down as it opens. A DNS lookup in progress cannot be interrupted: it
ends on its own.
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


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: InterruptibleBackend) -> None:
        self._inner = inner
        self._backend = backend
        backend.opened(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
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
