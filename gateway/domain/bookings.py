"""Driving-exam plans and bookings; the one write the gateway makes: cancelling a booking.

Theory of operation
-------------------
The exam scheduling system publishes exam plans (a subject at a site on a date, with a
number of seats) five days ahead and citizens book seats on them (seed 001).  A booking
may be cancelled online, by phone or by SMS only until the plan's booking window closes
(its ``cancel_deadline``); after that only in person at the vehicle administration office,
at least one day before the exam, and a booked seat not taken counts as absent (seeds 001
and 003).  This module reads plans and bookings and performs that cancellation.

Redis layout (gateway/store/keys.py, docs/redis-schema.md): a booking hash, its history
list and its plan hash all carry the hash tag ``{plan:<plan id>}``, so they live in one
Redis Cluster slot and one Lua script may touch them together.  ``booking-plan:<no>``
maps a booking number (what a citizen quotes) to its plan id.

Cancellation (`BookingCancellation.cancel`) is one Lua script: it checks the status and
the deadline, marks the booking cancelled, gives the seat back (never above the plan's
total) and appends to the history, all or nothing.  Two channels cancelling the same
booking at once are serialised by Redis: one gets CANCELLED, the other ALREADY_CANCELLED,
and the seat is released once.  The same request repeated (same `request_id`: redis-py
retrying the script after a lost reply, an MO replayed after a crash) is answered
CANCELLED again rather than ALREADY_CANCELLED.

The cancellation SMS and the event for core systems are then XADDed to two streams.
Those XADDs cannot be inside the script: the streams are single global keys in other
Cluster slots, and a script may only touch keys of one slot.  So the script leaves
``notified=0`` on the booking, puts the number in the plan's
``cancel-unnotified:{plan:<id>}`` set and gives the caller a short *claim* on the
notification (``notify_claim_until``); the claimant XADDs, then a second script sets
``notified=1`` and clears the set entry.  If the process dies in between, the claim
lapses and whoever comes next finishes the job: the citizen cancelling again (the script
answers ALREADY_CANCELLED and hands over the claim), `ensure_cancellation_notified`, or
the `repair_unnotified` sweep at start-up.  The claim keeps concurrent callers from all
XADDing in the normal case; after a crash between XADD and ``notified=1`` the entries may
be written twice, which is why the notification carries the idempotency key
``booking-cancelled:<no>`` (the push pipeline drops a repeated id) and the event consumer
must treat ``booking.cancelled`` for the same booking as one fact.

Identity: the gateway never cancels on its own authority; the SMS and voice channels
first check the caller (`BookingStore.verify_by_booking_number`, or
`PersonStore.verify_by_id_suffix`) and pass the verified booking number here.
"""

from __future__ import annotations

import hmac
import json
import re
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from enum import Enum, IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from twisted.logger import Logger

from gateway.domain import (
    CHINA_TZ,
    CorruptRecord,
    Instant,
    clock_12,
    decode_hash,
    decode_text,
    format_cn_date,
    format_cn_time,
    from_unix,
    half_day,
    iso_time,
    parse_iso_date,
    to_unix,
)
from gateway.domain.people import normalise_id_number
from gateway.privacy import (
    IdNumber,
    InvalidPhoneNumber,
    PhoneNumber,
    mask_phone,
    normalise_cn_mobile,
)
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = [
    "Booking",
    "BookingCancellation",
    "BookingStatus",
    "BookingStore",
    "CancellationChannel",
    "CancellationOutcome",
    "CancellationResult",
    "ExamPlan",
    "ExamPlanStore",
    "ExamSubject",
    "HistoryEntry",
    "booking_summary",
    "booking_to_hash",
    "cancellation_reply",
    "exam_plan_to_hash",
    "format_deadline",
    "format_when",
    "normalise_booking_no",
    "subject_name",
]

log = Logger()


# --- vocabulary --------------------------------------------------------------------------


class ExamSubject(IntEnum):
    """科目一 (theory), 科目二 (manoeuvres on the test ground), 科目三 (road driving and the
    safe-driving theory test)."""

    SUBJECT_1 = 1
    SUBJECT_2 = 2
    SUBJECT_3 = 3

    @property
    def label(self) -> str:
        return _SUBJECT_LABELS[self]


