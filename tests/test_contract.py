"""The contract's vocabulary is defined once (flowtrace._contract) and every part agrees with it:
the models, the request bodies, the store, the viewer and the flow options."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import get_args

import flowtrace
from flowtrace import _contract
from flowtrace._options import FlowKeywords, FlowOptions
from flowtrace._scrub import IDENTITY_FIELDS, Scrubber
from flowtrace._serialize import Limits, snapshot
from flowtrace.exporters import FILE_LOG_KINDS, OperationKind
from flowtrace.models import (
    ChatMessage,
    FlowLogRequest,
    FlowLogResponse,
    FlowLogUpdateRequest,
    _LogFields,
)
from flowtrace.server._health import Health
from flowtrace.server.viewer import _trace_json
from flowtrace.store._batch import OPERATION_MODELS

TRACE_SCRIPT = Path(_trace_json.__file__).with_name("static") / "trace.js"


def test_the_log_fields_are_the_models_fields() -> None:
    assert list(_LogFields.model_fields) == list(_contract.LOG_FIELDS)
    assert set(_contract.LOG_FIELDS) <= set(FlowLogRequest.model_fields)
    assert set(_contract.LOG_FIELDS) <= set(FlowLogResponse.model_fields)


def test_payload_and_update_fields_are_log_fields() -> None:
    log_fields = set(_contract.LOG_FIELDS)
    assert log_fields >= _contract.PAYLOAD_FIELDS
    assert log_fields >= _contract.UPDATE_EXTENSION_FIELDS
    update_fields = set(FlowLogUpdateRequest.model_fields)
    assert update_fields == (
        set(_contract.CONTRACT_UPDATE_FIELDS)
        | _contract.UPDATE_EXTENSION_FIELDS
        | set(_contract.STATUS_FIELDS)
    )
    assert not set(_contract.CONTRACT_UPDATE_FIELDS) & _contract.UPDATE_EXTENSION_FIELDS


def test_status_names_and_chat_roles_are_the_models() -> None:
    assert set(_contract.STATUS_FIELDS) <= set(FlowLogRequest.model_fields)
    assert set(_contract.STATUS_FIELDS) <= set(FlowLogResponse.model_fields)
    assert _contract.DEFAULT_STATUS_FIELD in _contract.STATUS_FIELDS
    assert set(get_args(_contract.TraceStatus)) == {_contract.COMPLETE, _contract.INCOMPLETE}
    role = ChatMessage.model_fields["role"].annotation
    assert set(get_args(role)) == _contract.CHAT_ROLES
    assert tuple(ChatMessage.model_fields) == _contract.CHAT_MESSAGE_KEYS


def test_every_field_of_a_log_is_shown_by_the_viewer_or_excluded_on_purpose() -> None:
    shown = set(_trace_json.SHOWN_AS_LOGGED)
    derived = set(_trace_json.SHOWN_DERIVED)
    excluded = set(_trace_json.NOT_SHOWN)
    assert not (shown & derived or shown & excluded or derived & excluded)
    assert set(FlowLogResponse.model_fields) == shown | derived | excluded
    script = TRACE_SCRIPT.read_text()
    unrendered = [name for name in shown if not re.search(rf"\blog\.{name}\b", script)]
    assert unrendered == [], "the trace page's script does not render these fields"


def test_the_flow_options_are_spelled_once() -> None:
    fields = [field.name for field in FlowOptions.__dataclass_fields__.values()]
    assert list(FlowKeywords.__annotations__) == fields
    documentation = inspect.getdoc(flowtrace.flow) or ""
    assert [name for name in fields if f"`{name}`" not in documentation] == []


def test_the_truncation_marker_is_the_contracts() -> None:
    limits = Limits(max_string=4, max_items=2)
    assert snapshot("abcdefgh", limits) == "abcd" + _contract.truncated_chars(8)
    assert snapshot([1, 2, 3], limits) == [1, 2, _contract.truncated_items(3)]
    assert _contract.truncated_items(3).startswith(_contract.TRUNCATED_PREFIX)


def test_the_prompt_and_tool_vocabulary_is_the_models() -> None:
    from flowtrace.models import (
        PromptKernel,
        PromptLogRequest,
        PromptLogUpdateRequest,
        ToolKernel,
        ToolLogRequest,
        _PromptFields,
    )

    assert tuple(_PromptFields.model_fields) == _contract.PROMPT_LOG_FIELDS
    assert set(_contract.TOKEN_FIELDS) | set(_contract.COST_FIELDS) < set(
        _contract.PROMPT_LOG_FIELDS
    )
    assert tuple(PromptKernel.model_fields) == _contract.PROMPT_KERNEL_FIELDS
    assert tuple(ToolKernel.model_fields) == _contract.TOOL_KERNEL_FIELDS
    for model in (PromptLogRequest, PromptLogUpdateRequest, FlowLogResponse):
        assert set(_contract.PROMPT_LOG_FIELDS) <= set(model.model_fields), model
    assert set(_contract.LOG_FIELDS) <= set(PromptLogRequest.model_fields)
    assert set(_contract.LOG_FIELDS) <= set(ToolLogRequest.model_fields)
    assert _contract.PLACEHOLDER_FIELD in FlowLogResponse.model_fields
    kinds = FlowLogResponse.model_fields["flow"].annotation
    assert kinds is not None
    assert set(get_args(kinds.model_fields["type"].annotation)) == set(_contract.LOG_KINDS)


def test_span_log_ids_and_the_pending_status_are_the_contracts() -> None:
    from flowtrace._log_display import view_status
    from flowtrace.spans import Span, map_span

    span = Span(trace_id="ab" * 16, span_id="cd" * 8, name="step", start_ns=1, end_ns=2)
    assert map_span(span).log_id == _contract.span_log_id("ab" * 16, "cd" * 8)
    assert map_span(span).log_id.startswith(_contract.SPAN_LOG_ID_PREFIX)
    named = Span(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        name="humanloop.flow",
        start_ns=1,
        end_ns=2,
        attributes={_contract.HUMANLOOP_LOG_ID_ATTRIBUTE: "log_123"},
    )
    assert (map_span(named).log_id, map_span(named).completes) == ("log_123", True)
    from tests.viewerdata import make_log

    pending = make_log("p", _contract.PLACEHOLDER_PATH, placeholder=True)
    assert view_status(pending) == _contract.PENDING


def test_the_viewer_shows_every_prompt_field_and_every_file_kind() -> None:
    shown = set(_trace_json.SHOWN_AS_LOGGED)
    assert set(_contract.PROMPT_LOG_FIELDS) <= shown
    assert _contract.PLACEHOLDER_FIELD in _trace_json.SHOWN_DERIVED
    script = TRACE_SCRIPT.read_text()
    for kernel_field in ("model", "provider", "temperature", "max_tokens"):
        assert f"log.kernel.{kernel_field}" in script


def test_the_scrubbing_marker_is_the_contracts() -> None:
    record = Scrubber().scrub({"inputs": {"password": "x"}, "stdout": "password=y"}).record
    assert record["inputs"]["password"] == _contract.scrubbed("password")
    assert record["stdout"] == "password=" + _contract.scrubbed("password")
    marker = _contract.scrubbed("rule")
    assert marker == _contract.SCRUBBED_PREFIX + "rule" + _contract.SCRUBBED_SUFFIX
    assert not marker.startswith(_contract.TRUNCATED_PREFIX)


def test_scrubbing_leaves_alone_only_fields_of_the_contract_that_hold_no_content() -> None:
    assert set(FlowLogRequest.model_fields) >= IDENTITY_FIELDS
    assert set(_contract.STATUS_FIELDS) <= IDENTITY_FIELDS
    assert not IDENTITY_FIELDS & _contract.PAYLOAD_FIELDS
    assert not IDENTITY_FIELDS & {"metadata", "error", "user", "flow", "environment", "source"}


def test_the_batch_operation_kinds_are_the_models_the_store_and_the_exporters() -> None:
    models = {
        get_args(model.model_fields["op"].annotation)[0] for model in OPERATION_MODELS.values()
    }
    assert tuple(OPERATION_MODELS) == _contract.BATCH_OPS and models == set(_contract.BATCH_OPS)
    assert set(get_args(OperationKind)) == set(_contract.BATCH_OPS)  # an operation is its op
    assert {_contract.BATCH_PROMPT_LOG, _contract.BATCH_TOOL_LOG} == FILE_LOG_KINDS
    health = set(Health.model_fields)
    assert {_contract.BATCH_FIELD, _contract.BATCH_OPERATIONS_FIELD} <= health
    assert get_args(Health.model_fields["batch_operations"].annotation) == (_contract.BatchOp,)


_SRC = Path(__file__).resolve().parents[1] / "src" / "flowtrace"
#: A string literal (plain, f-, r- or b-) starting with `gen_ai.`; not a `gen_ai.X` in prose.
_GENAI_LITERAL = re.compile(r"""(?<![\w`])[fFrRbB]{0,2}['"]gen_ai\.""")


def test_the_genai_attribute_names_are_spelled_only_in_their_module() -> None:
    """The OpenTelemetry GenAI names live in `spans/_genai.py`: the mapping that reads them,
    the LLM instrumentation that writes them and the OTLP export all import them from there."""
    from flowtrace.spans import _genai

    spelled_elsewhere = [
        f"{path.relative_to(_SRC)}:{number}: {line.strip()}"
        for path in sorted(_SRC.rglob("*.py"))
        if path.name != "_genai.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _GENAI_LITERAL.search(line)
    ]
    assert spelled_elsewhere == []
    names = {k: v for k, v in vars(_genai).items() if k.isupper() and isinstance(v, str)}
    assert all(value.startswith(_genai.PREFIX) for value in names.values())
    assert len(set(names.values())) == len(names)  # one constant per name
