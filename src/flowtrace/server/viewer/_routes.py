"""The web viewer: read-only pages over the store, mounted on the log server's app.

Routes:
  GET /                      flows: path, versions, log and error counts, last used
  GET /logs                  logs newest first; ?flow=<id or path>&page=&search=&errors=1&status=
                             &before=<log id>|after=<log id> (the cursor of the older/newer links)
  GET /traces/{log_id}       one trace (a child's id opens its trace with that log selected)
  GET /ui/api/traces/{id}    the trace as JSON for the page's script (polled while live)
  GET /ui/static/...         the script and stylesheet shipped in the package

Auth: with no API keys configured the viewer is open (the server binds to loopback unless told
otherwise). With keys configured, every page and JSON route asks for HTTP Basic auth whose
password is one of the API keys (any user name): the browser prompts once and remembers it, and
the key is never written into a page or URL. The static files hold no data and stay open.

Every response carries a strict Content-Security-Policy: no inline script, nothing from other
origins, so text from a log cannot run even if it escaped its escaping.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from flowtrace.models import FlowLogResponse, FlowResponse
from flowtrace.server.viewer._pages import (
    KIND_CHOICES,
    STATIC_PREFIX,
    STATUS_CHOICES,
    LogFilters,
    flows_page,
    logs_page,
    message_page,
    trace_page,
)
from flowtrace.server.viewer._trace_json import trace_view
from flowtrace.store import ListQuery, LogPage, Store, StoreError

__all__ = ["API_PREFIX", "PAGE_SIZE", "SEARCH_WINDOW", "SECURITY_HEADERS", "mount_viewer"]

API_PREFIX = "/ui/api"
PAGE_SIZE = 50
# A search reads at most this many logs per page (the newest of the list, past its cursor):
# a LIKE scan costs ~1 us a log, so a page answers in ~0.1 s however large the database;
# the page says where it stopped and links to search on from there.
SEARCH_WINDOW = 100_000
# Every query parameter is bounded as the API bounds its own: a page past MAX_PAGE (a row
# offset SQLite cannot hold) is shown as that page; longer texts are cut.
MAX_PAGE = 1_000_000_000
MAX_PARAM_CHARS = 1000
STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Pages show logged data: keep them out of shared caches and the back-forward history.
    "Cache-Control": "no-store",
}
_AUTH_CHALLENGE = {"WWW-Authenticate": 'Basic realm="flowtrace viewer", charset="UTF-8"'}


def _basic_auth_password(request: Request) -> str | None:
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, separator, password = decoded.partition(":")
    return password if separator else None


def _key_matches(password: str, api_keys: Sequence[str]) -> bool:
    # Compare against every key in constant time, so timing tells nothing about any of them.
    given = password.encode("utf-8")
    matches = [hmac.compare_digest(given, key.encode("utf-8")) for key in api_keys]
    return any(matches)


def _middleware_api_keys(app: FastAPI) -> tuple[str, ...]:
    """Fail closed: a server that checks API keys in a middleware but did not hand them to
    the viewer still gets a viewer that asks for them, never one open to everybody."""
    for middleware in app.user_middleware:
        keys = middleware.kwargs.get("api_keys")
        if isinstance(keys, (list, tuple)) and keys:
            return tuple(str(key) for key in keys)
    return ()


class _Viewer:
    """The viewer's routes, bound to one store and one way of finding the API keys."""

    def __init__(self, store: Store, api_keys: Sequence[str] | None) -> None:
        self._store = store
        self._api_keys = api_keys

    # --- answers ---------------------------------------------------------------------------

    def _keys(self, request: Request) -> Sequence[str]:
        """The keys given at mount, else those on the app's state, else those the app's
        API-key middleware checks."""
        if self._api_keys is not None:
            return self._api_keys
        state_keys = getattr(request.app.state, "api_keys", None)
        if state_keys is not None:
            return tuple(state_keys)
        return _middleware_api_keys(request.app)

    def _denied(self, request: Request) -> Response | None:
        keys = self._keys(request)
        if not keys:
            return None
        password = _basic_auth_password(request)
        if password is not None and _key_matches(password, keys):
            return None
        return self._html(
            message_page("Sign in", "The viewer needs an API key as the password."),
            status_code=401,
            extra_headers=_AUTH_CHALLENGE,
        )

    @staticmethod
    def _html(
        content: str, *, status_code: int = 200, extra_headers: dict[str, str] | None = None
    ) -> HTMLResponse:
        headers = {**SECURITY_HEADERS, **(extra_headers or {})}
        return HTMLResponse(content, status_code=status_code, headers=headers)

    @staticmethod
    def _json(content: Any, *, status_code: int = 200) -> JSONResponse:
        return JSONResponse(content, status_code=status_code, headers=SECURITY_HEADERS)

    def _not_found(self, what: str) -> HTMLResponse:
        return self._html(message_page("Not found", what), status_code=404)

    # --- lookups ---------------------------------------------------------------------------

    def _find_flow(self, flow: str) -> FlowResponse | None:
        """A flow by id, or else by path (so /logs?flow=support/answer works too)."""
        try:
            return self._store.get_flow(flow)
        except StoreError as error:
            if error.status_code != 404:
                raise
        return next((each for each in self._store.list_flows() if each.path == flow), None)

    def _trace_of(self, log_id: str) -> FlowLogResponse | None:
        """The root of the trace that holds `log_id`, with its whole tree."""
        try:
            log = self._store.get_log(log_id)
            return log if log.id == log.trace_id else self._store.get_log(log.trace_id)
        except StoreError as error:
            if error.status_code == 404:
                return None
            raise

    # --- routes ----------------------------------------------------------------------------

    def flows(self, request: Request) -> Response:
        return self._denied(request) or self._html(flows_page(self._store.list_flows()))

    def logs(self, request: Request) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        filters = _filters_from(request)
        flow = self._find_flow(filters.flow) if filters.flow else None
        if filters.flow and flow is None:
            return self._not_found(f"There is no flow {filters.flow!r}.")
        result = self._list(filters, flow)
        if (filters.before or filters.after) and (
            result is None or (filters.after and len(result.records) < PAGE_SIZE)
        ):
            # the cursor's log is gone, or fewer than a page are newer: show the newest
            filters = replace(filters, page=1, before="", after="")
            result = self._list(filters, flow)
        assert result is not None
        roots = [log.id for log in result.records if log.id == log.trace_id]
        failed_below = self._store.traces_with_errors(roots)
        return self._html(logs_page(result, filters, flow, failed_below))

    def _list(self, filters: LogFilters, flow: FlowResponse | None) -> LogPage | None:
        """A page without totals (the viewer never shows them), by cursor when it has one;
        a search scans a bounded window. None: the cursor's log is gone."""
        cursor = bool(filters.before or filters.after)
        try:
            return self._store.list_logs(
                ListQuery(
                    file_id=flow.id if flow else None,
                    page=1 if cursor else filters.page,
                    size=PAGE_SIZE,
                    search=filters.search or None,
                    errors_only=filters.errors,
                    status=filters.status or None,
                    kind=filters.kind or None,
                    # Across all flows a row is a trace; within one flow, every log of that flow.
                    roots_only=flow is None and not filters.kind,
                    count_total=False,
                    before=filters.before or None,
                    after=filters.after or None,
                    search_window=SEARCH_WINDOW,
                )
            )
        except StoreError as error:
            if error.status_code == 404 and cursor:
                return None
            raise

    def trace(self, request: Request, log_id: str) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        root = self._trace_of(log_id)
        if root is None:
            return self._not_found(f"There is no log {log_id!r}.")
        api_path = f"{API_PREFIX}/traces/{quote(root.id, safe='')}"
        return self._html(trace_page(root, selected=log_id, api_path=api_path))

    def trace_json(self, request: Request, log_id: str) -> Response:
        denied = self._denied(request)
        if denied:
            return denied
        root = self._trace_of(log_id)
        if root is None:
            return self._json({"detail": f"There is no log {log_id!r}."}, status_code=404)
        return self._json(trace_view(root, selected=log_id))