_SUBJECT_LABELS = {
    ExamSubject.SUBJECT_1: "科目一",
    ExamSubject.SUBJECT_2: "科目二",
    ExamSubject.SUBJECT_3: "科目三",
}


def subject_name(subject: int) -> str:
    """科目一 / 科目二 / 科目三; ValueError for any other number."""
    return ExamSubject(subject).label


class BookingStatus(Enum):
    BOOKED = "booked"
    CANCELLED = "cancelled"
    ATTENDED = "attended"
    ABSENT = "absent"  # booked, not cancelled, did not come: one attempt wasted (seed 001)

    @property
    def label(self) -> str:
        return _STATUS_LABELS[self]


_STATUS_LABELS = {
    BookingStatus.BOOKED: "已预约",
    BookingStatus.CANCELLED: "已取消",
    BookingStatus.ATTENDED: "已参加考试",
    BookingStatus.ABSENT: "缺考",
}


class CancellationChannel(Enum):
    """Where a cancellation came from (seed 003 lists web, voice, SMS and app)."""

    VOICE = "voice"
    SMS = "sms"
    WEB = "web"


class CancellationOutcome(Enum):
    CANCELLED = "CANCELLED"
    ALREADY_CANCELLED = "ALREADY_CANCELLED"
    NOT_FOUND = "NOT_FOUND"
    NOT_BOOKED = "NOT_BOOKED"  # attended or absent: nothing left to cancel
    DEADLINE_PASSED = "DEADLINE_PASSED"  # booking window closed: in person only


_BOOKING_NO = re.compile(r"[0-9]{6,20}")


def normalise_booking_no(text: str) -> str | None:
    """The booking number as ASCII digits (full-width folded, spaces removed), or None.

    Anything else is refused before it can become part of a Redis key.
    """
    cleaned = re.sub(r"\s", "", unicodedata.normalize("NFKC", text))
    return cleaned if _BOOKING_NO.fullmatch(cleaned) else None


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExamPlan:
    plan_id: str  # no braces: it goes inside the {plan:<id>} hash tag
    subject: ExamSubject
    site: str  # 考场 name as citizens know it
    exam_date: date
    seats_total: int
    seats_left: int
    cancel_deadline: datetime  # the booking window close; aware, China time


@dataclass(frozen=True)
class Booking:
    """One exam booking.  `cancel_deadline` comes from the plan, the rest from the booking."""

    booking_no: str
    plan_id: str
    id_number: IdNumber
    name: str
    phone: PhoneNumber  # phone on record when booked; the only number told about it
    subject: ExamSubject
    site: str
    exam_date: date
    session: str  # "上午", "下午" or a time slot such as "08:30-10:30"
    status: BookingStatus
    cancel_deadline: datetime
    booked_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancelled_via: str | None = None
    # None: not cancelled by the gateway; False: the cancellation SMS is not queued yet.
    cancellation_notified: bool | None = None

    def cancellable_online(self, now: Instant) -> bool:
        """Booked and before the booking window closes (web, voice and SMS alike)."""
        return self.status is BookingStatus.BOOKED and to_unix(now) < self.cancel_deadline.timestamp()

    @property
    def in_person_cancel_last_day(self) -> date:
        """After the deadline, cancel in person "at least one day before the exam" (seed 001)."""
        return self.exam_date - timedelta(days=1)


@dataclass(frozen=True)
class HistoryEntry:
    event: str  # "booked", "cancelled", ...
    channel: str
    at: datetime
    actor: str  # masked phone or a core-system operator label; never a whole number


def exam_plan_to_hash(plan: ExamPlan) -> dict[str, str]:
    return {
        "plan_id": plan.plan_id,
        "subject": str(int(plan.subject)),
        "site": plan.site,
        "date": plan.exam_date.isoformat(),
        "seats_total": str(plan.seats_total),
        "seats_left": str(plan.seats_left),
        "cancel_deadline": str(int(plan.cancel_deadline.timestamp())),
    }


def exam_plan_from_hash(fields: dict[str, str]) -> ExamPlan:
    try:
        return ExamPlan(
            plan_id=fields["plan_id"],
            subject=ExamSubject(int(fields["subject"])),
            site=fields["site"],
            exam_date=parse_iso_date(fields["date"], field="date"),
            seats_total=int(fields["seats_total"]),
            seats_left=int(fields["seats_left"]),
            cancel_deadline=from_unix(float(fields["cancel_deadline"])),
        )
    except KeyError as missing:
        raise CorruptRecord(f"exam plan lacks {missing.args[0]}") from None
    except ValueError as bad:
        if isinstance(bad, CorruptRecord):
            raise
        raise CorruptRecord("exam plan has a malformed field") from None


