"""The health endpoint: public, cheap, and where a client discovers the batch extension."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

__all__ = ["HEALTH_PATHS", "health_router"]

HEALTH_PATHS = ("/healthz", "/v5/health")


class Health(BaseModel):
    status: str
    batch: bool


def health_router(*, batch: bool) -> APIRouter:
    router = APIRouter(tags=["health"])
    answer = Health(status="ok", batch=batch)

    async def health() -> Health:
        """`batch`: whether `POST /v5/flows/logs/batch` is offered (clients fall back to
        one request per log where it is not)."""
        return answer

    for path in HEALTH_PATHS:
        router.add_api_route(path, health, methods=["GET"], response_model=Health)
    return router
