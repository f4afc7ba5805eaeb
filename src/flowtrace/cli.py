"""The `flowtrace` command: a thin dispatcher over the store, the terminal renderer and the
server.

  flowtrace logs [--db PATH] [--flow PATH] [--errors] [--limit N]   recent logs as a table
  flowtrace show LOG_ID|last [--db PATH]                            one trace as a tree
  flowtrace serve ...                                               the log server + viewer
  flowtrace ui [--db PATH] [--host H] [--port P]                    the viewer over a local db
  flowtrace spool status|drain|purge [--db PATH | --base-url URL] [--otlp-endpoint URL]
                                       logs (and OTLP spans) waiting on disk

Reading commands never create a database: a missing file is an error, not an empty result.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flowtrace._terminal import render_logs_table, render_trace_tree, sanitize
from flowtrace.models import FlowLogResponse

# Light: the server command imports fastapi and uvicorn only when a server runs.
from flowtrace.server._command import (
    DB_ENV,
    DEFAULT_HOST,
    DEFAULT_PORT,
    add_serve_command,
    default_db_path,
    is_loopback,
    run_server,
)
from flowtrace.store import ListQuery, Store, StoreError

if TYPE_CHECKING:
    from flowtrace._spool import Spool

_T = TypeVar("_T")

__all__ = ["build_parser", "main"]

SERVER_MODULES = ("fastapi", "uvicorn")
DEFAULT_LIMIT = 20
_PAGE_SIZE = 100

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem the user can fix; printed as one line on stderr, exit status 1."""


def _existing_db(given: str | None) -> Path:
    path = Path(given) if given else default_db_path()
    if not path.is_file():
        hint = "" if given else f" (set --db or ${DB_ENV})"
        raise CliError(f"no flowtrace database at {path}{hint}")
    return path


@contextmanager
def _reading(given: str | None) -> Iterator[Store]:
    path = _existing_db(given)
    try:
        store = Store(path)
    except sqlite3.Error as error:
        raise CliError(f"cannot open the database {path}: {error}") from error
    try:
        yield store
    except sqlite3.Error as error:
        raise CliError(f"cannot read the database {path}: {error}") from error
    finally:
        store.close()


# --- logs ----------------------------------------------------------------------------------


def _flow_id(store: Store, path: str) -> str:
    for flow in store.list_flows():
        if flow.path == path:
            return flow.id
    raise CliError(f"no flow with path {path!r}")


def _recent_logs(store: Store, args: argparse.Namespace) -> list[FlowLogResponse]:
    file_id = _flow_id(store, args.flow) if args.flow else None
    logs: list[FlowLogResponse] = []
    page = 1
    while len(logs) < args.limit:
        result = store.list_logs(
            ListQuery(
                file_id=file_id,
                page=page,
                size=min(args.limit, _PAGE_SIZE),
                errors_only=args.errors,
                # Across all flows a row is a trace (as in the viewer); within a flow, every log.
                roots_only=file_id is None,
            )
        )
        logs.extend(result.records)
        if len(result.records) < result.size:
            break
        page += 1
    return logs[: args.limit]


def _logs(args: argparse.Namespace) -> int:
    with _reading(args.db) as store:
        logs = _recent_logs(store, args)
    if not logs:
        print("No logs found.")
        return 0
    sys.stdout.write(render_logs_table(logs))
    return 0


# --- show ----------------------------------------------------------------------------------


#: `flowtrace show last`: the newest trace.
LAST = "last"


def _newest_trace_id(store: Store) -> str:
    newest = store.list_logs(ListQuery(roots_only=True, size=1)).records
    if not newest:
        raise CliError("the database holds no logs yet")
    return newest[0].id


def _show(args: argparse.Namespace) -> int:
    with _reading(args.db) as store:
        log_id = _newest_trace_id(store) if args.log_id == LAST else args.log_id
        try:
            log = store.get_log(log_id)
            root = log if log.id == log.trace_id else store.get_log(log.trace_id)
        except StoreError as error:
            if error.status_code == 404:
                raise CliError(f"no log with id {args.log_id!r}") from error
            raise
    sys.stdout.write(render_trace_tree(root, marked=log.id if log is not root else None))
    return 0


# --- ui --------------------------------------------------------------------------------------


