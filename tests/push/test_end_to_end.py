"""End to end over real sockets: the PushService with the real carrier link (SMPP over
TCP) against the carrier simulator, and a real redis-server.  A notification XADDed to
the intake stream must come back as delivered by the simulator's receipt.

Waiting is on the events stream (XREAD BLOCK), never on sleeps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater

from gateway import metrics
from gateway.config import CarrierConfig, PushConfig, QuietHours, Secret
from gateway.ports import DeliveryReceipt, MobileOriginated
from gateway.push.render import load_templates
from gateway.push.service import PushService
from gateway.smpp.link import CarrierLink
from gateway.smpp.simulator import CarrierSimulator, SimulatorOptions
from gateway.store.bridge import wait_deferred
from gateway.store.keys import Keys
from gateway.store.service import SOCKET_TIMEOUT_SECONDS
from tests.aio import on_asyncio
from tests.push.harness import READ_BLOCK_LIMIT_MS, TEMPLATES_FILE


class _Inbound:
    """The link's InboundSink: receipts to the pipeline; no MOs expected here."""

    def __init__(self) -> None:
        self.service: PushService | None = None

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        assert self.service is not None
        return self.service.record_receipt(receipt)

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        return succeed(None)


@dataclass
class Gateway:
    redis: Redis
    keys: Keys
    service: PushService
    simulator: CarrierSimulator
    link: CarrierLink
    _last_event: str = "0-0"

    async def submit(self, notification_id: str, type_name: str, to: str, params: dict[str, str],
                     **extra: str) -> None:
        await self.redis.xadd(self.keys.notify_stream, {
            "id": notification_id, "type": type_name, "to": to,
            "params": json.dumps(params, ensure_ascii=False), **extra})

    async def wait_for(self, notification_id: str, states: set[str], timeout_seconds: float = 10.0) -> str:
        """Block on the events stream until the notification reaches one of `states`."""
        deadline = reactor.seconds() + timeout_seconds
        while reactor.seconds() < deadline:
            response = await self.redis.xread({self.keys.events_stream: self._last_event}, count=100,
                                              block=_block_ms(deadline))
            for _, entries in response or []:
                for entry_id, fields in entries:
                    self._last_event = entry_id
                    if fields.get("id") == notification_id and fields["type"].split(".")[1] in states:
                        return fields["type"].split(".")[1]
        raise AssertionError(f"{notification_id} did not reach {states} in {timeout_seconds}s")

    async def wait_for_all(self, notification_ids: set[str], states: set[str],
                           timeout_seconds: float = 10.0) -> dict[str, str]:
        """As `wait_for`, for several notifications: the state each reached."""
        reached: dict[str, str] = {}
        deadline = reactor.seconds() + timeout_seconds
        while reactor.seconds() < deadline and len(reached) < len(notification_ids):
            response = await self.redis.xread({self.keys.events_stream: self._last_event}, count=100,
                                              block=_block_ms(deadline))
            for _, entries in response or []:
                for entry_id, fields in entries:
                    self._last_event = entry_id
                    state = fields["type"].split(".")[1]
                    if fields.get("id") in notification_ids and state in states:
                        reached.setdefault(fields["id"], state)
        if len(reached) < len(notification_ids):
            raise AssertionError(f"{sorted(notification_ids - set(reached))} did not reach {states}")
        return reached


NO_QUIET_HOURS = PushConfig(quiet_hours=QuietHours(start="00:00", end="00:00"))


def _block_ms(deadline: float) -> int:
    """How long one XREAD BLOCK may wait: until `deadline`, but at most
    READ_BLOCK_LIMIT_MS, so that the read always ends before the client's socket_timeout
    (redis-py 8 defaults it to 5 s: a longer BLOCK is a TimeoutError, not an empty reply)."""
    return max(1, min(READ_BLOCK_LIMIT_MS, int((deadline - reactor.seconds()) * 1000)))


