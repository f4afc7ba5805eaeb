"""What a flow is configured with: `FlowOptions`, spelled once, and `LogOptions`, what the logs of
one decorated function (or one block) share.

`FlowOptions` is what `flow(...)` was given. `FlowKeywords` is its mirror for typing the keyword
arguments of `flow()` (mypy checks `FlowOptions(**keywords)` against it; tests/test_contract.py
checks that the two name the same options).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from flowtrace._serialize import capture_value

if TYPE_CHECKING:
    from flowtrace._capture import InputBinder

__all__ = ["FlowKeywords", "FlowOptions", "LogOptions", "Redactor"]

#: `capture_inputs` / `capture_output` may be a function that returns what to record instead.
Redactor = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class FlowOptions:
    """The options of `flow(...)`; see `flowtrace.flow` for what each means."""

    path: str | None = None
    inputs: Any = None  # blocks only: a function's inputs are its arguments
    attributes: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    environment: str | None = None
    source: str | None = None
    save: bool | None = None
    version_id: str | None = None
    capture_inputs: bool | Redactor = True
    capture_output: bool | Redactor = True
    sample_rate: float | None = None  # at a root: this flow's traces' rate (None: the setting)

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0
        ):
            raise ValueError(f"flow(sample_rate=...) must be a number from 0 to 1, not {rate!r}")
        if self.attributes is not None:
            # Snapshot now: the same attributes must mean the same version on every call.
            object.__setattr__(self, "attributes", capture_value(self.attributes))


class FlowKeywords(TypedDict, total=False):
    """The keyword arguments of `flow(...)`: the fields of FlowOptions."""

    path: str | None
    inputs: Any
    attributes: dict[str, Any] | None
    metadata: dict[str, Any] | None
    user: str | None
    environment: str | None
    source: str | None
    save: bool | None
    version_id: str | None
    capture_inputs: bool | Redactor
    capture_output: bool | Redactor
    sample_rate: float | None


class LogOptions:
    """What every log of one decorated function (or one block) shares: worked out once, at
    decoration, and referenced by each log, never copied. The fields the call path reads are
    slots of their own; the rest is read from `flow` on the worker."""

    __slots__ = (
        "binder",
        "capture_all",
        "capture_inputs",
        "capture_output",
        "flow",
        "path",
        "sample_rate",
        "sample_threshold",
        "skip_first",
    )

    def __init__(
        self,
        flow: FlowOptions,
        path: str,
        binder: InputBinder | None = None,
        skip_first: bool = False,
    ) -> None:
        self.flow = flow
        self.path = path
        self.capture_inputs = flow.capture_inputs
        self.capture_output = flow.capture_output
        self.sample_rate = flow.sample_rate  # read at each root
        # what `_sampling` compares a root's hash with (worked out once, here)
        self.sample_threshold = (
            None if flow.sample_rate is None else int(flow.sample_rate * (1 << 32))
        )
        # The common case: every argument recorded as it is (copied now, bound on the worker).
        self.capture_all = flow.capture_inputs is True and binder is not None
        self.binder = binder  # binds a call's arguments to names, on the worker
        self.skip_first = skip_first  # the first argument is the bound instance or class
