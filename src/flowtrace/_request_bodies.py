"""Turn a Log into the contract's request bodies. Runs on the worker, never on the call path.

`create_body` is the `POST /flows/log` body (sent once, complete, for a log that has ended; or
early, incomplete, for a log that something needs to exist); `complete_body` is the
`PATCH /flows/logs/{id}` body that closes a log sent early.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from flowtrace._config import get_settings
from flowtrace._contract import (
    CHAT_MESSAGE_KEYS,
    CHAT_ROLES,
    COMPLETE,
    INCOMPLETE,
    PAYLOAD_FIELDS,
    RECORDER_ENDED,
    RECORDER_METADATA_KEY,
    RECORDER_REMOTE_PARENT,
    RECORDER_TRACEBACK,
    UPDATE_EXTENSION_FIELDS,
    StatusField,
    wire_time_us,
)
from flowtrace._log import UNSET, Log
from flowtrace._remote import RemoteParent, remote_note
from flowtrace._serialize import Limits, limits, snapshot, to_json

if TYPE_CHECKING:
    from flowtrace._span_logs import SpanLog

# The wire models (pydantic) are imported on the worker, when a chat message or an early-sent
# log first needs them: `import flowtrace` stays light, and most logs never need them.

__all__ = [
    "complete_body",
    "create_body",
    "log_query",
    "note_recorder",
    "resolve_inputs",
    "shape_output",
]

# --- snapshots that can be skipped -----------------------------------------------------------
# Most logs record a few scalar arguments and a scalar result, which `snapshot` would return
# unchanged. Recognising them costs a type check per value; the walk costs microseconds.

_INT_LIMIT = 1 << 1024  # as in _serialize: larger ints are recorded as text


def _kept_as_is(value: Any, max_string: int) -> bool:
    """`snapshot(value)` is `value` itself: None, a bool, an int json can write, a finite
    float, or a short ASCII string."""
    kind = type(value)
    if kind is str:
        return len(value) <= max_string and value.isascii()
    if kind is int:
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    if kind is float:
        return bool(value - value == 0.0)
    return value is None or kind is bool


def _snapshot_names(named: dict[str, Any], budget: Limits) -> Any:
    """The snapshot of arguments bound to their names: the dict itself when every value is
    kept as is (it is a fresh dict, no one else's)."""
    if budget.max_depth >= 1 and len(named) <= budget.max_items:
        max_string = budget.max_string
        for name, value in named.items():
            if not (name.isascii() and _kept_as_is(value, max_string)):
                break
        else:
            return named
    return snapshot(named, budget)


def _snapshot(value: Any, budget: Limits) -> Any:
    return value if _kept_as_is(value, budget.max_string) else snapshot(value, budget)


def _chat_message(value: Any) -> dict[str, Any] | None:
    """`value` as a contract ChatMessage dict if it is one (extra keys dropped), else None."""
    if not isinstance(value, dict) or value.get("role") not in CHAT_ROLES:
        return None
    if "content" not in value and "tool_calls" not in value:
        return None
    from pydantic import ValidationError

    from flowtrace import _lifecycle

    _lifecycle.import_fork_safely("flowtrace.models")  # (on the worker: a fork may come)
    from flowtrace.models import ChatMessage

    candidate = {k: value[k] for k in CHAT_MESSAGE_KEYS if value.get(k) is not None}
    try:
        return ChatMessage.model_validate(candidate).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return None


def _chat_messages(value: Any) -> list[dict[str, Any]] | None:
    if not isinstance(value, list) or not value:
        return None
    messages = [_chat_message(item) for item in value]
    if any(m is None for m in messages):
        return None
    return messages  # type: ignore[return-value]


def resolve_inputs(log: Log) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The log's inputs by name, and its chat messages (an input named `messages` that holds
    chat messages, or what the user set on `log.messages`)."""
    inputs: Any = None
    budget = limits()
    user = log.user_fields
    if user is not None and "inputs" in user:
        inputs = snapshot(user["inputs"], budget)
    elif log.args is not None and log.options.binder is not None:
        options = log.options
        named = options.binder.bind(options.skip_first, log.args, log.kwargs or {})  # type: ignore[union-attr]
        inputs = _snapshot_names(named, budget)
    if inputs is not None and not isinstance(inputs, dict):
        inputs = {"value": inputs}
    messages = None
    user_messages = user.get("messages") if user is not None else None
    if user_messages is not None and user_messages is not UNSET:
        messages = _chat_messages(snapshot(user_messages, budget))
    elif inputs and "messages" in inputs:
        messages = _chat_messages(inputs["messages"])
        if messages is not None:
            inputs = {k: v for k, v in inputs.items() if k != "messages"}
    return inputs, messages


def _user(log: Log, name: str) -> Any:
    """What the user set on the log (UNSET if nothing), without making anything on the way
    (reading `log.metadata` would make the log its own dict)."""
    fields = log.user_fields
    return UNSET if fields is None else fields.get(name, UNSET)


def _user_metadata(log: Log) -> Any:
    """The log's metadata: what the user made of it, else the flow's."""
    fields = log.user_fields
    if fields is not None and "metadata" in fields:
        return fields["metadata"]
    return log.options.flow.metadata


def shape_output(log: Log, fields: dict[str, Any]) -> None:
    """Into `fields`: `output` for strings and anything JSON-encoded; `output_message` for a
    chat message."""
    budget = limits()
    output_message = _user(log, "output_message")
    if output_message is not UNSET and output_message is not None:
        message = _chat_message(snapshot(output_message, budget))
        if message is not None:
            fields["output_message"] = message
    value = _user(log, "output")
    if value is UNSET:
        value = log.result  # what the call returned; the user's `output` wins
    if value is UNSET:
        return
    value = _snapshot(value, budget)
    if isinstance(value, str):
        fields["output"] = value
    elif type(value) is int:
        fields["output"] = str(value)  # its JSON text, without json's overhead
    elif "output_message" not in fields and (message := _chat_message(value)) is not None:
        fields["output_message"] = message
    elif value is not None:
        fields["output"] = to_json(value)


def _flowtrace_metadata(log: Log) -> dict[str, Any]:
    """What flowtrace knows about how the call ended, kept under metadata["flowtrace"]."""
    extra: dict[str, Any] = {}
    if log.traceback:
        extra[RECORDER_TRACEBACK] = log.traceback
    if log.ended_how:
        extra[RECORDER_ENDED] = log.ended_how
    return extra


def _metadata(log: Log) -> dict[str, Any] | None:
    own = _user_metadata(log)
    user = snapshot(own, limits()) if own else None
    if not (log.traceback or log.ended_how):
        return user if isinstance(user, dict) else None
    merged = dict(user) if isinstance(user, dict) else {}
    merged[RECORDER_METADATA_KEY] = _flowtrace_metadata(log)
    return merged


def _ending_fields(log: Log, start_ns: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields a log only has once it has ended, added to `fields` (returned)."""
    duration_ns = log.duration_ns
    if duration_ns is not None:
        fields["end_time"] = wire_time_us((start_ns + duration_ns) // 1000)
        fields["provider_latency"] = duration_ns / 1e9
    shape_output(log, fields)
    if log.error is not None:
        fields["error"] = str(log.error)
    if log.stdout_chars:
        fields["stdout"] = log.stdout  # kept within the string budget while the log was open
    metadata = _metadata(log)
    if metadata:
        fields["metadata"] = metadata
    if log.user_fields is not None:
        for name in ("provider_request", "provider_response"):
            value = _user(log, name)
            if value is not UNSET and value is not None:
                snap = snapshot(value, limits())
                fields[name] = snap if isinstance(snap, dict) else {"value": snap}
    return fields


_attributes_memo: dict[int, tuple[object, Limits, Any]] = {}


def _attributes(log: Log) -> Any:
    """The snapshot of the flow's attributes (taken once per flow and budget: every log of a
    function has the same ones)."""
    flow = log.options.flow
    budget = limits()
    known = _attributes_memo.get(id(flow))
    if known is not None and known[0] is flow and known[1] is budget:
        return known[2]
    snap = snapshot(flow.attributes, budget)
    if len(_attributes_memo) >= 4096:
        _attributes_memo.clear()
    _attributes_memo[id(flow)] = (flow, budget, snap)
    return snap


def create_body(log: Log, status_field: StatusField, start_ns: int | None = None) -> dict[str, Any]:
    """`POST /flows/log` body: complete if the log has ended, else incomplete (sent early).
    `start_ns`: the wall-clock start the pipeline fixed for the log (default: as of now)."""
    if log.is_span:  # a span's log builds its own (imported with `_span_logs`, which made it)
        from flowtrace._span_bodies import span_create_body

        body = span_create_body(cast("SpanLog", log), status_field)
    else:
        body = _flow_create_body(log, status_field, start_ns)
    parent = log.parent
    if isinstance(parent, RemoteParent):  # the caller's log (`_remote`): linked, or noted
        if not parent.linked:
            body.pop("trace_parent_id", None)
        note_recorder(body, RECORDER_REMOTE_PARENT, remote_note(parent))
    return body


def note_recorder(body: dict[str, Any], key: str, value: Any) -> None:
    """Add `key: value` to what flowtrace notes under the body's metadata["flowtrace"]."""
    metadata = dict(body.get("metadata") or {})
    note = dict(metadata.get(RECORDER_METADATA_KEY) or {})
    note[key] = value
    metadata[RECORDER_METADATA_KEY] = note
    body["metadata"] = metadata


def _flow_create_body(log: Log, status_field: StatusField, start_ns: int | None) -> dict[str, Any]:
    if start_ns is None:
        start_ns = log.start_ns
    body: dict[str, Any] = {
        "log_id": log.log_id,
        "path": log.options.path,
        "start_time": wire_time_us(start_ns // 1000),
    }
    if log.parent is not None:
        body["trace_parent_id"] = log.parent.log_id
    flow = log.options.flow
    if flow.attributes is not None:
        body["flow"] = {"attributes": _attributes(log)}
    user = _user(log, "user")
    if user is UNSET:
        user = flow.user
    environment = flow.environment or get_settings().environment
    for name, value in (("user", user), ("environment", environment), ("source", flow.source)):
        if value is not None:
            body[name] = str(value)
    save = flow.save
    if save is not None:
        body["save"] = bool(save)
    inputs, messages = resolve_inputs(log)
    if inputs is not None:
        body["inputs"] = inputs
    if messages is not None:
        body["messages"] = messages
    if log.duration_ns is not None:
        _ending_fields(log, start_ns, body)
        body[status_field] = COMPLETE
    else:
        metadata = _user_metadata(log)
        if metadata:
            body["metadata"] = snapshot(metadata, limits())
        body[status_field] = INCOMPLETE
    return _without_payloads(body) if save is False else body


def complete_body(
    log: Log, status_field: StatusField, extension: bool, start_ns: int | None = None
) -> dict[str, Any]:
    """`PATCH /flows/logs/{id}` body closing a log sent early. `extension`: the server takes
    flowtrace's end-of-log fields (stdout, end_time, ...); a plain contract server does not."""
    if log.is_span:
        from flowtrace._span_bodies import span_complete_body

        return span_complete_body(cast("SpanLog", log), status_field)
    body = _ending_fields(log, log.start_ns if start_ns is None else start_ns, {})
    if log.inputs is not UNSET or log.messages is not UNSET:  # the user may have set them late
        inputs, messages = resolve_inputs(log)
        if log.inputs is not UNSET and inputs is not None:
            body["inputs"] = inputs
        if log.messages is not UNSET and messages is not None:
            body["messages"] = messages
    if not extension:
        body = {k: v for k, v in body.items() if k not in UPDATE_EXTENSION_FIELDS}
    body[status_field] = COMPLETE
    return _without_payloads(body) if log.save is False else body


def _without_payloads(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in PAYLOAD_FIELDS}


_NO_QUERY: dict[str, str] = {}


def log_query(log: Log) -> dict[str, str]:
    """Query parameters of `POST /flows/log`: log against a given version (none: a shared
    empty dict, which nobody changes)."""
    version_id = log.options.flow.version_id
    return {"version_id": version_id} if version_id else _NO_QUERY
