"""parse_mo: the keyword table, its normalisation, and totality on arbitrary text."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.push.keywords import (
    MAX_TEXT_CHARS,
    CancelBooking,
    ConfirmCancel,
    Help,
    HelpReason,
    MoCommand,
    QueryBookings,
    QueryPoints,
    normalise_mo_text,
    parse_mo,
)


@pytest.mark.parametrize(
    "text",
    ["CXYY", "cxyy", "CxYy", "ＣＸＹＹ", "ｃｘｙｙ", " C X Y Y ", "查询预约", "查询预约。", "查预约",
     "预约查询", "CXYY 谢谢", "【查询预约】"],
)
def test_query_bookings_keywords(text: str) -> None:
    """CXYY and its Chinese, full-width, lower-case and spaced forms ask for bookings."""
    assert parse_mo(text) == QueryBookings()


@pytest.mark.parametrize(
    "text",
    ["CXJF", "cxjf", "ＣＸＪＦ", "查询记分", "查记分", "记分查询", "查询积分", "查积分？"],
)
def test_query_points_keywords(text: str) -> None:
    """CXJF and 查询记分 (also the common mis-writing 积分) ask for licence points."""
    assert parse_mo(text) == QueryPoints()


@pytest.mark.parametrize("text", ["BZ", "bz", "ＢＺ", "帮助", "help", "帮助!"])
def test_help_keywords(text: str) -> None:
    """BZ and 帮助 ask for help."""
    assert parse_mo(text) == Help(HelpReason.ASKED)


@pytest.mark.parametrize(
    ("text", "booking_no"),
    [
        ("QXYY 20261130001", "20261130001"),
        ("qxyy20261130001", "20261130001"),
        ("ＱＸＹＹ　２０２６１１３０００１", "20261130001"),
        ("取消预约 20261130001", "20261130001"),
        ("取消预约：20261130001。", "20261130001"),
        ("取消预约号20261130001", "20261130001"),
        ("取消 20261130001", "20261130001"),
        ("QXYY 2026 1130 001", "20261130001"),
        ("QXYY ab12", "AB12"),
    ],
)
def test_cancel_booking_takes_the_booking_number(text: str, booking_no: str) -> None:
    """QXYY / 取消预约 followed by one number starts a cancellation of that booking."""
    assert parse_mo(text) == CancelBooking(booking_no)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("QXYY", HelpReason.MISSING_BOOKING_NUMBER),
        ("取消预约", HelpReason.MISSING_BOOKING_NUMBER),
        ("取消预约 谢谢", HelpReason.MISSING_BOOKING_NUMBER),
        ("QXYY 20261130001号和20261130002号", HelpReason.MALFORMED_BOOKING_NUMBER),
        ("QXYY " + "1" * 33, HelpReason.MALFORMED_BOOKING_NUMBER),
    ],
)
def test_cancel_without_a_usable_number_is_help(text: str, reason: HelpReason) -> None:
    """A cancel keyword with no number, two numbers or an over-long one asks for help."""
    assert parse_mo(text) == Help(reason)


@pytest.mark.parametrize(
    "text",
    ["123456", "１２３４５６", " 123 456 ", "123456。", "QR 123456", "qr123456", "ＱＲ１２３４５６",
     "确认 123456", "确认123456", "确认取消：123456", "验证码123456"],
)
def test_confirmation_code_with_or_without_keyword(text: str) -> None:
    """Six digits, alone or after QR / 确认, confirm a pending cancellation."""
    assert parse_mo(text) == ConfirmCancel("123456")


@pytest.mark.parametrize("text", ["QR", "QR 12345", "确认 1234567", "QR abcdef", "确认取消"])
def test_confirm_keyword_without_six_digits_is_help(text: str) -> None:
    """QR / 确认 followed by anything but exactly six digits is a malformed code."""
    assert parse_mo(text) == Help(HelpReason.MALFORMED_CODE)


@pytest.mark.parametrize("text", ["12345", "1234567", "٣٣٣٣٣٣", "你好", "请帮我查询预约", "XYZ", "CX YZ"])
def test_anything_else_is_unrecognised(text: str) -> None:
    """Other digit counts, non-ASCII digits and unknown words get help (unrecognised)."""
    assert parse_mo(text) == Help(HelpReason.UNRECOGNISED)


@pytest.mark.parametrize("text", ["", "   ", "。。。", "👍", "\x00\x1b"])
def test_nothing_but_separators_is_empty(text: str) -> None:
    """A message of spaces, punctuation, emoji or control characters is empty."""
    assert parse_mo(text) == Help(HelpReason.EMPTY)


def test_non_text_is_unrecognised_not_an_error() -> None:
    """A value that is not a str (a carrier quirk upstream) gives help, not an exception."""
    assert parse_mo(b"CXYY") == Help(HelpReason.UNRECOGNISED)
    assert parse_mo(None) == Help(HelpReason.UNRECOGNISED)


def test_only_the_first_characters_are_read() -> None:
    """Text beyond MAX_TEXT_CHARS is ignored: a number past it does not count."""
    padding = " " * (MAX_TEXT_CHARS - len("QXYY"))
    assert parse_mo("QXYY" + padding + "20261130001") == Help(HelpReason.MISSING_BOOKING_NUMBER)
    assert parse_mo("QXYY" + padding[:-12] + "20261130001") == CancelBooking("20261130001")


def test_confirm_cancel_repr_hides_the_code() -> None:
    """The one-time code never shows in a repr (logs, assertion output)."""
    assert "654321" not in repr(ConfirmCancel("654321"))


def test_huge_input_is_parsed_quickly() -> None:
    """Megabytes of text (here, characters NFKC expands 18-fold) parse as one SMS would."""
    assert parse_mo("CXYY" + "\ufdfa" * 2_000_000) == QueryBookings()
    assert parse_mo("\ufdfa" * 2_000_000) == Help(HelpReason.UNRECOGNISED)


# Every command parse_mo may give, from its declared type: a command added later (查违法,
# QueryViolations) is not a failure here, as it was with a hand-kept list (seen once, 2026-12-03).
_COMMANDS = typing.get_args(MoCommand)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=400))
def test_any_text_gives_a_command(text: str) -> None:
    """Arbitrary Unicode (surrogates and controls included) always gives a MoCommand."""
    command = parse_mo(text)
    assert isinstance(command, _COMMANDS)
    if isinstance(command, ConfirmCancel):
        assert len(command.code) == 6 and command.code.isascii() and command.code.isdigit()
    if isinstance(command, CancelBooking):
        assert 0 < len(command.booking_no) <= 32 and command.booking_no.isascii()


@settings(max_examples=200, deadline=None)
@given(
    keyword=st.sampled_from(["CXYY", "查询预约", "CXJF", "查询记分"]),
    junk=st.text(
        # Some symbols fold to letters under NFKC (the radical ⻳ becomes 龟): not separators.
        alphabet=st.characters(categories=("Zs", "Po", "Ps", "Pe", "So", "Cc")).filter(
            lambda ch: not normalise_mo_text(ch)
        ),
        max_size=5,
    ),
)
def test_separators_around_a_keyword_do_not_matter(keyword: str, junk: str) -> None:
    """Spaces, punctuation, symbols and controls around a keyword are ignored."""
    expected = parse_mo(keyword)
    assert parse_mo(junk + keyword + junk) == expected
