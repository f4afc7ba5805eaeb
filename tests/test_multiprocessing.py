"""Logs recorded in multiprocessing children are stored (issue 9, item 4): children end with
`os._exit()` after multiprocessing's own exit function, so atexit never runs in them; the
pipeline shuts down in multiprocessing's finalizers instead. Real processes, every start
method, the embedded store."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from flowtrace.store import Store
from tests.scriptutil import run_script, script_env

SCRIPT = """
import concurrent.futures
import multiprocessing
import sys

from flowtrace import flow


@flow(path="mp/task")
def task(i):
    with flow("mp/step", inputs={"i": i}):
        return i * 2


def many(n):
    return [task(i) for i in range(n)]


def main(kind, method):
    context = multiprocessing.get_context(method)
    if kind == "process":
        processes = [context.Process(target=many, args=(5,)) for _ in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
            assert process.exitcode == 0
    elif kind == "pool":
        pool = context.Pool(2)
        assert pool.map(task, range(10)) == [i * 2 for i in range(10)]
        pool.close()
        pool.join()
    else:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            assert list(executor.map(task, range(10))) == [i * 2 for i in range(10)]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
"""

CASES = [
    pytest.param("process", "fork", id="Process-fork"),
    pytest.param("pool", "fork", id="Pool-fork"),
    pytest.param("pool", "spawn", id="Pool-spawn"),
    pytest.param("process", "forkserver", id="Process-forkserver"),
    pytest.param("pool", "forkserver", id="Pool-forkserver"),
    pytest.param("executor", "fork", id="ProcessPoolExecutor-fork"),
    pytest.param("executor", "spawn", id="ProcessPoolExecutor-spawn"),
]


@pytest.mark.parametrize(("kind", "method"), CASES)
def test_every_log_of_a_multiprocessing_child_is_stored(
    kind: str, method: str, tmp_path: Path
) -> None:
    script = tmp_path / "children.py"  # a file: spawn and forkserver import the main module
    script.write_text(textwrap.dedent(SCRIPT))
    db = tmp_path / "flowtrace.db"
    done = run_script(
        f"import runpy, sys; sys.argv = [{str(script)!r}] + sys.argv[1:];"
        f" runpy.run_path({str(script)!r}, run_name='__main__')",
        script_env(db_path=db),
        kind,
        method,
    )
    assert done.returncode == 0, done.stderr
    assert "flowtrace" not in done.stderr, done.stderr  # nothing dropped, nothing to say
    with Store(db) as store:
        counts = {f.path: f.log_count for f in store.list_flows()}
    assert counts == {"mp/task": 10, "mp/step": 10}
