"""The log store: the one place where the contract's trace rules live, on SQLite.

Both the server (`flowtrace serve`) and the embedded default (no endpoint configured) go
through `Store`, so a local run and a team server behave alike.

API SKELETON: the store engineer implements this; the server, exporters, viewer and CLI code
against exactly these signatures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from flowtrace.models import (
    BatchResult,
    CreateFlowLogResponse,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    FlowResponse,
    FlowUpsertRequest,
    LogQuery,
    PaginatedLogs,
    VersionResponse,
)

__all__ = ["FlowStats", "Store", "StoreError"]


class StoreError(Exception):
    """A request the contract refuses. `status_code` is the HTTP status the server answers;
    `detail` is the body's "detail" (a message, or the 422 list of {loc, msg, type})."""

    def __init__(self, status_code: int, detail: str | list[dict[str, Any]]) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.status_code = status_code
        self.detail = detail


class FlowStats(FlowResponse):
    """A flow with the viewer's counters."""

    log_count: int = 0
    error_count: int = 0
    version_count: int = 0


class Store:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # --- writes: each call is atomic (a failing one changes nothing) ---------------------
    def log(self, request: FlowLogRequest, query: LogQuery | None = None) -> CreateFlowLogResponse:
        raise NotImplementedError

    def update(self, log_id: str, request: FlowLogUpdateRequest) -> FlowLogResponse:
        raise NotImplementedError

    def batch(self, operations: Sequence[dict[str, Any]]) -> list[BatchResult]:
        raise NotImplementedError

    def delete_logs(self, ids: Sequence[str]) -> None:
        raise NotImplementedError

    def upsert_flow(self, request: FlowUpsertRequest) -> FlowResponse:
        raise NotImplementedError

    def deploy(self, flow_id: str, environment: str, version_id: str) -> FlowResponse:
        raise NotImplementedError

    # --- reads -----------------------------------------------------------------------------
    def get_log(self, log_id: str) -> FlowLogResponse:
        raise NotImplementedError

    def list_logs(
        self,
        *,
        file_id: str | None = None,
        page: int = 1,
        size: int = 50,
        version_id: str | None = None,
        search: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        include_trace_children: bool = False,
        errors_only: bool = False,
        status: str | None = None,
        roots_only: bool = False,
    ) -> PaginatedLogs:
        raise NotImplementedError

    def list_flows(self) -> list[FlowStats]:
        raise NotImplementedError

    def get_flow(self, flow_id: str) -> FlowResponse:
        raise NotImplementedError

    def list_versions(self, flow_id: str) -> list[VersionResponse]:
        raise NotImplementedError
