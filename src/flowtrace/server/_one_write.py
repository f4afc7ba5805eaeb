"""A response's head and body in one write: one segment, one wake-up and one read for the client.

uvicorn's httptools cycle writes a response's head (status line and headers) as soon as the app
starts it, and its body when the app sends it, a moment later in the same turn of the loop: two
system calls here, two segments on the wire, and a client that reads the head alone waits and is
woken again for the body. On a small virtual machine every one of those costs more than the
answer's JSON (issue 13: one request per log makes it the per-log rate). `OneWriteTransport`
stands between a cycle and the connection's transport: it holds the head until the next write
(the body, or its first chunk) and sends both as one: uvicorn writes a body after every head
but HEAD's (even an empty one), so the protocol gives HEAD's cycles none of this. What could
come before the head (a `100 Continue`) is never held; a head the cycle leaves without a body
(an app that failed midway) goes out as the cycle closes the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

__all__ = ["OneWriteTransport"]


class _Cycle(Protocol):
    response_started: bool


class OneWriteTransport:
    def __init__(self, transport: asyncio.Transport, cycle: _Cycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes) -> None:
        if not self._head_seen and self._cycle.response_started:
            # The cycle marks its answer started, then writes the head: this write.
            self._head_seen = True
            self._head = data
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def close(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's
        return getattr(self._transport, name)
