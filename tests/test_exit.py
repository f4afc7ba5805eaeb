"""Exit safety (issue 13, item 1): whatever the backlog and however the program ends, the
interpreter exits with the program's own exit code, within the exit bound, and nothing that
could have been kept is lost. Real processes, several runs each."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowtrace.store import ListQuery, Store
from tests.faultproxy import FaultProxy, Hang
from tests.scriptutil import read_line, run_script, script_env, start_script
from tests.serverutil import RunningServer, start_server

#: argv[1] calls of a decorated function, then exit without flush() (prints when it is done).
HOT_LOOP = """
import sys, time
from flowtrace import flow

@flow(path="exit/call")
def call(i):
    return i

for i in range(int(sys.argv[1])):
    call(i)
print(time.monotonic(), flush=True)
"""

#: Logs once and flushes: a later process of the same destination, which delivers the backlog.
NEXT = """
import flowtrace
from flowtrace import flow
with flow("exit/next"):
    pass
print(flowtrace.flush(120), flowtrace.stats()["dropped"])
"""

#: What a crash at exit looks like on stderr.
CRASH_SIGNS = ("Fatal Python error", "exception not rethrown", "Segmentation fault", "Traceback")


def stored(db: Path) -> int:
    with Store(db) as store:
        return sum(f.log_count for f in store.list_flows())


def assert_clean(stderr: str) -> None:
    for sign in CRASH_SIGNS:
        assert sign not in stderr, stderr


def test_a_backlog_beyond_a_short_exit_bound_exits_cleanly_and_the_next_run_stores_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "flowtrace.db"
    env = script_env(db_path=db, exit_flush_timeout_s=0.2)
    runs, calls = 2, 20_000
    for _ in range(runs):
        done = run_script(HOT_LOOP, env, str(calls))
        exited = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert_clean(done.stderr)
        # The bound, then spooling what is left (planned and encoded on the way: a backlog
        # of 20,000 logs takes under a second, more on a loaded machine).
        assert exited - float(done.stdout) < 0.2 + 5.0
    done = run_script(NEXT, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True {}"
    assert stored(db) == runs * calls + 1


def test_a_script_that_makes_one_log_and_exits_is_quiet_and_stores_it(tmp_path: Path) -> None:
    db = tmp_path / "flowtrace.db"
    env = script_env(db_path=db)
    for _ in range(5):
        done = run_script(HOT_LOOP, env, "1")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # nothing built at exit, nothing to warn about
    assert stored(db) == 5


def test_sys_exit_inside_a_flow_keeps_its_exit_code_and_the_log(tmp_path: Path) -> None:
    db = tmp_path / "flowtrace.db"
    code = """
        import sys
        from flowtrace import flow
        with flow("exit/sys-exit"):
            with flow("exit/inner"):
                sys.exit(3)
    """
    for _ in range(3):
        done = run_script(code, script_env(db_path=db))
        assert done.returncode == 3
        assert_clean(done.stderr)
    with Store(db) as store:
        logs = store.list_logs(ListQuery(size=100)).records
    assert len(logs) == 6
    assert all(log.trace_status == "complete" for log in logs)
    assert {log.metadata["flowtrace"]["ended"] for log in logs} == {"interrupted: SystemExit"}  # type: ignore[index]


def test_sigterm_with_the_default_handler_ends_the_process_as_sigterm_does(
    tmp_path: Path,
) -> None:
    db = tmp_path / "flowtrace.db"
    code = HOT_LOOP + "import time; time.sleep(60)"
    for _ in range(3):
        process = start_script(code, script_env(db_path=db), "20000")
        read_line(process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == -signal.SIGTERM  # not a crash, not another exit code
        assert_clean(stderr)
    with Store(db) as store:  # the file is intact (and holds what was delivered)
        store.list_flows()


@pytest.fixture
def hanging(tmp_path: Path) -> Iterator[tuple[RunningServer, FaultProxy]]:
    with start_server(tmp_path / "server.db") as server:
        proxy = FaultProxy.in_front_of(server.root_url)
        proxy.set_default(Hang())
        try:
            yield server, proxy
        finally:
            proxy.stop()


def test_a_hanging_server_at_exit_costs_the_exit_bound_and_no_crash(
    hanging: tuple[RunningServer, FaultProxy], tmp_path: Path
) -> None:
    server, proxy = hanging
    env = script_env(
        base_url=proxy.base_url,
        api_key=server.api_key,
        spool_dir=tmp_path / "spool",
        exit_flush_timeout_s=1,
    )
    for _ in range(3):
        done = run_script(HOT_LOOP, env, "2000")
        exited = time.monotonic()
        assert done.returncode == 0, done.stderr
        assert_clean(done.stderr)
        assert exited - float(done.stdout) < 1.0 + 1.5
        assert "spooled at" in done.stderr


def test_ctrl_c_during_the_exit_flush_cuts_it_short_and_keeps_the_exit_code(
    hanging: tuple[RunningServer, FaultProxy], tmp_path: Path
) -> None:
    server, proxy = hanging
    env = script_env(
        base_url=proxy.base_url,
        api_key=server.api_key,
        spool_dir=tmp_path / "spool",
        exit_flush_timeout_s=60,
    )
    code = """
        import atexit, sys, time
        import flowtrace
        from flowtrace import flow
        for i in range(100):
            with flow("exit/ctrl-c"):
                pass
        # Registered after flowtrace's: runs just before it (last in, first out).
        atexit.register(lambda: print("flushing", flush=True))
        sys.exit(4)
    """
    process = start_script(code, env)
    assert read_line(process) == "flushing"
    time.sleep(0.5)  # inside flowtrace's exit flush, waiting on the hung server
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 4
    assert time.monotonic() - started < 3.0  # cut short, not the 60 s bound
    assert_clean(stderr)
    assert "100 spooled at" in stderr


def test_the_store_file_is_never_left_broken_by_an_exit(tmp_path: Path) -> None:
    db = tmp_path / "flowtrace.db"
    env = script_env(db_path=db, exit_flush_timeout_s=0.05)
    for _ in range(3):
        done = run_script(HOT_LOOP, env, "20000")
        assert done.returncode == 0, done.stderr
        assert_clean(done.stderr)
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()
