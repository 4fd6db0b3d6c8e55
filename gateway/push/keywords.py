"""Keywords citizens text to 12123: a message in, one `MoCommand` out.

Theory of operation
-------------------
A citizen's message (MO) is free text typed on a phone.  We recognise six commands, each
by a Latin abbreviation of its pinyin initials (what the platforms print on their notices)
or by the Chinese words:

==================  =====================================  ===============================
command             keywords                               argument
==================  =====================================  ===============================
`QueryBookings`     CXYY, 查询预约, 查预约, 预约查询
`CancelBooking`     QXYY, 取消预约, 取消                      the booking number
`ConfirmCancel`     QR, 确认取消, 确认, 验证码, or nothing      the six-digit code we sent
`QueryPoints`       CXJF, 查询记分, 查记分, 记分查询,
                    查询积分, 查积分
`QueryViolations`   CXWF, 查询违法, 查违法, 违法查询,
                    查询违章, 查违章
`Help`              BZ, 帮助, HELP, and anything else       why (`HelpReason`)
==================  =====================================  ===============================

Matching is forgiving about how a phone writes text and strict about what it means:

1. Only the first `MAX_TEXT_CHARS` characters are looked at (see there why).
2. NFKC folds full-width forms (ＣＸＹＹ, １２３４５６) to ASCII, then upper case folds
   ``cxyy``.
3. Every character that is not a letter or digit (spaces, punctuation, emoji, control and
   combining characters) is dropped, so ``C X Y Y``, ``查询预约。``, ``QR:123 456`` and
   ``【取消预约】20261130001`` all read as their keyword and argument.
4. The keyword must *start* the message; the longest alias wins (确认取消 before 确认).
   Text after a query or help keyword is ignored ("CXYY 谢谢" is still a query).
5. A cancel takes exactly one run of ASCII letters/digits after the keyword as the
   booking number; a confirmation takes exactly six ASCII digits, with a keyword or
   alone.  Anything else becomes `Help` with the reason, so the reply can say what was
   wrong.

`parse_mo` is total: any ``str`` (and, defensively, anything else) gives a command, never
an exception, with work bounded by `MAX_TEXT_CHARS`.  It does no I/O and knows nothing
of who sent the text: identity and the code check are the MO handler's (gateway/push/mo.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

__all__ = [
    "MAX_TEXT_CHARS",
    "CancelBooking",
    "ConfirmCancel",
    "Help",
    "HelpReason",
    "MoCommand",
    "QueryBookings",
    "QueryPoints",
    "QueryViolations",
    "normalise_mo_text",
    "parse_mo",
]

# A command is a keyword and at most a 20-digit booking number: it fits in one SMS
# (70 UCS-2 or 160 GSM 7-bit characters).  We read the first 160 characters, which leaves
# room for a greeting before the number, and ignore the rest: a concatenated MO may be
# 255 parts (~17,000 characters) and a message_payload 64 KiB, and none of that can change
# a keyword at the start.  NFKC expands one character at most 18-fold (U+FDFA), so a
# parse never handles more than ~3,000 characters whatever arrives.
MAX_TEXT_CHARS = 160

# Longest booking number we take from a message; the domain's numbers are 6-20 digits
# (gateway/domain/bookings.normalise_booking_no decides what is a booking number; this
# only picks the candidate out of the text, letters included, so the parser does not need
# to change if the numbering scheme does).
MAX_BOOKING_NO_CHARS = 32

CODE_DIGITS = 6


class HelpReason(Enum):
    """Why a message became `Help`: the reply explains accordingly."""

    ASKED = "asked"  # BZ / 帮助
    EMPTY = "empty"  # nothing but spaces, punctuation or emoji
    UNRECOGNISED = "unrecognised"  # no keyword we know
    MISSING_BOOKING_NUMBER = "missing_booking_number"  # QXYY without a number
    MALFORMED_BOOKING_NUMBER = "malformed_booking_number"  # two numbers, or too long
    MALFORMED_CODE = "malformed_code"  # QR followed by something not six digits


@dataclass(frozen=True)
class QueryBookings:
    """CXYY: list my exam bookings."""

    keyword: ClassVar[str] = "query_bookings"


@dataclass(frozen=True)
class CancelBooking:
    """QXYY <booking number>: start the two-step cancellation of one booking."""

    booking_no: str
    keyword: ClassVar[str] = "cancel_booking"


@dataclass(frozen=True)
class ConfirmCancel:
    """QR <code> (or just the code): the second step of a cancellation."""

    # repr=False: the code is a one-time secret; keep it out of logs and assertion output.
    code: str = field(repr=False)
    keyword: ClassVar[str] = "confirm_cancel"


@dataclass(frozen=True)
class QueryPoints:
    """CXJF: licence points, status and expiry."""

    keyword: ClassVar[str] = "query_points"


@dataclass(frozen=True)
class QueryViolations:
    """CXWF: violations still to be handled and the current points."""

    keyword: ClassVar[str] = "query_violations"


@dataclass(frozen=True)
class Help:
    """BZ, or anything we could not use; `reason` says which."""

    reason: HelpReason
    keyword: ClassVar[str] = "help"


MoCommand = QueryBookings | CancelBooking | ConfirmCancel | QueryPoints | QueryViolations | Help


class _Kind(Enum):
    QUERY_BOOKINGS = "query_bookings"
    CANCEL_BOOKING = "cancel_booking"
    CONFIRM_CANCEL = "confirm_cancel"
    QUERY_POINTS = "query_points"
    QUERY_VIOLATIONS = "query_violations"
    HELP = "help"


# Aliases as they read after normalisation (NFKC, upper case, no separators).
_ALIASES: dict[str, _Kind] = {
    "CXYY": _Kind.QUERY_BOOKINGS,
    "查询预约": _Kind.QUERY_BOOKINGS,
    "查预约": _Kind.QUERY_BOOKINGS,
    "预约查询": _Kind.QUERY_BOOKINGS,
    "QXYY": _Kind.CANCEL_BOOKING,
    "取消预约": _Kind.CANCEL_BOOKING,
    "取消": _Kind.CANCEL_BOOKING,
    "QR": _Kind.CONFIRM_CANCEL,
    "确认取消": _Kind.CONFIRM_CANCEL,
    "确认": _Kind.CONFIRM_CANCEL,
    "验证码": _Kind.CONFIRM_CANCEL,
    "CXJF": _Kind.QUERY_POINTS,
    "查询记分": _Kind.QUERY_POINTS,
    "查记分": _Kind.QUERY_POINTS,
    "记分查询": _Kind.QUERY_POINTS,
    # 积分 is the common mis-writing of 记分 (both read jìfēn).
    "查询积分": _Kind.QUERY_POINTS,
    "查积分": _Kind.QUERY_POINTS,
    "CXWF": _Kind.QUERY_VIOLATIONS,
    "查询违法": _Kind.QUERY_VIOLATIONS,
    "查违法": _Kind.QUERY_VIOLATIONS,
    "违法查询": _Kind.QUERY_VIOLATIONS,
    # 违章 is what most people call a violation.
    "查询违章": _Kind.QUERY_VIOLATIONS,
    "查违章": _Kind.QUERY_VIOLATIONS,
    "BZ": _Kind.HELP,
    "帮助": _Kind.HELP,
    "HELP": _Kind.HELP,
}
# Longest first, so 确认取消 is tried before 确认 and 取消预约 before 取消.
_ALIASES_LONGEST_FIRST = tuple(sorted(_ALIASES.items(), key=lambda item: -len(item[0])))

_ASCII_ALNUM_RUN = re.compile(r"[0-9A-Z]+")
_CODE = re.compile(rf"[0-9]{{{CODE_DIGITS}}}")


def normalise_mo_text(text: str) -> str:
    """The message as the keyword table reads it: NFKC, upper case, letters and digits only.

    Looks at the first `MAX_TEXT_CHARS` characters only.
    """
    folded = unicodedata.normalize("NFKC", text[:MAX_TEXT_CHARS]).upper()
    return "".join(ch for ch in folded if ch.isalnum())


def parse_mo(text: object) -> MoCommand:
    """The command in a citizen's message; never raises.

    text: the MO text as the SMPP layer decoded it.  Anything that is not a ``str`` is
    treated as an unrecognised message rather than an error: a carrier quirk must not
    stop the MO from being answered.
    """
    if not isinstance(text, str):
        return Help(HelpReason.UNRECOGNISED)
    compact = normalise_mo_text(text)
    if not compact:
        return Help(HelpReason.EMPTY)
    if _CODE.fullmatch(compact):
        return ConfirmCancel(compact)
    for alias, kind in _ALIASES_LONGEST_FIRST:
        if compact.startswith(alias):
            return _with_argument(kind, compact[len(alias):])
    return Help(HelpReason.UNRECOGNISED)


def _with_argument(kind: _Kind, rest: str) -> MoCommand:
    match kind:
        case _Kind.QUERY_BOOKINGS:
            return QueryBookings()
        case _Kind.QUERY_POINTS:
            return QueryPoints()
        case _Kind.QUERY_VIOLATIONS:
            return QueryViolations()
        case _Kind.HELP:
            return Help(HelpReason.ASKED)
        case _Kind.CANCEL_BOOKING:
            runs = _ASCII_ALNUM_RUN.findall(rest)
            if not runs:
                return Help(HelpReason.MISSING_BOOKING_NUMBER)
            if len(runs) > 1 or len(runs[0]) > MAX_BOOKING_NO_CHARS:
                return Help(HelpReason.MALFORMED_BOOKING_NUMBER)
            return CancelBooking(runs[0])
        case _Kind.CONFIRM_CANCEL:
            if _CODE.fullmatch(rest):
                return ConfirmCancel(rest)
            return Help(HelpReason.MALFORMED_CODE)
