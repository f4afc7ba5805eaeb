"""Pydantic models of the "Log to a Flow" wire contract (docs/contract.md).

Client and server share these: the HTTP exporter builds request bodies that validate against
them, and the server validates what it receives with them. Request models forbid unknown fields
(the contract answers 422); response models ignore unknown fields so the client keeps working
against newer servers.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from flowtrace._contract import (
    DEFAULT_STATUS_FIELD,
    FLOW,
    STATUS_FIELDS,
    ChatRole,
    LogKind,
    StatusField,
    TraceStatus,
    wire_time,
)

__all__ = [
    "BatchRequest",
    "BatchResponse",
    "BatchResult",
    "ChatMessage",
    "ChatRole",
    "CreateFlowLogResponse",
    "CreateOperation",
    "CreatePromptLogResponse",
    "CreateToolLogResponse",
    "DeployRequest",
    "FlowKernel",
    "FlowLogRequest",
    "FlowLogResponse",
    "FlowLogUpdateRequest",
    "FlowResponse",
    "FlowUpsertRequest",
    "FunctionCall",
    "ImageUrl",
    "ImageUrlContent",
    "LogKind",
    "LogOperation",
    "LogQuery",
    "PaginatedLogs",
    "PromptKernel",
    "PromptLogOperation",
    "PromptLogRequest",
    "PromptLogUpdateRequest",
    "StatusField",
    "TextContent",
    "ToolCall",
    "ToolFunction",
    "ToolKernel",
    "ToolLogOperation",
    "ToolLogRequest",
    "ToolLogUpdateRequest",
    "TraceStatus",
    "UpdateOperation",
    "VersionResponse",
    "WireDatetime",
]


def _coerce_datetime(value: object) -> object:
    """Accept epoch seconds (older clients) and naive datetimes (taken as UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{value} seconds since the epoch is out of range") from None
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        # Parse here so a naive ISO string can be made UTC before pydantic sees it.
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value  # let pydantic produce its precise error
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return value


def _as_utc(value: datetime) -> datetime:
    """Every datetime is kept in UTC; one that UTC cannot hold is refused (a 422, not a 500)."""
    try:
        return value.astimezone(timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError("datetime is out of range in UTC") from None


WireDatetime = Annotated[
    datetime,
    BeforeValidator(_coerce_datetime),
    AfterValidator(_as_utc),
    PlainSerializer(wire_time, return_type=str, when_used="json"),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- chat messages -------------------------------------------------------------------------


class TextContent(_Request):
    type: Literal["text"]
    text: str


class ImageUrl(_Request):
    url: str
    detail: Literal["high", "low", "auto"] | None = None


class ImageUrlContent(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextContent | ImageUrlContent, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str | None = None


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: ChatRole
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


# --- requests ------------------------------------------------------------------------------


class FlowKernel(_Request):
    """The Flow version: the same attributes mean the same version."""

    attributes: dict[str, Any]


def _one_status_field(data: Any) -> Any:
    if isinstance(data, dict) and all(name in data for name in STATUS_FIELDS):
        raise ValueError("send either trace_status or log_status, not both")
    return data


class _StatusMixin(BaseModel):
    trace_status: TraceStatus | None = None
    log_status: TraceStatus | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_status_fields(cls, data: Any) -> Any:
        return _one_status_field(data)

    @property
    def status(self) -> TraceStatus | None:
        """The status sent, under whichever of the two names the client used."""
        return self.trace_status or self.log_status

    @property
    def status_field(self) -> StatusField:
        """The name the request used (the answer uses the same one)."""
        sent = self.model_fields_set
        return next((name for name in STATUS_FIELDS if name in sent), DEFAULT_STATUS_FIELD)


class _LogFields(BaseModel):
    """What a log records: the fields a `POST /flows/log` sends and `GET /logs/{id}` returns."""

    messages: list[ChatMessage] | None = None
    output_message: ChatMessage | None = None
    run_id: str | None = None
    start_time: WireDatetime | None = None
    end_time: WireDatetime | None = None
    output: str | None = None
    created_at: WireDatetime | None = None
    error: str | None = None
    provider_latency: float | None = None
    stdout: str | None = None
    provider_request: dict[str, Any] | None = None
    provider_response: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    source: str | None = None
    metadata: dict[str, Any] | None = None
    source_datapoint_id: str | None = None
    trace_parent_id: str | None = None
    user: str | None = None
    environment: str | None = None
    save: bool | None = None


class FlowLogRequest(_StatusMixin, _LogFields, _Request):
    """Body of `POST /flows/log`: every field optional."""

    path: str | None = None
    id: str | None = None
    log_id: str | None = Field(default=None, min_length=1)  # "" could not be fetched
    flow: FlowKernel | None = None


class FlowLogUpdateRequest(_StatusMixin, _Request):
    """Body of `PATCH /flows/logs/{id}`: a field sent as null is unset (see model_fields_set).

    The contract's fields are status, inputs, output, error, messages and output_message. A
    flowtrace server also takes the fields a log only knows once it ends (the flowtrace
    extension below), so a long-running log that was sent early loses nothing when it is
    completed. The client sends them only to a server that offers the extension.
    """

    inputs: dict[str, Any] | None = None
    output: str | None = None
    error: str | None = None
    messages: list[ChatMessage] | None = None
    output_message: ChatMessage | None = None
    # flowtrace extension
    end_time: WireDatetime | None = None
    provider_latency: float | None = None
    stdout: str | None = None
    metadata: dict[str, Any] | None = None
    provider_request: dict[str, Any] | None = None
    provider_response: dict[str, Any] | None = None


class _PromptFields(BaseModel):
    """What a prompt log records beyond a flow log's fields (`_contract.PROMPT_LOG_FIELDS`)."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_read_tokens: int | None = None  # flowtrace: part of prompt_tokens
    cache_write_tokens: int | None = None  # flowtrace: part of prompt_tokens
    prompt_cost: float | None = None
    output_cost: float | None = None
    finish_reason: str | None = None
    tool_choice: str | dict[str, Any] | None = None


class PromptKernel(_Request):
    """A prompt version (`_contract.PROMPT_KERNEL_FIELDS`): the same kernel, the same version.
    `model` is required by the original API; flowtrace also takes a log whose model is unknown."""

    model: str | None = None
    endpoint: str | None = None
    template: str | list[dict[str, Any]] | None = None
    template_language: str | None = None
    provider: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    other: dict[str, Any] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | int | None = None
    tools: list[dict[str, Any]] | None = None
    linked_tools: list[str] | None = None
    attributes: dict[str, Any] | None = None


class ToolFunction(_Request):
    """A tool's function schema, as an LLM API takes it."""

    name: str
    description: str | None = None
    strict: bool | None = None
    parameters: dict[str, Any] | None = None


class ToolKernel(_Request):
    """A tool version (`_contract.TOOL_KERNEL_FIELDS`)."""

    function: ToolFunction | None = None
    source_code: str | None = None
    setup_values: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None


class PromptLogRequest(_StatusMixin, _PromptFields, _LogFields, _Request):
    """Body of `POST /prompts/log`: one LLM call. `prompt` is the version's kernel (or the
    text of a serialized prompt file, kept as it came)."""

    path: str | None = None
    id: str | None = None
    log_id: str | None = Field(default=None, min_length=1)
    prompt: PromptKernel | str | None = None


class ToolLogRequest(_StatusMixin, _LogFields, _Request):
    """Body of `POST /tools/log`: one tool call; `tool` is the version's kernel."""

    path: str | None = None
    id: str | None = None
    log_id: str | None = Field(default=None, min_length=1)
    tool: ToolKernel | None = None


class _LogUpdateFields(BaseModel):
    """What `PATCH /prompts/{id}/log/{log_id}` and `PATCH /tools/{id}/log/{log_id}` may set."""

    output: str | None = None
    created_at: WireDatetime | None = None
    error: str | None = None
    provider_latency: float | None = None
    stdout: str | None = None
    provider_request: dict[str, Any] | None = None
    provider_response: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    source: str | None = None
    metadata: dict[str, Any] | None = None
    start_time: WireDatetime | None = None
    end_time: WireDatetime | None = None


class PromptLogUpdateRequest(_StatusMixin, _PromptFields, _LogUpdateFields, _Request):
    output_message: ChatMessage | None = None
    messages: list[ChatMessage] | None = None


class ToolLogUpdateRequest(_StatusMixin, _LogUpdateFields, _Request):
    pass


class FlowUpsertRequest(_Request):
    """Body of `POST /flows`: upsert a Flow by path (or id) and its version by attributes."""

    path: str | None = None
    id: str | None = None
    attributes: dict[str, Any]
    version_name: str | None = None
    version_description: str | None = None


class DeployRequest(_Request):
    version_id: str


class LogQuery(_Request):
    version_id: str | None = None
    environment: str | None = None


class LogOperation(_Request):
    """Batch extension: one `POST /flows/log`."""

    op: Literal["log"]
    query: LogQuery | None = None
    body: FlowLogRequest


class PromptLogOperation(_Request):
    """Batch extension: one `POST /prompts/log` (an LLM call)."""

    op: Literal["prompt_log"]
    query: LogQuery | None = None
    body: PromptLogRequest


class ToolLogOperation(_Request):
    """Batch extension: one `POST /tools/log` (a tool call)."""

    op: Literal["tool_log"]
    query: LogQuery | None = None
    body: ToolLogRequest


#: A batch operation that creates a log, of any kind.
CreateOperation = LogOperation | PromptLogOperation | ToolLogOperation


class UpdateOperation(_Request):
    """Batch extension: one `PATCH /flows/logs/{log_id}` (of a log of any kind)."""

    op: Literal["update"]
    log_id: str
    body: FlowLogUpdateRequest


class BatchRequest(_Request):
    """Batch extension body. Operations stay raw here: each is validated on its own, so one
    malformed operation fails alone (its result is a 422) instead of failing the batch."""

    operations: list[dict[str, Any]]


# --- responses -----------------------------------------------------------------------------


class CreateFlowLogResponse(_Response):
    id: str
    flow_id: str
    version_id: str
    trace_status: TraceStatus | None = None
    log_status: TraceStatus | None = None


class _CreatedFileLog(_Response):
    id: str
    version_id: str
    trace_status: TraceStatus | None = None
    log_status: TraceStatus | None = None


class CreatePromptLogResponse(_CreatedFileLog):
    prompt_id: str


class CreateToolLogResponse(_CreatedFileLog):
    tool_id: str


class FlowResponse(_Response):
    """A file record: a flow, or (`type`) a prompt or a tool, whose `attributes` are then its
    version's kernel."""

    path: str
    id: str
    name: str
    version_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    type: LogKind = FLOW
    status: str = "committed"
    created_at: WireDatetime
    updated_at: WireDatetime
    last_used_at: WireDatetime | None = None
    version_logs_count: int = 0
    total_logs_count: int | None = None  # the file's logs, all versions
    version_name: str | None = None
    version_description: str | None = None


class VersionResponse(_Response):
    version_id: str
    flow_id: str
    path: str
    attributes: dict[str, Any]
    version_name: str | None = None
    version_description: str | None = None
    created_at: WireDatetime
    environments: list[str] = Field(default_factory=list)
    version_logs_count: int = 0


class FlowLogResponse(_PromptFields, _LogFields, _Response):
    """One stored log as `GET /logs/{id}` returns it, of any kind: `flow.type` says which (the
    wire names the file `prompt` or `tool` for those kinds, see server/_responses.py). The
    prompt fields are set on prompt logs only; `placeholder` on a parent not yet received."""

    id: str
    trace_id: str
    trace_flow_id: str
    trace_children: list[FlowLogResponse] = Field(default_factory=list)
    evaluator_logs: list[Any] = Field(default_factory=list)
    trace_status: TraceStatus | None = None
    log_status: TraceStatus | None = None
    flow: FlowResponse
    placeholder: bool | None = None


class PaginatedLogs(_Response):
    records: list[FlowLogResponse]
    page: int
    size: int
    total: int


class BatchResult(_Response):
    status: int
    body: Any = None


class BatchResponse(_Response):
    results: list[BatchResult]