def _ui(args: argparse.Namespace) -> int:
    if not is_loopback(args.host):
        raise CliError(
            "flowtrace ui runs without an API key, so it listens on loopback only; "
            "for a shared viewer use: flowtrace serve --host HOST --api-key KEY"
        )
    path = _existing_db(args.db)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(
            f"flowtrace ui needs {' and '.join(missing)}: pip install 'flowtrace[server]'"
        )

    def announce(url: str) -> None:
        print(f"flowtrace viewer on {url}/ (db: {path}); Ctrl-C stops it", flush=True)

    # The viewer only reads, but the server is the one writer of its database: a local
    # program logging meanwhile shows up live. Loopback by default and without keys.
    return run_server(args.host, args.port, path, (), ready=announce)


# --- spool ------------------------------------------------------------------------------------


def _spool_destination(args: argparse.Namespace) -> None:
    """The destination whose spool the command is about: the settings (`FLOWTRACE_*`), or
    the options given."""
    import flowtrace

    overrides: dict[str, object] = {}
    if args.db:
        overrides.update(db_path=args.db, base_url=None)
    if args.base_url:
        overrides["base_url"] = args.base_url
    if args.api_key:
        overrides["api_key"] = args.api_key
    if args.spool_dir:
        overrides["spool_dir"] = args.spool_dir
    if args.otlp_endpoint:
        overrides["otlp_endpoint"] = args.otlp_endpoint
    flowtrace.configure(**overrides)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _spool_status(args: argparse.Namespace) -> int:
    from flowtrace import _pipeline

    _spool_destination(args)
    spool = _pipeline.current().spool()
    if spool is None:
        print("No spool: spooling is off (FLOWTRACE_SPOOL=off) for this destination.")
        return 0
    if not spool.path.exists():
        print(f"Nothing spooled for {spool.destination} (no file at {spool.path}).")
    else:
        counts, owners = _on_spool(spool, _counts_and_owners)
        print(f"spool {spool.path}")
        print(f"destination: {spool.destination}")
        print(
            f"{counts['logs']} log(s) in {counts['entries']} operation(s), {counts['bytes']} bytes"
        )
        _print_owners(owners, "log(s)", "logs")
    _otlp_spool_status()
    return 0


def _on_spool(spool: Spool, action: Callable[[Spool], _T]) -> _T:
    """`action(spool)`, then the spool let go (this process holds nothing of it); a spool that
    cannot be used is the command's error."""
    from flowtrace._spool import SpoolUnavailable

    try:
        return action(spool)
    except SpoolUnavailable as error:
        raise CliError(str(error)) from error
    finally:
        spool.release()
        spool.close()


def _counts_and_owners(spool: Spool) -> tuple[dict[str, int], list[dict[str, Any]]]:
    return spool.counts(), spool.owners()


def _print_owners(owners: list[dict[str, Any]], unit: str, field: str) -> None:
    import time

    now_s = time.time()
    for owner in owners:
        state = "running" if owner["alive"] else "gone: its backlog is drained by the next process"
        age = _age(now_s - owner["oldest_us"] / 1e6)
        print(f"  {sanitize(owner['owner'])}: {owner[field]} {unit}, oldest {age} ago, {state}")


def _otlp_spool() -> Spool | None:
    """The spool file of the OTLP endpoint the settings name (`--otlp-endpoint`), if spooling
    is on and the file exists; else None."""
    from flowtrace import _config, _otlp_export
    from flowtrace._otlp_spool import endpoint_spool

    export = _otlp_export.current()
    settings = _config.get_settings()
    if export is None or settings.spool == "off":
        return None
    spool = endpoint_spool(export.spool_key, settings)
    return spool if spool.path.exists() else None


def _otlp_spool_status() -> None:
    from flowtrace import _otlp_export

    export = _otlp_export.current()
    if export is None:
        return
    spool = _otlp_spool()
    if spool is None:
        print(f"Nothing spooled for the OTLP endpoint {sanitize(export.endpoint)}.")
        return
    counts, owners = _on_spool(spool, _counts_and_owners)
    print(f"OTLP spool {spool.path}")
    print(f"endpoint: {sanitize(export.endpoint)}")
    print(f"{counts['entries']} batch(es) of spans, {counts['bytes']} bytes")
    _print_owners(owners, "batch(es)", "entries")


