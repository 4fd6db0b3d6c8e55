"""MO handling on a real Redis Cluster (3 masters, 3 replicas) with 16 partitions: citizens'
messages arrive over SMPP (the carrier simulator's deliver_sm to our CarrierLink), go to
the MO stream of the sender's partition, and two MoServices (two gateway processes)
answer them: a query, and the two-step cancel (QXYY, then the code), each answered
once, with the sender's MO keys all in its partition's slot; an MO read by a process
that died is answered by the other after claim_idle_seconds."""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed

from gateway.config import CarrierConfig, MoConfig, Secret
from gateway.domain import from_unix
from gateway.domain.bookings import BookingStore
from gateway.domain.sample import SAMPLE_CALLER, SAMPLE_CALLER_UNICOM, load_sample
from gateway.ports import DeliveryReceipt, MobileOriginated
from gateway.push.mo import MoService
from gateway.smpp.link import CarrierLink
from gateway.smpp.simulator import CarrierSimulator, options_for_carrier
from gateway.store.bridge import wait_deferred
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.push.harness import connect

PARTITIONS = 16
KEYS = Keys(partitions=PARTITIONS)


class MoSink:
    """A carrier link's InboundSink: MOs to the MO service, receipts ignored."""

    def __init__(self, service: MoService) -> None:
        self.service = service

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        return self.service.record_mo(message)

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        return succeed(None)


async def replies(redis: Any, to: str) -> list[str]:
    """The reply texts queued for `to`, from every intake stream (partitions' and shared)."""
    out: list[tuple[str, str]] = []
    for stream in [KEYS.notify_stream, *(part.notify_stream for part in KEYS.all_partitions)]:
        for entry_id, fields in await redis.xrange(stream):
            if fields.get("type") == "mo_reply" and fields.get("to") == to:
                out.append((entry_id, json.loads(fields["params"])["text"]))
    return [text for _, text in sorted(out, key=lambda e: tuple(int(x) for x in e[0].split("-")))]


async def wait_replies(redis: Any, to: str, count: int, seconds: float = 20.0) -> list[str]:
    deadline = reactor.seconds() + seconds
    while len(found := await replies(redis, to)) < count:
        assert reactor.seconds() < deadline, f"{len(found)} replies of {count}: {found}"
        await asyncio.sleep(0.05)
    return found


def carrier() -> CarrierConfig:
    return CarrierConfig(name="cmcc", host="127.0.0.1", port=2775, system_id="gw12123", password=Secret("secret"),
                         prefixes=("138", "139"), window=4, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.2)


@on_asyncio
async def test_query_and_two_step_cancel_over_deliver_sm_are_answered_once_on_the_cluster(
        redis_cluster_url: str) -> None:
    redis = connect(redis_cluster_url)
    now = time.time()
    sample = await load_sample(redis, KEYS, today=from_unix(now).date())
    services = [MoService(redis, KEYS, MoConfig(), reactor, consumer_name=name, block_seconds=0.2)
                for name in ("gw-a", "gw-b")]
    config = carrier()
    simulator = CarrierSimulator(options_for_carrier(config, port=0, receipt_delay_seconds=0.01), reactor)
    simulator.startService()
    link = CarrierLink(CarrierConfig(**{**config.__dict__, "port": simulator.port_number}), MoSink(services[0]),
                       reactor, jitter=lambda: 0.0)
    try:
        for service in services:
            service.startService()
        link.startService()
        await wait_deferred(link.when_bound().addTimeout(10, reactor))
        booking = sample.cancellable_booking

        await wait_deferred(simulator.send_mo(SAMPLE_CALLER, "CXYY").addTimeout(10, reactor))
        [listing] = await wait_replies(redis, SAMPLE_CALLER, 1)
        assert booking in listing and "QXYY" in listing

        await wait_deferred(simulator.send_mo("86" + SAMPLE_CALLER, f"QXYY {booking}").addTimeout(10, reactor))
        offer = (await wait_replies(redis, SAMPLE_CALLER, 2))[1]
        code = re.search(r"验证码(\d{6})", offer)
        assert code, offer
        await wait_deferred(simulator.send_mo(SAMPLE_CALLER, f"QR {code.group(1)}").addTimeout(10, reactor))
        done = (await wait_replies(redis, SAMPLE_CALLER, 3))[2]
        assert "已取消" in done
        booked = await BookingStore(redis, KEYS).get(booking)
        assert booked is not None and booked.status.value == "cancelled"

        await wait_deferred(simulator.send_mo(SAMPLE_CALLER_UNICOM, "CXJF").addTimeout(10, reactor))
        await wait_replies(redis, SAMPLE_CALLER_UNICOM, 1)
        await asyncio.sleep(0.5)  # a second answer, if there were one, would be queued by now
        assert len(await replies(redis, SAMPLE_CALLER)) == 3
        assert len(await replies(redis, SAMPLE_CALLER_UNICOM)) == 1

        # The sender's MO stream, rate window and cancel code: all in its number's partition.
        k = zlib.crc32(SAMPLE_CALLER.encode()) % PARTITIONS
        assert KEYS.mo_stream_of(SAMPLE_CALLER) == f"12123:{{p{k}}}:mo"
        assert await redis.xlen(KEYS.mo_stream_of(SAMPLE_CALLER)) == 3
        assert KEYS.mo_rate(SAMPLE_CALLER).startswith(f"12123:{{p{k}}}:") and await redis.exists(
            KEYS.mo_rate(SAMPLE_CALLER))
        assert KEYS.mo_cancel_code(SAMPLE_CALLER).startswith(f"12123:{{p{k}}}:")
        handled = [key for key in await redis.keys("*mo-handled:*", target_nodes="primaries")]
        assert len(handled) == 4 and all(re.match(r"^12123:\{p\d+\}:mo-handled:\d+-\d+$", h) for h in handled)
        assert any(h.startswith(f"12123:{{p{k}}}:") for h in handled)
        for part in KEYS.all_partitions:
            if await redis.exists(part.mo_stream):
                assert (await redis.xpending(part.mo_stream, "mo"))["pending"] == 0
        received = [f for part in [KEYS.events_stream] for _, f in await redis.xrange(part)
                    if f["type"] == "mo.received"]
        assert len(received) == 4 and {f["mo_id"].split("-")[0][0] for f in received} == {"p"}
    finally:
        await wait_deferred(link.stopService())
        await wait_deferred(simulator.stopService())
        for service in services:
            if service.running:
                await wait_deferred(service.stopService())
        await redis.aclose()