def booking_to_hash(booking: Booking) -> dict[str, str]:
    """The booking hash as core systems write it (the deadline lives on the plan)."""
    fields = {
        "booking_no": booking.booking_no,
        "plan_id": booking.plan_id,
        "id_number": booking.id_number.digits,
        "name": booking.name,
        "phone": booking.phone.digits,
        "subject": str(int(booking.subject)),
        "site": booking.site,
        "date": booking.exam_date.isoformat(),
        "session": booking.session,
        "status": booking.status.value,
    }
    if booking.booked_at is not None:
        fields["booked_at"] = str(int(booking.booked_at.timestamp()))
    if booking.cancelled_at is not None:
        fields["cancelled_at"] = str(int(booking.cancelled_at.timestamp()))
    if booking.cancelled_via is not None:
        fields["cancelled_via"] = booking.cancelled_via
    if booking.cancellation_notified is not None:
        fields["notified"] = "1" if booking.cancellation_notified else "0"
    return fields


def _optional_time(fields: dict[str, str], name: str) -> datetime | None:
    text = fields.get(name)
    return from_unix(float(text)) if text else None


def booking_from_hash(fields: dict[str, str], cancel_deadline: str | None) -> Booking:
    """Build a Booking from its hash and its plan's ``cancel_deadline`` (Unix seconds)."""
    if not cancel_deadline:
        raise CorruptRecord("booking's exam plan is missing or has no cancel_deadline")
    try:
        notified = fields.get("notified")
        return Booking(
            booking_no=fields["booking_no"],
            plan_id=fields["plan_id"],
            id_number=IdNumber(fields["id_number"]),
            name=fields["name"],
            phone=PhoneNumber(fields["phone"]),
            subject=ExamSubject(int(fields["subject"])),
            site=fields["site"],
            exam_date=parse_iso_date(fields["date"], field="date"),
            session=fields.get("session", ""),
            status=BookingStatus(fields["status"]),
            cancel_deadline=from_unix(float(cancel_deadline)),
            booked_at=_optional_time(fields, "booked_at"),
            cancelled_at=_optional_time(fields, "cancelled_at"),
            cancelled_via=fields.get("cancelled_via") or None,
            cancellation_notified=None if notified is None else notified == "1",
        )
    except KeyError as missing:
        raise CorruptRecord(f"booking lacks {missing.args[0]}") from None
    except ValueError as bad:
        if isinstance(bad, CorruptRecord):
            raise
        raise CorruptRecord("booking has a malformed field") from None


# --- reading -----------------------------------------------------------------------------


