"""`flowtrace serve --workers N`: N server processes on one port.

The supervisor binds one listening socket per worker on the one port (SO_REUSEPORT: the kernel
spreads new connections evenly over them; one socket shared by all measured 20 s of CPU on one
worker against 8 on the other, the first to accept taking most), then forks the workers; each
opens its own store (connections never cross a fork) and serves its socket. A worker that dies
is replaced on the same socket, which the supervisor keeps open: connections queued on it
meanwhile wait in its backlog instead of being refused. The supervisor itself opens no store
and starts no thread before forking: a forked child holds no half-taken lock.

It says "serving" once every worker is listening, forwards SIGTERM/SIGINT to them (each
finishes its in-flight requests), and replaces a worker that died while serving (killed, out of
memory): the others never stopped serving meanwhile. A worker that fails before it listens
(the database unreachable, a newer schema) ends the whole server with exit code 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

__all__ = ["bind_listeners", "supervise"]

logger = logging.getLogger("flowtrace.server")

# A worker's serve function: it serves `sock`, calls `ready()` once listening, returns its
# exit code.
ServeOne = Callable[[socket.socket, Callable[[], None]], int]
_POLL_S = 0.5
_BACKLOG = 2048


def bind_listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port (port 0: a free one, the same for all)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(_BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Supervisor:
    def __init__(self, sockets: list[socket.socket], serve_one: ServeOne) -> None:
        self._workers = len(sockets)
        self._sockets = sockets
        self._serve_one = serve_one
        self._ready_r, self._ready_w = os.pipe()
        self._children: dict[int, bool] = {}  # pid -> has said it listens
        self._slots: dict[int, int] = {}  # pid -> the index of its socket
        self._stopping = False

    def _fork(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(self._ready_r)
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                code = self._serve_one(self._sockets[slot], self._say_ready)
            except BaseException as error:  # reported; the supervisor sees the exit code
                print(f"flowtrace serve: worker failed: {error}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        self._children[pid] = False
        self._slots[pid] = slot

    def _say_ready(self) -> None:
        os.write(self._ready_w, os.getpid().to_bytes(4, "little"))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def run(self, announce: Callable[[str], None]) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(self._workers):
                self._fork(slot)
            announced = False
            failed = False
            while self._children:
                readable, _, _ = select.select([self._ready_r], [], [], _POLL_S)
                if readable:
                    data = os.read(self._ready_r, 4096)
                    for start in range(0, len(data) - 3, 4):
                        pid = int.from_bytes(data[start : start + 4], "little")
                        if pid in self._children:
                            self._children[pid] = True
                everyone = len(self._children) == self._workers and all(self._children.values())
                if not announced and everyone:
                    announce(_url(self._sockets[0]))
                    announced = True
                failed = self._reap() or failed
            return 1 if failed else 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._ready_r)
            os.close(self._ready_w)

    def _reap(self) -> bool:
        """Collect workers that ended; replace one that died while serving. True when one
        failed before listening (the server then stops)."""
        failed = False
        while self._children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return failed
            listened = self._children.pop(pid, False)
            slot = self._slots.pop(pid, 0)
            if self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not listened:
                failed = True
                self._on_signal(signal.SIGTERM, None)
                continue
            logger.warning("flowtrace serve: worker %d ended (%d); starting another", pid, code)
            print(f"flowtrace serve: worker {pid} ended ({code}); starting another", flush=True)
            self._fork(slot)
        return failed


def supervise(
    sockets: list[socket.socket], serve_one: ServeOne, announce: Callable[[str], None]
) -> int:
    """Run one process of `serve_one` per socket until SIGTERM/SIGINT; the exit code."""
    return _Supervisor(sockets, serve_one).run(announce)
