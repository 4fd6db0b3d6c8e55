"""The domain actions a voice menu calls (``kind: action`` nodes in ivr.yaml).

Each action is an asyncio coroutine on the shared redis.asyncio client: a call waiting for
Redis awaits and every other call goes on.  An action receives the call's `CallContext`
and answers an `ActionResult`: one outcome of its `ActionSpec` (the menu branches on it)
and variables for the prompts to speak.  Anything only the actions may see (who was
verified, which booking was selected) lives in the context's `private` dict, which the
menu never reads, so a caller cannot steer the cancellation to a booking that was not
verified by typing a number into some other entry.

Identity before anything personal (seeds 001 and 003: the phone on record is the only
number the platform talks to; the threat model is in docs/ivr.md):

* a booking number (``identity`` of 7 to 20 digits): the booking, when the caller id is
  its phone on record (`BookingStore.verify_by_booking_number`); to *cancel* it, also the
  last six characters of its holder's ID number (``id_suffix``): the caller id alone can
  be spoofed and a booking number (date + 3-digit sequence) guessed;
* the last six characters of the ID number (``identity`` / ``id_suffix`` of 6 keys, ``*``
  for X): the person whose phone on record is the caller id
  (`PersonStore.verify_by_id_suffix`).

"Not found", "not yours" and "wrong ID suffix" are the same outcome, ``not_verified``, after
the same Redis work.  Failed checks count against the limits of gateway.ivr.attempts (per
caller number and booking, per booking, global); a check a limit holds answers
``limited`` without looking, and the menu tells the way forward (SMS, an agent).  A caller
with a withheld number can never be verified and spends nothing.

Every action also has the outcome ``error`` (Redis down, a corrupt record): the menu's
``on_error`` node apologises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from twisted.logger import Logger

from gateway.config import UserRights
from gateway.domain import CorruptRecord, decode_hash, decode_text, from_unix
from gateway.domain.bookings import (
    Booking,
    BookingCancellation,
    BookingStatus,
    BookingStore,
    CancellationOutcome,
    ExamSubject,
    normalise_booking_no,
)
from gateway.domain.people import LicenceStatus, Person, PersonStore, may
from gateway.domain.vehicles import Vehicle, VehicleStatus, VehicleStore
from gateway.ivr.attempts import ID_TARGET, AttemptLimits, IdentityAttempts
from gateway.ivr.menus import ActionResult, ActionSpec, spoken_time
from gateway.privacy import PhoneNumber
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = ["CATALOGUE", "REMINDER_TYPES", "CallContext", "VoiceActions", "spoken_session"]

log = Logger()

# Notification types (config/templates.yaml) that the default ivr.yaml words for the
# phone from their parameters, with pre-built prompts.  Each is an outcome of
# load_reminder; any other reminder is read out from its text (``text``: synthesised for
# the call) or, without espeak-ng/sox, with the generic prompt (``other``).
REMINDER_TYPES = frozenset({
    "exam_booking_confirmed",
    "exam_booking_cancelled",
    "inspection_due",
    "inspection_overdue",
    "points_reached_9",
    "points_reached_12",
    "licence_renewal_due",
})
SIGNATURE = "【交管12123】"
# Any service's signature (【交管12123】, 【公安户政】...): a call does not read it out.
_LEADING_SIGNATURE = re.compile(r"^【[^】]{1,16}】")

OVERDUE_WORD = "逾期未检验"
_SESSION_WORDS = frozenset({"上午", "下午", "晚上"})
_IDENTITY = frozenset({"found", "none", "not_verified", "limited", "not_allowed"})

CATALOGUE: Mapping[str, ActionSpec] = {
    "check_attempts": ActionSpec(frozenset({"ok", "limited"})),
    "booking_status": ActionSpec(_IDENTITY),
    "next_booking": ActionSpec(
        frozenset({"more", "done"}),
        frozenset(s.label for s in ExamSubject) | frozenset(s.label for s in BookingStatus) | _SESSION_WORDS,
    ),
    "select_booking": ActionSpec(
        frozenset({"selected", "not_verified", "limited", "not_allowed",
                   "already_cancelled", "not_booked", "deadline_passed"}),
        frozenset(s.label for s in ExamSubject) | frozenset(s.label for s in BookingStatus) | _SESSION_WORDS,
    ),
    "cancel_booking": ActionSpec(
        frozenset({"cancelled", "already_cancelled", "deadline_passed", "not_booked", "not_found"}),
        frozenset(s.label for s in BookingStatus),
    ),
    "licence_status": ActionSpec(
        frozenset({"ok", "no_licence", "not_verified", "limited", "not_allowed"}),
        frozenset(s.label for s in LicenceStatus),
    ),
    # Violations still to handle and the points (person fields violations_pending, points).
    "violation_status": ActionSpec(
        frozenset({"ok", "no_licence", "no_data", "not_verified", "limited", "not_allowed"}),
    ),
    "vehicle_status": ActionSpec(_IDENTITY),
    "next_vehicle": ActionSpec(
        frozenset({"more", "done"}), frozenset(s.label for s in VehicleStatus) | {OVERDUE_WORD}
    ),
    "load_reminder": ActionSpec(REMINDER_TYPES | {"text", "other", "not_found"},
                                frozenset(s.label for s in ExamSubject) | _SESSION_WORDS),
    "record_reminder": ActionSpec(frozenset({"recorded"})),
}


@dataclass
class CallContext:
    """What an action knows of the call.  `variables` are the menu's (spoken, entered);
    `private` is the actions' own per-call state; `now` is Unix seconds."""

    caller: PhoneNumber | None
    variables: Mapping[str, str] = field(repr=False)  # entries: digits the caller typed
    now: float = 0.0
    uniqueid: str = ""
    private: dict[str, Any] = field(default_factory=dict, repr=False)  # verified ID number


