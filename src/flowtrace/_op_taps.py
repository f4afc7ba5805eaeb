"""Who hears of the operations the planner emits: a tap sees each planned batch on the
pipeline's worker, once, before it goes to the outbox (the OTLP export is one).

Taps run on the worker, never on the user's call path; each must only take the batch in (a
bounded append) and return: the worker's pace is the main delivery's. A tap that fails is
reported (`internal_error`) and the batch is delivered all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from flowtrace import _guard

if TYPE_CHECKING:
    from flowtrace._planner import PlannedOp

__all__ = ["Tap", "add_tap", "remove_tap", "taps", "tell"]

Tap = Callable[["Sequence[PlannedOp]"], object]

#: Read by the worker at each batch (a tuple, replaced whole under the lock).
taps: tuple[Tap, ...] = ()
_lock = threading.Lock()


def add_tap(tap: Tap) -> None:
    global taps
    with _lock:
        if tap not in taps:
            taps = (*taps, tap)


def remove_tap(tap: Tap) -> None:
    global taps
    with _lock:
        taps = tuple(t for t in taps if t != tap)


def tell(ops: Sequence[PlannedOp]) -> None:
    for tap in taps:
        try:
            tap(ops)
        except Exception as exc:
            _guard.internal_error("operation-tap", exc)
