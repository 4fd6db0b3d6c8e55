"""Fuzzing the MO keyword parser: any text a phone, a carrier or an attacker can produce.

``parse_mo`` is documented as total and bounded: every ``str`` (lone surrogates from a
broken UCS-2 decode, 1 MB payloads, the characters NFKC expands the most) gives one
command, never an exception, and only the first MAX_TEXT_CHARS characters matter.
"""

from __future__ import annotations

import string
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.push.keywords import (
    MAX_TEXT_CHARS,
    CancelBooking,
    ConfirmCancel,
    Help,
    HelpReason,
    QueryBookings,
    QueryPoints,
    parse_mo,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every code point, surrogates included (hypothesis leaves out category Cs by default).
any_char = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates, as a lax UCS-2 decode yields
    st.sampled_from(
        [
            "\ufdfa",  # NFKC expands this one to 18 characters
            "\u0301",  # a combining accent with nothing to combine with
            "\uff23",  # full-width C
            "\u3000",  # ideographic space
            "\u200b",  # zero-width space
            "\x00",
            "\U0001f600",
        ]
    ),
)
any_text = st.text(alphabet=any_char, max_size=300)
keywords = st.sampled_from(["CXYY", "QXYY", "QR", "CXJF", "BZ", "取消预约", "确认取消", "查询记分"])

_ASCII_ALNUM = set(string.ascii_uppercase + string.digits)


def check_command(command: object) -> None:
    """The command is one of the five, and its argument has the shape the MO handler trusts."""
    assert isinstance(command, QueryBookings | CancelBooking | ConfirmCancel | QueryPoints | Help)
    if isinstance(command, CancelBooking):
        assert 0 < len(command.booking_no) <= 32 and set(command.booking_no) <= _ASCII_ALNUM
    if isinstance(command, ConfirmCancel):
        assert len(command.code) == 6 and command.code.isascii() and command.code.isdigit()
    if isinstance(command, Help):
        assert isinstance(command.reason, HelpReason)


@FUZZ
@given(text=any_text)
def test_any_text_gives_one_well_formed_command(text: str) -> None:
    """Any string, lone surrogates and NULs included, gives a command whose booking number
    is ASCII letters/digits and whose code is six ASCII digits; the same text, the same answer."""
    command = parse_mo(text)
    check_command(command)
    assert parse_mo(text) == command


@FUZZ
@given(keyword=keywords, tail=any_text)
def test_keyword_then_garbage_gives_one_well_formed_command(keyword: str, tail: str) -> None:
    """A real keyword followed by hostile text still parses to a well-formed command."""
    check_command(parse_mo(keyword + tail))


@FUZZ
@given(
    start=st.text(alphabet=any_char, max_size=30),
    filler=st.text(alphabet=any_char, min_size=1, max_size=10),
    tail=any_text,
)
def test_only_the_first_characters_decide(start: str, filler: str, tail: str) -> None:
    """Nothing after the first MAX_TEXT_CHARS characters changes the command."""
    head = (start + filler * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]
    assert parse_mo(head + tail) == parse_mo(head)


@settings(max_examples=30, deadline=None)
@given(unit=st.text(alphabet=any_char, min_size=1, max_size=8))
def test_one_megabyte_messages_parse_in_bounded_time(unit: str) -> None:
    """A 1 MB message (a 255-part concatenation or a 64 KiB payload, sixteen times over)
    parses in well under a millisecond's worth of work per kilobyte: under 50 ms."""
    text = (unit * (1_000_000 // len(unit) + 1))[:1_000_000]
    started = time.perf_counter()
    check_command(parse_mo(text))
    assert time.perf_counter() - started < 0.05


def test_the_worst_nfkc_expansion_is_bounded() -> None:
    """160 copies of U+FDFA (18 characters each after NFKC) followed by 1 MB parse fast."""
    text = "\ufdfa" * MAX_TEXT_CHARS + "QXYY123" * 150_000
    started = time.perf_counter()
    assert parse_mo(text) == Help(HelpReason.UNRECOGNISED)
    assert time.perf_counter() - started < 0.05


@settings(max_examples=100, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.binary(max_size=50),
        st.integers(),
        st.floats(),
        st.lists(st.text(max_size=5), max_size=3),
    )
)
def test_non_text_is_unrecognised(value: object) -> None:
    """bytes, numbers, None or lists (a carrier quirk upstream) become Help(UNRECOGNISED)."""
    assert parse_mo(value) == Help(HelpReason.UNRECOGNISED)
