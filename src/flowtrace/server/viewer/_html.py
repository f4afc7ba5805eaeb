"""HTML primitives for the viewer's server-rendered pages.

Every value that reaches a page passes through `esc` (text and attribute values alike): logs
hold untrusted text. The layout carries no inline script or style, so the pages' strict
Content-Security-Policy holds and even an escaping bug could not run a script.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

__all__ = ["STATIC_PREFIX", "esc", "layout", "link", "table", "url"]

STATIC_PREFIX = "/ui/static"


def esc(value: object) -> str:
    """Text or attribute value, escaped (quotes included)."""
    return html.escape(str(value), quote=True)


def url(path: str, params: Mapping[str, str | int | None] | None = None) -> str:
    """A viewer URL with its query string; empty parameters are left out."""
    kept = {key: str(value) for key, value in (params or {}).items() if value not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


def link(href: str, text: str, *, css_class: str = "") -> str:
    class_attr = f' class="{esc(css_class)}"' if css_class else ""
    return f'<a href="{esc(href)}"{class_attr}>{esc(text)}</a>'


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], *, empty: str) -> str:
    """A table of already-rendered cells (callers escape what they put in them)."""
    head = "".join(f"<th>{esc(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def layout(title: str, body: str, *, script: str | None = None, data: str = "") -> str:
    """The page frame: nav, stylesheet, an optional script file from the package.

    `data` is pre-escaped `data-*` attributes for <body>, the way pages hand values to their
    script without inline code.
    """
    script_tag = f'<script src="{STATIC_PREFIX}/{esc(script)}" defer></script>' if script else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)} · flowtrace</title>"
        f'<link rel="stylesheet" href="{STATIC_PREFIX}/viewer.css">{script_tag}</head>'
        f"<body{data}>"
        '<nav><a class="brand" href="/">flowtrace</a>'
        '<a href="/">Flows</a><a href="/logs">Logs</a></nav>'
        f"<main>{body}</main></body></html>\n"
    )
