"""`flow`: a decorator and an (async) context manager that records each call as a Log.

Work that depends only on the function (its path, signature, kind) is done once, at
decoration. Per call: a Log (an id and clock reads), a budgeted copy of non-scalar arguments, a
context push and pop, two deque appends. Binding names and encoding happen on the worker.

Python functions are wrapped in closures made transparent with `functools.wraps` (signature
and `__wrapped__`), of the same kind as the function (so `inspect.iscoroutinefunction` and
friends answer the same) and binding as methods exactly like the function would. wrapt's
C-level proxy costs several times a closure's call overhead, so it is kept for the callables
that are not plain functions (builtins, partials, callable objects), which it proxies
transparently.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Generator
from contextvars import Token
from pathlib import Path
from types import FunctionType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

import wrapt

from flowtrace import _config, _guard, _held, _log, _sampling, _sinks
from flowtrace._async_block import AsyncBlock
from flowtrace._capture import (
    CapturedTraceback,
    InputBinder,
    StdoutTee,
    describe_message,
    ensure_stdout_tee,
)
from flowtrace._context import (
    Current,
    current_here,
    get_current,
    open_ancestor,
    reset_current,
    set_current,
)
from flowtrace._contract import (
    ENDED_CANCELLED,
    ENDED_CLOSED_EARLY,
    ENDED_ERROR,
    ended_interrupted,
    truncated_items,
)
from flowtrace._held import HELD_ENDED, HeldChild, HeldRoot
from flowtrace._log import UNSET, Log
from flowtrace._options import FlowKeywords, FlowOptions, LogOptions
from flowtrace._sampling import MASK, MULTIPLIER, held_dropped
from flowtrace._serialize import SCALARS, capture_value, limits

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Flow", "default_path", "flow"]

_F = TypeVar("_F", bound=Callable[..., Any])

_enabled = True
# The sample_rate setting is 1 and no flow has a rate of its own: every root is sampled, and
# no thread holds an unsampled root (`_context.held_roots`), so a log opens under the context's.
_every_trace = True
_flow_rates = False  # a flow was given a sample_rate (for as long as the process runs)


def _apply_settings(settings: _config.Settings) -> None:
    global _enabled, _every_trace
    _enabled = settings.enabled
    _every_trace = settings.sample_rate >= 1.0 and not _flow_rates


def _noting_rates(options: LogOptions) -> LogOptions:
    """`options`, noted if they give a sample rate: from then on, every root decides."""
    global _every_trace, _flow_rates
    if options.sample_threshold is not None:
        _flow_rates = True
        _every_trace = False
    return options


# --- paths -----------------------------------------------------------------------------------


def default_path(fn: Callable[..., Any]) -> str:
    """`package/module/Qualified.name`; a script run as __main__ is named by its file."""
    module = getattr(fn, "__module__", None) or "unknown"
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        module = Path(main_file).stem if main_file else "__main__"
    qualname = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "function"))
    return f"{module.replace('.', '/')}/{qualname.replace('.<locals>', '')}"


def _defined_in_class(fn: Callable[..., Any]) -> bool:
    """A function written in a class body: called through an instance or the class, its
    first argument is the instance (or class), which binding makes not an input."""
    parts = str(getattr(fn, "__qualname__", "")).split(".")
    return len(parts) >= 2 and parts[-2] != "<locals>"


# --- opening and closing logs (the call path) ------------------------------------------------


def _open(
    options: LogOptions,
    args: tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Log | None:
    """The one way a log opens, for every entry kind: a new log under the current one,
    announced to the sinks. None when flowtrace is disabled (nothing is recorded) or failed.
    (The plain-function wrapper has this inlined, as its hot path; the same tests cover it.)"""
    if not _enabled:
        return None
    try:
        parent = get_current()  # `current_here()`, inlined
        if type(parent) is list:  # a held record: its Log now
            parent = _held.held_log(parent)
        if parent is not None or _every_trace:
            log = Log(options, parent, args, kwargs)  # type: ignore[arg-type]
        else:  # a root, and a rate to sample at
            log = _sampling.open_root(options, args, kwargs)
    except Exception as exc:
        if not isinstance(exc, RecursionError):  # the user's recursion: the call fails too
            _guard.internal_error("log-open", exc)
        return None
    _announce(log)
    return log


def _announce(log: Log) -> None:
    try:
        # A root (re)checks the stdout tee: the user may have replaced sys.stdout since.
        if log.parent is None and type(sys.stdout) is not StdoutTee:
            ensure_stdout_tee()
        hold = log.trace_hold  # `Log.announce_start`, inlined: every block and async call
        if hold is None:
            for started in _sinks.on_start:
                started(log)
        elif hold is not log:  # type: ignore[comparison-overlap]
            hold.started(log)
    except Exception as exc:
        _guard.internal_error("log-open", exc)


def _span_left_running_in(log: Log) -> bool:
    """Whether the current log is a span's (`flowtrace.otel`) opened inside `log` and still
    running: a span the block started and did not end (leaked, or ending later elsewhere)."""
    inner = current_here()
    if inner is None or not inner.is_span:
        return False
    while inner is not None and inner.is_span:
        inner = inner.parent
    return inner is log


def _interruption(exc: BaseException) -> str | None:
    """How an interruption (not a failure of the function) is recorded, else None."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return ended_interrupted(type(exc).__name__)
    if _is_cancellation(exc):
        return ENDED_CANCELLED
    return None


