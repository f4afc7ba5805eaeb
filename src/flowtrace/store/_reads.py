"""Reading logs back: one log with its nested trace, and filtered, paged lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flowtrace._contract import COMPLETE, DEFAULT_STATUS_FIELD, INCOMPLETE, LOG_KINDS, StatusField
from flowtrace.models import FlowLogResponse, PaginatedLogs
from flowtrace.store._codec import to_us
from flowtrace.store._errors import invalid, not_found
from flowtrace.store._flow_cache import FlowCache
from flowtrace.store._records import LOG_COLUMNS, LogRow, build_logs
from flowtrace.store._repository import Reader

__all__ = ["ListQuery", "LogFilter", "LogPage", "get_log", "list_logs", "trace_rows"]


class LogPage(PaginatedLogs):
    """A page of logs, with what the viewer needs beyond the contract's fields.

    `has_more`: a next page exists. `searched`: set when a bounded search stopped at its
    window: it scanned that many logs, the oldest of them `searched_through`."""

    has_more: bool = False
    searched: int | None = None
    searched_through: str | None = None


def trace_rows(db: Reader, trace_seqs: set[int]) -> list[LogRow]:
    """Every log of these traces in start order (the (trace_seq, start_us) index's order)."""
    rows: list[LogRow] = []
    for trace_seq in sorted(trace_seqs):
        rows.extend(
            LogRow(*row)
            for row in db.rows(
                f"SELECT {LOG_COLUMNS} FROM logs l WHERE l.trace_seq = ?"
                " ORDER BY l.start_us, l.seq",
                (trace_seq,),
            )
        )
    return rows


def get_log(db: Reader, log_id: str, status_field: StatusField) -> FlowLogResponse:
    row = db.row("SELECT seq, trace_seq FROM logs WHERE id = ?", (log_id,))
    if row is None:
        raise not_found(f"log {log_id!r} not found")
    return get_log_by_seq(db, row[0], row[1], status_field)


def get_log_by_seq(
    db: Reader, seq: int, trace_seq: int, status_field: StatusField
) -> FlowLogResponse:
    rows = trace_rows(db, {trace_seq})
    return build_logs(db, rows, [seq], status_field)[seq]


@dataclass(frozen=True, slots=True)
class ListQuery:
    """What `Store.list_logs` lists (`GET /logs`): filters, page, and how records look.

    Filters: `file_id`, `version_id` (404 when unknown), `search` (substring of inputs or
    output), `start_date` <= start_time < `end_date`, `errors_only`, `status` ("complete" or
    "incomplete"), `roots_only` (traces), `kind` (flow, prompt or tool logs only).
    Paging: `page` (from 1) of `size`; `before` / `after` a log id: the page starts just past
    that log in list order (older / newer), by index seek instead of an OFFSET walk (`page`
    then counts from there; 404 when the log is gone). `count_total=False`: no COUNT, `total`
    is then a lower bound and `has_more` says whether a next page exists. `search_window`: a
    search scans at most the newest that many logs past the cursor (`searched`,
    `searched_through` in the page say where it stopped). Records: nested trace_children with
    `include_trace_children`; the status under `status_field`."""

    file_id: str | None = None
    version_id: str | None = None
    search: str | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    errors_only: bool = False
    status: str | None = None
    roots_only: bool = False
    kind: str | None = None
    page: int = 1
    size: int = 50
    include_trace_children: bool = False
    status_field: StatusField = DEFAULT_STATUS_FIELD
    count_total: bool = True
    before: str | None = None
    after: str | None = None
    search_window: int | None = None


@dataclass
class LogFilter:
    """A ListQuery's filters compiled into SQL conditions."""

    query: ListQuery
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    cursor_terms: int = 0  # the last conditions added: the keyset cursor's
    cursor_params: int = 0

    def add(self, condition: str, *params: Any) -> None:
        self.where.append(condition)
        self.params.extend(params)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _add_search(db: Reader, filters: LogFilter) -> None:
    """Substring of inputs (as JSON text) or output: the backend's case-insensitive LIKE
    (SQLite's for ASCII only, PostgreSQL's ILIKE for any letter). A scan, newest first: a
    page of a common word stops early, a rare one reads every row the other filters leave (an
    FTS5 trigram index made ingest 5x slower; pg_trgm's GIN indexes cost PostgreSQL 1.6x its
    CPU per log ingested and slowed common words: not worth it)."""
    text = filters.query.search
    if text:
        pattern = _like_pattern(text)
        filters.add(db.search_condition, pattern, pattern)


@dataclass(frozen=True)
class _Window:
    """The newest `size` logs (of the flow, dates and cursor) that a bounded search scans."""

    size: int
    oldest: tuple[int, int] | None = None  # (start_us, seq) of its oldest log, when bounded
    oldest_id: str | None = None


def _compile(
    db: Reader, flow_cache: FlowCache, filters: LogFilter
) -> tuple[int | None, int | None]:
    """Turn the filters into SQL conditions; returns the flow and version refs filtered on.
    The flow and date conditions come first: a search window is bounded on them alone."""
    flow_ref = version_ref = None
    version = None
    if filters.query.file_id is not None:
        flow_ref = flow_cache.require_flow(db, filters.query.file_id).ref
    if filters.query.version_id is not None:
        version = flow_cache.require_version(db, filters.query.version_id)
        version_ref = version.ref
    if flow_ref is not None:
        filters.add("l.flow_ref = ?", flow_ref)
    elif version is not None:  # the flow's index serves the version's logs
        filters.add("l.flow_ref = ?", version.flow_ref)
    if filters.query.start_date is not None:
        filters.add("l.start_us >= ?", to_us(filters.query.start_date))
    if filters.query.end_date is not None:
        filters.add("l.start_us < ?", to_us(filters.query.end_date))
    if version_ref is not None:
        filters.add("l.version_ref = ?", version_ref)
    if filters.query.status is not None:
        if filters.query.status not in (COMPLETE, INCOMPLETE):
            raise invalid(["query", "status"], "status is 'complete' or 'incomplete'")
        # literal forms: they match the partial indexes' conditions
        filters.add("l.complete = 1" if filters.query.status == COMPLETE else "l.complete = 0")
    if filters.query.errors_only:
        filters.add("l.has_error = 1")
    if filters.query.kind is not None:
        if filters.query.kind not in LOG_KINDS:
            raise invalid(["query", "kind"], f"kind is one of {', '.join(LOG_KINDS)}")
        filters.add(
            "l.flow_ref IN (SELECT f.seq FROM flows f WHERE f.kind = ?)", filters.query.kind
        )
    if filters.query.roots_only:
        filters.add("l.parent_seq IS NULL")
    return flow_ref, version_ref


def _base_conditions(filters: LogFilter, flow_ref: int | None) -> tuple[list[str], list[Any]]:
    """The conditions an index walk answers alone (flow, dates): a search window's scope."""
    where, params = [], []
    if flow_ref is not None or filters.query.version_id is not None:
        where.append(filters.where[0])
        params.append(filters.params[0])
    for condition, value in ((">=", filters.query.start_date), ("<", filters.query.end_date)):
        if value is not None:
            where.append(f"l.start_us {condition} ?")
            params.append(to_us(value))
    return where, params


def _counted_total(
    db: Reader, filters: LogFilter, flow_ref: int | None, version_ref: int | None
) -> int | None:
    """The total from maintained counters when the filters allow it (no COUNT over 1M rows)."""
    if (
        filters.query.search
        or filters.query.start_date
        or filters.query.end_date
        or filters.query.status
        or filters.query.kind
    ):
        return None
    if version_ref is not None:
        if filters.query.errors_only or filters.query.roots_only:
            return None
        row = db.row(
            "SELECT log_count FROM versions WHERE seq = ? AND flow_ref = coalesce(?, flow_ref)",
            (version_ref, flow_ref),
        )
        return int(row[0]) if row else 0
    if filters.query.errors_only and filters.query.roots_only:
        return None
    column = (
        "error_count"
        if filters.query.errors_only
        else "root_count"
        if filters.query.roots_only
        else "log_count"
    )
    row = db.row(
        f"SELECT coalesce(sum({column}), 0) FROM flows WHERE seq = coalesce(?, seq)", (flow_ref,)
    )
    return int(row[0]) if row is not None else 0


def _cursor(db: Reader, log_id: str, name: str) -> tuple[int, int]:
    row = db.row("SELECT start_us, seq FROM logs WHERE id = ?", (log_id,))
    if row is None:
        raise not_found(f"log {log_id!r} ({name}) not found")
    return int(row[0]), int(row[1])


def _keyset(older: bool, start_us: int, seq: int) -> tuple[str, list[Any]]:
    """Logs strictly older (or newer) than (start_us, seq) in list order. The first term is a
    plain range on start_us, so the (…, start_us) indexes seek straight to the cursor."""
    if older:
        return "l.start_us <= ? AND (l.start_us < ? OR l.seq < ?)", [start_us, start_us, seq]
    return "l.start_us >= ? AND (l.start_us > ? OR l.seq > ?)", [start_us, start_us, seq]


def _bound_window(
    db: Reader, filters: LogFilter, flow_ref: int | None, size: int, older: bool
) -> _Window:
    """Find the oldest log of the newest `size` (flow, dates, cursor): along the flow or start
    index alone, so finding it reads index entries, not rows. Unbounded when no log is older."""
    where, params = _base_conditions(filters, flow_ref)
    where.extend(filters.where[len(filters.where) - filters.cursor_terms :])
    params.extend(filters.params[len(filters.params) - filters.cursor_params :])
    order = "DESC" if older else "ASC"
    found = db.rows(
        f"SELECT l.start_us, l.seq FROM logs l WHERE {' AND '.join(where) or 'TRUE'}"
        f" ORDER BY l.start_us {order}, l.seq {order} LIMIT 2 OFFSET ?",
        [*params, size - 1],
    )
    if len(found) < 2:  # the window holds every log there is: nothing is left out
        return _Window(size)
    row = found[0]
    named = db.row("SELECT id FROM logs WHERE seq = ?", (row[1],))
    assert named is not None, "the log just found"
    return _Window(size, (int(row[0]), int(row[1])), str(named[0]))


def list_logs(db: Reader, flow_cache: FlowCache, query: ListQuery) -> LogPage:
    filters = LogFilter(query)
    page, size, count_total = query.page, query.size, query.count_total
    before, after, search_window = query.before, query.after, query.search_window
    status_field = query.status_field
    if page < 1:
        raise invalid(["query", "page"], "page starts at 1")
    if size < 1:
        raise invalid(["query", "size"], "size is at least 1")
    if before is not None and after is not None:
        raise invalid(["query", "after"], "give before or after, not both")
    if search_window is not None and search_window < 1:
        raise invalid(["query", "search_window"], "search_window is at least 1")
    flow_ref, version_ref = _compile(db, flow_cache, filters)
    older = after is None
    cursor = before if before is not None else after
    if cursor is not None:
        condition, values = _keyset(older, *_cursor(db, cursor, "before" if older else "after"))
        filters.add(condition, *values)
        filters.cursor_terms, filters.cursor_params = 1, len(values)
    window: _Window | None = None
    if filters.query.search and search_window is not None:
        window = _bound_window(db, filters, flow_ref, search_window, older)
        if window.oldest is not None:
            condition, values = _keyset(not older, *window.oldest)
            # the window's own oldest log is in it: widen the strict bound by one seq
            values[-1] += -1 if older else 1
            filters.add(condition, *values)
    _add_search(db, filters)
    where = " AND ".join(filters.where) or "TRUE"
    order = "DESC" if older else "ASC"
    fetch = size if count_total else size + 1  # one more row tells whether a next page exists
    rows = [
        LogRow(*row)
        for row in db.rows(
            f"SELECT {LOG_COLUMNS} FROM logs l WHERE {where}"
            f" ORDER BY l.start_us {order}, l.seq {order} LIMIT ? OFFSET ?",
            [*filters.params, fetch, (page - 1) * size],
        )
    ]
    has_more = len(rows) > size
    rows = rows[:size]
    if not older:
        rows.reverse()
    if count_total:
        total = _counted_total(db, filters, flow_ref, version_ref) if cursor is None else None
        if total is None:
            counted = db.row(f"SELECT count(*) FROM logs l WHERE {where}", filters.params)
            total = int(counted[0]) if counted is not None else 0
        has_more = page * size < total
    else:
        total = (page - 1) * size + len(rows) + has_more
    tops = [row.seq for row in rows]
    if query.include_trace_children and rows:
        trace = trace_rows(db, {row.trace_seq for row in rows})
        built = build_logs(db, trace, tops, status_field)
    else:
        built = build_logs(db, rows, tops, status_field, nested=False)
    bounded = window is not None and window.oldest is not None
    return LogPage(
        records=[built[seq] for seq in tops],
        page=page,
        size=size,
        total=total,
        has_more=has_more,
        searched=window.size if bounded and window is not None else None,
        searched_through=window.oldest_id if window is not None else None,
    )
