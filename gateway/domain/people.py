"""People on the register: licence points, licence status, user class; the caller check.

A person is keyed by the 18-character resident ID number (GB 11643: 17 digits and a check
character 0-9 or X).  The phone "on record" is the one registered at the vehicle
administration office; seed 001: online registration must use that same number, and it is
the only number the gateway will talk to about the person.

`verify_by_id_suffix` is the voice channel's identity check: the caller id must be a phone
on record and the caller must key the last six characters of the ID number.  A mismatch
returns None and nothing else, so a caller cannot learn whether a number is registered.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import Enum

from redis.asyncio import Redis

from gateway.domain import CorruptRecord, decode_hash, decode_text, format_cn_date, parse_iso_date
from gateway.privacy import IdNumber, InvalidPhoneNumber, PhoneNumber, normalise_cn_mobile
from gateway.store.keys import Keys

__all__ = [
    "MAX_POINTS",
    "LicenceStatus",
    "Person",
    "PersonStore",
    "UserClass",
    "id_check_character",
    "is_valid_id_number",
    "licence_summary",
    "may",
    "violation_summary",
    "normalise_id_number",
    "person_from_hash",
    "person_to_hash",
]

# A scoring cycle (记分周期) is twelve months; reaching 12 points ends driving until study
# and re-examination, and the national platform notifies at 9 and at 12 (seed 004).
MAX_POINTS = 12

_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
# GB 11643-1999 ISO 7064 MOD 11-2 weights for the first 17 digits, and the check character
# for each remainder 0..10.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_check_character(first17: str) -> str:
    """The GB 11643 check character for 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 ASCII digits")
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def normalise_id_number(text: str) -> str | None:
    """The 18-character ID number in canonical form (upper-case X), or None if not shaped so.

    Only the shape is checked, not the check character: the register holds what the core
    system holds, and a lookup must not fail on a record we consider imperfect.
    """
    cleaned = unicodedata.normalize("NFKC", text).strip().upper()
    return cleaned if _ID_SHAPE.fullmatch(cleaned) else None


def is_valid_id_number(text: str) -> bool:
    """True for an 18-character ID number whose check character is right."""
    canonical = normalise_id_number(text)
    return canonical is not None and id_check_character(canonical[:17]) == canonical[17]


class UserClass(Enum):
    """Seed 001: the three registration classes, with different rights."""

    INTERNET = "internet"  # registered online: queries only
    LEARNER = "learner"  # registered through a driving school: exam matters only
    COUNTER = "counter"  # verified face to face at the office: vehicle and licence business

    @property
    def label(self) -> str:
        return _USER_CLASS_LABELS[self]


_USER_CLASS_LABELS = {
    UserClass.INTERNET: "互联网注册用户",
    UserClass.LEARNER: "驾考学员用户",
    UserClass.COUNTER: "窗口面签用户",
}


class LicenceStatus(Enum):
    """Driving-licence status as the register shows it (驾驶证状态)."""

    NORMAL = "normal"
    OVER_POINTS = "over_points"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    CANCELLED = "cancelled"
    OVERDUE_RENEWAL = "overdue_renewal"
    OVERDUE_AUDIT = "overdue_audit"
    OVERDUE_MEDICAL = "overdue_medical"

    @property
    def label(self) -> str:
        return _LICENCE_LABELS[self]

    @classmethod
    def from_stored(cls, text: str) -> LicenceStatus:
        """Parse the stored code; the Chinese label is accepted too (core systems write either)."""
        try:
            return cls(text)
        except ValueError:
            pass
        for status, label in _LICENCE_LABELS.items():
            if label == text:
                return status
        raise CorruptRecord("unknown licence_status")


_LICENCE_LABELS = {
    LicenceStatus.NORMAL: "正常",
    LicenceStatus.OVER_POINTS: "超分",
    LicenceStatus.SUSPENDED: "暂扣",
    LicenceStatus.REVOKED: "吊销",
    LicenceStatus.CANCELLED: "注销",
    LicenceStatus.OVERDUE_RENEWAL: "逾期未换证",
    LicenceStatus.OVERDUE_AUDIT: "逾期未审验",
    LicenceStatus.OVERDUE_MEDICAL: "逾期未提交身体条件证明",
}


@dataclass(frozen=True)
class Person:
    """One person on the register.  A learner has no licence: the licence fields are None."""

    id_number: IdNumber
    name: str
    phone: PhoneNumber
    user_class: UserClass
    points: int = 0  # points in the current scoring cycle, 0..MAX_POINTS
    licence_status: LicenceStatus | None = None
    licence_class: str | None = None  # 准驾车型, e.g. "C1"
    licence_expiry: date | None = None
    # Violations still to be handled (未处理交通违法), as the core system counts them;
    # None when the core data does not say (the field is optional in the hash).
    violations_pending: int | None = None

    @property
    def has_licence(self) -> bool:
        return self.licence_status is not None