@asynccontextmanager
async def gateway(redis_url: str, quiet_hours: QuietHours | None = None, early_receipts_max: int | None = None,
                  receipt_parts: str = "every", **simulator_options: Any) -> AsyncIterator[Gateway]:
    options = {"receipt_delay_seconds": 0.0, **simulator_options}
    simulator = CarrierSimulator(SimulatorOptions(host="127.0.0.1", port=0,
                                                  credentials={"gw12123cm": "cmpass"}, **options), reactor)
    simulator.startService()
    carrier = CarrierConfig(name="cmcc", host="127.0.0.1", port=simulator.port_number, system_id="gw12123cm",
                            password=Secret("cmpass"), prefixes=("134", "135", "136", "137", "138", "139"),
                            window=50, tps_limit=1000.0, receipt_parts=receipt_parts)
    inbound = _Inbound()
    link = CarrierLink(carrier, inbound, reactor, jitter=lambda: 0.0)
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_SECONDS)
    keys = Keys()
    # The real clock: quiet hours (22:00-08:00 Shanghai, i.e. 14:00-00:00 UTC) would hold
    # the normal-lane reminders until morning, so a run in the afternoon (UTC) failed.
    config = NO_QUIET_HOURS if quiet_hours is None else PushConfig(quiet_hours=quiet_hours)
    if early_receipts_max is not None:
        config = replace(config, early_receipts_max=early_receipts_max)
    service = PushService(redis, keys, config, load_templates(TEMPLATES_FILE), [link], reactor,
                          drain_timeout_seconds=5.0)
    inbound.service = service
    link.startService()
    await wait_deferred(link.when_bound())
    service.startService()
    try:
        yield Gateway(redis, keys, service, simulator, link)
    finally:
        await wait_deferred(service.stopService())
        await wait_deferred(link.stopService())
        await wait_deferred(simulator.stopService())
        await redis.aclose()


# A reply over 70 characters: two UCS2 parts, never held by quiet hours.
LONG_REPLY = {"text": "您的考试预约：" + "科目二，集美灌口考场。" * 8}


@on_asyncio
async def test_stream_entry_is_delivered_over_smpp(redis_url: str) -> None:
    """XADD a verification code: the simulator receives its text and its receipt makes it delivered."""
    async with gateway(redis_url) as gw:
        await gw.submit("e2e-1", "verification_code", "+8613800138000", {"code": "864201", "minutes": "5"})
        assert await gw.wait_for("e2e-1", {"delivered", "undeliverable", "failed"}) == "delivered"
        [message] = gw.simulator.received
        assert message.destination == "13800138000"
        assert message.text == "【交管12123】您的验证码为864201，5分钟内有效。请勿将验证码告知他人。"
        view = await gw.service.ledger.get("e2e-1")
        assert view is not None and view["carrier"] == "cmcc" and view["parts"] == 1
        assert view["part_states"] == ["DELIVRD"]


@on_asyncio
async def test_two_part_chinese_message_is_delivered_whole(redis_url: str) -> None:
    """A Chinese reminder over 70 characters goes as two UCS2 parts and is delivered when both are."""
    async with gateway(redis_url) as gw:
        await gw.submit("e2e-2", "mo_reply", "13912345678", LONG_REPLY)
        assert await gw.wait_for("e2e-2", {"delivered", "undeliverable", "failed"}) == "delivered"
        raw = await gw.service.ledger.raw("e2e-2")
        assert raw["parts"] == "2" and len(raw["message_ids"].split()) == 2
        assert raw["p0"] == raw["p1"] == "DELIVRD"
        [message] = gw.simulator.received
        assert message.text == raw["text"] and len(raw["text"]) > 70


@on_asyncio
async def test_long_messages_asking_on_the_last_part_only_over_smpp(redis_url: str) -> None:
    """carriers[].receipt_parts last: of a two-part message only the last part asks
    (registered_delivery 1 on it, 0 on the first), the SMSC sends that part's receipt
    alone, and it decides: delivered, or undeliverable for the number the simulator fails."""
    async with gateway(redis_url, receipt_parts="last", outcome_overrides={"13800138001": "UNDELIV"}) as gw:
        await gw.submit("last-ok", "mo_reply", "13800138000", LONG_REPLY)
        await gw.submit("last-bad", "mo_reply", "13800138001", LONG_REPLY)
        expected = {"last-ok": "delivered", "last-bad": "undeliverable"}
        assert await gw.wait_for_all(set(expected), {"delivered", "undeliverable", "unconfirmed"}) == expected
        assert gw.simulator.counters.receipts_sent == 2  # one per message
        raw = await gw.service.ledger.raw("last-ok")
        assert raw["parts"] == "2" and raw["receipt_parts"] == "1" and raw["p1"] == "DELIVRD" and "p0" not in raw


