"""Partner receipts with 16 partitions on a real Redis Cluster (3 masters, 3 replicas): two
processes whose listeners both hold a receiver bind of the partner deliver every owed
receipt exactly once between them (each claims before delivering, one script per
partition), and a receipt claimed by a process that died is delivered by the other once
the claim has run out."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from gateway.ports import DeliveryReceipt
from gateway.privacy import PhoneNumber
from gateway.push.partners import PartnerGateway
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.push.harness import Pipeline, pipeline

PARTITIONS = 16


class ReceiverBind:
    """A listener's receiver bind of the partner: answers each deliver_sm a moment later
    (a real round trip), so that two processes' deliveries interleave."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.delivered: list[str] = []

    def deliver_receipt(self, system_id: str, message_id: str, state: str, error_code: str) -> Deferred[None]:
        self.delivered.append(message_id)
        d: Deferred[None] = Deferred()
        if self.answer:
            reactor.callLater(0.001, d.callback, None)
        return d


async def owed_receipts(p: Pipeline, partners: PartnerGateway, count: int) -> list[str]:
    """`count` partner messages submitted, sent and receipted: their receipts are owed."""
    ids = []
    for n in range(count):
        [message_id] = await wait_deferred(partners.submit_from_partner(
            "fjprov", PhoneNumber(f"139{n:08d}"), f"您的业务{n}已办结。", True))
        ids.append(message_id)
    await p.dispatch_all()
    for message_id in ids:
        [carrier_id] = (await p.ledger.raw(message_id))["message_ids"].split()
        await wait_deferred(p.receipts.record_receipt(DeliveryReceipt("cmcc", carrier_id, "DELIVRD", "000")))
    return ids


@on_asyncio
async def test_two_processes_deliver_each_owed_receipt_once(redis_cluster_url: str) -> None:
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        binds = [ReceiverBind(), ReceiverBind()]
        processes = [PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=bind) for bind in binds]
        ids = await owed_receipts(p, processes[0], 60)
        assert len({p.keys.partition_of(i) for i in ids}) >= 10
        for part in p.keys.all_partitions:
            assert re.match(r"^12123:\{p\d+\}:partner-receipts$", part.partner_receipts_pending)
        for _ in range(10):
            await asyncio.gather(*(process.deliver_pending() for process in processes))
            if not any([await p.redis.zcard(part.partner_receipts_pending) for part in p.keys.all_partitions]):
                break
        delivered = Counter(binds[0].delivered + binds[1].delivered)
        assert set(delivered) == set(ids)
        assert max(delivered.values()) == 1, [i for i, n in delivered.items() if n > 1]


@on_asyncio
async def test_a_receipt_claimed_by_a_process_that_died_is_delivered_by_another(redis_cluster_url: str) -> None:
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        silent, alive = ReceiverBind(answer=False), ReceiverBind()
        dying = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=silent, claim_seconds=60)
        other = PartnerGateway(p.intake, p.ledger, p.clock, receipt_sink=alive, claim_seconds=60)
        [message_id] = await owed_receipts(p, dying, 1)
        delivering = asyncio.ensure_future(dying.deliver_pending())
        while not silent.delivered:
            await asyncio.sleep(0.01)
        delivering.cancel()  # the process dies with the deliver_sm unanswered and the claim held
        await asyncio.wait([delivering])
        assert await other.deliver_pending() == 0  # still claimed
        p.clock.advance(61)
        assert await other.deliver_pending() == 1
        assert alive.delivered == [message_id]
        pending = p.keys.partition(p.keys.partition_of(message_id)).partner_receipts_pending
        assert await p.redis.zcard(pending) == 0
