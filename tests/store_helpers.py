"""Shared helpers for the store tests: a controllable clock and request builders."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flowtrace.models import FlowLogRequest, FlowLogUpdateRequest
from flowtrace.store import Store

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def req(**fields: Any) -> FlowLogRequest:
    return FlowLogRequest.model_validate(fields)


def patch(**fields: Any) -> FlowLogUpdateRequest:
    return FlowLogUpdateRequest.model_validate(fields)


def open_store(path: Path | str, clock: FakeClock | None = None) -> Iterator[Store]:
    """A store on `path` (a SQLite file, or a postgresql:// URL: see `store_target`)."""
    store = Store(path, clock=clock or FakeClock())
    try:
        yield store
    finally:
        store.close()