class ExamPlanStore:
    """Reads exam plans (hash ``plan:{plan:<id>}``, set ``plans``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, plan_id: str) -> ExamPlan | None:
        raw = await self._redis.hgetall(self._keys.exam_plan(plan_id))
        return exam_plan_from_hash(decode_hash(raw)) if raw else None

    async def all(self) -> list[ExamPlan]:
        """Every plan in the ``plans`` index, by exam date then subject."""
        plan_ids = sorted(decode_text(m) for m in await self._redis.smembers(self._keys.exam_plans))
        async with self._redis.pipeline(transaction=False) as pipe:
            for plan_id in plan_ids:
                pipe.hgetall(self._keys.exam_plan(plan_id))
            replies = await pipe.execute()
        plans = [exam_plan_from_hash(decode_hash(raw)) for raw in replies if raw]
        return sorted(plans, key=lambda p: (p.exam_date, p.subject, p.plan_id))


class BookingStore:
    """Reads bookings: by number, by person, by phone on record; the booking-number check."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def get(self, booking_no: str) -> Booking | None:
        """The booking with this number, or None (also for text that is not a number)."""
        found = await self._load([booking_no])
        return found[0] if found else None

    async def bookings_for_person(self, id_number: str) -> list[Booking]:
        """All of a person's bookings, any status, by exam date then session and number."""
        canonical = normalise_id_number(id_number)
        if canonical is None:
            return []
        members = await self._redis.smembers(self._keys.bookings_of_person(canonical))
        bookings = await self._load([decode_text(m) for m in members])
        # A dangling index entry (booking moved to another person) is not theirs.
        return _in_order(b for b in bookings if b.id_number.digits == canonical)

    async def find_by_phone(self, phone_digits: str) -> list[Booking]:
        """Bookings whose phone on record is this number (any status), in exam-date order.

        Found through the people registered with that phone; a booking is returned only if
        its own phone on record is the same number, so a phone change on the person does
        not expose bookings made under the old number to the new one, or vice versa.
        """
        try:
            phone = normalise_cn_mobile(phone_digits)
        except InvalidPhoneNumber:
            return []
        ids = [decode_text(m) for m in await self._redis.smembers(self._keys.person_by_phone(phone))]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for id_number in ids:
                pipe.smembers(self._keys.bookings_of_person(id_number))
            replies = await pipe.execute()
        numbers = sorted({decode_text(m) for members in replies for m in members})
        bookings = await self._load(numbers)
        return _in_order(b for b in bookings if b.phone.digits == phone)

    async def history(self, booking_no: str) -> list[HistoryEntry]:
        """The booking's history, oldest first ([] for an unknown booking)."""
        canonical = normalise_booking_no(booking_no)
        if canonical is None:
            return []
        plan_id = await self._redis.get(self._keys.booking_index(canonical))
        if plan_id is None:
            return []
        raw = await self._redis.lrange(
            self._keys.booking_history(decode_text(plan_id), canonical), 0, -1
        )
        entries = []
        for item in raw:
            try:
                data = json.loads(decode_text(item))
                entries.append(
                    HistoryEntry(
                        event=data["event"],
                        channel=data.get("channel", ""),
                        at=datetime.fromisoformat(data["at"]),
                        actor=data.get("actor", ""),
                    )
                )
            except (ValueError, KeyError, TypeError):
                raise CorruptRecord("booking history entry is malformed") from None
        return entries

    async def verify_by_booking_number(
        self, booking_no: str, caller_phone_digits: str | None, *, id_suffix: str | None = None
    ) -> Booking | None:
        """The booking when it exists, the caller's number is its phone on record, and
        (when given) `id_suffix` is the last six characters of its holder's ID number.

        `caller_phone_digits` is the SMS source address or the call's caller id; None (a
        withheld caller id) never verifies.  `id_suffix` is the voice cancellation's second
        factor (six keys, ``*`` or x for X).  Unknown booking, wrong phone and wrong suffix
        give the same None, and cost the same Redis work (`_load_for_check`), so neither
        the answer nor its timing tells a caller that a booking number exists.
        """
        if caller_phone_digits is None:
            return None
        try:
            caller = normalise_cn_mobile(caller_phone_digits)
        except InvalidPhoneNumber:
            return None
        wanted_suffix = None
        if id_suffix is not None:
            wanted_suffix = _id_suffix_key(id_suffix)
            if wanted_suffix is None:
                return None
        number = normalise_booking_no(booking_no)
        if number is None:
            return None
        booking = await self._load_for_check(number)
        # Compare against placeholders when there is no booking: the same work either way.
        phone_matches = hmac.compare_digest(
            (booking.phone.digits if booking else "0" * 11).encode(), caller.encode())
        suffix_matches = wanted_suffix is None or hmac.compare_digest(
            (booking.id_number.digits[-6:] if booking else "000000").encode(), wanted_suffix.encode())
        if booking is None or not phone_matches or not suffix_matches:
            return None
        return booking

    async def _load_for_check(self, number: str) -> Booking | None:
        """One booking for an identity check, with the same Redis commands whether or not
        it exists: GET the number's plan, then HGETALL the booking and HGET the plan's
        deadline, of keys that do not exist when the number is unknown."""
        plan_id = await self._redis.get(self._keys.booking_index(number))
        plan = decode_text(plan_id) if plan_id is not None else _NO_PLAN
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.booking(plan, number))
            pipe.hget(self._keys.exam_plan(plan), "cancel_deadline")
            raw, deadline = await pipe.execute()
        if plan_id is None or not raw:
            return None
        return booking_from_hash(decode_hash(raw), None if deadline is None else decode_text(deadline))

    async def _load(self, booking_numbers: Sequence[str]) -> list[Booking]:
        """Bookings for these numbers, skipping unknown ones: two round trips in all."""
        numbers = [n for n in (normalise_booking_no(b) for b in booking_numbers) if n]
        if not numbers:
            return []
        # GETs in a pipeline, not one MGET: on a Redis Cluster the index keys span slots.
        async with self._redis.pipeline(transaction=False) as pipe:
            for number in numbers:
                pipe.get(self._keys.booking_index(number))
            plan_ids = await pipe.execute()
        located = [(n, decode_text(p)) for n, p in zip(numbers, plan_ids, strict=True) if p is not None]
        if not located:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for number, plan_id in located:
                pipe.hgetall(self._keys.booking(plan_id, number))
                pipe.hget(self._keys.exam_plan(plan_id), "cancel_deadline")
            replies = await pipe.execute()
        bookings = []
        for i in range(len(located)):
            raw, deadline = replies[2 * i], replies[2 * i + 1]
            if raw:
                bookings.append(
                    booking_from_hash(decode_hash(raw), None if deadline is None else decode_text(deadline))
                )
        return bookings


