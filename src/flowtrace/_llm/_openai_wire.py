"""OpenAI's wire JSON (Chat Completions and Responses) as GenAI span attributes.

Runs on the worker, from the call's request snapshot and the body or stream events the SDK
parsed: a stream is folded back into the body it streams (content and tool-call deltas joined
per choice, the usage of the last, choice-less chunk), so both give the same attributes.
"""

from __future__ import annotations

from typing import Any, Final

from flowtrace._llm._call import LlmCall
from flowtrace._llm._wire import (
    get,
    request_attributes,
    response_body,
    response_identity,
    text_part,
    tool_call_part,
    tool_definition,
    tool_response_part,
)
from flowtrace.spans import _genai as gen_ai

__all__ = ["chat_attributes", "responses_attributes"]

_SYSTEM_ROLES: Final = ("system", "developer")


# --- Chat Completions --------------------------------------------------------------------------


def _content_parts(content: Any) -> list[dict[str, Any]]:
    """A message's `content`: text, or a list of parts (text kept, others named by type)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [text_part(content)] if content else []
    parts = []
    for part in content if isinstance(content, list) else [content]:
        kind = get(part, "type")
        text = get(part, "text", get(part, "refusal"))
        parts.append(text_part(text) if text is not None else {"type": str(kind or "part")})
    return parts


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    parts = []
    for call in calls or ():
        function = get(call, "function", {})
        parts.append(
            tool_call_part(get(call, "id"), get(function, "name"), get(function, "arguments"))
        )
    return parts


def _chat_message(message: Any) -> dict[str, Any]:
    role = get(message, "role", "user")
    if role == "tool":
        response = get(message, "content")
        if isinstance(response, list):
            response = "\n".join(p["content"] for p in _content_parts(response) if "content" in p)
        return {
            "role": "tool",
            "parts": [tool_response_part(get(message, "tool_call_id"), response)],
        }
    parts = _content_parts(get(message, "content"))
    refusal = get(message, "refusal")
    if refusal:
        parts.append(text_part(refusal))
    parts.extend(_tool_calls(get(message, "tool_calls")))
    out: dict[str, Any] = {"role": "system" if role in _SYSTEM_ROLES else role, "parts": parts}
    name = get(message, "name")
    if isinstance(name, str):
        out["name"] = name
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list the server sent (a body off the API's shape reads as empty)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    definitions = []
    for tool in tools or ():
        function = get(tool, "function")
        if function is None:
            continue  # a built-in tool (custom, web search): no function schema
        definitions.append(
            tool_definition(
                get(function, "name"), get(function, "description"), get(function, "parameters")
            )
        )
    return definitions


def _folded_chunks(chunks: list[Any]) -> dict[str, Any]:
    """Stream chunks folded into the body they stream."""
    body: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        for key in ("id", "model", "usage", "system_fingerprint"):
            if chunk.get(key) is not None:
                body[key] = chunk[key]
        for delta_choice in _dicts(chunk.get("choices")):
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant"}, "_calls": {}}
            )
            delta = delta_choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            message = choice["message"]
            for key in ("content", "refusal"):
                if delta.get(key):
                    message[key] = message.get(key, "") + delta[key]
            for call_delta in _dicts(delta.get("tool_calls")):
                call = choice["_calls"].setdefault(
                    call_delta.get("index", 0), {"function": {"name": "", "arguments": ""}}
                )
                if call_delta.get("id"):
                    call["id"] = call_delta["id"]
                function = call_delta.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]
    for choice in choices.values():
        calls = choice.pop("_calls")
        if calls:
            choice["message"]["tool_calls"] = [calls[i] for i in sorted(calls)]
    body["choices"] = [choices[i] for i in sorted(choices)]
    return body


def _usage(usage: Any, input_key: str, output_key: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if not isinstance(usage, dict):
        return attributes
    for key, name in (
        (input_key, gen_ai.USAGE_INPUT_TOKENS),
        (output_key, gen_ai.USAGE_OUTPUT_TOKENS),
    ):
        if isinstance(usage.get(key), int):
            attributes[name] = usage[key]
    details_in = usage.get(f"{input_key}_details") or {}
    details_out = usage.get(f"{output_key}_details") or {}
    if isinstance(details_in, dict) and isinstance(details_in.get("cached_tokens"), int):
        attributes[gen_ai.USAGE_CACHE_READ_INPUT_TOKENS] = details_in["cached_tokens"]
    if isinstance(details_out, dict) and isinstance(details_out.get("reasoning_tokens"), int):
        attributes[gen_ai.USAGE_REASONING_OUTPUT_TOKENS] = details_out["reasoning_tokens"]
    return attributes


def chat_attributes(call: LlmCall) -> dict[str, Any]:
    request = call.request
    attributes = request_attributes(request, ("max_completion_tokens", "max_tokens"))
    attributes[gen_ai.INPUT_MESSAGES] = [_chat_message(m) for m in request.get("messages") or ()]
    tools = _chat_tools(request.get("tools"))
    if tools:
        attributes[gen_ai.TOOL_DEFINITIONS] = tools
    body = response_body(call, _folded_chunks)
    if not isinstance(body, dict):
        return attributes
    attributes.update(response_identity(body))
    outputs, reasons = [], []
    for choice in _dicts(body.get("choices")):
        given = choice.get("message")
        message = _chat_message({**(given if isinstance(given, dict) else {}), "role": "assistant"})
        reason = choice.get("finish_reason")
        if reason:
            message["finish_reason"] = reason
            reasons.append(reason)
        if message["parts"] or reason:  # a stream left before any text: no output yet
            outputs.append(message)
    if outputs:
        attributes[gen_ai.OUTPUT_MESSAGES] = outputs
    if reasons:
        attributes[gen_ai.RESPONSE_FINISH_REASONS] = reasons
    attributes.update(_usage(body.get("usage"), "prompt_tokens", "completion_tokens"))
    return attributes


# --- Responses ---------------------------------------------------------------------------------


def _responses_item(item: Any) -> dict[str, Any] | None:
    kind = get(item, "type", "message")
    if kind == "function_call":
        call = tool_call_part(get(item, "call_id"), get(item, "name"), get(item, "arguments"))
        return {"role": "assistant", "parts": [call]}
    if kind == "function_call_output":
        return {
            "role": "tool",
            "parts": [tool_response_part(get(item, "call_id"), get(item, "output"))],
        }
    if kind != "message":
        return None  # reasoning, built-in tool calls: not a message
    role = get(item, "role", "user")
    return {
        "role": "system" if role in _SYSTEM_ROLES else role,
        "parts": _content_parts(get(item, "content")),
    }


def _responses_stream_body(chunks: list[Any]) -> dict[str, Any]:
    """The final response an event carries, else the text streamed before the end."""
    text = []
    for event in reversed(chunks):
        response = event.get("response") if isinstance(event, dict) else None
        if isinstance(response, dict) and response.get("status") != "in_progress":
            return response
    for event in chunks:
        if isinstance(event, dict) and event.get("type") == "response.output_text.delta":
            text.append(str(event.get("delta", "")))
    started: dict[str, Any] = next(
        (e["response"] for e in chunks if isinstance(e, dict) and "response" in e), {}
    )
    output = [{"type": "message", "role": "assistant", "content": "".join(text)}] if text else []
    return {**started, "output": output}


def responses_attributes(call: LlmCall) -> dict[str, Any]:
    request = call.request
    attributes = request_attributes(request, ("max_output_tokens",))
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        attributes[gen_ai.SYSTEM_INSTRUCTIONS] = [text_part(instructions)]
    given = request.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given or ()
    attributes[gen_ai.INPUT_MESSAGES] = [m for m in map(_responses_item, items) if m is not None]
    tools = [
        tool_definition(get(t, "name"), get(t, "description"), get(t, "parameters"))
        for t in request.get("tools") or ()
        if get(t, "type") == "function"
    ]
    if tools:
        attributes[gen_ai.TOOL_DEFINITIONS] = tools
    body = response_body(call, _responses_stream_body)
    if not isinstance(body, dict):
        return attributes
    attributes.update(response_identity(body))
    parts = []
    for message in map(_responses_item, body.get("output") or ()):
        if message is not None:
            parts.extend(message["parts"])
    reason = body.get("status")
    details = body.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason"):
        reason = details["reason"]
    if parts:
        output: dict[str, Any] = {"role": "assistant", "parts": parts}
        if reason:
            output["finish_reason"] = reason
        attributes[gen_ai.OUTPUT_MESSAGES] = [output]
    if isinstance(reason, str):
        attributes[gen_ai.RESPONSE_FINISH_REASONS] = [reason]
    attributes.update(_usage(body.get("usage"), "input_tokens", "output_tokens"))
    return attributes
