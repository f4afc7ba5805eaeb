"""Turn a request into what the store writes, before taking the write lock.

All the per-log CPU work (model dumps, JSON encoding, the replay digest) happens here, outside
the lock, so concurrent requests spend the lock only on SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from pydantic_core import to_json

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
from flowtrace.store._codec import DIGEST_SIZE, compact_json, to_us

if TYPE_CHECKING:  # the wire models: the embedded path writes without importing them
    from flowtrace.models import FlowLogRequest, LogQuery, PromptLogRequest, ToolLogRequest

__all__ = [
    "ROUTING_FIELDS",
    "BodyLayout",
    "Kernel",
    "LogRequest",
    "ModelRequest",
    "PreparedLog",
    "Routing",
    "TargetQuery",
    "Targeting",
    "body_layout",
    "kernel_of",
    "prepare_built",
    "prepare_fields",
    "prepare_log",
]


class Kernel(NamedTuple):
    """A flow's version, as a request gives it (`flow.attributes`)."""

    attributes: dict[str, Any] | None


class Routing(NamedTuple):
    """What the trace rules read of a create's request (`ROUTING_FIELDS`), when there is no
    request model: the embedded path's creates (`_ingest`)."""

    log_id: str | None
    path: str | None
    id: str | None
    trace_parent_id: str | None
    flow: Kernel | None


class Targeting(NamedTuple):
    """What aims a create at a version (`LogQuery`'s fields), without the model."""

    version_id: str | None = None
    environment: str | None = None


#: A request model that creates a log, of any kind.
ModelRequest: TypeAlias = "FlowLogRequest | PromptLogRequest | ToolLogRequest"
#: What the trace rules read of a create: its model, or the embedded path's `Routing`.
LogRequest: TypeAlias = "ModelRequest | Routing"
#: The query that aims it at a version.
TargetQuery: TypeAlias = "LogQuery | Targeting"

# Request fields that are not data of the log itself: they route it (file, version, id) or
# become columns (times, status).
_COLUMN_FIELDS = frozenset(
    {"path", "id", "flow", "prompt", "tool", "log_id", "start_time", "end_time", *STATUS_FIELDS}
)
#: What the trace rules read of a create's request (`create_log`): the fields that route it.
ROUTING_FIELDS = frozenset({"log_id", "path", "id", "trace_parent_id", "flow"})
#: The column fields in a fixed order, for the replay digest.
_IDENTITY_FIELDS = tuple(sorted(_COLUMN_FIELDS))
# A prompt sent as the text of a serialized prompt file is kept as that text.
PROMPT_FILE_KEY = "prompt_file"


@dataclass(slots=True)
class PreparedLog:
    request: LogRequest
    query: TargetQuery | None
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


def kernel_of(request: ModelRequest) -> tuple[LogKind, dict[str, Any] | None]:
    """The log's kind, and the kernel that identifies a prompt's or a tool's version."""
    from flowtrace.models import PromptLogRequest, ToolLogRequest  # (a request from outside)

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
    request: ModelRequest, query: LogQuery | None, now_us: int, now_wire: str | None = None
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
        query.model_dump(exclude_none=True) if query is not None else None,
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
    log_id, trace_parent_id, and a flow's `flow`), e.g. made with `model_construct`."""
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
        None,
    )


