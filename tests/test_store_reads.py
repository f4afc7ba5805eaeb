"""Reading back: list filters, pagination, totals, trace children in lists, flow counters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowtrace.store import ListQuery, Store, StoreError
from tests.store_helpers import FakeClock, at, open_store, req


@pytest.fixture
def store(store_target: str) -> Iterator[Store]:
    yield from open_store(store_target, FakeClock())


@pytest.fixture
def filled(store: Store) -> Store:
    """Flow a: 3 traces of root + 2 children (one child per trace errored), start times
    0..8 s; flow b: 2 roots, one of them complete, one from another version."""
    t = 0
    for trace in range(3):
        root = f"a{trace}"
        store.log(req(path="a", log_id=root, start_time=at(t), inputs={"topic": f"t{trace}"}))
        for child in range(2):
            t += 1
            store.log(
                req(
                    path="a",
                    log_id=f"{root}.{child}",
                    trace_parent_id=root,
                    start_time=at(t),
                    output=f"answer {trace}-{child} ünïcode",
                    error="bad" if child else None,
                )
            )
        t += 1
    store.log(req(path="b", log_id="b0", start_time=at(100), trace_status="complete"))
    store.log(req(path="b", log_id="b1", start_time=at(101), flow={"attributes": {"v": 2}}))
    return store


def _ids(store: Store, **filters: object) -> list[str]:
    return [r.id for r in store.list_logs(ListQuery(size=100, **filters)).records]  # type: ignore[arg-type]


def _flow_id(store: Store, path: str) -> str:
    return next(f.id for f in store.list_flows() if f.path == path)


def test_newest_first_with_totals(filled: Store) -> None:
    page = filled.list_logs()
    assert page.total == 11
    assert [r.id for r in page.records[:3]] == ["b1", "b0", "a2.1"]


def test_pages_cover_everything_once(filled: Store) -> None:
    seen: list[str] = []
    for number in range(1, 5):
        page = filled.list_logs(ListQuery(page=number, size=3))
        assert (page.page, page.size, page.total) == (number, 3, 11)
        seen.extend(r.id for r in page.records)
    assert len(seen) == len(set(seen)) == 11


def test_filter_by_flow_and_version(filled: Store) -> None:
    a = _flow_id(filled, "a")
    assert len(_ids(filled, file_id=a)) == 9
    assert filled.list_logs(ListQuery(file_id=a)).total == 9
    b1 = filled.get_log("b1")
    assert _ids(filled, version_id=b1.flow.version_id) == ["b1"]
    assert filled.list_logs(ListQuery(version_id=b1.flow.version_id)).total == 1
    assert filled.list_logs(ListQuery(file_id=a, version_id=b1.flow.version_id)).total == 0
    for bad in ({"file_id": "fl_nope"}, {"version_id": "flv_nope"}):
        with pytest.raises(StoreError) as excinfo:
            filled.list_logs(ListQuery(**bad))  # type: ignore[arg-type]
        assert excinfo.value.status_code == 404


def test_filter_roots_errors_status(filled: Store) -> None:
    assert _ids(filled, roots_only=True) == ["b1", "b0", "a2", "a1", "a0"]
    assert filled.list_logs(ListQuery(roots_only=True)).total == 5
    assert _ids(filled, errors_only=True) == ["a2.1", "a1.1", "a0.1"]
    assert filled.list_logs(ListQuery(errors_only=True, file_id=_flow_id(filled, "a"))).total == 3
    assert filled.list_logs(ListQuery(errors_only=True, roots_only=True)).total == 0
    assert _ids(filled, status="complete") == ["b0"]
    assert filled.list_logs(ListQuery(status="incomplete")).total == 10
    with pytest.raises(StoreError) as excinfo:
        filled.list_logs(ListQuery(status="done"))
    assert excinfo.value.status_code == 422


def test_filter_dates(filled: Store) -> None:
    assert _ids(filled, start_date=at(6), end_date=at(100)) == ["a2.1", "a2.0", "a2"]
    assert filled.list_logs(ListQuery(start_date=at(100))).total == 2


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("t1", ["a1"]),  # in inputs, short query (LIKE fallback)
        ("answer 2-", ["a2.1", "a2.0"]),  # in output
        ("ANSWER 2-", ["a2.1", "a2.0"]),  # case-insensitive (ASCII)
        ("ünï", ["a2.1", "a2.0", "a1.1", "a1.0", "a0.1", "a0.0"]),  # non-ASCII as typed
        ('"topic"', ["a2", "a1", "a0"]),  # quotes are text, not query syntax
        ("100%", []),  # LIKE wildcards are text too
        ("_", []),
        ("zzz", []),
    ],
)
def test_search_finds_substrings_in_inputs_and_output(
    filled: Store, search: str, expected: list[str]
) -> None:
    assert _ids(filled, search=search) == expected
    assert filled.list_logs(ListQuery(search=search)).total == len(expected)


def test_include_trace_children(filled: Store) -> None:
    page = filled.list_logs(
        ListQuery(roots_only=True, include_trace_children=True, file_id=_flow_id(filled, "a"))
    )
    assert [[c.id for c in r.trace_children] for r in page.records] == [
        ["a2.0", "a2.1"],
        ["a1.0", "a1.1"],
        ["a0.0", "a0.1"],
    ]
    assert all(not r.trace_children for r in filled.list_logs(ListQuery(roots_only=True)).records)
    child = filled.list_logs(ListQuery(size=1, file_id=_flow_id(filled, "a"))).records[0]
    assert (child.id, child.trace_id) == ("a2.1", "a2")


def test_bad_pages_are_422(filled: Store) -> None:
    for bad in ({"page": 0}, {"size": 0}):
        with pytest.raises(StoreError) as excinfo:
            filled.list_logs(ListQuery(**bad))  # type: ignore[arg-type]
        assert excinfo.value.status_code == 422


def test_flow_stats(filled: Store) -> None:
    a, b = filled.list_flows()
    assert (a.path, a.log_count, a.error_count, a.version_count) == ("a", 9, 3, 1)
    assert (b.path, b.log_count, b.error_count, b.version_count) == ("b", 2, 0, 2)
    assert b.version_id == filled.get_log("b1").flow.version_id  # latest version
    assert b.last_used_at is not None
    assert filled.get_flow(b.id).log_count == 2


def test_get_unknown_log_is_404(store: Store) -> None:
    with pytest.raises(StoreError) as excinfo:
        store.get_log("nope")
    assert excinfo.value.status_code == 404


def test_record_carries_every_field_it_was_logged_with(store: Store) -> None:
    fields = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "output_message": {
            "role": "assistant",
            "content": "yo",
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        "run_id": "run",
        "start_time": "2025-01-01T00:00:01.000000Z",
        "end_time": "2025-01-01T00:00:02.000000Z",
        "output": "out",
        "created_at": "2025-01-01T00:00:03.000000Z",
        "error": "err",
        "provider_latency": 1.5,
        "stdout": "printed",
        "provider_request": {"a": 1},
        "provider_response": {"b": [1, 2]},
        "inputs": {"x": {"y": None}},
        "source": "sdk",
        "metadata": {"m": 1},
        "source_datapoint_id": "dp",
        "user": "u",
        "environment": "staging",
        "save": True,
    }
    store.log(req(path="f", log_id="L", **fields))
    dumped = store.get_log("L").model_dump(mode="json", exclude_unset=True)
    for name, value in fields.items():
        assert dumped[name] == value, name
    assert dumped["flow"]["path"] == "f"
    assert dumped["evaluator_logs"] == []
    assert dumped["trace_children"] == []
    assert "log_status" not in dumped


# --- for browsers: no totals, keyset cursors, a bounded search ---------------------------------

ALL_IDS = ["b1", "b0", "a2.1", "a2.0", "a2", "a1.1", "a1.0", "a1", "a0.1", "a0.0", "a0"]


def test_without_totals_a_page_says_whether_more_follow(filled: Store) -> None:
    first = filled.list_logs(ListQuery(size=4, count_total=False))
    assert [r.id for r in first.records] == ALL_IDS[:4]
    assert first.has_more
    assert first.total == 5  # a lower bound: this page and one more
    last = filled.list_logs(ListQuery(page=3, size=4, count_total=False))
    assert [r.id for r in last.records] == ALL_IDS[8:]
    assert not last.has_more
    assert last.total == 11
    assert (
        filled.list_logs(ListQuery(errors_only=True, size=3, count_total=False)).has_more is False
    )
    assert filled.list_logs(ListQuery(size=4)).has_more  # with totals too


def test_before_and_after_walk_the_list_by_cursor(filled: Store) -> None:
    seen: list[str] = []
    before = None
    while True:
        page = filled.list_logs(ListQuery(size=4, count_total=False, before=before))
        seen.extend(r.id for r in page.records)
        if not page.has_more:
            break
        before = page.records[-1].id
    assert seen == ALL_IDS
    newer = filled.list_logs(ListQuery(size=4, count_total=False, after="a1.1"))
    assert [r.id for r in newer.records] == ["b0", "a2.1", "a2.0", "a2"]
    assert newer.has_more  # b1 is newer still
    a = _flow_id(filled, "a")
    assert _ids(filled, file_id=a, errors_only=True, before="a2.1") == ["a1.1", "a0.1"]
    assert _ids(filled, roots_only=True, after="a0") == ["b1", "b0", "a2", "a1"]


def test_cursors_break_start_time_ties_by_insert_order(store: Store) -> None:
    for n in range(5):
        store.log(req(path="f", log_id=f"t{n}", start_time=at(1)))
    assert _ids(store, before="t3") == ["t2", "t1", "t0"]
    assert _ids(store, after="t1") == ["t4", "t3", "t2"]


def test_a_cursor_must_name_a_log(filled: Store) -> None:
    with pytest.raises(StoreError) as excinfo:
        filled.list_logs(ListQuery(before="gone"))
    assert excinfo.value.status_code == 404
    with pytest.raises(StoreError) as excinfo:
        filled.list_logs(ListQuery(before="a0", after="a1"))
    assert excinfo.value.status_code == 422


def test_a_bounded_search_scans_only_the_newest_logs(filled: Store) -> None:
    # "answer" is in every child's output; a window of 4 logs holds a2.1, a2.0 (and b1, b0)
    page = filled.list_logs(ListQuery(search="answer", search_window=4, count_total=False))
    assert [r.id for r in page.records] == ["a2.1", "a2.0"]
    assert page.searched == 4
    assert page.searched_through == "a2.0"  # the 4th newest log: go on from there
    more = filled.list_logs(
        ListQuery(search="answer", search_window=4, count_total=False, before=page.searched_through)
    )
    assert [r.id for r in more.records] == ["a1.1", "a1.0"]
    assert more.searched_through == "a1"
    # a window past the oldest log searched everything: nothing to say
    whole = filled.list_logs(ListQuery(search="answer", search_window=11, count_total=False))
    assert len(whole.records) == 6
    assert whole.searched is None
    a = _flow_id(filled, "a")
    in_flow = filled.list_logs(
        ListQuery(file_id=a, search="t0", search_window=9, count_total=False)
    )
    assert [r.id for r in in_flow.records] == ["a0"]
    assert in_flow.searched is None
    assert filled.list_logs(ListQuery(search="answer", size=1, search_window=4)).has_more


def test_traces_with_errors_below_the_root(filled: Store) -> None:
    # every "a" trace has a failed child; b0/b1 have no children; children are not roots
    assert filled.traces_with_errors(["a0", "a2", "b0", "b1", "a0.1", "nope"]) == {"a0", "a2"}
    assert filled.traces_with_errors([]) == set()
