"""What a call gives a log besides its copied arguments (`_serialize.capture_value`): the
binding of arguments to parameter names (done on the worker), and what it printed (a tee on
sys.stdout that routes each write to the current log; optionally `logging` records)."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TextIO

from flowtrace import _config, _guard
from flowtrace._context import current, open_ancestor
from flowtrace._serialize import Limits, limits, set_limits

if TYPE_CHECKING:
    from flowtrace._log import Log

__all__ = ["InputBinder", "StdoutTee", "append_output", "ensure_stdout_tee"]


class InputBinder:
    """Binds a call's arguments to parameter names; built once per decorated function."""

    __slots__ = ("_defaults", "_names", "_signature")

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        # The common signature (plain named parameters) binds without inspect's machinery.
        self._names: tuple[str, ...] | None = None
        self._defaults: dict[str, Any] = {}
        if self._signature is not None and all(
            p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            for p in self._signature.parameters.values()
        ):
            self._names = tuple(self._signature.parameters)
            self._defaults = {
                name: p.default
                for name, p in self._signature.parameters.items()
                if p.default is not inspect.Parameter.empty
            }

    def bind(
        self, skip_first: bool, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Names → values, defaults applied. `skip_first`: the call was bound to an instance or
        class (the first argument), which is not an input, whatever its parameter's name."""
        names = self._names
        if names is not None and len(args) <= len(names) and not kwargs:
            inputs = dict(zip(names, args, strict=False))  # fewer args: defaults below
            if len(args) < len(names):
                for name in names[len(args) :]:
                    if name not in self._defaults:
                        return self._bind_slowly(skip_first, args, kwargs)  # a TypeError call
                    inputs[name] = self._defaults[name]
            if skip_first and names:
                del inputs[names[0]]
            return inputs
        return self._bind_slowly(skip_first, args, kwargs)

    def _bind_slowly(
        self, skip_first: bool, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        if self._signature is None:
            return _unbound(args, kwargs)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return _unbound(args, kwargs)
        bound.apply_defaults()
        inputs: dict[str, Any] = {}
        params = self._signature.parameters
        for index, (name, value) in enumerate(bound.arguments.items()):
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                # `def method(*args)`: the instance is the first of *args
                inputs[name] = list(value[1:] if skip_first and index == 0 else value)
            elif skip_first and index == 0:
                continue
            elif kind is inspect.Parameter.VAR_KEYWORD:
                # **kwargs are named arguments: record them by name, beside the others.
                for key, item in value.items():
                    inputs.setdefault(key, item)
            else:
                inputs[name] = value
        return inputs


def _unbound(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if args:
        inputs["args"] = list(args)
    if kwargs:
        inputs["kwargs"] = dict(kwargs)
    return inputs


# --- stdout ----------------------------------------------------------------------------------


def append_output(log: Log, text: str) -> None:
    """Add printed text (or a logging record) to an open log, keeping only what will be stored:
    its first `max_string_chars` characters, and the count of all of them for the marker (a
    long run that prints hundreds of megabytes holds 64 Ki characters, not the megabytes)."""
    written = log.stdout_chars
    log.stdout_chars = written + len(text)
    room = limits().max_string - written
    if room <= 0:
        return
    if len(text) > room:
        text = text[:room]
    parts = log.stdout_parts
    if parts is None:
        log.stdout_parts = [text]
    else:
        parts.append(text)


class StdoutTee:
    """Stands in for sys.stdout: every write goes on to the stream it wraps, unchanged, and is
    also appended to the innermost open log of the writing thread or task."""

    def __init__(self, target: TextIO) -> None:
        self._flowtrace_target = target

    def write(self, text: str) -> int:
        log = current.get()
        if log is not None and _capture_stdout:
            try:
                if log.duration_ns is not None:  # the context held a log that has ended
                    log = open_ancestor(log)
                if log is not None and type(text) is str:
                    append_output(log, text)
            except Exception as exc:
                _guard.internal_error("stdout-capture", exc)
        return self._flowtrace_target.write(text)

    def flush(self) -> None:
        self._flowtrace_target.flush()

    def __getattr__(self, name: str) -> Any:
        # encoding, fileno, isatty, buffer...: the wrapped stream answers.
        return getattr(self._flowtrace_target, name)


_capture_stdout = True


def set_capture_stdout(enabled: bool) -> None:
    global _capture_stdout
    _capture_stdout = enabled


def ensure_stdout_tee() -> None:
    """Wrap whatever sys.stdout is now (once): a stream the user put there still gets every
    write, and the tee follows it."""
    out = sys.stdout
    if out is not None and type(out) is not StdoutTee and _capture_stdout:
        sys.stdout = StdoutTee(out)


# --- logging (optional) ----------------------------------------------------------------------


class LogRecordCapture(logging.Handler):
    """Appends logging records emitted inside a flow to that log's stdout."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # Never capture flowtrace's own logger: its records must not loop into traced logs.
        if record.name == "flowtrace" or record.name.startswith("flowtrace."):
            return
        log = open_ancestor(current.get())
        if log is None:
            return
        try:
            line = self.format(record) + "\n"
        except Exception:
            return
        append_output(log, line)


_logging_handler: LogRecordCapture | None = None


def set_capture_logging(enabled: bool) -> None:
    global _logging_handler
    root = logging.getLogger()
    if enabled and _logging_handler is None:
        _logging_handler = LogRecordCapture()
        root.addHandler(_logging_handler)
    elif not enabled and _logging_handler is not None:
        root.removeHandler(_logging_handler)
        _logging_handler = None


def _apply_settings(settings: _config.Settings) -> None:
    set_limits(
        Limits(
            max_depth=settings.max_depth,
            max_string=settings.max_string_chars,
            max_items=settings.max_items,
        )
    )
    set_capture_stdout(settings.capture_stdout)
    set_capture_logging(settings.capture_logging)


_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())
