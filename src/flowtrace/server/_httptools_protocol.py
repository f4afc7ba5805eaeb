"""uvicorn's httptools protocol with the guards of `_http_protocols` (imported only when
httptools is installed: the `server-fast` extra)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ._http_protocols import ConnectionLimits, HeadDeadline, refuse_unless_admitted, time_out

__all__ = ["GuardedHttpToolsProtocol"]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline = HeadDeadline(self.loop, self.limits.header_timeout, self._head_overdue)
        self._head_pending = False  # a request's first byte came, its head is not complete

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        refuse_unless_admitted(self, self.limits)
        self._deadline.start()

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
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.stop()
        super().connection_lost(exc)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_overdue(self) -> None:
        if not self._answering():  # never write into the middle of an answer
            time_out(self.transport, self.limits)
