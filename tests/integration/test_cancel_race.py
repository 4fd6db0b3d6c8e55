"""SMS and voice cancelling the same booking at the same moment cancel it once."""

from __future__ import annotations

import asyncio
import json
import re

from twisted.internet import reactor

from gateway.config import MoConfig
from gateway.domain.bookings import BookingStatus, BookingStore, ExamPlanStore
from gateway.domain.sample import SAMPLE_CALLER
from gateway.ports import MobileOriginated
from gateway.privacy import PhoneNumber
from gateway.push.mo import MoService
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.ivr.test_fastagi import KEYS, fastagi
from tests.peers.fastagi_client import CallerInput


async def reply_texts(redis, phone: str) -> list[str]:
    entries = await redis.xrange(KEYS.notify_stream)
    return [json.loads(f["params"])["text"] for _, f in entries if f.get("type") == "mo_reply" and f.get("to") == phone]


@on_asyncio
async def test_sms_confirmation_and_voice_cancellation_at_once_cancel_once(redis_url: str) -> None:
    """The citizen confirms an SMS cancellation while cancelling the same booking on the
    phone: the booking is cancelled once, one seat goes back, one confirmation SMS."""
    async with fastagi(redis_url) as harness:
        redis, booking_no = harness.redis, harness.summary.cancellable_booking
        booking = await BookingStore(redis, KEYS).get(booking_no)
        assert booking is not None and booking.status is BookingStatus.BOOKED
        plans = ExamPlanStore(redis, KEYS)
        seats_before = (await plans.get(booking.plan_id)).seats_left

        mo = MoService(redis, KEYS, MoConfig(), reactor)

        def texted(text: str) -> MobileOriginated:
            return MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", text, reactor.seconds())

        await wait_deferred(mo.record_mo(texted(f"QXYY {booking_no}")))
        await mo.answer_waiting()
        code = re.search(r"(?<!\d)\d{6}(?!\d)", (await reply_texts(redis, SAMPLE_CALLER))[-1])
        assert code is not None, "the first reply carries the confirmation code"

        await wait_deferred(mo.record_mo(texted(code.group())))
        suffix = booking.id_number.digits[-6:].replace("X", "*")  # the second factor
        call = harness.call(callerid=SAMPLE_CALLER, inputs=[CallerInput("2"), CallerInput(booking_no + "#"),
                                                             CallerInput(suffix), CallerInput("1"), CallerInput("#")])
        await asyncio.gather(mo.answer_waiting(), call)

        after = await BookingStore(redis, KEYS).get(booking_no)
        assert after is not None and after.status is BookingStatus.CANCELLED
        assert (await plans.get(booking.plan_id)).seats_left == seats_before + 1
        events = [f for _, f in await redis.xrange(KEYS.events_stream) if f.get("type") == "booking.cancelled"]
        assert len(events) == 1
        confirmations = [f for _, f in await redis.xrange(KEYS.notify_stream)
                         if f.get("id") == f"booking-cancelled:{booking_no}"]
        assert len(confirmations) == 1
        assert after.cancelled_via in ("sms", "voice")
