"""Store results as the contract's JSON: unset fields omitted, the status under the right name.

The status field is answered in the name the request used (`trace_status` or `log_status`),
or the server's default name where the request named neither (reads, for instance).
"""

from __future__ import annotations

from typing import Any

from flowtrace._contract import INCOMPLETE, STATUS_FIELDS
from flowtrace.models import (
    CreateFlowLogResponse,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    FlowResponse,
    PaginatedLogs,
    StatusField,
    VersionResponse,
)

__all__ = [
    "render_created",
    "render_flow",
    "render_log",
    "render_page",
    "render_version",
    "status_field_of",
]

# The contract's default status: a log is incomplete until something says otherwise.
DEFAULT_STATUS = INCOMPLETE


def status_field_of(
    request: FlowLogRequest | FlowLogUpdateRequest, default: StatusField
) -> StatusField:
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


def render_log(log: FlowLogResponse, field: StatusField) -> dict[str, Any]:
    data = log.model_dump(mode="json", exclude_none=True)
    _shape_log(data, field)
    return data


def _shape_log(data: dict[str, Any], field: StatusField) -> None:
    statuses = [data.pop(name, None) for name in STATUS_FIELDS]
    data[field] = next((status for status in statuses if status), DEFAULT_STATUS)
    _keep_required_flow_fields(data["flow"])
    for child in data.get("trace_children", ()):
        _shape_log(child, field)


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
