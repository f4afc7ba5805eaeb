"""Spans to logs: one pure, table-driven mapping for every producer of OpenTelemetry spans.

`map_span(span)` reads a neutral `Span` and says which log it is: its id (`span_<trace>_<span>`,
or the log a Humanloop span names), its parent, its kind (flow, prompt, tool), its path, and the
contract's fields: times, inputs, output, messages and output message, error with traceback,
model, provider and token usage, user, and the rest of the attributes in bounded metadata.

Conventions read (each a table below, so a new producer is a few lines):
- Humanloop SDK spans (`humanloop.file.*`, `humanloop.log.*`, flattened dotted keys);
- the OpenTelemetry GenAI semantic conventions (`gen_ai.*`: operation, model, usage, the JSON
  `gen_ai.input.messages` / `gen_ai.output.messages` / `gen_ai.system_instructions`, and the
  older `gen_ai.*.message` / `gen_ai.choice` events), as pydantic-ai and the Anthropic SDK's
  instrumentation emit them, with pydantic-ai's own `all_messages_events` / `final_result`;
- OpenInference (`openinference.span.kind`, `llm.input_messages.N.message.*`, `input.value`);
- OpenLLMetry (`gen_ai.prompt.N.*`, `gen_ai.completion.N.*`, `traceloop.*`).

Agent and chain spans often carry the usage of every call under them: only prompt logs keep
token counts as fields (an agent's totals go to its metadata), so a trace's sum counts each
call once. Cost: what the span says, else the optional `genai-prices` table, else none.

No protobuf, no pydantic, no store: the server's OTLP ingest and the in-program bridge call it
alike (the client has no `server` extra). Everything is bounded: attribute counts, message
counts, string lengths, path names, and the number of distinct paths (`PathCap`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from flowtrace._contract import (
    CHAT_ROLES,
    COMPLETE,
    ENDED_CANCELLED,
    ENDED_CLOSED_EARLY,
    ENDED_ERROR,
    FLOW,
    FLOWTRACE_ENDED_ATTRIBUTE,
    FLOWTRACE_LOG_ID_ATTRIBUTE,
    HUMANLOOP_LOG_ID_ATTRIBUTE,
    INCOMPLETE,
    PROMPT,
    RECORDER_ENDED,
    RECORDER_METADATA_KEY,
    RECORDER_TRACEBACK,
    TOOL,
    LogKind,
    span_log_id,
    truncated_chars,
    wire_time_ns,
)
from flowtrace.spans import _genai as gen_ai
from flowtrace.spans._model import Span
from flowtrace.spans._prices import llm_cost

__all__ = [
    "MAX_PATHS",
    "OTEL_METADATA_KEY",
    "MappedLog",
    "PathCap",
    "log_kind",
    "map_span",
    "map_spans",
]

OTEL_METADATA_KEY: Final = "otel"  # metadata["otel"]: the span's own facts (ids, kind, scope)
OTHER_CHOICES_METADATA_KEY: Final = "other_choices"  # a call's choices after the first (`n`)
MAX_PATHS: Final = 1000  # distinct span-derived paths per PathCap; more go to `<kind>/other`
MAX_NAME_CHARS: Final = 120
MAX_STRING_CHARS: Final = 65536
MAX_METADATA_KEYS: Final = 256
MAX_METADATA_STRING: Final = 4096
MAX_MESSAGES: Final = 1000
MAX_DEPTH: Final = 20
MAX_INDEX: Final = 10_000  # an indexed attribute (`llm.input_messages.N...`) beyond is ignored
# Times a datetime can hold (0001..9999): absurd span times are clamped into this range.
_INF: Final = float("inf")
_MIN_NS: Final = 0
_MAX_NS: Final = 253_402_300_799_999_999_000


@dataclass(frozen=True, slots=True)
class MappedLog:
    """The log a span becomes. `fields` are contract fields by name (times as wire text);
    `kernel` is the version: a flow's attributes, a prompt's or a tool's kernel. With
    `completes` the span names an existing log (`log_id`) whose fields it completes."""

    log_id: str
    kind: LogKind
    path: str
    parent_id: str | None
    fields: dict[str, Any]
    kernel: dict[str, Any] = field(default_factory=dict)
    completes: bool = False
    start_ns: int = 0  # the span's times, clamped (fields hold them at microseconds)
    end_ns: int = 0


# --- small readers -----------------------------------------------------------------------------


def _text(value: Any, limit: int = MAX_STRING_CHARS) -> str:
    if type(value) is str and len(value) <= limit:
        return value  # the common case, first
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + truncated_chars(len(text))


def _json_or_text(value: Any) -> Any:
    """Attributes often hold JSON as text: parsed when it is, kept as text otherwise."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**63 else None
    if isinstance(value, float) and value == value and 0 <= value < 2**63:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and len(value) < 19:
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _first(attributes: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "":
            return value
    return None


class _Attributes(dict[str, Any]):
    """A span's attributes with the dotted prefixes they use (`a`, `a.b` of `a.b.c`), so the
    readers below skip a convention the span does not speak without scanning every key."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        super().__init__(attributes)
        roots: set[str] = set()
        for key in attributes:
            roots.update(_roots(key))
        self.roots = roots


@functools.lru_cache(maxsize=8192)  # attribute names repeat from span to span
def _roots(key: str) -> tuple[str, ...]:
    parts = key.split(".", 2)
    return (parts[0], f"{parts[0]}.{parts[1]}") if len(parts) > 1 else ()


def _speaks(attributes: Mapping[str, Any], prefix: str) -> bool:
    """Whether some key starts with `prefix.` (prefix: one or two dotted segments)."""
    if isinstance(attributes, _Attributes):
        return prefix in attributes.roots
    return any(key.startswith(prefix + ".") for key in attributes)


def _unflatten(attributes: Mapping[str, Any], prefix: str) -> Any:
    """Dotted keys under `prefix` (`p.a.0.b = 1`) back into a value (`{"a": [{"b": 1}]}`),
    as the Humanloop SDK and OpenInference flatten them. A bare `prefix` key is the value."""
    if prefix in attributes:
        return attributes[prefix]
    if not _speaks(attributes, prefix.rsplit(".", 1)[0] if prefix.count(".") > 1 else prefix):
        return None
    start = prefix + "."
    root: dict[str, Any] = {}
    for key, value in attributes.items():
        if not key.startswith(start):
            continue
        parts = key[len(start) :].split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return _lists(root) if root else None


def _lists(value: Any) -> Any:
    """Dicts whose keys are all indexes become lists (iteratively: depth is the key's)."""
    if not isinstance(value, dict):
        return value
    stack = [value]
    order: list[dict[str, Any]] = []
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(child for child in node.values() if isinstance(child, dict))
    converted: dict[int, Any] = {}
    for node in reversed(order):  # children before parents
        for key, child in node.items():
            if isinstance(child, dict):
                node[key] = converted[id(child)]
        if node and all(key.isdigit() for key in node):
            indexes = sorted(node, key=int)[:MAX_INDEX]
            converted[id(node)] = [node[key] for key in indexes]
        else:
            converted[id(node)] = node
    return converted[id(value)]


def _indexed(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """`prefix.N.rest = v` groups as [{rest: v}, ...] by N (OpenInference, OpenLLMetry)."""
    if prefix.count(".") <= 1 and not _speaks(attributes, prefix):
        return []
    start = prefix + "."
    groups: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if not key.startswith(start):
            continue
        index, _, rest = key[len(start) :].partition(".")
        if not index.isdigit() or not rest or int(index) >= MAX_INDEX:
            continue
        groups.setdefault(int(index), {})[rest] = value
    return [groups[index] for index in sorted(groups)][:MAX_MESSAGES]


# --- messages ----------------------------------------------------------------------------------

_ROLE_ALIASES: Final = {
    "human": "user",
    "ai": "assistant",
    "model": "assistant",
    "function": "tool",
    "tool_call_response": "tool",
    "chatbot": "assistant",
}


def _role(value: Any) -> str:
    role = str(value or "user").lower()
    role = _ROLE_ALIASES.get(role, role)
    return role if role in CHAT_ROLES else "user"


def _tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    args = None if arguments is None else _text(arguments)
    call: dict[str, Any] = {"id": str(call_id or ""), "type": "function"}
    call["function"] = {"name": str(name or "")} | ({"arguments": args} if args else {})
    return call


def _message(
    role: Any,
    content: Any = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: Any = None,
    name: Any = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": _role(role)}
    if content is not None and content != "":
        message["content"] = _text(content)
    if tool_calls:
        message["tool_calls"] = tool_calls
    if tool_call_id:
        message["tool_call_id"] = str(tool_call_id)
    if name:
        message["name"] = str(name)
    return message


def _parts_message(raw: Any) -> dict[str, Any] | None:
    """A GenAI-convention message: `{"role", "parts": [{"type": "text"|"tool_call"|
    "tool_call_response", ...}]}` (also pydantic-ai's), or an OpenAI-style `{"role","content"}`."""
    if not isinstance(raw, dict):
        return None
    parts = raw.get("parts")
    if not isinstance(parts, list):
        content = raw.get("content")
        calls = raw.get("tool_calls")
        tool_calls = None
        if isinstance(calls, list):
            tool_calls = [
                _tool_call(
                    c.get("id"),
                    (c.get("function") or {}).get("name", c.get("name")),
                    (c.get("function") or {}).get("arguments", c.get("arguments")),
                )
                for c in calls
                if isinstance(c, dict)
            ]
        return _message(raw.get("role"), content, tool_calls, raw.get("tool_call_id"))
    texts: list[str] = []
    calls_out: list[dict[str, Any]] = []
    answered = None
    for part in parts[:MAX_MESSAGES]:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "tool_call":
            calls_out.append(_tool_call(part.get("id"), part.get("name"), part.get("arguments")))
        elif kind == "tool_call_response":
            answered = part.get("id")
            texts.append(_text(part.get("response", part.get("result", ""))))
        else:
            value = part.get("content", part.get("text"))
            if value is not None:
                texts.append(_text(value))
    role = "tool" if answered is not None else raw.get("role")
    return _message(role, "\n".join(texts) or None, calls_out, answered, raw.get("name"))


def _parts_messages(value: Any) -> list[dict[str, Any]]:
    value = _json_or_text(value)
    if not isinstance(value, list):
        return []
    messages = [_parts_message(item) for item in value[:MAX_MESSAGES]]
    return [message for message in messages if message is not None]


def _system_instructions(value: Any) -> list[dict[str, Any]]:
    value = _json_or_text(value)
    if isinstance(value, str):
        return [_message("system", value)]
    if isinstance(value, list):
        texts = [_text(p.get("content", "")) for p in value if isinstance(p, dict)]
        return [_message("system", "\n".join(texts))] if texts else []
    return []


def _openinference_messages(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    messages = []
    for group in _indexed(attributes, prefix):
        content = group.get("message.content")
        if content is None:
            texts = [v for k, v in sorted(group.items()) if k.endswith("message_content.text")]
            content = "\n".join(str(text) for text in texts) or None
        calls = [
            _tool_call(
                call.get("tool_call.id"),
                call.get("tool_call.function.name"),
                call.get("tool_call.function.arguments"),
            )
            for call in _indexed(group, "message.tool_calls")
        ]
        messages.append(
            _message(
                group.get("message.role"),
                content,
                calls,
                group.get("message.tool_call_id"),
                group.get("message.name"),
            )
        )
    return messages


def _openllmetry_messages(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    messages = []
    for group in _indexed(attributes, prefix):
        calls = [
            _tool_call(call.get("id"), call.get("name"), call.get("arguments"))
            for call in _indexed(group, "tool_calls")
        ]
        messages.append(
            _message(group.get("role"), group.get("content"), calls, group.get("tool_call_id"))
        )
    return messages


_EVENT_ROLES: Final = {
    gen_ai.EVENT_SYSTEM_MESSAGE: "system",
    gen_ai.EVENT_USER_MESSAGE: "user",
    gen_ai.EVENT_ASSISTANT_MESSAGE: "assistant",
    gen_ai.EVENT_TOOL_MESSAGE: "tool",
}


def _event_message(name: str, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    body = _json_or_text(attributes.get(gen_ai.EVENT_CONTENT, attributes.get("content")))
    if name == gen_ai.EVENT_CHOICE:
        inner = body.get("message") if isinstance(body, dict) else None
        inner = inner if isinstance(inner, dict) else body if isinstance(body, dict) else {}
        return _parts_message({"role": "assistant", **inner}) if inner else None
    role = _EVENT_ROLES.get(name)
    if role is None:
        return None
    if isinstance(body, dict):
        return _parts_message({"role": role, **body})
    return _message(attributes.get("role", role), body, None, attributes.get("id"))


def _events_messages(span: Span) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    inputs: list[dict[str, Any]] = []
    output = None
    for event in span.events[:MAX_MESSAGES]:
        message = _event_message(event.name, event.attributes)
        if message is None:
            continue
        if event.name == gen_ai.EVENT_CHOICE:
            output = message
        else:
            inputs.append(message)
    return inputs, output


def _pydantic_ai_events(value: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """pydantic-ai's `all_messages_events`: events as JSON, each with its `event.name`."""
    value = _json_or_text(value)
    if not isinstance(value, list):
        return [], None
    messages = []
    for item in value[:MAX_MESSAGES]:
        if not isinstance(item, dict):
            continue
        name = str(item.get("event.name", ""))
        message = _event_message(name, {"content": item})
        if message is None and "role" in item:
            message = _parts_message(item)
        if message is not None:
            messages.append(message)
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]
    return messages, None


def _messages(span: Span, attributes: Mapping[str, Any]) -> tuple[list[Any], Any, list[Any]]:
    """(input messages, output message, the other choices) by the first convention the span
    speaks."""
    system = _system_instructions(attributes.get(gen_ai.SYSTEM_INSTRUCTIONS))
    inputs = _parts_messages(attributes.get(gen_ai.INPUT_MESSAGES))
    outputs = _parts_messages(attributes.get(gen_ai.OUTPUT_MESSAGES))
    if inputs or outputs:  # several outputs are choices (`n`): the first is the answer
        return system + inputs, outputs[0] if outputs else None, outputs[1:]
    for prefix_in, prefix_out, reader in (
        ("llm.input_messages", "llm.output_messages", _openinference_messages),
        (gen_ai.PROMPT, gen_ai.COMPLETION, _openllmetry_messages),
    ):
        inputs, outputs = reader(attributes, prefix_in), reader(attributes, prefix_out)
        if inputs or outputs:
            return system + inputs, outputs[-1] if outputs else None, []
    if "pydantic_ai.all_messages" in attributes:
        messages = _parts_messages(attributes["pydantic_ai.all_messages"])
        if messages and messages[-1]["role"] == "assistant":
            return system + messages[:-1], messages[-1], []
        return system + messages, None, []
    if "all_messages_events" in attributes:
        events_in, events_out = _pydantic_ai_events(attributes["all_messages_events"])
        return system + events_in, events_out, []
    events_in, events_out = _events_messages(span)
    return system + events_in, events_out, []


def _humanloop_message(value: Any) -> dict[str, Any] | None:
    return _parts_message(value) if isinstance(value, dict) else None


# --- the tables --------------------------------------------------------------------------------

_HL_FILE = "humanloop.file"
_HL_LOG = "humanloop.log"

#: Which log kind a span is, by the first of these that it carries.
_KIND_BY_OPERATION: Final = {
    "chat": PROMPT,
    "text_completion": PROMPT,
    "generate_content": PROMPT,
    "completion": PROMPT,
    "embeddings": PROMPT,
    "execute_tool": TOOL,
}
_KIND_BY_OPENINFERENCE: Final = {"LLM": PROMPT, "EMBEDDING": PROMPT, "TOOL": TOOL}
_KIND_BY_TRACELOOP: Final = {"tool": TOOL}

_MODEL_KEYS: Final = (gen_ai.RESPONSE_MODEL, gen_ai.REQUEST_MODEL, "llm.model_name")
_PROVIDER_KEYS: Final = (gen_ai.PROVIDER_NAME, gen_ai.SYSTEM, "llm.provider", "llm.system")

#: Prompt kernel fields from request attributes: (kernel field, attribute keys, reader).
_KERNEL_ATTRIBUTES: Final[tuple[tuple[str, tuple[str, ...], Callable[[Any], Any]], ...]] = (
    ("temperature", (gen_ai.REQUEST_TEMPERATURE, "llm.request.temperature"), _float),
    ("max_tokens", (gen_ai.REQUEST_MAX_TOKENS, "llm.request.max_tokens"), _int),
    ("top_p", (gen_ai.REQUEST_TOP_P, "llm.request.top_p"), _float),
    ("presence_penalty", (gen_ai.REQUEST_PRESENCE_PENALTY,), _float),
    ("frequency_penalty", (gen_ai.REQUEST_FREQUENCY_PENALTY,), _float),
    ("seed", (gen_ai.REQUEST_SEED,), _int),
    (
        "stop",
        (gen_ai.REQUEST_STOP_SEQUENCES,),
        lambda v: [str(s) for s in v][:16] if isinstance(v, list) else None,
    ),
)
_INVOCATION_PARAMETERS: Final = ("temperature", "max_tokens", "top_p", "seed")

#: Token counts of a prompt log: (field, attribute keys, in order of preference).
_TOKENS: Final = (
    (
        "prompt_tokens",
        (
            gen_ai.USAGE_INPUT_TOKENS,
            gen_ai.USAGE_PROMPT_TOKENS,
            "llm.token_count.prompt",
            "llm.usage.prompt_tokens",
        ),
    ),
    (
        "output_tokens",
        (
            gen_ai.USAGE_OUTPUT_TOKENS,
            gen_ai.USAGE_COMPLETION_TOKENS,
            "llm.token_count.completion",
            "llm.usage.completion_tokens",
        ),
    ),
    (
        "reasoning_tokens",
        (
            gen_ai.USAGE_REASONING_OUTPUT_TOKENS,
            gen_ai.USAGE_REASONING_TOKENS,
            "llm.token_count.completion_details.reasoning",
        ),
    ),
    (
        "cache_read_tokens",
        (
            gen_ai.USAGE_CACHE_READ_INPUT_TOKENS,
            gen_ai.USAGE_CACHE_READ_INPUT_TOKENS_OLD,
            "llm.token_count.prompt_details.cache_read",
        ),
    ),
    (
        "cache_write_tokens",
        (
            gen_ai.USAGE_CACHE_WRITE_INPUT_TOKENS_OLD,
            gen_ai.USAGE_CACHE_CREATION_INPUT_TOKENS,
            gen_ai.USAGE_CACHE_CREATION_INPUT_TOKENS_OLD,
            "llm.token_count.prompt_details.cache_write",
        ),
    ),
)
_COSTS: Final = (
    ("prompt_cost", (gen_ai.USAGE_INPUT_COST, "llm.cost.prompt")),
    ("output_cost", (gen_ai.USAGE_OUTPUT_COST, "llm.cost.completion")),
)
_USAGE_PREFIXES: Final = (gen_ai.USAGE_PREFIX, "llm.token_count.", "llm.usage.")
_FINISH_KEYS: Final = (
    gen_ai.RESPONSE_FINISH_REASONS,
    gen_ai.COMPLETION_FIRST_FINISH_REASON,
    "llm.response.finish_reason",
    "anthropic.message.stop_reason",
)
_USER_KEYS: Final = ("user.id", "enduser.id", gen_ai.USER_ID, "humanloop.log.user")
_SESSION_KEYS: Final = ("session.id", gen_ai.CONVERSATION_ID)

_TOOL_NAME_KEYS: Final = (gen_ai.TOOL_NAME, "tool.name", "traceloop.entity.name")
_TOOL_INPUT_KEYS: Final = (
    gen_ai.TOOL_CALL_ARGUMENTS,
    "tool_arguments",
    "tool.parameters",
    "input.value",
    "traceloop.entity.input",
)
_TOOL_OUTPUT_KEYS: Final = (
    gen_ai.TOOL_CALL_RESULT,
    "tool_response",
    "output.value",
    "traceloop.entity.output",
)
_INPUT_KEYS: Final = ("input.value", "traceloop.entity.input")
_OUTPUT_KEYS: Final = ("final_result", "output.value", "traceloop.entity.output")

#: Attributes read into fields (or meaningless once read): not repeated in metadata.
_CONSUMED_PREFIXES: Final = (
    _HL_FILE,
    _HL_LOG,
    gen_ai.INPUT_MESSAGES,
    gen_ai.OUTPUT_MESSAGES,
    gen_ai.SYSTEM_INSTRUCTIONS,
    gen_ai.TOOL_DEFINITIONS,
    FLOWTRACE_ENDED_ATTRIBUTE,
    gen_ai.PROMPT_PREFIX,
    gen_ai.COMPLETION_PREFIX,
    "llm.input_messages.",
    "llm.output_messages.",
    "input.",
    "output.",
    "traceloop.entity.input",
    "traceloop.entity.output",
    "all_messages_events",
    "pydantic_ai.all_messages",
    "final_result",
    "tool_arguments",
    "tool_response",
    gen_ai.TOOL_CALL_PREFIX,
    "exception.",
)


# --- paths -----------------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LONG_HEX = re.compile(r"\b[0-9a-fA-F]{16,}\b")
_NUMBER_SEGMENT = re.compile(r"(?<=[/=:\s])\d+(?=$|[/?&\s.])")


@functools.lru_cache(maxsize=4096)  # span names repeat: the regexes run once per name
def _path_name(name: str) -> str:
    """A span name made a bounded path part: ids and numbers in it (`GET /users/123`) become
    placeholders, so one route is one path; `/` would make folders, so it is replaced."""
    name = _UUID.sub("{uuid}", name)
    name = _LONG_HEX.sub("{hex}", name)
    name = _NUMBER_SEGMENT.sub("{n}", name)
    name = " ".join(name.replace("/", "\u2215").split())
    return name[:MAX_NAME_CHARS] or "span"


class PathCap:
    """Bounds how many distinct paths spans may create: past `limit`, a span whose derived
    path is new goes to `<kind>/other` (paths named by the span itself are kept)."""

    def __init__(self, limit: int = MAX_PATHS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def admit(self, path: str, kind: LogKind) -> str:
        if path in self._seen:
            return path
        if len(self._seen) >= self._limit:
            return f"{kind}/other"
        self._seen.add(path)
        return path


# --- one span ----------------------------------------------------------------------------------


def log_kind(attributes: Mapping[str, Any]) -> LogKind:
    """The kind of log a span's attributes make: `prompt` for an LLM call, `tool`, `flow`."""
    declared = attributes.get("humanloop.file.type")
    if declared in (FLOW, PROMPT, TOOL):
        return declared  # type: ignore[no-any-return]
    for table, key in (
        (_KIND_BY_OPERATION, gen_ai.OPERATION_NAME),
        (_KIND_BY_OPENINFERENCE, "openinference.span.kind"),
        (_KIND_BY_TRACELOOP, "traceloop.span.kind"),
    ):
        found = table.get(str(attributes.get(key, "")))
        if found is not None:
            return found  # type: ignore[return-value]
    if attributes.get("llm.request.type") in ("chat", "completion"):
        return PROMPT
    if _first(attributes, _TOOL_NAME_KEYS[:2]) is not None:
        return TOOL
    if _first(attributes, _MODEL_KEYS) is not None and _first(attributes, _PROVIDER_KEYS):
        return PROMPT
    return FLOW


def _clamp_ns(value: int) -> int:
    return min(max(value, _MIN_NS), _MAX_NS)


def _error(span: Span, fields: dict[str, Any], facts: dict[str, Any]) -> None:
    """Error from the exception event (type, message, stacktrace) or the span's status."""
    exception = next((e for e in span.events if e.name == "exception"), None)
    if exception is not None:
        kind = str(exception.attributes.get("exception.type", "") or "Exception")
        message = str(exception.attributes.get("exception.message", "") or "")
        fields["error"] = _text(f"{kind}: {message}" if message else kind)
        stack = exception.attributes.get("exception.stacktrace")
        if stack:
            facts[RECORDER_TRACEBACK] = _text(stack)
    elif span.status_code == "error":
        fields["error"] = _text(span.status_message or "error")
    if "error" in fields:
        facts[RECORDER_ENDED] = ENDED_ERROR


def _inputs(kind: LogKind, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    value = _unflatten(attributes, f"{_HL_LOG}.inputs")
    if value is None:
        value = _first(attributes, _TOOL_INPUT_KEYS if kind == TOOL else _INPUT_KEYS)
        value = _json_or_text(value)
    if value is None:
        return None
    bounded = _bounded(value, MAX_STRING_CHARS, MAX_MESSAGES)
    return bounded if isinstance(bounded, dict) else {"input": bounded}


def _output(kind: LogKind, attributes: Mapping[str, Any]) -> str | None:
    value = attributes.get(f"{_HL_LOG}.output")
    if value is None:
        value = _first(attributes, _TOOL_OUTPUT_KEYS if kind == TOOL else _OUTPUT_KEYS)
    return None if value is None else _text(value)


def _usage(attributes: Mapping[str, Any]) -> dict[str, int]:
    usage = {}
    for name, keys in _TOKENS:
        count = _int(_first(attributes, keys))
        if count is not None:
            usage[name] = count
    return usage


def _short_text(value: Any) -> str | None:
    return (
        None if value is None or isinstance(value, (dict, list)) else _text(value, MAX_NAME_CHARS)
    )


def _dict_of(value: Any) -> dict[str, Any] | None:
    return _bounded(value, MAX_STRING_CHARS) if isinstance(value, dict) else None


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [_text(item, MAX_NAME_CHARS) for item in value[:MAX_MESSAGES] if item is not None]
    return None


def _dicts(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, list):
        return [
            _bounded(item, MAX_STRING_CHARS)
            for item in value[:MAX_MESSAGES]
            if isinstance(item, dict)
        ]
    return None


def _template(value: Any) -> str | list[dict[str, Any]] | None:
    if isinstance(value, list):
        return _dicts(value)
    return None if value is None or isinstance(value, dict) else _text(value)


def _stop(value: Any) -> str | list[str] | None:
    return _texts(value) if isinstance(value, list) else _short_text(value)


#: How each prompt kernel field is read from a span's values (which are often text).
_KERNEL_READERS: Final[dict[str, Callable[[Any], Any]]] = {
    "model": _short_text,
    "endpoint": _short_text,
    "template": _template,
    "template_language": _short_text,
    "provider": _short_text,
    "max_tokens": _int,
    "temperature": _float,
    "top_p": _float,
    "stop": _stop,
    "presence_penalty": _float,
    "frequency_penalty": _float,
    "other": _dict_of,
    "seed": _int,
    "response_format": _dict_of,
    "reasoning_effort": _short_text,
    "tools": _dicts,
    "linked_tools": _texts,
    "attributes": _dict_of,
}


def _typed_kernel(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A prompt kernel from a span's (Humanloop's flattened) values: each field as its type,
    what cannot be read as such dropped, unknown fields kept under `attributes`."""
    kernel: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in list(raw.items())[:MAX_METADATA_KEYS]:
        reader = _KERNEL_READERS.get(key)
        if reader is None:
            extra[str(key)[:MAX_NAME_CHARS]] = _bounded(value)
            continue
        typed = reader(value)
        if typed is not None:
            kernel[key] = typed
    if extra:
        kernel["attributes"] = {**extra, **kernel.get("attributes", {})}
    return kernel


def _prompt_kernel(attributes: Mapping[str, Any]) -> dict[str, Any]:
    kernel: dict[str, Any] = {}
    hl_prompt = _unflatten(attributes, f"{_HL_FILE}.prompt")
    if isinstance(hl_prompt, dict):
        kernel.update(_typed_kernel(hl_prompt))
    model = _first(attributes, _MODEL_KEYS)
    provider = _first(attributes, _PROVIDER_KEYS)
    if model is not None:
        kernel.setdefault("model", _text(model, MAX_NAME_CHARS))
    if provider is not None:
        kernel.setdefault("provider", _text(provider, MAX_NAME_CHARS).lower())
    template = attributes.get(f"{_HL_FILE}.template")
    if template:
        kernel.setdefault("template", _text(template))
    tools = _tool_definitions(attributes.get(gen_ai.TOOL_DEFINITIONS))
    if tools:
        kernel.setdefault("tools", tools)
    invocation = _json_or_text(attributes.get("llm.invocation_parameters"))
    for name, keys, reader in _KERNEL_ATTRIBUTES:
        value = reader(_first(attributes, keys))
        if value is None and isinstance(invocation, dict) and name in _INVOCATION_PARAMETERS:
            value = reader(invocation.get(name))
        if value is not None:
            kernel.setdefault(name, value)
    return kernel


def _tool_definitions(value: Any) -> list[dict[str, Any]]:
    """`gen_ai.tool.definitions` (`[{"type": "function", "name", "description", "parameters"}]`,
    or OpenAI's `{"function": {...}}` shape) as the kernel's tool functions."""
    value = _json_or_text(value)
    if not isinstance(value, list):
        return []
    tools = []
    for item in value[:MAX_MESSAGES]:
        if not isinstance(item, dict):
            continue
        inner = item.get("function")
        definition = inner if isinstance(inner, dict) else item
        name = _short_text(definition.get("name"))
        if name is None:
            continue
        tool: dict[str, Any] = {"name": name}
        if _short_text(definition.get("description")) is not None:
            tool["description"] = _text(definition["description"])
        parameters = _dict_of(definition.get("parameters", definition.get("input_schema")))
        if parameters is not None:
            tool["parameters"] = parameters
        tools.append(tool)
    return tools


def _cost(fields: dict[str, Any], kernel: dict[str, Any], attributes: Mapping[str, Any]) -> None:
    for name, keys in _COSTS:
        value = _float(_first(attributes, keys))
        if value is not None:
            fields[name] = value
    if "prompt_cost" in fields or "output_cost" in fields:
        return
    total = _float(_first(attributes, (gen_ai.USAGE_COST, "llm.cost.total")))
    if total is not None:
        fields["prompt_cost"], fields["output_cost"] = total, 0.0
        return
    priced = _price(kernel.get("model"), kernel.get("provider"), fields)
    if priced is not None:
        fields["prompt_cost"], fields["output_cost"] = priced


def _price(model: Any, provider: Any, fields: Mapping[str, Any]) -> tuple[float, float] | None:
    """The optional `genai-prices` table, when installed and it knows the model."""
    if not isinstance(model, str) or "prompt_tokens" not in fields:
        return None
    usage = {name: fields[name] for name, _ in _TOKENS if name in fields}
    return llm_cost(model, provider if isinstance(provider, str) else None, usage)


def _finish_reason(attributes: Mapping[str, Any]) -> str | None:
    value = _first(attributes, _FINISH_KEYS)
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else _text(value, MAX_NAME_CHARS)


def _bounded(value: Any, limit: int = MAX_METADATA_STRING, items: int = 100, depth: int = 0) -> Any:
    """A value within budgets: strings cut with the truncation marker, containers to `items`
    entries, nesting to MAX_DEPTH levels."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= limit else _text(value, limit)
    if kind is int or kind is bool:
        return value
    if isinstance(value, float) and (value != value or value in (_INF, -_INF)):
        return str(value)  # JSON has no NaN or infinity
    if not isinstance(value, (list, dict)):
        return value
    if depth >= MAX_DEPTH:
        return f"<max depth: {type(value).__name__}>"
    if isinstance(value, list):
        return [_bounded(item, limit, items, depth + 1) for item in value[:items]]
    return {
        str(k)[:MAX_NAME_CHARS]: _bounded(v, limit, items, depth + 1)
        for k, v in list(value.items())[:items]
    }


@functools.lru_cache(maxsize=8192)  # attribute names repeat from span to span
def _metadata_key(key: str, prompt: bool) -> str | None:
    """The metadata name of an attribute, None for one read into fields. A prompt's usage is in
    its token fields; any other span's (an agent's totals over the calls under it) stays in
    metadata, so a trace's sum counts each call once."""
    if key.startswith(_CONSUMED_PREFIXES) or (prompt and key.startswith(_USAGE_PREFIXES)):
        return None
    return key[:MAX_NAME_CHARS]


def _metadata(span: Span, kind: LogKind, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes not read into fields, bounded, and the span's own facts."""
    rest: dict[str, Any] = {}
    dropped = 0
    prompt = kind == PROMPT
    for key, value in attributes.items():
        kept = _metadata_key(key, prompt)
        if kept is None:
            continue
        if len(rest) >= MAX_METADATA_KEYS:
            dropped += 1
            continue
        rest[kept] = _bounded(value)
    facts: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "span_kind": span.kind,
        "start_unix_nano": span.start_ns,
        "end_unix_nano": span.end_ns,
    }
    if span.parent_span_id:
        facts["parent_span_id"] = span.parent_span_id
    if span.scope_name:
        facts["scope"] = _text(span.scope_name, MAX_NAME_CHARS)
        if span.scope_version:
            facts["scope_version"] = _text(span.scope_version, MAX_NAME_CHARS)
    service = span.resource.get("service.name")
    if service is not None:
        facts["service"] = _text(service, MAX_NAME_CHARS)
    if span.status_code != "unset":
        facts["status"] = span.status_code
    if dropped:
        facts["attributes_dropped"] = dropped
    session = _first(attributes, _SESSION_KEYS)
    if session is not None:
        rest["session_id"] = _text(session, MAX_NAME_CHARS)
    rest[OTEL_METADATA_KEY] = facts
    return rest


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # the Humanloop SDK sends every value as text
    return None


def _tool_kernel(attributes: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A tool's kernel: its function's schema (Humanloop's flattened `humanloop.file.*`, or
    the GenAI tool name and description), each field as its type."""
    raw = _unflatten(attributes, f"{_HL_FILE}.function")
    raw = raw if isinstance(raw, dict) else {}
    function: dict[str, Any] = {"name": _short_text(raw.get("name")) or name}
    description = raw.get("description", attributes.get(gen_ai.TOOL_DESCRIPTION))
    if _short_text(description) is not None:
        function["description"] = _text(description)
    strict, parameters = _bool(raw.get("strict")), _dict_of(raw.get("parameters"))
    if strict is not None:
        function["strict"] = strict
    if parameters is not None:
        function["parameters"] = parameters
    kernel: dict[str, Any] = {"function": function}
    source_code = _template_text(_unflatten(attributes, f"{_HL_FILE}.source_code"))
    setup_values = _dict_of(_unflatten(attributes, f"{_HL_FILE}.setup_values"))
    if source_code is not None:
        kernel["source_code"] = source_code
    if setup_values is not None:
        kernel["setup_values"] = setup_values
    return kernel


def _template_text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else _text(value)


def _path(span: Span, kind: LogKind, attributes: Mapping[str, Any], cap: PathCap | None) -> str:
    declared = attributes.get("humanloop.file.path")
    if isinstance(declared, str) and declared.strip().strip("/"):
        return declared[:1000]
    if kind == TOOL:
        name = str(_first(attributes, _TOOL_NAME_KEYS) or span.name)
    elif kind == FLOW:
        name = str(_first(attributes, (gen_ai.AGENT_NAME, "agent_name")) or span.name)
    else:
        name = span.name
    path = f"{kind}/{_path_name(name)}"
    return cap.admit(path, kind) if cap is not None else path


def map_span(span: Span, paths: PathCap | None = None) -> MappedLog:
    """The log a span becomes (see the module's docstring). Never raises on span data."""
    attributes = _Attributes(span.attributes)
    kind = log_kind(attributes)
    start_ns = _clamp_ns(span.start_ns)
    end_ns = max(_clamp_ns(span.end_ns), start_ns)
    status = str(attributes.get(f"{_HL_LOG}.log_status", COMPLETE))
    fields: dict[str, Any] = {
        "start_time": wire_time_ns(start_ns),
        "end_time": wire_time_ns(end_ns),
        "provider_latency": (end_ns - start_ns) / 1e9,
        "trace_status": status if status in (COMPLETE, INCOMPLETE) else COMPLETE,
    }
    facts: dict[str, Any] = {}
    _error(span, fields, facts)
    ended = attributes.get(FLOWTRACE_ENDED_ATTRIBUTE)
    if ended in (ENDED_CLOSED_EARLY, ENDED_CANCELLED) and "error" not in fields:
        facts[RECORDER_ENDED] = ended  # a stream left before its end, as a generator's flow
    hl_error = attributes.get(f"{_HL_LOG}.error")
    if hl_error:
        fields["error"] = _text(hl_error)
    inputs = _inputs(kind, attributes)
    if inputs is not None:
        fields["inputs"] = inputs
    output = _output(kind, attributes)
    if output is not None:
        fields["output"] = output
    messages, output_message, other_choices = _messages(span, attributes)
    hl_messages = _unflatten(attributes, f"{_HL_LOG}.messages")
    if isinstance(hl_messages, list):
        messages = [m for m in (_humanloop_message(v) for v in hl_messages) if m is not None]
    hl_output_message = _humanloop_message(_unflatten(attributes, f"{_HL_LOG}.output_message"))
    output_message = hl_output_message or output_message
    if messages:
        fields["messages"] = messages
    if output_message is not None:
        fields["output_message"] = output_message
    user = _first(attributes, _USER_KEYS)
    if user is not None:
        fields["user"] = _text(user, MAX_NAME_CHARS)
    metadata = _metadata(span, kind, attributes)
    if other_choices:
        metadata[OTHER_CHOICES_METADATA_KEY] = other_choices
    if facts:
        metadata[RECORDER_METADATA_KEY] = facts
    fields["metadata"] = metadata

    kernel: dict[str, Any] = {}
    if kind == PROMPT:
        kernel = _prompt_kernel(attributes)
        fields.update(_usage(attributes))
        _cost(fields, kernel, attributes)
        finish = _finish_reason(attributes)
        if finish is not None:
            fields["finish_reason"] = finish
    elif kind == TOOL:
        tool_name = str(_first(attributes, _TOOL_NAME_KEYS) or span.name)
        kernel = _tool_kernel(attributes, _text(tool_name, MAX_NAME_CHARS))

    named = _first(attributes, (HUMANLOOP_LOG_ID_ATTRIBUTE, FLOWTRACE_LOG_ID_ATTRIBUTE))
    parent = attributes.get(f"{_HL_LOG}.trace_parent_id")
    if not isinstance(parent, str) or not parent:
        parent = span_log_id(span.trace_id, span.parent_span_id) if span.parent_span_id else None
    return MappedLog(
        log_id=str(named)[:MAX_NAME_CHARS] if named else span_log_id(span.trace_id, span.span_id),
        kind=kind,
        path=_path(span, kind, attributes, paths),
        parent_id=parent[:MAX_NAME_CHARS] if parent else None,
        fields=fields,
        kernel=kernel,
        completes=named is not None,
        start_ns=start_ns,
        end_ns=end_ns,
    )


def map_spans(spans: Iterable[Span], paths: PathCap | None = None) -> list[MappedLog]:
    return [map_span(span, paths) for span in spans]
