"""Sampling by trace: decided once, at the root, from the root's id; a trace not sampled is held
whole until its root ends, then delivered whole (the tail rule kept it) or dropped whole.

- **The decision** (`open_root`, or the recorder inline, for a root when a rate below 1
  applies): the root's id number mixed with its process's id prefix (a multiplicative hash,
  the same for the same id in every process), compared with the rate. The root's
  `sample_rate` option wins over the `sample_rate` setting. Only a root decides: every log
  under it (in threads through `propagate`, in asyncio tasks, in generators) inherits its
  root's hold, or none, when it opens (`Log.__init__`). `is_sampled(log_id, rate)` reproduces a
  decision from an id.
- **The hold** (`DormantRoot`; its rule is `_Hold`): an unsampled root is one, made cheaply.
  The logs of its trace are recorded as usual, but not announced to the sinks: the root keeps
  them, in the order they started and ended, on the user's side of the pipeline (a dropped
  trace never costs the worker, the queue or the destination anything).
  When the root ends, the hold decides: kept if a log of the trace had an error (an exception,
  or `log.error` set) or the root ran at least `sample_keep_slower_than_s`; then every log of
  the trace is announced (starts in start order, then ends in end order, the root's last) and
  logs of the trace that are still open are announced as they end; else every log is dropped,
  also those that start or end later. So a trace is delivered whole or not at all.
- **Held records** (`_held`): the commonest unsampled calls, plain functions called with
  scalar arguments, are decided (a root) by the recorder itself and enter the context as
  records, not Logs; a Log is made only if something needs one, so a trace dropped with
  nothing needing a Log costs a list, a context push and a count per call.
- **Across services** (`RemoteDecision`, the `trace_hold` of a continued trace's stand-in,
  `_remote.RemoteParent`): a local root under a caller that sent `sampled=0` in trusted
  headers is held as above (`LocalRootHold`: the root is an ordinary Log, its hold apart); one
  under untrusted headers is decided by this process's rate, as a root of its own; under a
  trusted sampled caller, nothing is decided (the caller's decision is followed).
- A hold keeps at most `HOLD_MAX_LOGS` logs: a trace that grows beyond that is kept (released
  to the pipeline as a sampled trace would be) rather than held without a bound or cut.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import TYPE_CHECKING, Any, cast

from flowtrace import _config, _guard, _log, _sinks
from flowtrace._log import Log
from flowtrace._serialize import SCALARS

if TYPE_CHECKING:
    from flowtrace._options import LogOptions

__all__ = [
    "HOLD_MAX_LOGS",
    "DormantRoot",
    "LocalRootHold",
    "RemoteDecision",
    "below_threshold",
    "count_dropped",
    "held_dropped",
    "is_sampled",
    "open_root",
    "reset_counts",
    "sampled",
    "stats",
]

#: The decision's hash: a root's number xor its id prefix's low 32 bits, times Knuth's
#: multiplier (2^32 / the golden ratio: consecutive numbers spread evenly over the range), modulo
#: 2^32, compared with rate * 2^32. Small integers: a few machine operations on the call path.
MULTIPLIER = 2654435761
MASK = 0xFFFFFFFF
SPAN = 1 << 32

#: Logs one unsampled trace may hold before it is released (kept) instead.
HOLD_MAX_LOGS = 10_000

# The settings, read by the recorder at each root (module attributes: `configure()` sets them).
rate = 1.0
rate_threshold = SPAN  # threshold(rate)
keep_slower_than_ns: int | None = None


def _apply_settings(settings: _config.Settings) -> None:
    global rate, rate_threshold, keep_slower_than_ns
    rate = float(settings.sample_rate)
    rate_threshold = threshold(rate)
    slower = settings.sample_keep_slower_than_s
    keep_slower_than_ns = None if slower is None else int(slower * 1e9)


def threshold(sample_rate: float) -> int:
    """What a root's hash is compared with: below it, the trace is sampled."""
    return int(sample_rate * SPAN)


