"""PLACEHOLDER until the serializer branch lands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JsonValue = Any


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int = 20
    max_string: int = 65536
    max_items: int = 1000
    max_bytes_prefix: int = 64


DEFAULT_LIMITS = Limits()


def snapshot(value: object, limits: Limits = DEFAULT_LIMITS) -> JsonValue:
    try:
        return json.loads(json.dumps(value, default=repr))
    except Exception:
        return repr(value)


def to_json(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
