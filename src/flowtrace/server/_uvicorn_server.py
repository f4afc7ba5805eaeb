"""A uvicorn server that says where it listens once it does (port 0 picks a free port)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

__all__ = ["AnnouncingServer"]


class AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, announce: Callable[[str], None]) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._announce(self.url)

    @property
    def url(self) -> str:
        """`http://HOST:PORT` of the first listening socket (valid once started)."""
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
