"""The web viewer: read-only pages over the store, mounted on the log server's app.

`mount_viewer` adds the pages (`_pages`, rendered by the Jinja2 templates in `templates/`), the
trace JSON their script draws (`_trace_json`) and the static files (`static/`). The API routes
live apart, in `flowtrace.server`.
"""

from __future__ import annotations

from flowtrace.server.viewer._routes import (
    PAGE_SIZE,
    SEARCH_WINDOW,
    SECURITY_HEADERS,
    mount_viewer,
)

__all__ = ["PAGE_SIZE", "SEARCH_WINDOW", "SECURITY_HEADERS", "mount_viewer"]
