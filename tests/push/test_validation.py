"""Intake validation (sans-IO): normalisation and every rejection reason."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.push.intake import Channel, Rejection, ValidRequest, validate_request
from gateway.push.queue import Priority, QuietHoursPolicy, retry_delay_seconds
from gateway.push.render import load_templates

TEMPLATES = load_templates(Path(__file__).resolve().parents[2] / "config" / "templates.yaml")
POLICY = QuietHoursPolicy()
SHANGHAI = POLICY.tz
# 2026-03-02 10:00 Asia/Shanghai
NOW = dt.datetime(2026, 3, 2, 10, 0, tzinfo=SHANGHAI).timestamp()
CODE = {"code": "123456", "minutes": "5"}


def validate(**fields: object) -> ValidRequest | Rejection:
    raw = {"id": "n1", "type": "verification_code", "to": "13800138000", "params": CODE}
    raw.update(fields)
    return validate_request(raw, templates=TEMPLATES, policy=POLICY, now=NOW)


def test_valid_request_is_rendered_and_normalised() -> None:
    """+86 numbers are normalised; the template's priority and validity apply."""
    result = validate(to="+86 138-0013-8000")
    assert isinstance(result, ValidRequest)
    assert result.digits == "13800138000"
    assert result.text == "【交管12123】您的验证码为123456，5分钟内有效。请勿将验证码告知他人。"
    assert result.priority is Priority.HIGH
    assert result.channel is Channel.SMS
    assert result.expires_at == NOW + 600


@pytest.mark.parametrize("to", ["008613800138000", "8613800138000", "１３８００１３８０００"])
def test_number_prefixes_and_full_width_digits_are_accepted(to: str) -> None:
    """0086, 86 and full-width digits all normalise to the 11 digits."""
    result = validate(to=to)
    assert isinstance(result, ValidRequest) and result.digits == "13800138000"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "lottery_win"}, "unknown type 'lottery_win'"),
        ({"params": {"code": "1"}}, "missing parameter 'minutes'"),
        ({"params": {"code": "1", "minutes": ""}}, "missing parameter 'minutes'"),
        ({"to": "12800138000"}, "not a Chinese mobile number"),
        ({"to": "010-12345678"}, "not a Chinese mobile number"),
        ({"priority": "urgent"}, "bad priority 'urgent'"),
        ({"channel": "fax"}, "bad channel 'fax'"),
        ({"params": "{not json"}, "malformed params JSON"),
        ({"params": "[1, 2]"}, "malformed params JSON"),
        ({"params": {"code": {"a": 1}, "minutes": "5"}}, "parameter 'code' must be text or a number"),
        ({"expires_at": "tomorrow"}, "bad expires_at 'tomorrow'"),
        ({"id": "has space"}, "bad id"),
        ({"id": "x{tag}"}, "bad id"),
    ],
)
def test_each_rejection_names_its_reason(fields: dict[str, object], reason: str) -> None:
    """A bad request is rejected with a reason that says what is wrong."""
    result = validate(**fields)
    assert isinstance(result, Rejection)
    assert result.reason.startswith(reason), result.reason


def test_rejection_reason_never_contains_the_number() -> None:
    """The reason goes into events: it must not repeat the caller's number."""
    result = validate(to="19912345678901")
    assert isinstance(result, Rejection)
    assert "1991234" not in result.reason


def test_params_json_string_from_the_stream() -> None:
    """On the stream params is a JSON string; numbers become text."""
    result = validate(params=json.dumps({"code": 654321, "minutes": 5}))
    assert isinstance(result, ValidRequest) and "654321" in result.text


def test_caller_expiry_shortens_validity() -> None:
    """expires_at earlier than the type's validity wins; later does not extend it."""
    early = validate(expires_at=str(NOW + 60))
    late = validate(expires_at=str(NOW + 10**6))
    assert isinstance(early, ValidRequest) and early.expires_at == NOW + 60
    assert isinstance(late, ValidRequest) and late.expires_at == NOW + 600


BOOKING = {"name": "张三", "subject": "科目二", "session": "上午", "site": "集美考场", "booking_no": "B1"}


def test_exam_confirmation_needs_two_days() -> None:
    """A booking confirmation for an exam less than 2 days away is rejected, explained."""
    tomorrow = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-03"})
    assert isinstance(tomorrow, Rejection)
    assert "date 2026-03-03 is less than 2 days away" in tomorrow.reason
    assert "at least 2 days before" in tomorrow.reason


def test_exam_confirmation_two_days_ahead_expires_when_too_late() -> None:
    """Two days ahead is accepted, and expires at the start of the day before the exam."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-04"})
    assert isinstance(result, ValidRequest)
    assert result.expires_at == dt.datetime(2026, 3, 3, 0, 0, tzinfo=SHANGHAI).timestamp()


def test_exam_date_in_chinese_form() -> None:
    """The date may also be written as Chinese notices do (2026年3月3日)."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026年3月3日"})
    assert isinstance(result, Rejection) and "less than 2 days away" in result.reason
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026年3月10日"})
    assert isinstance(result, ValidRequest)


def test_exam_date_must_be_a_date() -> None:
    """The date parameter of an exam confirmation must be YYYY-MM-DD."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "下周三"})
    assert isinstance(result, Rejection) and "is not a date" in result.reason


def test_request_priority_overrides_template() -> None:
    """An explicit priority replaces the template's lane."""
    result = validate(priority="bulk", channel="auto")
    assert isinstance(result, ValidRequest)
    assert result.priority is Priority.BULK and result.channel is Channel.AUTO


# --- quiet hours and retry delays ---------------------------------------------------------


def at(hour: int, minute: int = 0, day: int = 2) -> float:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=SHANGHAI).timestamp()


def test_quiet_hours_wrap_over_midnight() -> None:
    """22:00-08:00: late evening waits for the next morning, early morning for today's."""
    assert POLICY.quiet_until(at(21, 59)) == 0.0
    assert POLICY.quiet_until(at(22, 0)) == at(8, 0, day=3)
    assert POLICY.quiet_until(at(3, 0)) == at(8, 0)
    assert POLICY.quiet_until(at(8, 0)) == 0.0


def test_quiet_hours_within_one_day_and_disabled() -> None:
    """A window not crossing midnight works too; start == end means no quiet hours."""
    lunch = QuietHoursPolicy(start="12:00", end="14:00")
    assert lunch.quiet_until(at(13)) == at(14)
    assert lunch.quiet_until(at(15)) == 0.0
    assert QuietHoursPolicy(start="00:00", end="00:00").quiet_until(at(3)) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1.6e9, max_value=2.0e9))
def test_quiet_until_is_in_the_future_and_outside_quiet_hours(now: float) -> None:
    """Whenever we are in quiet hours, the end lies ahead, within 10 h, and is not quiet."""
    end = POLICY.quiet_until(now)
    if end:
        assert now < end <= now + 10 * 3600
        assert POLICY.quiet_until(end) == 0.0


def test_retry_delay_doubles_up_to_the_cap() -> None:
    """2, 4, 8 ... seconds, never above the cap."""
    assert [retry_delay_seconds(a, 2, 300) for a in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert retry_delay_seconds(50, 2, 300) == 300
    assert retry_delay_seconds(10_000, 2, 300) == 300
