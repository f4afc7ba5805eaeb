"""The batch extension: raw operation dicts validated one by one, so one bad operation fails
alone with its own 422 instead of failing the batch."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flowtrace._contract import (
    BATCH_LOG,
    BATCH_OPS,
    BATCH_PROMPT_LOG,
    BATCH_TOOL_LOG,
    BATCH_UPDATE,
)
from flowtrace.models import (
    CreateOperation,
    LogOperation,
    PromptLogOperation,
    ToolLogOperation,
    UpdateOperation,
)
from flowtrace.store._errors import StoreInvalid, invalid

__all__ = ["OPERATION_MODELS", "parse_operation"]

#: The model of each operation kind (`op`).
OPERATION_MODELS: dict[str, type[CreateOperation] | type[UpdateOperation]] = {
    BATCH_LOG: LogOperation,
    BATCH_UPDATE: UpdateOperation,
    BATCH_PROMPT_LOG: PromptLogOperation,
    BATCH_TOOL_LOG: ToolLogOperation,
}
_OP_CHOICES = ", ".join(f"'{op}'" for op in BATCH_OPS)


def _errors(error: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape; locations are those of the operation object (`body.<field>` for
    its body, like the single-log endpoint's)."""
    return [
        {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False)
    ]


def parse_operation(raw: object) -> CreateOperation | UpdateOperation:
    """Validate one operation; a StoreInvalid (422) when it is malformed."""
    if not isinstance(raw, dict):
        raise invalid([], "an operation is a JSON object", "dict_type")
    op = raw.get("op")
    model = OPERATION_MODELS.get(op) if isinstance(op, str) else None  # a list is unhashable
    if model is None:
        raise invalid(["op"], f"op is one of {_OP_CHOICES}", "literal_error")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise StoreInvalid(_errors(error)) from None
