"""The sample data set: well-formed, relative to `today`, and idempotent to load."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from redis.asyncio import Redis

from gateway.domain import CHINA_TZ
from gateway.domain.bookings import BookingCancellation, BookingStatus, BookingStore
from gateway.domain.people import is_valid_id_number
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_ID_NUMBERS,
    load_sample,
    sample_data,
)
from gateway.privacy import normalise_cn_mobile
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client

TODAY = date(2026, 11, 23)
KEYS = Keys()


async def _dump(r: Redis) -> dict[str, Any]:
    """Every key with its type and whole value, for comparing database states."""
    state: dict[str, Any] = {}
    for key in await r.keys("*"):
        kind = await r.type(key)
        if kind == "hash":
            value: Any = await r.hgetall(key)
        elif kind == "set":
            value = sorted(await r.smembers(key))
        elif kind == "list":
            value = await r.lrange(key, 0, -1)
        elif kind == "string":
            value = await r.get(key)
        else:
            value = await r.dump(key)
        state[key] = (kind, value)
    return state


def test_sample_records_are_well_formed() -> None:
    """Valid ID check characters, mobile numbers, dated booking numbers, 9 and 12 points."""
    data = sample_data(TODAY)
    assert len(data.people) == 6
    for person in data.people:
        assert is_valid_id_number(person.id_number.digits)
        assert normalise_cn_mobile(person.phone.digits) == person.phone.digits
    assert sorted(p.points for p in data.people if p.has_licence) == [3, 9, 12]
    assert any(p.id_number.digits.endswith("X") for p in data.people)
    for booking in data.bookings:
        assert booking.booking_no.startswith(f"{booking.exam_date:%Y%m%d}")
        assert len(booking.booking_no) == 11
    assert len({b.booking_no for b in data.bookings}) == len(data.bookings)
    future = [p for p in data.plans if p.exam_date > TODAY]
    assert sorted((p.exam_date - TODAY).days for p in future) == [3, 7, 10]
    start_of_today = datetime.combine(TODAY, datetime.min.time(), CHINA_TZ)
    assert sum(p.cancel_deadline < start_of_today for p in future) == 1
    assert [v.inspection_overdue(TODAY) for v in data.vehicles].count(True) == 1


def test_sample_follows_today() -> None:
    """Another `today` gives the same cases on other dates."""
    later = sample_data(TODAY + timedelta(days=40))
    assert [b.exam_date - timedelta(days=40) for b in later.bookings] == [
        b.exam_date for b in sample_data(TODAY).bookings
    ]


@on_asyncio
async def test_loading_twice_gives_the_same_state(redis_url: str) -> None:
    """Loading the sample a second time changes nothing."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        first = await _dump(r)
        again = await load_sample(r, KEYS, today=TODAY)
        assert again == summary
        assert await _dump(r) == first
        assert summary.people == 6 and summary.bookings == 6 and summary.plans == 4


@on_asyncio
async def test_loading_again_undoes_a_demo_cancellation(redis_url: str) -> None:
    """After a cancellation, reloading restores the booking, the seat and the history."""
    async with redis_client(redis_url) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        before = await _dump(r)
        await r.set(KEYS.notify_stream, "x")  # leave the cancellation unnotified, too
        await BookingCancellation(r, KEYS).cancel(
            summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER,
            now=datetime(2026, 11, 23, 9, 0, tzinfo=CHINA_TZ),
        )
        await r.delete(KEYS.notify_stream, KEYS.events_stream)
        assert await _dump(r) != before

        await load_sample(r, KEYS, today=TODAY)

        assert await _dump(r) == before
        booking = await BookingStore(r, KEYS).get(summary.cancellable_booking)
        assert booking is not None and booking.status is BookingStatus.BOOKED


@on_asyncio
async def test_sample_keys_follow_the_schema(redis_url: str) -> None:
    """Keys are under the prefix, ID numbers name only person keys, and every booking,
    history and plan key carries exactly one hash tag."""
    async with redis_client(redis_url) as r:
        await load_sample(r, KEYS, today=TODAY)
        keys = await r.keys("*")
        assert keys and all(k.startswith(KEYS.prefix) for k in keys)
        id_keyed = {k for k in keys if any(i in k for i in SAMPLE_ID_NUMBERS.values())}
        assert {k.split(":")[1] for k in id_keyed} == {"person", "person-bookings", "person-vehicles"}
        assert all(k.count("{") == 1 for k in keys if k.split(":")[1] in {"booking", "booking-history", "plan"})
