"""The viewer's pages as HTML: the flow list, the log list, and the trace page's frame (its
script fills the tree, timeline and details from the trace JSON)."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import asdict, dataclass
from typing import get_args
from urllib.parse import quote

from flowtrace._contract import TraceStatus
from flowtrace._log_display import (
    duration_seconds,
    error_excerpt,
    format_duration,
    format_time,
    view_status,
)
from flowtrace.models import FlowLogResponse, FlowResponse
from flowtrace.server.viewer._html import esc, layout, link, table, url
from flowtrace.store import FlowStats, LogPage

__all__ = [
    "LogFilters",
    "flows_page",
    "logs_page",
    "message_page",
    "trace_page",
    "trace_path",
]

STATUS_CHOICES = ("", *get_args(TraceStatus))


def trace_path(log_id: str) -> str:
    return f"/traces/{quote(log_id, safe='')}"


def _status_badge(status: str, *, element_id: str = "") -> str:
    id_attr = f' id="{esc(element_id)}"' if element_id else ""
    return f'<span{id_attr} class="status status-{esc(status)}">{esc(status)}</span>'


# --- flows ---------------------------------------------------------------------------------


def _flow_row(flow: FlowStats) -> list[str]:
    errors = f'<span class="errors">{flow.error_count}</span>' if flow.error_count else "0"
    return [
        link(url("/logs", {"flow": flow.id}), flow.path),
        str(flow.version_count),
        str(flow.log_count),
        errors,
        esc(format_time(flow.last_used_at)),
    ]


def flows_page(flows: list[FlowStats]) -> str:
    rows = [_flow_row(flow) for flow in sorted(flows, key=lambda flow: flow.path)]
    body = "<h1>Flows</h1>" + table(
        ["Flow", "Versions", "Logs", "Errors", "Last used"],
        rows,
        empty="No flows yet: run code decorated with @flow to record some.",
    )
    return layout("Flows", body)


# --- logs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilters:
    """The log list's query: which flow, which page, what to search and filter on.

    `before` / `after`: the log id the page continues from (older / newer), so a deep page
    is found by an index seek; `page` is then only the number shown."""

    flow: str = ""
    page: int = 1
    search: str = ""
    errors: bool = False
    status: str = ""
    before: str = ""
    after: str = ""

    def query(self, **changes: str | int | bool) -> dict[str, str | int | None]:
        """These filters as URL parameters, with `changes` applied (e.g. another page)."""
        params = {**asdict(self), **changes}
        params["errors"] = "1" if params["errors"] else ""
        params["page"] = params["page"] if params["page"] != 1 else ""
        return params


def _log_row(log: FlowLogResponse, failed_below: bool) -> list[str]:
    status = _status_badge(view_status(log))
    if failed_below:
        status += (
            ' <span class="child-errors" title="a log in this trace failed">child error</span>'
        )
    return [
        link(trace_path(log.id), log.id, css_class="log-id"),
        esc(log.flow.path),
        status,
        esc(format_duration(duration_seconds(log))),
        esc(format_time(log.start_time)),
        esc(log.user or ""),
        f'<span class="error-text">{esc(error_excerpt(log))}</span>',
    ]


def _filter_form(filters: LogFilters) -> str:
    options = "".join(
        f'<option value="{esc(choice)}"{" selected" if choice == filters.status else ""}>'
        f"{esc(choice or 'any status')}</option>"
        for choice in STATUS_CHOICES
    )
    checked = " checked" if filters.errors else ""
    flow_field = (
        f'<input type="hidden" name="flow" value="{esc(filters.flow)}">' if filters.flow else ""
    )
    return (
        '<form class="filters" method="get" action="/logs">'
        f"{flow_field}"
        f'<input type="search" name="search" value="{esc(filters.search)}"'
        ' placeholder="Search inputs and output" aria-label="Search inputs and output">'
        f'<label><input type="checkbox" name="errors" value="1"{checked}> errors only</label>'
        f'<select name="status" aria-label="Status">{options}</select>'
        '<button type="submit">Filter</button></form>'
    )


def _pager(result: LogPage, filters: LogFilters) -> str:
    """Older and newer pages by cursor (the last or first log shown): no OFFSET walk."""
    records = result.records
    previous = ""
    if filters.page > 1:
        newer = (
            filters.query(page=filters.page - 1, before="", after=records[0].id)
            if records and filters.page > 2
            else filters.query(page=1, before="", after="")
        )
        previous = link(url("/logs", newer), "← newer", css_class="prev")
    following = ""
    if result.has_more and records:
        older = filters.query(page=filters.page + 1, before=records[-1].id, after="")
        following = link(url("/logs", older), "older →", css_class="next")
    return (
        f'<div class="pager">{previous}<span class="page">page {filters.page}</span>'
        f"{following}</div>"
    )


def _search_note(result: LogPage, filters: LogFilters) -> str:
    """Say where a bounded search stopped, and offer to go on from there."""
    if result.searched is None or result.has_more or not result.searched_through:
        return ""
    scope = "of this flow " if filters.flow else ""
    where = "newest" if not (filters.before or filters.after) else "next"
    go_on = filters.query(page=filters.page + 1, before=result.searched_through, after="")
    return (
        f'<p class="search-note">Searched the {where} {result.searched:,} logs {scope}only. '
        f"{link(url('/logs', go_on), 'Search older logs →', css_class='search-older')}</p>"
    )


def logs_page(
    result: LogPage,
    filters: LogFilters,
    flow: FlowResponse | None,
    failed_below: Set[str] = frozenset(),
) -> str:
    """`failed_below`: ids of the rows (trace roots) with a failed log under them."""
    title = f"Logs of {flow.path}" if flow else "Traces of all flows"
    rows = [_log_row(log, log.id in failed_below) for log in result.records]
    body = (
        f"<h1>{esc(title)}</h1>"
        + _filter_form(filters)
        + table(
            ["Log", "Flow", "Status", "Duration", "Start", "User", "Error"],
            rows,
            empty="No logs match.",
        )
        + _search_note(result, filters)
        + _pager(result, filters)
    )
    return layout(title, body)


# --- one trace -----------------------------------------------------------------------------


def trace_page(root: FlowLogResponse, *, selected: str, api_path: str) -> str:
    """The frame of the trace page: a header from the server, and the places the script
    fills (timeline, tree, details) from `api_path`."""
    status = view_status(root)
    header = (
        f'<h1><span class="flow-path">{esc(root.flow.path)}</span> '
        f"{_status_badge(status, element_id='trace-status')}</h1>"
        f'<p class="trace-facts">trace <code>{esc(root.id)}</code> · started '
        f"{esc(format_time(root.start_time))} · {esc(format_duration(duration_seconds(root)))}"
        f' <span id="live-note" class="live-note"></span></p>'
    )
    body = (
        header + '<section class="panel waterfall-panel"><h2>Timeline</h2>'
        '<div id="waterfall" class="waterfall"></div></section>'
        '<div class="trace-grid">'
        '<section class="panel"><h2>Tree</h2><div id="tree" class="tree"></div></section>'
        '<section class="panel"><div id="details" class="details"></div></section>'
        "</div>"
        "<noscript>The trace view needs JavaScript; the same data is at "
        f"{link(api_path, api_path)}.</noscript>"
    )
    data = f' data-api="{esc(api_path)}" data-selected="{esc(selected)}"'
    return layout(f"Trace {root.flow.path}", body, script="trace.js", data=data)


def message_page(title: str, message: str) -> str:
    """A plain page for 'not found' and similar answers."""
    return layout(title, f"<h1>{esc(title)}</h1><p>{esc(message)}</p>")
