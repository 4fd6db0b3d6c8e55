"""Phone and ID numbers that mask themselves.

Numbers become `PhoneNumber` / `IdNumber` at the edge (an SMPP address, an HTTP body, an
AGI caller id).  Their `str`, `repr` and `format` give the masked form, so a number that
reaches a log line as a field or in a message is never whole; only encoders read `.digits`.
`mask_digit_runs` is the last observer's safety net for anything that slipped through.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "IdNumber",
    "InvalidPhoneNumber",
    "PhoneNumber",
    "mask_digit_runs",
    "mask_id",
    "mask_phone",
    "normalise_cn_mobile",
]

_CN_MOBILE = re.compile(r"1[3-9]\d{9}")
# +86, 0086 and 86 are the forms core systems and carriers have been seen to send.
_CN_PREFIXES = ("+86", "0086", "86")


class InvalidPhoneNumber(ValueError):
    """The text is not a Chinese mobile number (1[3-9] and 9 digits)."""


def mask_phone(digits: str) -> str:
    """138****5678: the first three and last four digits of an 11-digit number."""
    if len(digits) >= 11:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) > 4:
        return "*" * (len(digits) - 4) + digits[-4:]
    return "*" * len(digits)


def mask_id(digits: str) -> str:
    """110101********1234: the region code and the last four characters of an ID number."""
    if len(digits) >= 15:
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
    return mask_phone(digits)


def normalise_cn_mobile(text: str) -> str:
    """Return the 11 digits of a Chinese mobile number, or raise InvalidPhoneNumber.

    Full-width digits and spaces/dashes are accepted; +86, 0086 and 86 prefixes are removed.
    """
    cleaned = unicodedata.normalize("NFKC", str(text)).strip()
    cleaned = re.sub(r"[\s\-()]", "", cleaned)
    for prefix in _CN_PREFIXES:
        if cleaned.startswith(prefix) and len(cleaned) == len(prefix) + 11:
            cleaned = cleaned[len(prefix):]
            break
    if not _CN_MOBILE.fullmatch(cleaned):
        raise InvalidPhoneNumber("not a Chinese mobile number (1[3-9] and 9 digits)")
    return cleaned


class _MaskedDigits:
    __slots__ = ("digits",)
    _mask = staticmethod(mask_phone)

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def masked(self) -> str:
        return self._mask(self.digits)

    def __str__(self) -> str:
        return self.masked()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.masked()!r})"

    def __format__(self, spec: str) -> str:
        return format(self.masked(), spec)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.digits == self.digits  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.digits))


class PhoneNumber(_MaskedDigits):
    """A phone number (any address an SMSC or Asterisk gives us); prints as 138****5678."""

    __slots__ = ()
    _mask = staticmethod(mask_phone)

    @classmethod
    def cn_mobile(cls, text: str) -> PhoneNumber:
        """Parse and normalise a Chinese mobile number; raises InvalidPhoneNumber."""
        return cls(normalise_cn_mobile(text))


class IdNumber(_MaskedDigits):
    """A resident ID number; prints as 110101********1234."""

    __slots__ = ()
    _mask = staticmethod(mask_id)


# Mobile numbers (11 digits, 1[3-9]...) and ID numbers (18, maybe ending X, or 15) standing
# on their own: after a space, punctuation, "/", "=", ":", a Chinese character, +86...
# Not after "<digit>.": the fraction of a float (a retry delay) is not a number to hide.
# Not inside an identifier the gateway made itself: a run glued to letters or "_" before
# it, or to "<word>-" (notification ids and ActionIDs such as acc-cause-13900009001 or
# rem-n7-1 stay greppable in the logs; the fields that carry numbers are masked at source).
_DIGIT_RUN = re.compile(
    r"(?<![0-9])(?<![0-9]\.)(?<![A-Za-z_])(?<![A-Za-z0-9_]-)"
    r"(?:\+?86)?(1[3-9]\d{9}|\d{17}[\dXx]|\d{15})(?![0-9A-Za-z_])")


def mask_digit_runs(text: str) -> str:
    """Mask anything in free text that looks like a mobile or ID number."""

    def _replace(match: re.Match[str]) -> str:
        run = match.group(1)
        return mask_phone(run) if len(run) == 11 else mask_id(run)

    return _DIGIT_RUN.sub(_replace, text)
