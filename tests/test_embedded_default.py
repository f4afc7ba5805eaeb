"""The embedded default: with no endpoint configured, recorded logs land in the SQLite store,
also when several processes write the same file at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from flowtrace.exporters.store import StoreExporter
from flowtrace.store import ListQuery, Store

SRC = Path(__file__).resolve().parents[1] / "src"

WRITER = textwrap.dedent(
    """
    import sys
    import flowtrace
    from flowtrace import flow

    @flow(path="embedded/child")
    def child(writer: str, trace: int, i: int) -> str:
        return f"{writer}-{trace}-{i}"

    @flow(path="embedded/root")
    def root(writer: str, trace: int) -> list[str]:
        print(f"trace {trace}")
        return [child(writer, trace, i) for i in range(2)]

    writer = sys.argv[1]
    for trace in range(int(sys.argv[2])):
        root(writer, trace)
    # no flush: the exit handler delivers what is left
    """
)


def _run_writers(db: Path, writers: int, traces: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["FLOWTRACE_DB_PATH"] = str(db)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"w{n}", str(traces)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert "flowtrace" not in stderr, stderr  # no warnings: nothing dropped, no errors


def test_two_processes_write_one_database_through_the_embedded_default(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "flowtrace.db"  # the directory is created on first write
    _run_writers(db, writers=2, traces=300)
    with Store(db) as store:
        flows = {flow.path: flow for flow in store.list_flows()}
        assert flows["embedded/root"].log_count == 600
        assert flows["embedded/child"].log_count == 1200
        roots = store.list_logs(ListQuery(file_id=flows["embedded/root"].id, size=100, page=1))
        assert roots.total == 600
        seen: set[tuple[str, int]] = set()
        for page in range(1, 7):
            for record in store.list_logs(
                ListQuery(file_id=flows["embedded/root"].id, size=100, page=page)
            ).records:
                assert record.inputs is not None
                key = (record.inputs["writer"], record.inputs["trace"])
                assert key not in seen  # none doubled
                seen.add(key)
                trace = store.get_log(record.id)
                assert trace.trace_status == "complete"
                assert trace.stdout == f"trace {key[1]}\n"
                assert [c.output for c in trace.trace_children] == [
                    f"{key[0]}-{key[1]}-{i}" for i in range(2)
                ]
        assert len(seen) == 600  # none lost


def test_the_embedded_destination_keeps_a_small_page_cache_and_maps_nothing(
    tmp_path: Path,
) -> None:
    """Inside the user's program the store writes; a server's 64 MiB cache and 256 MiB memory
    map would grow the program's RSS with the file (a million logs: ~180 MiB)."""
    exporter = StoreExporter(tmp_path / "embedded.db")
    assert exporter.export([]) == []  # opens the store, as the warm-up does
    with Store(tmp_path / "embedded.db") as reading:
        for store, cache_kib, mapped in ((exporter._open(), 8192, 0), (reading, 65536, 2**28)):
            connection = store._db._writer  # type: ignore[attr-defined]
            assert connection.execute("PRAGMA cache_size").fetchone() == (-cache_kib,)
            assert connection.execute("PRAGMA mmap_size").fetchone() == (mapped,)
    exporter.close()