def _spool_drain(args: argparse.Namespace) -> int:
    import time

    import flowtrace
    from flowtrace import _otlp_export, _pipeline

    _spool_destination(args)
    started = time.monotonic()
    pipeline = _pipeline.current()
    done = pipeline.drain(args.timeout)
    stats = flowtrace.stats()
    export = _otlp_export.current()
    otlp_done = True
    if export is not None:  # (answered at once when nothing is spooled for it)
        otlp_done = export.drain_backlog(max(0.0, args.timeout - (time.monotonic() - started)))
    otlp = export.stats() if export is not None else None
    flowtrace.shutdown(1.0)
    dropped = sum(stats["dropped"].values())
    print(
        f"delivered {stats['sent']} log(s); {dropped} dropped; "
        f"{stats['spooled']} still spooled{'' if done else ' (the destination did not take them)'}"
    )
    if stats["last_error"] and not done:
        print(f"last error: {sanitize(str(stats['last_error']))}", file=sys.stderr)
    if otlp is not None:
        otlp_dropped = sum(otlp["dropped"].values())
        print(
            f"OTLP endpoint {sanitize(otlp['endpoint'])}: sent {otlp['backlog_exported']} "
            f"spooled span(s); {otlp_dropped} dropped; {otlp['backlog']} batch(es) still "
            f"spooled{'' if otlp_done else ' (the endpoint did not take them)'}"
        )
        if otlp["last_error"] and not otlp_done:
            print(f"last OTLP error: {sanitize(str(otlp['last_error']))}", file=sys.stderr)
        done = done and otlp_done and not otlp_dropped
    return 0 if done and not dropped else 1


def _spool_purge(args: argparse.Namespace) -> int:
    from flowtrace import _pipeline

    _spool_destination(args)
    whose = "every process's" if args.all else "processes that are gone"

    def purge(spool: Spool) -> int:
        return spool.purge(include_live=args.all)

    spool = _pipeline.current().spool()
    if spool is None or not spool.path.exists():
        print("Nothing spooled.")
    else:
        print(f"purged {_on_spool(spool, purge)} log(s) ({whose}) from {spool.path}")
    otlp = _otlp_spool()
    if otlp is not None:  # (its entries are batches: the count is of batches)
        print(f"purged {_on_spool(otlp, purge)} batch(es) of spans ({whose}) from {otlp.path}")
    return 0


def _add_spool_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spool = subparsers.add_parser(
        "spool", help="logs waiting on disk for their destination: status, drain, purge"
    )
    actions = spool.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("status", _spool_status, "what is spooled for the destination, and by whom"),
        ("drain", _spool_drain, "deliver what processes that are gone left"),
        ("purge", _spool_purge, "delete what processes that are gone left"),
    ):
        action = actions.add_parser(name, help=text)
        target = action.add_mutually_exclusive_group()
        target.add_argument("--db", metavar="PATH", help="the embedded store (default: settings)")
        target.add_argument("--base-url", metavar="URL", help="a server of the contract")
        action.add_argument("--api-key", metavar="KEY", help="the server's key")
        action.add_argument("--spool-dir", metavar="DIR", help="where spools live (settings)")
        action.add_argument(
            "--otlp-endpoint", metavar="URL", help="also the spool of this OTLP endpoint (settings)"
        )
        if name == "drain":
            action.add_argument(
                "--timeout", type=float, default=60.0, metavar="S", help="give up after S s"
            )
        if name == "purge":
            action.add_argument(
                "--all", action="store_true", help="also what running processes spooled"
            )
        action.set_defaults(func=handler)


# --- the parser ------------------------------------------------------------------------------


def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help=f"the SQLite database (default: ${DB_ENV}, else .flowtrace/flowtrace.db)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowtrace", description="Look at what your flows did: logs, traces, a viewer."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    logs = subparsers.add_parser("logs", help="recent logs as a table, newest first")
    _add_db_option(logs)
    logs.add_argument("--flow", metavar="PATH", help="only this flow's logs (default: all traces)")
    logs.add_argument("--errors", action="store_true", help="only logs that failed")
    logs.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N logs (default: {DEFAULT_LIMIT})",
    )
    logs.set_defaults(func=_logs)

    show = subparsers.add_parser("show", help="one trace as a tree, with errors and stdout")
    show.add_argument(
        "log_id", metavar="LOG_ID", help="the id of any log of the trace, or 'last' (the newest)"
    )
    _add_db_option(show)
    show.set_defaults(func=_show)

    add_serve_command(subparsers)

    ui = subparsers.add_parser("ui", help="the web viewer over the local database")
    _add_db_option(ui)
    ui.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})"
    )
    ui.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"0 picks a free port (default: {DEFAULT_PORT})",
    )
    ui.set_defaults(func=_ui)
    _add_spool_command(subparsers)
    return parser


def _tolerant_output() -> None:
    """A terminal that cannot show box-drawing characters gets replacements, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already explained
        return exit_.code if isinstance(exit_.code, int) else 2
    handler: Handler | None = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    _tolerant_output()
    try:
        return handler(args)
    except CliError as error:
        print(f"flowtrace: {sanitize(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
