"""Where the pipeline's wire operations go: the small protocol every exporter implements.

The pipeline decides *what* to send and in which order (`Operation`s: a create or an update of
one log); an exporter only carries them to a destination and reports, per operation, what
happened (`Outcome`). Exporters never raise for delivery failures: a connection error is an
Outcome with status `NOT_DELIVERED` (0), which the pipeline retries.

Besides `export` and `close`, an exporter may have:
- `destination: str | None`: a stable name of where it delivers (`http:<base_url>...`,
  `store:<path>`); the pipeline keeps one spool per destination, and none without a name.
- `interrupt()`: called from another thread to end an export in progress early (at exit); the
  interrupted operations are reported `NOT_DELIVERED`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from flowtrace._contract import BATCH_PROMPT_LOG, BATCH_TOOL_LOG, BATCH_UPDATE, BatchOp
from flowtrace._retry import NOT_DELIVERED

__all__ = ["FILE_LOG_KINDS", "NOT_DELIVERED", "Exporter", "Operation", "OperationKind", "Outcome"]

#: `log` creates a flow log, `prompt_log` and `tool_log` a prompt's or a tool's (a span's log:
#: `_span_bodies`), `update` closes a log created early.
OperationKind = BatchOp  # the batch extension's operation kinds (`_contract`)
#: Creates of a prompt's or a tool's log (in a batch only where the server says it takes them).
FILE_LOG_KINDS: frozenset[str] = frozenset({BATCH_PROMPT_LOG, BATCH_TOOL_LOG})

#: The query of an operation without one (shared: nobody changes a query).
NO_QUERY: dict[str, str] = {}


class Operation(NamedTuple):
    """One wire operation: `log` = `POST /flows/log` (with `query`), `prompt_log` =
    `POST /prompts/log`, `tool_log` = `POST /tools/log`, `update` = `PATCH /flows/logs/{log_id}`.
    Built once and reused unchanged by every retry, so a replay is byte-for-byte the same
    request and the store treats it as idempotent. (A tuple: cheap to make, one per log on the
    worker.)"""

    kind: OperationKind
    log_id: str
    body: dict[str, Any]
    query: dict[str, str] = NO_QUERY

    def to_batch_item(self) -> dict[str, Any]:
        """The operation as one item of the batch extension's `operations` list."""
        if self.kind == BATCH_UPDATE:
            return {"op": "update", "log_id": self.log_id, "body": self.body}
        item: dict[str, Any] = {"op": self.kind, "body": self.body}  # the kinds are the ops
        if self.query:
            item["query"] = self.query
        return item


@dataclass(frozen=True)
class Outcome:
    """What became of one operation: the HTTP status it had (0 = no answer), the response or
    error body, and how long the server asked us to wait (`Retry-After`), if it did."""

    status: int
    body: Any = None
    retry_after_s: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def not_delivered(error: str, count: int, retry_after_s: float | None = None) -> list[Outcome]:
    """`count` outcomes for operations that got no answer (or were not attempted)."""
    outcome = Outcome(NOT_DELIVERED, None, retry_after_s, error)
    return [outcome] * count


class Exporter(Protocol):
    """Carries operations to a destination, in order; one Outcome per operation, in order.
    `timeout_s`: answer within about this long (at exit), whatever the configured timeouts."""

    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]: ...

    def close(self) -> None: ...
