"""The spool through the whole pipeline: a real `flowtrace serve` behind the fault proxy, real
spool files, real processes killed, exiting and draining."""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowtrace
from flowtrace import flow
from flowtrace.exporters import Outcome
from flowtrace.exporters.memory import MemoryExporter
from flowtrace.store import ListQuery, Store
from tests.faultproxy import FaultProxy, Forward, Hang
from tests.pipelineutil import WAIT_S, fresh_pipeline, wait_until
from tests.scriptutil import read_line, run_script, script_env, start_script
from tests.serverutil import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("server") / "flowtrace.db") as running:
        yield running


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    running = FaultProxy.in_front_of(server.root_url)
    yield running
    running.stop()


def unique(name: str) -> str:
    return f"spool/{name}-{time.monotonic_ns()}"


def stored_traces(server: RunningServer, root_path: str) -> list[dict[str, Any]]:
    """Every trace whose root is at `root_path`, as (path, status, children...) trees."""
    store = Store(server.db_path)
    try:
        flows = {f.path: f for f in store.list_flows()}
        if root_path not in flows:
            return []
        page = store.list_logs(ListQuery(file_id=flows[root_path].id, size=1000, roots_only=True))
        return [_tree(store.get_log(record.id)) for record in page.records]
    finally:
        store.close()


def _tree(record: Any) -> dict[str, Any]:
    return {
        "path": record.flow.path,
        "status": record.trace_status,
        "inputs": record.inputs,
        "children": [_tree(child) for child in record.trace_children],
    }


def stored_count(server: RunningServer) -> int:
    store = Store(server.db_path)
    try:
        return sum(f.log_count for f in store.list_flows())
    finally:
        store.close()


def expected_trees(root_path: str, count: int) -> list[dict[str, Any]]:
    """What TRACES makes, as a healthy run stores it."""

    def node(path: str, i: int, children: list[dict[str, Any]]) -> dict[str, Any]:
        return {"path": path, "status": "complete", "inputs": {"i": i}, "children": children}

    return [
        node(root_path, i, [node("spool/child", i, [node("spool/leaf", i, [])])])
        for i in range(count)
    ]