def _is_cancellation(exc: BaseException) -> bool:
    asyncio = sys.modules.get("asyncio")  # no asyncio loaded: no CancelledError possible
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _fail_at_any_depth(log: Log, exc: BaseException) -> None:
    """`_fail`, also when the user's recursion filled the stack (RecursionError): the wrapper
    may call this one function more, and ending the log takes a few, so the limit is raised
    for as long as that takes."""
    if not isinstance(exc, RecursionError):
        _fail(log, exc)
        return
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + _ROOM_TO_END_A_LOG)
    try:
        _fail(log, exc)
    finally:
        sys.setrecursionlimit(limit)


def _fail(log: Log, exc: BaseException, output: Any = UNSET) -> None:
    """End a log whose call raised `exc` (which the caller re-raises unchanged); `output`: what
    a generator yielded before."""
    how = ENDED_ERROR
    try:
        interruption = _interruption(exc)
        if interruption is None:
            message = describe_message(exc)
            log.error = (
                f"{type(exc).__qualname__}: {message}" if message else type(exc).__qualname__
            )
            log.error_trace = CapturedTraceback(exc, message, __file__)
        else:
            how = interruption
    except RecursionError:
        pass  # the user's recursion filled the stack: recorded without its text and traceback
    except Exception as internal:
        _guard.internal_error("log-error", internal)
    log.close(how, output)


# --- one wrapper per kind of function --------------------------------------------------------

#: Frames that ending a log takes (close, the traceback's capture, the sinks), lent for that
#: while a RecursionError unwinds a decorated recursion that filled the stack.
_ROOM_TO_END_A_LOG = 50


