"""`flowtrace serve`: run the log service with uvicorn over a store (a SQLite file, or a
PostgreSQL database by URL), in one process or several (`--workers`, see `_workers`).

fastapi and uvicorn (the `flowtrace[server]` extra) are imported only when the server runs,
so the rest of the CLI works without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from flowtrace._config import get_settings
from flowtrace._contract import DEFAULT_STATUS_FIELD, STATUS_FIELDS, StatusField

from ._loopback import is_loopback

__all__ = [
    "API_KEYS_ENV",
    "DB_ENV",
    "SERVER_DB_ENV",
    "add_serve_command",
    "default_db_path",
    "is_loopback",
    "run_server",
]

API_KEYS_ENV = "FLOWTRACE_SERVER_API_KEYS"
DB_ENV = "FLOWTRACE_DB_PATH"
# The server's database (a file or a postgresql:// URL); over DB_ENV, which the recorder reads.
SERVER_DB_ENV = "FLOWTRACE_SERVER_DB"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8484
DEFAULT_MAX_BODY_BYTES = 5 * 2**20
# A request's head (request line and headers) must arrive within this many seconds of its
# first byte, or of the connection opening: slow clients are closed, not waited for (slowloris).
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
# Connections served at once; a request on one more is answered 503 (`_http_protocols`). Each
# takes a file descriptor: the process's limit (`ulimit -n`) must be higher.
DEFAULT_MAX_CONNECTIONS = 1000
# uvicorn's HTTP implementations: "auto" is httptools when installed (extra `server-fast`).
HTTP_IMPLEMENTATIONS = ("auto", "h11", "httptools")
# Bound on waiting for in-flight requests at shutdown, seconds.
GRACEFUL_SHUTDOWN_TIMEOUT = 30
EXIT_USAGE = 2


def default_db_path() -> Path:
    """The embedded default store: the `db_path` setting (`$FLOWTRACE_DB_PATH`, else
    `.flowtrace/flowtrace.db` here), the same file the recorder writes to."""
    return Path(get_settings().db_path)


def add_serve_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `serve`; the parsed namespace's `func(args) -> int` runs it."""
    parser = subparsers.add_parser(
        "serve",
        help="run the flowtrace log service",
        description="Serve the 'Log to a Flow' contract under /v5 over a flowtrace database.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument(
        "--db",
        default=None,
        metavar="FILE|URL",
        help="SQLite file or postgresql://user@host/dbname URL (extra postgres); default: "
        f"${SERVER_DB_ENV}, else ${DB_ENV}, else .flowtrace/flowtrace.db",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="server processes on the one port (default: 1); for PostgreSQL, where writers "
        "run at once (on SQLite they take turns)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        default=[],
        metavar="KEY",
        help=f"accepted X-API-KEY (repeatable; also ${API_KEYS_ENV}, comma-separated)",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies: 413"
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=DEFAULT_HEADER_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose request headers take longer than this, with 408 "
        f"(default: {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose request body takes longer than this after its "
        f"headers, with 408 (default: {DEFAULT_BODY_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections served at once; a request on one more is answered 503 "
        f"(default: {DEFAULT_MAX_CONNECTIONS})",
    )
    parser.add_argument(
        "--http",
        choices=HTTP_IMPLEMENTATIONS,
        default="auto",
        help="uvicorn's HTTP parser (default: auto, httptools when installed, else h11)",
    )
    parser.add_argument("--no-batch", action="store_true", help="do not offer the batch extension")
    parser.add_argument(
        "--status-field",
        choices=STATUS_FIELDS,
        default=DEFAULT_STATUS_FIELD,
        help="the status name in answers to requests that name none, such as reads "
        f"(default: {DEFAULT_STATUS_FIELD}; log_status for clients of the March 2025 API)",
    )
    parser.set_defaults(func=serve_from_args)


