"""Real flowtrace servers for tests: a subprocess (`start_server`) or a thread (`serve_in_thread`).

Both listen on a free loopback port (port 0, read back from the server), so tests never race
each other for ports. Use them directly or through the fixtures at the bottom (import the
fixture into your test module, or list `"tests.serverutil"` in `pytest_plugins`).

A test that needs a server but not its start or stop takes one from `shared_servers` (a
fixture of every module, see conftest): the module's tests share an in-process server per
set of app options, each test serving a fresh store of its own through it.

    from tests.serverutil import start_server

    with start_server(tmp_path / "db.sqlite") as server:
        with server.client() as client:          # base_url /v5, X-API-KEY set
            client.post("/flows/log", json={"path": "demo"})
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import uvicorn

from flowtrace.server._app import create_app
from flowtrace.server._uvicorn_server import AnnouncingServer
from flowtrace.store import Store

__all__ = [
    "DEFAULT_API_KEY",
    "InProcessServer",
    "RunningServer",
    "SharedServer",
    "SharedServers",
    "app_server",
    "serve_in_thread",
    "server",
    "shared_servers",
    "start_server",
]

DEFAULT_API_KEY = "test-key"
# Bounds on waiting for a server to come up or go down, seconds (generous for a busy CI box).
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 60.0

_SRC = Path(__file__).resolve().parents[1] / "src"
_SERVING_LINE = re.compile(r"flowtrace serving on (http://\S+) \(db: ")


class _ServerBase:
    root_url: str
    api_key: str | None
    db_path: Path

    @property
    def base_url(self) -> str:
        """The contract's `{base}`: `http://127.0.0.1:PORT/v5`."""
        return self.root_url + "/v5"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-KEY": self.api_key} if self.api_key else {}

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on `base_url` sending the API key."""
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(base_url=self.base_url, headers=self.headers, **kwargs)

    def stored_log(self, log_id: str) -> dict[str, Any]:
        """The stored log `log_id`, as `GET /logs/{id}` answers it (asserted found)."""
        with self.client() as client:
            answer = client.get(f"/logs/{log_id}")
        assert answer.status_code == 200, answer.text
        record: dict[str, Any] = answer.json()
        return record


class RunningServer(_ServerBase):
    """`python -m flowtrace.server serve` in a subprocess."""

    def __init__(
        self, process: subprocess.Popen[bytes], root_url: str, api_key: str | None, db_path: Path
    ) -> None:
        self.process = process
        self.root_url = root_url
        self.api_key = api_key
        self.db_path = db_path

    def stop(self) -> int:
        """Graceful: SIGTERM, then wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self._wait()

    def kill(self) -> int:
        """Abrupt: SIGKILL, as a crash would be."""
        if self.process.poll() is None:
            self.process.kill()
        return self._wait()

    def _wait(self) -> int:
        code = self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_server(
    db_path: Path,
    *,
    api_keys: Sequence[str] = (DEFAULT_API_KEY,),
    extra_args: Sequence[str] = (),
) -> RunningServer:
    """Start a server process on `db_path`; returns once it accepts connections."""
    command = [sys.executable, "-m", "flowtrace.server", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--db", str(db_path)]
    for key in api_keys:
        command += ["--api-key", key]
    command += list(extra_args)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=_child_env())
    try:
        root_url = _read_serving_url(process)
    except BaseException:
        process.kill()
        process.wait(timeout=SHUTDOWN_TIMEOUT)
        raise
    return RunningServer(process, root_url, api_keys[0] if api_keys else None, db_path)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FLOWTRACE_SERVER_API_KEYS", None)  # only the keys the test asked for
    # This checkout's sources win over any installed flowtrace, whatever the cwd.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), env.get("PYTHONPATH")]))
    return env


