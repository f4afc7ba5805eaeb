"""The internal-error guard: flowtrace never raises into user code.

An internal failure is logged once per kind on the ``flowtrace`` logger and swallowed. Hooks
let this project's own test suite turn every internal failure into a test failure, so bugs
cannot hide behind the guard.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["add_hook", "guarded", "internal_error", "logger", "remove_hook", "swallowing"]

logger = logging.getLogger("flowtrace")

Hook = Callable[[str, BaseException | None], None]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_hooks: list[Hook] = []
_reported: set[str] = set()
_lock = threading.Lock()


def add_hook(hook: Hook) -> None:
    """Call `hook(kind, exc)` on every internal error (the test suite collects them)."""
    _hooks.append(hook)


def remove_hook(hook: Hook) -> None:
    if hook in _hooks:
        _hooks.remove(hook)


def internal_error(kind: str, exc: BaseException | None = None, message: str = "") -> None:
    """Report an internal failure: logged once per `kind`, then swallowed by the caller."""
    try:
        with _lock:
            first = kind not in _reported
            _reported.add(kind)
        if first:
            text = message or "flowtrace internal error"
            logger.error(
                "%s [%s] (further errors of this kind are not logged)",
                text,
                kind,
                exc_info=exc if exc is not None else False,
            )
        for hook in list(_hooks):
            hook(kind, exc)
    except Exception:  # the guard itself must never raise
        pass


@contextmanager
def guarded(kind: str) -> Iterator[None]:
    """Run a block of library code; an exception in it is reported, not raised."""
    try:
        yield
    except Exception as exc:
        internal_error(kind, exc)


def swallowing(kind: str, default: _R) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate library code so an exception is reported and `default` returned."""

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                internal_error(kind, exc)
                return default

        return wrapper

    return decorate
