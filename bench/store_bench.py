"""Store benchmark (run by hand): ingest rate through Store.batch, and read times with a
large database. Usage: PYTHONPATH=src python bench/store_bench.py [--logs 1000000] [--dir D]
[--backends sqlite,postgres]

Prints medians of several runs; results go to bench/RESULTS_store.md by hand. With
`--backends sqlite,postgres` (issue 12) each figure is taken on both in the same run; the
PostgreSQL database is a throwaway cluster with PostgreSQL's default durability
(tests/pgutil.py), the SQLite one a file in --dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowtrace.store import ListQuery, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 512  # the pipeline's batch size
TRACE = 10  # logs per trace in the bulk data: a root and 9 children
FLOWS = 20
BIG_TRACE = 1000
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def _stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _operations(prefix: str, count: int) -> Iterator[dict[str, Any]]:
    """Realistic pipeline traffic: traces of a root and children, each sent complete with
    inputs, output and times (the short-log path), children before their parent completes."""
    for n in range(count):
        trace, position = divmod(n, TRACE)
        root = f"{prefix}-{trace}"
        start = trace * 0.01 + position * 0.001
        body: dict[str, Any] = {
            "path": f"bench/flow{trace % FLOWS}",
            "log_id": root if position == 0 else f"{root}.{position}",
            "flow": {"attributes": {"model": "gpt-x", "temperature": 0.2}},
            "inputs": {"question": f"question number {n}", "k": position},
            "output": f"the answer to {n} is {n * 7}",
            "start_time": _stamp(start),
            "end_time": _stamp(start + 0.0005),
            "trace_status": "complete" if position else "incomplete",
        }
        if position:
            body["trace_parent_id"] = root
        if n % 97 == 0:
            body["error"] = "RuntimeError: flaky"
        yield {"op": "log", "body": body}


def _batches(prefix: str, count: int) -> Iterator[list[dict[str, Any]]]:
    ops: list[dict[str, Any]] = []
    for op in _operations(prefix, count):
        ops.append(op)
        if len(ops) == BATCH:
            yield ops
            ops = []
    if ops:
        yield ops


def _ingest(store: Store, prefix: str, count: int) -> tuple[float, float]:
    """Logs per second through Store.batch (validation included), all results checked: by
    the wall clock, and per CPU second of this process (the figure other load cannot move)."""
    batches = list(_batches(prefix, count))
    began, cpu = time.perf_counter(), time.process_time()
    for ops in batches:
        results = store.batch(ops)
        assert all(r.status == 200 for r in results), results[0]
    return count / (time.perf_counter() - began), count / (time.process_time() - cpu)


def _median_ms(action: Callable[[], object], runs: int = 15) -> float:
    action()  # warm the cache once: the figure is the steady state
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _big_trace(store: Store) -> str:
    root = "big-trace"
    ops = [{"op": "log", "body": {"path": "bench/big", "log_id": root, "start_time": _stamp(9e6)}}]
    for n in range(1, BIG_TRACE):
        parent = root if n < 10 else f"{root}.{n % 9 + 1}"  # two levels
        ops.append(
            {
                "op": "log",
                "body": {
                    "path": "bench/big",
                    "log_id": f"{root}.{n}",
                    "trace_parent_id": parent,
                    "inputs": {"step": n},
                    "output": f"step {n} done",
                    "start_time": _stamp(9e6 + n),
                    "end_time": _stamp(9e6 + n + 0.5),
                    "trace_status": "complete" if n >= 10 else "incomplete",
                },
            }
        )
    for start in range(0, len(ops), BATCH):
        assert all(r.status == 200 for r in store.batch(ops[start : start + BATCH]))
    return root


# --- a bulk fill in SQL (issue 12): 1M logs in a minute instead of many, on either backend ---
_T0_US = int(T0.timestamp() * 1e6)
_SEQ0 = 10_000_000  # above anything the rules allocated for the seed logs
_CREATED = '{"created_at":"2025-01-01T00:00:00.000000Z"'
_BULK_INSERT = f"""
INSERT INTO logs (seq, id, flow_ref, version_ref, trace_seq, parent_seq, start_us, end_us,
    complete, has_error, request_digest, inputs, output, data, placeholder)
