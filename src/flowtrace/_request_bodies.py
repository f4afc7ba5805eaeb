"""Turn a Log into the contract's request bodies. Runs on the worker, never on the call path.

`create_body` is the `POST /flows/log` body (sent once, complete, for a log that has ended; or
early, incomplete, for a log that something needs to exist); `complete_body` is the
`PATCH /flows/logs/{id}` body that closes a log sent early.
"""

from __future__ import annotations

from typing import Any

from flowtrace._config import get_settings
from flowtrace._contract import (
    CHAT_MESSAGE_KEYS,
    CHAT_ROLES,
    COMPLETE,
    PAYLOAD_FIELDS,
    RECORDER_ENDED,
    RECORDER_METADATA_KEY,
    RECORDER_TRACEBACK,
    UPDATE_EXTENSION_FIELDS,
    StatusField,
    truncated_chars,
    wire_time_ns,
)
from flowtrace._log import UNSET, Log
from flowtrace._serialize import limits, snapshot, to_json

# The wire models (pydantic) are imported on the worker, when a chat message or an early-sent
# log first needs them: `import flowtrace` stays light, and most logs never need them.

__all__ = ["complete_body", "create_body", "log_query", "resolve_inputs", "shape_output"]


def _chat_message(value: Any) -> dict[str, Any] | None:
    """`value` as a contract ChatMessage dict if it is one (extra keys dropped), else None."""
    if not isinstance(value, dict) or value.get("role") not in CHAT_ROLES:
        return None
    if "content" not in value and "tool_calls" not in value:
        return None
    from pydantic import ValidationError

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
    if log.inputs is not UNSET:
        inputs = snapshot(log.inputs, limits())
    elif log.args is not None and log.options.binder is not None:
        binder = log.options.binder
        inputs = snapshot(binder.bind(log.options.skip_first, log.args, log.kwargs or {}), limits())
    if inputs is not None and not isinstance(inputs, dict):
        inputs = {"value": inputs}
    messages = None
    if log.messages is not UNSET and log.messages is not None:
        messages = _chat_messages(snapshot(log.messages, limits()))
    elif inputs and "messages" in inputs:
        messages = _chat_messages(inputs["messages"])
        if messages is not None:
            inputs = {k: v for k, v in inputs.items() if k != "messages"}
    return inputs, messages


def shape_output(log: Log) -> dict[str, Any]:
    """`output` for strings and anything JSON-encoded; `output_message` for a chat message."""
    fields: dict[str, Any] = {}
    if log.output_message is not UNSET and log.output_message is not None:
        message = _chat_message(snapshot(log.output_message, limits()))
        if message is not None:
            fields["output_message"] = message
    value = log.output
    if value is UNSET:
        value = log.result  # what the call returned; the user's `output` wins
    if value is UNSET:
        return fields
    value = snapshot(value, limits())
    if isinstance(value, str):
        fields["output"] = value
    elif "output_message" not in fields and (message := _chat_message(value)) is not None:
        fields["output_message"] = message
    elif type(value) is int:
        fields["output"] = str(value)  # its JSON text, without json's overhead
    elif value is not None:
        fields["output"] = to_json(value)
    return fields


def _flowtrace_metadata(log: Log) -> dict[str, Any]:
    """What flowtrace knows about how the call ended, kept under metadata["flowtrace"]."""
    extra: dict[str, Any] = {}
    if log.traceback:
        extra[RECORDER_TRACEBACK] = log.traceback
    if log.ended_how:
        extra[RECORDER_ENDED] = log.ended_how
    return extra


def _metadata(log: Log) -> dict[str, Any] | None:
    user = snapshot(log.metadata, limits()) if log.metadata else None
    extra = _flowtrace_metadata(log)
    if not extra:
        return user if isinstance(user, dict) else None
    merged = dict(user) if isinstance(user, dict) else {}
    merged[RECORDER_METADATA_KEY] = extra
    return merged


def _ending_fields(log: Log, start_ns: int) -> dict[str, Any]:
    """The fields a log only has once it has ended."""
    fields: dict[str, Any] = {}
    if log.duration_ns is not None:
        fields["end_time"] = wire_time_ns(start_ns + log.duration_ns)
    if log.duration_ns is not None:
        fields["provider_latency"] = log.duration_ns / 1e9
    fields.update(shape_output(log))
    if log.error is not None:
        fields["error"] = str(log.error)
    if log.stdout_parts:
        fields["stdout"] = _truncate(log.stdout)
    metadata = _metadata(log)
    if metadata:
        fields["metadata"] = metadata
    for name in ("provider_request", "provider_response"):
        value = getattr(log, name)
        if value is not UNSET and value is not None:
            snap = snapshot(value, limits())
            fields[name] = snap if isinstance(snap, dict) else {"value": snap}
    return fields


def _truncate(text: str) -> str:
    budget = limits().max_string
    if len(text) <= budget:
        return text
    return text[:budget] + truncated_chars(len(text))


def create_body(log: Log, status_field: StatusField, start_ns: int | None = None) -> dict[str, Any]:
    """`POST /flows/log` body: complete if the log has ended, else incomplete (sent early).
    `start_ns`: the wall-clock start the pipeline fixed for the log (default: as of now)."""
    if start_ns is None:
        start_ns = log.start_ns
    body: dict[str, Any] = {
        "log_id": log.log_id,
        "path": log.path,
        "start_time": wire_time_ns(start_ns),
    }
    if log.parent is not None:
        body["trace_parent_id"] = log.parent.log_id
    if log.attributes is not None:
        body["flow"] = {"attributes": snapshot(log.attributes, limits())}
    environment = log.environment or get_settings().environment
    for name, value in (("user", log.user), ("environment", environment), ("source", log.source)):
        if value is not None:
            body[name] = str(value)
    if log.save is not None:
        body["save"] = bool(log.save)
    inputs, messages = resolve_inputs(log)
    if inputs is not None:
        body["inputs"] = inputs
    if messages is not None:
        body["messages"] = messages
    if log.status == COMPLETE:
        body.update(_ending_fields(log, start_ns))
    elif log.metadata:
        body["metadata"] = snapshot(log.metadata, limits())
    body[status_field] = log.status
    return _without_payloads(body) if log.save is False else body


def complete_body(
    log: Log, status_field: StatusField, extension: bool, start_ns: int | None = None
) -> dict[str, Any]:
    """`PATCH /flows/logs/{id}` body closing a log sent early. `extension`: the server takes
    flowtrace's end-of-log fields (stdout, end_time, ...); a plain contract server does not."""
    body = _ending_fields(log, log.start_ns if start_ns is None else start_ns)
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


def log_query(log: Log) -> dict[str, str]:
    """Query parameters of `POST /flows/log`: log against a given version."""
    return {"version_id": log.version_id} if log.version_id else {}