def _read_serving_url(process: subprocess.Popen[bytes]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            break
        line = process.stdout.readline().decode()
        if not line:  # EOF: the process ended without serving
            code = process.wait(timeout=SHUTDOWN_TIMEOUT)
            raise RuntimeError(f"flowtrace server exited with {code} before serving")
        if found := _SERVING_LINE.search(line):
            return found.group(1)
    raise TimeoutError(f"flowtrace server not serving after {STARTUP_TIMEOUT} s")


class _QuickToStopServer(AnnouncingServer):
    """uvicorn's main loop looks for `should_exit` every 100 ms; hundreds of in-process
    servers per suite run waited for it at each stop. Same loop, a 5 ms look."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            await asyncio.sleep(0.005)


class InProcessServer(_ServerBase):
    """The app under uvicorn in a thread of the test process: fast to start, and a server
    fault reaches the test suite's internal-error hook directly."""

    def __init__(
        self,
        store: Store,
        db_path: Path,
        api_key: str | None,
        *,
        api_keys: Sequence[str],
        http: Any = "auto",
        **app_options: Any,
    ) -> None:
        """`http`: uvicorn's HTTP protocol (the served command's: `_http_protocols`)."""
        self.store = store
        self.db_path = db_path
        self.api_key = api_key
        app = create_app(store, api_keys=api_keys, **app_options)
        self.app = app
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", access_log=False, http=http
        )
        listening = threading.Event()
        self._server = _QuickToStopServer(config, lambda url: listening.set())
        self._thread = threading.Thread(target=self._server.run, name="flowtrace-test-server")
        self._thread.start()
        while not listening.wait(timeout=0.05):
            if not self._thread.is_alive():
                raise RuntimeError("in-process flowtrace server failed to start")
        self.root_url = self._server.url

    def stop(self) -> None:
        """Graceful: in-flight requests finish; then the store is closed."""
        self._server.should_exit = True
        self._thread.join(timeout=SHUTDOWN_TIMEOUT)
        self.store.close()

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(
    db_path: Path,
    *,
    api_keys: Sequence[str] = (DEFAULT_API_KEY,),
    store: Store | None = None,
    **app_options: Any,
) -> InProcessServer:
    """Serve `store` (default: a new Store on `db_path`) from a thread; `app_options` go to
    `create_app`. Stopping closes the store."""
    store = store if store is not None else Store(db_path)
    try:
        return InProcessServer(
            store, db_path, api_keys[0] if api_keys else None, api_keys=api_keys, **app_options
        )
    except BaseException:
        store.close()
        raise


class _StoreSlot:
    """The store of the test being served, in place of a store for an app that tests share.

    The app looks up a store method at each request (routes, fast path, viewer, OTLP), so a
    test swaps in a fresh store of its own: the same isolation as a server of its own, without
    starting one (~0.5 s each: the app, uvicorn's start and stop)."""

    def __init__(self) -> None:
        self.current: Store | None = None

    def __getattr__(self, name: str) -> Any:
        if self.current is None:  # a request that outlived its test, or came before one
            raise RuntimeError(f"Store.{name} asked of a shared server while no test is served")
        return getattr(self.current, name)

    def close(self) -> None:
        """Each test closes its own store; the server's stop has nothing left to close."""


class SharedServer(_ServerBase):
    """One test's view of a shared in-process server: its URLs, serving the test's store."""

    def __init__(self, running: InProcessServer, store: Store, db_path: Path) -> None:
        self.root_url = running.root_url
        self.api_key = running.api_key
        self.store = store
        self.db_path = db_path


class SharedServers:
    """In-process servers that the tests of a module share, one per set of app options (see
    the `shared_servers` fixture); `serve` lends one to a test, serving that test's store."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[InProcessServer, _StoreSlot]] = {}

    @contextmanager
    def serve(
        self,
        db_path: Path,
        *,
        api_keys: Sequence[str] = (DEFAULT_API_KEY,),
        store: Store | None = None,
        **app_options: Any,
    ) -> Iterator[SharedServer]:
        """As `serve_in_thread`, for the length of the block; the store is closed after it."""
        store = store if store is not None else Store(db_path)
        try:
            running, slot = self._server_for(tuple(api_keys), app_options)
        except BaseException:
            store.close()
            raise
        slot.current = store
        try:
            yield SharedServer(running, store, db_path)
        finally:
            slot.current = None
            store.close()

    def _server_for(
        self, api_keys: tuple[str, ...], app_options: dict[str, Any]
    ) -> tuple[InProcessServer, _StoreSlot]:
        key = repr((api_keys, sorted(app_options.items())))
        if key not in self._running:
            slot = _StoreSlot()
            running = InProcessServer(
                slot,  # type: ignore[arg-type]  # stands for a Store: see _StoreSlot
                Path(os.devnull),
                api_keys[0] if api_keys else None,
                api_keys=api_keys,
                **app_options,
            )
            self._running[key] = (running, slot)
        return self._running[key]

    def stop(self) -> None:
        for running, _ in self._running.values():
            running.stop()
        self._running.clear()


@pytest.fixture(scope="module")
def shared_servers() -> Iterator[SharedServers]:
    """The in-process servers this module's tests share (stopped after its last test)."""
    servers = SharedServers()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server subprocess on a fresh database, API key `test-key`."""
    with start_server(tmp_path / "flowtrace.db") as running:
        yield running


@pytest.fixture
def app_server(tmp_path: Path, shared_servers: SharedServers) -> Iterator[SharedServer]:
    """An in-process server on a fresh database, API key `test-key` (shared by the module's
    tests, each with a store of its own)."""
    with shared_servers.serve(tmp_path / "flowtrace.db") as running:
        yield running
