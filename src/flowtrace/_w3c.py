"""W3C Trace Context (https://www.w3.org/TR/trace-context/) and flowtrace's ids in it.

One job: the wire form. Log ids become W3C/OpenTelemetry ids deterministically (a trace's id
from its root log's id, a span's id from its log's id), so the `traceparent` a service sends,
the spans the OTLP export writes and the logs in the store all name the same things. Incoming
headers are untrusted: only `traceparent` and the `flowtrace` member of `tracestate` are read,
each bounded in length and checked against its grammar; anything else is ignored.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from flowtrace._contract import SPAN_LOG_ID_PREFIX

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "TRACESTATE_KEY",
    "RemoteContext",
    "format_traceparent",
    "format_tracestate",
    "is_log_id",
    "parse_headers",
    "span_id_of",
    "trace_id_of",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
TRACESTATE_KEY: Final = "flowtrace"  # our member of tracestate: `flowtrace=<log id>`

#: Bounds on what is read of the headers (tracestate holds at most 32 members of at most 256
#: characters each by the spec; more is not tracestate).
MAX_TRACEPARENT_CHARS: Final = 256
MAX_TRACESTATE_CHARS: Final = 32 * 257
MAX_TRACESTATE_MEMBERS: Final = 32
MAX_LOG_ID_CHARS: Final = 128

_SAMPLED_FLAG: Final = 0x01
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A later version may append fields after a dash: its first four fields are read as 00's.
_TRACEPARENT_LATER = re.compile(
    r"(?!ff)[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?"
)
#: A log id as flowtrace and the store make them (and a tracestate value may carry: no `,` `=`
#: nor spaces).
_LOG_ID = re.compile(rf"[A-Za-z0-9_.:\-]{{1,{MAX_LOG_ID_CHARS}}}")
_SPAN_LOG_ID = re.compile(re.escape(SPAN_LOG_ID_PREFIX) + r"([0-9a-f]{32})_([0-9a-f]{16})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


# --- ids -------------------------------------------------------------------------------------


def _digest_hex(kind: bytes, log_id: str, hex_digits: int) -> str:
    data = kind + b"\0" + log_id.encode("utf-8", "surrogatepass")
    value = hashlib.sha256(data).hexdigest()[:hex_digits]
    if value.count("0") == hex_digits:  # all zeros is W3C's "invalid": never produced
        value = value[:-1] + "1"
    return value


# Cached: a flow sending many requests, and every log of a trace, asks for the same ids again.
@functools.lru_cache(maxsize=4096)
def trace_id_of(root_log_id: str) -> str:
    """The W3C trace-id (32 hex digits) of the trace whose root log is `root_log_id`. A log
    made from a span (`span_<trace>_<span>`) keeps the span's own ids."""
    if root_log_id.startswith(SPAN_LOG_ID_PREFIX):
        found = _SPAN_LOG_ID.fullmatch(root_log_id)
        if found:
            return found.group(1)
    return _digest_hex(b"trace", root_log_id, 32)


@functools.lru_cache(maxsize=4096)
def span_id_of(log_id: str) -> str:
    """The W3C parent-id / OpenTelemetry span id (16 hex digits) of the log `log_id`."""
    if log_id.startswith(SPAN_LOG_ID_PREFIX):
        found = _SPAN_LOG_ID.fullmatch(log_id)
        if found:
            return found.group(2)
    return _digest_hex(b"span", log_id, 16)


def is_log_id(text: str) -> bool:
    return _LOG_ID.fullmatch(text) is not None


# --- outgoing ----------------------------------------------------------------------------------


def format_traceparent(trace_id: str, span_id: str, sampled: bool) -> str:
    return f"00-{trace_id}-{span_id}-{_SAMPLED_FLAG if sampled else 0:02x}"


def format_tracestate(log_id: str) -> str:
    return f"{TRACESTATE_KEY}={log_id}"


# --- incoming ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteContext:
    """What valid incoming headers said: the caller's trace and span, its sampling flag, and
    its flowtrace log id when `tracestate` named one that matches the `traceparent` (its
    span id is that log's: a stale or foreign entry is not followed)."""

    trace_id: str
    span_id: str
    sampled: bool
    log_id: str | None


def parse_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> RemoteContext | None:
    """The caller's context from its headers (names case-insensitive; a mapping, or pairs as an
    ASGI scope or httpx gives them, repeated names allowed); None when `traceparent` is absent,
    repeated or invalid."""
    traceparent: list[str] = []
    tracestate: list[str] = []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        lowered = name.lower() if isinstance(name, str) else ""
        if lowered == TRACEPARENT:
            traceparent.append(value)
        elif lowered == TRACESTATE and len(tracestate) <= MAX_TRACESTATE_MEMBERS:
            tracestate.append(value)
    if len(traceparent) != 1:
        return None
    parsed = _parse_traceparent(traceparent[0])
    if parsed is None:
        return None
    trace_id, span_id, sampled = parsed
    log_id = _flowtrace_member(tracestate)
    if log_id is not None and span_id_of(log_id) != span_id:
        log_id = None  # another vendor moved the trace on, or the entry is forged: not ours
    return RemoteContext(trace_id, span_id, sampled, log_id)


def _parse_traceparent(value: object) -> tuple[str, str, bool] | None:
    if not isinstance(value, str) or len(value) > MAX_TRACEPARENT_CHARS:
        return None
    value = value.strip(" \t")
    found = _TRACEPARENT_00.fullmatch(value) or (
        None if value.startswith("00") else _TRACEPARENT_LATER.fullmatch(value)
    )
    if found is None:
        return None
    trace_id, span_id, flags = found.group(1), found.group(2), int(found.group(3), 16)
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, bool(flags & _SAMPLED_FLAG)


def _flowtrace_member(values: list[str]) -> str | None:
    """The value of the one `flowtrace=` member of tracestate (several: none is believed)."""
    combined = ",".join(v for v in values if isinstance(v, str))
    if len(combined) > MAX_TRACESTATE_CHARS:
        return None
    found: list[str] = []
    for member in combined.split(",")[: MAX_TRACESTATE_MEMBERS + 1]:
        key, equals, value = member.strip(" \t").partition("=")
        if equals and key == TRACESTATE_KEY:
            found.append(value)
    if len(found) != 1 or not is_log_id(found[0]):
        return None
    return found[0]