def person_to_hash(person: Person) -> dict[str, str]:
    """The Redis hash fields of a person (absent licence fields are left out)."""
    fields = {
        "id_number": person.id_number.digits,
        "name": person.name,
        "phone": person.phone.digits,
        "user_class": person.user_class.value,
        "points": str(person.points),
    }
    if person.licence_status is not None:
        fields["licence_status"] = person.licence_status.value
    if person.licence_class is not None:
        fields["licence_class"] = person.licence_class
    if person.licence_expiry is not None:
        fields["licence_expiry"] = person.licence_expiry.isoformat()
    if person.violations_pending is not None:
        fields["violations_pending"] = str(person.violations_pending)
    return fields


def person_from_hash(fields: dict[str, str]) -> Person:
    """Build a Person from its hash; raises CorruptRecord when the schema is broken."""
    try:
        points = int(fields.get("points", "0"))
        user_class = UserClass(fields["user_class"])
        person = Person(
            id_number=IdNumber(fields["id_number"]),
            name=fields["name"],
            phone=PhoneNumber(fields["phone"]),
            user_class=user_class,
            points=points,
            licence_status=(
                LicenceStatus.from_stored(fields["licence_status"])
                if fields.get("licence_status")
                else None
            ),
            licence_class=fields.get("licence_class") or None,
            licence_expiry=(
                parse_iso_date(fields["licence_expiry"], field="licence_expiry")
                if fields.get("licence_expiry")
                else None
            ),
            violations_pending=int(fields["violations_pending"]) if fields.get("violations_pending") else None,
        )
    except KeyError as missing:
        raise CorruptRecord(f"person record lacks {missing.args[0]}") from None
    except ValueError as bad:
        if isinstance(bad, CorruptRecord):
            raise
        raise CorruptRecord("person record has a malformed field") from None
    if not 0 <= points <= MAX_POINTS:
        raise CorruptRecord("points outside 0..12")
    if person.violations_pending is not None and person.violations_pending < 0:
        raise CorruptRecord("violations_pending below 0")
    return person


def may(person: Person, classes: Iterable[str]) -> bool:
    """Whether the person's registration class is among `classes` (a UserRights field)."""
    return person.user_class.value in classes


def violation_summary(person: Person) -> str | None:
    """Violations still to handle and the current points, for an SMS reply; None when the
    core data has no violation count for the person.

    e.g. "您有2起交通违法未处理，驾驶证本记分周期累积记分3分"
    """
    if person.violations_pending is None:
        return None
    text = f"您有{person.violations_pending}起交通违法未处理" if person.violations_pending else "您没有未处理的交通违法"
    if person.licence_status is not None:
        text += f"，驾驶证本记分周期累积记分{person.points}分"
    return text


def _suffix_key(text: str) -> str | None:
    """The last-six entry as the register spells it: digits, X for x or * (keypads lack X)."""
    cleaned = unicodedata.normalize("NFKC", text).strip().upper().replace("*", "X")
    return cleaned if re.fullmatch(r"[0-9]{5}[0-9X]", cleaned) else None


class PersonStore:
    """Reads people from Redis (hash ``person:<id>``, set ``person-by-phone:<phone>``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, id_number: str) -> Person | None:
        """The person with this ID number, or None (also for text not shaped as one)."""
        canonical = normalise_id_number(id_number)
        if canonical is None:
            return None
        raw = await self._redis.hgetall(self._keys.person(canonical))
        return person_from_hash(decode_hash(raw)) if raw else None

    async def find_by_phone(self, phone_digits: str) -> list[Person]:
        """Everyone whose phone on record is this number (a family may share one), by ID."""
        try:
            phone = normalise_cn_mobile(phone_digits)
        except InvalidPhoneNumber:
            return []
        ids = sorted(decode_text(m) for m in await self._redis.smembers(self._keys.person_by_phone(phone)))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for id_number in ids:
                pipe.hgetall(self._keys.person(id_number))
            replies = await pipe.execute()
        people = [person_from_hash(decode_hash(raw)) for raw in replies if raw]
        # The index may lag a phone change by the core system: trust the person record.
        return [p for p in people if p.phone.digits == phone]

    async def verify_by_id_suffix(self, caller_phone_digits: str | None, last6: str) -> Person | None:
        """The caller's person when the caller id is a phone on record and `last6` matches.

        `last6` is what the caller keyed: six characters, the last may be X (also accepted
        as x or *).  Returns None on any mismatch, for a withheld caller id, and when two
        people on the same phone would both match, so the answer reveals nothing more than
        "not verified".
        """
        wanted = _suffix_key(last6)
        if caller_phone_digits is None or wanted is None:
            return None
        matches = [
            p
            for p in await self.find_by_phone(caller_phone_digits)
            # compare_digest: the same time whichever character differs.
            if hmac.compare_digest(p.id_number.digits[-6:].encode(), wanted.encode())
        ]
        return matches[0] if len(matches) == 1 else None


def licence_summary(person: Person) -> str:
    """Licence status text for an SMS reply or a voice prompt; no ID or phone number in it.

    e.g. "驾驶证（C1）状态：正常，本记分周期累积记分3分，有效期至2030年5月1日"
    """
    if person.licence_status is None:
        return "您名下暂无驾驶证信息"
    kind = f"（{person.licence_class}）" if person.licence_class else ""
    text = f"驾驶证{kind}状态：{person.licence_status.label}，本记分周期累积记分{person.points}分"
    if person.licence_expiry is not None:
        text += f"，有效期至{format_cn_date(person.licence_expiry)}"
    return text
