"""Partner ESMEs' messages: accepted as partner_text notifications, and their receipts
owed to the partner are delivered (or kept until the partner can take them)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from gateway.ports import DeliveryReceipt
from gateway.privacy import PhoneNumber
from gateway.push.partners import PartnerGateway, PartnerSubmitRejected
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.push.harness import pipeline


class ReceiverBind:
    """The listener's side of a partner's receiver bind, as the pipeline sees it."""

    def __init__(self) -> None:
        self.up = True
        self.delivered: list[tuple[str, str, str, str]] = []

    def deliver_receipt(self, system_id: str, message_id: str, state: str, error_code: str) -> Deferred[None]:
        if not self.up:
            return fail(ConnectionError("no receiver bind"))
        self.delivered.append((system_id, message_id, state, error_code))
        return succeed(None)


@on_asyncio
async def test_partner_message_is_sent_and_its_receipt_returned(redis_url: str) -> None:
    """A partner's text is sent as the partner wrote it (we do not sign it 【交管12123】),
    and its DELIVRD receipt goes back to the partner."""
    async with pipeline(redis_url) as p:
        bind = ReceiverBind()
        partners = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=bind)
        p.ledger.on_partner_final = partners.on_partner_final
        [message_id] = await wait_deferred(
            partners.submit_from_partner("fjprov", PhoneNumber("13800138000"), "您的业务已办结。", True))
        raw = await p.ledger.raw(message_id)
        assert raw["type"] == "partner_text" and raw["partner"] == "fjprov"
        assert raw["text"] == "您的业务已办结。"
        await p.dispatch_all()
        [carrier_id] = (await p.ledger.raw(message_id))["message_ids"].split()
        await wait_deferred(p.receipts.record_receipt(DeliveryReceipt("cmcc", carrier_id, "DELIVRD", "000")))
        await partners.deliver_pending()
        assert bind.delivered == [("fjprov", message_id, "DELIVRD", "000")]
        assert await p.redis.zcard(p.keys.partner_receipts_pending) == 0


@on_asyncio
async def test_receipt_waits_for_the_partners_receiver_bind(redis_url: str) -> None:
    """Without a receiver bind the owed receipt stays pending and goes on a later round."""
    async with pipeline(redis_url) as p:
        bind = ReceiverBind()
        bind.up = False
        partners = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=bind)
        [message_id] = await wait_deferred(
            partners.submit_from_partner("fjprov", PhoneNumber("13800138000"), "【交管12123】好", True))
        await p.dispatch_all()
        [carrier_id] = (await p.ledger.raw(message_id))["message_ids"].split()
        await wait_deferred(p.receipts.record_receipt(DeliveryReceipt("cmcc", carrier_id, "UNDELIV", "011")))
        assert await partners.deliver_pending() == 0
        assert await p.redis.zcard(p.keys.partner_receipts_pending) == 1
        bind.up = True
        assert await partners.deliver_pending() == 1
        assert bind.delivered == [("fjprov", message_id, "UNDELIV", "011")]


@on_asyncio
async def test_partner_gets_unknown_when_the_carrier_never_sends_a_receipt(redis_url: str) -> None:
    """The carrier's receipt never comes: after the receipt timeout the partner is told
    UNKNOWN instead of waiting for ever."""
    async with pipeline(redis_url, receipt_timeout_seconds=3600) as p:
        bind = ReceiverBind()
        partners = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=bind)
        [message_id] = await wait_deferred(
            partners.submit_from_partner("fjprov", PhoneNumber("13800138000"), "好", True))
        await p.dispatch_all()
        assert await partners.deliver_pending() == 0
        p.clock.advance(3601)
        assert await p.ledger.close_overdue_receipts(now=p.clock.now) == (1, 1)
        assert await partners.deliver_pending() == 1
        assert bind.delivered == [("fjprov", message_id, "UNKNOWN", "000")]


@on_asyncio
async def test_partner_without_registered_delivery_is_owed_nothing(redis_url: str) -> None:
    """registered_delivery=0: no receipt is queued for the partner."""
    async with pipeline(redis_url) as p:
        partners = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=ReceiverBind())
        [message_id] = await wait_deferred(
            partners.submit_from_partner("fjprov", PhoneNumber("13800138000"), "好", False))
        await p.dispatch_all()
        [carrier_id] = (await p.ledger.raw(message_id))["message_ids"].split()
        await wait_deferred(p.receipts.record_receipt(DeliveryReceipt("cmcc", carrier_id, "DELIVRD", "000")))
        assert await p.redis.zcard(p.keys.partner_receipts_pending) == 0


@on_asyncio
async def test_partner_submit_to_a_bad_number_is_refused(redis_url: str) -> None:
    """A destination that is not a Chinese mobile fails the submit with ESME_RINVDSTADR."""
    async with pipeline(redis_url) as p:
        partners = PartnerGateway(p.intake, p.ledger, p.clock)
        with pytest.raises(PartnerSubmitRejected) as info:
            await wait_deferred(partners.submit_from_partner("fjprov", PhoneNumber("12345"), "好", True))
        assert info.value.status == "ESME_RINVDSTADR"
        assert await p.redis.zcard(p.keys.partner_receipts_pending) == 0


@on_asyncio
async def test_partner_text_is_held_in_quiet_hours(redis_url: str) -> None:
    """A partner's text accepted at 23:00 China time waits for the end of quiet hours."""
    import datetime as dt

    from tests.push.harness import POLICY

    night = dt.datetime(2026, 3, 2, 23, 0, tzinfo=POLICY.tz).timestamp()
    async with pipeline(redis_url, now=night) as p:
        partners = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=ReceiverBind())
        [message_id] = await wait_deferred(
            partners.submit_from_partner("fjprov", PhoneNumber("13800138000"), "【厦门驾培】周六练车", False))
        raw = await p.ledger.raw(message_id)
        assert raw["state"] == "scheduled"
        assert float(raw["due_at"]) == dt.datetime(2026, 3, 3, 8, 0, tzinfo=POLICY.tz).timestamp()