# The plan id read for an unknown booking number: no plan has it (plan ids are digits,
# letters and dashes from the exam planning system), so its keys never exist.
_NO_PLAN = "~none~"


def _id_suffix_key(text: str) -> str | None:
    """The last-six entry as the register spells it: digits, X for x or * (keypads lack X)."""
    cleaned = unicodedata.normalize("NFKC", text).strip().upper().replace("*", "X")
    return cleaned if re.fullmatch(r"[0-9]{5}[0-9X]", cleaned) else None


def _in_order(bookings: Any) -> list[Booking]:
    return sorted(bookings, key=lambda b: (b.exam_date, b.session, b.booking_no))


# --- cancelling --------------------------------------------------------------------------

# Lua: gateway/domain/lua/cancel_booking.lua, claim_cancellation_notice.lua and
# finish_cancellation_notice.lua.  Both claim-giving scripts reply {outcome or status,
# claimed (1: the caller must queue the notification), the plan's cancel_deadline, the
# booking's HGETALL as a flat list}.


@dataclass(frozen=True)
class CancellationResult:
    outcome: CancellationOutcome
    booking: Booking | None  # the booking as it stands after the attempt; None if not found
    # True when this call queued the cancellation SMS (first cancel, or a repair).
    notification_enqueued: bool = False


NOTIFICATION_TYPE = "exam_booking_cancelled"
EVENT_TYPE = "booking.cancelled"


def cancellation_notification_id(booking_no: str) -> str:
    """The notification's idempotency key: a retry or a repair never sends a second SMS."""
    return f"booking-cancelled:{booking_no}"


