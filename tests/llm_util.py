"""What the LLM instrumentation tests share: a fake server, the calls recorded (delivered
through the real span-log seam to `capture_logs`; each call's span mapped by the same
`map_span` the worker and the server's OTLP ingest use), and a clean state per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from flowtrace._llm._anthropic import ANTHROPIC
from flowtrace._llm._openai import OPENAI
from flowtrace._log import Log
from flowtrace._span_logs import SpanLog
from flowtrace.spans import MappedLog, Span, map_span
from flowtrace.testing import CapturedLogs, capture_logs
from tests.fake_llm import FakeLLM


class Recorded:
    """The calls delivered, as (span, parent log), and as the logs they map to."""

    def __init__(self, captured: CapturedLogs) -> None:
        self.captured = captured

    @property
    def calls(self) -> list[tuple[Span, Log | None]]:
        spans = [log for log in self.captured.logs if isinstance(log, SpanLog)]
        return [(log.span, log.parent) for log in spans if log.span is not None]

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
def recorded() -> Iterator[Recorded]:
    with capture_logs() as captured:
        yield Recorded(captured)
    for sdk in (OPENAI, ANTHROPIC):
        sdk.every_client = False
        sdk.clients.clear()


def client_of(fake: FakeLLM, **options: Any) -> openai.OpenAI:
    """An OpenAI client of the fake server."""
    return openai.OpenAI(api_key="sk-test", base_url=fake.openai_url, **options)


def async_client_of(fake: FakeLLM, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=fake.openai_url, **options)


def metadata(log: MappedLog) -> dict[str, Any]:
    return log.fields["metadata"]  # type: ignore[no-any-return]
