"""The open Log: its ids, its clocks, the fields a user may set, and how it closes.

A Log is created on the user's call path, so creating one does as little as possible: ids are
a per-process prefix and a counter (formatted only when someone reads them), times are raw
nanosecond clock reads, and inputs stay call-time copies until the worker encodes them.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from flowtrace import _guard, _sinks
from flowtrace._context import open_ancestor
from flowtrace._contract import COMPLETE, INCOMPLETE, TraceStatus, truncated_chars
from flowtrace._serialize import SCALARS, capture_value

if TYPE_CHECKING:
    from flowtrace._capture import CapturedTraceback
    from flowtrace._options import LogOptions

__all__ = ["UNSET", "Log", "set_clock"]

# --- clocks (injectable so tests are exact) --------------------------------------------------
# A log reads the monotonic clock once at each end; its wall-clock start is that reading plus
# an offset measured once per process (and again whenever the worker calls `calibrate()`).

_wall_ns: Callable[[], int] = time.time_ns
_mono_ns: Callable[[], int] = time.perf_counter_ns
_wall_offset_ns = 0


def calibrate() -> None:
    """Measure the offset from the monotonic clock to the wall clock (follows NTP steps)."""
    global _wall_offset_ns
    _wall_offset_ns = _wall_ns() - _mono_ns()


def set_clock(
    wall_ns: Callable[[], int] | None = None, mono_ns: Callable[[], int] | None = None
) -> None:
    """Replace the wall and monotonic clocks (nanoseconds); `None` restores the real one."""
    global _wall_ns, _mono_ns
    _wall_ns = wall_ns or time.time_ns
    _mono_ns = mono_ns or time.perf_counter_ns
    calibrate()


calibrate()


# --- ids: a random prefix and a counter. A forked child takes a new prefix for the numbers it
# hands out from then on, while logs it inherited open keep the ids the parent gave them. ----


def _new_prefix() -> str:
    return "log_" + secrets.token_hex(8) + "_"


_counter = itertools.count(1)
_generations: list[tuple[int, str]] = [(0, _new_prefix())]  # (first number, its prefix)
# the current prefix's last 32 bits: the sampling decision mixes them with a root's number
seed = int(_generations[0][1][-9:-1], 16)


def _reseed_ids() -> None:
    global _counter, seed
    first = next(_counter)
    _counter = itertools.count(first)
    _generations.append((first, _new_prefix()))
    seed = int(_generations[-1][1][-9:-1], 16)


def next_number() -> int:
    """The next log number (a root drawn by sampling gets its number before its Log)."""
    return next(_counter)


def _prefix_of(number: int) -> str:
    for first, prefix in reversed(_generations):
        if number >= first:
            return prefix
    return _generations[0][1]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


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


class _UserField:
    """A field the user may set on an open log. What users set lives in one small dict made on
    first use (`log.user_fields`), so an untouched log carries none, and the recorder knows to
    copy user values when the log closes."""

    def __init__(self, option: str | None = None) -> None:
        self.option = option  # the FlowOptions field that gives the default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, log: Log | None, owner: type | None = None) -> Any:
        if log is None:
            return self
        fields = log.user_fields
        if fields is not None and self.name in fields:
            return fields[self.name]
        return UNSET if self.option is None else getattr(log.options.flow, self.option)

    def __set__(self, log: Log, value: Any) -> None:
        if log.user_fields is None:
            log.user_fields = {}
        log.user_fields[self.name] = value


class _Metadata(_UserField):
    """`log.metadata` is the log's own dict (a copy of the flow's), made on first use, so
    `current_log().metadata["k"] = v` works and never changes the flow's defaults."""

    def __get__(self, log: Log | None, owner: type | None = None) -> Any:
        if log is None:
            return self
        fields = log.user_fields
        if fields is not None and "metadata" in fields:
            return fields["metadata"]
        own = dict(log.options.flow.metadata or {})
        self.__set__(log, own)
        return own


class TraceHold(Protocol):
    """Hears of the start and end of each log of a trace that was not sampled (`_sampling`),
    instead of the sinks."""

    def started(self, log: Log) -> None: ...

    def ended(self, log: Log) -> None: ...


