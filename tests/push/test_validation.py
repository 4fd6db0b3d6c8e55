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


BOOKING = {"name": "张三", "subject": "科目二", "session": "上午", "site": "集美考场", "booking_no": "B1",
           "cancel_deadline": "2026-03-01 17:00"}


def test_late_exam_confirmation_is_sent_at_once_flagged_late() -> None:
    """A confirmation less than 2 days before the exam is not rejected: it goes out at
    once (not held for quiet hours, high lane), flagged late, until the exam begins."""
    tomorrow = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-03"})
    assert isinstance(tomorrow, ValidRequest)
    assert tomorrow.late is True and tomorrow.quiet_hours is False
    assert tomorrow.priority is Priority.HIGH
    assert tomorrow.expires_at == dt.datetime(2026, 3, 3, 8, 0, tzinfo=SHANGHAI).timestamp()
    assert tomorrow.lead_hours == 22.0


def test_late_confirmation_within_a_day_also_goes_by_voice() -> None:
    """Within 24 hours of the exam a late confirmation uses channel auto (a call when the
    SMS does not arrive); further out it stays SMS."""
    near = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-03"})
    far = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-03", "session": "14:00-16:00"})
    assert isinstance(near, ValidRequest) and near.channel is Channel.AUTO
    assert isinstance(far, ValidRequest) and far.channel is Channel.SMS and far.late


def test_timely_exam_confirmation_waits_for_the_morning_and_expires_at_the_exam() -> None:
    """Two days ahead is a normal batch result: held in quiet hours, not late, and
    worth sending until the exam begins (the session's start)."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-04", "session": "08:30"})
    assert isinstance(result, ValidRequest)
    assert result.late is False and result.quiet_hours is True and result.channel is Channel.SMS
    assert result.expires_at == dt.datetime(2026, 3, 4, 8, 30, tzinfo=SHANGHAI).timestamp()


def test_confirmation_for_an_exam_already_begun_expires() -> None:
    """A confirmation that arrives after the exam began is recorded expired, not sent."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-02", "session": "08:00"})
    assert isinstance(result, ValidRequest) and result.expires_at <= NOW


def test_exam_date_in_chinese_form() -> None:
    """The date may also be written as Chinese notices do (2026年3月3日)."""
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026年3月3日"})
    assert isinstance(result, ValidRequest) and result.late
    assert "2026年3月3日上午" in result.text
    result = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026年3月10日"})
    assert isinstance(result, ValidRequest) and not result.late


def test_confirmation_states_the_cancellation_rule_and_the_no_show_cost() -> None:
    """Before the deadline: until when to cancel online; after: in person, or no longer;
    subjects 2 and 3: a no-show uses one of five chances, with the count when known."""
    timely = validate(type="exam_booking_confirmed",
                      params={**BOOKING, "date": "2026-03-06", "cancel_deadline": "2026-03-04 17:00",
                              "attempts_left": "3"})
    assert isinstance(timely, ValidRequest)
    assert "2026年3月4日下午5:00前可网上取消" in timely.text
    assert "未参加考试按缺考处理，并占用一次预约机会（共5次，您还有3次）" in timely.text
    closed = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-05"})
    assert isinstance(closed, ValidRequest) and "请本人最迟于2026年3月4日到车管所办理" in closed.text
    last_day = validate(type="exam_booking_confirmed", params={**BOOKING, "date": "2026-03-03"})
    assert isinstance(last_day, ValidRequest) and "最迟于2026年3月2日到车管所办理" in last_day.text
    too_late = validate(type="exam_booking_confirmed",
                        params={**BOOKING, "date": "2026-03-02", "session": "15:00", "subject": "科目一"})
    assert isinstance(too_late, ValidRequest) and "已不能取消" in too_late.text
    assert too_late.text.endswith("；未参加考试按缺考处理。")


def test_dates_and_times_are_written_the_chinese_way() -> None:
    """ISO parameters become 2026年12月9日, 上午8:30, 下午2:00至4:00."""
    result = validate(type="inspection_booking_confirmed",
                      params={"plate": "闽D6F220", "date": "2026-12-09", "time": "14:00-16:00", "station": "湖里站"})
    assert isinstance(result, ValidRequest)
    assert "2026年12月9日下午2:00至4:00" in result.text and "-" not in result.text


def test_a_parameter_of_the_wrong_kind_is_rejected_by_name() -> None:
    """A date that is no date, a count that is no number: rejected, naming the parameter."""
    result = validate(type="violation_reminder", params={"plate": "闽D1", "count": "两", "date": "2026-03-01"})
    assert isinstance(result, Rejection) and result.reason == "parameter 'count' is not a whole number"


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
