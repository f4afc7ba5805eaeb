"""The pipeline's lifecycle: interpreter exit, fork, and multiprocessing children.

- **Exit** (`at_exit`, an `atexit` handler registered at import, so it runs after the exit
  handlers a program registers later, which may still log): shut the pipeline down within
  `exit_flush_timeout_s`; what is not delivered by then goes to the spool. It returns only once
  both of flowtrace's threads have stopped at a safe point (each of their blocking steps is
  bounded by the deadline, and an export in progress is interrupted), so no thread of flowtrace
  runs while the interpreter finalizes. A KeyboardInterrupt during the exit flush cuts it short
  (the rest is spooled) and is not passed on: the program's exit code stays its own.
- **Fork**: the child starts with an empty pipeline of its own (threads started by its first
  log), new SQLite connections, a new id prefix; what the parent had queued is the parent's.
  Modules are imported under `build_lock`, which a fork waits for, so a child never inherits a
  half-imported module.
- **multiprocessing children** end with `os._exit()` after multiprocessing's own exit function,
  so `atexit` never runs in them: where they run multiprocessing's finalizers (a `Process`, or
  a `Pool` / `ProcessPoolExecutor` worker that is shut down rather than terminated), the
  pipeline shuts down there, bounded the same way.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from flowtrace import _config, _guard, _otlp_export

if TYPE_CHECKING:
    from flowtrace._pipeline import Pipeline

__all__ = ["at_exit", "build_lock", "import_fork_safely", "install", "threads_started"]

logger = logging.getLogger("flowtrace")

#: Held while the sender imports and builds an exporter; a fork waits for it.
build_lock = threading.Lock()


def import_fork_safely(name: str) -> None:
    """Import a module on flowtrace's threads, under `build_lock` (once imported: nothing)."""
    if name not in sys.modules:
        with build_lock:
            importlib.import_module(name)


#: At exit, how much longer than their bound we still wait for threads that have not stopped
#: (rather than let the interpreter finalize under them).
LAST_RESORT_S = 10.0

#: How far above `multiprocessing`'s own finalizers ours runs (higher runs first).
_FINALIZER_PRIORITY = 100
_finalizer_pid: int | None = None


def _pipeline() -> Pipeline:
    from flowtrace import _pipeline

    return _pipeline.current()


def at_exit() -> None:
    """Interpreter exit (or a multiprocessing child's end): deliver what is waiting within
    `exit_flush_timeout_s`, spool the rest, and stop both threads."""
    pipeline = _pipeline()
    try:
        _exit_flush(pipeline)
    except BaseException as exc:  # KeyboardInterrupt again, or a bug: never out of here
        if not isinstance(exc, KeyboardInterrupt):
            _guard.internal_error("at-exit", exc)
        _stop_now(pipeline)


def _exit_flush(pipeline: Pipeline) -> None:
    timeout = _config.get_settings().exit_flush_timeout_s
    if not shutdown_and_report(pipeline, timeout, "at exit"):
        # Never let the interpreter finalize under a thread of ours (a crash, at worst): each
        # of their steps is bounded, so this only waits out a step that overran its bound.
        pipeline.cut_short()
        for _ in range(int(LAST_RESORT_S / 0.5)):
            if pipeline.stopped_within(0.5):
                return


def shutdown_and_report(pipeline: Pipeline, timeout: float | None, when: str = "") -> bool:
    """Shut `pipeline` down within `timeout`, then say once what was left and where. A
    KeyboardInterrupt meanwhile cuts the wait short (what is left is spooled). True if both
    threads stopped."""
    before = pipeline.stats()
    started = time.monotonic()
    try:
        pipeline.shutdown(timeout)
        stopped = pipeline.join(pipeline.stop_deadline())
        # the OTLP export's last spans (the pipeline planned its last operations by now)
        _otlp_export.shutdown(None if timeout is None else started + timeout - time.monotonic())
    except KeyboardInterrupt:
        stopped = _stop_now(pipeline)
        when = f"{when or 'at shutdown'} (interrupted)"
    _report(pipeline, before, timeout, stopped, when or "at shutdown")
    return stopped


def _stop_now(pipeline: Pipeline) -> bool:
    """Cut the exit flush short (Ctrl-C): the threads stop at their next safe point, which is
    bounded; interrupts during this wait are swallowed too. True if they stopped."""
    pipeline.cut_short()
    for _ in range(3):
        try:
            return pipeline.join(pipeline.stop_deadline())
        except KeyboardInterrupt:
            continue
    return False


def _report(
    pipeline: Pipeline,
    before: dict[str, object],
    timeout: float | None,
    stopped: bool,
    when: str,
) -> None:
    """One warning, in logs, that agrees with stats(): what was left at exit and where."""
    after = pipeline.stats()
    dropped_before = before.get("dropped")
    dropped_after = after.get("dropped")
    assert isinstance(dropped_before, dict) and isinstance(dropped_after, dict)
    newly_dropped = {
        reason: count - dropped_before.get(reason, 0)
        for reason, count in dropped_after.items()
        if count > dropped_before.get(reason, 0)
    }
    spooled = pipeline.own_spooled()
    parts = []
    if spooled:
        parts.append(
            f"{spooled} spooled at {after.get('spool')} (the next process that delivers to "
            "this destination sends them)"
        )
    if newly_dropped:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(newly_dropped.items()))
        parts.append(f"{sum(newly_dropped.values())} dropped ({reasons})")
    with _guard.guarded("at-exit-report"):
        if parts:
            logger.warning(
                "flowtrace: %d log(s) not delivered %s (within %s s): %s; last error: %s",
                spooled + sum(newly_dropped.values()),
                when,
                timeout,
                "; ".join(parts),
                after.get("last_error"),
            )
        if not stopped:
            logger.warning(
                "flowtrace: the delivery threads did not stop %s within %s s; waiting for "
                "them (at most %s s more)",
                when,
                timeout,
                LAST_RESORT_S,
            )


# --- multiprocessing children --------------------------------------------------------------


def threads_started(pipeline: Pipeline) -> None:
    """The pipeline started delivering in this process: in a multiprocessing child, make sure
    it is shut down where the child runs multiprocessing's finalizers."""
    global _finalizer_pid
    if _finalizer_pid == os.getpid():
        return
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return
    with _guard.guarded("multiprocessing-finalizer"):
        if multiprocessing.parent_process() is None:
            return  # the main process: atexit runs there
        from multiprocessing import util

        util.Finalize(None, at_exit, exitpriority=_FINALIZER_PRIORITY)
        _finalizer_pid = os.getpid()


# --- fork ------------------------------------------------------------------------------------


def _before_fork() -> None:
    build_lock.acquire()


def _after_fork_in_parent() -> None:
    build_lock.release()


def _after_fork_in_child() -> None:
    global build_lock
    build_lock = threading.Lock()
    _pipeline().after_fork_in_child()


# --- installing ------------------------------------------------------------------------------


class _HideWorkerRecords(logging.Filter):
    """Drops records that libraries (httpx, httpcore) log on flowtrace's threads: a request
    per batch is our business, not the user's log output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith("flowtrace-")


def _settings_changed(settings: _config.Settings) -> None:
    _pipeline().settings_changed(settings)


def install() -> None:
    _config.on_change(_settings_changed)
    # Registered at import, not at the first log: atexit runs handlers last-in first-out, so
    # ours runs after exit handlers the program registers later (which may still log).
    atexit.register(at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
    hide = _HideWorkerRecords()
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).addFilter(hide)
