"""API-key authentication: the contract's `X-API-KEY` header (or `Authorization: Bearer <key>`,
as OTLP exporters are often configured), checked before anything else.

Pure ASGI so a refused request costs no body read, no routing and no validation. Only the
contract's routes (and the OTLP paths outside `/v5`) are protected; the health endpoint stays
public for probes.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ApiKeyMiddleware", "ApiKeys"]

API_KEY_HEADER = b"x-api-key"
AUTHORIZATION_HEADER = b"authorization"
_BEARER = b"bearer "


class ApiKeys:
    """The server's keys, and the check of the key a request presents."""

    def __init__(self, api_keys: Sequence[str]) -> None:
        # Bytes: hmac.compare_digest refuses str with non-ASCII characters, which a client
        # could send (header values arrive as latin-1).
        self._keys = tuple(key.encode("utf-8") for key in api_keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request's key is refused (the 401's detail), or None: a valid key."""
        presented = _header(scope, API_KEY_HEADER)
        if presented is None:
            authorization = _header(scope, AUTHORIZATION_HEADER)
            if authorization is not None and authorization[:7].lower() == _BEARER:
                presented = authorization[7:].strip()
        if presented is not None and self._is_valid(presented):
            return None
        return "missing X-API-KEY header" if presented is None else "invalid API key"

    def _is_valid(self, presented: bytes) -> bool:
        # Compare with every key, never stopping early, so timing says nothing about which.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(key, presented)
        return matched


class ApiKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str],
        protected_prefix: str,
        public_paths: frozenset[str],
        protected_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self._keys = ApiKeys(api_keys)
        self._prefix = protected_prefix
        self._public = public_paths
        self._protected_paths = protected_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        reason = self._keys.refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": reason}, status_code=401)(scope, receive, send)

    def _is_protected(self, path: str) -> bool:
        if not self._keys or path in self._public:
            return False
        if path in self._protected_paths:
            return True
        return path == self._prefix or path.startswith(self._prefix + "/")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None