WITH RECURSIVE s(n) AS (SELECT @FIRST@ UNION ALL SELECT n + 1 FROM s WHERE n < @LAST@)
SELECT {_SEQ0} + n,
    CASE WHEN n % 10 = 0 THEN 'bulk-' || (n / 10) ELSE 'bulk-' || (n / 10) || '.' || (n % 10) END,
    f.seq, v.seq, {_SEQ0} + (n / 10) * 10,
    CASE WHEN n % 10 = 0 THEN NULL ELSE {_SEQ0} + (n / 10) * 10 END,
    {_T0_US} + (n / 10) * 10000 + (n % 10) * 1000,
    {_T0_US} + (n / 10) * 10000 + CASE WHEN n % 10 = 0 THEN 9500 ELSE (n % 10) * 1000 + 500 END,
    CASE WHEN n % 10 = 0 THEN 0 ELSE 1 END, CASE WHEN n % 97 = 0 THEN 1 ELSE 0 END, @DIGEST@,
    '{{"k":' || (n % 10) || ',"question":"question number ' || n || '"}}',
    'the answer to ' || n || ' is ' || (n * 7),
    CASE WHEN n % 97 = 0 THEN '{_CREATED},"error":"RuntimeError: flaky"}}' ELSE '{_CREATED}}}' END,
    0
FROM s JOIN flows f ON f.path = 'bench/flow' || ((n / 10) % {FLOWS})
JOIN versions v ON v.flow_ref = f.seq
"""
_RECOUNT = [
    "UPDATE flows SET log_count = (SELECT count(*) FROM logs l WHERE l.flow_ref = flows.seq),"
    " root_count = (SELECT count(*) FROM logs l WHERE l.flow_ref = flows.seq"
    " AND l.parent_seq IS NULL),"
    " error_count = (SELECT count(*) FROM logs l WHERE l.flow_ref = flows.seq AND has_error = 1)",
    "UPDATE versions SET log_count ="
    " (SELECT count(*) FROM logs l WHERE l.version_ref = versions.seq)",
]


def _bulk_fill(target: str, count: int) -> None:
    """`count` logs shaped as `_operations` makes them (traces of 10 over 20 flows), the first
    traces through the rules (they create the flows and versions), the rest by one INSERT per
    100k rows, then the counters recounted: reads then see what the rules would have made."""
    seed = FLOWS * TRACE
    with Store(target) as store:
        for ops in _batches("seed", seed):
            assert all(r.status == 200 for r in store.batch(ops))
    statements = [
        _BULK_INSERT.replace("@FIRST@", str(first)).replace(
            "@LAST@", str(min(first + 100_000, count) - 1)
        )
        for first in range(seed, count, 100_000)
    ]
    if target.startswith("postgresql:"):
        import psycopg

        with psycopg.connect(target) as conn:
            for statement in statements:
                conn.execute(statement.replace("@DIGEST@", "'\\x00'::bytea"))
            for statement in _RECOUNT:
                conn.execute(statement)
            conn.execute("ANALYZE")
    else:
        import sqlite3

        with sqlite3.connect(target) as conn:
            for statement in statements:
                conn.execute(statement.replace("@DIGEST@", "x'00'"))
            for statement in _RECOUNT:
                conn.execute(statement)
            conn.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=100_000, help="logs per ingest run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument(
        "--reads-only", action="store_true", help="reuse DIR/big.db from an earlier run"
    )
    parser.add_argument(
        "--backends", default="sqlite", help="comma-separated: sqlite, postgres (issue 12)"
    )
    parser.add_argument(
        "--search-index",
        action="store_true",
        help="PostgreSQL: each figure with and without the pg_trgm search indexes, same run",
    )
    parser.add_argument(
        "--bulk-fill",
        action="store_true",
        help="fill the big database by SQL (same shape), not through the rules: minutes less",
    )
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="flowtrace-bench-"))
    backends = args.backends.split(",")
    if "postgres" not in backends:
        _run("sqlite", lambda name: str(folder / f"{name}.db"), args)
        return
    from tests.pgutil import running_cluster

    with running_cluster(durable=True) as cluster:
        for backend in backends:
            new_target = (
                (lambda name: cluster.new_schema())
                if backend == "postgres"
                else (lambda name: str(folder / f"{name}.db"))
            )
            _run(backend, new_target, args)


def _run(backend: str, new_target: Callable[[str], str], args: argparse.Namespace) -> None:
    print(f"--- {backend}", flush=True)
    big = new_target("big")
    compare = args.search_index and backend == "postgres"
    if not args.reads_only:
        if compare:
            _ingest_with_and_without_index(new_target, args)
        _write_figures(new_target, big, args, search_index=not compare)
    if compare:
        _explain_list_flows(big)
        set_search_index(big, False)
        print("search indexes: none (ILIKE scans)")
        _read_figures(big)
        began = time.perf_counter()
        set_search_index(big, True)
        print(f"search indexes built in {time.perf_counter() - began:.0f} s")
        print(_search_index_size(big))
        _read_figures(big, searches_only=True)
    else:
        _read_figures(big)


# pg_trgm's GIN indexes on the searched columns (`ILIKE` uses them): measured, not adopted
SEARCH_INDEXES = {"logs_inputs_trgm": "inputs", "logs_output_trgm": "output"}
_TRIGRAM_SCHEMA = (
    "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
    " WHERE e.extname = 'pg_trgm'"
)


def set_search_index(url: str, present: bool) -> None:
    """Build (or drop) the pg_trgm indexes in the URL's schema; the extension is the
    database's, in whichever schema created it first (its operator class named there)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for name in SEARCH_INDEXES:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        if not present:
            return
        if conn.execute(_TRIGRAM_SCHEMA).fetchone() is None:
            conn.execute("CREATE EXTENSION pg_trgm")
        found = conn.execute(_TRIGRAM_SCHEMA).fetchone()
        assert found is not None
        for name, column in SEARCH_INDEXES.items():
            conn.execute(
                sql.SQL("CREATE INDEX {} ON logs USING gin ({} {}.gin_trgm_ops)").format(
                    sql.Identifier(name), sql.Identifier(column), sql.Identifier(found[0])
                )
            )
        conn.execute("ANALYZE logs")


