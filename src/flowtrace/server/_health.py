"""The health endpoint: public, cheap, and where a client discovers the batch extension and
the operation kinds its batches may hold."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from flowtrace._contract import BATCH_OPS, BatchOp

__all__ = ["HEALTH_PATHS", "Health", "health_router"]

HEALTH_PATHS = ("/healthz", "/v5/health")


class Health(BaseModel):
    status: str
    batch: bool
    #: The `op`s a batch may hold; a server from before prompt and tool logs in batches
    #: answers without this field (its batches take `log` and `update` only).
    batch_operations: list[BatchOp]


def health_router(*, batch: bool) -> APIRouter:
    router = APIRouter(tags=["health"])
    answer = Health(status="ok", batch=batch, batch_operations=list(BATCH_OPS) if batch else [])

    async def health() -> Health:
        """`batch`: whether `POST /v5/flows/logs/batch` is offered (clients fall back to
        one request per log where it is not); `batch_operations`: the kinds of operation it
        takes."""
        return answer

    for path in HEALTH_PATHS:
        router.add_api_route(path, health, methods=["GET"], response_model=Health)
    return router
