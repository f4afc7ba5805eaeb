"""The `flowtrace` command, run as a subprocess (`python -m flowtrace`) on real databases."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flowtrace.store import ListQuery, Store
from tests.viewerdata import HOSTILE_STDOUT, TRACEBACK, Sample, populate

SRC = Path(__file__).resolve().parents[1] / "src"
STARTUP_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 60.0


def run_cli(
    *args: str, cwd: Path | None = None, db_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("FLOWTRACE_DB_PATH", None)
    if db_env is not None:
        env["FLOWTRACE_DB_PATH"] = db_env
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run(
        [sys.executable, "-m", "flowtrace", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def database(tmp_path: Path) -> tuple[Path, Sample]:
    path = tmp_path / "traces.db"
    with Store(path) as store:
        sample = populate(store)
    return path, sample


@pytest.mark.parametrize("command", [[], ["logs"], ["show"], ["serve"], ["ui"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: flowtrace")


def test_no_command_prints_usage() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: flowtrace" in result.stderr


@pytest.mark.parametrize("command", [["logs"], ["show", "log_x"], ["ui", "--port", "0"]])
def test_a_missing_database_is_an_error_and_stays_missing(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "nothing-here.db"
    result = run_cli(*command, "--db", str(missing))
    assert result.returncode == 1
    assert result.stderr == f"flowtrace: no flowtrace database at {missing}\n"
    assert not missing.exists()


def test_the_default_database_is_found_through_the_environment(tmp_path: Path) -> None:
    result = run_cli("logs", cwd=tmp_path)
    assert result.returncode == 1
    assert "no flowtrace database at .flowtrace/flowtrace.db" in result.stderr
    assert not (tmp_path / ".flowtrace").exists()
    env_result = run_cli("logs", cwd=tmp_path, db_env=str(tmp_path / "env.db"))
    assert str(tmp_path / "env.db") in env_result.stderr


def test_ui_listens_on_loopback_only(tmp_path: Path) -> None:
    result = run_cli("ui", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db"))
    assert result.returncode == 1
    assert "loopback" in result.stderr


def test_logs_table_lists_traces_newest_first(database: tuple[Path, Sample]) -> None:
    path, sample = database
    result = run_cli("logs", "--db", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "FLOW", "STATUS", "DURATION", "START", "ERROR"]
    assert [line.split()[0] for line in lines[1:]] == [sample.hostile, sample.root]
    assert "1.20 s" in lines[2]


def test_logs_filters_by_flow_errors_and_limit(database: tuple[Path, Sample]) -> None:
    path, sample = database
    of_flow = run_cli("logs", "--db", str(path), "--flow", "llm/call")
    assert [line.split()[0] for line in of_flow.stdout.splitlines()[1:]] == [sample.failing]
    assert "ValueError: model refused" in of_flow.stdout
    errors = run_cli("logs", "--db", str(path), "--errors")
    assert [line.split()[0] for line in errors.stdout.splitlines()[1:]] == [sample.hostile]
    limited = run_cli("logs", "--db", str(path), "--limit", "1")
    assert len(limited.stdout.splitlines()) == 2
    unknown = run_cli("logs", "--db", str(path), "--flow", "no/such")
    assert unknown.returncode == 1
    assert unknown.stderr == "flowtrace: no flow with path 'no/such'\n"
    bad_limit = run_cli("logs", "--db", str(path), "--limit", "0")
    assert bad_limit.returncode == 2


def test_show_draws_the_trace(database: tuple[Path, Sample]) -> None:
    path, sample = database
    result = run_cli("show", sample.search, "--db", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("support/answer  ✓ complete  1.20 s")
    assert any(line.startswith("├── tools/search") and line.endswith("◀") for line in lines)
    assert any(line.startswith("└── llm/call  ✗ error  700 ms") for line in lines)
    assert "│         │ searching docs" in result.stdout
    assert "        error: ValueError: model refused" in result.stdout
    for traceback_line in TRACEBACK.splitlines():
        assert traceback_line in result.stdout


def test_show_keeps_hostile_text_inert(database: tuple[Path, Sample]) -> None:
    path, sample = database
    result = run_cli("show", sample.hostile, "--db", str(path))
    assert result.returncode == 0
    assert HOSTILE_STDOUT in result.stdout  # plain text is shown as it is


def test_show_last_draws_the_newest_trace(database: tuple[Path, Sample], tmp_path: Path) -> None:
    path, _ = database
    with Store(path) as store:
        newest = store.list_logs(ListQuery(roots_only=True, size=1)).records[0].id
    result = run_cli("show", "last", "--db", str(path))
    assert result.returncode == 0, result.stderr
    assert f"[{newest}]" in result.stdout.splitlines()[0]
    Store(tmp_path / "empty.db").close()
    empty = run_cli("show", "last", "--db", str(tmp_path / "empty.db"))
    assert (empty.returncode, empty.stderr) == (1, "flowtrace: the database holds no logs yet\n")


def test_show_an_unknown_id_is_an_error(database: tuple[Path, Sample]) -> None:
    path, _ = database
    result = run_cli("show", "no-such-log", "--db", str(path))
    assert result.returncode == 1
    assert result.stderr == "flowtrace: no log with id 'no-such-log'\n"


def test_ui_serves_the_viewer_over_the_database(database: tuple[Path, Sample]) -> None:
    path, sample = database
    env = dict(os.environ, PYTHONPATH=str(SRC))
    process = subprocess.Popen(
        [sys.executable, "-m", "flowtrace", "ui", "--port", "0", "--db", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = read_viewer_url(process)
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(url + f"traces/{sample.root}", timeout=30)
        assert page.status_code == 200
        assert "support/answer" in page.text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=COMMAND_TIMEOUT_S) == 0
        assert process.stdout is not None
        process.stdout.close()


def read_viewer_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], remaining)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"flowtrace ui exited with {process.wait()} before serving")
        if found := re.search(r"flowtrace viewer on (http://\S+/) ", line):
            return found.group(1)
    raise TimeoutError("flowtrace ui did not start")