def _search_index_size(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        sizes = conn.execute(
            "SELECT pg_table_size('logs'), pg_indexes_size('logs'),"
            " pg_relation_size('logs_inputs_trgm') + pg_relation_size('logs_output_trgm')"
        ).fetchone()
    assert sizes is not None
    table, indexes, trigram = (size / 1e6 for size in sizes)
    return f"logs table {table:,.0f} MB, its indexes {indexes:,.0f} MB, pg_trgm's {trigram:,.0f} MB"


def _postgres_cpu_s() -> float:
    from bench.server_bench import _cpu_s

    found = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True)
    return _cpu_s([int(pid) for pid in found.stdout.split()])


def _ingest_with_and_without_index(
    new_target: Callable[[str], str], args: argparse.Namespace
) -> None:
    """Store.batch ingest into a fresh schema, alternately with the pg_trgm indexes and
    without, `--runs` of each: logs/s and CPU per log (this process's, PostgreSQL's)."""
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for run in range(args.runs):
        for indexed in (False, True):
            target = new_target(f"ingest{run}")
            with Store(target) as store:
                set_search_index(target, indexed)
                before = _postgres_cpu_s()
                rate, cpu_rate = _ingest(store, "r", args.ingest)
                pg_us = (_postgres_cpu_s() - before) / args.ingest * 1e6
            figures[indexed].append((rate, 1e6 / cpu_rate, pg_us))
            print(
                f"ingest run {run}, {'pg_trgm' if indexed else 'plain'}: {rate:,.0f} logs/s,"
                f" client {1e6 / cpu_rate:.0f} us/log, PostgreSQL {pg_us:.0f} us/log",
                flush=True,
            )
    plain_rate = statistics.median(r for r, _, _ in figures[False])
    for indexed, runs in figures.items():
        rate = statistics.median(r for r, _, _ in runs)
        print(
            f"ingest median, {'pg_trgm' if indexed else 'plain'}: {rate:,.0f} logs/s"
            f" ({rate / plain_rate:.2f}x plain), client"
            f" {statistics.median(c for _, c, _ in runs):.0f} us/log, PostgreSQL"
            f" {statistics.median(p for _, _, p in runs):.0f} us/log"
        )
    print(f"load average: {os.getloadavg()}")


def _explain_list_flows(url: str) -> None:
    """What PostgreSQL does for `list_flows` (issue 12 measured it at 59.5 ms): the plan."""
    import psycopg

    from flowtrace.store._records import flow_stats_sql

    with psycopg.connect(url, autocommit=True) as conn:
        for (line,) in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + flow_stats_sql()):
            print(f"  {line}")


