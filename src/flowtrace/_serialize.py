"""JSON-safe snapshots of arbitrary Python objects, and the call-time copy they are taken of.

Two steps. On the user's call path, `capture_value` copies arguments, results and what the user
sets on a log (the caller may mutate them after the call). On the worker, `snapshot` turns the
copy into plain JSON data within the budgets (`Limits`: the settings' `max_depth`,
`max_string_chars`, `max_items`).

Contract of `capture_value` (the call path)
--------------------------------------------
* It never raises and runs none of the user's code: no ``__repr__``, ``__eq__``, ``__hash__``,
  property, ``__getattr__``, ``__class__`` (types are found with ``type()``, never
  ``isinstance``, which reads a proxy's ``__class__``), validator or serializer.
* It costs at most what the budgeted snapshot of the value costs, and holds at most that:
  it walks the value as `snapshot` would, spending the same budgets (items per container,
  depth, total values) in the same order, and copies only what the snapshot would read.
* What it copies, what it keeps:
  - immutable values are kept as they are: None/bool/int/float/str (whatever their length:
    the worker cuts them, in O(max_string)), bytes, datetimes, UUID, Decimal, paths, enums,
    and tuples/frozensets of such values;
  - plain containers are copied: list, tuple, dict, set, frozenset, deque, OrderedDict,
    defaultdict, Counter, dict views and subclasses of these (read through the builtin's
    own slots). A dict of atoms only (which CPython does not track for garbage collection)
    is copied in C. A container the budgets cut ends with the snapshot's marker; one the
    snapshot would mark instead (too deep) is the marker;
  - dataclasses and pydantic models are copied as new instances holding copies of their
    state (read from the instance's own ``__dict__``, and pydantic's three slots, as
    pydantic's ``__copy__`` does: no ``__init__``, ``__post_init__`` or validator runs);
  - any other object (instances of other classes, numpy arrays, bytearrays, iterators...) is
    kept by reference and turned into JSON by the worker: mutating it after the call, before
    the worker encodes the log (usually within a second), shows in the log.
* The worker's snapshot of the copy is the snapshot the original would have given at the
  call (tests/test_serialize.py checks that, also one level down and beside other values as
  in a log's inputs, on random hostile data mutated after the copy).

Contract of `snapshot` (the worker)
-----------------------------------
* It never raises: every ``Exception`` coming out of user code (``__repr__``, property
  getters, Mapping methods, pydantic serializers, numpy ``tolist``) is contained and turned
  into a marker string. ``KeyboardInterrupt``/``SystemExit`` still propagate on purpose.
* It never hangs on data: unknown objects are never iterated (infinite iterators!), only
  known container types are walked, always through ``itertools.islice`` and bounded by
  ``Limits``; the total number of walked values is capped too, and a string costs
  O(max_string) however long it is. (A user ``__repr__`` that itself loops forever cannot be
  interrupted, of course; it runs on the worker, never on the call path.)
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
type, e.g. ``"<generator object f at 0x...>"``), truncated like any string. What kind a type is
(numpy, pydantic, dataclass, enum, a subclass of a known type, a Mapping, other) is found from
the type alone, once per type.

Speed
-----
Exact None/bool and in-budget int/str/float return before any allocation. Containers are
walked by one Python loop that inlines the common leaves. ``pydantic_core.to_jsonable_python``
is used for pydantic models/dataclasses only: on plain containers it is ~5x faster, but it
consumes generators and iterators, silently drops colliding keys ({1: a, "1": b}), keeps NaN,
and knows no budgets, so making it safe needs a full pre-walk of the input plus a re-walk of its
output - more than the careful walk itself (see bench/serialize_speed.py). The call-time copy
was `marshal` (fast, but it copies everything, whatever the budgets); the budgeted walk with
its two C fast paths (a dict of atoms, a long list of atoms) costs no more on a ~2 KB payload
(bench/RESULTS.md, issue 9).
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
import gc
import json
import operator
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from decimal import Decimal
from itertools import islice
from pathlib import PurePath
from typing import Any, NamedTuple, TypeAlias

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
    if type(value) is _Copied:
        return value.name
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
    """Budgeted copy of an exact str: lone surrogates escaped, long text truncated. Costs
    O(max_string), whatever the length of `text` (only the kept prefix is checked)."""
    size = len(text)
    if size <= max_string:
        text = _escaped(text)
        if len(text) <= max_string:
            return text
        size = len(text)  # escaping made it longer than the budget: cut that
    elif size - max_string <= _MARKER_LENGTH:
        # Idempotence: an already truncated snapshot string is prefix + our marker: keep it.
        rest = text[max_string:]
        if _marker_count(rest, TRUNCATED_CHARS_SUFFIX, max_string) is not None:
            return _escaped(text[:max_string]) + rest
    return _escaped(text[:max_string])[:max_string] + truncated_chars(size)


#: Longer than any marker `_text` appends (and a `~N` suffix `_unique` may add to it).
_MARKER_LENGTH = 64


def _escaped(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates (os.fsdecode, json.loads('"\\ud800"')) would make the trace
            # unwritable as UTF-8; keep them visible as "\udc80" text instead.
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


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


def _attributes(value: object, names: tuple[str, ...]) -> Iterator[tuple[object, object]]:
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


_last_budgets = (DEFAULT_LIMITS, _budgets(DEFAULT_LIMITS))

#: Containers up to this long are copied item by item; longer ones of immutable items only
#: are found so (in C) and copied in C.
_SHORT = 16


class _Walker:
    """State of one snapshot: budgets and the ids of the containers being walked."""

    __slots__ = (
        "active",
        "budget",
        "max_depth",
        "max_items",
        "max_prefix",
        "max_string",
        "natural",
    )

    def __init__(self, limits: Limits) -> None:
        global _last_budgets
        last = _last_budgets
        if limits is last[0]:
            budgets = last[1]
        else:  # clamping costs as much as a small snapshot: once per Limits in force
            budgets = _budgets(limits)
            _last_budgets = (limits, budgets)
        self.max_depth, self.max_string, self.max_items, self.max_prefix, self.budget = budgets
        self.active: set[int] = set()  # cycle detection: containers on the current path
        self.natural = False  # copying inside a pydantic model: containers as their own types

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
        if issubclass(type(value), memoryview):
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
        base: Any = set if issubclass(type(value), set) else frozenset
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
        return _kind_of(type(value)).snapshot(self, value, depth)

    def _dataclass(self, value: Any, depth: int) -> JsonValue:
        names = _dataclass_fields(type(value))
        return self._mapping(value, len(names), _attributes(value, names), depth)

    def _enum(self, value: Any, depth: int) -> JsonValue:
        return self.walk(value.value, depth)

    def _unknown_mapping(self, value: Any, depth: int) -> JsonValue:
        # User code, hence bounded (islice) and guarded (walk's except).
        return self._mapping(value, len(value), iter(value.items()), depth)

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

    def _cycle(self, value: Any, depth: int) -> JsonValue:
        kind = "max depth" if depth >= self.max_depth else "cycle"
        return self.text(f"<{kind}: {value.name}>")

    def _copied(self, value: Any, depth: int) -> JsonValue:
        """A container copied at call time (`capture_value`): walked like the original."""
        items = value.items
        if value.kind is _MAPPING:
            return self._mapping(value, len(items), iter(items), depth, value.total)
        sort = value.kind is _SET
        return self._sequence(value, len(items), iter(items), depth, value.total, sort)

    # -- the call-time copy (`capture_value`) ------------------------------------------------
    # The same walk as the snapshot's, spending the same budgets in the same order, but what
    # it makes is a copy, not JSON: immutable values are kept as they are (strings, numbers,
    # bytes, tuples and frozensets of them), so are objects of other types (turning them into
    # text runs their code: the worker does that), and every plain container is copied as far
    # as the snapshot would read it, no further. So a copy costs at most what the budgeted
    # snapshot costs, whatever the size of the data, and runs none of the user's code; and
    # the worker's snapshot of the copy is the snapshot of the original as it was at the call
    # (tests/test_serialize.py checks that on random data).

    def copy(self, value: Any, depth: int) -> Any:
        cls = type(value)
        try:
            if cls is dict:
                return self._copy_dict(value, depth)
            if cls is list:
                return self._copy_list(value, depth)
            copier = _COPIERS.get(cls)
            if copier is None:
                copier = _kind_of(cls).copy
            return copier(self, value, depth)
        except Exception as exc:
            return self.text(_unserializable(value, exc))

    def _keep(self, value: Any, depth: int) -> Any:
        return value

    def _held_back(self, value: object, depth: int) -> Any:
        """What the copy holds for a container it may not walk: the depth marker (the worker
        is at least as deep there), or a cycle that the worker marks as the snapshot would
        (as a cycle, unless it is too deep there: the inputs dict adds a level)."""
        if depth >= self.max_depth:
            return self._blocked(value, depth)
        return _Cycle(_type_name(value))

    def _take(self, length: int) -> int:
        """How many items of a container of `length` the snapshot reads (and spends)."""
        take = min(length, self.max_items, self.budget)
        self.budget -= take
        return take

    def _copy_dict(self, value: dict[Any, Any], depth: int) -> Any:
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        length = len(value)
        budget = self.budget
        if length <= self.max_items and length <= budget:  # not cut: the commonest dict
            self.budget = budget - length
            if not _gc_tracked(value):
                # CPython tracks a dict as soon as it holds a container: this one holds
                # only atoms (numbers, strings, bytes, tuples of atoms...), copied in C.
                return value.copy()
            return self._dict_items_copied(value, iter(value.items()), length, depth)
        total = length
        if length <= self.max_items + 1:  # it may end with our marker: it states the total
            last = next(reversed(value))
            if type(last) is str and value[last] is None:
                marked = _marker_count(last, TRUNCATED_ITEMS_SUFFIX, length - 1)
                if marked is not None:
                    length, total = length - 1, marked
        take = self._take(length)
        copied = self._dict_items_copied(value, islice(value.items(), take), total, depth)
        if type(copied) is dict and take < total:
            copied[_unique(truncated_items(total), copied)] = None
        return copied

    def _dict_items_copied(
        self, value: dict[Any, Any], items: Iterator[tuple[Any, Any]], total: int, depth: int
    ) -> Any:
        key = id(value)
        if key in self.active:
            return self._held_back(value, depth)
        copied: dict[Any, Any] = {}
        depth += 1
        self.active.add(key)
        try:
            for name, item in items:
                if type(name) not in SCALARS:
                    # Hashing a key of another type may run user code: pairs, not a dict.
                    pairs = list(copied.items())
                    pairs.append((name, item if type(item) in SCALARS else self.copy(item, depth)))
                    pairs.extend(self._pairs_copied_rest(items, depth))
                    return value if self.natural else _Copied(_MAPPING, "dict", pairs, total)
                copied[name] = item if type(item) in SCALARS else self.copy(item, depth)
        finally:
            self.active.discard(key)
        return copied

    def _pairs_copied_rest(
        self, items: Iterator[tuple[Any, Any]], depth: int
    ) -> Iterator[tuple[Any, Any]]:
        copy = self.copy
        for name, item in items:
            yield name, item if type(item) in SCALARS else copy(item, depth)

    def _copy_list(self, value: list[Any], depth: int) -> Any:
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        total = length = len(value)
        cut = length > self.max_items or length > self.budget
        # Cut, a list that ends with our marker (a copy, a snapshot) states its total length.
        if cut and length <= self.max_items + 1 and type(last := value[-1]) is str:
            marked = _marker_count(last, TRUNCATED_ITEMS_SUFFIX, length - 1)
            if marked is not None:
                length, total = length - 1, marked
        take = self._take(length)
        if not take and total and id(value) not in self.active:
            return [truncated_items(total)]  # the budget is spent: the rest are markers
        items = value if take == total else value[:take]
        if take > _SHORT and SCALARS.issuperset(map(type, items)):
            copied = items[:] if items is value else items  # atoms only: copied in C
        else:
            copied = self._items_copied(value, items, depth)
        if take < total and type(copied) is list:
            copied.append(truncated_items(total))
        return copied

    def _items_copied(self, value: object, items: Iterable[Any], depth: int) -> Any:
        key = id(value)
        if key in self.active:
            return self._held_back(value, depth)
        copied: list[Any] = []
        append = copied.append
        copy = self.copy
        depth += 1
        atoms_only = depth < self.max_depth  # a dict of atoms is copied here, as in _copy_dict
        max_items = self.max_items
        self.active.add(key)
        try:
            for item in items:
                cls = type(item)
                if cls in SCALARS:
                    append(item)
                elif (
                    cls is dict
                    and atoms_only
                    and (size := len(item)) <= max_items
                    and size <= self.budget
                    and not _gc_tracked(item)
                ):
                    self.budget -= size  # the commonest item of a list: a small dict of atoms
                    append(item.copy())
                else:
                    append(copy(item, depth))
        finally:
            self.active.discard(key)
        return copied

    def _copy_tuple(self, value: Any, depth: int) -> Any:
        if type(value) is tuple and not _gc_tracked(value):
            return value  # CPython untracks a tuple of atoms: immutable through and through
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        length = tuple.__len__(value)
        take = self._take(length)
        copied = self._items_copied(value, islice(tuple.__iter__(value), take), depth)
        if type(copied) is not list:
            return copied
        if take == length and all(map(operator.is_, copied, value)):
            return value  # immutable, and so is everything in it (or it is kept anyway)
        if self.natural:
            return tuple(copied) if take == length else (*copied, truncated_items(length))
        return self._wrapped(value, copied, length)

    def _copy_subclass_list(self, value: Any, depth: int) -> Any:
        """List subclasses: list's own slots (an override never runs), as the snapshot."""
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        length = list.__len__(value)
        take = self._take(length)
        copied = self._items_copied(value, islice(list.__iter__(value), take), depth)
        return self._wrapped(value, copied, length)

    def _copy_sequence(self, value: Any, depth: int) -> Any:
        """deque (and subclasses), dict views: the items the snapshot would walk."""
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        if issubclass(type(value), deque):
            length, items = deque.__len__(value), deque.__iter__(value)
        else:
            length, items = len(value), iter(value)
        take = self._take(length)
        copied = self._items_copied(value, islice(items, take), depth)
        return self._wrapped(value, copied, length)

    def _wrapped(self, value: object, copied: Any, total: int) -> Any:
        """A copied sequence the worker walks as it would the original (its type's name in
        markers); in a model, a plain list."""
        if type(copied) is not list:
            return copied  # a marker
        if not self.natural:
            return _Copied(_SEQUENCE, _type_name(value), copied, total)
        if len(copied) < total:
            copied.append(truncated_items(total))
        return copied

    def _copy_set(self, value: Any, depth: int) -> Any:
        # The members of a set are hashable, hence immutable (or of other types, kept anyway):
        # a set is copied as the list of the members the snapshot would take, in its order.
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        base: Any = set if issubclass(type(value), set) else frozenset
        length = base.__len__(value)
        take = self._take(length)
        if take == length and type(value) is frozenset:
            return value
        members = list(islice(base.__iter__(value), take))
        if self.natural:  # in a model: a set again (members of plain types hash in C)
            if take == length and base is set:
                return set.copy(value)
            if not all(type(member) in SCALARS for member in members):
                return value
            return {*members, truncated_items(length)}
        return _Copied(_SET, _type_name(value), members, length)

    def _copy_mapping(self, value: Any, depth: int) -> Any:
        """OrderedDict, defaultdict, Counter, dict subclasses: their pairs, walked as the
        snapshot walks them (OrderedDict in its own order, the others by dict's slots)."""
        if depth >= self.max_depth:
            return self._held_back(value, depth)
        if type(value) is OrderedDict:
            total, items = len(value), iter(value.items())
        else:
            total, items = dict.__len__(value), iter(dict.items(value))
        key = id(value)
        if key in self.active:
            return self._held_back(value, depth)
        take = self._take(total)
        self.active.add(key)
        try:
            pairs = list(self._pairs_copied_rest(islice(items, take), depth + 1))
        finally:
            self.active.discard(key)
        if not self.natural:
            return _Copied(_MAPPING, _type_name(value), pairs, total)
        if not all(type(name) in SCALARS for name, _ in pairs):
            return value  # in a model, keys of other types: kept (hashing them runs code)
        copied = dict(pairs)
        if take < total:
            copied[_unique(truncated_items(total), copied)] = None
        return copied

    def _copy_dataclass(self, value: Any, depth: int) -> Any:
        """A new instance of the dataclass with its fields copied, read from the instance's
        own `__dict__` (no property, `__getattr__`, `__init__` or `__post_init__` runs)."""
        if depth >= self.max_depth or id(value) in self.active:
            return self._held_back(value, depth)
        try:
            state = object.__getattribute__(value, "__dict__")
            clone = object.__new__(type(value))
        except Exception:
            return value  # not made like a dataclass: kept, and read on the worker
        key = id(value)
        copy = self.copy
        self.active.add(key)
        fields = {}
        try:
            for name in _dataclass_fields(type(value)):
                if name in state:
                    item = state[name]
                    fields[name] = item if type(item) in SCALARS else copy(item, depth + 1)
        finally:
            self.active.discard(key)
        object.__setattr__(clone, "__dict__", fields)
        return clone

    def _copy_model(self, value: Any, depth: int) -> Any:
        """A new instance of the pydantic model with its state copied, as pydantic's own
        `__copy__` makes one (no validator runs); the values in it are copied as their own
        types (a list as a list...), since the model's serializer, run on the worker, reads
        them."""
        if depth >= self.max_depth or id(value) in self.active:
            return self._held_back(value, depth)
        try:
            clone = object.__new__(type(value))
        except Exception:
            return value
        key = id(value)
        read = object.__getattribute__
        copy = self.copy
        natural, self.natural = self.natural, True
        self.active.add(key)
        try:
            for name in _MODEL_STATE:
                try:
                    state = read(value, name)
                except AttributeError:
                    continue
                if name == "__dict__":  # the fields: one level down, like a dict's values
                    state = {
                        field: item if type(item) in SCALARS else copy(item, depth + 1)
                        for field, item in state.items()
                    }
                elif type(state) is set:
                    state = set(state)  # `__pydantic_fields_set__`: names
                elif state is not None:  # `__pydantic_extra__`, `__pydantic_private__`
                    state = copy(state, depth)
                object.__setattr__(clone, name, state)
        finally:
            self.active.discard(key)
            self.natural = natural
        return clone


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

