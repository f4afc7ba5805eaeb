"""Who hears about logs: the sink registry (the delivery pipeline, `capture_logs`).

The recorder calls every sink's `log_started` when a log opens and `log_ended` when it closes,
on the user's thread. It reads the published tuples `on_start` and `on_end` as module
attributes at each call, so a change published here is seen by the next log.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flowtrace._log import Log

__all__ = ["Sink", "add_sink", "on_end", "on_start", "refresh_sinks", "remove_sink"]


class Sink(Protocol):
    """Hears of every log as it opens and as it closes, on the user's thread, so both must be
    O(1) and never block; bound C methods such as `deque.append` cost no Python frame."""

    @property
    def log_started(self) -> Callable[[Log], object]: ...

    @property
    def log_ended(self) -> Callable[[Log], object]: ...


_sinks: tuple[Sink, ...] = ()
on_start: tuple[Callable[[Log], object], ...] = ()
on_end: tuple[Callable[[Log], object], ...] = ()


def _publish(sinks: tuple[Sink, ...]) -> None:
    global _sinks, on_start, on_end
    _sinks = sinks
    on_start = tuple(s.log_started for s in sinks)
    on_end = tuple(s.log_ended for s in sinks)


#: Serializes changes to the sinks (a sink may swap its callables from any thread).
_lock = threading.Lock()


def add_sink(sink: Sink) -> None:
    with _lock:
        if sink not in _sinks:
            _publish((*_sinks, sink))


def remove_sink(sink: Sink) -> None:
    with _lock:
        _publish(tuple(s for s in _sinks if s is not sink))


def refresh_sinks() -> None:
    """Re-read every sink's `log_started`/`log_ended`: a sink swapped its callables (the
    pipeline publishes plain `deque.append`s while busy and small Python methods while idle)."""
    with _lock:
        _publish(_sinks)


def _lock_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_lock_after_fork)
