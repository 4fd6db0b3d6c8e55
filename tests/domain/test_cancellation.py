"""BookingCancellation against a real redis-server: the rules, atomicity, and the SMS hand-off."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import date, datetime, timedelta

import pytest
from redis.asyncio import Redis

from gateway.domain import CHINA_TZ, CorruptRecord
from gateway.domain.bookings import (
    BookingCancellation,
    BookingStatus,
    BookingStore,
    CancellationOutcome,
    cancellation_reply,
)
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_CALLER_AFTER_DEADLINE,
    SAMPLE_CALLER_CANCELLED,
    SampleSummary,
    load_sample,
)
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client

TODAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 10, 30, tzinfo=CHINA_TZ)
KEYS = Keys()


async def _setup(r: Redis) -> tuple[SampleSummary, BookingCancellation, BookingStore]:
    summary = await load_sample(r, KEYS, today=TODAY)
    return summary, BookingCancellation(r, KEYS), BookingStore(r, KEYS)


async def _seats_left(r: Redis, plan_id: str) -> int:
    return int(await r.hget(KEYS.exam_plan(plan_id), "seats_left"))


@on_asyncio
async def test_cancel_releases_seat_records_history_and_queues_sms(redis_url: str) -> None:
    """A booked exam before its deadline is cancelled: seat +1, history entry, event and SMS queued."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        before = await store.get(summary.cancellable_booking)
        assert before is not None
        seats_before = await _seats_left(r, before.plan_id)

        result = await cancellation.cancel(
            summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW
        )

        assert result.outcome is CancellationOutcome.CANCELLED
        assert result.notification_enqueued
        assert result.booking is not None and result.booking.status is BookingStatus.CANCELLED
        assert await _seats_left(r, before.plan_id) == seats_before + 1

        stored = await r.hgetall(KEYS.booking(before.plan_id, before.booking_no))
        assert stored["status"] == "cancelled"
        assert stored["cancelled_via"] == "sms"
        assert stored["cancelled_at"] == str(int(NOW.timestamp()))
        assert stored["notified"] == "1"
        assert "notify_claim_until" not in stored
        assert await r.smembers(KEYS.cancellations_unnotified(before.plan_id)) == set()

        history = await store.history(summary.cancellable_booking)
        assert [(h.event, h.channel) for h in history] == [("booked", "web"), ("cancelled", "sms")]
        assert history[-1].at == NOW
        assert history[-1].actor == "138****8000"

        [(_, event)] = await r.xrange(KEYS.events_stream)
        assert event == {
            "type": "booking.cancelled",
            "booking": summary.cancellable_booking,
            "plan": before.plan_id,
            "channel": "sms",
            "at": "2026-11-23T10:30:00+08:00",
        }
        [(_, sms)] = await r.xrange(KEYS.notify_stream)
        assert sms["id"] == f"booking-cancelled:{summary.cancellable_booking}"
        assert sms["type"] == "exam_booking_cancelled"
        assert sms["to"] == SAMPLE_CALLER
        assert sms["priority"] == "high" and sms["channel"] == "sms"
        assert json.loads(sms["params"]) == {
            "name": "林晓燕",
            "booking_no": summary.cancellable_booking,
            "subject": "科目二",
            "site": "集美灌口考场",
            "date": "2026年11月30日",
            "session": "上午",
        }


@on_asyncio
async def test_deadline_passed_changes_nothing(redis_url: str) -> None:
    """After the booking window closed, the answer is DEADLINE_PASSED and nothing is written."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.after_deadline_booking)
        assert booking is not None
        seats = await _seats_left(r, booking.plan_id)

        result = await cancellation.cancel(
            summary.after_deadline_booking, channel="voice",
            actor_phone=SAMPLE_CALLER_AFTER_DEADLINE, now=NOW,
        )

        assert result.outcome is CancellationOutcome.DEADLINE_PASSED
        assert result.booking is not None and result.booking.status is BookingStatus.BOOKED
        assert not result.notification_enqueued
        assert await _seats_left(r, booking.plan_id) == seats
        assert len(await store.history(summary.after_deadline_booking)) == 1
        assert await r.exists(KEYS.events_stream, KEYS.notify_stream) == 0
        reply = cancellation_reply(result)
        assert "车管所" in reply and "2026年11月25日" in reply


@on_asyncio
async def test_deadline_is_exclusive(redis_url: str) -> None:
    """A request at the deadline second itself is too late; one second before is in time."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        deadline = booking.cancel_deadline.timestamp()

        late = await cancellation.cancel(
            booking.booking_no, channel="web", actor_phone="", now=deadline
        )
        in_time = await cancellation.cancel(
            booking.booking_no, channel="web", actor_phone="", now=deadline - 1
        )

        assert late.outcome is CancellationOutcome.DEADLINE_PASSED
        assert in_time.outcome is CancellationOutcome.CANCELLED