# --- what a type is, found once per type ----------------------------------------------------
# From the type alone, never the instance (`isinstance` reads `__class__`, which a proxy may
# compute: a lazy object would be evaluated), and cached.

_Copier: TypeAlias = Callable[[_Walker, Any, int], Any]


class _TypeKind(NamedTuple):
    snapshot: _Handler  # how the worker turns it into JSON
    copy: _Copier  # how the call path copies it


_KEPT_AS_TEXT = _TypeKind(_Walker._repr, _Walker._keep)

# Subclasses of known types, tried in this order after pydantic, dataclasses and enums.
_SUBCLASSES: tuple[tuple[type | tuple[type, ...], _TypeKind], ...] = (
    (int, _TypeKind(_Walker._int, _Walker._keep)),  # bool cannot be subclassed
    (float, _TypeKind(_Walker._float, _Walker._keep)),
    (str, _TypeKind(_Walker._str, _Walker._keep)),
    ((bytes, bytearray, memoryview), _TypeKind(_Walker._bytes, _Walker._keep)),
    (list, _TypeKind(_Walker._list, _Walker._copy_subclass_list)),
    (tuple, _TypeKind(_Walker._tuple, _Walker._copy_tuple)),  # namedtuples too
    (dict, _TypeKind(_Walker._dict, _Walker._copy_mapping)),
    ((set, frozenset), _TypeKind(_Walker._set, _Walker._copy_set)),
    (deque, _TypeKind(_Walker._deque, _Walker._copy_sequence)),
    ((_dt.date, _dt.time), _TypeKind(_Walker._iso, _Walker._keep)),  # datetime: a date
    (_dt.timedelta, _TypeKind(_Walker._timedelta, _Walker._keep)),
    ((uuid.UUID, Decimal, PurePath), _TypeKind(_Walker._as_str, _Walker._keep)),
)

