"""Phone and ID numbers mask themselves, and the log observers mask what slips through."""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import Logger

from gateway.logs import make_observer
from gateway.privacy import (
    IdNumber,
    InvalidPhoneNumber,
    PhoneNumber,
    mask_digit_runs,
    normalise_cn_mobile,
)


def test_phone_and_id_numbers_print_masked_everywhere() -> None:
    """str, repr and format give 138****5678 / 110101********1234; .digits stays whole."""
    phone, id_number = PhoneNumber("13812345678"), IdNumber("11010119900307123X")
    assert str(phone) == f"{phone}" == "138****5678" and "13812345678" not in repr(phone)
    assert str(id_number) == "110101********123X"
    assert phone.digits == "13812345678"


@pytest.mark.parametrize(("raw", "digits"), [
    ("13800138000", "13800138000"), ("+8613800138000", "13800138000"), ("008613800138000", "13800138000"),
    ("8613800138000", "13800138000"), ("138 0013 8000", "13800138000"), ("１３８００１３８０００", "13800138000"),
])
def test_chinese_mobile_numbers_are_normalised(raw: str, digits: str) -> None:
    """+86, 0086 and 86 prefixes, spaces and full-width digits are accepted."""
    assert normalise_cn_mobile(raw) == digits


@pytest.mark.parametrize("raw", ["12800138000", "1380013800", "138001380001", "02512345678", "abc", ""])
def test_other_numbers_are_not_chinese_mobiles(raw: str) -> None:
    """Anything but 1[3-9] and nine digits is refused."""
    with pytest.raises(InvalidPhoneNumber):
        normalise_cn_mobile(raw)


def test_safety_net_masks_numbers_in_free_text_but_not_float_fractions() -> None:
    """Mobile and ID numbers in text are masked; the digits of a float are left alone."""
    assert mask_digit_runs("to 13800138000, id 110101199003071234.") == "to 138****8000, id 110101********1234."
    assert mask_digit_runs("retry in 4.632770123457041 s") == "retry in 4.632770123457041 s"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_carry_a_whole_number(fmt: str) -> None:
    """Numbers passed as fields, plain strings or inside the message are masked in both formats."""
    out = io.StringIO()
    log = Logger(observer=make_observer(fmt, "debug", out))
    log.info("sms to {to} for {who}; raw 13900139000", to=PhoneNumber("13800138000"), who="110101199003071234",
             extra={"nested": "18612345678"})
    text = out.getvalue()
    for whole in ("13800138000", "13900139000", "110101199003071234", "18612345678"):
        assert whole not in text
    assert "138****8000" in text
    if fmt == "json":
        assert json.loads(text)["to"] == "138****8000"


@pytest.mark.parametrize("text", [
    "Originate acc-cause-13900009001 refused",
    "voice call rem-ntf-13800138000-1 for notification ntf-13800138000: busy",
    "notification cli_13800138000 queued",
    "ActionID gw-110101199003071234",
    "trace id abc13800138000",
])
def test_safety_net_leaves_the_gateways_own_identifiers_readable(text: str) -> None:
    """Notification ids and ActionIDs that contain digit runs stay whole, so an operator can
    grep the logs for them."""
    assert mask_digit_runs(text) == text


@pytest.mark.parametrize(("text", "masked"), [
    ("PJSIP/13800138000@carrier-trunk", "PJSIP/138****8000@carrier-trunk"),
    ("caller=13800138000;", "caller=138****8000;"),
    ("号码13800138000的", "号码138****8000的"),
    ("to +8613800138000", "to 138****8000"),
    ("id:110101199003071234 and 11010119900307123X", "id:110101********1234 and 110101********123X"),
    ('{"to": "13800138000"}', '{"to": "138****8000"}'),
    ("13800138000-1", "138****8000-1"),
])
def test_safety_net_still_masks_numbers_standing_on_their_own(text: str, masked: str) -> None:
    assert mask_digit_runs(text) == masked


def test_a_traceback_in_the_log_file_shows_numbers_masked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """log.failure of an exception whose message holds a mobile and an ID number: the
    log file (text and JSON) has only their masked forms, traceback included."""
    import json as _json

    from twisted.logger import Logger

    from gateway.logs import make_observer

    for fmt in ("text", "json"):
        path = tmp_path / f"gateway.{fmt}.log"
        with path.open("w", encoding="utf-8") as stream:
            log = Logger(observer=make_observer(fmt, stream=stream))
            try:
                raise ValueError("no booking for 13812345678 / 110101199003077578")
            except ValueError:
                log.failure("lookup failed")
        written = path.read_text(encoding="utf-8")
        assert "13812345678" not in written and "110101199003077578" not in written, written
        assert "138****5678" in written and "ValueError" in written, written
        if fmt == "json":
            event = _json.loads(written)
            assert event["error"] == "ValueError" and "138****5678" in event["traceback"], event
