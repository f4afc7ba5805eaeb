"""Encoding logs into the contract's bodies (the worker's side)."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from flowtrace._contract import wire_time, wire_time_ns, wire_time_us
from flowtrace.models import FlowLogRequest


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))
def test_wire_time_is_iso_8601_in_utc_at_microseconds(ns: int) -> None:
    as_datetime = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )
    text = wire_time_ns(ns)
    assert text == as_datetime.isoformat(timespec="microseconds").replace("+00:00", "Z")
    assert wire_time(as_datetime) == text == wire_time_us(ns // 1000)
    assert FlowLogRequest(start_time=text).start_time == as_datetime  # type: ignore[arg-type]


def test_wire_time_keeps_four_digit_years_and_takes_naive_datetimes_as_utc() -> None:
    assert wire_time(datetime(999, 1, 2, 3, 4, 5, 6)) == "0999-01-02T03:04:05.000006Z"