@on_asyncio
async def test_attended_or_absent_booking_is_not_cancelled(redis_url: str) -> None:
    """A booking that is attended or absent gives NOT_BOOKED and keeps its status."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        # The past plan's deadline is long gone; the status check must come first anyway.
        for number, status in [
            (summary.attended_booking, BookingStatus.ATTENDED),
            (summary.absent_booking, BookingStatus.ABSENT),
        ]:
            result = await cancellation.cancel(
                number, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW
            )
            assert result.outcome is CancellationOutcome.NOT_BOOKED
            stored = await store.get(number)
            assert stored is not None and stored.status is status
        assert await r.exists(KEYS.notify_stream) == 0


@pytest.mark.parametrize("number", ["20991231999", "abc", "2026113000１' OR 1", ""])
@on_asyncio
async def test_unknown_or_malformed_booking_is_not_found(redis_url: str, number: str) -> None:
    """An unknown number, or text that is not a booking number at all, gives NOT_FOUND."""
    async with redis_client(redis_url) as r:
        _, cancellation, _ = await _setup(r)
        result = await cancellation.cancel(number, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        assert result.outcome is CancellationOutcome.NOT_FOUND
        assert result.booking is None
        assert cancellation_reply(result).startswith("未查询到")


@on_asyncio
async def test_second_cancel_is_already_cancelled_and_sends_nothing(redis_url: str) -> None:
    """Cancelling twice: the second answer is ALREADY_CANCELLED, one seat, one SMS."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        seats = await _seats_left(r, booking.plan_id)

        first = await cancellation.cancel(booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        second = await cancellation.cancel(
            booking.booking_no, channel="voice", actor_phone=SAMPLE_CALLER, now=NOW + timedelta(hours=1)
        )

        assert first.outcome is CancellationOutcome.CANCELLED
        assert second.outcome is CancellationOutcome.ALREADY_CANCELLED
        assert not second.notification_enqueued
        assert second.booking is not None and second.booking.cancelled_via == "sms"
        assert await _seats_left(r, booking.plan_id) == seats + 1
        assert await r.xlen(KEYS.notify_stream) == 1
        assert await r.xlen(KEYS.events_stream) == 1


@on_asyncio
async def test_web_cancelled_booking_is_not_notified_by_the_gateway(redis_url: str) -> None:
    """A booking the core system cancelled (no `notified` field) is ALREADY_CANCELLED, no SMS."""
    async with redis_client(redis_url) as r:
        summary, cancellation, _ = await _setup(r)
        result = await cancellation.cancel(
            summary.cancelled_booking, channel="sms", actor_phone=SAMPLE_CALLER_CANCELLED, now=NOW
        )
        assert result.outcome is CancellationOutcome.ALREADY_CANCELLED
        assert not result.notification_enqueued
        assert await r.exists(KEYS.notify_stream) == 0


@on_asyncio
async def test_concurrent_cancels_cancel_once(redis_url: str) -> None:
    """Fifty simultaneous cancels over voice and SMS: one CANCELLED, one seat, one SMS, one event."""
    async with redis_client(redis_url) as r:
        summary, _, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        seats = await _seats_left(r, booking.plan_id)
        # Separate BookingCancellation objects, as the SMS and voice services would have.
        channels = [BookingCancellation(r, KEYS) for _ in range(2)]

        results = await asyncio.gather(
            *(
                channels[i % 2].cancel(
                    booking.booking_no, channel=("voice", "sms")[i % 2],
                    actor_phone=SAMPLE_CALLER, now=NOW,
                )
                for i in range(50)
            )
        )

        outcomes = [r.outcome for r in results]
        assert outcomes.count(CancellationOutcome.CANCELLED) == 1
        assert outcomes.count(CancellationOutcome.ALREADY_CANCELLED) == 49
        assert sum(r.notification_enqueued for r in results) == 1
        assert await _seats_left(r, booking.plan_id) == seats + 1
        assert len(await store.history(booking.booking_no)) == 2
        assert await r.xlen(KEYS.notify_stream) == 1
        assert await r.xlen(KEYS.events_stream) == 1


@on_asyncio
async def test_seats_never_exceed_total(redis_url: str) -> None:
    """A cancellation on a plan whose seats are all free already does not invent a seat."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        plan_key = KEYS.exam_plan(booking.plan_id)
        await r.hset(plan_key, "seats_left", await r.hget(plan_key, "seats_total"))

        result = await cancellation.cancel(booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)

        assert result.outcome is CancellationOutcome.CANCELLED
        assert await r.hget(plan_key, "seats_left") == await r.hget(plan_key, "seats_total")


@on_asyncio
async def test_failed_sms_enqueue_is_finished_by_a_later_cancel(redis_url: str) -> None:
    """If the XADD fails after the script, the booking stays cancelled and a retry after the
    claim lapses queues the SMS exactly once; a retry within the claim does not."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        # Fault: the notify stream key holds a string, so XADD fails with WRONGTYPE.
        await r.set(KEYS.notify_stream, "not a stream")

        first = await cancellation.cancel(booking.booking_no, channel="voice", actor_phone=SAMPLE_CALLER, now=NOW)

        assert first.outcome is CancellationOutcome.CANCELLED
        assert not first.notification_enqueued
        stored = await r.hgetall(KEYS.booking(booking.plan_id, booking.booking_no))
        assert stored["status"] == "cancelled" and stored["notified"] == "0"
        assert await r.smembers(KEYS.cancellations_unnotified(booking.plan_id)) == {booking.booking_no}

        await r.delete(KEYS.notify_stream)
        within_claim = await cancellation.cancel(
            booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW + timedelta(seconds=5)
        )
        assert within_claim.outcome is CancellationOutcome.ALREADY_CANCELLED
        assert not within_claim.notification_enqueued
        assert await r.exists(KEYS.notify_stream) == 0

        after_claim = await cancellation.cancel(
            booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW + timedelta(seconds=31)
        )
        assert after_claim.outcome is CancellationOutcome.ALREADY_CANCELLED
        assert after_claim.notification_enqueued
        [(_, sms)] = await r.xrange(KEYS.notify_stream)
        assert sms["id"] == f"booking-cancelled:{booking.booking_no}"
        # The event carries the original cancellation, not the repair.
        *_, (_, event) = await r.xrange(KEYS.events_stream)
        assert event["channel"] == "voice" and event["at"] == "2026-11-23T10:30:00+08:00"
        assert await r.hget(KEYS.booking(booking.plan_id, booking.booking_no), "notified") == "1"
        assert await r.smembers(KEYS.cancellations_unnotified(booking.plan_id)) == set()


@on_asyncio
async def test_repair_sweep_queues_unnotified_cancellations(redis_url: str) -> None:
    """The repair sweep finds a cancellation whose SMS never got queued and queues it once."""
    async with redis_client(redis_url) as r:
        summary, cancellation, _ = await _setup(r)
        await r.set(KEYS.notify_stream, "not a stream")
        await cancellation.cancel(summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        await r.delete(KEYS.notify_stream)

        assert await cancellation.repair_unnotified(now=NOW + timedelta(seconds=10)) == 0
        assert await cancellation.repair_unnotified(now=NOW + timedelta(seconds=60)) == 1
        assert await cancellation.repair_unnotified(now=NOW + timedelta(seconds=120)) == 0
        assert await r.xlen(KEYS.notify_stream) == 1
        assert not await cancellation.ensure_cancellation_notified(
            summary.cancellable_booking, now=NOW + timedelta(hours=1)
        )


@on_asyncio
async def test_the_repair_at_start_waits_for_the_fleet_clock_to_settle_then_runs_within_an_interval(
        redis_url: str) -> None:
    """The daemon's sweep (gateway/app.py): a starting process does not take over claims
    until its fleet clock has settled (a claim may stand on a clock Redis just stepped
    away from), and then repairs within one interval of the fleet clock, not at the next
    60 s tick."""
    from twisted.internet.task import Clock

    from gateway.app import CancellationRepair
    from gateway.fleet.clock import SYNC_INTERVAL_SECONDS, FleetClock
    from tests.fleet.test_fleet_clock import SHORT_INTERVAL, settled

    async with redis_client(redis_url) as r:
        summary, cancellation, _ = await _setup(r)
        await r.set(KEYS.notify_stream, "not a stream")  # the SMS hand-off fails: cut short
        await cancellation.cancel(summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        await r.delete(KEYS.notify_stream, KEYS.clock_step)
        host = Clock()
        host.advance(time.time())
        fleet = FleetClock(r, KEYS.partition_members, host, step_key=KEYS.clock_step, wall=time.time,
                           interval_seconds=SHORT_INTERVAL)
        repair = CancellationRepair(r, KEYS, fleet)
        repair.startService()  # its first sweep: held, the fleet clock not even measured
        try:
            await settled(fleet, host)
            assert await r.exists(KEYS.notify_stream) == 0
            host.advance(SYNC_INTERVAL_SECONDS - 0.5)  # the held sweep's retry; the next tick is 60 s on
            deadline = time.monotonic() + 10
            while not await r.exists(KEYS.notify_stream):
                assert time.monotonic() < deadline, "not repaired after the fleet clock settled"
                await asyncio.sleep(0.02)
            assert await r.xlen(KEYS.notify_stream) == 1
        finally:
            repair.stopService()


@on_asyncio
async def test_missing_plan_is_a_corrupt_record(redis_url: str) -> None:
    """A booking whose exam plan is gone raises CorruptRecord and is left untouched."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        await r.delete(KEYS.exam_plan(booking.plan_id))

        with pytest.raises(CorruptRecord):
            await cancellation.cancel(booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        assert await r.hget(KEYS.booking(booking.plan_id, booking.booking_no), "status") == "booked"


@on_asyncio
async def test_cancel_accepts_unix_seconds_and_refuses_naive_time(redis_url: str) -> None:
    """`now` may be Unix seconds; a naive datetime is refused before anything is written."""
    async with redis_client(redis_url) as r:
        summary, cancellation, _ = await _setup(r)
        with pytest.raises(ValueError):
            await cancellation.cancel(
                summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER,
                now=NOW.replace(tzinfo=None),
            )
        result = await cancellation.cancel(
            summary.cancellable_booking, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW.timestamp()
        )
        assert result.outcome is CancellationOutcome.CANCELLED


@on_asyncio
async def test_cancel_works_without_decode_responses(redis_url: str) -> None:
    """A client built with decode_responses=False (bytes replies) cancels just the same."""
    async with redis_client(redis_url, decode_responses=False) as r:
        summary = await load_sample(r, KEYS, today=TODAY)
        result = await BookingCancellation(r, KEYS).cancel(
            summary.cancellable_booking, channel="voice", actor_phone=SAMPLE_CALLER, now=NOW
        )
        assert result.outcome is CancellationOutcome.CANCELLED
        assert result.booking is not None and result.booking.name == "林晓燕"
        assert result.booking.cancellation_notified is True


@on_asyncio
async def test_repeated_request_gets_the_same_answer(redis_url: str) -> None:
    """The same request id twice (a replayed MO) answers CANCELLED both times, one seat, one SMS;
    another request id then gets ALREADY_CANCELLED."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        booking = await store.get(summary.cancellable_booking)
        assert booking is not None
        seats = await _seats_left(r, booking.plan_id)

        results = [
            await cancellation.cancel(
                booking.booking_no, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW,
                request_id=request_id,
            )
            for request_id in ("mo-1700000000000-0", "mo-1700000000000-0", "mo-1700000000001-0")
        ]

        assert [r.outcome for r in results] == [
            CancellationOutcome.CANCELLED,
            CancellationOutcome.CANCELLED,
            CancellationOutcome.ALREADY_CANCELLED,
        ]
        assert await _seats_left(r, booking.plan_id) == seats + 1
        assert len(await store.history(booking.booking_no)) == 2
        assert await r.xlen(KEYS.notify_stream) == 1


@on_asyncio
async def test_repair_sweep_forgets_bookings_that_no_longer_owe_an_sms(redis_url: str) -> None:
    """An unnotified entry whose booking was deleted or rebooked meanwhile is dropped, not sent."""
    async with redis_client(redis_url) as r:
        summary, cancellation, store = await _setup(r)
        await r.set(KEYS.notify_stream, "not a stream")
        for number in (summary.cancellable_booking, summary.slot_booking):
            await cancellation.cancel(number, channel="sms", actor_phone=SAMPLE_CALLER, now=NOW)
        await r.delete(KEYS.notify_stream)
        gone = await store.get(summary.cancellable_booking)
        rebooked = await store.get(summary.slot_booking)
        assert gone is not None and rebooked is not None
        await r.delete(KEYS.booking(gone.plan_id, gone.booking_no), KEYS.booking_index(gone.booking_no))
        await r.hset(KEYS.booking(rebooked.plan_id, rebooked.booking_no), "status", "booked")

        assert await cancellation.repair_unnotified(now=NOW + timedelta(minutes=5)) == 0

        assert await r.exists(KEYS.notify_stream) == 0
        for plan_id in (gone.plan_id, rebooked.plan_id):
            assert await r.smembers(KEYS.cancellations_unnotified(plan_id)) == set()
        assert not await r.exists(KEYS.booking(gone.plan_id, gone.booking_no))
