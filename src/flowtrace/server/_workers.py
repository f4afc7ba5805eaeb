"""`flowtrace serve --workers N`: N server processes on one port.

The supervisor binds the listening socket, then forks the workers; each opens its own store
(connections never cross a fork) and serves the shared socket, the kernel spreading
connections over the workers that accept. The supervisor itself opens no store and starts no
thread before forking: a forked child holds no half-taken lock.

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

__all__ = ["bind_listener", "supervise"]

logger = logging.getLogger("flowtrace.server")

# A worker's serve function: it serves `sock`, calls `ready()` once listening, returns its
# exit code.
ServeOne = Callable[[socket.socket, Callable[[], None]], int]
_POLL_S = 0.5
_BACKLOG = 2048


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Supervisor:
    def __init__(self, workers: int, sock: socket.socket, serve_one: ServeOne) -> None:
        self._workers = workers
        self._sock = sock
        self._serve_one = serve_one
        self._ready_r, self._ready_w = os.pipe()
        self._children: dict[int, bool] = {}  # pid -> has said it listens
        self._stopping = False

    def _fork(self) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(self._ready_r)
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                code = self._serve_one(self._sock, self._say_ready)
            except BaseException as error:  # reported; the supervisor sees the exit code
                print(f"flowtrace serve: worker failed: {error}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        self._children[pid] = False

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
            for _ in range(self._workers):
                self._fork()
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
                    announce(_url(self._sock))
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
            if self._stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if not listened:
                failed = True
                self._on_signal(signal.SIGTERM, None)
                continue
            logger.warning("flowtrace serve: worker %d ended (%d); starting another", pid, code)
            print(f"flowtrace serve: worker {pid} ended ({code}); starting another", flush=True)
            self._fork()
        return failed


def supervise(
    workers: int, sock: socket.socket, serve_one: ServeOne, announce: Callable[[str], None]
) -> int:
    """Run `workers` processes of `serve_one` on `sock` until SIGTERM/SIGINT; exit code."""
    return _Supervisor(workers, sock, serve_one).run(announce)
