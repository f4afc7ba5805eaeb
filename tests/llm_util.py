"""What the LLM instrumentation tests share: a fake server, the calls it recorded as logs
(each call's span mapped by the same `map_span` the server's OTLP ingest uses), and a clean
instrumentation state per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flowtrace._llm import _call
from flowtrace._llm._anthropic import ANTHROPIC
from flowtrace._llm._openai import OPENAI
from flowtrace._log import Log
from flowtrace.spans import MappedLog, Span, map_span
from tests.fake_llm import FakeLLM


class Recorded:
    """The calls delivered, as (span, parent log), and as the logs they map to."""

    def __init__(self) -> None:
        self.calls: list[tuple[Span, Log | None]] = []

    def deliver(self, span: Span, parent: Log | None) -> None:
        self.calls.append((span, parent))

    @property
    def logs(self) -> list[MappedLog]:
        return [map_span(span) for span, _ in self.calls]

    def one(self) -> MappedLog:
        logs = self.logs
        assert len(logs) == 1, [log.fields.get("messages") for log in logs]
        return logs[0]


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    calls = Recorded()
    monkeypatch.setattr(_call, "deliver", calls.deliver)
    yield calls
    for sdk in (OPENAI, ANTHROPIC):
        sdk.every_client = False
        sdk.clients.clear()


def metadata(log: MappedLog) -> dict[str, Any]:
    return log.fields["metadata"]  # type: ignore[no-any-return]