def spoken_session(session: str) -> str:
    """上午 stays 上午; a time slot 08:30-10:30 becomes 上午8点半至10点半 (menus.spoken_time)."""
    return spoken_time(session.strip())


def _booking_variables(booking: Booking) -> dict[str, str]:
    return {
        "booking_no": booking.booking_no,
        "subject": booking.subject.label,
        "site": booking.site,
        "exam_date": booking.exam_date.isoformat(),
        "session": spoken_session(booking.session),
        "status": booking.status.label,
    }


def _vehicle_variables(vehicle: Vehicle, today: date) -> dict[str, str]:
    overdue = vehicle.inspection_overdue(today) and vehicle.status is VehicleStatus.NORMAL
    return {
        "plate": vehicle.plate,
        "inspection_due": vehicle.inspection_due.isoformat(),
        "vehicle_status": OVERDUE_WORD if overdue else vehicle.status.label,
    }


def _id_suffix(entry: str) -> str | None:
    """Six keys, the last may be * for X: an ID number's last six characters."""
    return entry if re.fullmatch(r"[0-9]{5}[0-9*]", entry) else None


class Synthesizer(Protocol):
    """Makes the sound file of a free text (gateway.ivr.prompts.SpeechSynthesizer)."""

    async def __call__(self, text: str) -> bool: ...

    def forget(self, text: str) -> None: ...


