"""`flowtrace serve` on PostgreSQL: several server processes on one database, a crash of one
under load, `--workers`, and what a database it cannot use does to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from flowtrace.store import Store
from tests.pgutil import PostgresCluster
from tests.serverutil import _child_env, start_server

_WRITERS = 4


def _post_until(
    bases: list[str], stop: threading.Event, acknowledged: list[str], name: str
) -> None:
    """Post logs round-robin over the servers until `stop`; keep the ids answered 200."""
    clients = [httpx.Client(base_url=base, timeout=10.0) for base in bases]
    n = 0
    try:
        while not stop.is_set():
            client = clients[n % len(clients)]
            log_id = f"{name}-{n}"
            n += 1
            try:
                body = {"path": "crash/load", "log_id": log_id, "trace_status": "complete"}
                response = client.post("/flows/log", json=body, headers={"X-API-KEY": "k"})
            except httpx.TransportError:
                continue  # the killed server: not acknowledged, not counted
            if response.status_code == 200:
                acknowledged.append(log_id)
    finally:
        for client in clients:
            client.close()


def test_two_servers_on_one_database_lose_no_acknowledged_log_when_one_is_killed(
    postgres_url: str, tmp_path: Path
) -> None:
    first = start_server(postgres_url, api_keys=("k",))  # type: ignore[arg-type]
    second = start_server(postgres_url, api_keys=("k",))  # type: ignore[arg-type]
    stop = threading.Event()
    acknowledged: list[list[str]] = [[] for _ in range(_WRITERS)]
    writers = [
        threading.Thread(
            target=_post_until,
            args=([first.base_url, second.base_url], stop, acknowledged[i], f"w{i}"),
        )
        for i in range(_WRITERS)
    ]
    try:
        for writer in writers:
            writer.start()
        _wait_for(lambda: sum(map(len, acknowledged)) >= 300)
        first.kill()  # kill -9, under load
        killed_at = sum(map(len, acknowledged))
        _wait_for(lambda: sum(map(len, acknowledged)) >= killed_at + 300)  # the other goes on
    finally:
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
        second.stop()
    ids = {log_id for ids in acknowledged for log_id in ids}
    restarted = start_server(postgres_url, api_keys=("k",))  # type: ignore[arg-type]
    with restarted, restarted.client() as client:
        stored = _stored_ids(client)
    assert ids - stored == set()  # every acknowledged log is there
    # beyond them, only logs the killed server committed without its answer getting out
    assert len(stored - ids) <= _WRITERS


def _stored_ids(client: httpx.Client) -> set[str]:
    ids: set[str] = set()
    page = 1
    while True:
        found = client.get("/logs", params={"size": 100, "page": page}).json()
        ids.update(record["id"] for record in found["records"])
        if len(found["records"]) < 100:
            return ids
        page += 1


def _wait_for(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Poll: the writers' progress and a process's children announce themselves nowhere."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()}


def test_workers_share_one_port_and_a_killed_worker_is_replaced(postgres_url: str) -> None:
    with start_server(
        postgres_url,  # type: ignore[arg-type]
        api_keys=("k",),
        extra_args=["--workers", "2"],
    ) as server:
        workers = _children(server.process.pid)
        assert len(workers) == 2
        with server.client() as client:
            for n in range(20):
                body = {"path": "workers/a", "log_id": f"a{n}"}
                response = client.post("/flows/log", json=body, headers={"Connection": "close"})
                assert response.status_code == 200
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            _wait_for(lambda: len(_children(server.process.pid) - {victim}) == 2)
            for n in range(20):  # served throughout, by the survivor and the replacement
                body = {"path": "workers/a", "log_id": f"b{n}"}
                response = client.post("/flows/log", json=body, headers={"Connection": "close"})
                assert response.status_code == 200
            logs = client.get("/logs", params={"size": 100}).json()
        assert logs["total"] == 40
    assert server.process.returncode == 0  # SIGTERM: every worker ended cleanly


def test_a_database_it_cannot_reach_is_one_line_and_exit_code_1(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    url = f"postgresql://postgres@/no_such_database?host={postgres_cluster.socket_dir}"
    done = subprocess.run(
        [sys.executable, "-m", "flowtrace.server", "serve", "--port", "0", "--db", url],
        capture_output=True,
        env=_child_env(),
        timeout=60,
    )
    assert done.returncode == 1
    assert b"no_such_database" in done.stderr and b"Traceback" not in done.stderr


def test_the_database_may_come_from_flowtrace_server_db(postgres_url: str) -> None:
    env = {**_child_env(), "FLOWTRACE_SERVER_DB": postgres_url}
    command = [sys.executable, "-m", "flowtrace.server", "serve", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        schema = postgres_url.rsplit("%3D", 1)[1]
        assert "flowtrace serving on http://127.0.0.1:" in line
        assert "(db: postgresql://postgres@/flowtrace_test?host=" in line and schema in line
        base = line.split()[3]
        response = httpx.post(f"{base}/v5/flows/log", json={"path": "from/env"}, timeout=30)
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    with Store(postgres_url) as store:
        assert [f.path for f in store.list_flows()] == ["from/env"]