def serve_from_args(args: argparse.Namespace) -> int:
    api_keys = [*args.api_keys, *_keys_from_env()]
    refusal = _refusal(args.host, api_keys, args.http)
    if refusal is not None:
        print(f"flowtrace serve: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    target = args.db or os.environ.get(SERVER_DB_ENV) or default_db_path()
    try:
        return run_server(
            args.host,
            args.port,
            target,
            api_keys,
            workers=args.workers,
            max_body_bytes=args.max_body_bytes,
            batch=not args.no_batch,
            status_field=args.status_field,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            max_connections=args.max_connections,
            http=args.http,
        )
    except _startup_errors() as error:
        print(f"flowtrace serve: {error}", file=sys.stderr)
        return 1


def _refusal(host: str, api_keys: Sequence[str], http: str) -> str | None:
    """Why the server must not start as asked, or None."""
    if any(not key.strip() for key in api_keys):
        # An empty key would let in anyone who sends an empty X-API-KEY header.
        return "an API key must not be empty or blank"
    if not api_keys and not is_loopback(host):
        return (
            f"refusing to listen on {host} without an API key; pass --api-key or set "
            f"{API_KEYS_ENV} (only loopback addresses may run without one)"
        )
    if http not in HTTP_IMPLEMENTATIONS:
        return f"unknown HTTP implementation {http!r} (one of {', '.join(HTTP_IMPLEMENTATIONS)})"
    if http == "httptools" and not _httptools_installed():
        return "--http httptools needs httptools: pip install 'flowtrace[server-fast]'"
    return None


def _httptools_installed() -> bool:
    return importlib.util.find_spec("httptools") is not None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a number of seconds above 0")
    return value


def _startup_errors() -> tuple[type[Exception], ...]:
    from flowtrace.store import StoreSchemaError, StoreUnavailable

    return (StoreSchemaError, StoreUnavailable, ImportError)


def _keys_from_env() -> list[str]:
    return [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]


def run_server(
    host: str,
    port: int,
    db_path: str | os.PathLike[str],
    api_keys: Sequence[str],
    *,
    workers: int = 1,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batch: bool = True,
    status_field: StatusField = DEFAULT_STATUS_FIELD,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    http: str = "auto",
    ready: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish and close the database.

    `db_path`: a SQLite file (its directory is created) or a postgresql:// URL. `workers`: the
    server processes sharing the port (see `_workers`); each opens the store for itself.
    Without `api_keys` only a loopback `host` is allowed (ValueError otherwise, as for a blank
    key), and only loopback Host names and `host` are served (`_keyless_guard`).
    `header_timeout`, `body_timeout`, `max_connections`: see `_http_protocols`; `http`: "auto"
    (httptools when installed), "h11" or "httptools". `ready(url)` is called once listening
    (default: print the "serving on" line); with port 0 the url carries the port actually
    bound. Returns the process exit code.
    """
    refusal = _refusal(host, api_keys, http)
    if refusal is not None:
        raise ValueError(refusal)
    from flowtrace.store import is_database_url

    if not is_database_url(db_path):
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    shown = _shown_location(db_path)
    announce = ready or (lambda url: _print_serving(url, shown))

    def serve_one(sockets: list[socket.socket] | None, ready_one: Callable[[str], None]) -> int:
        return _serve(
            host,
            port,
            db_path,
            api_keys,
            sockets,
            ready_one,
            max_body_bytes=max_body_bytes,
            batch=batch,
            status_field=status_field,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_connections=max_connections,
            http=http,
        )

    if workers == 1:
        return serve_one(None, announce)
    from . import _app, _http_protocols  # noqa: F401 - imported once, before forking:
    from ._workers import bind_listeners, supervise  # a worker (or its replacement) starts fast

    sockets = bind_listeners(host, port, workers)
    try:
        return supervise(
            sockets, lambda sock, said: serve_one([sock], lambda url: said()), announce
        )
    finally:
        for sock in sockets:
            sock.close()


def _shown_location(db_path: str | os.PathLike[str]) -> str:
    from flowtrace.store import is_database_url

    if is_database_url(db_path):
        from flowtrace.store._postgres import redacted

        return redacted(str(db_path))
    return str(db_path)


def _serve(
    host: str,
    port: int,
    db_path: str | os.PathLike[str],
    api_keys: Sequence[str],
    sockets: list[socket.socket] | None,
    ready: Callable[[str], None],
    *,
    max_body_bytes: int,
    batch: bool,
    status_field: StatusField,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    http: str,
) -> int:
    """One server process: its store, the app, uvicorn (on `sockets` when given)."""
    import uvicorn

    from flowtrace.store import Store

    from ._app import create_app
    from ._http_protocols import guarded_protocol
    from ._uvicorn_server import AnnouncingServer

    store = Store(db_path)
    try:
        app = create_app(
            store,
            api_keys=api_keys,
            max_body_bytes=max_body_bytes,
            batch=batch,
            status_field_default=status_field,
            listen_hosts=(host,),
        )
        protocol = guarded_protocol(
            httptools=http == "httptools" or (http == "auto" and _httptools_installed()),
            header_timeout=header_timeout,
            max_connections=max_connections,
            body_timeout=body_timeout,
        )
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=protocol,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT,
        )
        server = AnnouncingServer(config, ready)
        with _signals_end_quietly():
            server.run(sockets=sockets)
    finally:
        store.close()
    return 0 if server.started else 1


def _print_serving(url: str, location: str) -> None:
    print(f"flowtrace serving on {url} (db: {location})", flush=True)


@contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """After a graceful shutdown uvicorn re-raises the signal it caught, which would kill the
    process (SIGTERM) or raise KeyboardInterrupt (SIGINT) before the database is closed; the
    re-raised signal lands in these no-op handlers instead. Main thread only, as signals are."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ignore(signum: int, frame: FrameType | None) -> None:
        pass

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, ignore) for signum in handled}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