def below_threshold(number: int, seed: int, below: int) -> bool:
    """The decision for the root numbered `number` of the id prefix `seed`: sampled when its
    hash is below `below` (`threshold(rate)`). `open_root` and the plain-function wrapper
    (`_decorator._wrap_function`) inline this expression, on the call path; keep the three the
    same (`is_sampled` is tested against both)."""
    return ((number ^ seed) * MULTIPLIER) & MASK < below


def sampled(number: int, seed: int, sample_rate: float) -> bool:
    """The decision for the root numbered `number` of the id prefix `seed` at `sample_rate`."""
    return below_threshold(number, seed, threshold(sample_rate))


def is_sampled(log_id: str, sample_rate: float) -> bool:
    """Whether a root with this id is sampled at `sample_rate` (ids are `log_<seed>_<number>`,
    both hexadecimal)."""
    _, seed, number = log_id.rsplit("_", 2)
    return sampled(int(number, 16), int(seed, 16) & MASK, sample_rate)


# --- counts (per process; the pipeline resets them when it starts afresh) --------------------

_lock = threading.Lock()  # over every hold's state and the counts
# traces dropped by sampling, their logs, and the unsampled traces kept by the tail rule (by
# reason: error, slow, too_big); plain integers: a dropped root adds to them under the lock
_sampled_out = 0
_sampled_out_logs = 0
_kept_by_tail: dict[str, int] = {}


def reset_counts() -> None:
    global _sampled_out, _sampled_out_logs, _kept_by_tail, _held_dropped_before
    with _lock:
        _sampled_out = _sampled_out_logs = 0
        _kept_by_tail = {}
        _held_dropped_before = _count(held_dropped)


def stats() -> dict[str, int]:
    """`sampled_out`: traces dropped by sampling (`sampled_out_logs`: their logs, late ones
    included); `kept_by_tail`: unsampled traces delivered all the same, and by why
    (`kept_by_tail_error`, `_slow`, `_too_big`)."""
    with _lock:
        kept = dict(_kept_by_tail)
        held = _count(held_dropped) - _held_dropped_before
        out = {
            "sampled_out": _sampled_out + held,
            "sampled_out_logs": _sampled_out_logs + held,
            "kept_by_tail": sum(kept.values()),
        }
    out.update((f"kept_by_tail_{reason}", count) for reason, count in sorted(kept.items()))
    return out


def open_root(
    options: LogOptions,
    args: tuple[Any, ...] | None,
    kwargs: dict[str, Any] | None,
    number: int | None = None,
) -> Log:
    """A new root log, sampled at its flow's rate (else the setting's): a plain `Log` if its
    trace is sampled, else a `DormantRoot` (which holds its trace). Its number (unless given:
    the recorder drew it, and decided) is drawn first, for the decision."""
    if number is None:
        number = next(_log._counter)
    below = options.sample_threshold
    if below is None:
        below = rate_threshold
    if ((number ^ _log.seed) * MULTIPLIER) & MASK < below:
        log = Log(options, None, args, kwargs)
        log._number = number  # the id the decision was made on (the one Log drew is unused)
        return log
    if args is not None and not kwargs and options.capture_all and _all_scalars(map(type, args)):
        return dormant_root(number, _log._mono_ns(), options, args)
    return DormantRoot(options, number, args, kwargs)


#: Whether every type an iterable gives is a scalar's (in C: no loop of bytecodes per argument).
_all_scalars = SCALARS.issuperset


def dormant_root(
    number: int, start_mono_ns: int, options: LogOptions, args: tuple[Any, ...]
) -> DormantRoot:
    """What `Log.__init__` does for a root of scalar arguments, without its branches (the
    scalars are immutable: kept as they are, as a sampled log keeps them)."""
    dormant: DormantRoot = object.__new__(DormantRoot)
    dormant.trace_hold = dormant
    dormant._number = number
    dormant.options = options
    dormant.parent = None
    dormant.args = args
    # On the instance, though their class defaults say the same: the root's end reads them,
    # and Python 3.11 reads a class default through an instance ~10x slower.
    dormant.user_fields = dormant.error = dormant.held = dormant.decided = None
    dormant._start_mono_ns = start_mono_ns
    dormant.duration_ns = None
    return dormant