class VoiceActions:
    """The actions of `CATALOGUE`, on one Redis.

    `attempts_per_hour`: IvrConfig.attempts_per_hour.  `synthesizer`: reads out reminders
    that have no pre-built wording (None: the generic prompt instead).  `run` never raises
    for Redis or data trouble: it logs and answers ``error``.
    """

    def __init__(self, redis: Redis, keys: Keys, *, attempts_per_hour: int,
                 attempts_per_booking_per_day: int = 10, enumeration_failures_per_minute: int = 60,
                 attempts_per_caller_per_hour: int = 20, synthesizer: Synthesizer | None = None,
                 rights: UserRights | None = None) -> None:
        self._redis = redis
        # Which user classes (seed 001) may do what by phone: ivr.rights.
        self._rights = rights or UserRights()
        self._keys = keys
        self._attempts = IdentityAttempts(redis, keys, AttemptLimits(
            attempts_per_hour, attempts_per_booking_per_day, enumeration_failures_per_minute,
            attempts_per_caller_per_hour))
        self._bookings = BookingStore(redis, keys)
        self._people = PersonStore(redis, keys)
        self._vehicles = VehicleStore(redis, keys)
        self._cancellation = BookingCancellation(redis, keys)
        self._heard_script = register_lua(redis, __file__, "heard.lua")
        self._synthesizer = synthesizer
        self._actions: dict[str, Callable[[CallContext], Awaitable[ActionResult]]] = {
            "check_attempts": self.check_attempts,
            "booking_status": self.booking_status,
            "next_booking": self.next_booking,
            "select_booking": self.select_booking,
            "cancel_booking": self.cancel_booking,
            "licence_status": self.licence_status,
            "vehicle_status": self.vehicle_status,
            "violation_status": self.violation_status,
            "next_vehicle": self.next_vehicle,
            "load_reminder": self.load_reminder,
            "record_reminder": self.record_reminder,
        }
        assert set(self._actions) == set(CATALOGUE)

    async def run(self, name: str, context: CallContext) -> ActionResult:
        """Run action `name`; Redis errors and corrupt records become outcome ``error``."""
        action = self._actions.get(name)
        if action is None:
            log.error("menu asked for unknown action {action}", action=name)
            return ActionResult("error")
        try:
            return await action(context)
        except (RedisError, ConnectionError, TimeoutError) as error:
            log.error("voice action {action} failed: Redis: {error}", action=name, error=type(error).__name__)
        except CorruptRecord as error:
            log.error("voice action {action} met a corrupt record: {error}", action=name, error=str(error))
        return ActionResult("error")

    # -- the attempt limits (gateway.ivr.attempts) ---------------------------------------

    async def check_attempts(self, context: CallContext) -> ActionResult:
        """``limited`` when a check by this caller would be held before they type: the
        global failure rate looks like enumeration and this number failed before."""
        if context.caller is None:
            return ActionResult("ok")
        failures, recent = await self._redis.mget(
            [self._keys.ivr_attempts(context.caller.digits), self._keys.ivr_attempts_global])
        limits = self._attempts.limits
        enumeration = recent is not None and int(decode_text(recent)) > limits.enumeration_failures_per_minute
        held = enumeration and failures is not None and int(decode_text(failures)) >= 1
        return ActionResult("limited" if held else "ok")

    async def _verified_person(self, context: CallContext, entry: str) -> Person | str:
        """The person for an ID suffix entry, or the outcome to answer."""
        suffix = _id_suffix(entry)
        if context.caller is None or suffix is None:
            return "not_verified"
        attempt = await self._attempts.take(context.caller, ID_TARGET, booking_no=None, now=context.now)
        if attempt.limited:
            return "limited"
        person = await self._people.verify_by_id_suffix(context.caller.digits, suffix)
        if person is None:
            return "not_verified"
        await self._attempts.refund(attempt)
        context.private["person_id"] = person.id_number.digits
        return person

    async def _verified_booking(self, context: CallContext, entry: str,
                                id_suffix: str | None = None) -> Booking | str:
        """The booking for a booking-number entry (and, to cancel, the holder's ID
        suffix), or the outcome to answer.  Unknown, not yours and wrong suffix: the same
        counters, the same lookup (`verify_by_booking_number`), the same answer."""
        number = normalise_booking_no(entry)
        if context.caller is None or number is None:
            return "not_verified"
        attempt = await self._attempts.take(context.caller, number, booking_no=number, now=context.now)
        if attempt.limited:
            return "limited"
        booking = await self._bookings.verify_by_booking_number(number, context.caller.digits, id_suffix=id_suffix)
        if booking is None:
            return "not_verified"
        await self._attempts.refund(attempt)
        return booking

    async def _may(self, person_id: str, classes: tuple[str, ...]) -> bool:
        """Whether the person's user class is among `classes`; a booking whose person has
        no record is judged by its phone on record alone (the identity rule)."""
        person = await self._people.get(person_id)
        return person is None or may(person, classes)

    # -- exam bookings --------------------------------------------------------------------

    async def booking_status(self, context: CallContext) -> ActionResult:
        """``identity`` -> the bookings to read: the one numbered, or the person's exams
        from today on.  Then `next_booking` reads them out one by one."""
        entry = context.variables.get("identity", "")
        today = from_unix(context.now).date()
        if _id_suffix(entry):
            person = await self._verified_person(context, entry)
            if isinstance(person, str):
                return ActionResult(person)
            if not may(person, self._rights.query_bookings):
                return ActionResult("not_allowed")
            bookings = [b for b in await self._bookings.bookings_for_person(person.id_number.digits)
                        if b.exam_date >= today]
        else:
            booking = await self._verified_booking(context, entry)
            if isinstance(booking, str):
                return ActionResult(booking)
            if not await self._may(booking.id_number.digits, self._rights.query_bookings):
                return ActionResult("not_allowed")
            bookings = [booking]
        context.private["bookings"] = [b.booking_no for b in bookings]
        context.private["booking_records"] = {b.booking_no: b for b in bookings}
        return ActionResult("found" if bookings else "none", {"booking_count": str(len(bookings))})

    async def next_booking(self, context: CallContext) -> ActionResult:
        """The next booking of `booking_status` into the prompt variables; ``done`` at the end."""
        pending: list[str] = context.private.get("bookings", [])
        records: dict[str, Booking] = context.private.get("booking_records", {})
        if not pending:
            return ActionResult("done")
        return ActionResult("more", _booking_variables(records[pending.pop(0)]))

    async def select_booking(self, context: CallContext) -> ActionResult:
        """``identity`` (a booking number) and ``id_suffix`` (the last six of its holder's
        ID number, the second factor) -> the booking to cancel (``selected``); a booking
        that cannot be cancelled by phone answers why (``already_cancelled``,
        ``not_booked``, ``deadline_passed``) without asking to confirm."""
        context.private.pop("selected", None)
        suffix = _id_suffix(context.variables.get("id_suffix", ""))
        if suffix is None:
            return ActionResult("not_verified")
        verified = await self._verified_booking(context, context.variables.get("identity", ""), id_suffix=suffix)
        if isinstance(verified, str):
            return ActionResult(verified)
        if not await self._may(verified.id_number.digits, self._rights.cancel_booking):
            return ActionResult("not_allowed")
        booking = verified
        # Say at once what cannot be done, rather than ask to confirm it first;
        # cancel_booking's script stays the authority (the deadline may pass meanwhile).
        variables = _booking_variables(booking)
        if booking.status is BookingStatus.CANCELLED:
            return ActionResult("already_cancelled", variables)
        if booking.status is not BookingStatus.BOOKED:
            return ActionResult("not_booked", variables)
        if not booking.cancellable_online(context.now):
            variables["in_person_last_day"] = booking.in_person_cancel_last_day.isoformat()
            return ActionResult("deadline_passed", variables)
        context.private["selected"] = booking.booking_no
        return ActionResult("selected", _booking_variables(booking))

    async def cancel_booking(self, context: CallContext) -> ActionResult:
        """Cancel the booking `select_booking` verified (never a number from the variables)."""
        number = context.private.get("selected")
        if number is None or context.caller is None:
            return ActionResult("not_found")
        result = await self._cancellation.cancel(
            number, channel="voice", actor_phone=context.caller.digits, now=context.now
        )
        variables: dict[str, str] = {}
        if result.booking is not None:
            variables = _booking_variables(result.booking)
            variables["in_person_last_day"] = result.booking.in_person_cancel_last_day.isoformat()
        outcome = {
            CancellationOutcome.CANCELLED: "cancelled",
            CancellationOutcome.ALREADY_CANCELLED: "already_cancelled",
            CancellationOutcome.DEADLINE_PASSED: "deadline_passed",
            CancellationOutcome.NOT_BOOKED: "not_booked",
            CancellationOutcome.NOT_FOUND: "not_found",
        }[result.outcome]
        return ActionResult(outcome, variables)

    # -- licence and vehicles -------------------------------------------------------------

    async def licence_status(self, context: CallContext) -> ActionResult:
        """``id_suffix`` -> licence status, points and expiry of the verified caller."""
        person = await self._verified_person(context, context.variables.get("id_suffix", ""))
        if isinstance(person, str):
            return ActionResult(person)
        if not may(person, self._rights.query_points):
            return ActionResult("not_allowed")
        if person.licence_status is None:
            return ActionResult("no_licence")
        variables = {
            "licence_status": person.licence_status.label,
            "points": str(person.points),
            "licence_class": person.licence_class or "",
            "licence_expiry": person.licence_expiry.isoformat() if person.licence_expiry else "",
        }
        return ActionResult("ok", variables)

    async def vehicle_status(self, context: CallContext) -> ActionResult:
        """``id_suffix`` -> the verified caller's vehicles; `next_vehicle` reads them out."""
        person = await self._verified_person(context, context.variables.get("id_suffix", ""))
        if isinstance(person, str):
            return ActionResult(person)
        if not may(person, self._rights.query_vehicles):
            return ActionResult("not_allowed")
        vehicles = await self._vehicles.for_owner(person.id_number.digits)
        context.private["vehicles"] = list(vehicles)
        return ActionResult("found" if vehicles else "none", {"vehicle_count": str(len(vehicles))})

    async def violation_status(self, context: CallContext) -> ActionResult:
        """``id_suffix`` -> violations still to handle and the points, from the verified
        caller's record (``violations_pending``, ``points``); the same identity check as
        the licence query (caller id on record and the ID number's last six)."""
        person = await self._verified_person(context, context.variables.get("id_suffix", ""))
        if isinstance(person, str):
            return ActionResult(person)
        if not may(person, self._rights.query_violations):
            return ActionResult("not_allowed")
        if person.violations_pending is None:
            return ActionResult("no_data")
        variables = {"violation_count": str(person.violations_pending), "points": str(person.points)}
        return ActionResult("ok" if person.licence_status is not None else "no_licence", variables)

    async def next_vehicle(self, context: CallContext) -> ActionResult:
        pending: list[Vehicle] = context.private.get("vehicles", [])
        if not pending:
            return ActionResult("done")
        return ActionResult("more", _vehicle_variables(pending.pop(0), from_unix(context.now).date()))

    # -- outbound reminders ---------------------------------------------------------------

    async def load_reminder(self, context: CallContext) -> ActionResult:
        """``notification_id`` (agi_arg_1) -> how to word the reminder.

        A type of REMINDER_TYPES with its parameters: that type as the outcome and the
        parameters as variables (never the citizen's name: someone else may answer).
        Otherwise the text the push pipeline handed to the voice channel, synthesised for
        this call: ``text`` with ``reminder_text``; without a synthesizer ``other``.
        """
        notification_id = context.variables.get("notification_id", "")
        if not notification_id:
            return ActionResult("not_found")
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.notification(notification_id))
            pipe.hget(self._keys.voice_reminder(notification_id), "text")
            raw, voice_text = await pipe.execute()
        fields = decode_hash(raw) if raw else {}
        text = decode_text(voice_text) if voice_text else _LEADING_SIGNATURE.sub("", fields.get("text", ""))
        if not fields and not text:
            return ActionResult("not_found")
        kind = fields.get("type", "")
        if kind in REMINDER_TYPES:
            try:
                params = json.loads(fields.get("params") or "{}")
            except ValueError:
                params = None
            if isinstance(params, dict) and params:
                variables = {str(k): str(v) for k, v in params.items() if k != "name"}
                if "session" in variables:
                    variables["session"] = spoken_session(variables["session"])
                return ActionResult(kind, variables)
        if text and self._synthesizer is not None and await self._synthesizer(text):
            context.private["synthesised"] = text
            return ActionResult("text", {"reminder_text": text})
        return ActionResult("other")

    async def record_reminder(self, context: CallContext) -> ActionResult:
        """The menu's final action: was the reminder heard to the end (``REMINDER_HEARD``
        set by the menu)?  ``heard``/``heard_at``/``heard_uniqueid`` on the reminder hash
        ``voice-reminder:{id}`` and on the AMI client's call hash ``call:<action_id>`` (each
        only if it exists), and an ``ivr.reminder`` event; the file made for the call's
        text is deleted."""
        spoken = context.private.pop("synthesised", None)
        if spoken and self._synthesizer is not None:
            self._synthesizer.forget(spoken)
        notification_id = context.variables.get("notification_id", "")
        if not notification_id:
            return ActionResult("recorded")
        heard = "1" if context.variables.get("REMINDER_HEARD") == "1" else "0"
        at = str(int(context.now))
        marks = [heard, at, context.uniqueid]
        reminder_key = self._keys.voice_reminder(notification_id)
        action_id = await self._redis.hget(reminder_key, "action_id")
        # One key per script call: the reminder and the call hash are in different Redis
        # Cluster slots.  The call hash is the AMI client's, keyed by the Originate's ActionID.
        await self._heard_script(keys=[reminder_key], args=marks)
        if action_id:
            await self._heard_script(keys=[self._keys.call(decode_text(action_id))], args=marks)
        await self._redis.xadd(self._keys.events_stream, {
            "type": "ivr.reminder",
            "notification": notification_id,
            "heard": heard,
            "uniqueid": context.uniqueid,
            "at": at,
        }, maxlen=1_000_000, approximate=True)
        return ActionResult("recorded")
