"""RFC 7240's `Prefer` request header: whether a client asked for an update's minimal answer
(`return=minimal`, see `flowtrace._contract.PREFER_HEADER`)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Scope

from flowtrace._contract import PREFER_HEADER, PREFERENCE_APPLIED_HEADER, RETURN_MINIMAL

__all__ = [
    "MINIMAL_APPLIED",
    "MINIMAL_APPLIED_RAW",
    "header_prefers_minimal",
    "prefers_minimal",
    "scope_prefers_minimal",
]

#: The answer's header saying the preference was honoured; as ASGI sends it (`_RAW`).
MINIMAL_APPLIED = {PREFERENCE_APPLIED_HEADER: RETURN_MINIMAL}
MINIMAL_APPLIED_RAW = tuple(
    (name.lower().encode("latin-1"), value.encode("latin-1"))
    for name, value in MINIMAL_APPLIED.items()
)

_PREFER_KEY = PREFER_HEADER.lower().encode("latin-1")
_RETURN, _MINIMAL = RETURN_MINIMAL.split("=")


def prefers_minimal(values: Iterable[str]) -> bool:
    """Whether these `Prefer` header values ask for `return=minimal`: preferences are comma
    separated, each `name[=value]` with `;`-parameters after it; names are case-insensitive
    and a value may be quoted."""
    for value in values:
        for preference in value.split(","):
            name, _, setting = preference.partition(";")[0].partition("=")
            if name.strip().lower() == _RETURN and setting.strip().strip('"') == _MINIMAL:
                return True
    return False


def header_prefers_minimal(value: str | None) -> bool:
    """`prefers_minimal` of one `Prefer` header as a route parameter gets it (None: absent)."""
    return value is not None and prefers_minimal([value])


def scope_prefers_minimal(scope: Scope) -> bool:
    """`prefers_minimal` of an ASGI request's `Prefer` headers."""
    return prefers_minimal(
        bytes(value).decode("latin-1") for key, value in scope["headers"] if key == _PREFER_KEY
    )
