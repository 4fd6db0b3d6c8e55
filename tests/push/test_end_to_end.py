"""End to end over real sockets: the PushService with the real carrier link (SMPP over
TCP) against the carrier simulator, and a real redis-server.  A notification XADDed to
the intake stream must come back as delivered by the simulator's receipt.

Waiting is on the events stream (XREAD BLOCK), never on sleeps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

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


NO_QUIET_HOURS = PushConfig(quiet_hours=QuietHours(start="00:00", end="00:00"))


def _block_ms(deadline: float) -> int:
    """How long one XREAD BLOCK may wait: until `deadline`, but at most
    READ_BLOCK_LIMIT_MS, so that the read always ends before the client's socket_timeout
    (redis-py 8 defaults it to 5 s: a longer BLOCK is a TimeoutError, not an empty reply)."""
    return max(1, min(READ_BLOCK_LIMIT_MS, int((deadline - reactor.seconds()) * 1000)))


@asynccontextmanager
async def gateway(redis_url: str, **simulator_options: Any) -> AsyncIterator[Gateway]:
    options = {"receipt_delay_seconds": 0.0, **simulator_options}
    simulator = CarrierSimulator(SimulatorOptions(host="127.0.0.1", port=0,
                                                  credentials={"gw12123cm": "cmpass"}, **options), reactor)
    simulator.startService()
    carrier = CarrierConfig(name="cmcc", host="127.0.0.1", port=simulator.port_number, system_id="gw12123cm",
                            password=Secret("cmpass"), prefixes=("134", "135", "136", "137", "138", "139"),
                            window=50, tps_limit=1000.0)
    inbound = _Inbound()
    link = CarrierLink(carrier, inbound, reactor, jitter=lambda: 0.0)
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_SECONDS)
    keys = Keys()
    # The real clock: quiet hours (22:00-08:00 Shanghai, i.e. 14:00-00:00 UTC) would hold
    # the normal-lane reminders until morning, so a run in the afternoon (UTC) failed.
    service = PushService(redis, keys, NO_QUIET_HOURS, load_templates(TEMPLATES_FILE), [link], reactor,
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


POINTS = {"name": "张三", "date": "2026-03-01", "points": "9"}


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
        await gw.submit("e2e-2", "points_reached_9", "13912345678", POINTS)
        assert await gw.wait_for("e2e-2", {"delivered", "undeliverable", "failed"}) == "delivered"
        raw = await gw.service.ledger.raw("e2e-2")
        assert raw["parts"] == "2" and len(raw["message_ids"].split()) == 2
        assert raw["p0"] == raw["p1"] == "DELIVRD"
        [message] = gw.simulator.received
        assert message.text == raw["text"] and len(raw["text"]) > 70


@on_asyncio
async def test_receipt_before_submit_response_over_smpp(redis_url: str) -> None:
    """The simulator sends the receipt before the submit_sm_resp; the notification still ends delivered."""
    parked = metrics.REGISTRY.get_sample_value("gateway_push_receipts_early_total") or 0.0
    async with gateway(redis_url, receipt_before_response=True) as gw:
        for n in range(5):
            await gw.submit(f"early-{n}", "points_reached_9", f"1380013800{n}", POINTS)
        for n in range(5):
            assert await gw.wait_for(f"early-{n}", {"delivered", "undeliverable", "failed"}) == "delivered"
    # Every part's receipt came first and was parked, then applied with the message ids.
    assert metrics.REGISTRY.get_sample_value("gateway_push_receipts_early_total") == parked + 10


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