class BookingCancellation:
    """Cancels exam bookings for the voice and SMS channels (see the module docstring).

    `notify_claim_lease_seconds`: how long the caller that won the cancellation has to
    queue the SMS before another caller may take over; longer than a Redis round trip
    under load, shorter than a citizen's patience before retrying.
    """

    def __init__(self, redis: Redis, keys: Keys, *, notify_claim_lease_seconds: float = 30.0) -> None:
        self._redis = redis
        self._keys = keys
        self._lease = notify_claim_lease_seconds
        # register_script: EVALSHA, and SCRIPT LOAD + retry when the server lost the script.
        self._cancel_script = register_lua(redis, __file__, "cancel_booking.lua")
        self._claim_script = register_lua(redis, __file__, "claim_cancellation_notice.lua")
        self._finish_script = register_lua(redis, __file__, "finish_cancellation_notice.lua")

    async def cancel(
        self,
        booking_no: str,
        *,
        channel: CancellationChannel | str,
        actor_phone: str,
        now: Instant,
        request_id: str | None = None,
    ) -> CancellationResult:
        """Cancel a booking the caller has already been verified for.

        channel: "voice", "sms" or "web".  actor_phone: who asked (caller id or SMS source);
        only its masked form is stored.  now: aware datetime or Unix seconds.
        request_id: identifies the citizen's request (the MO stream entry id, the call's
        id); repeating it gets CANCELLED again instead of ALREADY_CANCELLED, so a replayed
        MO gets the same reply.  Default: a fresh id, which still covers redis-py's own
        retry of the script after a lost reply.
        Raises CorruptRecord when the booking's exam plan is missing (nothing changed),
        ValueError for an unknown channel or a naive datetime.

        A cancellation that is recorded but whose SMS could not be queued (Redis error on
        the XADD) still answers CANCELLED, with `notification_enqueued=False`; the claim
        lapses and a later call or `repair_unnotified` queues it.  Redis errors from the
        script itself propagate: the booking may or may not be cancelled, and asking
        again gives the answer.
        """
        channel = CancellationChannel(channel)
        now_seconds = to_unix(now)
        number = normalise_booking_no(booking_no)
        plan_id = await self._plan_of(number) if number else None
        if number is None or plan_id is None:
            return CancellationResult(CancellationOutcome.NOT_FOUND, None)
        entry = json.dumps(
            {
                "event": "cancelled",
                "channel": channel.value,
                "at": iso_time(now_seconds),
                "actor": mask_phone(actor_phone),
            },
            ensure_ascii=False,
        )
        try:
            reply = await self._cancel_script(
                keys=[
                    self._keys.booking(plan_id, number),
                    self._keys.exam_plan(plan_id),
                    self._keys.booking_history(plan_id, number),
                    self._keys.cancellations_unnotified(plan_id),
                ],
                args=[
                    repr(now_seconds),
                    str(int(now_seconds)),
                    channel.value,
                    entry,
                    repr(now_seconds + self._lease),
                    number,
                    request_id or uuid.uuid4().hex,
                ],
            )
        except ResponseError as error:
            if str(error).startswith("CORRUPT"):
                raise CorruptRecord(str(error)) from None
            raise
        outcome = CancellationOutcome(decode_text(reply[0]))
        booking = _booking_from_reply(reply)
        enqueued = False
        if int(reply[1]) and booking is not None:
            enqueued = await self._publish(booking)
            if enqueued:
                booking = replace(booking, cancellation_notified=True)
        log.info(
            "booking {booking} cancellation via {channel}: {outcome}",
            booking=number,
            channel=channel.value,
            outcome=outcome.name,
            notification_enqueued=enqueued,
        )
        return CancellationResult(outcome, booking, enqueued)

    async def ensure_cancellation_notified(self, booking_no: str, *, now: Instant) -> bool:
        """Queue the cancellation SMS and event if a gateway cancellation still lacks them.

        Returns True when this call queued them; False when there was nothing to do,
        another caller holds a live claim, or Redis failed on the XADD (logged).
        """
        number = normalise_booking_no(booking_no)
        plan_id = await self._plan_of(number) if number else None
        if number is None or plan_id is None:
            return False
        return await self._claim_and_publish(plan_id, number, to_unix(now))

    async def repair_unnotified(self, *, now: Instant) -> int:
        """Finish every gateway cancellation whose SMS was never queued; returns how many.

        Walks the ``plans`` index and each plan's ``cancel-unnotified`` set; run it at
        start-up and now and then (a lapsed claim is the only thing it waits for).
        """
        now_seconds = to_unix(now)
        plan_ids = [decode_text(m) for m in await self._redis.smembers(self._keys.exam_plans)]
        repaired = 0
        for plan_id in sorted(plan_ids):
            members = await self._redis.smembers(self._keys.cancellations_unnotified(plan_id))
            for number in sorted(decode_text(m) for m in members):
                if await self._claim_and_publish(plan_id, number, now_seconds):
                    repaired += 1
        return repaired

    async def _claim_and_publish(self, plan_id: str, number: str, now_seconds: float) -> bool:
        reply = await self._claim_script(
            keys=[
                self._keys.booking(plan_id, number),
                self._keys.exam_plan(plan_id),
                self._keys.cancellations_unnotified(plan_id),
            ],
            args=[repr(now_seconds), repr(now_seconds + self._lease), number],
        )
        booking = _booking_from_reply(reply)
        if not int(reply[1]) or booking is None:
            return False
        return await self._publish(booking)

    async def _plan_of(self, booking_no: str) -> str | None:
        plan_id = await self._redis.get(self._keys.booking_index(booking_no))
        return None if plan_id is None else decode_text(plan_id)

    async def _publish(self, booking: Booking) -> bool:
        """XADD the event and the SMS, then mark the booking notified; False on a Redis error.

        Not in the cancellation script because both streams are single keys in other
        Cluster slots (see the module docstring); not one MULTI either, for the same
        reason.  ``notified=1`` is set only after both XADDs succeeded.
        """
        cancelled_at = booking.cancelled_at.timestamp() if booking.cancelled_at else 0.0
        params = {
            "name": booking.name,
            "booking_no": booking.booking_no,
            "subject": booking.subject.label,
            "site": booking.site,
            "date": format_cn_date(booking.exam_date),
            "session": booking.session,
        }
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    self._keys.events_stream,
                    {
                        "type": EVENT_TYPE,
                        "booking": booking.booking_no,
                        "plan": booking.plan_id,
                        "channel": booking.cancelled_via or "",
                        "at": iso_time(cancelled_at),
                    },
                )
                pipe.xadd(
                    self._keys.notify_stream,
                    {
                        "id": cancellation_notification_id(booking.booking_no),
                        "type": NOTIFICATION_TYPE,
                        "to": booking.phone.digits,
                        "params": json.dumps(params, ensure_ascii=False),
                        "priority": "high",
                        "channel": "sms",
                    },
                )
                await pipe.execute()
            await self._finish_script(
                keys=[
                    self._keys.booking(booking.plan_id, booking.booking_no),
                    self._keys.cancellations_unnotified(booking.plan_id),
                ],
                args=[booking.booking_no],
            )
        except RedisError as error:
            # The cancellation stands; the lapsed claim lets a retry or the sweep finish.
            log.error(
                "booking {booking} cancelled but its SMS could not be queued ({error}); "
                "a retry or the repair sweep will queue it",
                booking=booking.booking_no,
                error=f"{type(error).__name__}: {error}",
            )
            return False
        return True


