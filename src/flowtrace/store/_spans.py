"""The trace rules for logs made from OpenTelemetry spans (OTLP ingest).

Spans are exported when they end, so children arrive before their parents, and batches are
sent again after a lost answer. The rules:

- A span's log id is deterministic (`span_<trace>_<span>`): the same span again with the same
  body is a replay (nothing changes); with another body, a 409 for that span alone.
- A span whose parent log is missing creates a **placeholder** for it: a root log marked
  `placeholder`, in the file at `PLACEHOLDER_PATH`, that widens to cover its children. When the
  parent's span arrives it **fills** the placeholder (file, version, fields, times) and, when
  it has a parent of its own, the placeholder's whole subtree moves under that parent (a
  placeholder again if that one is missing too). A parent that never arrives stays a visible
  pending root.
- A span may attach under a parent that is already complete: the span happened inside it
  (the contract's 409 for a completed parent guards clients that order their requests; spans
  cannot be ordered).
- A span naming an existing log (`humanloop.log.id`) completes that log, as a PATCH would, its
  metadata merged into the log's; when that log does not exist, the span creates it.

Logs from another service (a trace continued from W3C headers, `flowtrace.continue_trace`)
follow the same rules as spans when their body says so (metadata["flowtrace"]["remote_parent"]
names the log's `trace_parent_id` as linked, `_contract.remote_parent_id`): a parent not
seen yet becomes a placeholder, which the parent's own create fills; a complete parent takes
the child (it widens to cover it, and stays complete). Links stay within this database.

Every function checks everything that can refuse before writing (see `Session.operation`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic_core import from_json

from flowtrace._contract import FLOW, PLACEHOLDER_PATH, remote_parent_id
from flowtrace.store._errors import conflict
from flowtrace.store._flow_cache import FlowCache
from flowtrace.store._logs import (
    LogUpdate,
    Node,
    created_response,
    find_target,
    node_at,
    update_log,
    widen,
    write_log,
)
from flowtrace.store._prepare import PreparedLog
from flowtrace.store._session import Session

__all__ = ["SpanWrite", "fill_placeholder", "ingest_span", "remote_child_parent"]


@dataclass(frozen=True, slots=True)
class SpanWrite:
    """One span's log: `log` as the span describes it; `update` when the span completes an
    existing log (it names one) rather than being a log of its own."""

    log: PreparedLog
    update: LogUpdate | None = None


class _Existing(NamedTuple):
    seq: int
    trace_seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None
    flow_ref: int
    version_ref: int
    has_error: int
    placeholder: int
    request_digest: bytes
    data: str


def _existing(conn: sqlite3.Connection, log_id: str) -> _Existing | None:
    row = conn.execute(
        "SELECT seq, trace_seq, parent_seq, start_us, end_us, flow_ref, version_ref, has_error,"
        " placeholder, request_digest, data FROM logs WHERE id = ?",
        (log_id,),
    ).fetchone()
    return _Existing(*row) if row is not None else None


class _Parent(NamedTuple):
    """Where a span's log goes: under an existing log, or under a placeholder to create."""

    trace_seq: int | None
    node: Node | None
    missing_id: str | None


def _find_parent(conn: sqlite3.Connection, parent_id: str | None) -> _Parent:
    if parent_id is None:
        return _Parent(None, None, None)
    row = conn.execute(
        "SELECT seq, parent_seq, start_us, end_us, trace_seq FROM logs WHERE id = ?", (parent_id,)
    ).fetchone()
    if row is None:
        return _Parent(None, None, parent_id)
    return _Parent(row[4], Node(row[0], row[1], row[2], row[3]), None)


def _check_placeholder_file(flow_cache: FlowCache, conn: sqlite3.Connection) -> None:
    found = flow_cache.find_flow_by_path(conn, PLACEHOLDER_PATH)
    if found is not None:
        found.require_kind(FLOW)


def _placeholder(
    flow_cache: FlowCache, session: Session, log_id: str, start_us: int, end_us: int | None
) -> tuple[int, Node]:
    """Create the placeholder root `log_id` covering [start, end]: (its trace, its node)."""
    flow = flow_cache.flow_for_path(session, PLACEHOLDER_PATH)
    version = flow_cache.version_for_attributes(session, flow, {})
    seq = session.next_seq()
    session.conn.execute(
        "INSERT INTO logs (seq, id, flow_ref, version_ref, trace_seq, parent_seq, start_us,"
        " end_us, complete, has_error, request_digest, inputs, output, data, placeholder)"
        " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, 0, 0, ?, NULL, NULL, ?, 1)",
        (seq, log_id, flow.ref, version.ref, seq, start_us, end_us, b"", "{}"),
    )
    session.count(flow.ref, version.ref, 1, 1, 0)
    return seq, Node(seq, None, start_us, end_us)


def _attach(
    flow_cache: FlowCache,
    session: Session,
    parent: _Parent,
    start_us: int,
    end_us: int | None,
) -> tuple[int | None, Node | None]:
    """The parent's (trace, node), creating its placeholder when it is missing."""
    if parent.missing_id is not None:
        return _placeholder(flow_cache, session, parent.missing_id, start_us, end_us)
    return parent.trace_seq, parent.node


