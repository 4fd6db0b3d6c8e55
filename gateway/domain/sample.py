"""A realistic sample data set for the demo, the tests and a developer's Redis.

Six people in Xiamen (Fujian, plates 闽D), their vehicles, four exam plans and six
bookings, all dated relative to `today` so the demo always has an upcoming exam:

======================  ===========  ==================================================
person                  phone        what the sample shows
======================  ===========  ==================================================
林晓燕 (learner)        13800138000  科目二 booking, cancellable (`SAMPLE_CALLER`);
                                     an attended 科目一 in the past
王志强 (learner)        13900139000  科目三 booking whose booking window has closed
张丽华 (learner)        18612345678  科目一 booking with a time slot (Unicom number);
                                     was absent once
黄伟 (licence C1)       18912345678  a 科目二 booking cancelled on the web (Telecom);
                                     one car
刘德明 (licence C1)     15000150000  9 points; one car overdue for inspection;
                                     his ID number ends in X
郑美玲 (licence C1)     17712345678  12 points, licence status 超分
======================  ===========  ==================================================

Booking numbers are ``<exam date YYYYMMDD><nnn>``, numbered per plan.  ID numbers are
invented but carry a correct GB 11643 check character; the region codes are Xiamen's
districts.  `load_sample` replaces every sample key wholesale (one MULTI), so loading
twice, or loading again after the demo cancelled something, gives the same state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from redis.asyncio import Redis

from gateway.domain import CHINA_TZ, iso_time
from gateway.domain.bookings import (
    Booking,
    BookingStatus,
    ExamPlan,
    ExamSubject,
    booking_to_hash,
    exam_plan_to_hash,
)
from gateway.domain.people import (
    LicenceStatus,
    Person,
    UserClass,
    id_check_character,
    person_to_hash,
)
from gateway.domain.vehicles import Vehicle, VehicleStatus, vehicle_to_hash
from gateway.privacy import IdNumber, PhoneNumber, mask_phone
from gateway.store.keys import Keys

__all__ = [
    "SAMPLE_CALLER",
    "SAMPLE_CALLER_AFTER_DEADLINE",
    "SAMPLE_CALLER_CANCELLED",
    "SAMPLE_CALLER_TWELVE_POINTS",
    "SAMPLE_CALLER_UNICOM",
    "SAMPLE_CALLER_NINE_POINTS",
    "SAMPLE_ID_NUMBERS",
    "SAMPLE_PLATE_OVERDUE",
    "SampleData",
    "SampleSummary",
    "load_sample",
    "sample_data",
]


def _id(first17: str) -> str:
    return first17 + id_check_character(first17)


SAMPLE_CALLER = "13800138000"  # 林晓燕: China Mobile, a cancellable booking
SAMPLE_CALLER_AFTER_DEADLINE = "13900139000"  # 王志强: China Mobile, window closed
SAMPLE_CALLER_UNICOM = "18612345678"  # 张丽华: China Unicom
SAMPLE_CALLER_CANCELLED = "18912345678"  # 黄伟: China Telecom, booking cancelled on the web
SAMPLE_CALLER_NINE_POINTS = "15000150000"  # 刘德明: 9 points, vehicle overdue
SAMPLE_CALLER_TWELVE_POINTS = "17712345678"  # 郑美玲: 12 points (China Telecom 177)

# phone -> ID number (region 3502xx: Xiamen's districts; 17th digit odd for men).
SAMPLE_ID_NUMBERS = {
    SAMPLE_CALLER: _id("35020320000315128"),  # 思明区
    SAMPLE_CALLER_AFTER_DEADLINE: _id("35020619980722131"),  # 湖里区
    SAMPLE_CALLER_UNICOM: _id("35021120010109046"),  # 集美区
    SAMPLE_CALLER_CANCELLED: _id("35020519850611015"),  # 海沧区
    SAMPLE_CALLER_NINE_POINTS: _id("35021219760930031"),  # 同安区; check character X
    SAMPLE_CALLER_TWELVE_POINTS: _id("35021319900204062"),  # 翔安区
}

SAMPLE_PLATE_OVERDUE = "闽D3K517"

SITE_SUBJECT_1 = "厦门车管所科目一考场"  # 湖里区枋湖路388号 (seed 003's office)
SITE_SUBJECT_2 = "集美灌口考场"
SITE_SUBJECT_3 = "翔安新店考场"


@dataclass(frozen=True)
class SampleData:
    people: tuple[Person, ...]
    vehicles: tuple[Vehicle, ...]
    plans: tuple[ExamPlan, ...]
    bookings: tuple[Booking, ...]
    # booking number -> history entries (JSON text, oldest first)
    histories: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleSummary:
    """What `load_sample` wrote, and the booking numbers by the case each one shows."""

    people: int
    vehicles: int
    plans: int
    bookings: int
    cancellable_booking: str  # SAMPLE_CALLER's 科目二, window open
    attended_booking: str  # SAMPLE_CALLER's past 科目一
    after_deadline_booking: str  # SAMPLE_CALLER_AFTER_DEADLINE's 科目三, window closed
    slot_booking: str  # SAMPLE_CALLER_UNICOM's 科目一 with a time slot
    absent_booking: str  # SAMPLE_CALLER_UNICOM's past 科目一, absent
    cancelled_booking: str  # SAMPLE_CALLER_CANCELLED's 科目二, cancelled on the web


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), CHINA_TZ)


def _plan_id(subject: ExamSubject, day: date) -> str:
    return f"XM-K{int(subject)}-{day:%Y%m%d}"


def _history_entry(event: str, channel: str, at: datetime, phone: str) -> str:
    return json.dumps(
        {"event": event, "channel": channel, "at": iso_time(at.timestamp()), "actor": mask_phone(phone)},
        ensure_ascii=False,
    )


def sample_data(today: date) -> SampleData:
    """The sample records for `today` (pure; `load_sample` writes them)."""
    ids = SAMPLE_ID_NUMBERS

    def person(phone: str, name: str, user_class: UserClass, **licence: object) -> Person:
        return Person(IdNumber(ids[phone]), name, PhoneNumber(phone), user_class, **licence)  # type: ignore[arg-type]

    def years(n: int) -> date:
        return today.replace(year=today.year + n, day=min(today.day, 28))

    people = (
        person(SAMPLE_CALLER, "林晓燕", UserClass.LEARNER),
        person(SAMPLE_CALLER_AFTER_DEADLINE, "王志强", UserClass.LEARNER),
        person(SAMPLE_CALLER_UNICOM, "张丽华", UserClass.LEARNER),
        person(
            SAMPLE_CALLER_CANCELLED, "黄伟", UserClass.COUNTER, points=3, violations_pending=0,
            licence_status=LicenceStatus.NORMAL, licence_class="C1", licence_expiry=years(4),
        ),
        person(
            SAMPLE_CALLER_NINE_POINTS, "刘德明", UserClass.COUNTER, points=9, violations_pending=2,
            licence_status=LicenceStatus.NORMAL, licence_class="C1", licence_expiry=years(2),
        ),
        person(
            SAMPLE_CALLER_TWELVE_POINTS, "郑美玲", UserClass.COUNTER, points=12,
            licence_status=LicenceStatus.OVER_POINTS, licence_class="C1", licence_expiry=years(5),
        ),
    )

    def vehicle(plate: str, phone: str, due: date, status: VehicleStatus, kind: str = "小型普通客车") -> Vehicle:
        return Vehicle(plate, IdNumber(ids[phone]), kind, due, status)

    vehicles = (
        vehicle("闽D6F220", SAMPLE_CALLER_CANCELLED, today + timedelta(days=200), VehicleStatus.NORMAL),
        vehicle("闽DA8829", SAMPLE_CALLER_NINE_POINTS, today + timedelta(days=90), VehicleStatus.NORMAL),
        vehicle(
            SAMPLE_PLATE_OVERDUE, SAMPLE_CALLER_NINE_POINTS, today - timedelta(days=40),
            VehicleStatus.INSPECTION_OVERDUE, "轻型普通货车",
        ),
        vehicle("闽DD12345", SAMPLE_CALLER_TWELVE_POINTS, today + timedelta(days=400), VehicleStatus.NORMAL,
                "小型新能源客车"),
    )

    # Plans are published five days ahead and their booking window normally closes two days
    # before the exam at 17:00 (the confirmation SMS goes out "at least two days before",
    # seed 001).  The 科目三 plan closed early (full), so its window is already shut.
    def plan(subject: ExamSubject, site: str, day: date, total: int, left: int, deadline: datetime) -> ExamPlan:
        return ExamPlan(_plan_id(subject, day), subject, site, day, total, left, deadline)

    day1, day2, day3, past = (today + timedelta(days=n) for n in (10, 7, 3, -20))
    plan_1 = plan(ExamSubject.SUBJECT_1, SITE_SUBJECT_1, day1, 200, 57, _at(day1 - timedelta(days=2), 17))
    plan_2 = plan(ExamSubject.SUBJECT_2, SITE_SUBJECT_2, day2, 80, 12, _at(day2 - timedelta(days=2), 17))
    plan_3 = plan(ExamSubject.SUBJECT_3, SITE_SUBJECT_3, day3, 60, 0, _at(today - timedelta(days=1), 17))
    plan_past = plan(ExamSubject.SUBJECT_1, SITE_SUBJECT_1, past, 200, 0, _at(past - timedelta(days=2), 17))

    histories: dict[str, tuple[str, ...]] = {}

    def booking(
        p: ExamPlan, n: int, phone: str, name: str, session: str, status: BookingStatus,
        booked_at: datetime, cancelled: tuple[datetime, str] | None = None,
    ) -> Booking:
        number = f"{p.exam_date:%Y%m%d}{n:03d}"
        entries = [_history_entry("booked", "web", booked_at, phone)]
        if cancelled is not None:
            entries.append(_history_entry("cancelled", cancelled[1], cancelled[0], phone))
        histories[number] = tuple(entries)
        return Booking(
            booking_no=number, plan_id=p.plan_id, id_number=IdNumber(ids[phone]), name=name,
            phone=PhoneNumber(phone), subject=p.subject, site=p.site, exam_date=p.exam_date,
            session=session, status=status, cancel_deadline=p.cancel_deadline, booked_at=booked_at,
            cancelled_at=None if cancelled is None else cancelled[0],
            cancelled_via=None if cancelled is None else cancelled[1],
        )

    published = today - timedelta(days=2)
    bookings = (
        booking(plan_2, 1, SAMPLE_CALLER, "林晓燕", "上午", BookingStatus.BOOKED, _at(published, 9, 12)),
        booking(plan_past, 1, SAMPLE_CALLER, "林晓燕", "上午", BookingStatus.ATTENDED,
                _at(past - timedelta(days=5), 10, 3)),
        booking(plan_3, 1, SAMPLE_CALLER_AFTER_DEADLINE, "王志强", "下午", BookingStatus.BOOKED,
                _at(published, 20, 41)),
        booking(plan_1, 1, SAMPLE_CALLER_UNICOM, "张丽华", "08:30-10:30", BookingStatus.BOOKED,
                _at(published, 8, 5)),
        booking(plan_past, 2, SAMPLE_CALLER_UNICOM, "张丽华", "下午", BookingStatus.ABSENT,
                _at(past - timedelta(days=5), 11, 30)),
        booking(plan_2, 2, SAMPLE_CALLER_CANCELLED, "黄伟", "下午", BookingStatus.CANCELLED,
                _at(published, 15, 0), cancelled=(_at(today - timedelta(days=1), 9, 0), "web")),
    )
    return SampleData(people, vehicles, (plan_1, plan_2, plan_3, plan_past), bookings, histories)


def _hash(fields: dict[str, str]) -> dict[Any, Any]:
    # redis-py's stubs want Mapping[bytes | str | ..., ...], and Mapping keys are invariant.
    return fields


async def load_sample(redis: Redis, keys: Keys, *, today: date) -> SampleSummary:
    """Write the sample for `today` into Redis, replacing any earlier copy of the same keys.

    One MULTI/EXEC, so a running gateway never sees half a sample (a single Redis, not
    Cluster: the sample is for demos and tests).  Loading with a different `today` leaves
    the earlier day's plans and bookings in place; flush the database for a clean slate.
    """
    data = sample_data(today)
    # Partitioned (a Cluster): its keys span slots, so no MULTI there (tests load it first).
    async with redis.pipeline(transaction=not keys.partitioned) as pipe:
        for person in data.people:
            digits = person.id_number.digits
            pipe.delete(
                keys.person(digits), keys.person_by_phone(person.phone.digits),
                keys.bookings_of_person(digits), keys.vehicles_of_person(digits),
            )
        for person in data.people:
            digits = person.id_number.digits
            pipe.hset(keys.person(digits), mapping=_hash(person_to_hash(person)))
            pipe.sadd(keys.person_by_phone(person.phone.digits), digits)
        for vehicle in data.vehicles:
            pipe.delete(keys.vehicle(vehicle.plate))
            pipe.hset(keys.vehicle(vehicle.plate), mapping=_hash(vehicle_to_hash(vehicle)))
            pipe.sadd(keys.vehicles_of_person(vehicle.owner_id.digits), vehicle.plate)
        for plan in data.plans:
            pipe.delete(keys.exam_plan(plan.plan_id), keys.cancellations_unnotified(plan.plan_id))
            pipe.hset(keys.exam_plan(plan.plan_id), mapping=_hash(exam_plan_to_hash(plan)))
            pipe.sadd(keys.exam_plans, plan.plan_id)
        for booking in data.bookings:
            number, plan_id = booking.booking_no, booking.plan_id
            pipe.delete(keys.booking(plan_id, number), keys.booking_history(plan_id, number))
            pipe.hset(keys.booking(plan_id, number), mapping=_hash(booking_to_hash(booking)))
            pipe.rpush(keys.booking_history(plan_id, number), *data.histories[number])
            pipe.set(keys.booking_index(number), plan_id)
            pipe.sadd(keys.bookings_of_person(booking.id_number.digits), number)
        await pipe.execute()

    numbers = [b.booking_no for b in data.bookings]
    return SampleSummary(
        people=len(data.people),
        vehicles=len(data.vehicles),
        plans=len(data.plans),
        bookings=len(data.bookings),
        cancellable_booking=numbers[0],
        attended_booking=numbers[1],
        after_deadline_booking=numbers[2],
        slot_booking=numbers[3],
        absent_booking=numbers[4],
        cancelled_booking=numbers[5],
    )
