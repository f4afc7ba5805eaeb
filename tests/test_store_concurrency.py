"""Many writers on one file: threads sharing a Store, processes sharing the file, a crash."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from flowtrace.store import ListQuery, Store
from tests.processutil import clean_context
from tests.store_helpers import req

THREADS = 8
LOGS_PER_THREAD = 1000
PROCESSES = 4
LOGS_PER_PROCESS = 500
TRACE_SIZE = 10


def _assert_all_once(store: Store, expected: set[str]) -> None:
    seen: list[str] = []
    page = 1
    while True:
        records = store.list_logs(ListQuery(page=page, size=1000)).records
        if not records:
            break
        seen.extend(r.id for r in records)
        page += 1
    assert len(seen) == len(set(seen))
    assert set(seen) == expected
    assert sum(f.log_count for f in store.list_flows()) == len(expected)


def _thread_writes(store: Store, worker: int, barrier: threading.Barrier) -> None:
    """Half the logs one by one, half in batches; every trace's root replayed once."""
    barrier.wait()
    for trace in range(LOGS_PER_THREAD // TRACE_SIZE):
        root = f"t{worker}-{trace}"
        bodies = [{"path": f"w{worker % 2}", "log_id": root}]
        bodies += [
            {"path": "child", "log_id": f"{root}-{i}", "trace_parent_id": root}
            for i in range(1, TRACE_SIZE)
        ]
        if trace % 2:
            for body in bodies:
                store.log(req(**body))
        else:
            results = store.batch([{"op": "log", "body": body} for body in bodies])
            assert {r.status for r in results} == {200}
        store.log(req(**bodies[0]))  # an at-least-once retry
        store.list_logs(ListQuery(size=5))  # readers run beside the writers


def test_threads_sharing_one_store_lose_and_double_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "logs.db") as store:
        barrier = threading.Barrier(THREADS)
        errors: list[BaseException] = []

        def run(worker: int) -> None:
            try:
                _thread_writes(store, worker, barrier)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        expected = {
            f"t{w}-{t}" + (f"-{i}" if i else "")
            for w in range(THREADS)
            for t in range(LOGS_PER_THREAD // TRACE_SIZE)
            for i in range(TRACE_SIZE)
        }
        _assert_all_once(store, expected)


def _process_writes(path: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    with Store(path) as store:
        for n in range(LOGS_PER_PROCESS // 2):
            store.log(req(path="shared/flow", log_id=f"p{worker}-{n}"))
        store.batch(
            [
                {"op": "log", "body": {"path": f"own/{worker}", "log_id": f"p{worker}-{n}"}}
                for n in range(LOGS_PER_PROCESS // 2, LOGS_PER_PROCESS)
            ]
        )
        store.log(req(path="shared/flow", log_id=f"p{worker}-0"))  # a retry, not a new log


def test_processes_writing_one_file_lose_and_double_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "logs.db")  # each process creates/migrates it: that races too
    context = clean_context()
    start = context.Event()
    workers = [
        context.Process(target=_process_writes, args=(path, w, start)) for w in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join()
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    with Store(path) as store:
        expected = {f"p{w}-{n}" for w in range(PROCESSES) for n in range(LOGS_PER_PROCESS)}
        _assert_all_once(store, expected)
        assert next(f.path for f in store.list_flows()) == "own/0"


_CRASH_WRITER = """
import sys
from flowtrace.models import FlowLogRequest
from flowtrace.store import Store
store = Store(sys.argv[1])
n = 0
while True:
    store.log(FlowLogRequest(path="f", log_id=f"L{n}"))
    print(f"L{n}", flush=True)  # acknowledged only after log() returned
    n += 1
"""


def test_nothing_acknowledged_is_lost_when_the_writer_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert writer.stdout is not None
    acknowledged = [writer.stdout.readline().strip() for _ in range(300)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    with Store(path) as store:
        for log_id in acknowledged:
            assert store.get_log(log_id).id == log_id
