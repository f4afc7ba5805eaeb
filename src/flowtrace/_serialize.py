"""JSON-safe snapshots of arbitrary Python objects.

`snapshot` runs on the hot path of every traced call: arguments and return values are
copied into plain JSON data at call time, because the caller may mutate them later.

Contract
--------
* It never raises: every ``Exception`` coming out of user code (``__repr__``, property
  getters, Mapping methods, pydantic serializers, numpy ``tolist``) is contained and turned
  into a marker string. ``KeyboardInterrupt``/``SystemExit`` still propagate on purpose.
* It never hangs on data: unknown objects are never iterated (infinite iterators!), only
  known container types are walked, always through ``itertools.islice`` and bounded by
  ``Limits``; the total number of walked values is capped too. (A user ``__repr__`` that
  itself loops forever cannot be interrupted, of course.)
* The result is ``json.dumps(result, allow_nan=False)``-encodable, UTF-8 encodable (lone
  surrogates are escaped), and idempotent: ``snapshot(snapshot(x)) == snapshot(x)``.

Conversions
-----------
None/bool/int/float/str as-is (subclasses become the plain base value); NaN/inf floats ->
``"NaN"``/``"Infinity"``/``"-Infinity"``; ints too large for ``json`` (> 2**1024) -> decimal
string; list/tuple/deque/dict views -> list; set/frozenset -> list, sorted when the snapshotted
items are mutually comparable; dict/Mapping -> dict with string keys (non-string keys are
snapshotted and rendered as text, a colliding name gets a ``~2``, ``~3``... suffix so no entry
is lost); pydantic models/dataclasses -> their own JSON serialization (``to_jsonable_python``,
i.e. what ``model_dump(mode="json")`` produces, unknown field values snapshotted by us);
dataclasses -> dict of fields (read with ``getattr``; no ``asdict`` deep copy); Enum -> snapshot
of its value; datetime/date/time -> ``isoformat()`` (aware datetimes keep their offset);
timedelta -> ``total_seconds()``; UUID/Decimal/PurePath -> ``str``; numpy arrays/scalars (found
by ``type(x).__module__ == "numpy"``, numpy is never imported) -> ``.tolist()`` if
``.size <= max_items`` else a truncated 1-D prefix or a shape marker; everything else, including
generators, iterators and plain objects with a ``__dict__``, -> ``repr(x)`` (Python reprs name the
type, e.g. ``"<generator object f at 0x...>"``), truncated like any string.

Speed
-----
Exact None/bool and in-budget int/str/float return before any allocation. Containers are
walked by one Python loop that inlines the common leaves. ``pydantic_core.to_jsonable_python``
is used for pydantic models/dataclasses only: on plain containers it is ~5x faster, but it
consumes generators and iterators, silently drops colliding keys ({1: a, "1": b}), keeps NaN,
and knows no budgets, so making it safe needs a full pre-walk of the input plus a re-walk of its
output - more than the careful walk itself (see bench/serialize_speed.py).
Known limit: a model's own serializer also consumes generators held in ``Any`` fields.

Marker formats (all plain strings)
----------------------------------
* ``"<max depth: list>"``                  container nested deeper than ``max_depth``
* ``"<cycle: dict>"``                      reference back to a container being walked
* ``"<unserializable Foo: ValueError>"``   user code raised while snapshotting a ``Foo``
* ``"<bytes len=1000 hex=00ff...>"``       bytes/bytearray/memoryview: length + hex of the first
  ``max_bytes_prefix`` bytes (``...`` only when cut)
* ``"<ndarray shape=(10, 10000) dtype=float64>"``  numpy array too large to list
* ``"abc...[truncated, 1048576 chars]"``   string prefix of ``max_string`` chars + original size
* ``"...[truncated, 5000 items]"``         last list item (or last dict key, with value null)
  when a container had more than ``max_items`` items or the total value budget
  (``max_items * 10`` values per snapshot) ran out; states the original length.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import marshal
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from decimal import Decimal
from itertools import islice
from pathlib import PurePath
from typing import Any, TypeAlias

from pydantic_core import to_jsonable_python

from flowtrace._contract import (
    TRUNCATED_CHARS_SUFFIX,
    TRUNCATED_ITEMS_SUFFIX,
    TRUNCATED_PREFIX,
    truncated_chars,
    truncated_items,
)

__all__ = [
    "DEFAULT_LIMITS",
    "SCALARS",
    "JsonValue",
    "Limits",
    "capture_value",
    "limits",
    "set_limits",
    "snapshot",
    "to_json",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Budgets for one snapshot; negative values count as 0."""

    max_depth: int = 20  # container nesting levels; deeper -> "<max depth: T>"
    max_string: int = 65536  # chars per string; longer -> prefix + "...[truncated, N chars]"
    max_items: int = 1000  # items per container; more -> "...[truncated, N items]" marker item
    max_bytes_prefix: int = 64  # bytes values: length + hex of this many leading bytes


