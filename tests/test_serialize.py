"""Behaviour of flowtrace._serialize: conversions, budgets, markers, hostile objects."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import enum
import itertools
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, field_serializer

from flowtrace._serialize import (
    DEFAULT_LIMITS,
    JsonValue,
    Limits,
    capture_value,
    set_limits,
    snapshot,
    to_json,
)
from flowtrace._serialize import limits as current_limits

SMALL = Limits(max_depth=4, max_string=10, max_items=3, max_bytes_prefix=4)
# Longest marker we append to a string or add as an item: "...[truncated, <n> chars]".
MARKER_SLACK = len("...[truncated, 99999999999 chars]")


def dumps(value: JsonValue) -> str:
    return json.dumps(value, allow_nan=False)


def check_budgets(value: JsonValue, limits: Limits, depth: int = 0) -> None:
    """Every string/container of a snapshot is within ``limits`` (markers allowed)."""
    if isinstance(value, str):
        assert len(value) <= max(limits.max_string, 0) + MARKER_SLACK
    elif isinstance(value, list):
        assert depth < max(limits.max_depth, 0) or not value
        assert len(value) <= limits.max_items + 1
        for item in value:
            check_budgets(item, limits, depth + 1)
    elif isinstance(value, dict):
        assert depth < max(limits.max_depth, 0) or not value
        assert len(value) <= limits.max_items + 1
        for key, item in value.items():
            assert type(key) is str
            check_budgets(key, limits, depth + 1)
            check_budgets(item, limits, depth + 1)
    else:
        assert value is None or type(value) in (bool, int, float)
        if type(value) is float:
            assert math.isfinite(value)


def check_snapshot(value: object, limits: Limits = DEFAULT_LIMITS) -> Any:
    """snapshot() plus the invariants every result must satisfy (Any: tests index it)."""
    result = snapshot(value, limits)
    dumps(result)
    to_json(result).encode("utf-8")
    check_budgets(result, limits)
    assert snapshot(result, limits) == result  # idempotent
    return result


# -- scalars and the fast path -----------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, False, 0, -5, 2**63, 1.5, -0.0, "", "abc", "é"])
def test_plain_scalars_are_returned_as_is(value: object) -> None:
    assert check_snapshot(value) == value
    assert type(snapshot(value)) is type(value)


def test_fast_path_returns_the_same_object() -> None:
    text = "x" * 100
    assert snapshot(text) is text
    big = 10**20
    assert snapshot(big) is big


@pytest.mark.parametrize(
    ("value", "expected"),
    [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")],
)
def test_non_finite_floats_become_strings(value: float, expected: str) -> None:
    assert check_snapshot(value) == expected
    assert check_snapshot([value]) == [expected]
    assert check_snapshot({"x": value}) == {"x": expected}


def test_scalar_subclasses_become_plain_values() -> None:
    class MyInt(int):
        def __int__(self) -> int:
            raise RuntimeError("user __int__ must not run")

    class MyStr(str):
        def __str__(self) -> str:
            raise RuntimeError("user __str__ must not run")

    class MyFloat(float):
        pass

    result = check_snapshot([MyInt(3), MyStr("s"), MyFloat(2.5), MyFloat("nan")])
    assert result == [3, "s", 2.5, "NaN"]
    assert [type(item) for item in result] == [int, str, float, str]


def test_huge_ints_become_strings() -> None:
    huge = 10**400
    assert check_snapshot(huge) == str(huge)
    assert check_snapshot([huge, -huge]) == [str(huge), str(-huge)]
    enormous = 10**5000  # more digits than int->str conversion allows by default
    assert check_snapshot(enormous) == f"<int: {enormous.bit_length()} bits>"


def test_lone_surrogates_are_escaped_so_output_encodes_as_utf8() -> None:
    text = "bad \udc80 byte"
    result = check_snapshot(text)
    assert result == "bad \\udc80 byte"
    assert check_snapshot({text: [text]}) == {result: [result]}


# -- standard library types ----------------------------------------------------------------


def test_stdlib_leaf_types() -> None:
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2024, 5, 6, 7, 8, 9)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    result = check_snapshot(
        {
            "aware": aware,
            "naive": naive,
            "date": dt.date(2024, 5, 6),
            "time": dt.time(7, 8, 9),
            "delta": dt.timedelta(minutes=1, milliseconds=500),
            "uuid": ident,
            "decimal": Decimal("1.10"),
            "path": PurePosixPath("/tmp/x.txt"),
        }
    )
    assert result == {
        "aware": "2024-05-06T07:08:09.000123+02:00",
        "naive": "2024-05-06T07:08:09",
        "date": "2024-05-06",
        "time": "07:08:09",
        "delta": 60.5,
        "uuid": "12345678-1234-5678-1234-567812345678",
        "decimal": "1.10",
        "path": "/tmp/x.txt",
    }


def test_enums_become_their_value() -> None:
    class Color(enum.Enum):
        RED = "red"
        PAIR = (1, 2)

    class Level(enum.IntEnum):
        HIGH = 3

    assert check_snapshot([Color.RED, Color.PAIR, Level.HIGH]) == ["red", [1, 2], 3]


def test_containers_become_lists_and_dicts() -> None:
    point = collections.namedtuple("point", "x y")
    result = check_snapshot(
        {
            "tuple": (1, "a"),
            "named": point(1, 2),
            "deque": collections.deque([1, 2]),
            "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
            "default": collections.defaultdict(list, {"k": [1]}),
            "counter": collections.Counter("aab"),
            "keys": {"a": 1}.keys(),
            "values": {"a": 1}.values(),
            "items": {"a": 1}.items(),
            "chain": collections.ChainMap({"a": 1}, {"b": 2}),
        }
    )
    assert result == {
        "tuple": [1, "a"],
        "named": [1, 2],
        "deque": [1, 2],
        "ordered": {"b": 1, "a": 2},
        "default": {"k": [1]},
        "counter": {"a": 2, "b": 1},
        "keys": ["a"],
        "values": [1],
        "items": [["a", 1]],
        "chain": {"b": 2, "a": 1},
    }
    assert list(result["ordered"]) == ["b", "a"]


def test_sets_are_sorted_when_comparable() -> None:
    assert check_snapshot({3, 1, 2}) == [1, 2, 3]
    assert check_snapshot(frozenset({"b", "a"})) == ["a", "b"]
    assert check_snapshot({(2, 1), (1, 2)}) == [[1, 2], [2, 1]]
    mixed = check_snapshot({1, "a", None})
    assert sorted(mixed, key=repr) == sorted([1, "a", None], key=repr)


def test_non_string_keys_are_stringified_without_losing_entries() -> None:
    assert check_snapshot({1: "a", None: "b", 2.5: "d", (1, 2): "e"}) == {
        "1": "a",
        "null": "b",
        "2.5": "d",
        "[1,2]": "e",
    }
    assert check_snapshot({True: "c", False: "f"}) == {"true": "c", "false": "f"}
    result = check_snapshot({1: "int", "1": "str", 1.0 + 0.5: "float"})
    assert result == {"1": "int", "1~2": "str", "1.5": "float"}
    colliding = {str(i) if i % 2 else i: i for i in range(6)}  # "1", 2, "3"... no clash
    assert len(check_snapshot(colliding)) == 6
    assert check_snapshot({1: 1, "1": 2, "1~2": 3}) == {"1": 1, "1~2": 2, "1~2~2": 3}


def test_dict_subclass_overrides_are_not_called() -> None:
    class Sneaky(dict[str, int]):
        def items(self) -> Any:
            raise RuntimeError("must not run")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("must not run")

    class SneakyList(list[int]):
        def __iter__(self) -> Iterator[int]:
            return itertools.count()

        def __len__(self) -> int:
            raise RuntimeError("must not run")

    assert check_snapshot(Sneaky(a=1)) == {"a": 1}
    assert check_snapshot(SneakyList([1, 2])) == [1, 2]


def test_custom_mapping_is_read_through_items_and_bounded() -> None:
    class Endless(Mapping[int, int]):
        def __getitem__(self, key: int) -> int:
            return key

        def __iter__(self) -> Iterator[int]:
            return itertools.count()

        def __len__(self) -> int:
            return 5

    assert check_snapshot(Endless()) == {str(i): i for i in range(5)}
    result = check_snapshot(Endless(), SMALL)
    assert result == {"0": 0, "1": 1, "2": 2, "...[truncated, 5 items]": None}


# -- bytes --------------------------------------------------------------------------------


def test_bytes_marker() -> None:
    assert check_snapshot(b"hi") == "<bytes len=2 hex=6869>"
    assert check_snapshot(bytearray(b"\x00\xff")) == "<bytearray len=2 hex=00ff>"
    assert check_snapshot(memoryview(b"abc")) == "<memoryview len=3 hex=616263>"
    long = bytes(range(256)) * 4
    assert check_snapshot(long) == f"<bytes len=1024 hex={long[:64].hex()}...>"
    assert check_snapshot(b"abcdef", Limits(max_bytes_prefix=2)) == "<bytes len=6 hex=6162...>"


def test_released_memoryview_is_contained() -> None:
    view = memoryview(b"abc")
    view.release()
    assert check_snapshot(view) == "<unserializable memoryview: ValueError>"


# -- dataclasses and pydantic ------------------------------------------------------------------


@dataclasses.dataclass
class Inner:
    tags: list[str]
    when: dt.date = dt.date(2024, 1, 1)


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner
    extra: Any = None

    @property
    def broken(self) -> int:
        raise RuntimeError("properties are not fields, never read")


def test_dataclass_fields_without_deepcopy() -> None:
    outer = Outer("x", Inner(["a"]), extra={1, 2})
    assert check_snapshot(outer) == {
        "name": "x",
        "inner": {"tags": ["a"], "when": "2024-01-01"},
        "extra": [1, 2],
    }


def test_dataclass_field_getter_raising_is_contained_per_field() -> None:
    class Hostile(Outer):
        @property
        def name(self) -> str:
            raise KeyError("boom")

        @name.setter
        def name(self, value: str) -> None:
            pass

    result = check_snapshot(Hostile("x", Inner([])))
    assert result == {
        "name": "<unserializable Hostile: KeyError>",
        "inner": {"tags": [], "when": "2024-01-01"},
        "extra": None,
    }


def test_dataclass_cycle() -> None:
    outer = Outer("x", Inner([]))
    outer.extra = outer
    assert check_snapshot(outer)["extra"] == "<cycle: Outer>"


class Model(BaseModel):
    name: str
    when: dt.datetime
    data: Any = None


def test_pydantic_model_uses_its_json_serialization() -> None:
    model = Model(name="m", when=dt.datetime(2024, 1, 1), data={"k": [1, 2]})
    assert check_snapshot(model) == model.model_dump(mode="json")
    assert check_snapshot([model])[0]["data"] == {"k": [1, 2]}


def test_pydantic_model_unknown_values_are_snapshotted_by_us() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    model = Model(name="m", when=dt.datetime(2024, 1, 1), data=[Opaque(), math.nan, "x" * 50])
    result = check_snapshot(model, Limits(max_string=10))
    # NaN follows the model's own config (ser_json_inf_nan="null" by default).
    assert result["data"] == ["Opaque()", None, "x" * 10 + "...[truncated, 50 chars]"]


def test_pydantic_model_with_failing_serializer_is_contained() -> None:
    class Failing(BaseModel):
        x: int

        @field_serializer("x")
        def explode(self, value: int) -> int:
            raise ZeroDivisionError

    result = check_snapshot({"m": Failing(x=1), "ok": 1})
    # pydantic wraps the user's exception in its own.
    assert result == {"m": "<unserializable Failing: PydanticSerializationError>", "ok": 1}


def test_pydantic_model_cycle() -> None:
    model = Model(name="m", when=dt.datetime(2024, 1, 1))
    model.data = [model]
    assert check_snapshot(model) == "<cycle: Model>"
    holder = collections.deque([model])  # deque: pydantic calls back into us
    model.data = holder
    assert check_snapshot(model)["data"] == ["<cycle: Model>"]


# -- never consume, never iterate unknown objects --------------------------------------------


def test_generators_and_iterators_are_not_consumed() -> None:
    def gen() -> Iterator[int]:
        yield 1
        yield 2

    generator = gen()
    result = check_snapshot({"gen": generator, "count": itertools.count(), "it": iter([1, 2])})
    assert result["gen"].startswith("<generator object")
    assert result["count"] == "count(0)"
    assert result["it"].startswith("<list_iterator object")
    assert list(generator) == [1, 2]


def test_objects_use_repr() -> None:
    class Plain:
        def __init__(self) -> None:
            self.x = 1

    assert check_snapshot(Plain()).startswith("<")
    assert "Plain object at 0x" in check_snapshot(Plain())
    assert check_snapshot(ValueError("bad")) == "ValueError('bad')"
    assert check_snapshot(range(3)) == "range(0, 3)"


# -- hostile objects ---------------------------------------------------------------------------


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class NonStrRepr:
    def __repr__(self) -> Any:
        return 42


class HugeRepr:
    def __repr__(self) -> str:
        return "r" * 1_000_000


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        return 1


class FlakyHash:
    """Hashable while being put in a set or dict, raising afterwards."""

    armed = False

    def __hash__(self) -> int:
        if FlakyHash.armed:
            raise RuntimeError("no hash")
        return id(self)

    def __repr__(self) -> str:
        return "FlakyHash()"


class RaisingLt:
    def __lt__(self, other: object) -> bool:
        raise RuntimeError("no lt")

    def __repr__(self) -> str:
        return "RaisingLt()"


def test_raising_repr_is_contained() -> None:
    assert check_snapshot(RaisingRepr()) == "<unserializable RaisingRepr: RuntimeError>"
    assert check_snapshot([1, RaisingRepr(), 2]) == [
        1,
        "<unserializable RaisingRepr: RuntimeError>",
        2,
    ]


def test_non_str_repr_is_contained() -> None:
    assert check_snapshot(NonStrRepr()) == "<unserializable NonStrRepr: TypeError>"


def test_huge_repr_is_truncated() -> None:
    assert check_snapshot(HugeRepr(), Limits(max_string=5)) == "rrrrr...[truncated, 1000000 chars]"


def test_hostile_set_members_and_dict_keys() -> None:
    a, b = RaisingEq(), RaisingEq()
    members = {a}  # a single member: no __eq__ call while building the set
    FlakyHash.armed = False
    flaky = FlakyHash()
    flaky_set, flaky_dict = {flaky}, {flaky: 1}
    FlakyHash.armed = True
    try:
        result = check_snapshot({"set": members, "flaky": flaky_set, "keys": flaky_dict})
    finally:
        FlakyHash.armed = False
    assert result["set"][0].startswith("<")
    assert result["flaky"] == ["FlakyHash()"]
    assert result["keys"] == {"FlakyHash()": 1}
    assert check_snapshot({RaisingRepr(): 1, b: 2}) == {
        "<unserializable RaisingRepr: RuntimeError>": 1,
        check_snapshot(b): 2,
    }
    assert check_snapshot({RaisingLt(), RaisingLt()}) == ["RaisingLt()", "RaisingLt()"]


def test_infinite_iterator_is_not_iterated() -> None:
    class Endless:
        def __iter__(self) -> Iterator[int]:
            return itertools.count()

        def __repr__(self) -> str:
            return "Endless()"

    assert check_snapshot(Endless()) == "Endless()"


def test_raising_type_name_is_contained() -> None:
    class Meta(type):
        def __getattribute__(cls, name: str) -> Any:
            raise RuntimeError("no attributes")

    class Weird(metaclass=Meta):
        pass

    result = check_snapshot(Weird())
    assert isinstance(result, str)
    # Its type cannot be classified (its attributes raise), so it is turned into text: repr.
    assert result.startswith("<") and "Weird object at 0x" in result


# -- cycles, depth and budgets -------------------------------------------------------------------


def test_cycles() -> None:
    items: list[object] = [1]
    items.append(items)
    assert check_snapshot(items) == [1, "<cycle: list>"]
    mapping: dict[str, object] = {}
    mapping["self"] = mapping
    assert check_snapshot(mapping) == {"self": "<cycle: dict>"}
    shared = [1]
    assert check_snapshot([shared, shared]) == [[1], [1]]  # shared, not a cycle


def test_depth_limit() -> None:
    value: object = "leaf"
    for _ in range(5):
        value = [value]
    assert check_snapshot(value, Limits(max_depth=5)) == [[[[["leaf"]]]]]
    assert check_snapshot(value, Limits(max_depth=3)) == [[["<max depth: list>"]]]
    assert check_snapshot({"a": {"b": 1}}, Limits(max_depth=1)) == {"a": "<max depth: dict>"}
    assert check_snapshot([1], Limits(max_depth=0)) == "<max depth: list>"


@pytest.mark.parametrize("max_depth", [20, 10**6])
def test_very_deep_nesting(max_depth: int) -> None:
    deep_list: list[object] = []
    deep_dict: dict[str, object] = {}
    for _ in range(100_000):
        deep_list = [deep_list]
        deep_dict = {"k": deep_dict}
    limits = Limits(max_depth=max_depth)
    for value in (deep_list, deep_dict):
        result = check_snapshot(value, limits)
        text = dumps(result)
        assert "<max depth:" in text


def test_string_budget() -> None:
    text = "a" * 1_048_576
    result = check_snapshot(text)
    assert result == "a" * 65536 + "...[truncated, 1048576 chars]"
    assert check_snapshot(["abcdef"], Limits(max_string=3)) == ["abc...[truncated, 6 chars]"]
    assert check_snapshot({"abcdef": 1}, Limits(max_string=3)) == {"abc...[truncated, 6 chars]": 1}
    assert check_snapshot("é" * 5, Limits(max_string=2)) == "éé...[truncated, 5 chars]"


def test_item_budget() -> None:
    assert check_snapshot(list(range(5)), SMALL) == [0, 1, 2, "...[truncated, 5 items]"]
    assert check_snapshot(tuple(range(4)), SMALL) == [0, 1, 2, "...[truncated, 4 items]"]
    assert check_snapshot({str(i): i for i in range(5)}, SMALL) == {
        "0": 0,
        "1": 1,
        "2": 2,
        "...[truncated, 5 items]": None,
    }
    result = check_snapshot(set(range(100)), SMALL)
    assert len(result) == 4
    assert result[-1] == "...[truncated, 100 items]"
    big = check_snapshot(list(range(2000)))
    assert len(big) == 1001
    assert big[-1] == "...[truncated, 2000 items]"


def test_total_node_budget_bounds_shared_references() -> None:
    # 2**40 paths through shared lists: must stop after max_items * 10 values.
    value: list[object] = [0]
    for _ in range(40):
        value = [value, value]
    result = check_snapshot(value, Limits(max_depth=100, max_items=10))
    assert "...[truncated, 2 items]" in dumps(result)
    assert dumps(result).count("0") <= 200


def test_truncated_output_is_idempotent_even_if_it_looks_odd() -> None:
    # A user list that ends in something that looks like our marker is kept as is.
    odd = ["a", "...[truncated, 7 items]"]
    assert check_snapshot(odd) == odd


# -- numpy -------------------------------------------------------------------------------------


class FakeArray:
    """Mimics the parts of numpy.ndarray the serializer may use."""

    def __init__(self, data: list[Any], shape: tuple[int, ...] | None = None) -> None:
        self.data = data
        self.shape = shape if shape is not None else (len(data),)
        self.size = math.prod(self.shape)
        self.dtype = "float64"
        self.tolist_calls = 0

    def tolist(self) -> Any:
        self.tolist_calls += 1
        return list(self.data)

    def __getitem__(self, index: slice) -> FakeArray:
        return FakeArray(self.data[index])

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError("arrays are converted with tolist, not iterated")


class FakeScalar:
    size = 1

    def tolist(self) -> float:
        return math.nan


FakeArray.__module__ = "numpy"
FakeScalar.__module__ = "numpy"


def test_fake_numpy_array_without_numpy() -> None:
    small = FakeArray([1.0, math.inf, 2.0])
    assert check_snapshot(small) == [1.0, "Infinity", 2.0]
    long = FakeArray(list(range(10)))
    assert check_snapshot(long, SMALL) == [0, 1, 2, "...[truncated, 10 items]"]
    matrix = FakeArray([], shape=(100, 100))
    assert (
        check_snapshot(matrix, Limits(max_items=3)) == "<FakeArray shape=(100, 100) dtype=float64>"
    )
    assert matrix.tolist_calls == 0  # size checked before converting
    assert check_snapshot(FakeScalar()) == "NaN"


def test_fake_numpy_object_failing_tolist_is_contained() -> None:
    class Broken(FakeArray):
        def tolist(self) -> Any:
            raise MemoryError

    Broken.__module__ = "numpy"
    assert check_snapshot(Broken([1])) == "<unserializable Broken: MemoryError>"


def test_real_numpy() -> None:
    np = pytest.importorskip("numpy")
    assert check_snapshot(np.arange(3)) == [0, 1, 2]
    assert check_snapshot(np.array([[1.5, np.nan]])) == [[1.5, "NaN"]]
    assert check_snapshot(np.float32(0.5)) == 0.5
    assert check_snapshot(np.int64(7)) == 7
    assert check_snapshot(np.bool_(True)) is True
    assert check_snapshot(np.arange(10), SMALL) == [0, 1, 2, "...[truncated, 10 items]"]
    assert (
        check_snapshot(np.zeros((50, 50)), Limits(max_items=3))
        == "<ndarray shape=(50, 50) dtype=float64>"
    )
    assert check_snapshot({"v": np.float64(np.inf)}) == {"v": "Infinity"}


# -- to_json ----------------------------------------------------------------------------------


def test_to_json_is_compact_and_keeps_unicode() -> None:
    assert to_json(snapshot({"a": [1, "é"], "b": math.nan})) == '{"a":[1,"é"],"b":"NaN"}'


def test_to_json_makes_non_snapshots_safe() -> None:
    raw: Any = {"n": math.nan, "s": {1}}
    assert to_json(raw) == '{"n":"NaN","s":[1]}'


# -- property-based: nested structures of hostile objects -----------------------------------------


def _hostile_leaves() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**1000, max_value=2**1100),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
        st.binary(max_size=20),
        st.builds(RaisingRepr),
        st.builds(NonStrRepr),
        st.builds(HugeRepr),
        st.builds(RaisingEq),
        st.builds(RaisingLt),
        st.builds(lambda: itertools.count()),
        st.builds(lambda: (i for i in itertools.count())),
        st.builds(FakeArray, st.lists(st.floats(), max_size=6)),
        st.sampled_from([dt.date(2020, 1, 1), uuid.UUID(int=1), Decimal("NaN"), b"\xff"]),
    )


def _nested(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    keys = st.one_of(st.text(max_size=15), st.integers(), st.none(), st.booleans())
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.lists(children, max_size=6).map(collections.deque),
        st.dictionaries(keys, children, max_size=6),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=5)), max_size=6),
        st.builds(Outer, st.text(max_size=5), st.builds(Inner, st.just([])), children),
    )


HOSTILE = st.recursive(_hostile_leaves(), _nested, max_leaves=40)
LIMITS = st.builds(
    Limits,
    max_depth=st.integers(-1, 6),
    max_string=st.integers(-1, 30),
    max_items=st.integers(0, 5),
    max_bytes_prefix=st.integers(0, 8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HOSTILE, limits=LIMITS)
def test_property_hostile_structures(value: object, limits: Limits) -> None:
    check_snapshot(value, limits)


@settings(max_examples=100, deadline=None)
@given(value=HOSTILE)
def test_property_hostile_structures_default_limits(value: object) -> None:
    check_snapshot(value)


def cyclic(value: object) -> list[object]:
    """`value` in a list and a dict that hold each other."""
    container: list[object] = [value]
    mapping: dict[str, object] = {"v": value, "container": container}
    container.append(mapping)
    return container


@settings(max_examples=100, deadline=None)
@given(value=HOSTILE, limits=LIMITS)
def test_property_cyclic_structures(value: object, limits: Limits) -> None:
    result = check_snapshot(cyclic(value), limits)
    assert (
        "<cycle: list>" in dumps(result)
        or "truncated" in dumps(result)
        or ("<max depth" in dumps(result))
    )


def test_nan_and_infinity_text_obeys_the_string_budget_so_snapshots_are_idempotent() -> None:
    tiny = Limits(max_string=3)
    for value in (float("inf"), [float("-inf")], {"nan": float("nan")}):
        once = snapshot(value, tiny)
        assert snapshot(once, tiny) == once
    assert snapshot(float("inf"), tiny) == "Inf...[truncated, 8 chars]"


# -- the call-time copy (capture_value) -------------------------------------------------------


@contextlib.contextmanager
def limits_in_force(limits: Limits) -> Iterator[None]:
    previous = current_limits()
    set_limits(limits)
    try:
        yield
    finally:
        set_limits(previous)


def _mutate_everything(value: object, seen: set[int] | None = None) -> None:
    """Change every plain container reachable from `value`, as a caller might after a call."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if type(value) in (list, collections.deque):
        for item in list(value):  # type: ignore[call-overload]
            _mutate_everything(item, seen)
        value.append("mutated")  # type: ignore[attr-defined]
        value.reverse()  # type: ignore[attr-defined]
    elif type(value) is dict:
        for item in list(value.values()):
            _mutate_everything(item, seen)
        value["mutated"] = True
        value.pop(next(iter(value)))
    elif type(value) in (tuple, frozenset):
        for item in value:  # type: ignore[attr-defined]
            _mutate_everything(item, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            _mutate_everything(getattr(value, field.name), seen)


def check_copy(value: object, limits: Limits) -> None:
    """The call-time copy never raises, and the worker's snapshot of it is the snapshot of the
    value as it was at the call: alone, inside the inputs dict (one level deeper) and beside
    another argument (sharing the budgets), even after the caller mutated the value."""
    with limits_in_force(limits):
        copied = capture_value(value)
        other = capture_value([value])
    expected = check_snapshot(value, limits)
    inputs = snapshot({"x": value, "y": [value]}, limits)
    _mutate_everything(value)
    assert snapshot(copied, limits) == expected
    assert snapshot({"x": copied, "y": other}, limits) == inputs
    assert check_snapshot(copied, limits) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=HOSTILE, limits=LIMITS)
def test_property_the_call_time_copy_is_the_snapshot_at_the_call(
    value: object, limits: Limits
) -> None:
    check_copy(value, limits)


@settings(max_examples=100, deadline=None)
@given(value=HOSTILE)
def test_property_the_call_time_copy_default_limits(value: object) -> None:
    check_copy(value, DEFAULT_LIMITS)


@settings(max_examples=100, deadline=None)
@given(value=HOSTILE, limits=LIMITS)
def test_property_the_call_time_copy_of_cyclic_structures(value: object, limits: Limits) -> None:
    check_copy(cyclic(value), limits)
