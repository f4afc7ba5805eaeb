"""Anthropic's Messages wire JSON as GenAI span attributes (on the worker).

A stream is folded back into the message it streams (`message_start`, content blocks joined
from their text and JSON deltas, `message_delta`'s stop reason and usage). Anthropic counts
cached input apart from `input_tokens`; the GenAI convention (and the contract) count it in,
so the input tokens here are the sum.
"""

from __future__ import annotations

import json
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

__all__ = ["messages_attributes"]

_TEXT_BLOCKS: Final = ("text", "thinking")


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts = [get(block, "text") for block in content or () if get(block, "type") == "text"]
    return "\n".join(str(text) for text in texts if text is not None)


def _messages(message: Any) -> list[dict[str, Any]]:
    """One request message; each `tool_result` block is a tool message of its own."""
    role = get(message, "role", "user")
    content = get(message, "content")
    if isinstance(content, str):
        return [{"role": role, "parts": [text_part(content)]}]
    parts: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in content or ():
        kind = get(block, "type")
        if kind == "tool_result":
            response = _block_text(get(block, "content", ""))
            part = tool_response_part(get(block, "tool_use_id"), response)
            results.append({"role": "tool", "parts": [part]})
        elif kind == "tool_use":
            arguments = json.dumps(get(block, "input", {}), default=str)
            parts.append(tool_call_part(get(block, "id"), get(block, "name"), arguments))
        elif kind in _TEXT_BLOCKS:
            parts.append(text_part(get(block, "text", get(block, "thinking", ""))))
        else:
            parts.append({"type": str(kind or "block")})
    return results + ([{"role": role, "parts": parts}] if parts else [])


def _folded_events(events: list[Any]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    json_parts: dict[int, list[str]] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[event.get("index", 0)] = dict(event.get("content_block") or {})
        elif kind == "content_block_delta":
            index, delta = event.get("index", 0), event.get("delta") or {}
            block = blocks.setdefault(index, {"type": "text", "text": ""})
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif delta.get("type") == "input_json_delta":
                json_parts.setdefault(index, []).append(str(delta.get("partial_json", "")))
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
    for index, parts in json_parts.items():
        try:
            blocks[index]["input"] = json.loads("".join(parts))
        except ValueError:  # cut short: the arguments as far as they came
            blocks[index]["input"] = "".join(parts)
    message["content"] = [blocks[index] for index in sorted(blocks)]
    return message


def _usage(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    counts = {key: usage[key] for key in usage if isinstance(usage[key], int)}
    cached = counts.get("cache_read_input_tokens", 0)
    written = counts.get("cache_creation_input_tokens", 0)
    attributes: dict[str, Any] = {}
    if "input_tokens" in counts:
        attributes[gen_ai.USAGE_INPUT_TOKENS] = counts["input_tokens"] + cached + written
    if "output_tokens" in counts:
        attributes[gen_ai.USAGE_OUTPUT_TOKENS] = counts["output_tokens"]
    if "cache_read_input_tokens" in counts:
        attributes[gen_ai.USAGE_CACHE_READ_INPUT_TOKENS] = cached
    if "cache_creation_input_tokens" in counts:
        attributes[gen_ai.USAGE_CACHE_CREATION_INPUT_TOKENS] = written
    return attributes


def messages_attributes(call: LlmCall) -> dict[str, Any]:
    request = call.request
    attributes = request_attributes(request, ("max_tokens",))
    system = request.get("system")
    if system:
        attributes[gen_ai.SYSTEM_INSTRUCTIONS] = [text_part(_block_text(system))]
    messages: list[dict[str, Any]] = []
    for message in request.get("messages") or ():
        messages.extend(_messages(message))
    attributes[gen_ai.INPUT_MESSAGES] = messages
    tools = [
        tool_definition(get(t, "name"), get(t, "description"), get(t, "input_schema"))
        for t in request.get("tools") or ()
        if get(t, "input_schema") is not None
    ]
    if tools:
        attributes[gen_ai.TOOL_DEFINITIONS] = tools
    body = response_body(call, _folded_events)
    if not isinstance(body, dict):
        return attributes
    attributes.update(response_identity(body))
    output = _messages({"role": "assistant", "content": body.get("content") or []})
    reason = body.get("stop_reason")
    if output:
        if reason:
            output[-1]["finish_reason"] = reason
        attributes[gen_ai.OUTPUT_MESSAGES] = output[-1:]
    if isinstance(reason, str):
        attributes[gen_ai.RESPONSE_FINISH_REASONS] = [reason]
    attributes.update(_usage(body.get("usage")))
    return attributes
