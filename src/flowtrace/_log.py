"""The open Log: its ids, its clocks, the fields a user may set, and how it closes.

A Log is created on the user's call path, so creating one does as little as possible: ids are
a per-process prefix and a counter (formatted only when someone reads them), times are raw
nanosecond clock reads, and inputs stay raw snapshots until the worker encodes them.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from flowtrace._capture import CallInputs

__all__ = ["Log", "Sink", "add_sink", "remove_sink", "set_clock"]

Status = Literal["incomplete", "complete"]

# --- clocks (injectable so tests are exact) --------------------------------------------------

_wall_ns: Callable[[], int] = time.time_ns
_mono_ns: Callable[[], int] = time.perf_counter_ns


def set_clock(
    wall_ns: Callable[[], int] | None = None, mono_ns: Callable[[], int] | None = None
) -> None:
    """Replace the wall and monotonic clocks (nanoseconds); `None` restores the real one."""
    global _wall_ns, _mono_ns
    _wall_ns = wall_ns or time.time_ns
    _mono_ns = mono_ns or time.perf_counter_ns


# --- ids: a random per-process prefix and a counter, re-seeded after fork ------------------


def _new_prefix() -> str:
    return "log_" + secrets.token_hex(8) + "_"


_prefix = _new_prefix()
_counter = itertools.count(1)


def _reseed_ids() -> None:
    global _prefix, _counter
    _prefix = _new_prefix()
    _counter = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


# --- sinks: who hears about logs (the delivery pipeline, capture_logs) -----------------------


class Sink(Protocol):
    """Receives every log as it opens and as it closes, on the user's thread: must be O(1)."""

    def log_started(self, log: Log) -> None: ...

    def log_ended(self, log: Log) -> None: ...


_sinks: tuple[Sink, ...] = ()


def add_sink(sink: Sink) -> None:
    global _sinks
    if sink not in _sinks:
        _sinks = (*_sinks, sink)


def remove_sink(sink: Sink) -> None:
    global _sinks
    _sinks = tuple(s for s in _sinks if s is not sink)


class _Unset:
    """Marks a field nobody set (None is a value a user may set)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


class Log:
    """One call's record. Inside a flow, `flowtrace.current_log()` returns it.

    Fields a user may set while the log is open: `inputs`, `output`, `output_message`,
    `messages`, `metadata`, `provider_request`, `provider_response`, `user`, `error`.
    Values are snapshotted when the log closes, so later mutation does not change the record.
    """

    __slots__ = (
        "_call_inputs",
        "_number",
        "_prefix",
        "_start_mono_ns",
        "attributes",
        "delivery",
        "duration_ns",
        "end_ns",
        "ended_how",
        "environment",
        "error",
        "inputs",
        "items",
        "messages",
        "metadata",
        "output",
        "output_message",
        "parent",
        "path",
        "provider_request",
        "provider_response",
        "root",
        "save",
        "source",
        "start_ns",
        "status",
        "stdout_parts",
        "traceback",
        "user",
        "version_id",
    )

    path: str
    parent: Log | None
    root: Log
    attributes: dict[str, Any] | None
    version_id: str | None
    environment: str | None
    user: str | None
    source: str | None
    save: bool | None
    inputs: Any
    output: Any
    output_message: Any
    messages: Any
    metadata: dict[str, Any] | None
    provider_request: Any
    provider_response: Any
    error: str | None
    traceback: str | None
    start_ns: int
    end_ns: int | None
    duration_ns: int | None
    status: Status
    ended_how: str | None
    stdout_parts: list[str] | None
    items: list[Any] | None
    delivery: Any
    _call_inputs: CallInputs | None

    def __init__(self, path: str, parent: Log | None) -> None:
        self._number = next(_counter)
        self._prefix = _prefix
        self.path = path
        self.parent = parent
        self.root = self if parent is None else parent.root
        self.attributes = None
        self.version_id = None
        self.environment = None
        self.user = None
        self.source = None
        self.save = None
        self._call_inputs = None
        self.inputs = UNSET
        self.output = UNSET
        self.output_message = UNSET
        self.messages = UNSET
        self.metadata = None
        self.provider_request = UNSET
        self.provider_response = UNSET
        self.error = None
        self.traceback = None
        self.end_ns = None
        self.duration_ns = None
        self.status = "incomplete"
        self.ended_how = None
        self.stdout_parts = None
        self.items = None
        self.delivery = None  # the pipeline's per-log state
        self.start_ns = _wall_ns()
        self._start_mono_ns = _mono_ns()

    # --- ids -------------------------------------------------------------------------------
    @property
    def log_id(self) -> str:
        """This log's id, chosen on the client so children never wait for a server."""
        return f"{self._prefix}{self._number:x}"

    @property
    def trace_id(self) -> str:
        """The id of the trace's root log."""
        return self.root.log_id

    @property
    def parent_id(self) -> str | None:
        return None if self.parent is None else self.parent.log_id

    # --- times -----------------------------------------------------------------------------
    @property
    def start_time(self) -> datetime:
        return _to_datetime(self.start_ns)

    @property
    def end_time(self) -> datetime | None:
        return None if self.end_ns is None else _to_datetime(self.end_ns)

    @property
    def duration(self) -> float | None:
        """Seconds, from the monotonic clock."""
        return None if self.duration_ns is None else self.duration_ns / 1e9

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_parts) if self.stdout_parts else ""

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    def set_call_inputs(self, call_inputs: CallInputs) -> None:
        """Raw argument snapshot of a decorated call; bound to names on the worker."""
        self._call_inputs = call_inputs

    @property
    def call_inputs(self) -> CallInputs | None:
        return self._call_inputs

    def close(self, how: str | None = None) -> None:
        """Stamp the end (once) and hand the log to the sinks."""
        if self.status == "complete":
            return
        self.duration_ns = _mono_ns() - self._start_mono_ns
        self.end_ns = self.start_ns + self.duration_ns
        self.ended_how = how
        self.status = "complete"
        for sink in _sinks:
            sink.log_ended(self)

    def __repr__(self) -> str:
        return f"<Log {self.path!r} id={self.log_id} {self.status}>"


def announce_start(log: Log) -> None:
    for sink in _sinks:
        sink.log_started(log)


def _to_datetime(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)
