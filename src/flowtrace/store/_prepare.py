"""Turn a request into what the store writes, before taking the write lock.

All the per-log CPU work (model dumps, JSON encoding, the replay digest) happens here, outside
the lock, so concurrent requests spend the lock only on SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowtrace._contract import (
    COMPLETE,
    DEFAULT_STATUS_FIELD,
    FLOW,
    INCOMPLETE,
    PAYLOAD_FIELDS,
    PROMPT,
    STATUS_FIELDS,
    TOOL,
    LogKind,
    StatusField,
    TraceStatus,
    wire_time_us,
)
from flowtrace.models import FlowLogRequest, LogQuery, PromptLogRequest, ToolLogRequest
from flowtrace.store._codec import canonical_json, compact_json, digest, to_us

__all__ = [
    "LogRequest",
    "PreparedLog",
    "kernel_of",
    "prepare_built",
    "prepare_fields",
    "prepare_log",
]

#: A request that creates a log, of any kind.
LogRequest = FlowLogRequest | PromptLogRequest | ToolLogRequest

# Request fields that are not data of the log itself: they route it (file, version, id) or
# become columns (times, status).
_COLUMN_FIELDS = frozenset(
    {"path", "id", "flow", "prompt", "tool", "log_id", "start_time", "end_time", *STATUS_FIELDS}
)
# A prompt sent as the text of a serialized prompt file is kept as that text.
PROMPT_FILE_KEY = "prompt_file"


@dataclass(slots=True)
class PreparedLog:
    request: LogRequest
    query: LogQuery | None
    request_digest: bytes
    start_us: int
    end_us: int | None
    complete: bool
    has_error: bool
    inputs: str | None
    output: str | None
    data: str
    status: TraceStatus
    status_field: StatusField
    # the kind of file the log goes to, and the version's kernel for prompts and tools (a
    # flow's version is its request's `flow.attributes`)
    kind: LogKind = FLOW
    kernel: dict[str, Any] | None = None


def _replay_identity(body: dict[str, Any], query: LogQuery | None, ordered: bool = False) -> bytes:
    """Digest of the canonical request: the body and, when given, its targeting query (the
    same log_id aimed at another version is a different request). `ordered`: the body's key
    order is already canonical (built by flowtrace in a fixed order), so the fast encoder does."""
    targeting = query.model_dump(exclude_none=True) if query is not None else {}
    identity: dict[str, Any] = {"body": body, "query": targeting} if targeting else body
    return digest(compact_json(identity) if ordered else canonical_json(identity))


def kernel_of(request: LogRequest) -> tuple[LogKind, dict[str, Any] | None]:
    """The log's kind, and the kernel that identifies a prompt's or a tool's version."""
    if isinstance(request, PromptLogRequest):
        prompt = request.prompt
        if isinstance(prompt, str):
            return PROMPT, {PROMPT_FILE_KEY: prompt}
        return PROMPT, prompt.model_dump(mode="json", exclude_none=True) if prompt else {}
    if isinstance(request, ToolLogRequest):
        tool = request.tool
        return TOOL, tool.model_dump(mode="json", exclude_none=True) if tool else {}
    return FLOW, None


def prepare_log(
    request: LogRequest, query: LogQuery | None, now_us: int, now_wire: str | None = None
) -> PreparedLog:
    """`now_wire` is `now_us` in wire form, passed by a batch that formats it once."""
    body = request.model_dump(mode="json", exclude_unset=True)
    kind, kernel = kernel_of(request)
    start_us = to_us(request.start_time) if request.start_time is not None else None
    end_us = to_us(request.end_time) if request.end_time is not None else None
    return prepare_fields(
        request,
        body,
        query,
        kind,
        kernel,
        start_us,
        end_us,
        now_us,
        now_wire,
        _replay_identity(body, query),
    )


def prepare_built(
    request: LogRequest,
    body: dict[str, Any],
    kind: LogKind,
    kernel: dict[str, Any] | None,
    start_us: int | None,
    end_us: int | None,
    now_us: int,
    now_wire: str | None = None,
) -> PreparedLog:
    """A log whose JSON `body` flowtrace built itself, valid by construction (the span
    mapping's: tests/test_span_mapping.py checks that what it builds validates), so pydantic's
    validation and dump are skipped. `request` needs only the routing fields (path, id,
    log_id, trace_parent_id, and a flow's `flow`), e.g. made with `model_construct`. Its keys
    come in a fixed order (the same span gives the same body, key for key), so the replay
    digest is taken without sorting them."""
    return prepare_fields(
        request,
        body,
        None,
        kind,
        kernel,
        start_us,
        end_us,
        now_us,
        now_wire,
        _replay_identity(body, None, ordered=True),
    )


def prepare_fields(
    request: LogRequest,
    body: Mapping[str, Any],
    query: LogQuery | None,
    kind: LogKind,
    kernel: dict[str, Any] | None,
    start: int | None,
    end: int | None,
    now_us: int,
    now_wire: str | None,
    request_digest: bytes,
) -> PreparedLog:
    """The columns and stored JSON of a log from its request's JSON `body` (however that was
    had: a model's dump, a body flowtrace built) and its replay digest."""
    stored = {
        key: value for key, value in body.items() if value is not None and key not in _COLUMN_FIELDS
    }
    if body.get("save") is False:
        stored = {key: value for key, value in stored.items() if key not in PAYLOAD_FIELDS}
    if "created_at" not in stored:
        stored["created_at"] = now_wire or wire_time_us(now_us)
    inputs = stored.pop("inputs", None)
    output = stored.pop("output", None)
    status_field = next((name for name in STATUS_FIELDS if name in body), DEFAULT_STATUS_FIELD)
    # A flow log stays open until completed; a prompt or tool call is logged once it is done
    # (the original API's prompts.log and tools.log name no status).
    status: TraceStatus = body.get(status_field) or (INCOMPLETE if kind == FLOW else COMPLETE)
    complete = status == COMPLETE
    start_us = start if start is not None else now_us
    end_us = end
    if complete and end_us is None:
        end_us = max(now_us, start_us)  # a closed log has an end; the server's clock is all we have
    return PreparedLog(
        request=request,
        query=query,
        request_digest=request_digest,
        start_us=start_us,
        end_us=end_us,
        complete=complete,
        has_error="error" in stored,
        inputs=compact_json(inputs) if inputs is not None else None,
        output=output,
        data=compact_json(stored),
        status=status,
        status_field=status_field,
        kind=kind,
        kernel=kernel,
    )
