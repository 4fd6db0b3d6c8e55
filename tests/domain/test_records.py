"""Reading people, vehicles, plans and bookings; ID check characters; citizen-facing texts."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import CHINA_TZ, CorruptRecord
from gateway.domain.bookings import (
    BookingStatus,
    BookingStore,
    CancellationOutcome,
    CancellationResult,
    ExamPlanStore,
    ExamSubject,
    booking_summary,
    cancellation_reply,
    normalise_booking_no,
    subject_name,
)
from gateway.domain.people import (
    LicenceStatus,
    PersonStore,
    UserClass,
    id_check_character,
    is_valid_id_number,
    licence_summary,
)
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_CALLER_CANCELLED,
    SAMPLE_CALLER_NINE_POINTS,
    SAMPLE_CALLER_TWELVE_POINTS,
    SAMPLE_CALLER_UNICOM,
    SAMPLE_ID_NUMBERS,
    SAMPLE_PLATE_OVERDUE,
    load_sample,
)
from gateway.domain.vehicles import VehicleStatus, VehicleStore, vehicle_summary
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client

TODAY = date(2026, 11, 23)
KEYS = Keys()


def test_subject_names() -> None:
    """Subjects 1-3 read 科目一/二/三; anything else is refused."""
    assert [subject_name(n) for n in (1, 2, 3)] == ["科目一", "科目二", "科目三"]
    with pytest.raises(ValueError):
        subject_name(4)


def test_gb11643_reference_number() -> None:
    """The standard's worked example 11010519491231002X has check character X."""
    assert id_check_character("11010519491231002") == "X"
    assert is_valid_id_number("11010519491231002X")
    assert is_valid_id_number("11010519491231002x")
    assert not is_valid_id_number("110105194912310021")
    assert not is_valid_id_number("11010519491231002")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=17, max_size=17), st.integers(0, 16))
def test_check_character_catches_any_single_digit_change(first17: str, position: int) -> None:
    """Changing any one of the 17 digits changes the check character (MOD 11-2 property)."""
    changed = first17[:position] + str((int(first17[position]) + 1) % 10) + first17[position + 1:]
    assert id_check_character(first17) != id_check_character(changed)


def test_normalise_booking_no() -> None:
    """Full-width digits and spaces are folded; anything else is refused."""
    assert normalise_booking_no("２０２６１１３０００１") == "20261130001"
    assert normalise_booking_no(" 2026 1130 001 ") == "20261130001"
    assert normalise_booking_no("2026113000a") is None
    assert normalise_booking_no("12345") is None
    assert normalise_booking_no("1" * 21) is None


@on_asyncio
async def test_people_by_id_and_phone(redis_url: str) -> None:
    """People load with points, licence status and class; lookups by ID and by phone agree."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        store = PersonStore(r, KEYS)

        nine = await store.get(SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS].lower())
        assert nine is not None and nine.points == 9
        assert nine.licence_status is LicenceStatus.NORMAL and nine.user_class is UserClass.COUNTER
        twelve = (await store.find_by_phone(SAMPLE_CALLER_TWELVE_POINTS))[0]
        assert twelve.points == 12 and twelve.licence_status is LicenceStatus.OVER_POINTS
        learner = await store.get(SAMPLE_ID_NUMBERS[SAMPLE_CALLER])
        assert learner is not None and not learner.has_licence
        assert learner.user_class is UserClass.LEARNER

        assert await store.get("350203200003151283") is None
        assert await store.get("not an id") is None
        assert await store.find_by_phone("13700137000") == []
        assert await store.find_by_phone("garbage") == []


@on_asyncio
async def test_person_index_lagging_a_phone_change_is_ignored(redis_url: str) -> None:
    """A person whose record moved to another phone is not returned for the old one."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        await r.hset(KEYS.person(SAMPLE_ID_NUMBERS[SAMPLE_CALLER]), "phone", "13700137000")
        assert await PersonStore(r, KEYS).find_by_phone(SAMPLE_CALLER) == []
        assert await BookingStore(r, KEYS).find_by_phone(SAMPLE_CALLER) != []


