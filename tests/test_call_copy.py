"""The call-time copy of arguments and results (issue 9 items 3 and 11): within the budgets,
without running the user's code, and what mutation after the call changes (README, "What gets
captured": plain containers, dataclasses and pydantic models are copied at call time; other
objects are recorded as they are when the worker encodes them)."""

from __future__ import annotations

import dataclasses
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, field_serializer, model_validator

from flowtrace import flow
from flowtrace._serialize import Limits, capture_value, limits, snapshot
from flowtrace.testing import CapturedLogs, capture_logs


def only(captured: CapturedLogs, path: str) -> dict[str, Any]:
    records = captured.by_path(path)
    assert len(records) == 1, records
    return records[0]


def _leaves(value: Any) -> Iterator[Any]:
    """Every non-container value reachable from a copy (markers included)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif type(item).__name__ == "_Copied":
            stack.extend(item.items)
        else:
            yield item


# --- item 3: the budgets hold on the call path -------------------------------------------------


def test_a_huge_nested_argument_is_copied_only_as_far_as_the_budgets_reach() -> None:
    """A 1000x1000 list of ints was deep-copied whole at every call (60-90 ms, ~40 MB held
    per queued log): the copy now holds the budgeted prefix (10 x max_items values), which is
    all the worker would encode anyway."""
    matrix = [list(range(1000)) for _ in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copied = capture_value(matrix)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    budget = limits().max_items * 10
    ints = [leaf for leaf in _leaves(copied) if type(leaf) is int]
    assert len(ints) == budget - 1000  # the outer list's 1000 items count in the budget too
    assert held < 1_000_000  # bytes: the prefix and 991 marker lists, not 1,000,000 ints
    assert snapshot(copied, limits()) == snapshot(matrix, limits())


def test_every_level_is_bounded_items_depth_and_total() -> None:
    deep: Any = "leaf"
    for _ in range(200):
        deep = [deep]
    wide = {f"k{i}": list(range(50)) for i in range(5000)}
    for value in (deep, wide, [wide, wide], (deep, wide)):
        copied = capture_value(value)
        assert sum(1 for _ in _leaves(copied)) <= limits().max_items * 10 + 5001
        assert snapshot(copied, limits()) == snapshot(value, limits())


def test_a_decorated_call_with_a_huge_argument_records_what_the_budgets_keep() -> None:
    @flow(path="t/huge")
    def total(rows: list[list[int]]) -> int:
        return len(rows)

    matrix = [list(range(1000)) for _ in range(1000)]
    with capture_logs() as captured:
        assert total(matrix) == 1000
    (log,) = captured.logs
    assert log.args is not None and log.args[0] is not matrix
    record = only(captured, "t/huge")
    rows = record["inputs"]["rows"]
    assert len(rows) == 1000 and rows[0] == list(range(1000))
    assert rows[-1] == ["...[truncated, 1000 items]"]  # the budget was spent before it


# --- item 11: no user code on the call path ----------------------------------------------------


class Lazy:
    """An ORM query set in miniature: turning it into text runs a query."""

    queries: list[str] = []

    def __repr__(self) -> str:
        Lazy.queries.append(threading.current_thread().name)
        return "<QuerySet [...]>"


class ProxyOfDict:
    """A lazy proxy whose `__class__` says what it stands for (computing it would evaluate the
    lazy object): `isinstance` reads it, `type()` does not."""

    reads = 0

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        ProxyOfDict.reads += 1
        return dict

    def __repr__(self) -> str:
        return "<proxy of a dict>"


class Blocking:
    """A `__repr__` that blocks until released: it must never run during the call."""

    release = threading.Event()

    def __repr__(self) -> str:
        assert Blocking.release.is_set(), "repr ran before the call was over"
        return "<blocking>"


def test_reprs_and_class_properties_of_arguments_do_not_run_at_call_time() -> None:
    @flow(path="t/objects")
    def use(query: Lazy, proxy: ProxyOfDict, slow: Blocking, nested: list[Any]) -> str:
        return "done"

    Lazy.queries.clear()
    ProxyOfDict.reads = 0
    Blocking.release.clear()
    with capture_logs() as captured:
        for _ in range(100):
            assert use(Lazy(), ProxyOfDict(), Blocking(), [Lazy(), {"p": ProxyOfDict()}]) == "done"
        assert Lazy.queries == [] and ProxyOfDict.reads == 0  # nothing ran on the call path
        Blocking.release.set()
        records = captured.by_path("t/objects")  # encoded here, as the worker would
    assert len(records) == 100
    assert records[0]["inputs"] == {
        "query": "<QuerySet [...]>",
        "proxy": "<proxy of a dict>",
        "slow": "<blocking>",
        "nested": ["<QuerySet [...]>", {"p": "<proxy of a dict>"}],
    }
    assert len(Lazy.queries) == 200  # once per object, when encoded: bounded by the budgets
    assert ProxyOfDict.reads == 0  # the worker classifies by type() too


def test_results_and_values_set_on_a_log_are_copied_without_user_code() -> None:
    @flow(path="t/result")
    def result() -> list[Any]:
        return [Lazy(), ProxyOfDict()]

    Lazy.queries.clear()
    ProxyOfDict.reads = 0
    with capture_logs() as captured:
        result()
        with flow("t/block") as log:
            log.output = {"q": Lazy()}
        assert Lazy.queries == [] and ProxyOfDict.reads == 0
        assert only(captured, "t/block")["output"] == '{"q":"<QuerySet [...]>"}'


# --- mutation after the call: the rule ---------------------------------------------------------


@dataclasses.dataclass
class State:
    history: list[str]
    step: int = 0

    def __post_init__(self) -> None:
        State.made += 1

    made = 0


class Request(BaseModel):
    messages: list[dict[str, str]]
    tags: set[str] = set()
    temperature: float = 0.0

    @model_validator(mode="after")
    def count(self) -> Request:
        Request.validated += 1
        return self

    @field_serializer("temperature")
    def rounded(self, value: float) -> float:
        Request.serialized_on.append(threading.current_thread().name)
        return round(value, 1)

    validated: ClassVar[int] = 0
    serialized_on: ClassVar[list[str]] = []


class Opaque:
    def __init__(self) -> None:
        self.items = [1]

    def __repr__(self) -> str:
        return f"Opaque({self.items})"


def test_what_mutation_after_the_call_changes() -> None:
    """Plain containers, dataclasses and pydantic models are copied at call time: mutating
    them later changes nothing recorded. Any other object is kept and turned into text when
    the worker encodes the log: mutating it before then shows."""

    @flow(path="t/mutated")
    def step(plain: dict[str, list[int]], state: State, request: Request, other: Opaque) -> None:
        plain["numbers"].append(99)
        state.history.append("stepped")
        state.step += 1
        request.messages.append({"role": "assistant", "content": "hi"})
        request.tags.add("later")
        request.temperature = 0.9
        other.items.append(2)

    state = State(history=["start"])
    request = Request(messages=[{"role": "user", "content": "q"}], tags={"a"}, temperature=0.23)
    made, validated = State.made, Request.validated
    with capture_logs() as captured:
        step({"numbers": [1]}, state, request, Opaque())
    assert (State.made, Request.validated) == (made, validated)  # no __init__, no validator
    Request.serialized_on.clear()
    inputs = only(captured, "t/mutated")["inputs"]
    assert inputs["plain"] == {"numbers": [1]}
    assert inputs["state"] == {"history": ["start"], "step": 0}
    assert inputs["request"] == {
        "messages": [{"role": "user", "content": "q"}],
        "tags": ["a"],
        "temperature": 0.2,
    }
    assert Request.serialized_on == [threading.current_thread().name]  # at encoding only
    assert inputs["other"] == "Opaque([1, 2])"  # as it was when encoded


def test_numpy_arrays_are_recorded_as_they_are_when_encoded() -> None:
    np = pytest.importorskip("numpy")

    @flow(path="t/array")
    def scale(values: Any) -> None:
        values *= 2

    with capture_logs() as captured:
        scale(np.arange(3))
    assert only(captured, "t/array")["inputs"] == {"values": [0, 2, 4]}


# --- the copy's own guarantees -----------------------------------------------------------------


def test_the_copy_of_a_dict_of_atoms_is_a_dict_and_a_tuple_of_atoms_is_kept() -> None:
    atoms = {"role": "user", "content": "x", "n": 1}  # CPython does not gc-track it
    copied = capture_value(atoms)
    assert copied == atoms and copied is not atoms
    pair = (1, "a", (2.0, None))
    assert capture_value(pair) is pair
    assert capture_value([pair])[0] is pair


def test_keys_of_other_types_are_not_hashed_again() -> None:
    class Key:
        hashes = 0

        def __hash__(self) -> int:
            Key.hashes += 1
            return 1

        def __repr__(self) -> str:
            return "Key()"

    mapping = {Key(): [1], "k": 2}
    Key.hashes = 0
    copied = capture_value(mapping)
    assert Key.hashes == 0
    mapping[next(iter(mapping))].append(3)
    assert snapshot(copied) == {"Key()": [1], "k": 2}


def test_small_limits_apply_to_the_copy() -> None:
    import flowtrace

    flowtrace.configure(max_items=2, max_depth=2)
    try:
        assert limits() == Limits(max_depth=2, max_string=65536, max_items=2)
        copied = capture_value({"a": [1, 2, 3], "b": {"c": {"d": 1}}, "e": 5})
    finally:
        flowtrace.configure()
    assert copied == {
        "a": [1, 2, "...[truncated, 3 items]"],
        "b": {"c": "<max depth: dict>"},
        "...[truncated, 3 items]": None,
    }
