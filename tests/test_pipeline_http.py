"""Delivery to a real flowtrace server on loopback, with faults injected in front of it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import flowtrace
from flowtrace import flow
from flowtrace.store import Store
from tests.faultproxy import FaultProxy, Forward, Hang, ResetAfterForward, Respond
from tests.pipelineutil import WAIT_S, fresh_pipeline
from tests.serverutil import RunningServer, start_server

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tmp_path_factory.mktemp("server") / "flowtrace.db") as running:
        yield running


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[FaultProxy]:
    running = FaultProxy.in_front_of(server.root_url)
    yield running
    running.stop()


@pytest.fixture
def delivering(proxy: FaultProxy, server: RunningServer) -> Iterator[FaultProxy]:
    """A fresh pipeline delivering through `proxy` to `server`."""
    with fresh_pipeline(base_url=proxy.base_url, api_key=server.api_key):
        yield proxy


def stored_count(server: RunningServer, path: str) -> int:
    """How many logs the server stored under flow `path`."""
    store = Store(server.db_path)
    try:
        return sum(f.log_count for f in store.list_flows() if f.path == path)
    finally:
        store.close()


def stored(server: RunningServer, log_id: str) -> dict[str, object]:
    with server.client() as client:
        response = client.get(f"/logs/{log_id}")
    assert response.status_code == 200, response.text
    record: dict[str, object] = response.json()
    return record


def unique(name: str) -> str:
    return f"test/{name}-{time.monotonic_ns()}"


# --- ordering and visibility ---------------------------------------------------------------


def test_nested_traces_arrive_in_order_parent_live_then_closed(
    delivering: FaultProxy, server: RunningServer
) -> None:
    root_path = unique("agent")
    with flow(root_path, attributes={"model": "m1"}, environment="prod") as root:
        for i in range(3):
            with flow("agent/step", inputs={"i": i}), flow("agent/tool"):
                pass
        assert flowtrace.flush(WAIT_S)
        live = stored(server, root.log_id)
        assert live["trace_status"] == "incomplete"
        assert len(live["trace_children"]) == 3  # type: ignore[arg-type]
    assert flowtrace.flush(WAIT_S)
    done = stored(server, root.log_id)
    assert done["trace_status"] == "complete"
    assert done["environment"] == "prod"
    assert done["flow"]["attributes"] == {"model": "m1"}  # type: ignore[index]
    for child in done["trace_children"]:  # type: ignore[attr-defined]
        assert child["trace_status"] == "complete"
        assert child["trace_children"][0]["trace_status"] == "complete"
    assert flowtrace.stats()["dropped"] == {}


def test_per_log_server_gets_the_same_traces(tmp_path: Path) -> None:
    with (
        start_server(tmp_path / "db.sqlite", extra_args=["--no-batch"]) as plain,
        fresh_pipeline(base_url=plain.base_url, api_key=plain.api_key),
    ):
        path = unique("plain")
        with flow(path) as root:
            with flow("plain/child") as child:
                child.output = "x"
            assert flowtrace.flush(WAIT_S)
            assert stored(plain, root.log_id)["trace_status"] == "incomplete"
        assert flowtrace.flush(WAIT_S)
        record = stored(plain, root.log_id)
        assert record["trace_status"] == "complete"
        assert record["trace_children"][0]["output"] == "x"  # type: ignore[index]
        assert record.get("provider_latency") is not None  # a flowtrace server: extension used
        assert flowtrace.stats()["dropped"] == {}


# --- faults --------------------------------------------------------------------------------


def test_server_down_at_start_then_up_delivers_everything_once(
    delivering: FaultProxy, server: RunningServer
) -> None:
    delivering.down()
    path = unique("down")
    for i in range(20):
        with flow(path, inputs={"i": i}):
            pass
    assert flowtrace.flush(0.2) is False
    delivering.up()
    assert flowtrace.flush(WAIT_S)
    assert stored_count(server, path) == 20
    stats = flowtrace.stats()
    assert stats["sent"] == 20
    assert stats["retried"] >= 1
    assert stats["dropped"] == {}


def test_503_then_200(delivering: FaultProxy, server: RunningServer) -> None:
    delivering.when("/flows/", *[Respond(503, b'{"detail": "busy"}')] * 3)
    path = unique("busy")
    with flow(path), flow("busy/child"):
        pass
    assert flowtrace.flush(WAIT_S)
    assert stored_count(server, path) == 1
    assert len(delivering.seen("/flows/")) == 4
    assert flowtrace.stats()["sent"] == 2


def test_429_retry_after_is_honoured(delivering: FaultProxy, server: RunningServer) -> None:
    delivering.when("/flows/", Respond(429, b'{"detail": "slow down"}', {"Retry-After": "2"}))
    path = unique("limited")
    with flow(path):
        pass
    assert flowtrace.flush(WAIT_S)  # a flush does not cut a Retry-After window short
    first, second = delivering.seen("/flows/")
    assert second.at - first.at >= 2.0
    assert stored_count(server, path) == 1


def test_connection_reset_after_the_server_stored_it_no_loss_no_duplicate(
    delivering: FaultProxy, server: RunningServer
) -> None:
    delivering.when("/flows/", ResetAfterForward())
    path = unique("reset")
    with flow(path) as root:
        for _ in range(5):
            with flow(path):
                pass
    assert flowtrace.flush(WAIT_S)
    assert stored_count(server, path) == 6  # the replay was recognised: nothing twice
    assert stored(server, root.log_id)["trace_status"] == "complete"
    stats = flowtrace.stats()
    assert stats["retried"] >= 1
    assert stats["sent"] == 6


def test_401_drops_that_request_with_one_clear_warning(
    delivering: FaultProxy, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    delivering.when("/flows/", Respond(401, b'{"detail": "invalid API key"}'))
    refused, kept = unique("refused"), unique("kept")
    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        with flow(refused):
            pass
        assert flowtrace.flush(WAIT_S)
        with flow(kept):
            pass
        assert flowtrace.flush(WAIT_S)
    assert stored_count(server, refused) == 0
    assert stored_count(server, kept) == 1
    [warning] = [r.getMessage() for r in caplog.records if r.name == "flowtrace"]
    assert "401" in warning
    assert "invalid API key" in warning
    assert flowtrace.stats()["dropped"] == {"rejected": 1}


def test_422_from_the_server_names_the_field_others_unaffected(
    delivering: FaultProxy, server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    good = unique("good")
    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        with flow(good):
            pass
        with flow("bad//path"):  # the store refuses an empty path segment
            pass
        with flow(good):
            pass
        assert flowtrace.flush(WAIT_S)
    assert stored_count(server, good) == 2
    [warning] = [r.getMessage() for r in caplog.records if r.name == "flowtrace"]
    assert "422" in warning
    assert "body.path" in warning
    stats = flowtrace.stats()
    assert stats["dropped"] == {"rejected": 1}
    assert "body.path" in (stats["last_error"] or "")


def test_version_id_reaches_the_request(delivering: FaultProxy, server: RunningServer) -> None:
    path = unique("versioned")
    with server.client() as client:
        created = client.post("/flows", json={"path": path, "attributes": {"v": 2}}).json()
    with flow(path, version_id=created["version_id"]) as log:
        pass
    assert flowtrace.flush(WAIT_S)
    assert stored(server, log.log_id)["flow"]["version_id"] == created["version_id"]  # type: ignore[index]
    assert any("version_id=" in r.path for r in delivering.seen()) or delivering.seen("batch")


def test_hanging_server_flush_returns_false_within_bound(delivering: FaultProxy) -> None:
    delivering.set_default(Hang())
    with flow(unique("hang")):
        pass
    started = time.monotonic()
    assert flowtrace.flush(0.5) is False
    assert time.monotonic() - started < 0.6
    delivering.set_default(Forward())
    delivering.down()  # the hung request fails; its retry goes through
    delivering.up()
    assert flowtrace.flush(WAIT_S)


# --- whole processes: exit, fork -----------------------------------------------------------


def run_script(code: str, env: dict[str, str], timeout: float = 60.0) -> tuple[float, str]:
    """Run `code` in a fresh interpreter; (seconds it took, stderr)."""
    full_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr.decode()
    return elapsed, done.stderr.decode()


def bare_interpreter_s() -> float:
    elapsed, _ = run_script("import flowtrace", {})
    return elapsed


def test_script_that_never_flushes_delivers_everything_at_exit(server: RunningServer) -> None:
    path = unique("atexit")
    code = f"""
        from flowtrace import flow
        for i in range(300):
            with flow({path!r}) as root:
                with flow({path!r}):
                    pass
    """
    env = {"FLOWTRACE_BASE_URL": server.base_url, "FLOWTRACE_API_KEY": server.api_key or ""}
    run_script(code, env)
    assert stored_count(server, path) == 600


@pytest.mark.parametrize("fault", ["hang", "down"])
def test_script_exits_within_the_exit_bound(fault: str, proxy: FaultProxy) -> None:
    if fault == "hang":
        proxy.set_default(Hang())
    else:
        proxy.down()
    code = """
        from flowtrace import flow
        for i in range(100):
            with flow("exit/bound"):
                pass
    """
    env = {"FLOWTRACE_BASE_URL": proxy.base_url, "FLOWTRACE_EXIT_FLUSH_TIMEOUT_S": "1"}
    bare = bare_interpreter_s()
    elapsed, stderr = run_script(code, env)
    assert elapsed < bare + 1.0 + 2.0  # the exit bound, plus a generous margin
    assert "not delivered" in stderr or "dropped" in stderr  # said once, on stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_has_its_own_queue_and_parent_logs_are_not_sent_twice(
    server: RunningServer, tmp_path: Path
) -> None:
    path = unique("fork")
    out = tmp_path / "ids.json"
    code = f"""
        import json, os
        import flowtrace
        from flowtrace import flow
        with flow({path!r}) as before:      # queued in the parent, maybe not yet sent
            pass
        with flow({path!r}) as around:      # open across the fork
            pid = os.fork()
            with flow({path!r}) as inner:
                pass
        ids = {{"before": before.log_id, "around": around.log_id, "inner": inner.log_id}}
        if pid == 0:
            assert flowtrace.stats()["queued"] <= 1, flowtrace.stats()
            flowtrace.flush(30)
            with open({str(out)!r} + ".child", "w") as f:
                json.dump(ids, f)
        else:
            os.waitpid(pid, 0)
            flowtrace.flush(30)
            with open({str(out)!r}, "w") as f:
                json.dump(ids, f)
    """
    env = {"FLOWTRACE_BASE_URL": server.base_url, "FLOWTRACE_API_KEY": server.api_key or ""}
    run_script(code, env)
    parent = json.loads(out.read_text())
    child = json.loads(Path(str(out) + ".child").read_text())
    assert parent["before"] == child["before"]
    assert parent["inner"] != child["inner"]  # ids re-seeded in the child
    # parent: before, around, inner; child: its own inner (a trace of its own). No duplicates.
    assert stored_count(server, path) == 4
    child_inner = stored(server, child["inner"])
    assert child_inner.get("trace_parent_id") is None
    assert child_inner["metadata"]["flowtrace"]["forked_from"] == parent["around"]  # type: ignore[index]
    assert stored(server, parent["inner"])["trace_parent_id"] == parent["around"]
