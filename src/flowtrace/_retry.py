"""The retry policy: which failures are worth retrying, how long to wait, and how to say why a
log was refused. Pure functions, so the policy is tested exactly without a network or a clock.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "NOT_DELIVERED",
    "RETRYABLE_STATUSES",
    "backoff_delay_s",
    "describe_rejection",
    "is_retryable",
    "parse_retry_after",
]

#: The status an Outcome carries when no HTTP answer came back (connection refused or reset,
#: timeout, garbage, or the operation was not attempted because an earlier one failed).
NOT_DELIVERED = 0

#: Answers that a later attempt may turn into a success (docs/architecture.md, "Defaults").
RETRYABLE_STATUSES = frozenset({NOT_DELIVERED, 408, 429, 502, 503, 504})

#: One backoff sleep never exceeds this, however many attempts came before (seconds).
MAX_BACKOFF_S = 30.0


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES


def backoff_delay_s(attempt: int, base_s: float, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt + 1`: base * 2^attempt * U(0.8, 1.2).
    The jitter keeps many clients that failed together from retrying together."""
    exponent = min(attempt, 16)  # 2^16 * base is already far beyond MAX_BACKOFF_S
    delay: float = min(MAX_BACKOFF_S, base_s * 2.0**exponent) * rng.uniform(0.8, 1.2)
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: either delta-seconds or an HTTP-date. None when
    absent or unreadable (then the normal backoff applies)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now if now is not None else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())


def describe_rejection(status: int, body: Any) -> tuple[str, str]:
    """(key, message) for a refused operation. The message names the field or the reason from
    the server's error body; the key groups refusals that deserve a single warning."""
    detail = body.get("detail") if isinstance(body, Mapping) else None
    if isinstance(detail, list) and detail:
        problems = [_describe_problem(item) for item in detail[:3]]
        fields = ",".join(field for field, _ in problems)
        text = "; ".join(f"{field}: {msg}" if field else msg for field, msg in problems)
        return f"{status}:{fields}", f"{status} {text}"
    if isinstance(detail, str) and detail:
        return f"{status}:{detail[:80]}", f"{status} {detail[:500]}"
    reason = _STATUS_REASONS.get(status, "refused")
    return f"{status}", f"{status} {reason}"


def _describe_problem(item: Any) -> tuple[str, str]:
    if not isinstance(item, Mapping):
        return "", str(item)[:200]
    location = item.get("loc")
    field = ".".join(str(part) for part in location) if isinstance(location, list) else ""
    return field, str(item.get("msg", "invalid"))[:200]


_STATUS_REASONS = {
    400: "malformed request",
    401: "unauthorized (check the api_key setting / FLOWTRACE_API_KEY)",
    403: "forbidden",
    404: "not found (check the base_url setting / FLOWTRACE_BASE_URL)",
    409: "conflict",
    413: "request body too large",
    422: "invalid request",
    500: "internal server error",
}
