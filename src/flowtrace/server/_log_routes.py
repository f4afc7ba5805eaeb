"""The contract's log routes: log to a flow, update, batch, read, list, delete.

Endpoints are plain `def`: FastAPI runs them in its threadpool, so the synchronous SQLite store
never blocks the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query
from starlette.responses import JSONResponse, Response

from flowtrace._contract import LogKind, TraceStatus, minimal_answer
from flowtrace.models import (
    BatchRequest,
    BatchResponse,
    CreateFlowLogResponse,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    LogQuery,
    PaginatedLogs,
    StatusField,
    WireDatetime,
)
from flowtrace.store import ListQuery, Store, StoreError, UpdateWrite

from ._errors import error_responses
from ._json import StrictJsonRoute
from ._prefer import MINIMAL_APPLIED, header_prefers_minimal
from ._responses import json_response, render_created, render_log, render_page, status_field_of

__all__ = ["log_router"]

# Bounds that keep a page's row offset inside SQLite's 64-bit integers.
MAX_PAGE = 1_000_000_000
MAX_PAGE_SIZE = 1_000

LogId = Annotated[str, Path(description="Log id")]
Prefer = Annotated[
    str | None,
    Header(description='`return=minimal`: an update is answered `{"id"}`, not the record'),
]


def log_router(store: Store, *, status_field_default: StatusField, batch: bool) -> APIRouter:
    router = APIRouter(route_class=StrictJsonRoute, tags=["logs"])
    default = status_field_default

    @router.post(
        "/flows/log",
        response_model=CreateFlowLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Log to a Flow",
    )
    def log_to_flow(
        body: FlowLogRequest,
        version_id: Annotated[str | None, Query()] = None,
        environment: Annotated[str | None, Query()] = None,
    ) -> JSONResponse:
        # Unless the app was made with fast_log=False, _fast_log.FastLogFront answers
        # this operation (same answers, less overhead); this route describes it in OpenAPI.
        query = None
        if version_id is not None or environment is not None:
            query = LogQuery(version_id=version_id, environment=environment)
        created = store.log(body, query)
        return JSONResponse(render_created(created, status_field_of(body, default)))

    @router.patch(
        "/flows/logs/{log_id}",
        response_model=FlowLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Update a Flow log",
    )
    def update_log(log_id: LogId, body: FlowLogUpdateRequest, prefer: Prefer = None) -> Response:
        # Answered by _fast_log.FastLogFront too, unless fast_log=False (as above).
        minimal = header_prefers_minimal(prefer)
        (updated,) = store.write_many([UpdateWrite(log_id, body, record=not minimal)])
        if isinstance(updated, StoreError):
            raise updated
        if updated is None:
            return JSONResponse(minimal_answer(log_id), headers=MINIMAL_APPLIED)
        assert isinstance(updated, FlowLogResponse)
        return json_response(render_log(updated, status_field_of(body, default)))

    if batch:

        @router.post(
            "/flows/logs/batch",
            response_model=BatchResponse,
            responses=error_responses(400, 401, 413),
            summary="Apply many log (flow, prompt, tool) and update operations (flowtrace ext.)",
        )
        def apply_batch(body: BatchRequest, prefer: Prefer = None) -> Response:
            minimal = header_prefers_minimal(prefer)
            results = store.batch(body.operations, update_records=not minimal)
            # bodies are plain JSON values; an update's record may be nested deep
            response = json_response(
                {"results": [{"status": r.status, "body": r.body} for r in results]}
            )
            if minimal:
                response.headers.update(MINIMAL_APPLIED)
            return response

    else:

        @router.post("/flows/logs/batch", include_in_schema=False)
        def batch_disabled() -> None:
            # Without this route the PATCH route's path would match and answer 405; a client
            # probing for the extension expects the plain 404 of a server that lacks it.
            raise HTTPException(status_code=404, detail="Not Found")

    @router.get(
        "/logs/{log_id}",
        response_model=FlowLogResponse,
        responses=error_responses(401, 404),
        summary="Get a log with its trace children",
    )
    def get_log(log_id: LogId) -> Response:
        return json_response(render_log(store.get_log(log_id), default))

    @router.get(
        "/logs",
        response_model=PaginatedLogs,
        responses=error_responses(401, 404),
        summary="List logs",
    )
    def list_logs(
        file_id: Annotated[str | None, Query(description="Flow id")] = None,
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
        version_id: Annotated[str | None, Query()] = None,
        search: Annotated[str | None, Query(description="Text in inputs or output")] = None,
        start_date: Annotated[WireDatetime | None, Query()] = None,
        end_date: Annotated[WireDatetime | None, Query()] = None,
        include_trace_children: Annotated[bool, Query()] = False,
        errors_only: Annotated[bool, Query(description="Only logs with an error")] = False,
        status: Annotated[TraceStatus | None, Query()] = None,
        roots_only: Annotated[bool, Query(description="Only trace roots")] = False,
        kind: Annotated[LogKind | None, Query(description="Only logs of this kind")] = None,
    ) -> Response:
        found = store.list_logs(
            ListQuery(
                file_id=file_id,
                page=page,
                size=size,
                version_id=version_id,
                search=search,
                start_date=start_date,
                end_date=end_date,
                include_trace_children=include_trace_children,
                errors_only=errors_only,
                status=status,
                roots_only=roots_only,
                kind=kind,
            )
        )
        return json_response(render_page(found, default))

    @router.delete(
        "/logs",
        status_code=204,
        response_class=Response,
        responses=error_responses(401, 404),
        summary="Delete logs",
    )
    def delete_logs(
        id: Annotated[list[str], Query(min_length=1, description="Log id (repeatable)")],
    ) -> Response:
        store.delete_logs(id)
        return Response(status_code=204)

    return router
