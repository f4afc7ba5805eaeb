"""The OTLP export's spool: spans an OTLP endpoint did not take within the retry deadline, or
that were left at exit, wait on disk (real spool files) and reach the endpoint once it is back,
in this process or the next one (real processes), each exactly once, decoded on the other
side with opentelemetry-proto."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import flowtrace
from flowtrace import _op_taps, _otlp_export, _w3c
from flowtrace._config import Settings, get_settings
from flowtrace._otlp_spool import spool_file, spool_key
from flowtrace._spool import Spool, SpoolItem
from flowtrace.store import Store
from tests.otlp_receiver import Receiver, attributes_of
from tests.pipelineutil import FAST, WAIT_S, fresh_pipeline, wait_until
from tests.scriptutil import run_script, script_env

#: Spans the endpoint did not take within 0.05 s go to disk (short, for the tests).
SHORT_DEADLINE = {"retry_deadline_s": 0.05, "retry_backoff_s": 0.01}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def otlp_stats() -> dict[str, object]:
    stats = _otlp_export.stats()
    assert stats is not None
    return stats


def spooled_payloads(path: Path) -> list[bytes]:
    """The request bodies a spool file holds (every owner's), as they will be posted."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT body FROM entries ORDER BY id").fetchall()
    return [base64.b64decode(json.loads(body)["payload"]) for (body,) in rows]


def spooled_span_names(path: Path) -> list[str]:
    """The spans a spool file holds, decoded with opentelemetry-proto."""
    names = []
    for payload in spooled_payloads(path):
        request = ExportTraceServiceRequest.FromString(gzip.decompress(payload))
        names += [s.name for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    return names


def test_an_outage_past_the_retry_deadline_is_spooled_and_sent_once_it_is_back(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.down = True
    ids: dict[str, str] = {}
    with fresh_pipeline(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE):
        with flowtrace.flow("otlp-spool/root") as root, flowtrace.flow("otlp-spool/child") as kid:
            ids.update(root=root.log_id, child=kid.log_id)
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        first = otlp_stats()
        # the endpoint is down now: a new batch goes to disk at once, behind the first
        with flowtrace.flow("otlp-spool/while-down") as later:
            ids["later"] = later.log_id
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        during = otlp_stats()
        assert spool_file(spool_key(receiver.url, {}), str(tmp_path)).exists()
        receiver.down = False
        spans = receiver.wait_for(3)
        assert wait_until(lambda: otlp_stats()["spooled"] == 0)
        after = otlp_stats()
        main = flowtrace.stats()
    assert len(receiver.spans) == 3  # the export has stopped: nothing came twice
    assert (first["spooled"], first["exported"], first["dropped"]) == (2, 0, {})
    assert (during["spooled"], during["dropped"]) == (3, {})
    assert (after["exported"], after["spooled"], after["dropped"]) == (3, 0, {})
    # each span exactly once, with the ids and parentage of its log
    assert sorted(span.name for span in spans) == [
        "otlp-spool/child",
        "otlp-spool/root",
        "otlp-spool/while-down",
    ]
    by_name = {span.name: span for span in spans}
    for name, log_id in (("root", ids["root"]), ("child", ids["child"])):
        assert by_name[f"otlp-spool/{name}"].span_id == bytes.fromhex(_w3c.span_id_of(log_id))
    assert by_name["otlp-spool/child"].parent_span_id == by_name["otlp-spool/root"].span_id
    assert attributes_of(by_name["otlp-spool/while-down"])["flowtrace.log_id"] == ids["later"]
    # the main destination took every log at once, whatever the OTLP endpoint did
    assert main["sent"] == 3 and main["dropped"] == {}


def test_spooled_data_is_the_scrubbed_data(receiver: Receiver, tmp_path: Path) -> None:
    receiver.down = True
    secret = "sk-live-0123456789abcdefghijklmnopqrstuv"
    with fresh_pipeline(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE):
        with flowtrace.flow("otlp-spool/secret", inputs={"api_key": secret}):
            pass
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        assert otlp_stats()["spooled"] == 1
        path = spool_file(spool_key(receiver.url, {}), str(tmp_path))
        raw = b"".join(p.read_bytes() for p in tmp_path.glob(path.name + "*"))
    (payload,) = spooled_payloads(path)
    assert secret.encode() not in raw and secret.encode() not in gzip.decompress(payload)
    assert b"[scrubbed" in gzip.decompress(payload)


def test_two_endpoints_never_mix_and_an_endpoint_configured_again_gets_its_spans(
    tmp_path: Path,
) -> None:
    with Receiver() as x, Receiver() as y:
        x.down = True
        common = {**FAST, "spool_dir": str(tmp_path), **SHORT_DEADLINE}
        with fresh_pipeline(otlp_endpoint=x.url, **common):
            with flowtrace.flow("otlp-spool/for-x"):
                pass
            assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
            assert otlp_stats()["spooled"] == 1
            # the same process, another endpoint: X's spool is X's alone
            first_x = _otlp_export.current()
            flowtrace.configure(otlp_endpoint=y.url, **common)
            assert first_x is not None and first_x.shutdown(WAIT_S)  # stopped: it left X's spool
            x_file = spool_file(spool_key(x.url, {}), str(tmp_path))
            assert spooled_span_names(x_file) == ["otlp-spool/for-x"]
            with flowtrace.flow("otlp-spool/for-y"):
                pass
            assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
            y_stats = otlp_stats()
            # X again, back up: this process's new export of X sends what the first one left
            x.down = False
            flowtrace.configure(otlp_endpoint=x.url, **common)
            with flowtrace.flow("otlp-spool/for-x-again"):
                pass
            assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
            x_spans = x.wait_for(2)
            assert wait_until(lambda: otlp_stats()["backlog"] == 0)
            x_stats = otlp_stats()
        y_spans = y.wait_for(1)
    assert [span.name for span in y_spans] == ["otlp-spool/for-y"]
    assert sorted(span.name for span in x_spans) == ["otlp-spool/for-x", "otlp-spool/for-x-again"]
    assert (y_stats["exported"], y_stats["backlog"], y_stats["dropped"]) == (1, 0, {})
    assert (x_stats["exported"], x_stats["backlog_exported"], x_stats["dropped"]) == (1, 1, {})
    assert y_stats["spool"] != str(x_file) and spooled_payloads(x_file) == []
    # the same endpoint with another API key is another spool too (the key is not in its name)
    keyed = spool_key(x.url, {"authorization": "key-2"})
    assert keyed != spool_key(x.url, {"authorization": "key-1"}) and "key-2" not in keyed
    assert spool_file(keyed, str(tmp_path)) != x_file


@contextmanager
def tapped(export: _otlp_export.OtlpExport) -> Iterator[_otlp_export.OtlpExport]:
    _op_taps.add_tap(export.offer)
    try:
        yield export
    finally:
        _op_taps.remove_tap(export.offer)
        export.shutdown(5)


def test_spooled_spans_past_spool_max_age_are_dropped_and_counted(
    receiver: Receiver, tmp_path: Path
) -> None:
    settings = Settings(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE)
    receiver.down = True
    with tapped(_otlp_export.OtlpExport(receiver.url, {}, settings)) as first:
        with fresh_pipeline() as pipe:
            for name in ("otlp-spool/old-1", "otlp-spool/old-2"):
                with flowtrace.flow(name):
                    pass
            assert pipe.flush(WAIT_S) and first.flush(WAIT_S)
        assert first.stats()["spooled"] == 2
    receiver.down = False
    # a week and a day later (the spool's wall clock): the first owner is long silent (dead)
    # and what it left is past spool_max_age_s (7 days)
    later_us = time.time_ns() // 1000 + 8 * 24 * 3600 * 10**6
    second = _otlp_export.OtlpExport(receiver.url, {}, settings, spool_wall_us=lambda: later_us)
    with tapped(second), fresh_pipeline() as pipe:
        with flowtrace.flow("otlp-spool/new"):
            pass
        assert pipe.flush(WAIT_S) and second.flush(WAIT_S)
        stats = second.stats()
    assert [span.name for span in receiver.wait_for(1)] == ["otlp-spool/new"]
    assert stats["dropped"] == {"spool_expired": 2}
    assert (stats["backlog"], stats["backlog_exported"], stats["exported"]) == (0, 0, 1)


def test_a_long_outage_never_makes_the_live_owner_look_dead(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Each try of the disk's oldest batch says the owner is alive (at most every 30 s): a
    process still retrying is never taken for dead, so its batches are never sent twice."""
    settings = Settings(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE)
    wall = [time.time_ns() // 1000]
    receiver.down = True
    export = _otlp_export.OtlpExport(receiver.url, {}, settings, spool_wall_us=lambda: wall[0])
    with tapped(export), fresh_pipeline() as pipe:
        with flowtrace.flow("otlp-spool/patient"):
            pass
        assert pipe.flush(WAIT_S) and export.flush(WAIT_S)
        wall[0] += 20 * 60 * 10**6  # twenty minutes of outage (the spool's clock)
        tried = len(receiver.requests)
        assert wait_until(lambda: len(receiver.requests) > tried)  # a try from the disk
        path = spool_file(spool_key(receiver.url, {}), str(tmp_path))
        other = Spool(path, "other", max_bytes=1 << 30, max_age_s=1e9, wall_us=lambda: wall[0])
        try:
            claimed = other.claim_dead()
        finally:
            other.close()
        stats = export.stats()
    assert claimed == (0, 0)  # without the heartbeat, its silence (> STALE_S) would be death
    assert (stats["spooled"], stats["dropped"]) == (1, {})


def test_a_silent_owners_batches_are_claimed_sent_and_an_entry_not_a_batch_dropped(
    receiver: Receiver, tmp_path: Path
) -> None:
    settings = Settings(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE)
    receiver.down = True
    first = _otlp_export.OtlpExport(receiver.url, {}, settings)
    with tapped(first), fresh_pipeline() as pipe:
        with flowtrace.flow("otlp-spool/left-behind"):
            pass
        assert pipe.flush(WAIT_S) and first.flush(WAIT_S)
    path = spool_file(spool_key(receiver.url, {}), str(tmp_path))
    other = Spool(path, "other", max_bytes=1 << 30, max_age_s=1e9)
    other.append([SpoolItem("x", "otlp_batch", True, {"not": "a batch"}, {})])
    other.close()
    receiver.down = False
    # an hour later (the spool's clock): both owners have been silent past STALE_S: dead
    later_us = time.time_ns() // 1000 + 3600 * 10**6
    second = _otlp_export.OtlpExport(receiver.url, {}, settings, spool_wall_us=lambda: later_us)
    with tapped(second), fresh_pipeline() as pipe:
        with flowtrace.flow("otlp-spool/new"):
            pass
        assert pipe.flush(WAIT_S) and second.flush(WAIT_S)
        spans = receiver.wait_for(2)
        assert wait_until(lambda: second.stats()["backlog"] == 0)
        stats = second.stats()
    assert sorted(span.name for span in spans) == ["otlp-spool/left-behind", "otlp-spool/new"]
    assert (stats["backlog_exported"], stats["exported"]) == (1, 1)
    assert stats["dropped"] == {"spool_corrupt": 1}
    assert spooled_payloads(path) == []


def test_a_spool_file_that_is_not_a_spool_is_set_aside_and_a_fresh_one_takes_the_batch(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = spool_file(spool_key(receiver.url, {}), str(tmp_path))
    path.write_bytes(b"not a spool at all, " * 100)
    receiver.down = True
    with (
        fresh_pipeline(otlp_endpoint=receiver.url, spool_dir=str(tmp_path), **SHORT_DEADLINE),
        caplog.at_level(logging.WARNING),
    ):
        with flowtrace.flow("otlp-spool/after-garbage"):
            pass
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        stats = otlp_stats()
    (aside,) = tmp_path.glob(path.name + ".corrupt-*")
    assert aside.read_bytes().startswith(b"not a spool")
    assert [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()] == [
        f"flowtrace: the OTLP export's spool file was not a readable spool; it was set aside as "
        f"{aside} and a fresh spool started."
    ]
    assert (stats["spooled"], stats["dropped"]) == (1, {})
    assert spooled_span_names(path) == ["otlp-spool/after-garbage"]


@pytest.mark.parametrize("trouble", ["unusable_dir", "full"])
def test_a_spool_that_cannot_take_a_batch_drops_it_counts_and_warns_once(
    trouble: str, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if trouble == "unusable_dir":
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")  # a directory nobody can make (as a read-only or full disk)
        spool: dict[str, object] = {"spool_dir": str(not_a_dir / "spool")}
        reason, says = "spool_unavailable", "cannot create the spool"
    else:
        spool = {"spool_dir": str(tmp_path), "spool_max_mib": 0.001}  # less than an empty file
        reason, says = "spool_full", "holds 1048 bytes"
    receiver.down = True
    with (
        fresh_pipeline(otlp_endpoint=receiver.url, **spool, **SHORT_DEADLINE),
        caplog.at_level(logging.WARNING),
    ):
        for _ in range(2):
            with flowtrace.flow("otlp-spool/nowhere"):
                pass
            assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        stats = otlp_stats()
        main = flowtrace.stats()
    assert stats["dropped"] == {reason: 2} and stats["spooled"] == 0
    said = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(said) == 1 and says in said[0]
    assert main["sent"] == 2 and main["dropped"] == {}


def test_without_a_spool_a_batch_is_dropped_at_the_deadline_and_the_next_one_is_sent(
    receiver: Receiver,
) -> None:
    receiver.down = True
    with fresh_pipeline(otlp_endpoint=receiver.url, spool="off", **SHORT_DEADLINE):
        with flowtrace.flow("otlp-spool/lost"):
            pass
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        receiver.down = False
        with flowtrace.flow("otlp-spool/sent"):
            pass
        assert flowtrace.flush(WAIT_S) and _otlp_export.flush(WAIT_S)
        stats = otlp_stats()
    assert [span.name for span in receiver.wait_for(1)] == ["otlp-spool/sent"]
    assert stats["dropped"] == {"retry_deadline": 1} and stats["exported"] == 1
    assert stats["spool"] is None


# --- whole processes ---------------------------------------------------------------------------

#: Two logs, delivered to the main destination (the embedded store); one more left open at
#: exit. Prints the ids, then the time, and exits.
EXITING = """
import json, time
import flowtrace
with flowtrace.flow("otlp-spool/exit-root") as root, flowtrace.flow("otlp-spool/exit-child"):
    pass
assert flowtrace.flush(60)
left = flowtrace.flow("otlp-spool/left-open").__enter__()
print(json.dumps([root.log_id, left.log_id]))
print(time.monotonic(), flush=True)
"""

#: A later process of the same endpoint: one log; it waits until the backlog is sent.
NEXT = """
import json, time
import flowtrace
from flowtrace import _otlp_export
with flowtrace.flow("otlp-spool/next"):
    pass
assert flowtrace.flush(60) and _otlp_export.flush(60)  # its thread has claimed the backlog
deadline = time.monotonic() + 60
while _otlp_export.stats()["backlog"] and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps(_otlp_export.stats()))
"""


def exit_env(receiver: Receiver, tmp_path: Path) -> dict[str, str]:
    return script_env(
        otlp_endpoint=receiver.url,
        db_path=tmp_path / "main.db",
        spool_dir=tmp_path / "spool",
        exit_flush_timeout_s=0.5,
        first_batch_after_s=0.02,
        batch_interval_s=0.05,
        retry_backoff_s=0.02,
    )


def test_an_exit_while_the_endpoint_is_down_leaves_the_spans_for_the_next_process(
    receiver: Receiver, tmp_path: Path
) -> None:
    env = exit_env(receiver, tmp_path)
    receiver.down = True
    done = run_script(EXITING, env)
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    # The bound, and a margin for the teardown of an interpreter with OpenTelemetry loaded on
    # a busy machine (2.5 s was seen at load 8; well under 1 s quiet).
    assert exited - float(done.stdout.splitlines()[1]) < 0.5 + 3.0
    root_id, left_id = json.loads(done.stdout.splitlines()[0])
    assert (
        "3 span(s) not exported to the OTLP endpoint" in done.stderr and "spooled at" in done.stderr
    )
    assert receiver.spans == []
    receiver.down = False
    following = run_script(NEXT, env)
    assert following.returncode == 0, following.stderr
    stats = json.loads(following.stdout)
    spans = receiver.wait_for(4)
    assert sorted(span.name for span in spans) == [
        "otlp-spool/exit-child",
        "otlp-spool/exit-root",
        "otlp-spool/left-open",
        "otlp-spool/next",
    ]
    assert (stats["backlog_exported"], stats["exported"], stats["dropped"]) == (3, 1, {})
    by_name = {span.name: span for span in spans}
    left = attributes_of(by_name["otlp-spool/left-open"])
    assert left["flowtrace.log_id"] == left_id and left["flowtrace.trace_status"] == "incomplete"
    assert by_name["otlp-spool/exit-root"].span_id == bytes.fromhex(_w3c.span_id_of(root_id))


def test_a_hanging_endpoint_costs_the_main_destination_nothing_and_the_exit_its_bound(
    tmp_path: Path,
) -> None:
    """The exit's path (`_lifecycle` calls the export's shutdown with what is left of the
    exit bound): the request in progress is interrupted and its spans are spooled."""
    settings = Settings(spool_dir=str(tmp_path))
    with Receiver(hold=True) as hanging:
        export = _otlp_export.OtlpExport(hanging.url, {}, settings)
        with tapped(export), fresh_pipeline() as pipe:
            with flowtrace.flow("otlp-spool/hung") as log:
                pass
            assert pipe.flush(WAIT_S)
            flushing = threading.Thread(target=export.flush, args=(WAIT_S,))
            flushing.start()
            assert hanging.requested.wait(WAIT_S)  # the export is stuck in its request
            with Store(Path(get_settings().db_path)) as store:  # the main delivery is not
                assert store.get_log(log.log_id).trace_status == "complete"
            assert export.shutdown(0.2)  # the thread stopped within its bound...
            flushing.join(WAIT_S)
            stats = export.stats()
        hanging.down = True  # the request it gave up on is answered 503 once released
    path = spool_file(spool_key(hanging.url, {}), str(tmp_path))
    assert spooled_span_names(path) == ["otlp-spool/hung"]  # ...and kept the span
    assert (stats["spooled"], stats["exported"], stats["dropped"]) == (1, 0, {})


def test_the_otlp_spool_on_the_command_line_status_drain_and_purge(
    receiver: Receiver, tmp_path: Path
) -> None:
    env = exit_env(receiver, tmp_path)
    cli = "import sys; from flowtrace.cli import main; sys.exit(main(sys.argv[1:]))"
    receiver.down = True
    assert run_script(EXITING, env).returncode == 0  # 3 spans spooled at its exit
    status = run_script(cli, env, "spool", "status")
    assert status.returncode == 0, status.stderr
    assert f"OTLP spool {spool_file(spool_key(receiver.url, {}), str(tmp_path / 'spool'))}" in (
        status.stdout
    )
    assert f"endpoint: {receiver.url}" in status.stdout
    batches = int(status.stdout.split(" batch(es) of spans")[0].rsplit("\n", 1)[1])
    assert batches >= 1 and "gone: its backlog is drained" in status.stdout
    drained = run_script(cli, env, "spool", "drain", "--timeout", "1")
    assert drained.returncode == 1  # the endpoint is still down: nothing was lost either
    assert "0 batch(es) still spooled" not in drained.stdout
    assert "(the endpoint did not take them)" in drained.stdout
    receiver.down = False
    drained = run_script(cli, env, "spool", "drain", "--timeout", "30")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert (
        f"OTLP endpoint {receiver.url}: sent 3 spooled span(s); 0 dropped; "
        "0 batch(es) still spooled" in drained.stdout
    )
    assert sorted(span.name for span in receiver.wait_for(3)) == [
        "otlp-spool/exit-child",
        "otlp-spool/exit-root",
        "otlp-spool/left-open",
    ]
    # purge: spool again, then throw it away
    receiver.down = True
    assert run_script(EXITING, env).returncode == 0
    purged = run_script(cli, env, "spool", "purge")
    assert purged.returncode == 0, purged.stderr
    assert f"purged {batches} batch(es) of spans (processes that are gone)" in purged.stdout
    after = run_script(cli, env, "spool", "status")
    assert "\n0 batch(es) of spans" in after.stdout
    assert len(receiver.spans) == 3  # what was purged was never sent
