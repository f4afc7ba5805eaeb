"""The context-local "current log", and helpers that carry it into threads.

The ContextVar holds the innermost open Log; the Log links to its parent, so the stack is the
chain of parents and a push is one `ContextVar.set`. asyncio copies the context into every
task it starts, so tasks nest under the flow that started them and sibling tasks never see
each other's children. Threads start with an empty context: `propagate` carries the current
log across explicitly (`asyncio.to_thread` copies the context by itself).
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Union

if TYPE_CHECKING:
    from flowtrace._log import Log

__all__ = [
    "Current",
    "TracedThreadPoolExecutor",
    "current",
    "current_here",
    "current_log",
    "get_current",
    "open_ancestor",
    "propagate",
    "reset_current",
    "set_current",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The innermost open log; or an unsampled call's record (`_held.HeldRoot` or `HeldChild`, a
#: list), which only the recorder's call path reads as it is: everything else reads
#: `current_here()`.
Current = Union["Log", list[Any], None]
current: ContextVar[Current] = ContextVar("flowtrace_current_log", default=None)
# Its methods, bound once, for the call path: Python 3.11 looks a ContextVar's method up and
# binds it anew at each `current.get()` (a bound-method object made and freed), which costs
# about as much as the get itself.
get_current = current.get
set_current = current.set
reset_current = current.reset


def current_here() -> Log | None:
    """The current log. The context may hold an unsampled root's record instead (the
    recorder's cheapest unsampled call, `_held`): it is made a Log now (once: every context
    that holds the record gets the same Log), since something under it needs one."""
    log = get_current()
    if isinstance(log, list):
        from flowtrace._held import held_log  # (it imports this module)

        return held_log(log)
    return log


def current_log() -> Log | None:
    """The innermost open log of this thread or task, or None outside any flow."""
    log = current_here()
    if log is not None and log.duration_ns is not None:
        log = open_ancestor(log)
    return None if log is None or log.remote else log  # a remote parent is not this process's


def open_ancestor(log: Log | None) -> Log | None:
    """`log` if it is open, else its nearest open ancestor (None: the whole chain has ended).

    The context may hold a log that has ended: a block left in another context than the one it
    was entered in (a generator advanced by several tasks) cannot reset the context it was
    entered in, and a task outlives the flow that started it. Such a log is never the current
    one, nor a new log's parent."""
    while log is not None and log.duration_ns is not None:
        log = log.parent
    return log


def propagate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Wrap `fn` so that, wherever it runs, its flows nest under the log open *now*.

    Only the current log is carried (not the whole context), so one propagated function may
    run in many threads at once.
    """
    parent = current_here()

    @functools.wraps(fn)
    def run_under_parent(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        token = set_current(parent)
        try:
            return fn(*args, **kwargs)
        finally:
            reset_current(token)

    return run_under_parent


class TracedThreadPoolExecutor(concurrent.futures.ThreadPoolExecutor):
    """A ThreadPoolExecutor whose tasks nest under the flow that submitted them."""

    def submit(
        self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_R]:
        return super().submit(propagate(fn), *args, **kwargs)
