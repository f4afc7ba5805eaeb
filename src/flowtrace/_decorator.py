"""`flow`: a decorator and an (async) context manager that records each call as a Log.

Work that depends only on the function (its path, signature, kind) is done once, at
decoration. Per call: a Log (ids and two clock reads), a snapshot of non-scalar arguments, a
context push and pop. Everything else (binding names, encoding) happens on the worker.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import Token
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

import wrapt

from flowtrace import _config, _guard, _log
from flowtrace._capture import (
    SCALARS,
    CallInputs,
    InputBinder,
    StdoutTee,
    capture_value,
    ensure_stdout_tee,
    limits,
)
from flowtrace._context import current
from flowtrace._log import UNSET, Log, LogOptions

__all__ = ["flow"]

_F = TypeVar("_F", bound=Callable[..., Any])

Redactor = Callable[[Any], Any]

_enabled = True


def _apply_settings(settings: _config.Settings) -> None:
    global _enabled
    _enabled = settings.enabled


# --- options -------------------------------------------------------------------------------


class _Options:
    """What a `flow(...)` call was given."""

    __slots__ = ("capture_inputs", "capture_output", "inputs", "log_options", "path")

    def __init__(
        self,
        path: str | None,
        inputs: Any,
        log_options: LogOptions,
        capture_inputs: bool | Redactor,
        capture_output: bool | Redactor,
    ) -> None:
        self.path = path
        self.inputs = inputs
        self.log_options = log_options
        self.capture_inputs = capture_inputs
        self.capture_output = capture_output


def _start(log: Log) -> None:
    try:
        if type(sys.stdout) is not StdoutTee:
            ensure_stdout_tee()
        for sink in _log._sinks:
            sink.log_started(log)
    except Exception as exc:
        _guard.internal_error("log-start", exc)


_USER_FIELDS = (
    "inputs",
    "output",
    "output_message",
    "messages",
    "metadata",
    "provider_request",
    "provider_response",
)


def _freeze(log: Log) -> None:
    """Snapshot what the user set on the log, as it is at the end of the call."""
    own = log.__dict__
    for name in _USER_FIELDS:
        if name in own:
            own[name] = capture_value(own[name])


def _succeed(log: Log, options: _Options, result: Any, how: str | None = None) -> None:
    try:
        if log.touched:
            _freeze(log)
        capture = options.capture_output
        if capture is not False and "output" not in log.__dict__:
            if capture is not True:
                result = capture(result)
            log.__dict__["output"] = result if type(result) in SCALARS else capture_value(result)
        log.close(how)
    except Exception as exc:
        _guard.internal_error("log-end", exc)
        log.close(how)


def _interruption(exc: BaseException) -> str | None:
    """How an interruption (not a failure of the function) is recorded, else None."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return f"interrupted: {type(exc).__name__}"
    asyncio = sys.modules.get("asyncio")  # no asyncio loaded: no CancelledError possible
    if asyncio is not None and isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return None


def _fail(log: Log, exc: BaseException) -> None:
    try:
        if log.touched:
            _freeze(log)
        how = _interruption(exc)
        if how is None:
            log.__dict__["error"] = _describe(exc)
            log.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            how = "error"
        log.close(how)
    except Exception as internal:
        _guard.internal_error("log-error", internal)
        log.close("error")


def _describe(exc: BaseException) -> str:
    name = type(exc).__qualname__
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    return f"{name}: {message}" if message else name


# --- decorator -----------------------------------------------------------------------------


def default_path(fn: Callable[..., Any]) -> str:
    """`package/module/Qualified.name`; a script run as __main__ is named by its file."""
    module = getattr(fn, "__module__", None) or "unknown"
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        module = Path(main_file).stem if main_file else "__main__"
    qualname = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "function"))
    return f"{module.replace('.', '/')}/{qualname.replace('.<locals>', '')}"