def _wrap_function(fn: Callable[..., Any], options: LogOptions) -> Callable[..., Any]:
    capture_output = options.capture_output
    capture_all = options.capture_all

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        if not _enabled:
            return fn(*args, **kwargs)
        log = held = None
        child: HeldChild | None = None
        try:  # _open(), inlined: the hot path
            current = get_current()
            if current is not None:
                if type(current) is list:  # under a held record (`_held`)
                    root = current if type(current[0]) is int else current[0]
                    started = root[4]
                    if (
                        len(root) == 5  # the root runs, and has no Log
                        and (root is current or len(current) == 7)  # nor has the parent
                        and not kwargs
                        and capture_all
                        and len(started) < _sampling.HOLD_MAX_LOGS
                    ):
                        for value in args:  # (a loop: cheaper than any call, for a few)
                            if type(value) not in SCALARS:
                                break
                        else:  # held as a record too (`_held.HeldChild`), in its root's list
                            child = [root, _log._mono_ns(), options, args, current, None, None]
                            started.append(child)
                    if child is None:  # it is made a Log now
                        if len(started) >= _sampling.HOLD_MAX_LOGS:  # too big to hold: released
                            _held.release_children(root)
                        log = Log(options, _held.held_log(current), args, kwargs)
                else:
                    log = Log(options, current, args, kwargs)  # type: ignore[arg-type]
            elif _every_trace:
                log = Log(options, None, args, kwargs)
            else:  # a root, and a rate to sample at
                number = next(_log._counter)
                below = options.sample_threshold
                if below is None:
                    below = _sampling.rate_threshold
                if ((number ^ _log.seed) * MULTIPLIER) & MASK < below or kwargs or not capture_all:
                    log = _sampling.open_root(options, args, kwargs, number)
                else:
                    for value in args:  # (a loop: cheaper than any call, for a few arguments)
                        if type(value) not in SCALARS:
                            log = _sampling.open_root(options, args, kwargs, number)
                            break
                    else:  # not sampled, scalar arguments: held as a record, the cheapest root
                        held = [number, _log._mono_ns(), options, args, []]  # `_held.HeldRoot`
                        if type(sys.stdout) is not StdoutTee:
                            ensure_stdout_tee()
            if log is not None:  # `_announce`, inlined (`Log.announce_start`)
                if log.parent is None and type(sys.stdout) is not StdoutTee:
                    ensure_stdout_tee()
                hold = log.trace_hold
                if hold is None:
                    for started in _sinks.on_start:
                        started(log)
                # An unsampled trace: held until its root ends (a DormantRoot is its own hold).
                elif hold is not log:  # type: ignore[comparison-overlap]
                    hold.started(log)
        except Exception as exc:
            if not isinstance(exc, RecursionError):  # that is the user's recursion: below
                _guard.internal_error("log-open", exc)
        if log is None:
            if child is not None:  # `_held.HeldChild`: its end goes in the record
                token = set_current(child)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    reset_current(token)
                    _end_held_child(child, exc, UNSET)
                    raise
                reset_current(token)
                if type(result) in SCALARS and capture_output is True:
                    child[5] = _log._mono_ns() - child[1]
                    child[6] = result
                    child.append(HELD_ENDED)
                    if child[7] is HELD_ENDED:  # ended as a record: nothing made its Log
                        root = child[0]
                        # The root's end takes it, unless the root has ended already
                        # (`_held.HeldRoot` says how to tell).
                        if len(root) < 7 and root[-1] is not HELD_ENDED:
                            return result
                        with _guard.guarded("log-end"):
                            _held.release_late(child)
                        return result
                _end_held_child(child, None, result)
                return result
            if held is None:  # flowtrace failed
                return fn(*args, **kwargs)
            token = set_current(held)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                reset_current(token)
                _end_held_root(held, exc, UNSET)
                raise
            reset_current(token)
            if _sampling.keep_slower_than_ns is None:
                held.append(HELD_ENDED)
                if held[5] is HELD_ENDED and not held[4]:  # the commonest unsampled end
                    next(held_dropped)
                    return result
            _end_held_root(held, None, result)
            return result
        token = set_current(log)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            reset_current(token)
            _fail_at_any_depth(log, exc)
            raise
        reset_current(token)
        if type(result) in SCALARS and log.user_fields is None and capture_output is True:
            # Log.close(None, result) for the commonest end, inlined (`Log.announce_end`).
            log.result = result
            log.duration_ns = _log._mono_ns() - log._start_mono_ns
            try:
                hold = log.trace_hold
                if hold is None:
                    for ended in _sinks.on_end:
                        ended(log)
                else:
                    hold.ended(log)
            except Exception as exc:
                _guard.internal_error("log-end", exc)
        else:
            log.close(None, result)
        return result

    return traced


def _end_held_child(record: HeldChild, exc: BaseException | None, result: Any) -> None:
    """The end of a held child that needs its Log: it failed (`exc`), its result must be
    copied, or something under it made its Log."""
    try:
        log = _held.held_log(record)
    except Exception as internal:
        _guard.internal_error("log-end", internal)
        return
    _end_made(log, exc, result)


def _end_made(log: Log, exc: BaseException | None, result: Any) -> None:
    """The end of a held call whose Log is made: as any log's."""
    if exc is None:
        log.close(None, result)
    else:
        _fail_at_any_depth(log, exc)


def _end_held_root(record: HeldRoot, exc: BaseException | None, result: Any) -> None:
    """The end of a held root that may have to be delivered: it failed (`exc`), something
    under it made it a Log, a child ended under it, or the tail rule may keep it as slow."""
    try:
        if len(record) == 5:
            slower = _sampling.keep_slower_than_ns
            if exc is None and (slower is None or _log._mono_ns() - record[1] < slower):
                record.append(HELD_ENDED)
        if len(record) > 5 and record[5] is HELD_ENDED:  # dropped without a Log
            if record[4]:  # with the children that started under it
                _sampling.count_dropped(1 + _held.drop_children(record))
            else:
                next(held_dropped)
            return
        log = _held.held_log(record)
        if record[-1] is not HELD_ENDED:
            record.append(HELD_ENDED)  # a child starting from now on is no record
        _held.release_children(record)
    except Exception as internal:
        _guard.internal_error("log-end", internal)
        return
    _end_made(log, exc, result)


def _wrap_coroutine_function(fn: Callable[..., Any], options: LogOptions) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        # The log opens when the coroutine starts running, in the task that awaits it.
        log = _open(options, args, kwargs)
        if log is None:
            return await fn(*args, **kwargs)
        token = set_current(log)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            reset_current(token)
            _fail_at_any_depth(log, exc)
            raise
        reset_current(token)
        log.close(None, result)
        return result

    return traced


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
            return [*self.items, truncated_items(self.count)]
        return list(self.items)