@on_asyncio
async def test_receipt_before_submit_response_over_smpp(redis_url: str) -> None:
    """The simulator sends the receipt before the submit_sm_resp; the notification still ends delivered."""
    parked = metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_early_total", {"carrier": "cmcc"}) or 0.0
    async with gateway(redis_url, receipt_before_response=True) as gw:
        for n in range(5):
            await gw.submit(f"early-{n}", "mo_reply", f"1380013800{n}", LONG_REPLY)
        for n in range(5):
            assert await gw.wait_for(f"early-{n}", {"delivered", "undeliverable", "failed"}) == "delivered"
    # Every part's receipt came first and was parked, then applied with the message ids.
    assert metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_early_total", {"carrier": "cmcc"}) == parked + 10


@on_asyncio
async def test_early_receipts_with_small_decimal_ids_each_reach_their_own_message(redis_url: str) -> None:
    """An SMSC that counts its ids from 1 in decimal and sends each receipt before the
    submit_sm_resp: every receipt is applied to the message sent to the number it names.
    Decimal ids are valid hex too (40 reads as 0x28 = "28"), and before 2026-12-05 12 of
    these 60 receipts were taken by an earlier message whose id matched that reading, their
    own messages left waiting."""
    undeliverable = {f"137000000{n:02d}": "UNDELIV" for n in range(0, 60, 2)}
    async with gateway(redis_url, receipt_before_response=True, message_id_start=1,
                       outcome_overrides=undeliverable) as gw:
        for n in range(60):
            await gw.submit(f"small-{n}", "verification_code", f"137000000{n:02d}", {"code": "1", "minutes": "5"})
        expected = {f"small-{n}": "undeliverable" if n % 2 == 0 else "delivered" for n in range(60)}
        assert await gw.wait_for_all(set(expected), {"delivered", "undeliverable"}) == expected


@on_asyncio
async def test_another_accounts_receipts_fill_no_more_than_the_cap_over_smpp(redis_url: str) -> None:
    """An SMSC that sends every receipt before its submit_sm_resp, and with each two for
    message ids it never gave this account (another account's, misrouted): no more than
    push.early_receipts_max wait in Redis, the oldest dropped and counted, and every
    message of ours is still delivered: its own receipt, parked last, keeps its place
    until its submit is recorded.  Before 2026-12-05 each stray stayed a day (40 of 40
    here, at a carrier's rate millions); refusing new ones at the cap instead would have
    dropped our own receipts once it was full."""
    from gateway.smpp.simulator import STRAY_RECEIPT_FIRST_ID

    unparked = metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_unparked_total", {"carrier": "cmcc"})
    async with gateway(redis_url, early_receipts_max=5, stray_receipts=2, receipt_before_response=True) as gw:
        for n in range(20):
            await gw.submit(f"own-{n}", "verification_code", f"1370000{n:04d}", {"code": "1", "minutes": "5"})
            assert await gw.wait_for(f"own-{n}", {"delivered", "undeliverable"}) == "delivered"
        counters = gw.simulator.counters
        deadline = reactor.seconds() + 10  # the strays of the last receipt may still be on the way
        while counters.receipts_acked < 60 and reactor.seconds() < deadline:
            await wait_deferred(deferLater(reactor, 0.05, lambda: None))
        assert counters.receipts_sent == counters.receipts_acked == 60 and counters.receipts_failed == 0
        # every stray either waits (at most the cap) or was dropped and counted
        strays = [str(STRAY_RECEIPT_FIRST_ID + n) for n in range(40)]
        waiting = [m for m in strays if await gw.redis.exists(gw.keys.early_receipt("cmcc", m))]
        # (the last real receipt, applied, left its place empty: 4 or 5 wait)
        assert 4 <= len(waiting) <= 5 and await gw.redis.zcard(gw.keys.early_receipts) == len(waiting)
        assert metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_unparked_total",
                                                 {"carrier": "cmcc"}) == (unparked or 0.0) + 40 - len(waiting)


