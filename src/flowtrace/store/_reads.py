"""Reading logs back: one log with its nested trace, and filtered, paged lists."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowtrace.models import FlowLogResponse, PaginatedLogs, StatusField
from flowtrace.store._codec import to_us
from flowtrace.store._directory import Directory
from flowtrace.store._errors import invalid, not_found
from flowtrace.store._records import LOG_COLUMNS, LogRow, build_logs

__all__ = ["LogFilter", "get_log", "list_logs", "trace_rows"]


def trace_rows(conn: sqlite3.Connection, trace_seqs: set[int]) -> list[LogRow]:
    """Every log of these traces in start order (the (trace_seq, start_us) index's order)."""
    rows: list[LogRow] = []
    for trace_seq in sorted(trace_seqs):
        rows.extend(
            LogRow(*row)
            for row in conn.execute(
                f"SELECT {LOG_COLUMNS} FROM logs l WHERE l.trace_seq = ?"
                " ORDER BY l.start_us, l.seq",
                (trace_seq,),
            )
        )
    return rows


def get_log(conn: sqlite3.Connection, log_id: str, status_field: StatusField) -> FlowLogResponse:
    row = conn.execute("SELECT seq, trace_seq FROM logs WHERE id = ?", (log_id,)).fetchone()
    if row is None:
        raise not_found(f"log {log_id!r} not found")
    return get_log_by_seq(conn, row[0], row[1], status_field)


def get_log_by_seq(
    conn: sqlite3.Connection, seq: int, trace_seq: int, status_field: StatusField
) -> FlowLogResponse:
    rows = trace_rows(conn, {trace_seq})
    return build_logs(conn, rows, [seq], status_field)[seq]


@dataclass
class LogFilter:
    file_id: str | None = None
    version_id: str | None = None
    search: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    errors_only: bool = False
    status: str | None = None
    roots_only: bool = False
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, condition: str, *params: Any) -> None:
        self.where.append(condition)
        self.params.extend(params)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _add_search(filters: LogFilter) -> None:
    """Substring of inputs (as JSON text) or output; LIKE is case-insensitive for ASCII only.
    A scan, newest first: a page of a common word stops early, a rare one reads every row
    the other filters leave (an FTS5 trigram index made ingest 5x slower; not worth it)."""
    text = filters.search
    if text:
        pattern = _like_pattern(text)
        filters.add(
            "(l.inputs LIKE ? ESCAPE '\\' OR l.output LIKE ? ESCAPE '\\')", pattern, pattern
        )


def _compile(
    conn: sqlite3.Connection, directory: Directory, filters: LogFilter
) -> tuple[int | None, int | None]:
    """Turn the filters into SQL conditions; returns the flow and version refs filtered on."""
    flow_ref = version_ref = None
    if filters.file_id is not None:
        flow_ref = directory.require_flow(conn, filters.file_id).ref
        filters.add("l.flow_ref = ?", flow_ref)
    if filters.version_id is not None:
        version = directory.require_version(conn, filters.version_id)
        version_ref = version.ref
        if flow_ref is None:  # the flow's index serves the version's logs
            filters.add("l.flow_ref = ?", version.flow_ref)
        filters.add("l.version_ref = ?", version_ref)
    if filters.status is not None:
        if filters.status not in ("complete", "incomplete"):
            raise invalid(["query", "status"], "status is 'complete' or 'incomplete'")
        filters.add("l.complete = ?", filters.status == "complete")
    if filters.errors_only:
        filters.add("l.has_error = 1")
    if filters.roots_only:
        filters.add("l.parent_seq IS NULL")  # literal form: matches the partial indexes
    if filters.start_date is not None:
        filters.add("l.start_us >= ?", to_us(filters.start_date))
    if filters.end_date is not None:
        filters.add("l.start_us < ?", to_us(filters.end_date))
    _add_search(filters)
    return flow_ref, version_ref


def _counted_total(
    conn: sqlite3.Connection, filters: LogFilter, flow_ref: int | None, version_ref: int | None
) -> int | None:
    """The total from maintained counters when the filters allow it (no COUNT over 1M rows)."""
    if filters.search or filters.start_date or filters.end_date or filters.status:
        return None
    if version_ref is not None:
        if filters.errors_only or filters.roots_only:
            return None
        row = conn.execute(
            "SELECT log_count FROM versions WHERE seq = ? AND flow_ref = coalesce(?, flow_ref)",
            (version_ref, flow_ref),
        ).fetchone()
        return int(row[0]) if row else 0
    if filters.errors_only and filters.roots_only:
        return None
    column = (
        "error_count"
        if filters.errors_only
        else "root_count"
        if filters.roots_only
        else "log_count"
    )
    row = conn.execute(
        f"SELECT coalesce(sum({column}), 0) FROM flows WHERE seq = coalesce(?, seq)", (flow_ref,)
    ).fetchone()
    return int(row[0])


def list_logs(
    conn: sqlite3.Connection,
    directory: Directory,
    filters: LogFilter,
    *,
    page: int,
    size: int,
    include_trace_children: bool,
    status_field: StatusField,
) -> PaginatedLogs:
    if page < 1:
        raise invalid(["query", "page"], "page starts at 1")
    if size < 1:
        raise invalid(["query", "size"], "size is at least 1")
    flow_ref, version_ref = _compile(conn, directory, filters)
    where = " AND ".join(filters.where) or "1"
    rows = [
        LogRow(*row)
        for row in conn.execute(
            f"SELECT {LOG_COLUMNS} FROM logs l WHERE {where}"
            " ORDER BY l.start_us DESC, l.seq DESC LIMIT ? OFFSET ?",
            [*filters.params, size, (page - 1) * size],
        )
    ]
    total = _counted_total(conn, filters, flow_ref, version_ref)
    if total is None:
        total = conn.execute(
            f"SELECT count(*) FROM logs l WHERE {where}", filters.params
        ).fetchone()[0]
    tops = [row.seq for row in rows]
    if include_trace_children and rows:
        trace = trace_rows(conn, {row.trace_seq for row in rows})
        built = build_logs(conn, trace, tops, status_field)
    else:
        built = build_logs(conn, rows, tops, status_field, nested=False)
    return PaginatedLogs(records=[built[seq] for seq in tops], page=page, size=size, total=total)
