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

Every function checks everything that can refuse before writing (see `Session.operation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic_core import from_json

from flowtrace._contract import FLOW, PLACEHOLDER_PATH, remote_parent_id
from flowtrace.store._errors import conflict
from flowtrace.store._flow_cache import FlowCache
from flowtrace.store._logs import (
    LogUpdate,
    changes_of,
    created_response,
    find_target,
    update_log,
    write_log,
)
from flowtrace.store._prepare import PreparedLog
from flowtrace.store._repository import NewLog, Node, Reader, Repository, SpanRow
from flowtrace.store._session import Session

__all__ = ["SpanWrite", "fill_placeholder", "ingest_span", "remote_child_parent"]


@dataclass(frozen=True, slots=True)
class SpanWrite:
    """One span's log: `log` as the span describes it; `update` when the span completes an
    existing log (it names one) rather than being a log of its own."""

    log: PreparedLog
    update: LogUpdate | None = None


class _Parent(NamedTuple):
    """Where a span's log goes: under an existing log, or under a placeholder to create."""

    trace_seq: int | None
    node: Node | None
    missing_id: str | None


def _find_parent(repo: Repository, parent_id: str | None) -> _Parent:
    """The parent log, locked (complete or not: see the module's rules), or the id of the
    placeholder to make for it."""
    if parent_id is None:
        return _Parent(None, None, None)
    found = repo.parent(parent_id)
    if found is None:
        return _Parent(None, None, parent_id)
    return _Parent(found.trace_seq, found.node, None)


def _check_placeholder_file(flow_cache: FlowCache, db: Reader) -> None:
    found = flow_cache.find_flow_by_path(db, PLACEHOLDER_PATH)
    if found is not None:
        found.require_kind(FLOW)


def _placeholder(
    flow_cache: FlowCache, session: Session, log_id: str, start_us: int, end_us: int | None
) -> tuple[int, Node]:
    """Create the placeholder root `log_id` covering [start, end]: (its trace, its node)."""
    flow = flow_cache.flow_for_path(session, PLACEHOLDER_PATH)
    version = flow_cache.version_for_attributes(session, flow, {})
    seq = session.next_seq()
    session.repo.insert_log(
        NewLog(
            seq,
            log_id,
            flow.ref,
            version.ref,
            seq,
            None,
            start_us,
            end_us,
            complete=False,
            has_error=False,
            request_digest=b"",
            inputs=None,
            output=None,
            data="{}",
            placeholder=True,
        )
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


def _fill(
    flow_cache: FlowCache, session: Session, row: SpanRow, prepared: PreparedLog
) -> tuple[str, str]:
    """The placeholder `row` becomes the span's log; its subtree moves under the span's
    parent, if the span has one. Returns the ids of the log's flow and version."""
    repo = session.repo
    target = find_target(flow_cache, repo, prepared)
    parent = _find_parent(repo, prepared.request.trace_parent_id)
    if parent.missing_id is not None:
        _check_placeholder_file(flow_cache, repo)
    if parent.trace_seq == row.seq:
        raise conflict(f"log {prepared.request.log_id!r} cannot be its own ancestor")
    # --- every check passed: write
    flow, version = target.materialize(flow_cache, session)
    start_us = min(row.start_us, prepared.start_us)
    end_us = row.end_us
    if prepared.end_us is not None and (end_us is None or prepared.end_us > end_us):
        end_us = prepared.end_us
    repo.fill_placeholder(
        row.seq,
        NewLog(
            row.seq,
            "",
            flow.ref,
            version.ref,
            row.trace_seq,
            row.parent_seq,
            start_us,
            end_us,
            prepared.complete,
            prepared.has_error,
            prepared.request_digest,
            prepared.inputs,
            prepared.output,
            prepared.data,
        ),
    )
    session.count(row.flow_ref, row.version_ref, -1, -1, -row.has_error)
    trace_seq, node = _attach(flow_cache, session, parent, start_us, end_us)
    session.count(flow.ref, version.ref, 1, node is None, prepared.has_error)
    if node is not None and trace_seq is not None:
        repo.move_subtree(row.seq, node.seq, trace_seq)
        repo.widen(repo.node(node.seq), start_us, end_us)
    return flow.id, version.id


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
    repo = session.repo
    parent = _find_parent(repo, parent_id)
    if parent.missing_id is not None:
        _check_placeholder_file(flow_cache, repo)
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
    row = session.repo.span_log(log_id)
    assert row is not None and row.placeholder
    flow_id, version_id = _fill(flow_cache, session, row, prepared)
    return created_response(log_id, flow_id, version_id, prepared)


def _complete(session: Session, row: SpanRow, log_id: str, update: LogUpdate) -> None:
    """The span completes an existing log: a PATCH, with the span's metadata added to the
    log's (a PATCH would replace it)."""
    if update.metadata is not None:
        stored = _loads_metadata(row.data)
        if stored:
            update = update.model_copy(update={"metadata": {**stored, **update.metadata}})
    update_log(session, log_id, changes_of(update))


def _loads_metadata(data: str) -> dict[str, Any]:
    metadata = from_json(data).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def ingest_span(flow_cache: FlowCache, session: Session, write: SpanWrite) -> str:
    """Store one span's log by the rules above; returns its log id."""
    prepared = write.log
    log_id = prepared.request.log_id
    assert log_id is not None, "a span's log always has its id"
    repo = session.repo
    with session.operation():
        if prepared.request.trace_parent_id == log_id:
            raise conflict(f"log {log_id!r} cannot be its own parent")
        row = repo.span_log(log_id)
        if row is not None and row.placeholder:
            _fill(flow_cache, session, row, prepared)
        elif row is not None and write.update is not None:
            _complete(session, row, log_id, write.update)
        elif row is not None:
            if row.request_digest != prepared.request_digest:
                raise conflict(f"span log {log_id!r} already exists with a different body")
        else:
            target = find_target(flow_cache, repo, prepared)
            parent = _find_parent(repo, prepared.request.trace_parent_id)
            if parent.missing_id is not None:
                _check_placeholder_file(flow_cache, repo)
            # --- every check passed: write
            trace_seq, node = _attach(
                flow_cache, session, parent, prepared.start_us, prepared.end_us
            )
            write_log(flow_cache, session, prepared, target, trace_seq, node)
    return log_id