def _booking_from_reply(reply: list[Any]) -> Booking | None:
    flat = [decode_text(v) for v in reply[3]]
    if not flat:
        return None
    fields = dict(zip(flat[0::2], flat[1::2], strict=True))
    return booking_from_hash(fields, decode_text(reply[2]) or None)


# --- presentation (SMS replies and voice prompts) ----------------------------------------


def format_deadline(moment: datetime) -> str:
    """11月27日下午5:00 in China time."""
    local = moment.astimezone(CHINA_TZ)
    return f"{local.month}月{local.day}日{half_day(local.hour)}{clock_12(local.hour, local.minute)}"


def format_when(booking: Booking) -> str:
    """2026年11月30日上午, 2026年11月30日上午8:30至10:30: the exam's date and session."""
    session = booking.session
    return f"{format_cn_date(booking.exam_date)}{format_cn_time(session) or session}"


_when = format_when


def booking_summary(booking: Booking) -> str:
    """One line per booking for SMS replies; never an ID number or a phone number.

    "预约号20261130001：科目二，集美灌口考场，2026年11月30日上午，状态：已预约"
    """
    return (
        f"预约号{booking.booking_no}：{booking.subject.label}，{booking.site}，"
        f"{_when(booking)}，状态：{booking.status.label}"
    )


def cancellation_reply(result: CancellationResult) -> str:
    """The answer to a cancellation request, for an SMS reply or a voice prompt."""
    booking = result.booking
    match result.outcome:
        case CancellationOutcome.NOT_FOUND:
            return "未查询到该预约，请核对预约号后重试。"
        case _ if booking is None:
            raise ValueError("a cancellation result other than NOT_FOUND carries its booking")
        case CancellationOutcome.CANCELLED:
            return (
                f"预约号{booking.booking_no}（{booking.subject.label}，{booking.site}，"
                f"{_when(booking)}）已取消。"
            )
        case CancellationOutcome.ALREADY_CANCELLED:
            return f"预约号{booking.booking_no}此前已取消，无需重复办理。"
        case CancellationOutcome.NOT_BOOKED:
            return f"预约号{booking.booking_no}当前状态为{booking.status.label}，不能取消。"
        case CancellationOutcome.DEADLINE_PASSED:
            return (
                f"预约号{booking.booking_no}已过网上取消截止时间（{format_deadline(booking.cancel_deadline)}）。"
                f"如需取消，请本人持身份证明最迟于{format_cn_date(booking.in_person_cancel_last_day)}"
                f"到车管所窗口办理，预约后未参加考试按缺考处理。"
            )
    raise AssertionError(result.outcome)
