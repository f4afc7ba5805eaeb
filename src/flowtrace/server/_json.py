"""Strict JSON for request bodies: what the server accepts it can always send back.

Python's `json` module accepts `NaN` and `Infinity` and lone UTF-16 surrogates; a log stored
with them could never be answered as valid JSON (the read would fail with a 500). So bodies are
parsed with pydantic-core, which refuses those, and any number that still overflows to infinity
(`1e400`) is refused too. A refusal is a `json.JSONDecodeError`, which FastAPI reports as a
`json_invalid` validation error and `_errors` answers as 400 Malformed JSON.

What counts as a JSON body is said here once too (`is_json_media_type`): `_content_type`
refuses writes declared otherwise, and `_fast_log` reads bodies as FastAPI does.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from pydantic_core import PydanticSerializationError, from_json, to_json
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["StrictJsonRoute", "dump_json", "is_json_media_type", "parse_json"]

# A JSON number can only overflow a float (to inf) with an exponent of 100 or more, or with a
# long run of digits. Bodies without either (almost all) skip the walk over the parsed value;
# a match (perhaps inside a string) only means the walk runs.
_MAY_OVERFLOW = re.compile(rb"[eE]\+?0*[1-9][0-9]{2}|[0-9]{200}")


def parse_json(body: bytes) -> Any:
    """Parse a request body, raising `json.JSONDecodeError` on anything not strictly JSON."""
    try:
        value = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), _as_text(body), 0) from exc
    if _MAY_OVERFLOW.search(body) and _has_non_finite(value):
        raise json.JSONDecodeError("number out of range", _as_text(body), 0)
    return value


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, with any parameters (charset...):
    FastAPI's own test, so every route agrees on what a JSON body is."""
    if content_type == "application/json":  # what every client sends: skip the parse
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _as_text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(item) for item in value)
    return False


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose handler parses bodies with `parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict_handler


def dump_json(value: Any) -> bytes:
    """JSON for an answer, at any depth: pydantic-core's fast encoder, or where a value is
    nested deeper than it goes (a deep trace's records), an encoder without recursion."""
    try:
        return to_json(value)
    except PydanticSerializationError:
        return _dump_iteratively(value).encode("utf-8")


class _Text(str):
    """JSON text already written (punctuation), as opposed to a string value to encode."""


def _dump_iteratively(value: Any) -> str:
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            if not item:
                out.append("{}")
                continue
            stack.append(_Text("}"))
            entries = list(item.items())
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                stack.append(child)
                separator = "," if index else "{"
                stack.append(_Text(separator + to_json(str(key)).decode("utf-8") + ":"))
        elif isinstance(item, (list, tuple)):
            if not item:
                out.append("[]")
                continue
            stack.append(_Text("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                stack.append(_Text("," if index else "["))
        else:
            out.append(to_json(item).decode("utf-8"))
    return "".join(out)