def _write_figures(
    new_target: Callable[[str], str], big: str, args: argparse.Namespace, search_index: bool
) -> None:
    rates, cpu_rates = [], []
    for run in range(args.runs if search_index else 0):
        with Store(new_target(f"ingest{run}")) as store:
            rate, cpu_rate = _ingest(store, "r", args.ingest)
        rates.append(rate)
        cpu_rates.append(cpu_rate)
        print(f"ingest run {run}: {rate:,.0f} logs/s, {cpu_rate:,.0f} logs/CPU-s", flush=True)
    if rates:
        print(
            f"ingest median: {statistics.median(rates):,.0f} logs/s,"
            f" {statistics.median(cpu_rates):,.0f} logs/CPU-s ({args.ingest:,} logs/run)"
        )
        print(f"load average: {os.getloadavg()}")

    began = time.perf_counter()
    if args.bulk_fill:
        _bulk_fill(big, args.logs - BIG_TRACE)
    with Store(big) as store:
        if not args.bulk_fill:
            _ingest(store, "bulk", args.logs - BIG_TRACE)
        _big_trace(store)
    how = "by SQL" if args.bulk_fill else "through Store.batch"
    print(f"filled {args.logs:,} logs {how} in {time.perf_counter() - began:.0f} s")
    if not big.startswith("postgresql:"):
        size_mb = sum(p.stat().st_size for p in Path(big).parent.glob("big.db*")) / 1e6
        print(f"database size: {size_mb:,.0f} MB")


def _select_one(store: Store) -> object:
    with store._db.reading() as db:
        return db.row("SELECT 1")


def _read_figures(path: str, searches_only: bool = False) -> None:
    root = "big-trace"
    with Store(path) as store:  # a fresh process-like open: cold connection caches
        flow_id = next(f.id for f in store.list_flows() if f.path == "bench/flow3")
        trace = store.get_log(root)
        assert len(trace.trace_children) == 9
        assert sum(len(c.trace_children) for c in trace.trace_children) == BIG_TRACE - 10
        reads: dict[str, Callable[[], object]] = {
            f"get_log: one {BIG_TRACE}-log trace": lambda: store.get_log(root),
            "list_logs page 1 (all logs)": lambda: store.list_logs(),
            "list_logs page 1 (file_id)": lambda: store.list_logs(ListQuery(file_id=flow_id)),
            "list_logs page 1 (roots_only)": lambda: store.list_logs(ListQuery(roots_only=True)),
            "list_logs page 100 (file_id)": lambda: store.list_logs(
                ListQuery(file_id=flow_id, page=100)
            ),
            "list_logs errors_only (file_id)": lambda: store.list_logs(
                ListQuery(file_id=flow_id, errors_only=True)
            ),
            "list_logs search, rare word, all logs": lambda: store.list_logs(
                ListQuery(search="answer to 123457 ")
            ),
            "list_logs search, common word, all logs": lambda: store.list_logs(
                ListQuery(search="answer")
            ),
            "list_logs search, rare word in one flow": lambda: store.list_logs(
                ListQuery(file_id=flow_id, search="answer to 123457 ")
            ),
            "list_logs search, common word in one flow": lambda: store.list_logs(
                ListQuery(file_id=flow_id, search="answer")
            ),
            "search, common word, no total (count_total=False)": lambda: store.list_logs(
                ListQuery(search="answer", count_total=False)
            ),
            "search, rare word, no total": lambda: store.list_logs(
                ListQuery(search="answer to 123457 ", count_total=False)
            ),
            "search, rare word, the viewer's (roots, no total, window 100,000)": lambda: (
                store.list_logs(
                    ListQuery(
                        search="answer to 123457 ",
                        roots_only=True,
                        count_total=False,
                        search_window=100_000,
                    )
                )
            ),
            "list_flows": store.list_flows,
            # a read's own cost (PostgreSQL: BEGIN, the query, COMMIT; list_flows: 4 round trips)
            "a read of SELECT 1": lambda: _select_one(store),
        }
        for name, action in reads.items():
            if searches_only and "search" not in name and "flows" not in name:
                continue
            print(f"{name}: {_median_ms(action):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
