"""The batch extension: raw operation dicts validated one by one, so one bad operation fails
alone with its own 422 instead of failing the batch."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from flowtrace.models import LogOperation, UpdateOperation
from flowtrace.store._errors import StoreInvalid, invalid

__all__ = ["parse_operation"]


def _errors(error: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 shape; locations are those of the operation object (`body.<field>` for
    its body, like the single-log endpoint's)."""
    return [
        {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False)
    ]


def parse_operation(raw: object) -> LogOperation | UpdateOperation:
    """Validate one operation; a StoreInvalid (422) when it is malformed."""
    if not isinstance(raw, dict):
        raise invalid([], "an operation is a JSON object", "dict_type")
    kind = raw.get("op")
    model: type[LogOperation] | type[UpdateOperation]
    if kind == "log":
        model = LogOperation
    elif kind == "update":
        model = UpdateOperation
    else:
        raise invalid(["op"], "op is 'log' or 'update'", "literal_error")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise StoreInvalid(_errors(error)) from None