def prepare_fields(
    request: LogRequest,
    body: Mapping[str, Any],
    query: TargetQuery | None,
    kind: LogKind,
    kernel: dict[str, Any] | None,
    start: int | None,
    end: int | None,
    now_us: int,
    now_wire: str | None,
    targeting: Mapping[str, Any] | None,
    layout: BodyLayout | None = None,
) -> PreparedLog:
    """The columns and stored JSON of a log from its request's JSON `body` (however that was
    had: a model's dump, a body flowtrace built), and its replay digest (`targeting`: the
    query's fields that aim it at a version, if any; `layout`: the body's, if the caller has
    it already)."""
    if layout is None:
        layout = body_layout(body)
    stored = {key: body[key] for key in layout.stored_keys}
    if None in stored.values():  # rare: a null is not stored
        stored = {key: value for key, value in stored.items() if value is not None}
    unsaved: dict[str, Any] | None = None
    if body.get("save") is False:  # (an empty dict even without payloads: in the digest)
        unsaved = {key: stored.pop(key) for key in layout.unsaved if key in stored}
    inputs = stored.pop("inputs", None)
    output = stored.pop("output", None)
    inputs_json = compact_json(inputs) if inputs is not None else None
    data = compact_json(stored)
    request_digest = _replay_digest(body, targeting, inputs_json, output, data, unsaved)
    if "created_at" not in stored:  # the store's clock, not the request's: not in the digest
        stamp = now_wire or wire_time_us(now_us)
        data = f'{data[:-1]}{"," if stored else ""}"created_at":"{stamp}"}}'
    status_field = layout.status_field
    # A flow log stays open until completed; a prompt or tool call is logged once it is done
    # (the original API's prompts.log and tools.log name no status).
    status: TraceStatus = body.get(status_field) or (INCOMPLETE if kind == FLOW else COMPLETE)
    complete = status == COMPLETE
    start_us = start if start is not None else now_us
    end_us = end
    if complete and end_us is None:
        end_us = max(now_us, start_us)  # a closed log has an end; the server's clock is all we have
    return PreparedLog(  # positionally: this runs for every log a store takes
        request,
        query,
        request_digest,
        start_us,
        end_us,
        complete,
        "error" in stored,
        inputs_json,
        output,
        data,
        status,
        status_field,
        kind,
        kernel,
    )


@dataclass(frozen=True, slots=True)
class BodyLayout:
    """What a body's set of keys says, the same for every body with those keys (in that
    order): the keys stored as data, sorted; the payload keys among them (for `save=false`);
    the status field it names; its routing keys (what `create_log` reads of a request)."""

    stored_keys: tuple[str, ...]
    unsaved: tuple[str, ...]
    status_field: StatusField
    routing: tuple[str, ...]


_layouts: dict[tuple[str, ...], BodyLayout] = {}
_MAX_LAYOUTS = 1024  # bodies come in a few shapes; a client sending many is not kept up with


def body_layout(body: Mapping[str, Any]) -> BodyLayout:
    """The body's `BodyLayout`, memoized by its keys: every log of a function has the same ones."""
    keys = tuple(body)
    layout = _layouts.get(keys)
    if layout is None:
        stored = tuple(sorted(key for key in keys if key not in _COLUMN_FIELDS))
        status_field = next((name for name in STATUS_FIELDS if name in keys), DEFAULT_STATUS_FIELD)
        unsaved = tuple(key for key in stored if key in PAYLOAD_FIELDS)
        routing = tuple(key for key in keys if key in ROUTING_FIELDS)
        layout = BodyLayout(stored, unsaved, status_field, routing)
        if len(_layouts) >= _MAX_LAYOUTS:
            _layouts.clear()
        _layouts[keys] = layout
    return layout


def _replay_digest(
    body: Mapping[str, Any],
    targeting: Mapping[str, Any] | None,
    inputs_json: str | None,
    output: str | None,
    data: str,
    unsaved: dict[str, Any] | None,
) -> bytes:
    """What makes a create the same request again: its column fields, the query aiming it at
    a version, and its payloads, from the JSON already encoded for storing them (so the body
    is not encoded twice). The same body by any path has the same digest; keys are sorted at
    the top level (where the paths order them differently), nested values keep their order
    (a retried request is the same text)."""
    columns = list(map(body.get, _IDENTITY_FIELDS))  # map: no Python frame per field
    identity = (columns, targeting or None, inputs_json, output, data, unsaved)
    return blake2b(to_json(identity), digest_size=DIGEST_SIZE).digest()
