"""The spool file (`_spool`): order, ownership across processes, bounds, and every way the disk can
fail: real SQLite files, real processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flowtrace._spool import Spool, SpoolFull, SpoolItem, SpoolUnavailable, spool_path
from tests.scriptutil import read_line

SRC = Path(__file__).resolve().parents[1] / "src"
MiB = 1024 * 1024


def items(count: int, prefix: str = "log", size: int = 10) -> list[SpoolItem]:
    return [
        SpoolItem(f"{prefix}_{i}", "log", True, {"log_id": f"{prefix}_{i}", "x": "y" * size}, {}, i)
        for i in range(count)
    ]


def spool_at(path: Path, **options: object) -> Spool:
    kwargs: dict[str, object] = {"max_bytes": 64 * MiB, "max_age_s": 3600.0}
    kwargs.update(options)
    return Spool(path, "memory:test", **kwargs)  # type: ignore[arg-type]


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


SPOOL_IN_CHILD = """
    import sys
    from pathlib import Path
    from flowtrace._spool import Spool, SpoolItem
    spool = Spool(Path(sys.argv[1]), "memory:test", max_bytes=1 << 30, max_age_s=3600)
    count = int(sys.argv[2])
    spool.append([SpoolItem(f"dead_{i}", "log", True, {"i": i}, {}, i) for i in range(count)])
    # the process ends without releasing anything: its owner row names a dead process
"""


def test_entries_come_back_in_order_with_their_bodies_and_go_when_acked(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "a.spool")
    first = spool.append(items(3))
    second = spool.append([SpoolItem("log_x", "update", False, {"output": "é", "n": 1.5}, {}, 7)])
    assert first + second == sorted(first + second)
    head = spool.head(10)
    assert [entry.item.log_id for entry in head] == ["log_0", "log_1", "log_2", "log_x"]
    assert head[3].item == SpoolItem("log_x", "update", False, {"output": "é", "n": 1.5}, {}, 7)
    assert head[0].item.parent_id is None
    spool.ack([head[0].id, head[1].id])
    assert [entry.item.log_id for entry in spool.head(10)] == ["log_2", "log_x"]
    assert spool.counts() | {"bytes": 0} == {
        "entries": 2,
        "logs": 1,
        "own_entries": 2,
        "own_logs": 1,
        "bytes": 0,
    }


def test_the_file_and_its_wal_are_private_and_a_new_directory_too(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "new" / "dir" / "a.spool")
    spool.append(items(1))
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(os.stat(str(spool.path) + suffix).st_mode)
        assert mode == 0o600, (suffix, oct(mode))
    assert stat.S_IMODE(os.stat(spool.path.parent).st_mode) == 0o700


def test_a_dead_process_s_backlog_is_claimed_once_and_a_live_one_s_never(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    run(SPOOL_IN_CHILD, str(path), "3")
    live = spool_at(path)  # this process: alive
    live.append(items(2, "live"))
    claimer = spool_at(path)
    assert claimer.claim_dead() == (3, 3)
    assert [e.item.log_id for e in claimer.head(10, backlog=True)] == ["dead_0", "dead_1", "dead_2"]
    assert claimer.head(10) == []  # none of its own
    assert spool_at(path).claim_dead() == (0, 0)  # taken already: never two
    assert [e.item.log_id for e in live.head(10)] == ["live_0", "live_1"]


def test_two_processes_claiming_at_once_share_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    run(SPOOL_IN_CHILD, str(path), "200")
    claim = """
        import sys, json
        from pathlib import Path
        from flowtrace._spool import Spool
        spool = Spool(Path(sys.argv[1]), "memory:test", max_bytes=1 << 30, max_age_s=3600)
        held, _ = spool.claim_dead()
        print(json.dumps([e.item.log_id for e in spool.head(1000, backlog=True)]), flush=True)
        sys.stdin.read()  # alive (its claim stands) until every claimer has claimed
    """
    code = textwrap.dedent(claim)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    claimed = [json.loads(read_line(claimer)) for claimer in claimers]
    for claimer in claimers:
        claimer.communicate(timeout=60)
    assert sorted(len(ids) for ids in claimed) == [0, 0, 200]
    assert sorted(max(claimed, key=len)) == sorted(f"dead_{i}" for i in range(200))


def test_the_spool_takes_what_fits_in_its_size_bound_and_nothing_more(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "a.spool", max_bytes=200 * 1024)
    assert len(spool.append(items(10, size=1000))) == 10
    taken = spool.append(items(300, prefix="more", size=1000))
    assert 0 < len(taken) < 300  # the first ones, as many as fit
    assert [e.item.log_id for e in spool.head(500)][-len(taken) :] == [
        f"more_{i}" for i in range(len(taken))
    ]
    with pytest.raises(SpoolFull):
        spool.append(items(1, prefix="last", size=1000))


def test_entries_older_than_the_age_bound_expire(tmp_path: Path) -> None:
    now = [1_000_000_000]
    spool = spool_at(tmp_path / "a.spool", max_age_s=60.0, wall_us=lambda: now[0])
    spool.append(items(2, "old"))
    now[0] += 61_000_000
    spool.append(items(1, "new"))
    expired = spool.expire()
    assert [entry.item.log_id for entry in expired] == ["old_0", "old_1"]
    assert [entry.item.log_id for entry in spool.head(10)] == ["new_0"]


def test_a_corrupt_file_is_set_aside_and_a_fresh_spool_started(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    path.write_bytes(b"this is not a database, it is a plain file" * 100)
    spool = spool_at(path)
    spool.append(items(1))
    assert [entry.item.log_id for entry in spool.head(10)] == ["log_0"]
    (aside,) = spool.set_aside
    assert aside.name.startswith("a.spool.corrupt-")
    assert aside.read_bytes().startswith(b"this is not a database")


def test_a_spool_of_another_format_is_set_aside_not_misread(tmp_path: Path) -> None:
    path = tmp_path / "a.spool"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    spool = spool_at(path)
    spool.append(items(1))
    assert len(spool.set_aside) == 1


def test_a_full_disk_makes_the_spool_unavailable(tmp_path: Path) -> None:
    spool = spool_at(tmp_path / "a.spool")
    spool.append(items(1))
    assert spool._conn is not None
    # SQLite's own bound on the file: writes past it fail as on a full disk (SQLITE_FULL).
    pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]
    spool._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(SpoolUnavailable, match="full"):
        spool.append(items(500, prefix="big", size=2000))
    assert [entry.item.log_id for entry in spool.head(10)] == ["log_0"]


def test_a_directory_that_cannot_be_created_makes_the_spool_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = spool_at(blocker / "spool" / "a.spool")
    with pytest.raises(SpoolUnavailable, match="cannot create the spool"):
        spool.append(items(1))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_makes_the_spool_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(SpoolUnavailable):
            spool_at(directory / "a.spool").append(items(1))
    finally:
        directory.chmod(0o700)


def test_spools_are_named_by_destination(tmp_path: Path) -> None:
    a = spool_path("http:http://a/v5;key=none", str(tmp_path))
    b = spool_path("http:http://b/v5;key=none", str(tmp_path))
    assert a.parent == b.parent == tmp_path
    assert a != b
    assert spool_path("store:/x/y.db", None, "/x/y.db") == Path("/x/y.db.spool")
