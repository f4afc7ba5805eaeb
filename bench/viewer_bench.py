"""Viewer benchmark (run by hand): page times over a large database, through the viewer's
real routes (FastAPI TestClient, no network). Usage:

    PYTHONPATH=src python bench/viewer_bench.py DB [--runs 7]

DB: a database filled by `bench/store_bench.py` (its `big.db`: 1,000,000 logs in traces of
10, 20 flows, 1 in 97 with an error, roots left incomplete). Opening it migrates it to this
code's schema, so give it a copy. Prints the median of several requests after one warm-up.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import time
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI
from fastapi.testclient import TestClient

import flowtrace.store
from flowtrace.server.viewer._routes import PAGE_SIZE, mount_viewer
from flowtrace.store import Store

RARE = "answer to 123457 "  # in one child's output: every root is scanned, none matches


def _median_ms(client: TestClient, path: str, runs: int) -> tuple[float, int]:
    response = client.get(path)  # warm-up
    assert response.status_code == 200, (path, response.status_code)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), response.text.count('class="log-id"')


def _deepest_cursor(path: Path, flow_ref: int | None, rows: int) -> str:
    """The id of the last log shown on the page before the list's last page."""
    where = "flow_ref = ?" if flow_ref is not None else "parent_seq IS NULL"
    params = [flow_ref] if flow_ref is not None else []
    last_page = (rows - 1) // PAGE_SIZE + 1
    with sqlite3.connect(path) as conn:
        row = conn.execute(
            f"SELECT id FROM logs WHERE {where} ORDER BY start_us DESC, seq DESC LIMIT 1 OFFSET ?",
            [*params, (last_page - 1) * PAGE_SIZE - 1],
        ).fetchone()
    return str(row[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    began = time.perf_counter()
    store = Store(args.db)
    print(f"open (and migrate): {time.perf_counter() - began:.1f} s")
    app = FastAPI()
    mount_viewer(app, store)
    client = TestClient(app)
    flow = next(f for f in store.list_flows() if f.path == "bench/flow3")
    with sqlite3.connect(args.db) as conn:
        flow_ref = conn.execute("SELECT seq FROM flows WHERE id = ?", (flow.id,)).fetchone()[0]
        roots = conn.execute("SELECT sum(root_count) FROM flows").fetchone()[0]
    traces_last = (roots - 1) // PAGE_SIZE + 1
    flow_last = (flow.log_count - 1) // PAGE_SIZE + 1

    def logs(**params: object) -> str:
        return "/logs?" + urlencode(params) if params else "/logs"

    pages = {
        "/ (flows)": "/",
        "/logs (traces, all flows)": logs(),
        "/logs?flow= (one flow's logs)": logs(flow=flow.id),
        "/traces/big-trace (1,000 logs)": "/traces/big-trace",
        "/logs?errors=1": logs(errors=1),
        "/logs?flow=&errors=1": logs(flow=flow.id, errors=1),
        "/logs?status=complete": logs(status="complete"),
        "/logs?status=incomplete": logs(status="incomplete"),
        "/logs?flow=&status=incomplete": logs(flow=flow.id, status="incomplete"),
        f"/logs?page={traces_last} (last page of traces)": logs(page=traces_last),
        f"/logs?flow=&page={flow_last} (last page of a flow)": logs(flow=flow.id, page=flow_last),
        "/logs?search= rare (no match)": logs(search=RARE),
        "/logs?search=answer (common)": logs(search="answer"),
        "/logs?flow=&search= rare": logs(flow=flow.id, search=RARE),
    }
    if hasattr(flowtrace.store, "LogPage"):  # the viewer with keyset "older" links
        pages["/logs?before= (last page of traces, by cursor)"] = logs(
            before=_deepest_cursor(args.db, None, roots)
        )
        pages["/logs?flow=&before= (last page of a flow, by cursor)"] = logs(
            flow=flow.id, before=_deepest_cursor(args.db, flow_ref, flow.log_count)
        )
    for name, path in pages.items():
        ms, rows = _median_ms(client, path, args.runs)
        print(f"{name}: {ms:,.1f} ms ({rows} rows)", flush=True)
    store.close()


if __name__ == "__main__":
    main()
