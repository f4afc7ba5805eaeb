"""Small conversions shared by reads and writes: times, canonical JSON, digests, ids."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic_core import to_json

__all__ = [
    "DIGEST_SIZE",
    "canonical_json",
    "compact_json",
    "digest",
    "from_us",
    "new_id",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def to_us(value: datetime) -> int:
    """Microseconds since the epoch: exact (no float rounding) and cheap to compare and index."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


# Built once: json.dumps with options builds a new encoder per call. ensure_ascii=False keeps
# non-ASCII text searchable as typed.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """One text per JSON value whatever the key order: the basis of identity and replay checks."""
    return _CANONICAL.encode(value)


def compact_json(value: Any) -> str:
    """JSON text where key order does not matter (stored payloads): pydantic-core's encoder,
    ten times the speed of the json module's."""
    return to_json(value).decode("utf-8")


#: 128-bit fingerprints: small in an index, collisions beyond any practical concern.
DIGEST_SIZE = 16


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_SIZE).digest()


def new_id(prefix: str) -> str:
    """Server-side id: time-ordered prefix (index locality for inserts) plus 64 random bits."""
    return f"{prefix}_{time.time_ns() // 1000:014x}{os.urandom(8).hex()}"
