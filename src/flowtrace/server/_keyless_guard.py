"""A server without API keys answers only requests meant for it from this machine.

Without keys the only protection is that the server listens on loopback, and a browser on
this machine can be turned against it. A page whose domain re-resolves to 127.0.0.1 (DNS
rebinding) is the server's own origin in the browser's eyes: it may read every log and delete
them. Any page may send the server a request (CSRF). Browsers always say what they think they
are talking to and for whom: `Host` carries the page's domain, and `Origin` (sent on every
POST and every cross-origin request) the page's origin. So, without keys:

- `Host` must name this machine: `localhost`, an address in 127.0.0.0/8, `[::1]`, or the
  address the server was told to listen on. Anything else is refused with 403.
- `Origin`, when sent, must be the server's own (`http://` and the request's Host); anything
  else is refused with 403, `null` too (the origin of sandboxed frames, local files and pages
  that hide their referrer).

A request with neither header (HTTP/1.0 tools, scripts) is no browser's and passes: what can
reach loopback is trusted, as before. With keys this middleware is not installed: a browser
never sends an `X-API-KEY` it was not told to, and the viewer's Basic credentials are kept
per origin, so neither reaches a rebound or foreign page.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ._headers import first_header
from ._loopback import is_loopback

__all__ = ["KeylessGuardMiddleware", "host_name"]

# RFC 9110 `Host = uri-host [ ":" port ]`, an IPv6 literal in brackets.
_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]*))(?::[0-9]*)?", re.ASCII)


class KeylessGuardMiddleware:
    def __init__(self, app: ASGIApp, *, listen_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self._listen_hosts = frozenset(host.strip("[]").lower() for host in listen_hosts)
        # Parsing an address costs ~5 us, and a server hears the same few Host values: the
        # verdicts are kept (bounded, so a client sending new names costs only time).
        self._is_local = functools.lru_cache(maxsize=64)(self._judge_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused (the 403's detail), or None to serve it."""
        host = first_header(scope, b"host")
        if host is not None and not self._is_local(host):
            return (
                f"Host {host.decode('latin-1')!r} is not served: without an API key this "
                "server answers only to localhost, 127.0.0.1 or [::1] (start it with "
                "--api-key to serve other names)"
            )
        origin = first_header(scope, b"origin")
        if origin is not None and not _is_own_origin(origin, host, scope.get("scheme", "http")):
            return (
                f"cross-origin request refused: Origin {origin.decode('latin-1')!r} is not "
                "this server's (without an API key only its own pages may call it)"
            )
        return None

    def _judge_host(self, host: bytes) -> bool:
        name = host_name(host.decode("latin-1"))
        return name is not None and (is_loopback(name) or name in self._listen_hosts)


def host_name(host: str) -> str | None:
    """The host of a `Host` header value, lowercase, without brackets or port; None when the
    value is not `host[:port]` (an IPv6 address must be bracketed)."""
    found = _HOST_PORT.fullmatch(host.lower())
    if found is None:
        return None
    return found.group("ipv6") or found.group("name") or None


def _is_own_origin(origin: bytes, host: bytes | None, scheme: str) -> bool:
    # Browsers serialize Origin and Host from the same URL (lowercase, default port left
    # out), so the server's own origin is exactly the scheme and the Host.
    return host is not None and origin.lower() == f"{scheme}://".encode() + host.lower()
