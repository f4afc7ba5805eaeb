"""Ingest throughput of `flowtrace serve` through HTTP, by hand (not part of the test suite).

    PYTHONPATH=src python bench/server_bench.py [--runs 5] [--logs 3000] [--batches 40]
        [--connections 4]

Starts a real server process on a free loopback port over a fresh database, then one client
process (httpx, keep-alive) sends logs three ways:

- per-log, 1 connection: the contract's one request per log, each sent when the previous one
  was answered (what one `httpx.Client` used from one thread does);
- per-log, N connections: the same requests from N threads of the same process, each with its
  own `httpx.Client` (one keep-alive connection), so N requests are in flight at once;
- batches of 512 logs through the batch extension, one connection.

Prints the median logs/s of several runs of each, and the load average before and after (the
figures mean little on a busy machine).

    PYTHONPATH=src python bench/server_bench.py --scaling [--runs 3] [--batches 10]
        [--connections 4] [--workers 1,2,4] [--search-index]

Issue 12: batch ingest (N connections, each sending batches of 512) into one SQLite server
process, then into PostgreSQL (a throwaway cluster with PostgreSQL's default durability, see
tests/pgutil.py) through `flowtrace serve --workers W` for each W; all in the same run.
`--search-index`: each PostgreSQL figure again with pg_trgm's GIN indexes on the searched
columns (what they would cost ingest).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serverutil import RunningServer, start_server

BATCH_SIZE = 512
PER_LOG_TARGET = 1_500  # logs/s
BATCH_TARGET = 10_000  # logs/s


def log_body(run: str, n: int) -> dict[str, Any]:
    """A typical completed log: a few inputs, a short output, times, a version."""
    return {
        "path": "bench/agent",
        "log_id": f"{run}-{n}",
        "flow": {"attributes": {"model": "m-1", "temperature": 0.2}},
        "inputs": {"question": f"question number {n}", "k": n % 7},
        "output": f"answer to question {n}",
        "start_time": "2025-01-01T00:00:00Z",
        "end_time": "2025-01-01T00:00:01Z",
        "trace_status": "complete",
    }


def per_log(client: httpx.Client, run: str, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        response = client.post("/flows/log", json=log_body(run, n))
        response.raise_for_status()
    return count / (time.perf_counter() - started)


def per_log_concurrent(clients: list[httpx.Client], run: str, count: int) -> float:
    """`count` logs, one request each, from one thread per client (logs dealt round-robin)."""
    failures: list[BaseException] = []
    start = threading.Barrier(len(clients) + 1)

    def send(k: int) -> None:
        start.wait()
        try:
            for n in range(k, count, len(clients)):
                clients[k].post("/flows/log", json=log_body(run, n)).raise_for_status()
        except BaseException as exc:  # reported below, from the main thread
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(clients))]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return count / elapsed


def batched(client: httpx.Client, run: str, batches: int) -> float:
    started = time.perf_counter()
    for b in range(batches):
        operations = [
            {"op": "log", "body": log_body(run, b * BATCH_SIZE + n)} for n in range(BATCH_SIZE)
        ]
        response = client.post("/flows/logs/batch", json={"operations": operations})
        response.raise_for_status()
        if any(result["status"] != 200 for result in response.json()["results"]):
            raise RuntimeError("a batched log was refused")
    return batches * BATCH_SIZE / (time.perf_counter() - started)


def batched_concurrent(clients: list[httpx.Client], run: str, batches: int) -> float:
    """`batches` batches from each client at once (its own thread and connection)."""
    failures: list[BaseException] = []

    def send(index: int, client: httpx.Client) -> None:
        try:
            batched(client, f"{run}-{index}", batches)
        except BaseException as failure:
            failures.append(failure)

    threads = [threading.Thread(target=send, args=(i, client)) for i, client in enumerate(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return len(clients) * batches * BATCH_SIZE / elapsed


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) these processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _server_pids(server: RunningServer) -> list[int]:
    """The server process, its workers, and PostgreSQL's processes (their backends)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    postgres = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True)
    return [pid, *map(int, children), *map(int, postgres.stdout.split())]


