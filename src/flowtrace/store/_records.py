"""Rows to response models: flow records, version records and nested log records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from pydantic_core import from_json

from flowtrace._contract import COMPLETE, INCOMPLETE, PLACEHOLDER_FIELD, StatusField, wire_time_us
from flowtrace.models import FlowLogResponse, FlowResponse, VersionResponse
from flowtrace.store._codec import from_us
from flowtrace.store._repository import Reader, marks

__all__ = [
    "LOG_COLUMNS",
    "FlowStats",
    "LogRow",
    "build_logs",
    "flow_records",
    "flow_stats",
    "flow_stats_sql",
    "record_json",
    "version_records",
]


class FlowStats(FlowResponse):
    """A flow with the viewer's counters."""

    log_count: int = 0
    error_count: int = 0
    version_count: int = 0


LOG_COLUMNS = (
    "l.seq, l.id, l.flow_ref, l.version_ref, l.trace_seq, l.parent_seq, l.start_us, l.end_us,"
    " l.complete, l.inputs, l.output, l.data, l.placeholder"
)


class LogRow(NamedTuple):
    seq: int
    id: str
    flow_ref: int
    version_ref: int
    trace_seq: int
    parent_seq: int | None
    start_us: int
    end_us: int | None
    complete: int
    inputs: str | None
    output: str | None
    data: str
    placeholder: int = 0


class TraceRoot(NamedTuple):
    id: str
    flow_id: str


def _by_first(db: Reader, sql: str, refs: Iterable[Any]) -> dict[Any, tuple[Any, ...]]:
    """The rows of `sql` (its `IN ({})` filled with these refs) by their first column; no
    query for no refs (an empty IN list is not SQL everywhere)."""
    values = list(refs)
    if not values:
        return {}
    return {row[0]: row for row in db.rows(sql.format(marks(len(values))), values)}


# --- flows and versions ------------------------------------------------------------------------

_FLOW_COLUMNS = (
    "f.seq, f.path, f.id, f.name, f.created_us, f.updated_us, f.last_used_us, f.kind, f.log_count"
)
_VERSION_COLUMNS = "v.seq, v.id, v.attributes, v.name, v.description, v.log_count, v.created_us"
_FLOWS_IN = f"SELECT {_FLOW_COLUMNS} FROM flows f WHERE f.seq IN ({{}})"
_VERSIONS_IN = f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE v.seq IN ({{}})"


def _flow_dict(flow: Any, version: Any | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "path": flow[1],
        "id": flow[2],
        "name": flow[3],
        "type": flow[7],
        "status": "committed",
        "created_at": wire_time_us(flow[4]),
        "updated_at": wire_time_us(flow[5]),
        "last_used_at": wire_time_us(flow[6]) if flow[6] is not None else None,
        "version_logs_count": 0,
        "total_logs_count": flow[8],
        "attributes": {},
    }
    if version is not None:
        record.update(
            version_id=version[1],
            attributes=json.loads(version[2]),
            version_logs_count=version[5],
        )
        if version[3] is not None:
            record["version_name"] = version[3]
        if version[4] is not None:
            record["version_description"] = version[4]
    return record


def flow_records(
    db: Reader, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], FlowResponse]:
    """The `flow` record of logs, one model per (flow, version) pair, shared by their logs."""
    pairs = set(pairs)
    flows = _by_first(db, _FLOWS_IN, {flow for flow, _ in pairs})
    versions = _by_first(db, _VERSIONS_IN, {version for _, version in pairs})
    return {
        (f, v): FlowResponse.model_validate(_flow_dict(flows[f], versions[v])) for f, v in pairs
    }


def flow_stats_sql(where: str = "") -> str:
    """Each flow with its counters and its latest version's ref (a second query reads those:
    a join on that ref made PostgreSQL hash every version, 3x slower at 300 flows)."""
    return (
        f"SELECT {_FLOW_COLUMNS}, f.error_count,"
        " (SELECT count(*) FROM versions c WHERE c.flow_ref = f.seq),"
        " (SELECT max(c.seq) FROM versions c WHERE c.flow_ref = f.seq)"
        f" FROM flows f {where} ORDER BY f.path"
    )


def flow_stats(db: Reader, where: str = "", params: tuple[Any, ...] = ()) -> list[FlowStats]:
    """Flows with their counters and latest version: counters are maintained, nothing counted."""
    rows = db.rows(flow_stats_sql(where), params)
    latest = {row[11] for row in rows if row[11] is not None}
    versions = _by_first(db, _VERSIONS_IN, latest)
    stats = []
    for row in rows:
        record = _flow_dict(row, versions.get(row[11]))
        record.update(log_count=row[8], error_count=row[9], version_count=row[10])
        record.pop("total_logs_count")
        stats.append(FlowStats.model_validate(record))
    return stats