def _filters_from(request: Request) -> LogFilters:
    """Lenient parsing: a hand-edited URL gets the nearest sensible page, not a 422 (nor a
    500: every value is bounded, as the API bounds its own)."""
    params = request.query_params

    def text(name: str) -> str:
        return params.get(name, "")[:MAX_PARAM_CHARS]

    try:
        page = min(max(1, int(text("page") or "1")), MAX_PAGE)
    except ValueError:
        page = 1
    status, kind = text("status"), text("kind")
    return LogFilters(
        flow=text("flow"),
        page=page,
        search=text("search").strip(),
        errors=text("errors") not in ("", "0", "false"),
        status=status if status in STATUS_CHOICES else "",
        kind=kind if kind in KIND_CHOICES else "",
        before=text("before"),
        after=text("after") if "before" not in params else "",
    )


def mount_viewer(app: FastAPI, store: Store, *, api_keys: Sequence[str] | None = None) -> None:
    """Add the viewer's pages, JSON and static files to `app`.

    `api_keys`: the keys whose holders may read. None: read per request (so the server may
    set them after mounting) from `app.state.api_keys`, else from the `api_keys` argument of
    the app's API-key middleware.
    """
    viewer = _Viewer(store, None if api_keys is None else tuple(api_keys))
    app.add_api_route("/", viewer.flows, methods=["GET"], include_in_schema=False)
    app.add_api_route("/logs", viewer.logs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/traces/{log_id}", viewer.trace, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        f"{API_PREFIX}/traces/{{log_id}}",
        viewer.trace_json,
        methods=["GET"],
        include_in_schema=False,
    )
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="viewer-static")