class _Spec:
    """Per decorated function: its options, path and input binder."""

    __slots__ = ("binder", "capture_all", "options", "path", "static")

    def __init__(self, fn: Callable[..., Any], options: _Options, static: bool) -> None:
        self.options = options
        self.path = options.path or default_path(fn)
        self.binder = InputBinder(fn)
        self.static = static
        self.capture_all = options.capture_inputs is True


#: A call's inputs as recorded at call time: (value set by a redactor, raw call snapshot).
_Inputs = tuple[Any, "CallInputs | None"]


def _inputs_of_call(
    spec: _Spec, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Inputs:
    if spec.capture_all:
        return UNSET, _snapshot_call(spec, instance, args, kwargs)
    return _redacted_inputs(spec, instance, args, kwargs), None


def _snapshot_call(
    spec: _Spec, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> CallInputs:
    # Immutable scalars are kept by reference; anything else is snapshotted now, since the
    # function (or its caller) may mutate it later. Binding to names waits for the worker.
    for value in args:
        if type(value) not in SCALARS:
            args = tuple([capture_value(v) for v in args])
            break
    if kwargs:
        kwargs = {name: capture_value(v) for name, v in kwargs.items()}
    return (spec.binder, instance is not None and not spec.static, args, kwargs)


def _redacted_inputs(
    spec: _Spec, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    capture = spec.options.capture_inputs
    if not callable(capture):
        return UNSET
    # A redactor sees the real arguments by name, at call time; its result is recorded.
    skip_first = instance is not None and not spec.static
    return capture_value(capture(spec.binder.bind(skip_first, args, kwargs)))


def _open_log(spec: _Spec, inputs: _Inputs) -> Log | None:
    try:
        log = Log(spec.path, current.get(), spec.options.log_options)
        value, call_inputs = inputs
        if value is not UNSET:
            log.__dict__["inputs"] = value
        log.call_inputs = call_inputs
    except Exception as exc:
        _guard.internal_error("log-open", exc)
        return None
    _start(log)
    return log


def _open_call(
    spec: _Spec, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Log | None:
    """The call path: one Log, its inputs, announced to the sinks."""
    try:
        log = Log(spec.path, current.get(), spec.options.log_options)
        if spec.capture_all:
            log.call_inputs = _snapshot_call(spec, instance, args, kwargs)
        elif spec.options.capture_inputs is not False:
            log.__dict__["inputs"] = _redacted_inputs(spec, instance, args, kwargs)
    except Exception as exc:
        _guard.internal_error("log-open", exc)
        return None
    try:
        if type(sys.stdout) is not StdoutTee:
            ensure_stdout_tee()
        for sink in _log._sinks:
            sink.log_started(log)
    except Exception as exc:
        _guard.internal_error("log-start", exc)
    return log


def _sync_wrapper(spec: _Spec) -> Callable[..., Any]:
    def call(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not _enabled:
            return wrapped(*args, **kwargs)
        log = _open_call(spec, instance, args, kwargs)
        if log is None:
            return wrapped(*args, **kwargs)
        token = current.set(log)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            current.reset(token)
            _fail(log, exc)
            raise
        current.reset(token)
        _succeed(log, spec.options, result)
        return result

    return call


def _async_wrapper(spec: _Spec) -> Callable[..., Any]:
    async def call(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not _enabled:
            return await wrapped(*args, **kwargs)
        log = _open_call(spec, instance, args, kwargs)
        if log is None:
            return await wrapped(*args, **kwargs)
        token = current.set(log)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            current.reset(token)
            _fail(log, exc)
            raise
        current.reset(token)
        _succeed(log, spec.options, result)
        return result

    return call


class _Items:
    """A generator's yielded items, kept within the serialization budgets."""

    __slots__ = ("chars", "count", "items", "strings")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.strings = True
        self.chars = 0
        self.count = 0

    def add(self, item: Any) -> None:
        self.count += 1
        budget = limits()
        if self.strings and type(item) is str:
            if self.chars <= budget.max_string:
                self.items.append(item)
            self.chars += len(item)
            return
        self.strings = False
        if len(self.items) < budget.max_items:
            self.items.append(capture_value(item))

    def output(self) -> Any:
        if self.strings:
            return "".join(self.items)
        if self.count > len(self.items):
            return [*self.items, f"...[truncated, {self.count} items]"]
        return list(self.items)


def _end_generator(log: Log, spec: _Spec, items: _Items, how: str | None = None) -> None:
    _succeed(log, spec.options, items.output(), how)


def _traced_generator(
    spec: _Spec, gen: Generator[Any, Any, Any], inputs: _Inputs
) -> Generator[Any, Any, Any]:
    # The log opens when the body first runs, under the flow that is iterating it.
    log = _open_log(spec, inputs)
    if log is None:
        return (yield from gen)
    items = _Items()
    method: Callable[[Any], Any] = gen.send
    arg: Any = None
    while True:
        token = current.set(log)
        try:
            item = method(arg)
        except StopIteration as stop:
            current.reset(token)
            _end_generator(log, spec, items)
            return stop.value
        except BaseException as exc:
            current.reset(token)
            _fail(log, exc)
            raise
        current.reset(token)
        items.add(item)
        try:
            arg = yield item
        except GeneratorExit:
            # break, close() or garbage collection: the log ends with what was yielded.
            token = current.set(log)
            try:
                gen.close()
            except BaseException as exc:
                current.reset(token)
                _fail(log, exc)
                raise
            current.reset(token)
            _end_generator(log, spec, items, "closed early")
            raise
        except BaseException as exc:
            method, arg = gen.throw, exc
            continue
        method = gen.send


async def _traced_async_generator(
    spec: _Spec, agen: AsyncGenerator[Any, Any], inputs: _Inputs
) -> AsyncGenerator[Any, Any]:
    log = _open_log(spec, inputs)
    if log is None:
        async for item in agen:
            yield item
        return
    items = _Items()
    method: Callable[[Any], Any] = agen.asend
    arg: Any = None
    while True:
        token = current.set(log)
        try:
            item = await method(arg)
        except StopAsyncIteration:
            current.reset(token)
            _end_generator(log, spec, items)
            return
        except BaseException as exc:
            current.reset(token)
            _fail(log, exc)
            raise
        current.reset(token)
        items.add(item)
        try:
            arg = yield item
        except GeneratorExit:
            token = current.set(log)
            try:
                await agen.aclose()
            except BaseException as exc:
                current.reset(token)
                _fail(log, exc)
                raise
            current.reset(token)
            _end_generator(log, spec, items, "closed early")
            raise
        except BaseException as exc:
            method, arg = agen.athrow, exc
            continue
        method = agen.asend


def _generator_wrapper(spec: _Spec) -> Callable[..., Any]:
    def call(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        gen = wrapped(*args, **kwargs)  # creating a generator runs none of its body
        if not _enabled:
            return gen
        try:
            inputs = _inputs_of_call(spec, instance, args, kwargs)
        except Exception as exc:
            _guard.internal_error("log-inputs", exc)
            inputs = (UNSET, None)
        return _traced_generator(spec, gen, inputs)

    return call


def _async_generator_wrapper(spec: _Spec) -> Callable[..., Any]:
    def call(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        agen = wrapped(*args, **kwargs)
        if not _enabled:
            return agen
        try:
            inputs = _inputs_of_call(spec, instance, args, kwargs)
        except Exception as exc:
            _guard.internal_error("log-inputs", exc)
            inputs = (UNSET, None)
        return _traced_async_generator(spec, agen, inputs)

    return call


def _decorate(target: Any, options: _Options) -> Any:
    if options.inputs is not None:
        raise TypeError(
            "flow(inputs=...) is for with-blocks; a decorated function's inputs are its arguments"
        )
    static = isinstance(target, staticmethod)
    fn = target.__func__ if isinstance(target, (staticmethod, classmethod)) else target
    if not callable(fn):
        raise TypeError(f"flow() decorates functions, not {type(target).__name__}")
    spec = _Spec(fn, options, static)
    if inspect.isasyncgenfunction(fn):
        wrapper = _async_generator_wrapper(spec)
    elif inspect.iscoroutinefunction(fn):
        wrapper = _async_wrapper(spec)
    elif inspect.isgeneratorfunction(fn):
        wrapper = _generator_wrapper(spec)
    else:
        wrapper = _sync_wrapper(spec)
    return wrapt.FunctionWrapper(target, wrapper)


# --- with / async with ---------------------------------------------------------------------


class Flow:
    """What `flow(...)` returns when not given a function: a decorator, and a context manager
    whose block is one log (`with flow("agents/support", inputs={...}) as log:`)."""

    def __init__(self, options: _Options) -> None:
        self._options = options
        self._open: dict[Log, Token[Log | None]] = {}

    def __call__(self, fn: _F) -> _F:
        return _decorate(fn, self._options)  # type: ignore[no-any-return]

    def __enter__(self) -> Log:
        options = self._options
        log = Log(options.path or "flow", current.get(), options.log_options)
        if options.inputs is not None:
            log.__dict__["inputs"] = capture_value(options.inputs)
        _start(log)
        self._open[log] = current.set(log)
        return log

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log = self._pop_open()
        if log is None:
            return
        if exc is None:
            _succeed(log, self._options, UNSET)
        else:
            _fail(log, exc)

    async def __aenter__(self) -> Log:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _pop_open(self) -> Log | None:
        # The block being left is the innermost open log of this context; one Flow object
        # may be entered by several tasks at once, so find it by the context, not by order.
        log = current.get()
        token = self._open.pop(log, None) if log is not None else None
        if token is None:
            if not self._open:
                return None
            log, token = self._open.popitem()
            _guard.internal_error("flow-exit", None, "flow block exited out of order")
        try:
            current.reset(token)
        except ValueError:
            current.set(log.parent if log is not None else None)  # exited in another context
        return log


@overload
def flow(target: _F, /) -> _F: ...


@overload
def flow(
    target: str | None = None,
    /,
    *,
    path: str | None = None,
    inputs: Any = None,
    attributes: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    user: str | None = None,
    environment: str | None = None,
    source: str | None = None,
    save: bool | None = None,
    version_id: str | None = None,
    capture_inputs: bool | Redactor = True,
    capture_output: bool | Redactor = True,
) -> Flow: ...


def flow(
    target: Any = None,
    /,
    *,
    path: str | None = None,
    inputs: Any = None,
    attributes: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    user: str | None = None,
    environment: str | None = None,
    source: str | None = None,
    save: bool | None = None,
    version_id: str | None = None,
    capture_inputs: bool | Redactor = True,
    capture_output: bool | Redactor = True,
) -> Any:
    """Record calls as logs of a trace.

    - `@flow` / `@flow(path=..., attributes=...)` on a function, method, generator or their
      async kinds: every call is a log.
    - `with flow("agents/support", inputs={...}) as log:` (or `async with`): the block is one
      log; set `log.output`, `log.metadata`... inside.

    A flow opened while another is open in the same context is its child. The default path of a
    decorated function is `package/module/Qualified.name`.
    """
    if isinstance(target, str):
        if path is not None:
            raise TypeError("give the path once: flow('a/b') or flow(path='a/b')")
        path = target
        target = None
    log_options = LogOptions(
        # Snapshot now: the same attributes must mean the same version on every call.
        attributes=None if attributes is None else capture_value(attributes),
        metadata=metadata,
        user=user,
        environment=environment,
        source=source,
        save=save,
        version_id=version_id,
    )
    options = _Options(path, inputs, log_options, capture_inputs, capture_output)
    if target is None:
        return Flow(options)
    return _decorate(target, options)


_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())