def _scaling_rate(
    server: RunningServer, args: argparse.Namespace
) -> tuple[float, list[float], float]:
    """The median rate, its runs, and the CPU the server side spent per log (its processes
    and the database's: the figure other load on the machine moves least)."""
    clients = [server.client(timeout=300.0) for _ in range(args.connections)]
    pids = _server_pids(server)
    try:
        before = _cpu_s(pids)
        median, runs = median_rate(
            args.runs, lambda r: batched_concurrent(clients, "s" + r, args.batches)
        )
        logs = (args.runs + 1) * args.connections * args.batches * BATCH_SIZE
        return median, runs, (_cpu_s(pids) - before) / logs * 1e6
    finally:
        for each in clients:
            each.close()


def scaling(args: argparse.Namespace) -> None:
    from bench.store_bench import set_search_index
    from tests.pgutil import running_cluster

    print(f"load average before: {_load()}")
    figures: list[tuple[str, float, list[float], float]] = []
    with tempfile.TemporaryDirectory() as tmp, running_cluster(durable=True) as cluster:
        with start_server(Path(tmp) / "bench.db") as server:
            figures.append(("SQLite, 1 process", *_scaling_rate(server, args)))
        for workers in args.workers:
            for indexed in (False, True) if args.search_index else (False,):
                url = cluster.new_schema()
                extra = ["--workers", str(workers)]
                with start_server(url, extra_args=extra) as server:  # type: ignore[arg-type]
                    if indexed:
                        set_search_index(url, True)
                    name = f"PostgreSQL, {workers} processes{', pg_trgm' if indexed else ''}"
                    figures.append((name, *_scaling_rate(server, args)))
    print(f"load average after: {_load()}")
    base = figures[0][1]
    for name, median, runs, cpu_us in figures:
        print(
            f"batch {BATCH_SIZE} x {args.connections} connections, {name}: median"
            f" {median:,.0f} logs/s ({median / base:.2f}x SQLite), server CPU"
            f" {cpu_us:.0f} us/log; runs {_fmt(runs)}"
        )


def median_rate(runs: int, measure: Callable[[str], float]) -> tuple[float, list[float]]:
    measure("warmup")
    rates = [measure(f"run{r}") for r in range(runs)]
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--logs", type=int, default=3_000, help="logs per per-log run")
    parser.add_argument("--batches", type=int, default=40, help="batches per batch run")
    parser.add_argument(
        "--connections", type=int, default=4, help="concurrent connections (per-log, N)"
    )
    parser.add_argument("--scaling", action="store_true", help="issue 12: see above")
    parser.add_argument(
        "--search-index",
        action="store_true",
        help="--scaling: each PostgreSQL figure also with pg_trgm's search indexes",
    )
    parser.add_argument(
        "--workers",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 2, 4],
        help="server processes on PostgreSQL (--scaling)",
    )
    args = parser.parse_args()
    if args.scaling:
        scaling(args)
        return

    print(f"load average before: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        server: RunningServer = start_server(Path(tmp) / "bench.db")
        with server, server.client() as client:
            one, one_runs = median_rate(args.runs, lambda r: per_log(client, "p" + r, args.logs))
            clients = [server.client() for _ in range(args.connections)]
            try:
                par, par_runs = median_rate(
                    args.runs, lambda r: per_log_concurrent(clients, "c" + r, args.logs)
                )
            finally:
                for each in clients:
                    each.close()
            many, many_runs = median_rate(
                args.runs, lambda r: batched(client, "b" + r, args.batches)
            )
    print(f"load average after: {_load()}")
    _report("per-log, 1 connection", one, PER_LOG_TARGET, one_runs)
    _report(f"per-log, {args.connections} connections", par, PER_LOG_TARGET, par_runs)
    _report(f"batch {BATCH_SIZE}", many, BATCH_TARGET, many_runs)


def _report(name: str, median: float, target: int, runs: list[float]) -> None:
    met = "met" if median >= target else "NOT met"
    print(f"{name}: median {median:,.0f} logs/s (target {target:,}: {met}); runs {_fmt(runs)}")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{rate:,.0f}" for rate in rates)


if __name__ == "__main__":
    main()
