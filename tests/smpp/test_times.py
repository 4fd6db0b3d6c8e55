"""SMPP 3.4 section 7.1.1 time fields: relative and absolute validity_period."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.smpp.times import MAX_RELATIVE_SECONDS, absolute_time, parse_time, relative_time


def test_relative_time_golden() -> None:
    """10 minutes is 000000001000000R; 2 days 3 h 4 min 5 s is 000002030405000R."""
    assert relative_time(600) == "000000001000000R"
    assert relative_time(2 * 86_400 + 3 * 3600 + 4 * 60 + 5) == "000002030405000R"


def test_relative_time_is_bounded() -> None:
    """Below 1 s it is 1 s (0 would mean "now"); beyond 99 days the field cannot say more."""
    assert relative_time(0) == relative_time(-5) == "000000000001000R"
    assert relative_time(10**9) == "000099235959000R" == relative_time(MAX_RELATIVE_SECONDS)


def test_absolute_time_golden_is_utc() -> None:
    """2026-12-02 11:30:15.7 UTC is 261202113015700+ (UTC: offset 00 quarter hours)."""
    moment = datetime(2026, 12, 2, 11, 30, 15, 700_000, tzinfo=UTC).timestamp()
    assert absolute_time(moment) == "261202113015700+"


def test_parse_time_reads_offsets_and_relative_times() -> None:
    """An absolute time with +32 quarter hours (China) and a relative one both parse."""
    china = parse_time("261202193015032+", now=0)
    assert china == datetime(2026, 12, 2, 11, 30, 15, tzinfo=UTC).timestamp()
    assert parse_time("000000001000000R", now=1000.0) == 1600.0
    assert parse_time("", now=0) is None
    with pytest.raises(ValueError):
        parse_time("2612021130", now=0)


@given(st.integers(1, MAX_RELATIVE_SECONDS))
def test_relative_time_round_trips(seconds: int) -> None:
    """parse_time(relative_time(s)) is s seconds from now."""
    assert parse_time(relative_time(seconds), now=0) == seconds