@on_asyncio
async def test_another_accounts_receipts_never_decide_our_messages_over_smpp(redis_url: str) -> None:
    """The SMSC's accounts share one id space: with each receipt come two UNDELIV for
    another account's messages, whose ids this account gets later (the strays count up
    from the first id it gives).  They are parked (no message of ours has the id yet), and
    when ours get those ids the parked receipts name another number: every message of
    ours ends as its own receipt says, delivered.  Before 2026-12-05, 18 of these 20
    ended undeliverable."""
    from gateway.smpp.simulator import STRAY_RECEIPT_FIRST_ID

    async with gateway(redis_url, stray_receipts=2, message_id_start=STRAY_RECEIPT_FIRST_ID) as gw:
        for n in range(20):  # one at a time: message n's strays take the ids of messages 2n and 2n+1
            await gw.submit(f"own-{n}", "verification_code", f"1370000{n:04d}", {"code": "1", "minutes": "5"})
            assert await gw.wait_for(f"own-{n}", {"delivered", "undeliverable"}) == "delivered"
        raw = await gw.service.ledger.raw("own-19")
        assert raw["message_ids"] == str(STRAY_RECEIPT_FIRST_ID + 19)
        # the stray for that id waits on, under its number (13999999999)
        assert await gw.redis.get(gw.keys.early_receipt("cmcc", raw["message_ids"])) == "UNDELIV 003 99999999"


@on_asyncio
async def test_receipts_with_masked_numbers_over_smpp(redis_url: str) -> None:
    """An SMSC that masks the handset in its receipts (source_addr 86138****0000): the
    receipts are matched by their ids and every message ends as they say.  Before
    2026-12-05 the digits left were read as another number and every receipt refused."""
    async with gateway(redis_url, mask_receipt_numbers=True, outcome_overrides={"13700000001": "UNDELIV"}) as gw:
        for n in range(3):
            await gw.submit(f"masked-{n}", "verification_code", f"1370000000{n}", {"code": "1", "minutes": "5"})
        expected = {"masked-0": "delivered", "masked-1": "undeliverable", "masked-2": "delivered"}
        assert await gw.wait_for_all(set(expected), {"delivered", "undeliverable"}) == expected


@on_asyncio
async def test_duplicate_and_failed_receipts_over_smpp(redis_url: str) -> None:
    """Receipts sent twice give one delivered event; UNDELIV for a number ends undeliverable."""
    async with gateway(redis_url, duplicate_receipts=True,
                       outcome_overrides={"13700000001": "UNDELIV"}) as gw:
        await gw.submit("ok", "verification_code", "13700000000", {"code": "1", "minutes": "5"})
        await gw.submit("bad", "verification_code", "13700000001", {"code": "1", "minutes": "5"})
        assert await gw.wait_for("ok", {"delivered"}) == "delivered"
        assert await gw.wait_for("bad", {"undeliverable"}) == "undeliverable"
        # Let the duplicates arrive: the simulator has sent both receipts twice by the time
        # a third message's receipt comes back (one session, in order).
        await gw.submit("last", "verification_code", "13700000002", {"code": "1", "minutes": "5"})
        await gw.wait_for("last", {"delivered"})
        events = [fields for _, fields in await gw.redis.xrange(gw.keys.events_stream) if fields["id"] == "ok"]
        assert [e["type"] for e in events].count("notification.delivered") == 1


def _china(seconds: float) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.timezone(dt.timedelta(hours=8)))


def _quiet_now() -> QuietHours:
    """Quiet hours around the present moment (China time), whatever the hour."""
    import datetime as dt

    now = _china(reactor.seconds())
    return QuietHours(start=(now - dt.timedelta(hours=1)).strftime("%H:%M"),
                      end=(now + dt.timedelta(hours=2)).strftime("%H:%M"))


