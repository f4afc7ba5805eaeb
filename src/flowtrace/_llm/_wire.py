"""Shared pieces of reading an LLM API's wire JSON into OpenTelemetry GenAI attributes.

Messages are written in the GenAI convention's shape (`{"role", "parts": [{"type": "text" |
"tool_call" | "tool_call_response", ...}]}`), the one the span-to-log mapping reads from any
producer. Request values may be the SDK's own model objects (an agent appends the previous
response's message to its list): `get` reads a dict key or an attribute alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from flowtrace.spans import _genai as gen_ai

if TYPE_CHECKING:
    from flowtrace._llm._call import LlmCall

__all__ = [
    "get",
    "request_attributes",
    "response_body",
    "response_identity",
    "text_part",
    "tool_call_part",
    "tool_definition",
    "tool_response_part",
]

_MISSING: Final = object()


def get(value: Any, key: str, default: Any = None) -> Any:
    """`value[key]` of a dict, `value.key` of an SDK model, else `default`."""
    if isinstance(value, dict):
        return value.get(key, default)
    found = getattr(value, key, _MISSING)
    return default if found is _MISSING or found is None else found


def response_body(call: LlmCall, fold: Callable[[list[Any]], dict[str, Any]]) -> Any:
    """The body the call answered: its stream's events folded into one, the body the SDK
    parsed, or the bytes a raw response read (None when none came)."""
    if call.streamed:
        return fold(call.chunks)
    if call.body is not None or call.raw_body is None:
        return call.body
    try:
        return json.loads(call.raw_body)
    except ValueError:
        return None


def response_identity(body: dict[str, Any]) -> dict[str, Any]:
    """The model that answered and the response's id."""
    attributes: dict[str, Any] = {}
    if isinstance(body.get("model"), str):
        attributes[gen_ai.RESPONSE_MODEL] = body["model"]
    if isinstance(body.get("id"), str):
        attributes[gen_ai.RESPONSE_ID] = body["id"]
    return attributes


def text_part(text: Any) -> dict[str, Any]:
    return {"type": "text", "content": text if isinstance(text, str) else str(text)}


def tool_call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def tool_response_part(call_id: Any, response: Any) -> dict[str, Any]:
    return {"type": "tool_call_response", "id": call_id, "response": response}


def tool_definition(name: Any, description: Any, parameters: Any) -> dict[str, Any]:
    """One tool as `gen_ai.tool.definitions` lists it."""
    definition: dict[str, Any] = {"type": "function", "name": name}
    if description:
        definition["description"] = description
    if parameters is not None:
        definition["parameters"] = parameters
    return definition


#: Request arguments that are GenAI request attributes as they are.
_REQUEST_ATTRIBUTES: Final = (
    ("temperature", gen_ai.REQUEST_TEMPERATURE),
    ("top_p", gen_ai.REQUEST_TOP_P),
    ("top_k", gen_ai.REQUEST_TOP_K),
    ("presence_penalty", gen_ai.REQUEST_PRESENCE_PENALTY),
    ("frequency_penalty", gen_ai.REQUEST_FREQUENCY_PENALTY),
    ("seed", gen_ai.REQUEST_SEED),
    ("n", gen_ai.REQUEST_CHOICE_COUNT),
)


def request_attributes(request: dict[str, Any], max_tokens_keys: Iterable[str]) -> dict[str, Any]:
    """The model and sampling parameters the request set (none the SDK left out)."""
    attributes: dict[str, Any] = {}
    model = request.get("model")
    if isinstance(model, str):
        attributes[gen_ai.REQUEST_MODEL] = model
    for key, name in _REQUEST_ATTRIBUTES:
        value = request.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attributes[name] = value
    for key in max_tokens_keys:
        value = request.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[gen_ai.REQUEST_MAX_TOKENS] = value
            break
    stop = request.get("stop", request.get("stop_sequences"))
    if isinstance(stop, str):
        attributes[gen_ai.REQUEST_STOP_SEQUENCES] = [stop]
    elif isinstance(stop, list):
        attributes[gen_ai.REQUEST_STOP_SEQUENCES] = [str(item) for item in stop]
    return attributes
