"""The OpenTelemetry GenAI semantic conventions' attribute and event names, spelled once.

What the span-to-log mapping reads (from any producer), what the LLM client instrumentation
writes, and what the OTLP export sends all name these; a `gen_ai.` string literal anywhere
else in src/ fails tests/test_contract.py. Current names first, then the older spellings
producers still send (read, never written).
"""

from __future__ import annotations

from typing import Final

#: Every GenAI attribute starts so (the processor keeps a span carrying one).
PREFIX: Final = "gen_ai."

# --- the operation ---------------------------------------------------------------------------
OPERATION_NAME: Final = "gen_ai.operation.name"  # "chat", "execute_tool", "invoke_agent"...
PROVIDER_NAME: Final = "gen_ai.provider.name"  # "openai", "anthropic"...
SYSTEM: Final = "gen_ai.system"  # the provider's older name
AGENT_NAME: Final = "gen_ai.agent.name"
CONVERSATION_ID: Final = "gen_ai.conversation.id"
USER_ID: Final = "gen_ai.user.id"  # not in the convention; some producers send it

# --- the request -----------------------------------------------------------------------------
REQUEST_MODEL: Final = "gen_ai.request.model"
REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
REQUEST_TOP_P: Final = "gen_ai.request.top_p"
REQUEST_TOP_K: Final = "gen_ai.request.top_k"
REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
REQUEST_SEED: Final = "gen_ai.request.seed"
REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"  # `n`
REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
REQUEST_STREAM: Final = "gen_ai.request.stream"  # whether the call streamed

# --- the response ----------------------------------------------------------------------------
RESPONSE_MODEL: Final = "gen_ai.response.model"  # the model that answered
RESPONSE_ID: Final = "gen_ai.response.id"
RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"  # one per choice
RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"  # seconds

# --- content (JSON: `{"role", "parts": [...]}` messages) -------------------------------------
INPUT_MESSAGES: Final = "gen_ai.input.messages"
OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"  # parts
TOOL_DEFINITIONS: Final = "gen_ai.tool.definitions"

# --- tools -----------------------------------------------------------------------------------
TOOL_NAME: Final = "gen_ai.tool.name"
TOOL_DESCRIPTION: Final = "gen_ai.tool.description"
TOOL_CALL_PREFIX: Final = "gen_ai.tool.call."
TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"

# --- usage -----------------------------------------------------------------------------------
USAGE_PREFIX: Final = "gen_ai.usage."
USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"  # cached ones included
USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
USAGE_INPUT_COST: Final = "gen_ai.usage.input_cost"  # not in the convention: pydantic-ai's
USAGE_OUTPUT_COST: Final = "gen_ai.usage.output_cost"
USAGE_COST: Final = "gen_ai.usage.cost"
# older spellings, read only
USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
USAGE_REASONING_TOKENS: Final = "gen_ai.usage.reasoning_tokens"
USAGE_CACHE_READ_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_read_input_tokens"
USAGE_CACHE_WRITE_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_write.input_tokens"
USAGE_CACHE_CREATION_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_creation_input_tokens"

# --- the older per-message events (content in `gen_ai.event.content` or `content`) ------------
EVENT_SYSTEM_MESSAGE: Final = "gen_ai.system.message"
EVENT_USER_MESSAGE: Final = "gen_ai.user.message"
EVENT_ASSISTANT_MESSAGE: Final = "gen_ai.assistant.message"
EVENT_TOOL_MESSAGE: Final = "gen_ai.tool.message"
EVENT_CHOICE: Final = "gen_ai.choice"  # the output
EVENT_CONTENT: Final = "gen_ai.event.content"

# --- OpenLLMetry's flattened messages (`gen_ai.prompt.0.role`, `gen_ai.completion.0.content`) --
PROMPT: Final = "gen_ai.prompt"
COMPLETION: Final = "gen_ai.completion"
PROMPT_PREFIX: Final = "gen_ai.prompt."
COMPLETION_PREFIX: Final = "gen_ai.completion."
COMPLETION_FIRST_FINISH_REASON: Final = "gen_ai.completion.0.finish_reason"
