"""The viewer served over real HTTP from this process, for browser tests: uvicorn on a
loopback port of its own, in a thread, over a store the test keeps writing to."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from flowtrace.server._viewer import mount_viewer
from flowtrace.store import Store

STARTUP_TIMEOUT_S = 20.0


@contextmanager
def serve_viewer(store: Store) -> Iterator[str]:
    """Serve the viewer over `store`; yields the root URL, stops the server on exit."""
    app = FastAPI()
    mount_viewer(app, store)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:  # a wait for a condition, bounded
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the viewer's test server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        listener.close()