class Log:
    """One call's record. Inside a flow, `flowtrace.current_log()` returns it.

    Fields a user may set while the log is open: `inputs`, `output`, `output_message`,
    `messages`, `metadata`, `provider_request`, `provider_response`, `user`, `error`.
    What was set is copied when the log closes (`_serialize.capture_value`: plain data,
    dataclasses and pydantic models), so later mutation of it does not change the log.
    """

    # Instances store only what differs from these class-level defaults: creating a log on
    # the call path sets four or five attributes.
    inputs = _UserField()
    output = _UserField()
    output_message = _UserField()
    messages = _UserField()
    metadata = _Metadata()
    provider_request = _UserField()
    provider_response = _UserField()
    user = _UserField(option="user")

    error: str | None = None
    user_fields: dict[str, Any] | None = None  # what the user set on the open log
    result: Any = UNSET  # what the call returned (copied), unless the user set `output`
    # A decorated call's arguments (non-scalars copied), bound to names on the worker.
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    error_trace: CapturedTraceback | None = None  # the exception's, formatted on the worker
    duration_ns: int | None = None
    ended_how: str | None = None
    stdout_parts: list[str] | None = None  # what it printed, within the string budget
    stdout_chars = 0  # how many characters it printed (more than kept: the text is truncated)
    delivery: Any = None  # the pipeline's per-log state
    late_child_of: str | None = None  # the log that had ended when this one started under it
    # What holds an unsampled trace (the same for all its logs: its root, `_sampling`): the
    # recorder tells it, not the sinks, of each log's start and end. None: a sampled trace.
    trace_hold: TraceHold | None = None
    # A span's log (`_span_logs.SpanLog`): it builds its own bodies, and is created only once
    # it has ended (its kind and version come from the ended span).
    is_span = False
    remote = False  # True: the stand-in for a log of another service (_remote.RemoteParent)
    _log_id: str | None = None

    def __init__(
        self,
        options: LogOptions,
        parent: Log | None,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Open a log; `args`/`kwargs`: the decorated call's arguments, recorded as inputs (a
        block has none: its inputs are the flow's `inputs` option)."""
        self._number = next(_counter)
        self.options = options
        self.user_fields = None  # on the instance: the recorder reads it at every end
        # On the instance, always: the recorder reads it at each end, and Python reads an
        # instance's attribute much faster than a class default through it.
        if parent is None:
            self.trace_hold = None
        else:
            self.trace_hold = parent.trace_hold  # a child inherits its root's decision
            if parent.duration_ns is not None:
                if not parent.is_span:  # a span ended elsewhere may leave its log in the context
                    self.late_child_of = parent.log_id  # noted in the log (metadata["flowtrace"])
                parent = open_ancestor(parent)  # the context held a log that has ended
        self.parent = parent
        if args is not None:
            if options.capture_all:
                # Immutable scalars are kept by reference; anything else is copied now, as the
                # function (or its caller) may mutate it later. Names are bound on the worker.
                for value in args:
                    if type(value) not in SCALARS:
                        args = tuple([capture_value(v) for v in args])
                        break
                self.args = args
                if kwargs:
                    self.kwargs = {name: capture_value(v) for name, v in kwargs.items()}
            elif options.capture_inputs is not False:
                self.inputs = _redacted(options, args, kwargs or {})
        elif options.flow.inputs is not None:
            self.inputs = capture_value(options.flow.inputs)
        self._start_mono_ns = _mono_ns()
        self.duration_ns = None  # on the instance from the start: every child reads it

    def freeze(self) -> None:
        """Copy what the user set, as it is now (the log is closing)."""
        fields = self.user_fields
        if fields:
            for name, value in fields.items():
                fields[name] = capture_value(value)

    @property
    def sampled(self) -> bool:
        """Whether the trace was sampled at its root (a trace that was not may still be
        delivered: the tail rule keeps those with an error or a slow root). What a remote
        child of this trace should be told, to decide the same (`flow(sample_rate=0.0)`)."""
        return self.trace_hold is None

    # --- what the flow gave --------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.options.path

    @property
    def root(self) -> Log:
        """The trace's root log."""
        log = self
        while log.parent is not None:
            log = log.parent
        return log

    @property
    def attributes(self) -> dict[str, Any] | None:
        return self.options.flow.attributes

    @property
    def version_id(self) -> str | None:
        return self.options.flow.version_id

    @property
    def environment(self) -> str | None:
        return self.options.flow.environment

    @property
    def source(self) -> str | None:
        return self.options.flow.source

    @property
    def save(self) -> bool | None:
        return self.options.flow.save

    # --- ids -------------------------------------------------------------------------------
    @property
    def log_id(self) -> str:
        """This log's id, chosen on the client so children never wait for a server."""
        log_id = self._log_id
        if log_id is None:  # formatted once, off the call path
            log_id = self._log_id = f"{_prefix_of(self._number)}{self._number:x}"
        return log_id

    @property
    def trace_id(self) -> str:
        """The id of the trace's root log."""
        return self.root.log_id

    @property
    def parent_id(self) -> str | None:
        return None if self.parent is None else self.parent.log_id

    # --- times -----------------------------------------------------------------------------
    @property
    def start_ns(self) -> int:
        """Wall-clock start, nanoseconds since the epoch: the monotonic reading plus the
        process's offset to the wall clock (measured once; so one clock read per end)."""
        return self._start_mono_ns + _wall_offset_ns

    @property
    def end_ns(self) -> int | None:
        duration = self.duration_ns
        return None if duration is None else self.start_ns + duration

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
        """What the log printed, as it is stored: cut to the string budget, with the marker."""
        text = "".join(self.stdout_parts) if self.stdout_parts else ""
        if self.stdout_chars > len(text):
            text += truncated_chars(self.stdout_chars)
        return text

    @property
    def traceback(self) -> str | None:
        """The traceback of the exception the call raised, as Python prints it."""
        trace = self.error_trace
        return None if trace is None else trace.text()

    @property
    def status(self) -> TraceStatus:
        """`incomplete` while the call runs, `complete` once it has returned or raised."""
        return INCOMPLETE if self.duration_ns is None else COMPLETE

    @property
    def is_complete(self) -> bool:
        return self.duration_ns is not None

    def announce_start(self) -> None:
        """Tell whoever takes its start: the sinks, or its unsampled trace's hold (a
        `DormantRoot` is its own hold: nothing to tell). The recorder inlines this and
        `announce_end` where every log passes (the wrapper, `_decorator._announce`, `close`):
        a method call there costs ~700 instructions a log."""
        hold = self.trace_hold
        if hold is None:
            for started in _sinks.on_start:
                started(self)
        elif hold is not self:  # type: ignore[comparison-overlap]
            hold.started(self)

    def announce_end(self) -> None:
        """Tell whoever takes its end: the sinks, or its unsampled trace's hold."""
        hold = self.trace_hold
        if hold is None:
            for ended in _sinks.on_end:
                ended(self)
        else:
            hold.ended(self)

    def close(self, how: str | None = None, result: Any = UNSET) -> None:
        """End the log, once: record what the call returned (`result`; a block returns
        nothing), copy what the user set, stamp the end, and hand it to the sinks."""
        if self.duration_ns is not None:
            return
        try:
            if self.user_fields is not None:
                self.freeze()
            if result is not UNSET:
                capture = self.options.capture_output
                if capture is True:
                    self.result = result if type(result) in SCALARS else capture_value(result)
                elif capture is not False:
                    self.result = capture_value(capture(result))
        except Exception as exc:
            _guard.internal_error("log-end", exc)
        if how is not None:
            self.ended_how = how
        self.duration_ns = _mono_ns() - self._start_mono_ns  # from here on, complete
        try:
            hold = self.trace_hold  # `announce_end`, inlined: every log that closes here
            if hold is None:
                for ended in _sinks.on_end:
                    ended(self)
            else:
                hold.ended(self)
        except Exception as exc:
            _guard.internal_error("log-end", exc)

    def __repr__(self) -> str:
        return f"<Log {self.path!r} id={self.log_id} {self.status}>"


def _redacted(options: LogOptions, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A redactor sees the real arguments by name, at call time; its result is recorded."""
    redact = options.capture_inputs
    if not callable(redact) or options.binder is None:
        return UNSET
    return capture_value(redact(options.binder.bind(options.skip_first, args, kwargs)))


def _to_datetime(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)
