"""Helpers for testing code that uses flowtrace: see every log your code produced.

    from flowtrace.testing import capture_logs

    with capture_logs() as captured:
        answer("hi")
    assert captured.records[0]["path"] == "support/answer"

`captured.logs` are the Log objects in the order they ended; `captured.records` the wire
bodies (what a server receives, complete; scrubbed and redacted as the settings say);
`captured.by_kind("prompt")` the records of LLM calls (spans' logs: `flowtrace.otel`), `"tool"`
of tool calls; `captured.trees()` nests the records under their parents (`"children"`). The
`flowtrace_logs` pytest fixture does the same for one test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flowtrace._config import get_settings
from flowtrace._contract import FLOW, PROMPT, TOOL
from flowtrace._log import Log
from flowtrace._outgoing import Outgoing
from flowtrace._request_bodies import create_body
from flowtrace._sinks import add_sink, remove_sink

__all__ = ["CapturedLogs", "capture_logs"]


class CapturedLogs:
    """The logs that ended while capturing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.logs: list[Log] = []

    # the sink protocol: called on the user's thread, so keep it O(1)
    def log_started(self, log: Log) -> None:
        pass

    def log_ended(self, log: Log) -> None:
        with self._lock:
            self.logs.append(log)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Each log as the `POST /flows/log` body a server would receive (scrubbed)."""
        settings = get_settings()
        outgoing = Outgoing(settings)
        with self._lock:
            logs = list(self.logs)
        return [outgoing.body(create_body(log, settings.status_field)) for log in logs]

    def by_path(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["path"] == path]

    def by_kind(self, kind: str) -> list[dict[str, Any]]:
        """The records of one kind of log: `flow`, or `prompt` and `tool` (spans' logs)."""
        return [r for r in self.records if _kind_of(r) == kind]

    def trees(self) -> list[dict[str, Any]]:
        """Root records, each with its `children` nested, in start order."""
        records = sorted(self.records, key=lambda r: r["start_time"])
        by_id = {r["log_id"]: {**r, "children": []} for r in records}
        roots: list[dict[str, Any]] = []
        for record in by_id.values():
            parent = by_id.get(record.get("trace_parent_id", ""))
            (parent["children"] if parent is not None else roots).append(record)
        return roots

    def clear(self) -> None:
        with self._lock:
            self.logs.clear()


def _kind_of(record: dict[str, Any]) -> str:
    """A record's kind: a prompt's or a tool's log carries its kernel under its kind."""
    return next((kind for kind in (PROMPT, TOOL) if kind in record), FLOW)


@contextmanager
def capture_logs() -> Iterator[CapturedLogs]:
    """Collect the logs that end inside the block (from every thread and task)."""
    captured = CapturedLogs()
    add_sink(captured)
    try:
        yield captured
    finally:
        remove_sink(captured)


def _logs_of_one_test() -> Iterator[CapturedLogs]:
    """The logs produced during the test."""
    with capture_logs() as captured:
        yield captured


try:  # the fixture exists where pytest does; capture_logs() needs nothing but flowtrace
    import pytest
except ImportError:  # pragma: no cover - pytest is not a dependency of flowtrace
    pass
else:
    flowtrace_logs = pytest.fixture(name="flowtrace_logs")(_logs_of_one_test)
