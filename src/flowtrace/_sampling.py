"""Sampling by trace: decided once, at the root, from the root's id; a trace not sampled is held
whole until its root ends, then delivered whole (the tail rule kept it) or dropped whole.

- **The decision** (`sampled`): the root's id number mixed with its process's id prefix (a
  multiplicative hash, the same for the same id in every process), compared with the rate. The
  root's `sample_rate` option wins over the `sample_rate` setting. Only a root decides: every
  log under it (in threads through `propagate`, in asyncio tasks, in generators) inherits its
  root's `TraceHold`, or none, when it opens (`Log.__init__`). `is_sampled(log_id, rate)`
  reproduces a decision from an id.
- **The hold** (`TraceHold`): an unsampled root gets one. Its logs are recorded as usual, but
  not announced to the sinks: the hold keeps them, in the order they started and ended, on the
  user's side of the pipeline (a dropped trace never costs the worker or the queue anything).
  When the root ends, the hold decides: kept if a log of the trace had an error (an exception,
  or `log.error` set) or the root ran at least `sample_keep_slower_than_s`; then every log of
  the trace is announced (starts in start order, then ends in end order, the root's last) and
  logs of the trace that are still open are announced as they end; else every log is dropped,
  also those that start or end later. So a trace is delivered whole or not at all.
- A hold keeps at most `HOLD_MAX_LOGS` logs: a trace that grows beyond that is kept (released
  to the pipeline as a sampled trace would be) rather than held without a bound or cut.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from flowtrace import _config, _guard, _sinks

if TYPE_CHECKING:
    from flowtrace._log import Log

__all__ = [
    "HOLD_MAX_LOGS",
    "TraceHold",
    "counts",
    "is_sampled",
    "reset_counts",
    "sampled",
    "stats",
]

#: The multiplier of the decision's hash (2^64 / the golden ratio: consecutive numbers spread
#: evenly over the range) and the range.
GOLDEN = 0x9E3779B97F4A7C15
MASK = (1 << 64) - 1
SPAN = float(1 << 64)

#: Logs one unsampled trace may hold before it is released (kept) instead.
HOLD_MAX_LOGS = 10_000

# The settings, read by `_log` at each root (module attributes: `configure()` changes them).
rate = 1.0
keep_slower_than_ns: int | None = None


def _apply_settings(settings: _config.Settings) -> None:
    global rate, keep_slower_than_ns
    rate = float(settings.sample_rate)
    slower = settings.sample_keep_slower_than_s
    keep_slower_than_ns = None if slower is None else int(slower * 1e9)


def sampled(number: int, seed: int, sample_rate: float) -> bool:
    """The decision for the root numbered `number` of the id prefix `seed` (`_log` inlines
    this expression on the call path; keep the two the same)."""
    return ((number ^ seed) * GOLDEN) & MASK < sample_rate * SPAN


def is_sampled(log_id: str, sample_rate: float) -> bool:
    """Whether a root with this id is sampled at `sample_rate` (ids are `log_<seed>_<number>`,
    both hexadecimal)."""
    _, seed, number = log_id.rsplit("_", 2)
    return sampled(int(number, 16), int(seed, 16), sample_rate)


# --- counts (per process; the pipeline resets them when it starts afresh) --------------------

_lock = threading.Lock()  # over every hold's state and the counts
counts: dict[str, int] = {}


def reset_counts() -> None:
    global counts
    counts = {"sampled_out": 0, "sampled_out_logs": 0, "kept_by_tail": 0}


def stats() -> dict[str, int]:
    """`sampled_out`: traces dropped by sampling (`sampled_out_logs`: their logs);
    `kept_by_tail`: unsampled traces delivered all the same (an error, slow, or too big)."""
    return dict(counts)


reset_counts()


class TraceHold:
    """The logs of one unsampled trace, until its root ends (see the module's docstring)."""

    __slots__ = ("decided", "errored", "finished", "logs", "root")

    def __init__(self, root: Log) -> None:
        self.root = root
        self.logs: list[Log] | None = None  # held logs under the root, in start order
        self.finished: list[Log] | None = None  # held logs that ended, in end order
        self.errored = False  # a held log had an error
        self.decided: bool | None = None  # None: the root is open; then kept or dropped

    def started(self, log: Log) -> None:
        """A log of this trace opened (the recorder calls this instead of the sinks)."""
        if log is self.root:
            return
        with _lock:
            decided = self.decided
            if decided is None:
                held = self.logs
                if held is None:
                    held = self.logs = []
                held.append(log)
                if len(held) >= HOLD_MAX_LOGS:
                    self._keep("too_big")
                return
            if not decided:
                counts["sampled_out_logs"] += 1
                return
        _announce_start(log)  # a late log of a kept trace goes as any log does

    def ended(self, log: Log) -> None:
        """A log of this trace closed (the recorder calls this instead of the sinks)."""
        if log is self.root:
            self._decide()
            return
        with _lock:
            decided = self.decided
            if decided is None:
                if log.error is not None:
                    self.errored = True
                finished = self.finished
                if finished is None:
                    finished = self.finished = []
                finished.append(log)
                return
        if decided:
            _announce_end(log)

    def _decide(self) -> None:
        root = self.root
        with _lock:
            if self.decided is not None:  # released early (too big): the root goes as any
                if self.decided:
                    _announce_end(root)
                return
            slower = keep_slower_than_ns
            if root.error is not None or self.errored:
                self._keep("error")
            elif slower is not None and (root.duration_ns or 0) >= slower:
                self._keep("slow")
            else:
                self.decided = False
                counts["sampled_out"] += 1
                counts["sampled_out_logs"] += 1 + len(self.logs or ())
                self.logs = self.finished = None
                return
            _announce_end(root)

    def _keep(self, reason: str) -> None:
        """Deliver the trace (under the lock, so a log ending meanwhile waits its turn): what
        started, in order, then what ended, in order. The root's end is the caller's."""
        self.decided = True
        counts["kept_by_tail"] += 1
        key = f"kept_by_tail_{reason}"
        counts[key] = counts.get(key, 0) + 1
        _announce_start(self.root)
        for log in self.logs or ():
            _announce_start(log)
        for log in self.finished or ():
            _announce_end(log)
        self.logs = self.finished = None


def _announce_start(log: Log) -> None:
    try:
        for started in _sinks.on_start:
            started(log)
    except Exception as exc:
        _guard.internal_error("log-open", exc)


def _announce_end(log: Log) -> None:
    try:
        for ended in _sinks.on_end:
            ended(log)
    except Exception as exc:
        _guard.internal_error("log-end", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))

_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())