DEFAULT_LIMITS = Limits()

# Depth actually recursed into, whatever Limits say: a level costs ~3 Python frames, so
# this keeps us far from the interpreter's recursion limit even when called from deep code.
_DEPTH_CAP = 128
# json.dumps refuses ints with more digits than sys.get_int_max_str_digits() (>= 640).
_INT_LIMIT = 1 << 1024
_INT_FLOOR = -_INT_LIMIT  # precomputed: negating a 1024-bit int per check is not free
# Returned unchanged without any check; int/str/float need one cheap bounds check each.
_NONE = type(None)
_SCALARS = frozenset({_NONE, bool})


def snapshot(value: object, limits: Limits = DEFAULT_LIMITS) -> JsonValue:
    """Return a JSON-safe copy of ``value`` within ``limits``. Never raises."""
    cls = type(value)
    v: Any = value  # the checks below make the returned value a JsonValue
    # Fast path: the overwhelmingly common immutable scalars, no allocation, no call.
    if cls in _SCALARS:
        return v  # type: ignore[no-any-return]
    if cls is int:
        if _INT_FLOOR < v < _INT_LIMIT:
            return v  # type: ignore[no-any-return]
    elif cls is str:
        if len(v) <= limits.max_string and v.isascii():
            return v  # type: ignore[no-any-return]
    elif cls is float and v - v == 0.0:  # False for NaN and +-inf
        return v  # type: ignore[no-any-return]
    try:
        return _Walker(limits).walk(value, 0)
    except Exception as exc:
        # walk() contains errors itself; this only sees failures while building a marker,
        # e.g. RecursionError when snapshot is called from very deep code.
        return _unserializable(value, exc)