def _wrap_generator_function(fn: Callable[..., Any], options: LogOptions) -> Callable[..., Any]:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        # A generator function's wrapper is one too: the log opens when the body first runs,
        # under the flow that iterates it (the flow that created it may be over by then).
        # The loop is written here, not in a helper generator: one frame of the user's stack.
        gen = fn(*args, **kwargs)
        log = _open(options, args, kwargs)
        if log is None:
            return (yield from gen)
        items = _Items()
        method: Callable[[Any], Any] = gen.send
        arg: Any = None
        while True:
            token = set_current(log)
            try:
                item = method(arg)
            except StopIteration as stop:
                reset_current(token)
                log.close(None, items.output())
                return stop.value
            except BaseException as exc:
                reset_current(token)
                _fail(log, exc, items.output())
                raise
            reset_current(token)
            items.add(item)
            try:
                arg = yield item
            except GeneratorExit:
                # break, close() or garbage collection: the log ends with what was yielded.
                token = set_current(log)
                try:
                    gen.close()
                except BaseException as exc:
                    reset_current(token)
                    _fail(log, exc, items.output())
                    raise
                reset_current(token)
                log.close(ENDED_CLOSED_EARLY, items.output())
                raise
            except BaseException as exc:
                method, arg = gen.throw, exc
                continue
            method = gen.send

    return traced


