"""One thread of its own for the store's writes, and the cheapest hop to it from the event loop.

`loop.run_in_executor` wraps each call in two futures (a `concurrent.futures.Future` and the
asyncio one chained to it, with their locks, conditions and callbacks) on top of the thread
pool's queue. Here a call is one queue item and one `call_soon_threadsafe` back: the same two
wake-ups (the thread's, the loop's), less of everything else (issue 13: the hop is paid by
every group of per-log writes).

The thread ends when its `StoreThread` is garbage collected (a finalizer tells it to), as a
thread pool's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["StoreThread"]

_T = TypeVar("_T")
_Job = tuple[Callable[[Any], Any], Any, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class StoreThread:
    def __init__(self, name: str) -> None:
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs = jobs
        threading.Thread(target=_work, args=(jobs,), name=name, daemon=True).start()
        weakref.finalize(self, jobs.put, None)

    async def run(self, fn: Callable[[Any], _T], arg: Any) -> _T:
        """`fn(arg)` on the thread; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.put((fn, arg, loop, future))
        return await future


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        fn, arg, loop, future = job
        try:
            result = fn(arg)
        except BaseException as exc:  # the caller's to handle, as an executor's would be
            _settle(loop, future, None, exc)
        else:
            _settle(loop, future, result, None)
        del job, fn, arg, loop, future  # nothing of a done job kept while waiting


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    # A closed loop (RuntimeError): nobody waits for the answer any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_set, future, result, exc)


def _set(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # its request was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
