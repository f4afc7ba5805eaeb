"""Encoding logs into the contract's bodies (the worker's side)."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from flowtrace._request_bodies import format_ns
from flowtrace.models import FlowLogRequest, format_datetime


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))
def test_format_ns_writes_what_the_models_write(ns: int) -> None:
    as_datetime = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )
    text = format_ns(ns)
    assert text == format_datetime(as_datetime)
    assert FlowLogRequest(start_time=text).start_time == as_datetime  # type: ignore[arg-type]