# --- held records (`_held`): traces dropped without a Log -------------------------------------

#: Held roots dropped with nothing under them (counted in C: `next()` is atomic).
held_dropped = itertools.count()
_held_dropped_before = 0  # its count at the last reset


def _count(counter: itertools.count[int]) -> int:
    """How many times `next()` was called on a fresh `itertools.count()` (read, not drawn)."""
    return int(repr(counter)[6:-1])


def count_dropped(logs: int) -> None:
    """A trace dropped as held records, with its `logs` (its root included)."""
    global _sampled_out, _sampled_out_logs
    with _lock:
        _sampled_out += 1
        _sampled_out_logs += logs


class _Hold:
    """An unsampled trace, held until its root ends (see the module's docstring): the logs
    under its root that started and ended, and the rule that decides the trace at the root's
    end. The trace's root is the hold itself (`DormantRoot`, `holds_itself`), or a local root
    under an unsampled remote parent (`LocalRootHold.local_root`). Once decided, the root's
    own `trace_hold` becomes `DROPPED` or `KEPT`: the root then refers to no hold of its own,
    so it is freed as soon as the program lets it go (no reference cycle for the collector)."""

    # the hold's state (class defaults; `open_root` sets them on the roots it makes, for speed)
    held: list[Log] | None = None  # logs under the root that started, in start order
    finished: list[Log] | None = None  # those that ended, in end order
    errored = False  # a held log had an error
    decided: bool | None = None  # None: the root is open; then kept (True) or dropped
    holds_itself = False
    local_root: Log

    def started(self, log: Log) -> None:
        """A log of this trace opened (the recorder calls this instead of the sinks)."""
        global _sampled_out_logs
        _lock.acquire()
        try:
            decided = self.decided
            if decided is None:
                held = self.held
                if held is None:
                    held = self.held = []
                held.append(log)
                if len(held) >= HOLD_MAX_LOGS:
                    self._keep("too_big")
                return
            if not decided:
                _sampled_out_logs += 1
                return
        finally:
            _lock.release()
        _announce(log, True)  # a late log of a kept trace goes as any log does

    def ended(self, log: Log) -> None:
        """A log of this trace closed (the recorder calls this instead of the sinks); the
        root's end decides the trace. (Explicit acquire and release: cheaper than `with`, on
        the path of every unsampled root.)"""
        global _sampled_out, _sampled_out_logs
        root: Log = self if self.holds_itself else self.local_root  # type: ignore[assignment]
        _lock.acquire()
        try:
            decided = self.decided
            if decided is None:
                if log is not root:  # held until the root ends
                    if log.error is not None:
                        self.errored = True
                    finished = self.finished
                    if finished is None:
                        finished = self.finished = []
                    finished.append(log)
                    return
                slower = keep_slower_than_ns
                if root.error is not None or self.errored:
                    self._keep("error")
                elif slower is not None and (root.duration_ns or 0) >= slower:
                    self._keep("slow")
                else:  # the common case: dropped
                    self.decided = False
                    root.trace_hold = DROPPED
                    _sampled_out += 1
                    held = self.held
                    if held is None:
                        _sampled_out_logs += 1
                    else:
                        _sampled_out_logs += 1 + len(held)
                        self.held = self.finished = None
                    return
                root.trace_hold = KEPT
                decided = True
            if decided:  # the root's end after its trace, or a log of a kept trace ending late
                _announce(log, False)
        finally:
            _lock.release()

    def _keep(self, reason: str) -> None:
        """Deliver the trace (under the lock, so a log ending meanwhile waits its turn): what
        started, in order, then what ended, in order. The root's end is the caller's."""
        self.decided = True
        _kept_by_tail[reason] = _kept_by_tail.get(reason, 0) + 1
        _announce(cast(Log, self) if self.holds_itself else self.local_root, True)
        for log in self.held or ():
            _announce(log, True)
        for log in self.finished or ():
            _announce(log, False)
        self.held = self.finished = None