def _booking(exam_at: Any, name: str) -> dict[str, str]:
    return {"name": name, "subject": "科目二", "date": exam_at.date().isoformat(),
            "session": exam_at.strftime("%H:%M"), "site": "集美灌口考场", "booking_no": "20261209001",
            "cancel_deadline": (exam_at.replace(hour=17, minute=0) - _days(3)).strftime("%Y-%m-%d %H:%M")}


def _days(n: int) -> Any:
    import datetime as dt

    return dt.timedelta(days=n)


async def _final_state(gw: Gateway, notification_id: str, timeout_seconds: float = 15.0) -> str:
    """Poll the ledger (not the events stream, which wait_for consumes) until final."""
    import asyncio

    deadline = reactor.seconds() + timeout_seconds
    while reactor.seconds() < deadline:
        state = (await gw.service.ledger.raw(notification_id)).get("state", "")
        if state in ("delivered", "undeliverable", "failed", "expired", "rejected"):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"{notification_id} not final after {timeout_seconds}s")


@on_asyncio
async def test_late_booking_confirmation_goes_out_at_once_in_quiet_hours(redis_url: str) -> None:
    """Inside quiet hours, a confirmation for an exam in 5 hours is not rejected nor held:
    the simulator receives it at once, its events flag it late, it is channel auto, and
    when the SMS is undeliverable it is handed to the voice channel.  A timely batch
    confirmation for an exam a week away waits for the morning."""
    import datetime as dt

    now = _china(reactor.seconds())
    soon = (now + dt.timedelta(hours=5)).replace(second=0, microsecond=0)
    week = (now + dt.timedelta(days=7)).replace(hour=8, minute=30, second=0, microsecond=0)
    async with gateway(redis_url, quiet_hours=_quiet_now(), outcome_overrides={"13900000002": "UNDELIV"}) as gw:
        await gw.submit("late-1", "exam_booking_confirmed", "13900000001", _booking(soon, "林晓燕"))
        await gw.submit("late-2", "exam_booking_confirmed", "13900000002", _booking(soon, "黄伟"))
        await gw.submit("timely", "exam_booking_confirmed", "13900000003", _booking(week, "王志强"))
        assert await _final_state(gw, "late-1") == "delivered"
        assert await _final_state(gw, "late-2") == "undeliverable"
        assert (await gw.service.ledger.raw("timely"))["state"] == "scheduled"
        texts = {m.destination: m.text for m in gw.simulator.received}
        assert set(texts) == {"13900000001", "13900000002"}
        assert f"{soon.year}年{soon.month}月{soon.day}日" in texts["13900000001"]
        assert "已不能取消" in texts["13900000001"] or "网上取消已截止" in texts["13900000001"]
        raw = await gw.service.ledger.raw("late-1")
        assert raw["late"] == "1" and raw["channel"] == "auto" and raw["priority"] == "high"
        flagged = [f for _, f in await gw.redis.xrange(gw.keys.events_stream) if f["type"] == "notification.late"]
        assert {f["id"] for f in flagged} == {"late-1", "late-2"}
        assert all(float(f["lead_hours"]) <= 5.0 for f in flagged)
        voice = [f for _, f in await gw.redis.xrange(gw.keys.voice_requests)]
        assert [f["id"] for f in voice] == ["late-2"]
        assert voice[0]["text"].startswith("黄伟您好")


@on_asyncio
async def test_household_notice_goes_out_under_its_own_sender(redis_url: str) -> None:
    """id_card_ready is submitted with the household service's sender code and signature;
    a traffic notice keeps the link's source, 12123."""
    async with gateway(redis_url) as gw:
        await gw.submit("id-1", "id_card_ready", "13800000001", {"name": "张丽华", "office": "户政大厅"})
        assert await gw.wait_for("id-1", {"delivered", "undeliverable", "failed"}) == "delivered"
        await gw.submit("code-1", "verification_code", "13800000002", {"code": "1", "minutes": "5"})
        assert await gw.wait_for("code-1", {"delivered", "undeliverable", "failed"}) == "delivered"
        sent = {m.destination: m for m in gw.simulator.received}
        assert sent["13800000001"].source == "12110" and sent["13800000001"].text.startswith("【公安户政】")
        assert sent["13800000002"].source == "12123"
