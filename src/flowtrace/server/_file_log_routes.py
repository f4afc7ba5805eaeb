"""The contract's prompt and tool log routes: `POST /prompts/log`, `PATCH /prompts/{id}/log/
{log_id}`, `POST /tools/log`, `PATCH /tools/{id}/log/{log_id}`.

A prompt log is one LLM call (model, messages, output message, tokens, cost, finish reason);
a tool log one tool call. Their kernels (`prompt`: model, provider, template, temperature...;
`tool`: the function's schema) are the versions, as a flow's attributes are. Reads go through
`GET /logs/{id}`, which answers each log in its kind's shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from flowtrace._contract import PROMPT, TOOL
from flowtrace.models import (
    CreatePromptLogResponse,
    CreateToolLogResponse,
    FlowLogResponse,
    LogQuery,
    PromptLogRequest,
    PromptLogUpdateRequest,
    StatusField,
    ToolLogRequest,
    ToolLogUpdateRequest,
)
from flowtrace.store import Store

from ._errors import error_responses
from ._json import StrictJsonRoute
from ._responses import json_response, render_created_file_log, render_log, status_field_of

__all__ = ["file_log_router"]

FileId = Annotated[str, Path(description="The prompt's or tool's id")]
LogId = Annotated[str, Path(description="Log id")]


def _query(version_id: str | None, environment: str | None) -> LogQuery | None:
    if version_id is None and environment is None:
        return None
    return LogQuery(version_id=version_id, environment=environment)


def file_log_router(store: Store, *, status_field_default: StatusField) -> APIRouter:
    router = APIRouter(route_class=StrictJsonRoute, tags=["prompts and tools"])
    default = status_field_default

    @router.post(
        "/prompts/log",
        response_model=CreatePromptLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Log an LLM call to a Prompt",
    )
    def log_prompt(
        body: PromptLogRequest,
        version_id: Annotated[str | None, Query()] = None,
        environment: Annotated[str | None, Query()] = None,
    ) -> Response:
        created = store.log_file(body, _query(version_id, environment))
        return json_response(render_created_file_log(created, status_field_of(body, default)))

    @router.patch(
        "/prompts/{prompt_id}/log/{log_id}",
        response_model=FlowLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Update a Prompt log",
    )
    def update_prompt_log(
        prompt_id: FileId, log_id: LogId, body: PromptLogUpdateRequest
    ) -> Response:
        updated = store.update(log_id, body, file_id=prompt_id, kind=PROMPT)
        return json_response(render_log(updated, status_field_of(body, default)))

    @router.post(
        "/tools/log",
        response_model=CreateToolLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Log a tool call to a Tool",
    )
    def log_tool(
        body: ToolLogRequest,
        version_id: Annotated[str | None, Query()] = None,
        environment: Annotated[str | None, Query()] = None,
    ) -> Response:
        created = store.log_file(body, _query(version_id, environment))
        return json_response(render_created_file_log(created, status_field_of(body, default)))

    @router.patch(
        "/tools/{tool_id}/log/{log_id}",
        response_model=FlowLogResponse,
        responses=error_responses(400, 401, 404, 409, 413),
        summary="Update a Tool log",
    )
    def update_tool_log(tool_id: FileId, log_id: LogId, body: ToolLogUpdateRequest) -> Response:
        updated = store.update(log_id, body, file_id=tool_id, kind=TOOL)
        return json_response(render_log(updated, status_field_of(body, default)))

    return router