def to_json(value: JsonValue) -> str:
    """Compact JSON text of a snapshot, non-ASCII kept as is. Never raises.

    Values that are not snapshots (NaN, sets, objects...) are snapshotted first.
    """
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except Exception:
        safe = snapshot(value)
        return json.dumps(safe, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__
        return name if type(name) is str else "?"
    except Exception:  # a metaclass can make even this fail
        return "?"


def _unserializable(value: object, exc: BaseException) -> str:
    return f"<unserializable {_type_name(value)}: {_type_name(exc)}>"


def _marker_count(text: str, suffix: str, minimum: int) -> int | None:
    """N if ``text`` is our ``...[truncated, N<suffix>`` marker with N > minimum, else None.

    A ``~2``-style suffix (added by `_unique` to a colliding dict key) is accepted too.
    """
    if not text.endswith(suffix):
        head, tilde, number = text.rpartition("~")
        if not (tilde and number.isascii() and number.isdigit()):
            return None
        text = head
    if not (text.startswith(TRUNCATED_PREFIX) and text.endswith(suffix)):
        return None
    number = text[len(TRUNCATED_PREFIX) : -len(suffix)]
    if not (number.isascii() and number.isdigit() and len(number) < 20):
        return None
    count = int(number)
    return count if count > minimum else None


def _text(text: str, max_string: int) -> str:
    """Budgeted copy of an exact str: lone surrogates escaped, long text truncated."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (os.fsdecode, json.loads('"\\ud800"')) would make the trace
            # unwritable as UTF-8; keep them visible as "\udc80" text instead.
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= max_string:
        return text
    # Idempotence: an already truncated snapshot string is prefix + our marker: keep it.
    if _marker_count(text[max_string:], TRUNCATED_CHARS_SUFFIX, max_string) is not None:
        return text
    return text[:max_string] + truncated_chars(len(text))


def _float(value: float) -> float | str:
    if value - value == 0.0:
        return value
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _unique(name: str, out: dict[str, JsonValue]) -> str:
    """``name``, or the first of ``name~2``, ``name~3``... not yet used in ``out``."""
    if name not in out:
        return name
    number = 2
    while f"{name}~{number}" in out:
        number += 1
    return f"{name}~{number}"


def _attributes(value: object, names: list[str]) -> Iterator[tuple[object, object]]:
    """(name, attribute) pairs; a raising getter yields a marker instead of aborting."""
    for name in names:
        try:
            yield name, getattr(value, name)
        except Exception as exc:
            yield name, _unserializable(value, exc)


def _budgets(limits: Limits) -> tuple[int, int, int, int, int]:
    """Limits clamped to usable values, plus the total value budget of one snapshot."""
    max_items = max(limits.max_items, 0)
    return (
        min(max(limits.max_depth, 0), _DEPTH_CAP),
        max(limits.max_string, 0),
        max_items,
        max(limits.max_bytes_prefix, 0),
        # Values walked per snapshot, all containers together: bounds the work on wide and
        # deep data, and on shared references (walked once per path: exponential in a DAG).
        max(max_items * 10, 1),
    )


_DEFAULT_BUDGETS = _budgets(DEFAULT_LIMITS)


class _Walker:
    """State of one snapshot: budgets and the ids of the containers being walked."""

    __slots__ = ("active", "budget", "max_depth", "max_items", "max_prefix", "max_string")

    def __init__(self, limits: Limits) -> None:
        # Clamping costs as much as a small snapshot: done once for the default limits.
        budgets = _DEFAULT_BUDGETS if limits is DEFAULT_LIMITS else _budgets(limits)
        self.max_depth, self.max_string, self.max_items, self.max_prefix, self.budget = budgets
        self.active: set[int] = set()  # cycle detection: containers on the current path

    def walk(self, value: object, depth: int) -> JsonValue:
        try:
            handler = _HANDLERS.get(type(value))
            if handler is not None:
                return handler(self, value, depth)
            return self._other(value, depth)
        except Exception as exc:
            return self.text(_unserializable(value, exc))

    def text(self, text: str) -> str:
        return _text(text, self.max_string)

    # -- leaves ----------------------------------------------------------------------------
    def _same(self, value: Any, depth: int) -> JsonValue:
        return value  # type: ignore[no-any-return]

    def _int(self, value: Any, depth: int) -> JsonValue:
        number: int = int.__int__(value)  # plain int, also for subclasses (no user __int__)
        if _INT_FLOOR < number < _INT_LIMIT:
            return number
        try:
            return self.text(str(number))
        except ValueError:  # more digits than sys.get_int_max_str_digits() allows
            return f"<int: {number.bit_length()} bits>"

    def _str(self, value: Any, depth: int) -> JsonValue:
        return self.text(str.__str__(value))  # plain str, also for subclasses

    def _float(self, value: Any, depth: int) -> JsonValue:
        return self.number(float.__float__(value))

    def number(self, value: float) -> JsonValue:
        """A float, or its NaN/Infinity text within the string budget (so a snapshot of the
        snapshot is the same)."""
        result = _float(value)
        return self.text(result) if isinstance(result, str) else result

    def _bytes(self, value: Any, depth: int) -> JsonValue:
        if isinstance(value, memoryview):
            size = value.nbytes
            head = value.cast("B")[: self.max_prefix].tobytes()  # no copy of the whole buffer
        else:
            size = len(value)
            head = bytes(value[: self.max_prefix])
        more = "..." if size > len(head) else ""
        return self.text(f"<{_type_name(value)} len={size} hex={head.hex()}{more}>")

    def _iso(self, value: Any, depth: int) -> JsonValue:
        return self.text(str.__str__(value.isoformat()))

    def _timedelta(self, value: Any, depth: int) -> JsonValue:
        return self.number(_dt.timedelta.total_seconds(value))

    def _as_str(self, value: Any, depth: int) -> JsonValue:
        return self.text(str.__str__(str(value)))

    def _repr(self, value: Any, depth: int) -> JsonValue:
        # repr() itself raises TypeError when __repr__ returns a non-str.
        return self.text(str.__str__(repr(value)))

    # -- containers --------------------------------------------------------------------------
    def _blocked(self, value: object, depth: int) -> str:
        """The marker for a container that may not be walked: too deep, or on the path."""
        if depth >= self.max_depth:
            return self.text(f"<max depth: {_type_name(value)}>")
        return self.text(f"<cycle: {_type_name(value)}>")

    def _sequence(
        self,
        value: object,
        length: int,
        items: Iterator[Any],
        depth: int,
        total: int | None = None,
        sort: bool = False,
    ) -> JsonValue:
        """List of the first ``length`` items within budgets; ``total`` goes in the marker."""
        key = id(value)
        if depth >= self.max_depth or key in self.active:
            return self._blocked(value, depth)
        take = min(length, self.max_items, self.budget)
        self.budget -= take
        out: list[JsonValue] = []
        append = out.append
        walk = self.walk
        max_string = self.max_string
        floor, limit, none = _INT_FLOOR, _INT_LIMIT, _NONE
        depth += 1
        self.active.add(key)
        try:
            for item in islice(items, take):
                cls = type(item)
                # Inline the common leaves: a method call per item would double the cost.
                if cls is str:
                    append(
                        item if len(item) <= max_string and item.isascii() else walk(item, depth)
                    )
                elif cls is int:
                    append(item if floor < item < limit else walk(item, depth))
                elif cls is none or cls is bool:
                    append(item)
                else:
                    append(walk(item, depth))
        finally:
            self.active.discard(key)
        if sort:
            # Sort the snapshots, not the originals: no user __lt__ runs, and the order no
            # longer depends on hash randomization. Mixed types keep the set's order.
            with suppress(TypeError):
                out.sort()
        if total is None:
            total = length
        if len(out) < total:
            out.append(truncated_items(total))
        return out

    def _list(self, value: Any, depth: int) -> JsonValue:
        if type(value) is list:
            length = len(value)
            # Idempotence: a truncated snapshot list ends with our marker item; walk the rest
            # and keep the original length it states.
            if length and length <= self.max_items + 1 and type(last := value[-1]) is str:
                total = _marker_count(last, TRUNCATED_ITEMS_SUFFIX, length - 1)
                if total is not None:
                    return self._sequence(value, length - 1, iter(value), depth, total)
            return self._sequence(value, length, iter(value), depth)
        # Subclasses: list's own slots, so overridden __len__/__iter__ never run.
        return self._sequence(value, list.__len__(value), list.__iter__(value), depth)

    def _tuple(self, value: Any, depth: int) -> JsonValue:
        return self._sequence(value, tuple.__len__(value), tuple.__iter__(value), depth)

    def _deque(self, value: Any, depth: int) -> JsonValue:
        return self._sequence(value, deque.__len__(value), deque.__iter__(value), depth)

    def _view(self, value: Any, depth: int) -> JsonValue:
        # dict_keys / dict_values / dict_items: C views over a dict, safe to iterate.
        return self._sequence(value, len(value), iter(value), depth)

    def _set(self, value: Any, depth: int) -> JsonValue:
        base: Any = set if isinstance(value, set) else frozenset
        items = base.__iter__(value)
        return self._sequence(value, base.__len__(value), items, depth, sort=True)

    def _dict(self, value: Any, depth: int) -> JsonValue:
        if type(value) is dict:
            length = len(value)
            # Idempotence: a truncated snapshot dict ends with our marker key (value null).
            if length and length <= self.max_items + 1:
                last = next(reversed(value))
                if type(last) is str and value[last] is None:
                    total = _marker_count(last, TRUNCATED_ITEMS_SUFFIX, length - 1)
                    if total is not None:
                        items = iter(value.items())
                        return self._mapping(value, length - 1, items, depth, total)
            return self._mapping(value, length, iter(value.items()), depth)
        if type(value) is OrderedDict:  # its own (C) order can differ from the dict order
            return self._mapping(value, len(value), iter(value.items()), depth)
        # defaultdict, Counter, user subclasses: dict's own slots, overrides never run.
        return self._mapping(value, dict.__len__(value), iter(dict.items(value)), depth)

    def _mapping(
        self,
        value: object,
        length: int,
        items: Iterator[tuple[Any, Any]],
        depth: int,
        total: int | None = None,
    ) -> JsonValue:
        """Dict of the first ``length`` items within budgets; ``total`` goes in the marker."""
        ident = id(value)
        if depth >= self.max_depth or ident in self.active:
            return self._blocked(value, depth)
        take = min(length, self.max_items, self.budget)
        self.budget -= take
        out: dict[str, JsonValue] = {}
        walk = self.walk
        max_string = self.max_string
        floor, limit, none = _INT_FLOOR, _INT_LIMIT, _NONE
        depth += 1
        self.active.add(ident)
        try:
            for key, item in islice(items, take):
                if type(key) is str and len(key) <= max_string and key.isascii() and key not in out:
                    name = key
                else:
                    name = self._key(key, out, depth)
                cls = type(item)
                # Inline the common leaves, as in _sequence.
                if cls is str:
                    out[name] = (
                        item if len(item) <= max_string and item.isascii() else walk(item, depth)
                    )
                elif cls is int:
                    out[name] = item if floor < item < limit else walk(item, depth)
                elif cls is none or cls is bool:
                    out[name] = item
                else:
                    out[name] = walk(item, depth)
        finally:
            self.active.discard(ident)
        if total is None:
            total = length
        if len(out) < total:
            out[_unique(truncated_items(total), out)] = None
        return out

    def _key(self, key: object, out: dict[str, JsonValue], depth: int) -> str:
        """Unused text for a dict key that is not a plain, short, unused str."""
        snap = self.walk(key, depth)
        if type(snap) is str:
            name = snap
        elif snap is None or type(snap) is bool:
            name = self.text(json.dumps(snap))  # JSON spelling: null, true, false
        else:
            name = self.text(to_json(snap))  # 1 -> "1", (1, 2) -> "[1,2]"
        return _unique(name, out)

    # -- everything that is not an exact known type ------------------------------------------
    def _other(self, value: Any, depth: int) -> JsonValue:
        cls = type(value)
        if cls.__module__ == "numpy":  # numpy itself is never imported here
            return self._numpy(value, depth)
        if hasattr(cls, "__pydantic_serializer__") and not isinstance(value, type):
            return self._pydantic(value, depth)
        if hasattr(cls, "__dataclass_fields__") and not isinstance(value, type):
            names = [field.name for field in dataclasses.fields(value)]
            return self._mapping(value, len(names), _attributes(value, names), depth)
        if isinstance(value, enum.Enum):  # before int/str: IntEnum, StrEnum
            return self.walk(value.value, depth)
        for base, handler in _SUBCLASS_HANDLERS:
            if isinstance(value, base):
                return handler(self, value, depth)
        if isinstance(value, Mapping):
            # Unknown mapping: user code, hence bounded (islice) and guarded (walk's except).
            return self._mapping(value, len(value), iter(value.items()), depth)
        # Never iterate unknown objects: generators would be consumed, iterators can be
        # infinite. Python reprs name the type, e.g. "<generator object f at 0x...>".
        return self._repr(value, depth)

    def _numpy(self, value: Any, depth: int) -> JsonValue:
        size = getattr(value, "size", None)
        tolist = getattr(value, "tolist", None)
        if type(size) is not int or tolist is None:  # ufuncs, dtypes...: repr
            return self._repr(value, depth)
        if size <= min(self.max_items, self.budget):  # arrays and numpy scalars
            return self.walk(tolist(), depth)
        shape = tuple(value.shape)
        if len(shape) == 1:  # keep a prefix of a long vector, like a long list
            head = value[: self.max_items].tolist()
            return self._sequence(value, len(head), iter(head), depth, total=size)
        return self.text(f"<{_type_name(value)} shape={shape} dtype={value.dtype}>")

    def _pydantic(self, value: Any, depth: int) -> JsonValue:
        # The model's own serializer, i.e. what model_dump(mode="json") runs (in Rust). It
        # calls us back for values it does not know; we enforce our budgets on its output.
        ident = id(value)
        if depth >= self.max_depth or ident in self.active:
            return self._blocked(value, depth)
        self.active.add(ident)
        try:
            dumped = to_jsonable_python(value, fallback=lambda obj: self.walk(obj, depth + 1))
        except Exception as exc:
            if isinstance(exc, ValueError) and "Circular reference" in str(exc):
                return self.text(f"<cycle: {_type_name(value)}>")
            return self.text(_unserializable(value, exc))
        finally:
            self.active.discard(ident)
        return self.walk(dumped, depth)


_Handler: TypeAlias = Callable[[_Walker, Any, int], JsonValue]

_HANDLERS: dict[type, _Handler] = {
    type(None): _Walker._same,
    bool: _Walker._same,
    int: _Walker._int,
    float: _Walker._float,
    str: _Walker._str,
    list: _Walker._list,
    tuple: _Walker._tuple,
    dict: _Walker._dict,
    OrderedDict: _Walker._dict,
    defaultdict: _Walker._dict,
    Counter: _Walker._dict,
    set: _Walker._set,
    frozenset: _Walker._set,
    deque: _Walker._deque,
    type({}.keys()): _Walker._view,
    type({}.values()): _Walker._view,
    type({}.items()): _Walker._view,
    bytes: _Walker._bytes,
    bytearray: _Walker._bytes,
    memoryview: _Walker._bytes,
    _dt.datetime: _Walker._iso,
    _dt.date: _Walker._iso,
    _dt.time: _Walker._iso,
    _dt.timedelta: _Walker._timedelta,
    uuid.UUID: _Walker._as_str,
    Decimal: _Walker._as_str,
}

# Subclasses of known types, tried in this order after pydantic, dataclasses and enums.
_SUBCLASS_HANDLERS: tuple[tuple[type | tuple[type, ...], _Handler], ...] = (
    (int, _Walker._int),  # bool cannot be subclassed
    (float, _Walker._float),
    (str, _Walker._str),
    ((bytes, bytearray, memoryview), _Walker._bytes),
    (list, _Walker._list),
    (tuple, _Walker._tuple),  # namedtuples too
    (dict, _Walker._dict),
    ((set, frozenset), _Walker._set),
    (deque, _Walker._deque),
    ((_dt.date, _dt.time), _Walker._iso),  # datetime is a date subclass
    (_dt.timedelta, _Walker._timedelta),
    ((uuid.UUID, Decimal, PurePath), _Walker._as_str),  # PosixPath, WindowsPath...
)


# --- call-time copies ------------------------------------------------------------------------
# Arguments and results are copied on the user's call path (the caller may mutate them after
# the call), and snapshotted within the budgets on the worker.

#: Immutable scalars: safe to keep by reference, so the common call copies nothing.
SCALARS = frozenset({int, str, float, bool, type(None)})

# Builtin containers that `marshal` copies in C, several times faster than a careful walk.
_MARSHALABLE = frozenset({dict, list, tuple, set, frozenset})

_limits: Limits = DEFAULT_LIMITS


def set_limits(new: Limits) -> None:
    """The budgets in force (the settings' max_depth, max_string_chars, max_items)."""
    global _limits
    _limits = new


def limits() -> Limits:
    return _limits


def capture_value(value: object) -> Any:
    """A copy of `value` as it is now (the caller may mutate it later), detached from it.

    Scalars are immutable: kept. Plain containers of builtin values are deep-copied by
    `marshal` (the worker applies the budgets when it encodes the log); anything else, or
    anything marshal refuses (user objects inside, too deep), takes the careful snapshot.
    """
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind in _MARSHALABLE and len(value) <= _limits.max_items:  # type: ignore[arg-type]
        try:
            return marshal.loads(marshal.dumps(value))  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError):
            pass
    return snapshot(value, _limits)
