"""Helpers for the delivery pipeline's tests: a fresh pipeline per test, fast settings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import flowtrace
from flowtrace import _pipeline
from flowtrace.exporters import Exporter

#: Settings that keep tests fast: short batch delays and backoffs (bounds, never asserted as speed).
FAST: dict[str, Any] = {
    "first_batch_after_s": 0.01,
    "batch_interval_s": 0.05,
    "retry_backoff_s": 0.01,
    "live_after_s": 60.0,
}

#: Generous bound on waiting for something that should happen promptly.
WAIT_S = 20.0


@contextmanager
def fresh_pipeline(
    exporter: Exporter | None = None, **settings: Any
) -> Iterator[_pipeline.Pipeline]:
    """A new process pipeline with `settings` (over FAST), delivering to `exporter` if given."""
    flowtrace.configure(**{**FAST, **settings})
    pipe = _pipeline.replace_pipeline(_pipeline.Pipeline())
    pipe.use_exporter(exporter)
    try:
        yield pipe
    finally:
        pipe.shutdown(1.0)  # tests flush what they check; a hung destination must not stall
        _pipeline.replace_pipeline(_pipeline.Pipeline())
        flowtrace.configure()


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Poll `condition` (for states no event announces, such as a request seen by a server)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


class Gate:
    """An exporter script that blocks export calls until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, operations: Any) -> None:
        self.entered.set()
        self.opened.wait(WAIT_S)
        return None
