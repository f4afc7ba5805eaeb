"""The contract's vocabulary, defined once (docs/contract.md).

Every name of the wire contract that more than one part of flowtrace needs lives here: the log
fields and which of them are payloads, the update extension, the status field names and values,
chat roles, the recorder's metadata keys, the truncation and scrubbing markers and the wire
datetime text. The recorder, the request bodies, the models, the store, the server and the
viewer import them, so a field added to a log is added in one place and every other place is
checked against it (tests/test_contract.py).

Light on purpose: the recorder imports it on `import flowtrace` (no pydantic here).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final, Literal, get_args

__all__ = [
    "CHAT_MESSAGE_KEYS",
    "CHAT_ROLES",
    "COMPLETE",
    "CONTRACT_UPDATE_FIELDS",
    "COST_FIELDS",
    "DEFAULT_STATUS_FIELD",
    "ENDED_CANCELLED",
    "ENDED_CLOSED_EARLY",
    "ENDED_ERROR",
    "FLOW",
    "FLOWTRACE_ENDED_ATTRIBUTE",
    "FLOWTRACE_LOG_ID_ATTRIBUTE",
    "HUMANLOOP_LOG_ID_ATTRIBUTE",
    "INCOMPLETE",
    "LOG_FIELDS",
    "LOG_KINDS",
    "PAYLOAD_FIELDS",
    "PENDING",
    "PLACEHOLDER_FIELD",
    "PLACEHOLDER_PATH",
    "PREFERENCE_APPLIED_HEADER",
    "PREFER_HEADER",
    "PROMPT",
    "PROMPT_KERNEL_FIELDS",
    "PROMPT_LOG_FIELDS",
    "RECORDER_ENDED",
    "RECORDER_FORKED_FROM",
    "RECORDER_LATE_CHILD_OF",
    "RECORDER_METADATA_KEY",
    "RECORDER_REMOTE_PARENT",
    "RECORDER_TRACEBACK",
    "REMOTE_LINKED",
    "REMOTE_LOG_ID",
    "REMOTE_SAMPLED",
    "REMOTE_SPAN_ID",
    "REMOTE_TRACE_ID",
    "RETURN_MINIMAL",
    "SCRUBBED_PREFIX",
    "SCRUBBED_SUFFIX",
    "SPAN_LOG_ID_PREFIX",
    "STATUS_FIELDS",
    "TOKEN_FIELDS",
    "TOOL",
    "TOOL_KERNEL_FIELDS",
    "TRUNCATED_PREFIX",
    "UPDATE_EXTENSION_FIELDS",
    "ChatRole",
    "LogKind",
    "StatusField",
    "TraceStatus",
    "ended_interrupted",
    "minimal_answer",
    "remote_parent_id",
    "scrubbed",
    "span_log_id",
    "truncated_chars",
    "truncated_items",
    "wire_time",
    "wire_time_ns",
    "wire_time_us",
]

# --- status ----------------------------------------------------------------------------------

TraceStatus = Literal["complete", "incomplete"]
COMPLETE: Final = "complete"
INCOMPLETE: Final = "incomplete"

#: The API renamed `trace_status` to `log_status` in March 2025 (same values): a request carries
#: one of the two names, and its answer uses the same one.
StatusField = Literal["trace_status", "log_status"]
STATUS_FIELDS: Final[tuple[StatusField, ...]] = get_args(StatusField)
DEFAULT_STATUS_FIELD: Final[StatusField] = "trace_status"

# --- chat messages ---------------------------------------------------------------------------

ChatRole = Literal["user", "assistant", "system", "tool", "developer"]
CHAT_ROLES: Final = frozenset(get_args(ChatRole))
CHAT_MESSAGE_KEYS: Final = ("role", "content", "name", "tool_call_id", "tool_calls")

# --- log fields ------------------------------------------------------------------------------

#: What a log records: the fields a `POST /flows/log` body sends and `GET /logs/{id}` returns
#: (besides the routing fields of a request and the ids of a response).
LOG_FIELDS: Final = (
    "messages",
    "output_message",
    "run_id",
    "start_time",
    "end_time",
    "output",
    "created_at",
    "error",
    "provider_latency",
    "stdout",
    "provider_request",
    "provider_response",
    "inputs",
    "source",
    "metadata",
    "source_datapoint_id",
    "trace_parent_id",
    "user",
    "environment",
    "save",
)

#: What `save=false` keeps out of the store: the request and response payloads.
PAYLOAD_FIELDS: Final = frozenset(
    {
        "inputs",
        "messages",
        "output",
        "output_message",
        "stdout",
        "provider_request",
        "provider_response",
    }
)

#: What the contract's `PATCH /flows/logs/{id}` may set (besides the status).
CONTRACT_UPDATE_FIELDS: Final = ("inputs", "output", "error", "messages", "output_message")

#: flowtrace's extension of PATCH: the fields a log only has once it ends, so a log sent early
#: loses nothing when it completes. Sent only to a server whose health endpoint offers it.
UPDATE_EXTENSION_FIELDS: Final = frozenset(
    {"end_time", "provider_latency", "stdout", "metadata", "provider_request", "provider_response"}
)

# --- log kinds: the contract's three kinds of file, each with its kind of log ----------------

#: A flow log is a run of code (the recorder's logs); a prompt log is one LLM call; a tool log
#: one tool call. A file (found by its path) has one kind, and so do its logs.
LogKind = Literal["flow", "prompt", "tool"]
FLOW: Final = "flow"
PROMPT: Final = "prompt"
TOOL: Final = "tool"
LOG_KINDS: Final[tuple[LogKind, ...]] = get_args(LogKind)

# --- the batch extension (flowtrace's, not Humanloop's): its operation kinds --------------

#: `op` of a batch operation: a flow log's create (`POST /flows/log`), an update of a log of any
#: kind (`PATCH /flows/logs/{id}`), a prompt log's create (`POST /prompts/log`), a tool log's
#: (`POST /tools/log`); the exporter's operation kinds are these names. The last two came
#: later: a server names the kinds its batches take under `BATCH_OPERATIONS_FIELD` of its
#: health answer (absent: the first two only).
BatchOp = Literal["log", "update", "prompt_log", "tool_log"]
BATCH_LOG: Final = "log"
BATCH_UPDATE: Final = "update"
BATCH_PROMPT_LOG: Final = "prompt_log"
BATCH_TOOL_LOG: Final = "tool_log"
BATCH_OPS: Final[tuple[BatchOp, ...]] = get_args(BatchOp)
#: The health answer's fields: `batch` (the route is offered) and the operation kinds it takes.
BATCH_FIELD: Final = "batch"
BATCH_OPERATIONS_FIELD: Final = "batch_operations"

#: RFC 7240. A client that does not read an update's answer sends `Prefer: return=minimal`, and
#: the server answers the update (a PATCH, or a batch's "update") with `minimal_answer`
#: instead of the log's record, which it would have to read back and render: for a trace's
#: root, its whole tree. It says so with `Preference-Applied: return=minimal`. flowtrace's
#: exporter always asks; a server that ignores the header answers the record, unread.
PREFER_HEADER: Final = "Prefer"
PREFERENCE_APPLIED_HEADER: Final = "Preference-Applied"
RETURN_MINIMAL: Final = "return=minimal"


def minimal_answer(log_id: str) -> dict[str, str]:
    """An update's answer without the log's record."""
    return {"id": log_id}


#: Token counts of a prompt log. `prompt_tokens`, `output_tokens` and `reasoning_tokens` are the
#: contract's; the cache counts are flowtrace's (part of `prompt_tokens`, as providers count).
TOKEN_FIELDS: Final = (
    "prompt_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
)
#: Costs of a prompt log, in US dollars.
COST_FIELDS: Final = ("prompt_cost", "output_cost")

#: What a prompt log records beyond LOG_FIELDS (in its body and in its record).
PROMPT_LOG_FIELDS: Final = (*TOKEN_FIELDS, *COST_FIELDS, "finish_reason", "tool_choice")

#: A prompt version's kernel: the fields of the `prompt` object of a prompt log request. The
#: same kernel is the same version (stored as the version's attributes).
PROMPT_KERNEL_FIELDS: Final = (
    "model",
    "endpoint",
    "template",
    "template_language",
    "provider",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "other",
    "seed",
    "response_format",
    "reasoning_effort",
    "tools",
    "linked_tools",
    "attributes",
)
#: A tool version's kernel: the `tool` object of a tool log request.
TOOL_KERNEL_FIELDS: Final = ("function", "source_code", "setup_values", "attributes")

# --- logs made from OpenTelemetry spans ------------------------------------------------------

SPAN_LOG_ID_PREFIX: Final = "span_"


def span_log_id(trace_id_hex: str, span_id_hex: str) -> str:
    """The log a span becomes: deterministic, so a batch sent again replays idempotently."""
    return f"{SPAN_LOG_ID_PREFIX}{trace_id_hex}_{span_id_hex}"


#: A span carrying one of these names the log it completes instead of being a log of its own
#: (the Humanloop SDK's flow span completes the flow log it created over REST).
HUMANLOOP_LOG_ID_ATTRIBUTE: Final = "humanloop.log.id"
FLOWTRACE_LOG_ID_ATTRIBUTE: Final = "flowtrace.log.id"
#: How the call a span records ended when not by a plain return (`ENDED_CLOSED_EARLY`: a stream
#: left before its end): the log's `metadata.flowtrace.ended`, as the recorder's own logs say it.
FLOWTRACE_ENDED_ATTRIBUTE: Final = "flowtrace.ended"

#: A parent span that has not arrived yet is kept as a placeholder log: a root whose record
#: says `"placeholder": true`, shown as "pending", in the file at PLACEHOLDER_PATH. The parent's
#: span fills it in when it arrives; one that never does stays visible as a pending root.
PLACEHOLDER_FIELD: Final = "placeholder"
PENDING: Final = "pending"
PLACEHOLDER_PATH: Final = "flowtrace/pending"

# --- the recorder's own facts, under metadata["flowtrace"] -----------------------------------

RECORDER_METADATA_KEY: Final = "flowtrace"
RECORDER_TRACEBACK: Final = "traceback"
RECORDER_ENDED: Final = "ended"  # how a call ended when not by a plain return
RECORDER_FORKED_FROM: Final = "forked_from"  # the parent log id in the process forked from
#: The parent's log id, for a log that started after its parent had been closed (an asyncio task
#: that outlived the flow that created it): it is filed under the nearest ancestor still open.
RECORDER_LATE_CHILD_OF: Final = "late_child_of"

#: A log whose parent lives in another service (a trace continued from W3C trace context
#: headers, `flowtrace.continue_trace`): what the caller's headers said, under
#: metadata["flowtrace"]["remote_parent"] = {"log_id", "trace_id", "span_id", "sampled",
#: "linked"}. `linked`: the log's `trace_parent_id` is that log id, and the store accepts it
#: under a parent that has not arrived yet (a placeholder) or has already completed (the
#: caller may finish first). Unlinked (untrusted headers): the ids are kept, not followed.
RECORDER_REMOTE_PARENT: Final = "remote_parent"
REMOTE_LOG_ID: Final = "log_id"
REMOTE_TRACE_ID: Final = "trace_id"  # W3C trace-id, 32 lowercase hex digits
REMOTE_SPAN_ID: Final = "span_id"  # W3C parent-id, 16 lowercase hex digits
REMOTE_SAMPLED: Final = "sampled"  # the caller's `sampled` flag
REMOTE_LINKED: Final = "linked"


def remote_parent_id(metadata: object) -> str | None:
    """The remote parent a log's metadata says it is linked to, else None (the store's test:
    the log's `trace_parent_id` must be this id too)."""
    if not isinstance(metadata, dict):
        return None
    note = metadata.get(RECORDER_METADATA_KEY)
    remote = note.get(RECORDER_REMOTE_PARENT) if isinstance(note, dict) else None
    if not isinstance(remote, dict) or remote.get(REMOTE_LINKED) is not True:
        return None
    log_id = remote.get(REMOTE_LOG_ID)
    return log_id if isinstance(log_id, str) else None


