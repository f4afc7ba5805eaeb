"""Store results as the contract's JSON: unset fields omitted, the status under the right name.

The status field is answered in the name the request used (`trace_status` or `log_status`),
or the server's default name where the request named neither (reads, for instance).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from flowtrace._contract import (
    FLOW,
    INCOMPLETE,
    PROMPT,
    PROMPT_KERNEL_FIELDS,
    STATUS_FIELDS,
    TOOL_KERNEL_FIELDS,
)
from flowtrace.models import (
    CreateFlowLogResponse,
    FlowLogResponse,
    FlowResponse,
    PaginatedLogs,
    StatusField,
    VersionResponse,
)
from flowtrace.store._records import record_json

from ._json import dump_json

__all__ = [
    "json_response",
    "render_created",
    "render_flow",
    "render_log",
    "render_page",
    "render_version",
    "status_field_of",
]

# The contract's default status: a log is incomplete until something says otherwise.
DEFAULT_STATUS = INCOMPLETE


def json_response(data: Any, status_code: int = 200) -> Response:
    """A JSON answer encoded at any depth (see `dump_json`)."""
    return Response(dump_json(data), status_code=status_code, media_type="application/json")


def status_field_of(request: Any, default: StatusField) -> StatusField:
    """The status name the request used; `default` when it sent neither."""
    sent = request.model_fields_set
    return next((name for name in STATUS_FIELDS if name in sent), default)


def render_created(created: CreateFlowLogResponse, field: StatusField) -> dict[str, Any]:
    return {
        "id": created.id,
        "flow_id": created.flow_id,
        "version_id": created.version_id,
        field: created.trace_status or created.log_status or DEFAULT_STATUS,
    }


def render_created_file_log(body: dict[str, Any], field: StatusField) -> dict[str, Any]:
    """The answer to `POST /prompts/log` or `/tools/log`: the store's body, status named."""
    statuses = [body.pop(name, None) for name in STATUS_FIELDS]
    body[field] = next((status for status in statuses if status), DEFAULT_STATUS)
    return body


def render_log(log: FlowLogResponse, field: StatusField) -> dict[str, Any]:
    """The record and its subtree as the contract's JSON; shaped without recursion, so a
    trace of any depth is answered (encode it with `json_response`)."""
    data = record_json(log, exclude_none=True)
    stack = [data]
    while stack:
        record = stack.pop()
        _shape_log(record, field)
        stack.extend(record.get("trace_children", ()))
    return data


_KERNELS = {PROMPT: PROMPT_KERNEL_FIELDS}


def _shape_log(data: dict[str, Any], field: StatusField) -> None:
    statuses = [data.pop(name, None) for name in STATUS_FIELDS]
    data[field] = next((status for status in statuses if status), DEFAULT_STATUS)
    _keep_required_flow_fields(data["flow"])
    kind = data["flow"].get("type", FLOW)
    if kind != FLOW:
        # The original API names a log's file by its kind (`prompt`, `tool`), with the
        # version's kernel spread in it and the kernel's own `attributes` as its attributes.
        file = data.pop("flow")
        kernel = file.get("attributes") or {}
        kernel_fields = _KERNELS.get(kind, TOOL_KERNEL_FIELDS)
        file.update({key: kernel[key] for key in kernel_fields if key in kernel})
        file["attributes"] = kernel.get("attributes") or {}
        # what clients of the original API parse as required for these kinds
        file.setdefault("total_logs_count", file.get("version_logs_count", 0))
        file["inputs"] = [{"name": name} for name in _template_inputs(kernel.get("template"))]
        data[kind] = file


_TEMPLATE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _template_inputs(template: Any) -> list[str]:
    """The `{{name}}` variables of a prompt's template (text, or chat messages), in order."""
    texts: list[str] = []
    if isinstance(template, str):
        texts.append(template)
    elif isinstance(template, list):
        texts.extend(str(m.get("content", "")) for m in template if isinstance(m, dict))
    found = [match.group(1) for text in texts for match in _TEMPLATE_VARIABLE.finditer(text)]
    return list(dict.fromkeys(found))


def render_flow(flow: FlowResponse) -> dict[str, Any]:
    data = flow.model_dump(mode="json", exclude_none=True)
    _keep_required_flow_fields(data)
    return data


def _keep_required_flow_fields(flow: dict[str, Any]) -> None:
    # Clients of the original API parse these as required, so they are never omitted.
    flow.setdefault("version_id", None)
    # A flow nobody has logged to yet has no last use; its last change is the honest stand-in
    # for clients that cannot take a missing value.
    flow.setdefault("last_used_at", flow["updated_at"])


def render_page(page: PaginatedLogs, field: StatusField) -> dict[str, Any]:
    return {
        "records": [render_log(record, field) for record in page.records],
        "page": page.page,
        "size": page.size,
        "total": page.total,
    }


def render_version(version: VersionResponse) -> dict[str, Any]:
    return version.model_dump(mode="json", exclude_none=True)