#: Classes seen; forgotten when this many (classes made at run time must not pile up).
_MAX_KINDS = 4096
_kinds: dict[type, _TypeKind] = {}

# What a pydantic model's instance holds (pydantic's own `__copy__` copies these).
_MODEL_STATE = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")


def _kind_of(cls: type) -> _TypeKind:
    kind = _kinds.get(cls)
    if kind is None:
        try:
            kind = _classify(cls)
        except Exception:  # a metaclass that fails even this
            kind = _KEPT_AS_TEXT
        if len(_kinds) >= _MAX_KINDS:
            _kinds.clear()
        _kinds[cls] = kind
    return kind


def _classify(cls: type) -> _TypeKind:
    if issubclass(cls, type):  # a class itself
        return _KEPT_AS_TEXT
    has_dict = cls.__dictoffset__ != 0
    if cls.__module__ == "numpy":  # numpy itself is never imported here
        return _TypeKind(_Walker._numpy, _Walker._keep)
    if hasattr(cls, "__pydantic_serializer__"):
        if hasattr(cls, "__pydantic_fields_set__") and has_dict:  # a BaseModel
            return _TypeKind(_Walker._pydantic, _Walker._copy_model)
        dataclass = hasattr(cls, "__dataclass_fields__") and has_dict
        return _TypeKind(_Walker._pydantic, _Walker._copy_dataclass if dataclass else _Walker._keep)
    if hasattr(cls, "__dataclass_fields__"):
        return _TypeKind(_Walker._dataclass, _Walker._copy_dataclass if has_dict else _Walker._keep)
    if issubclass(cls, enum.Enum):  # before int/str: IntEnum, StrEnum
        return _TypeKind(_Walker._enum, _Walker._keep)
    for base, kind in _SUBCLASSES:
        if issubclass(cls, base):
            return kind
    if issubclass(cls, Mapping):
        return _TypeKind(_Walker._unknown_mapping, _Walker._keep)
    # Never iterate unknown objects: generators would be consumed, iterators can be infinite.
    # Python reprs name the type, e.g. "<generator object f at 0x...>".
    return _KEPT_AS_TEXT


