"""Delivery accounting: one set of counters, in logs (never operations), and the warnings that
report them, so that what is said on the `flowtrace` logger and what `stats()` says agree.

Every log the pipeline accepts is, at any time, in exactly one of: `held` (in memory: open,
waiting, or in flight), `spooled` (its closing operation is on disk, to be delivered later),
`sent`, `left_open` (still open at shutdown: it was delivered early, as incomplete), or
`dropped[reason]`. Logs refused on the call path (before being accepted) are counted
in `dropped` too. The warnings say "log(s)", count logs, and say where a log went, once per kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters", "Warnings", "logger"]

logger = logging.getLogger("flowtrace")


@dataclass
class Counters:
    """Delivery counters, written under the pipeline's lock (by its worker and sender)."""

    held: int = 0  # logs accepted and in memory (open, waiting, or in flight)
    spooled: int = 0  # logs whose closing operation waits on disk (this process's and claimed)
    sent: int = 0  # logs whose closing operation the destination accepted
    left_open: int = 0  # logs still open at shutdown: delivered early, as incomplete
    retried: int = 0  # operations sent again after a retryable failure
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count


#: Why a log was dropped, as a warning says it (the keys are the `stats()["dropped"]` reasons).
DROP_REASONS = {
    "queue_full": "the delivery queue was full and there was no spool to take the overflow",
    "parent_dropped": "their parent log was dropped",
    "shutdown": "flowtrace was shut down before they could be delivered or spooled",
    "rejected": "the destination refused them",
    "retry_deadline": "the destination did not take them within retry_deadline_s and there "
    "was no spool to keep them",
    "encode_error": "they could not be encoded (an internal error)",
    "internal_error": "planning their delivery failed (an internal error, reported once)",
    "spool_full": "the spool was at its size bound (spool_max_mib)",
    "spool_expired": "they waited in the spool longer than spool_max_age_s",
}


class Warnings:
    """One warning per kind (a key), on the flowtrace logger; further ones are only counted."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def once(self, key: str, message: str, *args: Any) -> bool:
        if key in self._said:
            return False
        if len(self._said) < 1000:
            self._said.add(key)
        logger.warning(message, *args)
        return True

    def dropped(self, reason: str, count: int, last_error: str | None) -> None:
        """`count` logs were dropped for `reason` (said once per reason)."""
        why = DROP_REASONS.get(reason, reason)
        detail = f"; last error: {last_error}" if last_error and reason != "parent_dropped" else ""
        self.once(
            f"dropped:{reason}",
            "flowtrace: %d log(s) dropped: %s%s. Further drops are only counted in "
            "flowtrace.stats()['dropped'].",
            count,
            why,
            detail,
        )