ENDED_ERROR: Final = "error"
ENDED_CLOSED_EARLY: Final = "closed early"  # a generator left before its end
ENDED_CANCELLED: Final = "cancelled"  # asyncio


def ended_interrupted(exception_name: str) -> str:
    """An interruption (KeyboardInterrupt, SystemExit, GeneratorExit): not a failure."""
    return f"interrupted: {exception_name}"


# --- truncation ------------------------------------------------------------------------------

#: Starts the marker that replaces what a budget cut: `...[truncated, N chars]` after a string's
#: prefix, `...[truncated, N items]` as the last item of a list (or key of a dict).
TRUNCATED_PREFIX: Final = "...[truncated, "
TRUNCATED_CHARS_SUFFIX: Final = " chars]"
TRUNCATED_ITEMS_SUFFIX: Final = " items]"


def truncated_chars(original_length: int) -> str:
    return f"{TRUNCATED_PREFIX}{original_length}{TRUNCATED_CHARS_SUFFIX}"


def truncated_items(original_count: int) -> str:
    return f"{TRUNCATED_PREFIX}{original_count}{TRUNCATED_ITEMS_SUFFIX}"


# --- scrubbing -------------------------------------------------------------------------------

#: Replaces what scrubbing removed (flowtrace._scrub): `[scrubbed: <rule>]` in place of a value
#: under a secret-looking key, or of the secret part of a string (`Bearer [scrubbed: bearer
#: token]`). The rule names the pattern that matched, so a reader knows what was there.
SCRUBBED_PREFIX: Final = "[scrubbed: "
SCRUBBED_SUFFIX: Final = "]"


def scrubbed(rule: str) -> str:
    return f"{SCRUBBED_PREFIX}{rule}{SCRUBBED_SUFFIX}"


# --- datetimes on the wire -------------------------------------------------------------------
# ISO-8601 in UTC with a `Z`, at microseconds. One formatter for every datetime flowtrace writes,
# from nanoseconds (the recorder's clocks), microseconds (the store's columns) or a datetime.

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")  # a batch shares a few seconds


def _second_text(seconds: int) -> str:
    global _last_second
    cached_second, text = _last_second
    if seconds != cached_second:
        # isoformat, not strftime: years before 1000 keep their four digits
        text = (_EPOCH + timedelta(seconds=seconds)).isoformat()[:19]
        _last_second = (seconds, text)
    return text


def wire_time_us(us: int) -> str:
    """Microseconds since the epoch as the contract's datetime text."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second_text(seconds)}.{micros:06d}Z"


def wire_time_ns(ns: int) -> str:
    """Nanoseconds since the epoch as the contract's datetime text (microseconds kept)."""
    return wire_time_us(ns // 1000)


def wire_time(value: datetime) -> str:
    """A datetime as the contract's text; a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return wire_time_us((value - _EPOCH) // timedelta(microseconds=1))