def _dataclass_fields(cls: type) -> tuple[str, ...]:
    names = _field_names.get(cls)
    if names is None:
        names = tuple(field.name for field in dataclasses.fields(cls))
        if len(_field_names) >= _MAX_KINDS:
            _field_names.clear()
        _field_names[cls] = names
    return names


_field_names: dict[type, tuple[str, ...]] = {}


# --- call-time copies ------------------------------------------------------------------------
# Arguments and results are copied on the user's call path (the caller may mutate them after
# the call), and snapshotted within the budgets on the worker.

#: Immutable scalars: safe to keep by reference, so the common call copies nothing.
SCALARS = frozenset({int, str, float, bool, type(None)})

_SEQUENCE, _MAPPING, _SET = "sequence", "mapping", "set"

_gc_tracked = gc.is_tracked


class _Copied:
    """A container copied at call time whose own type cannot be remade without running code
    (a set's members would be hashed again, a subclass constructed) or that was cut to the
    budgets: its items (or (key, value) pairs), its type's name and its original length, which
    the worker's snapshot reads as it would the original's."""

    __slots__ = ("items", "kind", "name", "total")

    def __init__(self, kind: str, name: str, items: list[Any], total: int) -> None:
        self.kind = kind
        self.name = name
        self.items = items
        self.total = total

    def __repr__(self) -> str:
        return f"<copied {self.name}: {len(self.items)} of {self.total} items>"


