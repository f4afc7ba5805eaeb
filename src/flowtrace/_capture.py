"""What a call gives a log besides its copied arguments (`_serialize.capture_value`): the
binding of arguments to parameter names (done on the worker), what it printed (a tee on
sys.stdout that routes each write to the current log; optionally `logging` records), and the
traceback of the exception it raised (taken cheaply, formatted on the worker)."""

from __future__ import annotations

import inspect
import logging
import sys
import traceback
from collections.abc import Callable, Mapping
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from flowtrace import _config, _guard
from flowtrace._context import current_here, open_ancestor
from flowtrace._serialize import Limits, limits, set_limits

if TYPE_CHECKING:
    from flowtrace._log import Log

__all__ = [
    "CapturedTraceback",
    "InputBinder",
    "StdoutTee",
    "append_output",
    "describe_message",
    "ensure_stdout_tee",
]


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
        log = current_here()
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


# --- the traceback of a failed call ------------------------------------------------------------

#: Frames of one traceback kept (the outermost few, where the flow's function is, and the
#: innermost, where the error was raised); a RecursionError's thousand frames are counted.
OUTER_FRAMES = 16
INNER_FRAMES = 48
#: Chained exceptions (`raise ... from ...`, errors while handling another) kept.
CHAINED_EXCEPTIONS = 8

_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"

_Frames = list[tuple[CodeType, int | None]]


class CapturedTraceback:
    """An exception's traceback taken on the call path, cheaply: for each exception of its
    chain, its text and the code and line of a bounded number of its frames (no frame is kept
    alive, no file is read). `text()` formats it as Python prints it (source lines from
    linecache), on the worker. Capturing never recurses, so it works at the recursion limit,
    and costs a pointer walk per frame, so an error through a deep recursion is not quadratic.
    """

    __slots__ = ("_chain", "_text")

    def __init__(self, exc: BaseException, message: str, skip_file: str) -> None:
        self._text: str | None = None
        # (how it links to the next one, its text, its frames, frames left out), oldest first
        self._chain: list[tuple[str, str, _Frames, int]] = []
        seen: set[int] = set()
        link = ""
        current_exc: BaseException | None = exc
        while current_exc is not None and len(seen) < CHAINED_EXCEPTIONS:
            seen.add(id(current_exc))
            tb = current_exc.__traceback__
            if current_exc is exc:  # the wrapper's own frames are not the user's traceback
                while tb is not None and tb.tb_frame.f_code.co_filename == skip_file:
                    tb = tb.tb_next
            frames, left_out = _bounded_frames(tb)
            text = exception_text(current_exc, message if current_exc is exc else None)
            self._chain.append((link, text, frames, left_out))
            cause = current_exc.__cause__
            if cause is not None:
                current_exc, link = cause, _CAUSE
            elif not current_exc.__suppress_context__:
                current_exc, link = current_exc.__context__, _CONTEXT
            else:
                current_exc = None
            if current_exc is not None and id(current_exc) in seen:
                break
        self._chain.reverse()

    def text(self) -> str:
        if self._text is None:
            self._text = "".join(self._format())
        return self._text

    def _format(self) -> list[str]:
        lines: list[str] = []
        link = ""
        for next_link, text, frames, left_out in self._chain:
            lines.append(link)
            link = next_link
            if frames:
                lines.append("Traceback (most recent call last):\n")
                summaries = [
                    traceback.FrameSummary(code.co_filename, lineno, code.co_name)
                    for code, lineno in frames
                ]
                outer = min(len(summaries), OUTER_FRAMES) if left_out else len(summaries)
                lines.extend(traceback.StackSummary.from_list(summaries[:outer]).format())
                if left_out:
                    lines.append(f"  [{left_out} more frames not recorded]\n")
                    lines.extend(traceback.StackSummary.from_list(summaries[outer:]).format())
            lines.append(text)
        return lines


def _bounded_frames(tb: TracebackType | None) -> tuple[_Frames, int]:
    """The code and line of the first OUTER_FRAMES and last INNER_FRAMES frames, and how many
    were left out between them."""
    count = 0
    walk = tb
    while walk is not None:
        count += 1
        walk = walk.tb_next
    left_out = max(count - OUTER_FRAMES - INNER_FRAMES, 0)
    frames: _Frames = []
    index = 0
    while tb is not None:
        if index < OUTER_FRAMES or index >= OUTER_FRAMES + left_out:
            frames.append((tb.tb_frame.f_code, tb.tb_lineno))
        index += 1
        tb = tb.tb_next
    return frames, left_out


def exception_text(exc: BaseException, message: str | None = None) -> str:
    """The last line(s) Python prints for an exception: `module.Type: message` and its notes."""
    kind = type(exc)
    name = kind.__qualname__
    module = kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module}.{name}"
    if message is None:
        message = describe_message(exc)
    text = f"{name}: {message}\n" if message else f"{name}\n"
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        text += "".join(f"{note}\n" for note in notes if isinstance(note, str))
    return text


def describe_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<str() of the exception failed>"


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
        log = open_ancestor(current_here())
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