def _wrap_async_generator_function(
    fn: Callable[..., Any], options: LogOptions
) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def traced(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        # There is no `yield from` for async generators: this loop forwards `asend`, `athrow`
        # and `aclose` itself, and does so untraced too (log None: disabled, or flowtrace failed).
        agen = fn(*args, **kwargs)
        log = _open(options, args, kwargs)
        items = _Items()
        method: Callable[[Any], Any] = agen.asend
        arg: Any = None
        thrown: BaseException | None = None  # what the consumer threw in at the last yield
        while True:
            token = _enter(log)
            try:
                item = await method(arg)
            except StopAsyncIteration:
                _leave(token)
                if log is not None:
                    log.close(None, items.output())
                return
            except BaseException as exc:
                _leave(token)
                if log is not None:
                    if exc is thrown and _is_cancellation(exc):
                        # Cancelled at a yield, not while it worked: its consumer stopped. This
                        # is how asyncio closes a generator abandoned with `break` when the
                        # loop ends (it cancels the pending `aclose()` before it starts).
                        log.close(ENDED_CLOSED_EARLY, items.output())
                    else:
                        _fail(log, exc, items.output())
                raise
            _leave(token)
            if log is not None:
                items.add(item)
            try:
                arg = yield item
            except GeneratorExit:
                token = _enter(log)
                try:
                    await agen.aclose()
                except BaseException as exc:
                    _leave(token)
                    if log is not None:
                        _fail(log, exc, items.output())
                    raise
                _leave(token)
                if log is not None:
                    log.close(ENDED_CLOSED_EARLY, items.output())
                raise
            except BaseException as exc:
                method, arg, thrown = agen.athrow, exc, exc
                continue
            method, thrown = agen.asend, None

    return traced


def _enter(log: Log | None) -> Token[Current] | None:
    return None if log is None else set_current(log)


def _leave(token: Token[Current] | None) -> None:
    if token is not None:
        reset_current(token)


def _wrap_other_callable(target: Any, options: LogOptions) -> Any:
    """Builtins, partials, callable objects: a wrapt proxy (transparent: attributes, isinstance,
    `__wrapped__`) whose `__call__` is the plain-function wrapper itself, so a call adds one
    Python frame, not two. They bind to no instance, so they are recorded as they are."""
    traced = _wrap_function(target, options)
    proxy_type = type(_FlowProxy.__name__, (_FlowProxy,), {"__call__": staticmethod(traced)})
    return proxy_type(target)


class _FlowProxy(wrapt.ObjectProxy):  # type: ignore[type-arg]
    """The base of the proxies `_wrap_other_callable` makes, one class per decorated callable
    (its `__call__` is that callable's wrapper)."""


def _decorate(target: Any, options: FlowOptions) -> Any:
    if options.inputs is not None:
        raise TypeError("flow(inputs=...) is for with-blocks: a function's inputs are its args")
    if isinstance(target, (staticmethod, classmethod)):
        fn = target.__func__
        return type(target)(_wrap(fn, _options_for(fn, options, isinstance(target, classmethod))))
    if not callable(target):
        raise TypeError(f"flow() decorates functions, not {type(target).__name__}")
    if not isinstance(target, FunctionType):
        return _wrap_other_callable(target, _options_for(target, options, False))
    return _wrap(target, _options_for(target, options, _defined_in_class(target)))


def _options_for(fn: Callable[..., Any], options: FlowOptions, skip_first: bool) -> LogOptions:
    return _noting_rates(
        LogOptions(options, options.path or default_path(fn), InputBinder(fn), skip_first)
    )


def _wrap(fn: Callable[..., Any], options: LogOptions) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(fn):
        return _wrap_async_generator_function(fn, options)
    if inspect.iscoroutinefunction(fn):
        return _wrap_coroutine_function(fn, options)
    if inspect.isgeneratorfunction(fn):
        return _wrap_generator_function(fn, options)
    return _wrap_function(fn, options)


# --- with / async with ---------------------------------------------------------------------

#: The path of a block given none.
BLOCK_PATH = "flow"


class Flow(AsyncBlock[Log]):
    """What `flow(...)` returns when not given a function: a decorator, and a context manager
    whose block is one log (`with flow("agents/support", inputs={...}) as log:`)."""

    def __init__(self, options: FlowOptions) -> None:
        self._options = options
        self._block_options = _noting_rates(LogOptions(options, options.path or BLOCK_PATH))
        self._open: dict[Log, Token[Current]] = {}

    def __call__(self, fn: _F) -> _F:
        return _decorate(fn, self._options)  # type: ignore[no-any-return]

    def __enter__(self) -> Log:
        log = _open(self._block_options)
        if log is None:
            # Disabled (or flowtrace failed): the block runs unrecorded, and `as log` is a log
            # nobody hears of, so the block's own code works the same.
            return Log(self._block_options, None)
        self._open[log] = set_current(log)
        return log

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log = self._leave()
        if log is None:
            return
        if exc is None:
            log.close()
        else:
            _fail(log, exc)

    def _leave(self) -> Log | None:
        """The block's log, no longer current; None if no block of this object is open."""
        log = self._innermost_open()
        if log is None:
            return None
        token = self._open.pop(log)
        if get_current() is log:
            try:
                reset_current(token)
            except ValueError:  # entered in another context (a task or a copied context)
                set_current(log.parent)
        elif _span_left_running_in(log):
            set_current(log.parent)  # a span started in the block and not ended ends its hold
        # else: left out of order (generators advanced in turn): a log inside it is current.
        outer = get_current()
        if isinstance(outer, Log) and (outer is log or outer.is_complete):
            # What was current when the block began may have ended meanwhile (it belonged to
            # another generator): the current log becomes the nearest one still open.
            set_current(open_ancestor(outer))
        return log

    def _innermost_open(self) -> Log | None:
        """This object's open block in this context: the current log or its nearest ancestor
        that this object opened (one object may be entered by several tasks at once)."""
        if not self._open:
            return None
        log = current_here()
        while log is not None:
            if log in self._open:
                return log
            log = log.parent
        return next(reversed(self._open))  # its context was lost: the latest entered


@overload
def flow(target: _F, /) -> _F: ...


@overload
def flow(target: str | None = None, /, **options: Unpack[FlowKeywords]) -> Flow: ...


def flow(target: Any = None, /, **options: Unpack[FlowKeywords]) -> Any:
    """Record calls as logs of a trace.

    - `@flow` / `@flow(path=..., attributes=...)` on a function, method, generator or their
      async kinds: every call is a log.
    - `with flow("agents/support", inputs={...}) as log:` (or `async with`): the block is one
      log; set `log.output`, `log.metadata`... inside.

    Options: `path` (default: `package/module/Qualified.name` of the function), `attributes`
    (the Flow version: same attributes, same version), `metadata`, `user`, `environment`,
    `source`, `save` (False: the server keeps the log without its payloads), `version_id`,
    `capture_inputs` and `capture_output` (False, or a function that returns what to record),
    `sample_rate` (0 to 1: the share of this flow's traces recorded when it is a root; the
    `sample_rate` setting otherwise), and for blocks `inputs`.

    A flow opened while another is open in the same context is its child.
    """
    if isinstance(target, str):
        if "path" in options:
            raise TypeError("give the path once: flow('a/b') or flow(path='a/b')")
        options["path"] = target
        target = None
    flow_options = FlowOptions(**options)
    if target is None:
        return Flow(flow_options)
    return _decorate(target, flow_options)


_config.on_change(_apply_settings)
_apply_settings(_config.get_settings())