def by_input(trees: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(trees, key=lambda tree: tree["inputs"]["i"])


#: Makes argv[2] traces of three logs (root, child, leaf) at path argv[1].
TRACES = """
import sys, time
import flowtrace
from flowtrace import flow

root_path, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    with flow(root_path, inputs={"i": i}):
        with flow("spool/child", inputs={"i": i}):
            with flow("spool/leaf", inputs={"i": i}):
                pass

def wait_spooled(logs):
    deadline = time.monotonic() + 60
    while flowtrace.stats()["spooled"] < logs and time.monotonic() < deadline:
        time.sleep(0.01)
"""

#: A later process of the same destination: it logs once and flushes, so it drains the backlog.
NEXT_PROCESS = """
import sys
import flowtrace
from flowtrace import flow
with flow("spool/next"):
    pass
print(flowtrace.flush(60), flowtrace.stats()["sent"], flowtrace.stats()["dropped"])
"""


def settings_for(
    proxy: FaultProxy, server: RunningServer, spool_dir: Path, **more: object
) -> dict[str, str]:
    return script_env(
        base_url=proxy.base_url,
        api_key=server.api_key,
        spool_dir=spool_dir,
        first_batch_after_s=0.02,
        batch_interval_s=0.05,
        retry_backoff_s=0.05,
        **more,
    )


def assert_next_process_delivers(env: dict[str, str], logs: int) -> None:
    done = run_script(NEXT_PROCESS, env)
    assert done.returncode == 0, done.stderr
    ok, sent, dropped = done.stdout.split(" ", 2)
    assert ok == "True"
    assert int(sent) == logs + 1  # the backlog's logs, and its own
    assert dropped.strip() == "{}"


# --- in the process ---------------------------------------------------------------------------


def make_trace(root_path: str, i: int) -> None:
    """A trace as TRACES makes it."""
    with flow(root_path, inputs={"i": i}), flow("spool/child", inputs={"i": i}):  # noqa: SIM117
        with flow("spool/leaf", inputs={"i": i}):
            pass


def test_an_outage_longer_than_the_retry_deadline_loses_nothing(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("outage")
    with fresh_pipeline(
        base_url=proxy.base_url,
        api_key=server.api_key,
        spool_dir=str(tmp_path),
        retry_deadline_s=0.3,
    ):
        proxy.down()
        for i in range(20):
            make_trace(root_path, i)
        assert flowtrace.flush(WAIT_S) is False  # gave up after retry_deadline_s: spooled
        stats = flowtrace.stats()
        assert stats["spooled"] == 60
        assert stats["dropped"] == {}
        proxy.up()
        assert flowtrace.flush(WAIT_S) is True
        stats = flowtrace.stats()
    assert stats["sent"] == 60
    assert stats["spooled"] == 0
    assert stats["dropped"] == {}  # no 404/409 on replay: nothing refused
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 20)


@pytest.mark.parametrize("destination", ["embedded", "server"])
def test_a_loop_that_overflows_a_small_queue_stores_every_log_in_bounded_memory(
    destination: str, tmp_path: Path, server: RunningServer
) -> None:
    """The embedded store is the local disk: the loop waits for it. A server is not: the
    overflow goes to the spool, and the loop waits only for that."""
    count, bound = 40_000, 1_000
    if destination == "embedded":
        db = tmp_path / "loop.db"
        target: dict[str, Any] = {"db_path": str(db)}
    else:
        db = server.db_path
        target = {"base_url": server.base_url, "api_key": server.api_key}
    before = stored_count(server) if destination == "server" else 0
    with fresh_pipeline(spool_dir=str(tmp_path / "spool"), queue_size=bound, **target) as pipe:

        @flow(path=unique("loop"))
        def call(i: int) -> int:
            return i

        held: list[int] = []
        switching = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # the worker gets the interpreter lock often: less slack
        try:
            for i in range(count):
                call(i)
                if i % 250 == 0:
                    held.append(pipe.stats()["queued"])
        finally:
            sys.setswitchinterval(switching)
        assert flowtrace.flush(WAIT_S * 3)
        stats = flowtrace.stats()
    assert stats["dropped"] == {}
    assert stats["sent"] == count
    # What memory holds follows the bound, not the loop: the bound, plus what the program
    # appends between two of the worker's intakes (the call path's plain appends). That is a
    # few thousand at most when the worker gets the processor within milliseconds; on a busy
    # machine a late one lets more in, now and then, never a share of the loop.
    assert statistics.median(held) <= bound + 1_000, held
    assert max(held) <= count / 2, held
    with Store(db) as store:
        assert sum(f.log_count for f in store.list_flows()) == before + count


# --- whole processes ---------------------------------------------------------------------------


def test_killed_after_spooling_its_logs_a_fresh_process_delivers_them_all(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("kill9")
    env = settings_for(proxy, server, tmp_path)
    proxy.down()
    process = start_script(
        TRACES + "wait_spooled(30); print('spooled', flush=True); time.sleep(60)",
        env,
        root_path,
        "10",
    )
    assert read_line(process) == "spooled"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    proxy.up()
    assert_next_process_delivers(env, 30)
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 10)


def test_exit_against_a_dead_server_is_bounded_and_the_next_process_delivers(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("deadexit")
    env = settings_for(proxy, server, tmp_path, exit_flush_timeout_s=1)
    proxy.down()
    done = run_script(TRACES + "print(time.monotonic(), flush=True)", env, root_path, "50")
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    assert exited - float(done.stdout) < 1.0 + 1.5  # the bound, and a small margin
    assert "150 log(s) not delivered at exit" in done.stderr
    assert "150 spooled at" in done.stderr
    proxy.up()
    assert_next_process_delivers(env, 150)
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 50)


def test_four_processes_spool_then_two_drain_each_log_once_in_order(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("four")
    env = settings_for(proxy, server, tmp_path, exit_flush_timeout_s=0.5)
    proxy.down()
    writers = [start_script(TRACES, env, f"{root_path}/{n}", "40") for n in range(4)]
    for writer in writers:
        _, stderr = writer.communicate(timeout=120)
        assert writer.returncode == 0, stderr
    proxy.up()
    drainers = [start_script(NEXT_PROCESS, env) for _ in range(2)]
    results = []
    for drainer in drainers:
        stdout, stderr = drainer.communicate(timeout=120)
        assert drainer.returncode == 0, stderr
        results.append(stdout.split(" ", 2))
    assert all(ok == "True" and dropped.strip() == "{}" for ok, _, dropped in results)
    # 480 logs spooled; each drainer also delivers its own one: each spooled log once
    assert sum(int(sent) for _, sent, _ in results) == 4 * 40 * 3 + 2
    for n in range(4):
        path = f"{root_path}/{n}"
        # a child before its parent would be a 404, after its parent's close a 409: refused
        assert by_input(stored_traces(server, path)) == expected_trees(path, 40)


def test_a_drainer_killed_mid_drain_is_resumed_by_another(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("resume")
    env = settings_for(proxy, server, tmp_path, exit_flush_timeout_s=0.5, batch_size=30)
    proxy.down()
    done = run_script(TRACES, env, root_path, "300")
    assert done.returncode == 0, done.stderr
    before = stored_count(server)
    proxy.up()
    drainer = start_script(NEXT_PROCESS, env)
    assert wait_until(lambda: stored_count(server) > before + 60)  # some batches went through
    drainer.send_signal(signal.SIGKILL)
    drainer.wait(timeout=60)
    assert stored_count(server) < before + 900  # killed before the end
    done = run_script(NEXT_PROCESS, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True ")
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 300)


def test_write_ahead_mode_keeps_what_is_in_flight_through_kill_9(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("always")
    env = settings_for(proxy, server, tmp_path, spool="always")
    proxy.set_default(Hang())  # the server takes the request and never answers
    process = start_script(
        TRACES + "wait_spooled(15); print('spooled', flush=True); time.sleep(60)",
        env,
        root_path,
        "5",
    )
    assert read_line(process) == "spooled"  # on disk before it was sent
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    proxy.set_default(Forward())
    assert_next_process_delivers(env, 15)
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 5)


# --- when the spool itself fails ---------------------------------------------------------------


def failing_exporter() -> MemoryExporter:
    exporter = MemoryExporter(destination="memory:failing")
    for _ in range(1000):
        exporter.script(lambda ops: [Outcome(503, {"detail": "down"})] * len(ops))
    return exporter


def flowtrace_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flowtrace"]


def test_a_full_spool_drops_what_it_cannot_take_counted_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="flowtrace"),
        fresh_pipeline(failing_exporter(), spool_dir=str(tmp_path), spool_max_mib=0.1),
    ):
        for i in range(400):
            with flow("full/spool", inputs={"payload": "x" * 1000, "i": i}):
                pass
        assert flowtrace.flush(1.0) is False
        stats = flowtrace.stats()
    assert stats["spooled"] + stats["dropped"].get("spool_full", 0) == 400
    assert stats["dropped"]["spool_full"] > 0
    assert stats["spooled"] > 0
    full = [w for w in flowtrace_warnings(caplog) if "spool was at its size bound" in w]
    assert len(full) == 1


def test_a_corrupt_spool_is_set_aside_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = failing_exporter()
    from flowtrace._spool import spool_path

    path = spool_path("memory:failing", str(tmp_path))
    path.write_bytes(b"garbage" * 1000)
    with (
        caplog.at_level(logging.WARNING, logger="flowtrace"),
        fresh_pipeline(exporter, spool_dir=str(tmp_path)),
    ):
        with flow("corrupt/spool"):
            pass
        assert flowtrace.flush(1.0) is False
        stats = flowtrace.stats()
    assert stats["spooled"] == 1
    assert stats["dropped"] == {}
    aside = [w for w in flowtrace_warnings(caplog) if "set aside" in w]
    assert len(aside) == 1
    assert list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.parametrize("failure", ["full-disk", "no-directory"])
def test_a_spool_that_cannot_be_written_leaves_logs_in_memory_with_one_warning(
    failure: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    if failure == "no-directory":
        (tmp_path / "file").write_text("a file where the spool directory would be")
        spool_dir = tmp_path / "file" / "spool"
    exporter = MemoryExporter(destination="memory:cannot")
    for _ in range(3):
        exporter.script(lambda ops: [Outcome(503, {"detail": "down"})] * len(ops))
    with (
        caplog.at_level(logging.WARNING, logger="flowtrace"),
        fresh_pipeline(exporter, spool_dir=str(spool_dir), retry_deadline_s=30.0) as pipe,
    ):
        if failure == "full-disk":
            spool = pipe.spool()
            assert spool is not None
            with flow("disk/first"):
                pass
            assert wait_until(lambda: pipe._outbox is not None and pipe._outbox.spool is not None)
            outbox_spool = pipe._outbox.spool  # type: ignore[union-attr]
            assert outbox_spool is not None
            with outbox_spool._lock:
                conn = outbox_spool._connect()
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages}")  # full: SQLITE_FULL from now on
        for i in range(50):
            with flow("disk/logs", inputs={"payload": "x" * 5000, "i": i}):
                pass
        assert flowtrace.flush(WAIT_S)  # the exporter recovers after three failures
        stats = flowtrace.stats()
    assert stats["dropped"] == {}
    # what was spooled before the disk filled up waits there (for a later process)
    assert stats["sent"] + stats["spooled"] == 50 + (1 if failure == "full-disk" else 0)
    unavailable = [w for w in flowtrace_warnings(caplog) if "spool cannot be used" in w]
    assert len(unavailable) == 1


# --- the command line -----------------------------------------------------------------------


def test_spool_status_drain_and_purge_on_the_command_line(
    proxy: FaultProxy, server: RunningServer, tmp_path: Path
) -> None:
    root_path = unique("cli")
    env = settings_for(proxy, server, tmp_path, exit_flush_timeout_s=0.3)
    proxy.down()
    done = run_script(TRACES, env, root_path, "4")
    assert done.returncode == 0, done.stderr
    cli = "import sys; from flowtrace.cli import main; sys.exit(main(sys.argv[1:]))"
    status = run_script(cli, env, "spool", "status")
    assert status.returncode == 0, status.stderr
    assert "12 log(s) in 12 operation(s)" in status.stdout or "12 log(s) in" in status.stdout
    assert "gone" in status.stdout
    proxy.up()
    drained = run_script(cli, env, "spool", "drain", "--timeout", "30")
    assert drained.returncode == 0, drained.stderr + drained.stdout
    assert drained.stdout.startswith("delivered 12 log(s); 0 dropped; 0 still spooled")
    assert by_input(stored_traces(server, root_path)) == expected_trees(root_path, 4)
    # purge: spool again, then throw it away
    proxy.down()
    assert run_script(TRACES, env, unique("purged"), "2").returncode == 0
    purged = run_script(cli, env, "spool", "purge")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("purged 6 log(s)")
    after = run_script(cli, env, "spool", "status")
    assert "0 log(s) in 0 operation(s)" in after.stdout


def test_stats_say_what_is_spooled_and_where(tmp_path: Path) -> None:
    with fresh_pipeline(failing_exporter(), spool_dir=str(tmp_path)):
        with flow("stats/spool"):
            pass
        assert wait_until(lambda: flowtrace.stats()["spooled"] == 1)
        stats = flowtrace.stats()
    assert stats["spool"] is not None
    assert Path(stats["spool"]).parent == tmp_path
    assert json.dumps(stats)  # plain data
    assert os.path.exists(stats["spool"])


def test_a_process_that_delivered_everything_leaves_no_spool_behind(tmp_path: Path) -> None:
    """The spool is opened only when something goes to it: a run that delivered all its logs
    creates no spool file (and spends no exit time opening one)."""
    spool_dir = tmp_path / "spool"
    code = """
        import flowtrace
        for i in range(10):
            with flowtrace.flow("spool/never"):
                pass
    """
    done = run_script(code, script_env(db_path=tmp_path / "t.db", spool_dir=spool_dir))
    assert done.returncode == 0, done.stderr
    assert Store(tmp_path / "t.db").list_logs(ListQuery()).total == 10
    assert not spool_dir.exists() or list(spool_dir.iterdir()) == []
