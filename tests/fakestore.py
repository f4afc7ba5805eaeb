"""A minimal in-memory stand-in for `flowtrace.store.Store`, covering what the viewer reads.

Only for developing the viewer before the real store lands; the viewer tests switch to the
real store as soon as it is importable (see `viewer_store` in the tests).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from flowtrace.models import (
    CreateFlowLogResponse,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    FlowResponse,
    LogQuery,
    PaginatedLogs,
)
from flowtrace.store import FlowStats, StoreError

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeStore:
    def __init__(self) -> None:
        self.logs: dict[str, dict[str, Any]] = {}
        self.flows: dict[str, dict[str, Any]] = {}  # path -> {id, versions: {attrs: id}}

    def close(self) -> None:
        pass

    def log(self, request: FlowLogRequest, query: LogQuery | None = None) -> CreateFlowLogResponse:
        path = request.path or "unnamed"
        flow = self.flows.setdefault(path, {"id": f"fl_{len(self.flows)}", "versions": {}})
        attributes = request.flow.attributes if request.flow else {}
        key = json.dumps(attributes, sort_keys=True)
        version_id = flow["versions"].setdefault(key, f"flv_{uuid.uuid4().hex[:8]}")
        if request.trace_parent_id and request.trace_parent_id not in self.logs:
            raise StoreError(404, "no parent")
        log_id = request.log_id or uuid.uuid4().hex
        record = request.model_dump(exclude_none=True, exclude={"path", "id", "flow", "log_id"})
        record.update(id=log_id, path=path, version_id=version_id, attributes=attributes)
        record["trace_status"] = request.status or "incomplete"
        self.logs[log_id] = record
        return CreateFlowLogResponse(id=log_id, flow_id=flow["id"], version_id=version_id)

    def update(self, log_id: str, request: FlowLogUpdateRequest) -> FlowLogResponse:
        record = self.logs[log_id]
        record.update(request.model_dump(exclude_none=True, exclude={"log_status"}))
        return self.get_log(log_id)

    def _root(self, log_id: str) -> str:
        while self.logs[log_id].get("trace_parent_id"):
            log_id = self.logs[log_id]["trace_parent_id"]
        return log_id

    def _flow(self, path: str, version_id: str | None = None, attributes: Any = None) -> Any:
        flow = self.flows[path]
        return {
            "path": path,
            "id": flow["id"],
            "name": path.rsplit("/", 1)[-1],
            "version_id": version_id,
            "attributes": attributes or {},
            "created_at": NOW,
            "updated_at": NOW,
        }

    def get_log(self, log_id: str) -> FlowLogResponse:
        if log_id not in self.logs:
            raise StoreError(404, f"Log {log_id} not found")
        record = dict(self.logs[log_id])
        children = [
            self.get_log(other["id"])
            for other in self.logs.values()
            if other.get("trace_parent_id") == log_id
        ]
        children.sort(key=lambda child: child.start_time or NOW)
        path = record.pop("path")
        flow = self._flow(path, record.pop("version_id"), record.pop("attributes"))
        return FlowLogResponse.model_validate(
            {
                **record,
                "trace_id": self._root(log_id),
                "trace_flow_id": flow["id"],
                "flow": flow,
                "trace_children": children,
            }
        )

    def list_logs(
        self,
        *,
        file_id: str | None = None,
        page: int = 1,
        size: int = 50,
        search: str | None = None,
        errors_only: bool = False,
        status: str | None = None,
        roots_only: bool = False,
        **_: Any,
    ) -> PaginatedLogs:
        logs = [self.get_log(log_id) for log_id in self.logs]
        if file_id:
            logs = [log for log in logs if log.flow.id == file_id]
        if roots_only:
            logs = [log for log in logs if log.trace_parent_id is None]
        if errors_only:
            logs = [log for log in logs if log.error]
        if status:
            logs = [log for log in logs if log.trace_status == status]
        if search:
            logs = [
                log
                for log in logs
                if search in json.dumps(log.inputs or {}) or search in (log.output or "")
            ]
        logs.sort(key=lambda log: log.start_time or NOW, reverse=True)
        chunk = logs[(page - 1) * size : page * size]
        for log in chunk:
            log.trace_children = []
        return PaginatedLogs(records=chunk, page=page, size=size, total=len(logs))

    def list_flows(self) -> list[FlowStats]:
        stats = []
        for path in self.flows:
            mine = [log for log in self.logs.values() if log["path"] == path]
            stats.append(
                FlowStats.model_validate(
                    {
                        **self._flow(path),
                        "log_count": len(mine),
                        "error_count": sum(1 for log in mine if log.get("error")),
                        "version_count": len(self.flows[path]["versions"]),
                    }
                )
            )
        return stats

    def get_flow(self, flow_id: str) -> FlowResponse:
        for path, flow in self.flows.items():
            if flow["id"] == flow_id:
                return FlowResponse.model_validate(self._flow(path))
        raise StoreError(404, "no flow")
