"""Identity checks: a match returns the record, any mismatch returns None and nothing else."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.domain.bookings import BookingStore
from gateway.domain.people import PersonStore
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_CALLER_AFTER_DEADLINE,
    SAMPLE_CALLER_NINE_POINTS,
    SAMPLE_ID_NUMBERS,
    load_sample,
)
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client

TODAY = date(2026, 11, 23)
KEYS = Keys()


@on_asyncio
async def test_booking_number_with_phone_on_record_verifies(redis_url: str) -> None:
    """The booking number plus the phone on record (any accepted spelling) gives the booking."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        store = BookingStore(r, KEYS)
        for caller in (SAMPLE_CALLER, "+8613800138000", "8613800138000"):
            booking = await store.verify_by_booking_number(summary.cancellable_booking, caller)
            assert booking is not None
            assert booking.booking_no == summary.cancellable_booking


@pytest.mark.parametrize(
    "booking_no, caller",
    [
        ("cancellable", SAMPLE_CALLER_AFTER_DEADLINE),  # someone else's phone
        ("cancellable", None),  # withheld caller id
        ("cancellable", "12123"),  # not a mobile number
        ("20991231001", SAMPLE_CALLER),  # no such booking
        ("not a number", SAMPLE_CALLER),
    ],
)
@on_asyncio
async def test_booking_number_mismatch_reveals_nothing(
    redis_url: str, booking_no: str, caller: str | None
) -> None:
    """Wrong phone, no caller id, or an unknown booking all give the same bare None."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        number = summary.cancellable_booking if booking_no == "cancellable" else booking_no
        assert await BookingStore(r, KEYS).verify_by_booking_number(number, caller) is None


@on_asyncio
async def test_id_suffix_with_phone_on_record_verifies(redis_url: str) -> None:
    """Caller id on record plus the last six ID characters gives the person."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        id_number = SAMPLE_ID_NUMBERS[SAMPLE_CALLER]
        person = await PersonStore(r, KEYS).verify_by_id_suffix(SAMPLE_CALLER, id_number[-6:])
        assert person is not None
        assert person.id_number.digits == id_number
        assert person.name == "林晓燕"


@pytest.mark.parametrize("typed", ["X", "x", "*"])
@on_asyncio
async def test_id_suffix_ending_in_x_accepts_keypad_spellings(redis_url: str, typed: str) -> None:
    """An ID number ending in X verifies when the caller keys X, x or * (keypads have no X)."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        id_number = SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS]
        assert id_number.endswith("X")
        entered = id_number[-6:-1] + typed
        person = await PersonStore(r, KEYS).verify_by_id_suffix(SAMPLE_CALLER_NINE_POINTS, entered)
        assert person is not None and person.id_number.digits == id_number


@pytest.mark.parametrize(
    "caller, last6",
    [
        (SAMPLE_CALLER, "000000"),  # wrong digits
        (SAMPLE_CALLER, SAMPLE_ID_NUMBERS[SAMPLE_CALLER][-5:]),  # too short
        (SAMPLE_CALLER_AFTER_DEADLINE, SAMPLE_ID_NUMBERS[SAMPLE_CALLER][-6:]),  # other phone
        (None, SAMPLE_ID_NUMBERS[SAMPLE_CALLER][-6:]),  # withheld caller id
        ("13700137000", SAMPLE_ID_NUMBERS[SAMPLE_CALLER][-6:]),  # phone not on record
    ],
)
@on_asyncio
async def test_id_suffix_mismatch_reveals_nothing(redis_url: str, caller: str | None, last6: str) -> None:
    """Any mismatch of phone or suffix gives None."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        assert await PersonStore(r, KEYS).verify_by_id_suffix(caller, last6) is None


@on_asyncio
async def test_shared_phone_with_same_suffix_is_ambiguous(redis_url: str) -> None:
    """Two people on one phone with the same last six characters: not verified, not a guess."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        store = PersonStore(r, KEYS)
        original = SAMPLE_ID_NUMBERS[SAMPLE_CALLER]
        twin = "110101" + original[6:]  # same tail, other region: another person
        fields = await r.hgetall(KEYS.person(original))
        await r.hset(KEYS.person(twin), mapping={**fields, "id_number": twin, "name": "林晓明"})
        await r.sadd(KEYS.person_by_phone(SAMPLE_CALLER), twin)

        assert len(await store.find_by_phone(SAMPLE_CALLER)) == 2
        assert await store.verify_by_id_suffix(SAMPLE_CALLER, original[-6:]) is None
