"""Processes that race each other on one database (tests of concurrency across processes).

`clean_context()` starts them as spawn does, with nothing of the test process in them (no
store, lock, connection or thread crosses a fork of it), but quickly: they are forked from
multiprocessing's fork server, a fresh interpreter that has imported what they need once.
A spawned interpreter imports pytest, flowtrace's store and psycopg again in each process
(~1 s each on this 2-core machine; tests start ~30 of them).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext

__all__ = ["clean_context"]

# What the racing processes import: their test module (pytest), the store, its driver.
_PRELOAD = ["pytest", "flowtrace.models", "flowtrace.store", "psycopg", "psycopg_pool"]


def clean_context() -> ForkServerContext:
    """A multiprocessing context whose processes start clean and fast (see the module)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # read when the server starts: the first time
    return context
