"""The flowtrace log service as a FastAPI app: the contract's routes under `/v5`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.security import APIKeyHeader
from starlette.types import Receive, Scope, Send

from flowtrace._contract import DEFAULT_STATUS_FIELD, StatusField
from flowtrace.store import Store

from ._auth import ApiKeyMiddleware, ApiKeys
from ._body_limit import BodyLimitMiddleware
from ._content_type import JsonContentTypeMiddleware
from ._errors import document_refusals, install_error_handlers
from ._fast_log import FastLogFront
from ._file_log_routes import file_log_router
from ._flow_routes import flow_router
from ._health import HEALTH_PATHS, health_router
from ._keyless_guard import KeylessGuardMiddleware
from ._log_routes import log_router
from ._otlp import MAX_OTLP_BYTES, OTLP_PATHS, otlp_router
from .viewer import mount_viewer

__all__ = ["API_PREFIX", "DEFAULT_MAX_BODY_BYTES", "create_app"]

API_PREFIX = "/v5"
DEFAULT_MAX_BODY_BYTES = 5 * 2**20

# Documents the header in the OpenAPI document; ApiKeyMiddleware does the checking, before
# any body is read.
_api_key_header = APIKeyHeader(name="X-API-KEY", auto_error=False)


class _App(FastAPI):
    """FastAPI with the log routes' fast path (`_fast_log.FastLogFront`) in front of
    everything: FastAPI's own entry (its telemetry checks the global OpenTelemetry providers
    on every request, ~5% of a log write's time on the event loop), Starlette's, and the
    whole middleware stack."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fast_log: FastLogFront | None = None
        self.keyless = False  # the Host and Origin rules apply (`_keyless_guard`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.fast_log
        if front is not None and scope["type"] == "http":
            route = front.match(scope)
            if route is not None:
                await front.serve(scope, receive, send, route.log_id)
                return
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, with what the middleware refuses before any route runs."""
        if self.openapi_schema is None:
            document_refusals(
                super().openapi(),
                keyless=self.keyless,
                prefix=API_PREFIX,
                exempt=frozenset(OTLP_PATHS),
            )
        assert self.openapi_schema is not None
        return self.openapi_schema


def create_app(
    store: Store,
    *,
    api_keys: Sequence[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    status_field_default: StatusField = DEFAULT_STATUS_FIELD,
    batch: bool = True,
    fast_log: bool = True,
    listen_hosts: Sequence[str] = (),
) -> FastAPI:
    """The app serving `store`. Without `api_keys` no key is asked for (local use).

    `status_field_default` names the status in answers to requests that did not name it;
    `batch=False` withdraws the batch extension (its route answers 404). `fast_log=False`
    leaves `POST /flows/log` and `PATCH /flows/logs/{id}` to their FastAPI routes (same
    answers, slower: see `_fast_log`).
    Without keys only loopback Host names and `listen_hosts` (the address the server listens
    on) are served, and foreign origins are refused (see `_keyless_guard`).
    """
    app = _App(
        title="flowtrace log service",
        description="The Humanloop v5 'Log to a Flow' contract, plus batch delivery.",
        version="5",
        # Parse a body sent without Content-Type as JSON, as FastAPI did before 0.132.
        strict_content_type=False,
    )
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(_api_key_header)])
    api.include_router(log_router(store, status_field_default=status_field_default, batch=batch))
    api.include_router(flow_router(store))
    api.include_router(file_log_router(store, status_field_default=status_field_default))
    app.include_router(api)
    app.include_router(otlp_router(store))
    app.include_router(health_router(batch=batch))
    install_error_handlers(app)
    mount_viewer(app, store, api_keys=tuple(api_keys))
    # Last added runs first: without keys the Host and Origin checks, authentication, the
    # JSON Content-Type of writes, the body limit, then (added by install_error_handlers) the
    # catch-all for unexpected errors, then the app. In front of them all the fast path of
    # log creates and updates, which does their checks itself.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=max_body_bytes,
        path_limits=dict.fromkeys(OTLP_PATHS, max(MAX_OTLP_BYTES, max_body_bytes)),
    )
    app.add_middleware(
        JsonContentTypeMiddleware, prefix=API_PREFIX, exempt_paths=frozenset(OTLP_PATHS)
    )
    app.add_middleware(
        ApiKeyMiddleware,
        api_keys=tuple(api_keys),
        protected_prefix=API_PREFIX,
        public_paths=frozenset(HEALTH_PATHS),
        protected_paths=frozenset(OTLP_PATHS),
    )
    if not api_keys:
        app.add_middleware(KeylessGuardMiddleware, listen_hosts=listen_hosts)
        app.keyless = True
    if fast_log:
        app.fast_log = FastLogFront(
            store=store,
            prefix=API_PREFIX,
            status_field_default=status_field_default,
            api_keys=ApiKeys(api_keys),
            max_body_bytes=max_body_bytes,
            keyless=None if api_keys else KeylessGuardMiddleware(app, listen_hosts=listen_hosts),
        )
    return app
