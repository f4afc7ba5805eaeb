"""The viewer's pages: the flow list, the log list, and the trace page's frame (its script fills
the tree, timeline and details from the trace JSON).

Rendered by Jinja2 templates (`templates/`) with autoescape on: every value is escaped unless
a template says `|safe`, which none does. The layout carries no inline script or style, so the
pages' strict Content-Security-Policy holds and even an escaping bug could not run a script.
This module only turns store results into the plain values the templates show.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, get_args
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from flowtrace._contract import LOG_KINDS, TraceStatus
from flowtrace._log_display import (
    duration_seconds,
    error_excerpt,
    format_duration,
    format_time,
    view_status,
)
from flowtrace.models import FlowLogResponse, FlowResponse
from flowtrace.store import FlowStats, LogPage

__all__ = [
    "KIND_CHOICES",
    "STATIC_PREFIX",
    "STATUS_CHOICES",
    "LogFilters",
    "flows_page",
    "logs_page",
    "message_page",
    "trace_page",
    "trace_path",
    "url",
]

STATIC_PREFIX: Final = "/ui/static"
STATUS_CHOICES: Final = ("", *get_args(TraceStatus))
KIND_CHOICES: Final = ("", *LOG_KINDS)

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,  # a misspelt value is an error in the tests, not a blank
    trim_blocks=True,
    lstrip_blocks=True,
)


def _render(
    template: str,
    title: str,
    *,
    script: str | None = None,
    data: Mapping[str, str] | None = None,
    **values: Any,
) -> str:
    return _TEMPLATES.get_template(template).render(
        title=title, static=STATIC_PREFIX, script=script, data=data or {}, **values
    )


def url(path: str, params: Mapping[str, str | int | None] | None = None) -> str:
    """A viewer URL with its query string; empty parameters are left out."""
    kept = {key: str(value) for key, value in (params or {}).items() if value not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def trace_path(log_id: str) -> str:
    return f"/traces/{quote(log_id, safe='')}"


# --- flows ---------------------------------------------------------------------------------


def flows_page(flows: list[FlowStats]) -> str:
    rows = [
        {
            "href": url("/logs", {"flow": flow.id}),
            "path": flow.path,
            "kind": flow.type,
            "versions": flow.version_count,
            "logs": flow.log_count,
            "errors": flow.error_count,
            "last_used": format_time(flow.last_used_at),
        }
        for flow in sorted(flows, key=lambda flow: flow.path)
    ]
    return _render("flows.html", "Flows", flows=rows)


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
    kind: str = ""
    before: str = ""
    after: str = ""

    def query(self, **changes: str | int | bool) -> dict[str, str | int | None]:
        """These filters as URL parameters, with `changes` applied (e.g. another page)."""
        params = {**asdict(self), **changes}
        params["errors"] = "1" if params["errors"] else ""
        params["page"] = params["page"] if params["page"] != 1 else ""
        return params


def _tokens(log: FlowLogResponse) -> str:
    if log.prompt_tokens is None and log.output_tokens is None:
        return ""
    return f"{log.prompt_tokens or 0} → {log.output_tokens or 0}"


def _log_row(log: FlowLogResponse, failed_below: bool) -> dict[str, Any]:
    return {
        "href": trace_path(log.id),
        "id": log.id,
        "path": log.flow.path,
        "kind": log.flow.type,
        "status": view_status(log),
        "failed_below": failed_below,
        "duration": format_duration(duration_seconds(log)),
        "start": format_time(log.start_time),
        "user": log.user or "",
        "tokens": _tokens(log),
        "error": error_excerpt(log),
    }


def _pager(result: LogPage, filters: LogFilters) -> dict[str, Any]:
    """Older and newer pages by cursor (the last or first log shown): no OFFSET walk."""
    records = result.records
    newer = older = None
    if filters.page > 1:
        query = (
            filters.query(page=filters.page - 1, before="", after=records[0].id)
            if records and filters.page > 2
            else filters.query(page=1, before="", after="")
        )
        newer = url("/logs", query)
    if result.has_more and records:
        older = url("/logs", filters.query(page=filters.page + 1, before=records[-1].id, after=""))
    return {"page": filters.page, "newer": newer, "older": older}


def _search_note(result: LogPage, filters: LogFilters) -> dict[str, Any] | None:
    """Where a bounded search stopped, and the link to go on from there."""
    if result.searched is None or result.has_more or not result.searched_through:
        return None
    go_on = filters.query(page=filters.page + 1, before=result.searched_through, after="")
    return {
        "where": "newest" if not (filters.before or filters.after) else "next",
        "count": result.searched,
        "scope": "of this flow " if filters.flow else "",
        "href": url("/logs", go_on),
    }


def logs_page(
    result: LogPage,
    filters: LogFilters,
    flow: FlowResponse | None,
    failed_below: Set[str] = frozenset(),
) -> str:
    """`failed_below`: ids of the rows (trace roots) with a failed log under them."""
    title = f"Logs of {flow.path}" if flow else "Traces of all flows"
    return _render(
        "logs.html",
        title,
        filters=filters,
        status_choices=STATUS_CHOICES,
        kind_choices=KIND_CHOICES,
        rows=[_log_row(log, log.id in failed_below) for log in result.records],
        search_note=_search_note(result, filters),
        pager=_pager(result, filters),
    )


# --- one trace -----------------------------------------------------------------------------


def trace_page(root: FlowLogResponse, *, selected: str, api_path: str) -> str:
    """The frame of the trace page: a header from the server, and the places the script
    fills (timeline, tree, details, totals) from `api_path`."""
    return _render(
        "trace.html",
        f"Trace {root.flow.path}",
        script="trace.js",
        data={"api": api_path, "selected": selected},
        root_path=root.flow.path,
        root_id=root.id,
        status=view_status(root),
        started=format_time(root.start_time),
        duration=format_duration(duration_seconds(root)),
        api_path=api_path,
    )


def message_page(title: str, message: str) -> str:
    """A plain page for 'not found' and similar answers."""
    return _render("message.html", title, message=message)