class _Cycle:
    """Where a copy met a container it was already in: marked by the worker, which knows how
    deep it is there."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<cycle: {self.name}>"


_HANDLERS[_Copied] = _Walker._copied
_HANDLERS[_Cycle] = _Walker._cycle

_COPIERS: dict[type, _Copier] = {
    type(None): _Walker._keep,
    bool: _Walker._keep,
    int: _Walker._keep,
    float: _Walker._keep,
    str: _Walker._keep,
    bytes: _Walker._keep,
    list: _Walker._copy_list,
    tuple: _Walker._copy_tuple,
    dict: _Walker._copy_dict,
    OrderedDict: _Walker._copy_mapping,
    defaultdict: _Walker._copy_mapping,
    Counter: _Walker._copy_mapping,
    set: _Walker._copy_set,
    frozenset: _Walker._copy_set,
    deque: _Walker._copy_sequence,
    type({}.keys()): _Walker._copy_sequence,
    type({}.values()): _Walker._copy_sequence,
    type({}.items()): _Walker._copy_sequence,
    bytearray: _Walker._keep,
    memoryview: _Walker._keep,
    _dt.datetime: _Walker._keep,
    _dt.date: _Walker._keep,
    _dt.time: _Walker._keep,
    _dt.timedelta: _Walker._keep,
    uuid.UUID: _Walker._keep,
    Decimal: _Walker._keep,
    _Copied: _Walker._keep,
    _Cycle: _Walker._keep,
}

_limits: Limits = DEFAULT_LIMITS


def set_limits(new: Limits) -> None:
    """The budgets in force (the settings' max_depth, max_string_chars, max_items)."""
    global _limits
    _limits = new


def limits() -> Limits:
    return _limits


def capture_value(value: Any) -> Any:
    """`value` as it is now, for the worker to snapshot later (the caller may mutate it after
    the call): within the budgets in force, without running any of the user's code. Never
    raises. What is copied and what is kept: the module's docstring."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if kind is dict and len(value) <= _limits.max_items and not _gc_tracked(value):
        return value.copy()  # a dict of atoms within the budgets: as in _Walker._copy_dict
    return _Walker(_limits).copy(value, 0)
