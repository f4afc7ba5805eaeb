"""uvicorn's httptools protocol with the guards of `_http_protocols` (imported only when
httptools is installed: the `server-fast` extra)."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._http_protocols import (
    ConnectionLimits,
    Deadline,
    open_connection,
    time_out,
    time_out_body,
)
from ._one_write import OneWriteTransport

__all__ = ["GuardedHttpToolsProtocol"]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]
    _deadline: Deadline
    _head_pending = False  # a request's first byte came, its head is not complete

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        self._deadline = open_connection(self, self.limits, self._head_overdue)
        self._body_deadline = Deadline(self.loop, self.limits.body_timeout, self._body_overdue)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A head pipelined behind a request being answered waits (reading is paused); its
        # clock starts once that answer is out and more of it arrives.
        if self._head_pending and not self._answering():
            self._deadline.start()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._deadline.stop()
        self._body_deadline.start()  # stopped by the body's end (at once, for no body)
        super().on_headers_complete()
        cycle = self.cycle
        # A new request's cycle (not one that answers HEAD: uvicorn writes no body after its
        # head, and a held head would wait for the connection's close).
        if (
            cycle is not None
            and cycle.transport is self.transport
            and self.scope["method"] != "HEAD"
        ):
            cycle.transport = OneWriteTransport(self.transport, cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._body_deadline.stop()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.stop()
        self._body_deadline.stop()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _body_overdue(self) -> None:
        time_out_body(self.transport, self.cycle, self.limits)

    def _head_overdue(self) -> None:
        if not self._answering():  # never write into the middle of an answer
            time_out(self.transport, self.limits)