def _fill(flow_cache: FlowCache, session: Session, row: _Existing, prepared: PreparedLog) -> None:
    """The placeholder `row` becomes the span's log; its subtree moves under the span's
    parent, if the span has one."""
    conn = session.conn
    target = find_target(flow_cache, conn, prepared)
    parent = _find_parent(conn, prepared.request.trace_parent_id)
    if parent.missing_id is not None:
        _check_placeholder_file(flow_cache, conn)
    if parent.trace_seq == row.seq:
        raise conflict(f"log {prepared.request.log_id!r} cannot be its own ancestor")
    # --- every check passed: write
    flow, version = target.materialize(flow_cache, session)
    start_us = min(row.start_us, prepared.start_us)
    end_us = row.end_us
    if prepared.end_us is not None and (end_us is None or prepared.end_us > end_us):
        end_us = prepared.end_us
    conn.execute(
        "UPDATE logs SET flow_ref = ?, version_ref = ?, start_us = ?, end_us = ?, complete = ?,"
        " has_error = ?, request_digest = ?, inputs = ?, output = ?, data = ?, placeholder = 0"
        " WHERE seq = ?",
        (
            flow.ref,
            version.ref,
            start_us,
            end_us,
            prepared.complete,
            prepared.has_error,
            prepared.request_digest,
            prepared.inputs,
            prepared.output,
            prepared.data,
            row.seq,
        ),
    )
    session.count(row.flow_ref, row.version_ref, -1, -1, -row.has_error)
    trace_seq, node = _attach(flow_cache, session, parent, start_us, end_us)
    session.count(flow.ref, version.ref, 1, node is None, prepared.has_error)
    if node is None or trace_seq is None:
        return
    conn.execute("UPDATE logs SET parent_seq = ? WHERE seq = ?", (node.seq, row.seq))
    conn.execute("UPDATE logs SET trace_seq = ? WHERE trace_seq = ?", (trace_seq, row.seq))
    widen(conn, node_at(conn, node.seq), start_us, end_us)


def remote_child_parent(
    flow_cache: FlowCache, session: Session, prepared: PreparedLog
) -> tuple[int, Node] | None:
    """The (trace, node) a remote child goes under, whether its parent is missing (a
    placeholder is created) or complete; None when `prepared` is not a remote child (the
    contract's 404 or 409 stands). Called once every other check of the create has passed."""
    parent_id = prepared.request.trace_parent_id
    if parent_id is None or parent_id == prepared.request.log_id:
        return None
    metadata = from_json(prepared.data).get("metadata")
    if remote_parent_id(metadata) != parent_id:
        return None
    conn = session.conn
    parent = _find_parent(conn, parent_id)
    if parent.missing_id is not None:
        _check_placeholder_file(flow_cache, conn)
    trace_seq, node = _attach(flow_cache, session, parent, prepared.start_us, prepared.end_us)
    assert trace_seq is not None and node is not None
    return trace_seq, node


def fill_placeholder(
    flow_cache: FlowCache, session: Session, prepared: PreparedLog
) -> dict[str, Any]:
    """A create whose log id is a placeholder's (its remote child came first) fills it: the
    answer of `POST /flows/log`."""
    log_id = prepared.request.log_id
    assert log_id is not None
    row = _existing(session.conn, log_id)
    assert row is not None and row.placeholder
    _fill(flow_cache, session, row, prepared)
    return created_response(session.conn, log_id, prepared)


def _complete(session: Session, row: _Existing, log_id: str, update: LogUpdate) -> None:
    """The span completes an existing log: a PATCH, with the span's metadata added to the
    log's (a PATCH would replace it)."""
    if update.metadata is not None:
        stored = _loads_metadata(row.data)
        if stored:
            update = update.model_copy(update={"metadata": {**stored, **update.metadata}})
    update_log(session, log_id, update)


def _loads_metadata(data: str) -> dict[str, Any]:
    metadata = from_json(data).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def ingest_span(flow_cache: FlowCache, session: Session, write: SpanWrite) -> str:
    """Store one span's log by the rules above; returns its log id."""
    prepared = write.log
    log_id = prepared.request.log_id
    assert log_id is not None, "a span's log always has its id"
    conn = session.conn
    with session.operation():
        if prepared.request.trace_parent_id == log_id:
            raise conflict(f"log {log_id!r} cannot be its own parent")
        row = _existing(conn, log_id)
        if row is not None and row.placeholder:
            _fill(flow_cache, session, row, prepared)
        elif row is not None and write.update is not None:
            _complete(session, row, log_id, write.update)
        elif row is not None:
            if row.request_digest != prepared.request_digest:
                raise conflict(f"span log {log_id!r} already exists with a different body")
        else:
            target = find_target(flow_cache, conn, prepared)
            parent = _find_parent(conn, prepared.request.trace_parent_id)
            if parent.missing_id is not None:
                _check_placeholder_file(flow_cache, conn)
            # --- every check passed: write
            trace_seq, node = _attach(
                flow_cache, session, parent, prepared.start_us, prepared.end_us
            )
            write_log(flow_cache, session, prepared, target, trace_seq, node)
    return log_id