@on_asyncio
async def test_corrupt_person_record_raises(redis_url: str) -> None:
    """A person hash with an unknown licence status raises CorruptRecord, not a KeyError."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        id_number = SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS]
        await r.hset(KEYS.person(id_number), "licence_status", "mystery")
        with pytest.raises(CorruptRecord):
            await PersonStore(r, KEYS).get(id_number)


@on_asyncio
async def test_vehicles_by_plate_and_owner(redis_url: str) -> None:
    """Vehicles load by plate (any spacing/case) and by owner; the overdue one is marked."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        store = VehicleStore(r, KEYS)

        overdue = await store.get("闽d 3k517")
        assert overdue is not None and overdue.plate == SAMPLE_PLATE_OVERDUE
        assert overdue.status is VehicleStatus.INSPECTION_OVERDUE
        assert overdue.inspection_overdue(TODAY)
        owned = await store.for_owner(SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS])
        assert [v.plate for v in owned] == sorted(["闽DA8829", SAMPLE_PLATE_OVERDUE])
        assert await store.for_owner(SAMPLE_ID_NUMBERS[SAMPLE_CALLER]) == []
        assert await store.get("闽D00000") is None
        assert await store.get("12345") is None
        assert "逾期未检验" in vehicle_summary(overdue, today=TODAY)


@on_asyncio
async def test_bookings_for_person_and_phone_in_exam_date_order(redis_url: str) -> None:
    """A person's bookings come oldest exam first; lookup by phone gives the same list."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        store = BookingStore(r, KEYS)

        by_person = await store.bookings_for_person(SAMPLE_ID_NUMBERS[SAMPLE_CALLER_UNICOM])
        assert [b.booking_no for b in by_person] == [summary.absent_booking, summary.slot_booking]
        assert [b.status for b in by_person] == [BookingStatus.ABSENT, BookingStatus.BOOKED]
        by_phone = await store.find_by_phone(SAMPLE_CALLER_UNICOM)
        assert by_phone == by_person
        assert await store.find_by_phone("13700137000") == []


@on_asyncio
async def test_booking_is_not_shown_to_a_phone_not_on_the_booking(redis_url: str) -> None:
    """find_by_phone leaves out a booking whose own phone on record is another number."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        store = BookingStore(r, KEYS)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        await r.hset(KEYS.booking(booking.plan_id, booking.booking_no), "phone", "13700137000")
        numbers = [b.booking_no for b in await store.find_by_phone(SAMPLE_CALLER)]
        assert numbers == [summary.attended_booking]


@on_asyncio
async def test_exam_plans(redis_url: str) -> None:
    """Plans list by date, with seats and the deadline; one future plan's window is closed."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        plans = await ExamPlanStore(r, KEYS).all()
        now = datetime(2026, 11, 23, 12, 0, tzinfo=CHINA_TZ)
        future = [p for p in plans if p.exam_date > TODAY]
        assert [p.subject for p in future] == [ExamSubject.SUBJECT_3, ExamSubject.SUBJECT_2, ExamSubject.SUBJECT_1]
        assert [p.cancel_deadline < now for p in future] == [True, False, False]
        assert all(0 <= p.seats_left <= p.seats_total for p in plans)
        assert await ExamPlanStore(r, KEYS).get("no-such-plan") is None


@on_asyncio
async def test_texts_never_contain_id_or_phone_numbers(redis_url: str) -> None:
    """Booking, licence and cancellation texts carry no ID number and no phone number."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        bookings = BookingStore(r, KEYS)
        people = PersonStore(r, KEYS)
        texts = []
        for phone in SAMPLE_ID_NUMBERS:
            for booking in await bookings.find_by_phone(phone):
                texts.append(booking_summary(booking))
                for outcome in CancellationOutcome:
                    texts.append(cancellation_reply(CancellationResult(outcome, booking)))
            for person in await people.find_by_phone(phone):
                texts.append(licence_summary(person))
        assert len(texts) > 20
        for text in texts:
            for phone, id_number in SAMPLE_ID_NUMBERS.items():
                assert phone not in text and id_number not in text and id_number[-6:] not in text

        booking = await bookings.get(summary.cancellable_booking)
        assert booking is not None
        assert booking_summary(booking) == (
            f"预约号{summary.cancellable_booking}：科目二，集美灌口考场，2026年11月30日上午，状态：已预约"
        )
        slot = await bookings.get(summary.slot_booking)
        assert slot is not None and "2026年12月3日上午8:30至10:30" in booking_summary(slot)
        cancelled_person = (await people.find_by_phone(SAMPLE_CALLER_CANCELLED))[0]
        assert licence_summary(cancelled_person).startswith("驾驶证（C1）状态：正常，本记分周期累积记分3分")