@on_asyncio
async def test_an_mo_read_by_a_process_that_died_is_answered_by_another(redis_cluster_url: str) -> None:
    """Process a read the MO (it is pending for a) and died; b claims it after
    claim_idle_seconds and answers it, once."""
    redis = connect(redis_cluster_url)
    try:
        await load_sample(redis, KEYS, today=from_unix(time.time()).date())
        b = MoService(redis, KEYS, MoConfig(), reactor, consumer_name="gw-b", block_seconds=0.1,
                      claim_idle_seconds=0.3)
        await wait_deferred(b.record_mo(MobileOriginated("cmcc", _phone(SAMPLE_CALLER), "12123", "CXJF")))
        stream = KEYS.mo_stream_of(SAMPLE_CALLER)
        await redis.xgroup_create(stream, "mo", id="0", mkstream=True)
        assert await redis.xreadgroup("mo", "gw-a", {stream: ">"}, count=10)  # a read it, then died
        b.startService()
        try:
            [reply] = await wait_replies(redis, SAMPLE_CALLER, 1)
            assert reply  # answered (what it says is test_mo.py's business)
            assert (await redis.xpending(stream, "mo"))["pending"] == 0
        finally:
            await wait_deferred(b.stopService())
    finally:
        await redis.aclose()


def _phone(digits: str) -> Any:
    from gateway.privacy import PhoneNumber

    return PhoneNumber(digits)


@on_asyncio
async def test_a_process_answers_only_the_partitions_it_is_given(redis_cluster_url: str) -> None:
    """`partitions` (the owned partitions, from gateway/app.py) limits what a process
    answers: MOs of other partitions wait for their owner."""
    redis = connect(redis_cluster_url)
    try:
        await load_sample(redis, KEYS, today=from_unix(time.time()).date())
        mine = KEYS.number_partition_of(SAMPLE_CALLER)
        assert KEYS.number_partition_of(SAMPLE_CALLER_UNICOM) != mine
        owner = MoService(redis, KEYS, MoConfig(), reactor, consumer_name="gw-a", partitions=lambda: (mine,))
        for sender in (SAMPLE_CALLER, SAMPLE_CALLER_UNICOM):
            await wait_deferred(owner.record_mo(MobileOriginated("cmcc", _phone(sender), "12123", "CXJF")))
        assert await owner.answer_waiting() == 1
        assert len(await replies(redis, SAMPLE_CALLER)) == 1
        assert await replies(redis, SAMPLE_CALLER_UNICOM) == []
        assert await redis.xlen(KEYS.mo_stream_of(SAMPLE_CALLER_UNICOM)) == 1
    finally:
        await redis.aclose()


@on_asyncio
async def test_an_mo_recorded_here_ends_the_poll_pause(redis_cluster_url: str) -> None:
    """Partitioned, the MO streams are polled with a pause that grows while they are
    empty (MO_POLL_MAX_SECONDS); an MO this process records is answered at once, not after
    the pause: here the pause's clock never advances, so only the wake-up can answer it."""
    from twisted.internet.task import Clock

    redis = connect(redis_cluster_url)
    clock = Clock()
    service = MoService(redis, KEYS, MoConfig(), clock, now=time.time, consumer_name="gw-a", block_seconds=30)
    try:
        await load_sample(redis, KEYS, today=from_unix(time.time()).date())
        service.startService()
        deadline = time.monotonic() + 20
        while service._poll_wait is None:  # every stream read once, found empty: pausing
            assert time.monotonic() < deadline, "the MO poll never paused"
            await asyncio.sleep(0.05)
        await wait_deferred(service.record_mo(MobileOriginated("cmcc", _phone(SAMPLE_CALLER), "12123", "CXJF")))
        [reply] = await wait_replies(redis, SAMPLE_CALLER, 1)
        assert reply
    finally:
        await wait_deferred(service.stopService())
        await redis.aclose()
