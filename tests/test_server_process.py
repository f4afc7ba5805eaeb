"""The server as a process: `serve` flags, refusal without keys, shutdown, crash, load.

Each test runs `python -m flowtrace.server serve` on a free loopback port and talks to it with
httpx, as a deployment would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serverutil import RunningServer, server, start_server

__all__ = ["server"]  # the fixture, re-exported so pytest finds it here

# Acknowledged logs to wait for before pulling the plug mid-load.
ACKS_BEFORE_CRASH = 300
WRITERS = 8
LOGS_PER_WRITER = 400
REPLAY_EVERY = 50
# Bound on any wait for a condition in these tests, seconds.
WAIT_LIMIT = 120.0


def serve_command(db: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "flowtrace.server", "serve", "--db", str(db), *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWTRACE_SERVER_API_KEYS"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return {**env, **extra}


def all_log_ids(client: httpx.Client, flow_id: str) -> list[str]:
    ids: list[str] = []
    page = 1
    while True:
        response = client.get("/logs", params={"file_id": flow_id, "page": page, "size": 1000})
        assert response.status_code == 200, response.text
        records = response.json()["records"]
        ids += [record["id"] for record in records]
        if len(records) < 1000:
            return ids
        page += 1


# --- the command ----------------------------------------------------------------------------


def test_non_loopback_host_without_key_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        serve_command(tmp_path / "db", "--host", "0.0.0.0", "--port", "0"),
        capture_output=True,
        env=child_env(),
        timeout=WAIT_LIMIT,
    )
    assert result.returncode == 2
    assert b"API key" in result.stderr
    assert not (tmp_path / "db").exists()


def test_keys_from_the_environment(tmp_path: Path) -> None:
    process = subprocess.Popen(
        serve_command(tmp_path / "db", "--port", "0"),
        stdout=subprocess.PIPE,
        env=child_env(FLOWTRACE_SERVER_API_KEYS=" alpha , beta,"),
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    try:
        assert line.startswith("flowtrace serving on http://127.0.0.1:")
        assert f"(db: {tmp_path / 'db'})" in line
        base = line.split()[3] + "/v5"
        assert httpx.get(base + "/flows").status_code == 401
        assert httpx.get(base + "/flows", headers={"X-API-KEY": "beta"}).status_code == 200
        assert httpx.get(base + "/flows", headers={"X-API-KEY": "alpha"}).status_code == 200
        assert httpx.get(base + "/flows", headers={"X-API-KEY": "gamma"}).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_LIMIT) == 0
        process.stdout.close()


def test_no_batch_flag_withdraws_the_extension(tmp_path: Path) -> None:
    with start_server(tmp_path / "db", extra_args=["--no-batch"]) as running:
        with running.client() as client:
            assert client.post("/flows/logs/batch", json={"operations": []}).status_code == 404
        assert httpx.get(running.root_url + "/healthz").json()["batch"] is False


def test_max_body_bytes_flag(tmp_path: Path) -> None:
    running = start_server(tmp_path / "db", extra_args=["--max-body-bytes", "200"])
    with running, running.client() as client:
        big = client.post("/flows/log", json={"path": "p", "output": "x" * 300})
        assert big.status_code == 413
        assert client.post("/flows/log", json={"path": "p"}).status_code == 200


# --- load, shutdown, crash ------------------------------------------------------------------


def write_trace(client: httpx.Client, writer: int) -> set[str]:
    """One root and its children, every REPLAY_EVERY-th child sent twice (a retry)."""
    root = client.post("/flows/log", json={"path": "load", "log_id": f"w{writer}-root"})
    assert root.status_code == 200, root.text
    ids = {f"w{writer}-root"}
    for n in range(1, LOGS_PER_WRITER):
        body = {
            "path": "load",
            "log_id": f"w{writer}-{n}",
            "trace_parent_id": f"w{writer}-root",
            "inputs": {"n": n},
            "trace_status": "complete",
        }
        for _ in range(2 if n % REPLAY_EVERY == 0 else 1):
            response = client.post("/flows/log", json=body)
            assert response.status_code == 200, response.text
        ids.add(f"w{writer}-{n}")
    done = client.patch(f"/flows/logs/w{writer}-root", json={"trace_status": "complete"})
    assert done.status_code == 200, done.text
    return ids


def run_writers(count: int, work: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_LIMIT)
    assert not errors, errors
    return results


def test_concurrent_writers_lose_and_double_nothing(server: RunningServer) -> None:
    def writer(index: int) -> set[str]:
        with server.client() as client:
            return write_trace(client, index)

    written: set[str] = set().union(*run_writers(WRITERS, writer))
    assert len(written) == WRITERS * LOGS_PER_WRITER

    with server.client() as client:
        flow_id = client.get("/logs/w0-root").json()["flow"]["id"]
        stored = all_log_ids(client, flow_id)
        assert len(stored) == len(set(stored)) == WRITERS * LOGS_PER_WRITER
        assert set(stored) == written
        for index in range(WRITERS):
            root = client.get(f"/logs/w{index}-root").json()
            assert root["trace_status"] == "complete"
            assert len(root["trace_children"]) == LOGS_PER_WRITER - 1


class AckingWriter:
    """Posts logs until the server goes away, remembering every one the server acknowledged.

    Alternates single logs and batches, so both paths are covered."""

    def __init__(self, server: RunningServer, name: str, acked: set[str], enough: threading.Event):
        self.server = server
        self.name = name
        self.acked = acked
        self.enough = enough
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, name=name)

    def run(self) -> None:
        try:
            with self.server.client() as client:
                for round_ in range(100_000):
                    self.send_one(client, f"{self.name}-{round_}")
                    self.send_batch(client, f"{self.name}-{round_}")
        except httpx.TransportError:
            return  # the server is gone
        except BaseException as exc:
            self.errors.append(exc)
            self.enough.set()  # do not keep the test waiting for acks that will not come

    def send_one(self, client: httpx.Client, log_id: str) -> None:
        response = client.post("/flows/log", json={"path": "crash", "log_id": log_id})
        assert response.status_code == 200, response.text
        self.ack([log_id])

    def send_batch(self, client: httpx.Client, prefix: str) -> None:
        ids = [f"{prefix}-b{n}" for n in range(20)]
        operations = [{"op": "log", "body": {"path": "crash", "log_id": i}} for i in ids]
        response = client.post("/flows/logs/batch", json={"operations": operations})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["status"] for r in results] == [200] * len(ids)
        self.ack(ids)

    def ack(self, ids: list[str]) -> None:
        self.acked.update(ids)
        if len(self.acked) >= ACKS_BEFORE_CRASH:
            self.enough.set()


def load_until_stopped(server: RunningServer, stop: Callable[[RunningServer], int]) -> set[str]:
    """Run two acking writers, call `stop(server)` mid-load, return what was acknowledged."""
    acked: set[str] = set()
    enough = threading.Event()
    writers = [AckingWriter(server, f"w{n}", acked, enough) for n in range(2)]
    for writer in writers:
        writer.thread.start()
    reached = enough.wait(timeout=WAIT_LIMIT)
    stop(server)
    for writer in writers:
        writer.thread.join(timeout=WAIT_LIMIT)
        assert not writer.thread.is_alive()
        assert not writer.errors, writer.errors
    assert reached, "the writers never got going"
    return set(acked)


def assert_all_stored(db: Path, acked: set[str]) -> None:
    with start_server(db) as restarted, restarted.client() as client:
        flows = client.get("/flows").json()["records"]
        stored = {i for flow in flows for i in all_log_ids(client, flow["id"])}
        missing = sorted(acked - stored)  # listed, not one GET each: ~1,000 ids after a load
        assert not missing, f"{len(missing)} acknowledged logs lost, e.g. {missing[:5]}"
        # The database is usable after the restart.
        assert client.post("/flows/log", json={"path": "after"}).status_code == 200


def test_kill_9_mid_load_loses_no_acknowledged_log(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    server = start_server(db)
    acked = load_until_stopped(server, RunningServer.kill)
    assert server.process.returncode == -signal.SIGKILL
    assert len(acked) >= ACKS_BEFORE_CRASH
    assert_all_stored(db, acked)


def test_sigterm_mid_load_exits_cleanly_and_keeps_every_log(tmp_path: Path) -> None:
    db = tmp_path / "term.db"
    server = start_server(db)
    acked = load_until_stopped(server, RunningServer.stop)
    assert server.process.returncode == 0
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    connection.close()
    assert_all_stored(db, acked)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_with_exit_code_0(tmp_path: Path, signum: int) -> None:
    server = start_server(tmp_path / "db")
    with server.client() as client:
        assert client.post("/flows/log", json={"path": "p", "log_id": "kept"}).status_code == 200
    server.process.send_signal(signum)
    assert server.process.wait(timeout=WAIT_LIMIT) == 0
    server.stop()
    assert_all_stored(tmp_path / "db", {"kept"})