class _Decided:
    """The `trace_hold` of an unsampled trace's root once the trace is decided: what starts or
    ends under the root from then on (late logs) follows the decision."""

    def __init__(self, kept: bool) -> None:
        self.kept = kept

    def started(self, log: Log) -> None:
        global _sampled_out_logs
        if self.kept:
            _announce(log, True)
        else:
            with _lock:
                _sampled_out_logs += 1

    def ended(self, log: Log) -> None:
        if self.kept:
            _announce(log, False)


DROPPED = _Decided(kept=False)
KEPT = _Decided(kept=True)


class DormantRoot(Log, _Hold):
    """The root of a trace that was not sampled: a Log like any other to the program (and to
    its children, which open under it and inherit it as their `trace_hold`), and the trace's
    hold.

    Made for as little as possible on the call path (`open_root`)."""

    def __init__(
        self,
        options: LogOptions,
        number: int,
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
    ) -> None:
        """Opened as any Log (arguments copied or redacted now: it may still be delivered);
        `open_root` makes the common case, scalar arguments, without this."""
        Log.__init__(self, options, None, args, kwargs)
        self._number = number
        self.trace_hold = self  # until the trace is decided (then DROPPED or KEPT)

    holds_itself = True

    def ended(self, log: Log) -> None:
        """The commonest end first, inline: the root's own, with no log held under it, no
        error and not slow: the trace is dropped (under the lock: a child may be starting in
        another thread). Anything else: `_Hold.ended`."""
        global _sampled_out, _sampled_out_logs
        slower = keep_slower_than_ns
        if (
            log is self
            and self.error is None
            and (slower is None or (self.duration_ns or 0) < slower)
        ):
            _lock.acquire()
            try:
                if self.held is None and self.decided is None:
                    self.decided = False
                    self.trace_hold = DROPPED
                    _sampled_out += 1
                    _sampled_out_logs += 1
                    return
            finally:
                _lock.release()
        _Hold.ended(self, log)


class LocalRootHold(_Hold):
    """The hold of a local root under an unsampled remote parent (`RemoteDecision`): the
    root is an ordinary Log, announced (with its trace) only if the tail rule keeps it."""

    def __init__(self, root: Log) -> None:
        self.local_root = root


class RemoteDecision:
    """The `trace_hold` of a continued trace's stand-in (`_remote.RemoteParent`) when its
    local roots must be decided here: the caller said its trace is not sampled (trusted
    headers: its decision is followed), or the headers are not trusted (each local root is
    decided by this process's rate, as a root of its own). The recorder tells it of each local
    root's start (nothing else reaches it: the root's children inherit the root's decision)."""

    def __init__(self, caller_sampled: bool | None) -> None:
        self.caller_sampled = caller_sampled  # None: decide by the rate

    def started(self, log: Log) -> None:
        if self._sampled(log):
            log.trace_hold = None
            _announce(log, True)
        else:
            log.trace_hold = LocalRootHold(log)

    def ended(self, log: Log) -> None:  # a local root is decided at its start: not reached
        _announce(log, False)

    def _sampled(self, log: Log) -> bool:
        if self.caller_sampled is not None:
            return self.caller_sampled
        below = log.options.sample_threshold
        if below is None:
            below = rate_threshold
        return below_threshold(_number_of(log), _log.seed, below)


def _number_of(log: Log) -> int:
    """What a local root's decision is made on: its number, or for a span's log (which has
    none: its id is `span_<trace>_<span>`, hexadecimal) its span id's last 32 bits."""
    number: int | None = getattr(log, "_number", None)
    return number if number is not None else int(log.log_id[-8:], 16)


def _announce(log: Log, opening: bool) -> None:
    """Tell the sinks that `log` opened (or closed), as the recorder does for a sampled log."""
    try:
        for callback in _sinks.on_start if opening else _sinks.on_end:
            callback(log)
    except Exception as exc:
        _guard.internal_error("log-open" if opening else "log-end", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: globals().update(_lock=threading.Lock()))

_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())
