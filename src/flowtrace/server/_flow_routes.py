"""The contract's flow routes: upsert, list, get, versions, deploy to an environment."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.responses import JSONResponse

from flowtrace._contract import FLOW
from flowtrace.models import DeployRequest, FlowResponse, FlowUpsertRequest, VersionResponse
from flowtrace.store import FlowStats, Store

from ._errors import error_responses
from ._json import StrictJsonRoute
from ._responses import render_flow, render_version

__all__ = ["flow_router"]

MAX_PAGE = 1_000_000_000
MAX_PAGE_SIZE = 1_000

FlowId = Annotated[str, Path(description="Flow id")]


class FlowPage(BaseModel):
    """`GET /flows`, paginated like the original API's list of files."""

    records: list[FlowStats]
    page: int
    size: int
    total: int


class VersionList(BaseModel):
    records: list[VersionResponse]


def flow_router(store: Store) -> APIRouter:
    router = APIRouter(route_class=StrictJsonRoute, tags=["flows"])

    @router.post(
        "/flows",
        response_model=FlowResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Upsert a Flow and its version",
    )
    def upsert_flow(body: FlowUpsertRequest) -> JSONResponse:
        return JSONResponse(render_flow(store.upsert_flow(body)))

    @router.get(
        "/flows",
        response_model=FlowPage,
        responses=error_responses(401),
        summary="List Flows",
    )
    def list_flows(
        page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
        size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
        name: Annotated[str | None, Query(description="Text in the Flow's path")] = None,
    ) -> JSONResponse:
        flows = [flow for flow in store.list_flows() if flow.type == FLOW]  # not prompts, tools
        if name:
            flows = [flow for flow in flows if name.lower() in flow.path.lower()]
        start = (page - 1) * size
        records = [render_flow(flow) for flow in flows[start : start + size]]
        return JSONResponse({"records": records, "page": page, "size": size, "total": len(flows)})

    @router.get(
        "/flows/{flow_id}",
        response_model=FlowResponse,
        responses=error_responses(401, 404),
        summary="Get a Flow",
    )
    def get_flow(flow_id: FlowId) -> JSONResponse:
        return JSONResponse(render_flow(store.get_flow(flow_id)))

    @router.get(
        "/flows/{flow_id}/versions",
        response_model=VersionList,
        responses=error_responses(401, 404),
        summary="List a Flow's versions",
    )
    def list_versions(flow_id: FlowId) -> JSONResponse:
        versions = [render_version(version) for version in store.list_versions(flow_id)]
        return JSONResponse({"records": versions})

    @router.post(
        "/flows/{flow_id}/environments/{environment}",
        response_model=FlowResponse,
        responses=error_responses(400, 401, 404, 413),
        summary="Deploy a version to an environment",
    )
    def deploy(
        flow_id: FlowId,
        environment: Annotated[str, Path(description="Environment name")],
        body: Annotated[DeployRequest | None, Body()] = None,
        version_id: Annotated[
            str | None, Query(description="Alternative to the body (the original API's form)")
        ] = None,
    ) -> JSONResponse:
        chosen = body.version_id if body is not None else version_id
        if chosen is None:
            raise RequestValidationError([_missing_version_id()])
        return JSONResponse(render_flow(store.deploy(flow_id, environment, chosen)))

    return router


def _missing_version_id() -> dict[str, Any]:
    return {
        "loc": ("body", "version_id"),
        "msg": "Field required (in the body, or as the version_id query parameter)",
        "type": "missing",
    }