def version_records(db: Reader, flow_ref: int, path: str, flow_id: str) -> list[VersionResponse]:
    environments: dict[int, list[str]] = {}
    for version_ref, name in db.rows(
        "SELECT version_ref, name FROM environments WHERE flow_ref = ? ORDER BY name", (flow_ref,)
    ):
        environments.setdefault(version_ref, []).append(name)
    records = []
    for row in db.rows(
        f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE v.flow_ref = ? ORDER BY v.seq",
        (flow_ref,),
    ):
        record: dict[str, Any] = {
            "version_id": row[1],
            "flow_id": flow_id,
            "path": path,
            "attributes": json.loads(row[2]),
            "created_at": wire_time_us(row[6]),
            "environments": environments.get(row[0], []),
            "version_logs_count": row[5],
        }
        if row[3] is not None:
            record["version_name"] = row[3]
        if row[4] is not None:
            record["version_description"] = row[4]
        records.append(VersionResponse.model_validate(record))
    return records


# --- logs --------------------------------------------------------------------------------------


def trace_roots(db: Reader, trace_seqs: Iterable[int]) -> dict[int, TraceRoot]:
    found = _by_first(
        db,
        "SELECT l.seq, l.id, f.id FROM logs l JOIN flows f ON f.seq = l.flow_ref"
        " WHERE l.seq IN ({})",
        set(trace_seqs),
    )
    return {seq: TraceRoot(row[1], row[2]) for seq, row in found.items()}


def _log_dict(
    row: LogRow, root: TraceRoot, flow: FlowResponse, status_field: StatusField
) -> dict[str, Any]:
    # pydantic-core's parser and datetime objects (not text to re-parse): a 1,000-log trace
    # is read in a fraction of the time json.loads and ISO strings took.
    record: dict[str, Any] = from_json(row.data)
    if row.inputs is not None:
        record["inputs"] = from_json(row.inputs)
    if row.output is not None:
        record["output"] = row.output
    record["id"] = row.id
    record["start_time"] = from_us(row.start_us)
    if row.end_us is not None:
        record["end_time"] = from_us(row.end_us)
    record["trace_id"] = root.id
    record["trace_flow_id"] = root.flow_id
    record["evaluator_logs"] = []
    record[status_field] = COMPLETE if row.complete else INCOMPLETE
    record["flow"] = flow
    if row.placeholder:
        record[PLACEHOLDER_FIELD] = True
    return record


def _preorder(children: dict[int, list[LogRow]], tops: Iterable[int]) -> list[int]:
    """The seqs of `tops` and everything under them, each parent before its children."""
    order: list[int] = []
    seen: set[int] = set()
    stack = list(tops)
    while stack:
        seq = stack.pop()
        if seq not in seen:
            seen.add(seq)
            order.append(seq)
            stack.extend(child.seq for child in children.get(seq, ()))
    return order


def build_logs(
    db: Reader,
    rows: list[LogRow],
    tops: list[int],
    status_field: StatusField,
    nested: bool = True,
) -> dict[int, FlowLogResponse]:
    """Records for the `tops` logs (by seq) out of `rows` (their traces, in start order), each
    with its subtree nested in trace_children when `nested`.

    Built bottom-up without recursion (children before their parents: a parent's seq may be
    above its children's, since a placeholder's subtree can move under a later parent), so a
    deep trace cannot hit the recursion limit and each record is validated once, its children
    passed as finished models."""
    children: dict[int, list[LogRow]] = {}
    if nested:
        for row in rows:
            if row.parent_seq is not None:
                children.setdefault(row.parent_seq, []).append(row)
    order = _preorder(children, tops)
    by_seq = {row.seq: row for row in rows}
    needed = [by_seq[seq] for seq in order]
    roots = trace_roots(db, {row.trace_seq for row in needed})
    flows = flow_records(db, {(row.flow_ref, row.version_ref) for row in needed})
    built: dict[int, FlowLogResponse] = {}
    for row in reversed(needed):
        record = _log_dict(
            row, roots[row.trace_seq], flows[(row.flow_ref, row.version_ref)], status_field
        )
        record["trace_children"] = [built[child.seq] for child in children.get(row.seq, ())]
        built[row.seq] = FlowLogResponse.model_validate(record)
    return {seq: built[seq] for seq in tops}


def record_json(
    log: FlowLogResponse, *, exclude_unset: bool = False, exclude_none: bool = False
) -> dict[str, Any]:
    """A record with its subtree as plain JSON values (datetimes as wire text), built without
    recursion: pydantic's serializer refuses a tree nested ~250 levels deep, and a deep trace
    is legitimate data. Each log is dumped alone and the tree is assembled here."""

    def one(model: FlowLogResponse) -> dict[str, Any]:
        return model.model_dump(
            mode="json",
            exclude={"trace_children"},
            exclude_unset=exclude_unset,
            exclude_none=exclude_none,
        )

    root = one(log)
    stack = [(log, root)]
    while stack:
        model, data = stack.pop()
        children = []
        for child in model.trace_children:
            child_data = one(child)
            children.append(child_data)
            stack.append((child, child_data))
        data["trace_children"] = children
    return root
