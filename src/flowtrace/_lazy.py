"""A module's public names whose modules are imported only when a name is first used (PEP 562:
the module's `__getattr__`), so importing the module stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(namespace: dict[str, Any], where: dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of the module whose globals are `namespace`: `where` maps each lazy
    name to the module that defines it; a name once imported is the module's own."""

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return getattr_
