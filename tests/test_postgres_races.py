"""The trace rules under concurrency on PostgreSQL: several processes, each with its own Store
on one database, released at once by a barrier, over many rounds.

SQLite's single writer gave these for free; on PostgreSQL each was reproduced broken before
the backend locked, widened, allocated and inserted as it now does (see `_postgres`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timezone
from multiprocessing.context import ForkServerContext
from typing import Any

import pytest

from flowtrace.models import FlowLogRequest, FlowLogUpdateRequest
from flowtrace.store import ListQuery, Store, StoreError
from tests.processutil import clean_context

_JOIN_S = 60.0
_ROUND_S = 60.0
# A date filter makes the store count rows instead of answering from its counters.
_EPOCH = datetime(1970, 1, 2, tzinfo=timezone.utc)


def _do(store: Store, task: tuple[str, Any]) -> tuple[int, Any]:
    kind, arg = task
    try:
        if kind == "log":
            created = store.log(FlowLogRequest.model_validate(arg))
            return 200, created.model_dump(mode="json", exclude_unset=True)
        if kind == "complete":
            record = store.update(arg, FlowLogUpdateRequest(trace_status="complete"))
            return 200, sorted(child.id for child in record.trace_children or [])
        if kind == "batch":
            return 200, [(r.status, r.body) for r in store.batch(arg)]
    except StoreError as refusal:
        return refusal.status_code, refusal.detail
    raise AssertionError(kind)


def _worker(url: str, barrier: Any, tasks: Any, results: Any) -> None:
    """One process: its own store; each round, its task, released with the others."""
    store = Store(url)
    try:
        while (task := tasks.get()) is not None:
            barrier.wait()
            results.put(_do(store, task))
    finally:
        store.close()


class Racers:
    """`count` processes on one database; `round(tasks)` runs one task in each at once."""

    def __init__(self, context: ForkServerContext, url: str, count: int) -> None:
        self._barrier = context.Barrier(count)
        self._queues = [context.Queue() for _ in range(count)]
        self._results = context.Queue()
        self._processes = [
            context.Process(target=_worker, args=(url, self._barrier, queue, self._results))
            for queue in self._queues
        ]
        for process in self._processes:
            process.start()

    def round(self, tasks: list[tuple[str, Any]]) -> list[tuple[int, Any]]:
        assert len(tasks) == len(self._queues)
        for queue, task in zip(self._queues, tasks, strict=True):
            queue.put(task)
        return [self._results.get(timeout=_ROUND_S) for _ in tasks]

    def close(self) -> None:
        for queue in self._queues:
            queue.put(None)
        for process in self._processes:
            process.join(timeout=_JOIN_S)
            assert process.exitcode == 0


@pytest.fixture
def racers(postgres_url: str) -> Iterator[Any]:
    context = clean_context()  # no store, lock or thread of this process crosses to them
    started: list[Racers] = []

    def start(count: int) -> Racers:
        racing = Racers(context, postgres_url, count)
        started.append(racing)
        return racing

    yield start
    for racing in started:
        racing.close()


def _root(store: Store, path: str, log_id: str) -> None:
    store.log(FlowLogRequest.model_validate({"path": path, "log_id": log_id}))


def test_the_children_accepted_are_exactly_those_the_completing_patch_returns(
    postgres_url: str, racers: Any
) -> None:
    """A child posted while its parent is being completed commits before the completion (and
    is in the PATCH's trace_children) or is refused 409: never a child under a closed parent."""
    children = 3
    race = racers(children + 1)
    refused = accepted = 0
    with Store(postgres_url) as store:
        for n in range(150):
            root = f"root-{n}"
            _root(store, "race/parent", root)
            tasks: list[tuple[str, Any]] = [("complete", root)]
            tasks += [
                ("log", {"path": "race/child", "log_id": f"c{n}-{i}", "trace_parent_id": root})
                for i in range(children)
            ]
            results = race.round(tasks)
            completions = [body for status, body in results if isinstance(body, list)]
            assert len(completions) == 1
            in_patch = completions[0]
            answered = {
                body["id"]: status
                for status, body in results
                if status == 200 and isinstance(body, dict)
            }
            statuses = sorted(status for status, body in results if not isinstance(body, list))
            assert set(statuses) <= {200, 409}
            assert sorted(answered) == in_patch
            stored = store.get_log(root).trace_children or []
            assert sorted(child.id for child in stored) == in_patch
            accepted += len(in_patch)
            refused += statuses.count(409)
    # both outcomes happened, so the race was really run
    assert accepted > 0 and refused > 0


@pytest.mark.parametrize("same_body", [True, False], ids=["same-body", "different-body"])
def test_one_log_id_posted_twice_at_once(postgres_url: str, racers: Any, same_body: bool) -> None:
    race = racers(2)
    with Store(postgres_url) as store:
        for n in range(150):
            log_id = f"twice-{n}"
            bodies = [
                {"path": "race/twice", "log_id": log_id, "inputs": {"n": n}},
                {"path": "race/twice", "log_id": log_id, "inputs": {"n": n if same_body else -1}},
            ]
            results = race.round([("log", body) for body in bodies])
            statuses = sorted(status for status, _ in results)
            if same_body:
                assert statuses == [200, 200]
                assert results[0][1] == results[1][1]
            else:
                assert statuses == [200, 409]
            assert store.get_log(log_id).id == log_id
        flows = [f for f in store.list_flows() if f.path == "race/twice"]
        assert flows[0].log_count == 150
        assert store.list_logs(ListQuery(size=1)).total == 150


def test_eight_processes_creating_one_new_path_make_one_flow(
    postgres_url: str, racers: Any
) -> None:
    race = racers(8)
    with Store(postgres_url) as store:
        for n in range(60):
            path = f"race/new-{n}"
            results = race.round([("log", {"path": path, "flow": {"attributes": {"v": 1}}})] * 8)
            assert [status for status, _ in results] == [200] * 8
            assert len({body["flow_id"] for _, body in results}) == 1
            assert len({body["version_id"] for _, body in results}) == 1
        flows = [f for f in store.list_flows() if f.path.startswith("race/new-")]
        assert len(flows) == 60
        assert all(f.log_count == 8 and f.version_count == 1 for f in flows)


def _random_batch(rng: random.Random, n: int, worker: int) -> list[dict[str, Any]]:
    """Logs over a few shared flows in random order, some failed, some children of others."""
    operations: list[dict[str, Any]] = []
    for i in range(rng.randint(1, 8)):
        log_id = f"b{n}-{worker}-{i}"
        body: dict[str, Any] = {"path": f"race/counters/{rng.randint(0, 3)}", "log_id": log_id}
        body["flow"] = {"attributes": {"v": rng.randint(0, 1)}}
        if rng.random() < 0.3:
            body["error"] = "failed"
        if i and rng.random() < 0.4:
            body["trace_parent_id"] = f"b{n}-{worker}-0"
        operations.append({"op": "log", "body": body})
    return operations


def test_random_multi_flow_batches_leave_counters_equal_to_row_counts(
    postgres_url: str, racers: Any
) -> None:
    race = racers(4)
    rng = random.Random(12)
    for n in range(100):
        results = race.round([("batch", _random_batch(rng, n, w)) for w in range(4)])
        assert all(status == 200 for _, answers in results for status, _ in answers)
    with Store(postgres_url) as store:
        for flow in store.list_flows():
            logs = store.list_logs(ListQuery(file_id=flow.id, size=1)).total
            roots = store.list_logs(ListQuery(file_id=flow.id, size=1, roots_only=True)).total
            errors = store.list_logs(ListQuery(file_id=flow.id, size=1, errors_only=True)).total
            counted = _rows(store, flow.id)
            assert (flow.log_count, logs) == (counted, counted)
            assert roots == _rows(store, flow.id, roots_only=True)
            assert errors == _rows(store, flow.id, errors_only=True)
            versions = store.list_versions(flow.id)
            assert sum(v.version_logs_count for v in versions) == counted


def _rows(store: Store, flow_id: str, **filters: Any) -> int:
    """A COUNT over the rows, not the counters."""
    return store.list_logs(ListQuery(file_id=flow_id, size=1, start_date=_EPOCH, **filters)).total
