"""The partitioned pipeline (push.partitions > 1) against a real redis-server and a real
Redis Cluster (3 masters, 3 replicas): keys tagged
{p<k>} by crc32 of the id, each script within one partition, index entries of carrier
message ids in their own partition, the daily cap across partitions, the shared intake
stream still accepted, and batches shared among partitions high lane first."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.ports import DeliveryReceipt, SubmitAccepted
from gateway.push.deadletters import list_dead_letters
from gateway.push.intake import IntakeConsumer, enqueue
from gateway.smpp.receipts import canonical_message_id
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.push.harness import Pipeline, code, inspection, pipeline
from tests.push.test_receipts import record

PARTITIONS = 4


@pytest.fixture(params=["single", "cluster"])
def target(request: pytest.FixtureRequest) -> str:
    """The same tests on one redis-server and on a real 3-master Redis Cluster (where a
    script touching keys of two slots fails with CROSSSLOT)."""
    return str(request.getfixturevalue("redis_url" if request.param == "single" else "redis_cluster_url"))
# Keys outside the partitions: the shared intake and events streams, daily-cap sets.
SHARED = re.compile(r"^12123:(notify|events|freq-ids:.*)$")


def receipt(message_id: str, state: str = "DELIVRD") -> DeliveryReceipt:
    return DeliveryReceipt(carrier="cmcc", message_id=message_id, state=state, error_code="000")


def test_partition_is_crc32_of_the_id_and_tags_every_pipeline_key() -> None:
    """partition_of is crc32(id) % N (documented for core systems); keys carry {p<k>}; one
    partition keeps the untagged names of before."""
    keys = Keys(partitions=16)
    assert keys.partition_of("exam-20261130-0001") == zlib.crc32(b"exam-20261130-0001") % 16
    k = keys.partition_of("a")
    assert keys.notification("a") == f"12123:{{p{k}}}:notification:a"
    assert keys.partition(7).lane("high") == "12123:{p7}:lane:high"
    assert keys.message_id("cmcc", "ab01") == f"12123:{{p{zlib.crc32(b'cmcc:ab01') % 16}}}:msgid:cmcc:ab01"
    single = Keys()
    assert (single.lane("high"), single.notification("a")) == ("12123:lane:high", "12123:notification:{a}")


@on_asyncio
async def test_notifications_spread_over_partitions_and_are_all_delivered(target: str) -> None:
    """200 codes through the pipeline with 4 partitions: each ends delivered by its receipt,
    every key (except the shared streams) carries the tag of the partition crc32 names,
    and each partition's events stream tells its notifications' story."""
    async with pipeline(target, partitions=PARTITIONS, batch_size=50) as p:
        ids = [f"n{i}" for i in range(200)]
        await p.accept(*(code(i, to=f"139{n:08d}") for n, i in enumerate(ids)))
        assert await p.dispatch_all() == 200
        receipts = []
        for i in ids:
            [message_id] = (await p.ledger.raw(i))["message_ids"].split()
            receipts.append(receipt(message_id))
        await record(p, *receipts)
        assert {await p.state(i) for i in ids} == {"delivered"}
        assert len({p.keys.partition_of(i) for i in ids}) == PARTITIONS
        for key in await p.redis.keys("*"):
            if SHARED.match(key):
                continue
            assert re.match(r"^12123:\{p[0-3]\}:", key), key
        for i in ("n0", "n1"):
            stream = p.keys.partition(p.keys.partition_of(i)).events_stream
            events = [f["type"] for _, f in await p.redis.xrange(stream) if f.get("id") == i]
            assert events == ["notification.queued", "notification.submitting", "notification.submitted",
                              "notification.delivered"]
        for part in p.keys.all_partitions:
            assert await p.redis.zcard(part.inflight) == 0 and await p.redis.zcard(part.awaiting_receipt) == 0


@on_asyncio
async def test_receipt_before_its_submit_response_in_another_partition(target: str) -> None:
    """A receipt that beats its submit_sm_resp is parked in the message id's partition and
    applied to the notification in its own partition once the response is recorded."""
    async with pipeline(target, partitions=PARTITIONS) as p:
        # a message id whose index partition differs from the notification's
        notification_id = "early"
        message_id = next(f"CMCC{n:08X}" for n in range(1000)
                          if p.keys.index_partition_of("cmcc", f"cmcc{n:08x}") != p.keys.partition_of(notification_id))
        p.links[0].script = ["hold"]
        await p.accept(code(notification_id))
        await p.dispatcher.dispatch_once()
        await record(p, receipt(message_id))
        assert await p.state(notification_id) == "submitting"
        assert await p.redis.exists(p.keys.early_receipt("cmcc", message_id.lower()))
        _, d = p.links[0].held.pop()
        d.callback(SubmitAccepted("cmcc", (message_id,)))
        await p.writer.flushed()
        assert await p.state(notification_id) == "delivered"
        assert await p.redis.get(p.keys.message_id("cmcc", message_id.lower())) == f"{notification_id} 0"
        # Applied, it is deleted: before 2026-12-05 it stayed for the early-receipt TTL (a day).
        assert not await p.redis.exists(p.keys.early_receipt("cmcc", message_id.lower()))


@on_asyncio
async def test_a_parked_receipt_stays_until_its_submit_is_recorded(redis_url: str) -> None:
    """A receipt parked in its message id's partition, and the notification's partition
    failing when the submit is recorded: the parked receipt stays, so that the retried
    record applies it; then it is deleted."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.push.state import op_accepted

    async with pipeline(redis_url, partitions=2) as p:
        notification_id = "early"
        home = p.keys.partition_of(notification_id)
        message_id = next(f"{n}" for n in range(1000) if p.keys.index_partition_of("cmcc", f"{n}") != home)
        p.links[0].script = ["hold"]
        await p.accept(code(notification_id))
        await p.dispatcher.dispatch_once()
        await record(p, receipt(message_id))
        parked = p.keys.early_receipt("cmcc", message_id)
        assert await p.redis.exists(parked)
        real = p.ledger._apply_partition

        async def home_away(partition: int, ops: list[Any], now: float) -> Any:
            if partition == home:
                raise RedisConnectionError("master away")
            return await real(partition, ops, now)

        p.ledger._apply_partition = home_away  # type: ignore[method-assign]
        accepted = op_accepted(notification_id, "cmcc", [message_id])
        [(position, _)] = await p.ledger.apply([accepted], now=p.clock.now)
        assert position == 0 and await p.redis.exists(parked)
        p.ledger._apply_partition = real  # type: ignore[method-assign]
        assert await p.ledger.apply([accepted], now=p.clock.now) == []
        assert await p.state(notification_id) == "delivered" and not await p.redis.exists(parked)


async def _held(p: Pipeline, *requests: dict[str, Any]) -> dict[str, Any]:
    """Accept `requests` and dispatch them with their submits held: the Deferred of each,
    by notification id, for the test to answer."""
    p.links[0].script = ["hold"] * len(requests)
    await p.accept(*requests)
    await p.dispatcher.dispatch_once()
    held = {sms.reference: d for sms, d in p.links[0].held}
    p.links[0].held.clear()
    return held


async def _held_here_and_there(p: Pipeline, here_to: str, there_to: str) -> tuple[dict[str, Any], str, str]:
    """Notifications "here" and "there" held, and two message ids for them: one indexed in
    here's own partition (the script records it), one in another than there's (the
    writer does)."""
    held = await _held(p, code("here", to=here_to), code("there", to=there_to))
    ids = [f"{7_000_000_000 + n}" for n in range(1000)]
    here = next(m for m in ids if p.keys.index_partition_of("cmcc", m) == p.keys.partition_of("here"))
    there = next(m for m in ids if p.keys.index_partition_of("cmcc", m) != p.keys.partition_of("there") and m != here)
    return held, here, there


def _unparked() -> float:
    from gateway import metrics

    return metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_unparked_total", {"carrier": "cmcc"}) or 0.0


@on_asyncio
async def test_receipts_for_no_message_are_parked_up_to_the_cap(target: str) -> None:
    """Receipts for message ids the gateway never sent (a carrier sending another
    account's) are parked at most push.early_receipts_max at once, each partition its
    share; beyond it the oldest are dropped and counted, so that a newer one (which may
    have beaten its own submit_sm_resp) keeps its place.  Before, each stayed a day: a
    carrier doing that at 1,500/s parked 130 million.  Parked receipts that have waited
    their day no longer count."""
    async with pipeline(target, partitions=PARTITIONS, early_receipts_max=8) as p:
        message_ids = [f"{7_000_000_000 + n}" for n in range(60)]
        before = _unparked()
        await record(p, *(receipt(m, "UNDELIV") for m in message_ids))
        parked = [m for m in message_ids if await p.redis.exists(p.keys.early_receipt("cmcc", m))]
        per_partition = {k: await p.redis.zcard(p.keys.partition(k).early_receipts) for k in range(PARTITIONS)}
        assert per_partition == {k: 2 for k in range(PARTITIONS)}
        assert len(parked) == 8 and _unparked() - before == 52
        # The parked ones are those counted: '<carrier> <message id>', by when parked.
        counted = {member for k in range(PARTITIONS)
                   for member in await p.redis.zrange(p.keys.partition(k).early_receipts, 0, -1)}
        assert counted == {f"cmcc {m}" for m in parked}
        # A receipt parked already takes no more room: a final state replaces it in place.
        await record(p, receipt(parked[0], "DELIVRD"))
        assert await p.redis.get(p.keys.early_receipt("cmcc", parked[0])) == "DELIVRD 000"
        assert _unparked() - before == 52
        # A newer one takes the place of the oldest of its partition.
        p.clock.advance(10)
        newer = f"{8_000_000_000}"
        home = p.keys.partition(p.keys.index_partition_of("cmcc", newer)).early_receipts
        oldest = (await p.redis.zrange(home, 0, 0))[0].split(" ")[1]
        await record(p, receipt(newer, "UNDELIV"))
        assert await p.redis.exists(p.keys.early_receipt("cmcc", newer))
        assert not await p.redis.exists(p.keys.early_receipt("cmcc", oldest))
        assert await p.redis.zcard(home) == 2 and _unparked() - before == 53
        # A day later (the early-receipt TTL) the first have expired and free their room.
        p.clock.advance(86_401)
        await record(p, *(receipt(f"x{m}") for m in message_ids))
        assert _unparked() - before == 53 + 52
        assert {k: await p.redis.zcard(p.keys.partition(k).early_receipts) for k in range(PARTITIONS)} == \
            {k: 2 for k in range(PARTITIONS)}


@on_asyncio
async def test_a_parked_receipt_applied_frees_its_room(target: str) -> None:
    """A receipt that beat its submit_sm_resp and was applied with the submit no longer
    counts against the cap, whether its message id is indexed in the notification's
    partition (the script removes it) or in another (the writer does)."""
    async with pipeline(target, partitions=PARTITIONS, early_receipts_max=2 * PARTITIONS) as p:
        held, here, there = await _held_here_and_there(p, "13800138000", "13912345678")
        await record(p, receipt(here), receipt(there))
        for m in (here, there):
            partition = p.keys.index_partition_of("cmcc", m)
            assert f"cmcc {m}" in await p.redis.zrange(p.keys.partition(partition).early_receipts, 0, -1)
        held["here"].callback(SubmitAccepted("cmcc", (here,)))
        held["there"].callback(SubmitAccepted("cmcc", (there,)))
        await p.writer.flushed()
        assert await p.state("here") == "delivered" and await p.state("there") == "delivered"
        for k in range(PARTITIONS):
            assert await p.redis.zcard(p.keys.partition(k).early_receipts) == 0
        # the room is there again: a receipt for no message parks in that partition
        before = _unparked()
        await record(p, receipt(here + "0"))
        assert _unparked() == before


@on_asyncio
async def test_a_parked_receipt_for_another_number_is_not_applied_to_a_later_message(target: str) -> None:
    """A receipt parked under a message id (another account's, or an SMSC reusing its ids)
    names another number: when one of our messages gets that id later, the parked
    receipt is not applied to it, whether the id is indexed in the message's partition
    (the script) or in another (the writer); it stays parked, and the message's own
    receipt decides.  Before 2026-12-05 the parked UNDELIV made both undeliverable."""
    from tests.push.test_receipts import wrong_number_count

    async with pipeline(target, partitions=PARTITIONS) as p:
        held, here, there = await _held_here_and_there(p, "13912345601", "13912345602")
        refused = wrong_number_count()
        await record(p, *(DeliveryReceipt("cmcc", m, "UNDELIV", "001", source_addr="8613999999999")
                          for m in (here, there)))
        held["here"].callback(SubmitAccepted("cmcc", (here,)))
        held["there"].callback(SubmitAccepted("cmcc", (there,)))
        await p.writer.flushed()
        assert await p.state("here") == "submitted" and await p.state("there") == "submitted"
        assert wrong_number_count() - refused == 2
        for m in (here, there):
            assert await p.redis.get(p.keys.early_receipt("cmcc", m)) == "UNDELIV 001 99999999"
        await record(p, DeliveryReceipt("cmcc", here, "DELIVRD", "000", source_addr="13912345601"),
                     DeliveryReceipt("cmcc", there, "DELIVRD", "000", destination_addr="+8613912345602"))
        assert await p.state("here") == "delivered" and await p.state("there") == "delivered"


@pytest.mark.parametrize("where", ["single", "single-partitioned", "cluster"])
@on_asyncio
async def test_two_live_messages_with_one_id_each_get_their_own_receipt(request: pytest.FixtureRequest,
                                                                         where: str) -> None:
    """An SMSC that gives two live messages the same id (it reuses ids: two nodes behind
    one address, a counter that restarted): the index names the later one, and the
    earlier one's receipt, which carries its number, is refused there and found among
    the id's previous entries.  Before 2026-12-05 it found nothing, was parked for a day,
    and the earlier message ended unconfirmed.  Unpartitioned (the script keeps the
    entry), partitioned (the writer does) and on a Cluster."""
    target = str(request.getfixturevalue("redis_cluster_url" if where == "cluster" else "redis_url"))
    async with pipeline(target, partitions=1 if where == "single" else PARTITIONS) as p:
        held = await _held(p, code("earlier", to="13912345601"), code("later", to="13912345602"))
        reused = "7000000042"
        held["earlier"].callback(SubmitAccepted("cmcc", (reused,)))
        await p.writer.flushed()
        held["later"].callback(SubmitAccepted("cmcc", (reused,)))
        await p.writer.flushed()
        assert await p.redis.get(p.keys.message_id("cmcc", reused)) == "later 0"
        assert await p.redis.get(p.keys.message_id_previous("cmcc", reused)) == "earlier 0"
        await record(p, DeliveryReceipt("cmcc", reused, "UNDELIV", "001", source_addr="8613912345601"))
        assert await p.state("earlier") == "undeliverable" and await p.state("later") == "submitted"
        await record(p, DeliveryReceipt("cmcc", reused, "DELIVRD", "000", source_addr="13912345602"))
        assert await p.state("later") == "delivered"
        assert not await p.redis.exists(p.keys.early_receipt("cmcc", reused))


@on_asyncio
async def test_index_entries_in_other_partitions_take_no_script_call(target: str) -> None:
    """Recording a batch of accepted submits runs the outcomes script once per partition
    of the notifications; their message ids' index entries, in other partitions, are
    plain SETs in one pipeline (a script per index partition was about half the script
    calls per notification on a 24-partition Cluster).  Every receipt then finds its
    notification."""
    async with pipeline(target, partitions=PARTITIONS, batch_size=50) as p:
        ids = [f"ix{i}" for i in range(24)]
        await p.accept(*(code(i, to=f"139{n:08d}") for n, i in enumerate(ids)))
        calls: list[int] = []
        run = p.ledger._run

        async def counting_run(script, now, args, declared=None, partition=0):  # type: ignore[no-untyped-def]
            if script is p.ledger._outcomes:
                calls.append(partition)
            return await run(script, now, args, declared, partition)

        p.ledger._run = counting_run  # type: ignore[method-assign]
        assert await p.dispatch_all() == len(ids)
        message_ids = [(await p.ledger.raw(i))["message_ids"] for i in ids]
        homes = {p.keys.index_partition_of("cmcc", m.lower()) for m in message_ids}
        assert homes - {p.keys.partition_of(i) for i in ids} or len(homes) > 1
        assert sorted(calls) == sorted(set(calls)), calls  # one call per partition per batch
        assert set(calls) <= {p.keys.partition_of(i) for i in ids}
        await record(p, *(receipt(m) for m in message_ids))
        assert {await p.state(i) for i in ids} == {"delivered"}


@on_asyncio
async def test_daily_cap_counts_a_number_across_partitions_once_per_id(target: str) -> None:
    """Four bulk reminders to one number, in different partitions: three accepted, the
    fourth rejected with the cap's reason; the same ids again count nothing more."""
    async with pipeline(target, partitions=PARTITIONS, daily_cap_bulk=3) as p:
        ids = [f"bulk-{i}" for i in range(4)]
        assert len({p.keys.partition_of(i) for i in ids}) > 1
        outcomes = await p.accept(*(inspection(i) for i in ids))
        states = [o.state for o in outcomes]
        assert states.count("rejected") == 1 and states.count("queued") == 3
        rejected = next(o for o in outcomes if o.state == "rejected")
        assert rejected.reason == "daily cap: 3 bulk reminders to this number today"
        again = await p.accept(*(inspection(i) for i in ids if i != rejected.id))
        assert all(o.duplicate for o in again)


@on_asyncio
async def test_shared_and_partition_streams_are_both_accepted_and_emptied(target: str) -> None:
    """A core system's XADD to the shared notify stream and the CLI's to each id's
    partition stream are both accepted once; both streams end empty (acknowledged)."""
    async with pipeline(target, partitions=PARTITIONS) as p:
        consumers = [IntakeConsumer(p.intake, p.redis, p.keys, group="gateway", consumer="t", stream=stream)
                     for stream in [p.keys.notify_stream, *(part.notify_stream for part in p.keys.all_partitions)]]
        for consumer in consumers:
            await consumer.ensure_group()
        for i in range(20):
            await p.redis.xadd(p.keys.notify_stream, {"id": f"core-{i}", "type": "verification_code",
                                                      "to": f"139{i:08d}", "params": '{"code":"1","minutes":"5"}'})
            await enqueue(p.redis, p.keys, "verification_code", f"138{i:08d}", {"code": "2", "minutes": "5"},
                          id=f"cli-{i}")
        for consumer in consumers:
            while await consumer.read_once():
                pass
        for i in range(20):
            assert await p.state(f"core-{i}") == "queued" and await p.state(f"cli-{i}") == "queued"
        for consumer in consumers:
            assert await p.redis.xlen(consumer.stream) == 0


@on_asyncio
async def test_codes_in_one_partition_overtake_a_backlog_in_another(target: str) -> None:
    """The batch is shared among partitions high lane first: codes come before bulk
    reminders whatever partitions they are in."""
    async with pipeline(target, partitions=PARTITIONS, daily_cap_bulk=10, batch_size=40) as p:
        await p.accept(*(inspection(f"bulk-{i}", to=f"138{i:08d}") for i in range(200)))
        await p.accept(*(code(f"otp-{i}", to=f"139{i:08d}") for i in range(20)))
        assert await p.dispatcher.dispatch_once() == 40
        lanes = [sms.reference.split("-")[0] for sms in p.links[0].submitted]
        assert lanes.count("otp") == 20 and lanes[:20] == ["otp"] * 20


@on_asyncio
async def test_lost_leases_and_dead_letters_in_every_partition(target: str) -> None:
    """Lease recovery and the dead-letter list cover every partition."""
    async with pipeline(target, partitions=PARTITIONS) as p:
        ids = [f"m{i}" for i in range(12)]
        await p.accept(*(code(i, to=f"139{n:08d}") for n, i in enumerate(ids)))
        await p.ledger.claim(12, now=p.clock.now, lease_seconds=30, quiet_until=0)
        assert await p.ledger.recover_expired_leases(now=p.clock.now + 31) == 12
        await p.accept(code("bad", to="1234"), code("bad2", to="99"))
        dead = [row["id"] for row in await list_dead_letters(p.redis, p.keys)]
        assert sorted(dead) == ["bad", "bad2"]


@on_asyncio
async def test_intake_waits_for_a_replica_when_asked(target: str) -> None:
    """push.intake_wait_replicas 1: accepting WAITs for a replica of each partition's
    master.  On the cluster (a replica per master) it has it; on a lone redis-server the
    wait gives up after its bound, the batch is accepted anyway and the shortfall counted."""
    from gateway.push.state import replication_short

    async with pipeline(target, partitions=PARTITIONS) as p:
        p.ledger.wait_replicas = 1
        before = replication_short._value.get()
        outcomes = await p.accept(code("w1"), code("w2", to="13912345678"))
        assert [o.state for o in outcomes] == ["queued", "queued"]
        partitions = len({p.keys.partition_of(i) for i in ("w1", "w2")})
        expected = 0 if target.startswith("cluster:") else partitions
        assert replication_short._value.get() - before == expected


@on_asyncio
async def test_outcomes_of_a_partition_that_fails_wait_without_holding_back_the_others(redis_url: str) -> None:
    """Submit outcomes and receipts of two partitions, one of whose scripts fails (its
    master away, its slot migrating): the other partition's are recorded at once; the
    failing partition's submit outcomes are held aside and recorded once it answers again,
    nothing lost, the writer flushed only then.  Its receipts are kept (deferred) in the
    partition that answers and acknowledged, and applied once their own partition answers:
    one whose message id is indexed in the partition that answers, and one indexed in the
    failing partition itself.  Before, one partition's failure failed the whole batch, and
    every receipt of the failing partition was refused; then (stop 24) the second one
    still was."""
    import asyncio

    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.store.bridge import wait_deferred

    async with pipeline(redis_url, partitions=2) as p:
        ids: dict[int, list[str]] = {0: [], 1: []}
        i = 0
        while len(ids[0]) < 4 or len(ids[1]) < 4:  # 4 each: message ids indexed in both partitions
            part = p.keys.partition_of(f"o{i}")
            if len(ids[part]) < 4:
                ids[part].append(f"o{i}")
            i += 1
        await p.accept(*(code(n, to=f"139{int(n[1:]):08d}") for n in ids[0] + ids[1]))
        ledger = p.ledger
        real = ledger._apply_partition
        away = [True]
        refused: list[int] = []

        async def partition_1_away(partition: int, ops: list[Any], now: float) -> Any:
            if partition == 1 and away[0]:
                refused.append(len(ops))
                raise RedisConnectionError("master away")
            return await real(partition, ops, now)

        ledger._apply_partition = partition_1_away  # type: ignore[method-assign]
        try:
            assert await p.dispatcher.dispatch_once() == 8
            for _ in range(100):  # partition 0's outcomes pass while partition 1's are held
                if [await p.state(n) for n in ids[0]] == ["submitted"] * 4:
                    break
                await asyncio.sleep(0.02)
            assert [await p.state(n) for n in ids[0]] == ["submitted"] * 4
            assert [await p.state(n) for n in ids[1]] == ["submitting"] * 4
            assert refused and p.writer.failing
            flushed = asyncio.ensure_future(p.writer.flushed())
            await asyncio.sleep(0.3)
            assert not flushed.done(), "the writer said flushed with submit outcomes held"
            # The scripted carrier numbers its message ids in submit order.
            message_id = {sms.reference: f"CMCC{k:08X}" for k, sms in enumerate(p.links[0].submitted, start=1)}
            await wait_deferred(p.receipts.record_receipt(receipt(message_id[ids[0][0]])))
            assert await p.state(ids[0][0]) == "delivered"
            home = {n: p.keys.index_partition_of("cmcc", canonical_message_id(message_id[n])) for n in ids[1]}
            indexed_elsewhere = next(n for n in ids[1] if home[n] == 0)
            indexed_here = next(n for n in ids[1] if home[n] == 1)
            await wait_deferred(p.receipts.record_receipt(receipt(message_id[indexed_elsewhere])))
            assert await p.redis.xlen(p.keys.partition(0).deferred_receipts) == 1
            await wait_deferred(p.receipts.record_receipt(receipt(message_id[indexed_here])))
            assert await p.redis.xlen(p.keys.partition(0).deferred_receipts) == 2
            assert await p.redis.xlen(p.keys.partition(1).deferred_receipts) == 0
            assert await p.ledger.apply_deferred_receipts(now=p.clock.seconds()) == 0  # partition 1 still away
            assert await p.redis.xlen(p.keys.partition(0).deferred_receipts) == 2
        finally:
            away[0] = False  # so that the writer drains, whatever failed above
        await asyncio.wait_for(flushed, 10)
        assert [await p.state(n) for n in ids[1]] == ["submitted"] * 4
        assert await p.ledger.apply_deferred_receipts(now=p.clock.seconds()) == 2
        assert await p.state(indexed_elsewhere) == "delivered" and await p.state(indexed_here) == "delivered"
        assert await p.redis.xlen(p.keys.partition(0).deferred_receipts) == 0
        assert not p.writer.failing and p.writer.unrecorded() == []


@on_asyncio
async def test_housekeeping_applies_every_partitions_deferred_receipts_before_closing_timeouts(
        redis_url: str) -> None:
    """A receipt kept in partition Q's deferred stream for a notification of partition
    P, past its receipt timeout: the housekeeping of a process that owns P only applies it
    (delivered) before it closes P's overdue notifications.  Before, each process applied
    only its own partitions' streams, after closing: the notification ended `unconfirmed`
    and its receipt came late (bench/cluster_soak.py: 10-21 of 60,000)."""
    import json

    from gateway.config import PushConfig
    from gateway.push.service import PushService

    async with pipeline(redis_url, partitions=2, receipt_timeout_seconds=20) as p:
        await p.accept(code("kept"))
        await p.dispatch_all()
        assert await p.state("kept") == "submitted"
        home = p.keys.partition_of("kept")
        elsewhere = 1 - home
        await p.redis.xadd(p.keys.partition(elsewhere).deferred_receipts,
                           {"op": json.dumps(["Y", "kept", "0", "DELIVRD", "000"])})
        service = PushService(p.redis, p.keys, PushConfig(receipt_timeout_seconds=20), p.templates, p.links,
                              p.clock, lease_seconds=3.0, tick_seconds=1.0)
        service.ownership.owned = lambda now=None: [home]  # type: ignore[method-assign]
        p.clock.advance(60)  # well past the timeout and its grace
        for _ in range(3):  # one full housekeeping period (every lease / 3 ticks)
            await service._housekeeping_step()
        assert await p.state("kept") == "delivered"
        assert await p.redis.xlen(p.keys.partition(elsewhere).deferred_receipts) == 0


@on_asyncio
async def test_an_unreadable_deferred_entry_holds_back_neither_receipts_nor_housekeeping(redis_url: str) -> None:
    """Entries this version cannot read (a newer gateway's layout during a rolling deploy,
    or damaged) at the head of a deferred stream: the receipt behind them is applied,
    housekeeping goes on (an overdue notification is closed, leases are renewed), and
    they are left for a process that can read them until UNREADABLE_DEFERRED_KEEP_SECONDS,
    then deleted and counted.  Before, housekeeping stopped at the first of them at every
    period, and lease renewal, which comes after, never ran."""
    import json

    from gateway import metrics
    from gateway.config import PushConfig
    from gateway.push.service import PushService
    from gateway.push.state import UNREADABLE_DEFERRED_KEEP_SECONDS

    async with pipeline(redis_url, partitions=2, receipt_timeout_seconds=20) as p:
        await p.accept(code("kept"), code("silent", to="13900000001"))
        await p.dispatch_all()
        stream = p.keys.partition(p.keys.partition_of("kept")).deferred_receipts
        written = p.clock.now - 1
        for n, fields in enumerate(({"op": json.dumps(["Q", "a", "future", "layout"])}, {"op": "{not json"},
                                    {"other": "field"},
                                    {"op": json.dumps(["Y", "kept", "0", "DELIVRD", "000"])})):
            await p.redis.xadd(stream, fields, id=f"{int(written * 1000)}-{n}")
        service = PushService(p.redis, p.keys, PushConfig(receipt_timeout_seconds=20), p.templates, p.links,
                              p.clock, lease_seconds=3.0, tick_seconds=1.0)
        service.ownership.owned = lambda now=None: [0, 1]  # type: ignore[method-assign]
        renewed: list[int] = []

        async def renew() -> None:
            renewed.append(1)

        service.dispatcher.renew_leases_once = renew  # type: ignore[method-assign]
        p.clock.advance(60)  # past the receipt timeout and its grace
        for _ in range(3):  # one housekeeping period (every lease / 3 ticks)
            await service._housekeeping_step()
        assert await p.state("kept") == "delivered" and await p.state("silent") == "unconfirmed"
        assert renewed
        assert await p.redis.xlen(stream) == 3  # left for a process that can read them
        dropped = metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_deferred_unreadable_total") or 0.0
        p.clock.advance(UNREADABLE_DEFERRED_KEEP_SECONDS)
        assert await p.ledger.apply_deferred_receipts(now=p.clock.now) == 0
        assert await p.redis.xlen(stream) == 0
        assert metrics.REGISTRY.get_sample_value("gateway12123_push_receipts_deferred_unreadable_total") == dropped + 3


@on_asyncio
async def test_a_failure_applying_deferred_receipts_still_renews_leases_and_closes_nothing(redis_url: str) -> None:
    """Any error applying kept receipts other than Redis being away: the lease renewals of
    that housekeeping period still run, and no notification is closed `unconfirmed`
    (its kept receipt may be the one that did not land)."""
    from gateway.config import PushConfig
    from gateway.push.service import PushService

    async with pipeline(redis_url, receipt_timeout_seconds=20) as p:
        await p.accept(code("silent"))
        await p.dispatch_all()
        service = PushService(p.redis, p.keys, PushConfig(receipt_timeout_seconds=20), p.templates, p.links,
                              p.clock, lease_seconds=3.0, tick_seconds=1.0)
        renewed: list[int] = []

        async def renew() -> None:
            renewed.append(1)

        async def broken(**_: Any) -> int:
            raise RuntimeError("a defect")

        service.dispatcher.renew_leases_once = renew  # type: ignore[method-assign]
        service.ledger.apply_deferred_receipts = broken  # type: ignore[method-assign]
        p.clock.advance(60)
        for _ in range(3):
            await service._housekeeping_step()
        assert renewed and await p.state("silent") == "submitted"


@on_asyncio
async def test_a_deferred_stream_whose_node_is_away_waits_and_the_others_are_applied(redis_url: str) -> None:
    """Kept receipts in both partitions' streams, one stream unreadable (its node away):
    the other's receipt is applied and no error stops housekeeping; the unreadable one's
    is applied at the next call.  Before, one failing read failed the whole call, and with
    it the rest of housekeeping (lease renewals among it)."""
    import json

    from redis.exceptions import ConnectionError as RedisConnectionError

    async with pipeline(redis_url, partitions=2) as p:
        ids = {p.keys.partition_of(n): n for n in (f"k{i}" for i in range(20))}
        await p.accept(*(code(n, to=f"139{k:08d}") for k, n in ids.items()))
        await p.dispatch_all()
        for k, notification_id in ids.items():
            await p.redis.xadd(p.keys.partition(k).deferred_receipts,
                               {"op": json.dumps(["Y", notification_id, "0", "DELIVRD", "000"])})
        away = p.keys.partition(1).deferred_receipts
        real_pipeline, real_xrange = p.redis.pipeline, p.redis.xrange

        def pipeline_away(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("node away")

        async def xrange_away(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == away:
                raise RedisConnectionError("node away")
            return await real_xrange(name, *args, **kwargs)

        p.redis.pipeline, p.redis.xrange = pipeline_away, xrange_away  # type: ignore[method-assign]
        try:
            assert await p.ledger.apply_deferred_receipts(now=p.clock.seconds()) == 1
        finally:
            p.redis.pipeline, p.redis.xrange = real_pipeline, real_xrange  # type: ignore[method-assign]
        assert await p.state(ids[0]) == "delivered" and await p.state(ids[1]) == "submitted"
        assert await p.ledger.apply_deferred_receipts(now=p.clock.seconds()) == 1
        assert await p.state(ids[1]) == "delivered"


@on_asyncio
async def test_a_receipt_is_recorded_while_the_index_writes_of_its_batch_fail(redis_url: str) -> None:
    """A batch with two submit outcomes and a receipt, whose message-id index writes fail
    (the node of the index partition away): the receipt is recorded, the two submits are
    held and recorded once the index can be written.  Before, the receipt was refused
    with them."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.store.bridge import wait_deferred

    async with pipeline(redis_url, partitions=2) as p:
        await p.accept(code("r0", to="13900000001"))
        await p.dispatch_all()
        assert await p.state("r0") == "submitted"  # its message id: CMCC00000001
        p.links[0].script += ["hold", "hold"]
        await p.accept(code("h0", to="13900000002"), code("h1", to="13900000003"))
        await p.dispatcher.dispatch_once()
        await wait_deferred(p.links[0].when_held())
        assert len(p.links[0].held) == 2
        ledger = p.ledger
        real = ledger._write_index_entries
        away = [True]

        async def index_away(entries: Any) -> Any:
            if away[0]:
                raise RedisConnectionError("index partition's master away")
            return await real(entries)

        ledger._write_index_entries = index_away  # type: ignore[method-assign]
        try:
            # In one reactor turn, so that the writer applies them as one batch; message
            # ids indexed in the other partition (the index write is then a step of its own).
            for sms, held in p.links[0].held:
                home = p.keys.partition_of(sms.reference)
                message_id = next(m for m in (f"CMCCH{k:07X}" for k in range(100))
                                  if p.keys.index_partition_of("cmcc", m) != home)
                held.callback(SubmitAccepted("cmcc", (message_id,)))
            recorded = p.receipts.record_receipt(receipt("CMCC00000001"))
            await wait_deferred(recorded)
            assert await p.state("r0") == "delivered"
            assert [await p.state(n) for n in ("h0", "h1")] == ["submitting", "submitting"]
            assert p.writer.pending == 2
        finally:
            away[0] = False
        await p.writer.flushed()
        assert [await p.state(n) for n in ("h0", "h1")] == ["submitted", "submitted"]


@on_asyncio
async def test_submits_are_recorded_while_the_index_lookups_of_their_batch_fail(redis_url: str) -> None:
    """A batch with a submit outcome and a receipt whose message-id lookup fails (a node
    away): the submit is recorded; the receipt is kept in its message id's partition's
    deferred-receipts stream and acknowledged, and applied once the index can be read.
    Before, the receipt was refused (the carrier delivers it again, in its own time)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.store.bridge import wait_deferred

    async with pipeline(redis_url, partitions=2) as p:
        await p.accept(code("r0", to="13900000001"))
        await p.dispatch_all()
        p.links[0].script.append("hold")
        await p.accept(code("h0", to="13900000002"))
        await p.dispatcher.dispatch_once()
        await wait_deferred(p.links[0].when_held())
        ledger = p.ledger
        real = ledger._resolve_receipts

        async def lookups_away(ops: Any) -> Any:
            if any(op[0] == "X" for op in ops):
                raise RedisConnectionError("index node away")
            return await real(ops)

        ledger._resolve_receipts = lookups_away  # type: ignore[method-assign]
        [(_, held)] = p.links[0].held
        held.callback(SubmitAccepted("cmcc", ("CMCCH0000001",)))
        await wait_deferred(p.receipts.record_receipt(receipt("CMCC00000001")))  # same reactor turn: one batch
        assert await p.state("h0") == "submitted"
        assert await p.state("r0") == "submitted"
        home = p.keys.index_partition_of("cmcc", canonical_message_id("CMCC00000001"))
        assert await p.redis.xlen(p.keys.partition(home).deferred_receipts) == 1
        assert await ledger.apply_deferred_receipts(now=p.clock.seconds()) == 0  # the index still away
        await p.writer.flushed()
        ledger._resolve_receipts = real  # type: ignore[method-assign]
        assert await ledger.apply_deferred_receipts(now=p.clock.seconds()) == 1
        assert await p.state("r0") == "delivered"
        assert await p.redis.xlen(p.keys.partition(home).deferred_receipts) == 0


@contextlib.contextmanager
def _master_lost_while_waiting() -> Iterator[None]:
    """Every wait for replicas fails as it does when the master goes away mid-WAIT."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    import gateway.store.replication as replication_module

    real = replication_module.wait_for_replicas

    async def master_lost(*args: Any, **kwargs: Any) -> int:
        raise RedisConnectionError("master lost while waiting for its replica")

    replication_module.wait_for_replicas = master_lost  # type: ignore[assignment]
    try:
        yield
    finally:
        replication_module.wait_for_replicas = real


@on_asyncio
async def test_receipts_wait_for_a_replica_of_their_master_when_asked(redis_cluster: object,
                                                                      redis_cluster_url: str) -> None:
    """push.delivery_wait_replicas 1 on the real Cluster: a receipt is reported recorded
    (the carrier then forgets it) once a replica of its partition's master has it.  With
    that replica stopped the wait gives up after its bound: the receipt is acknowledged
    anyway and the shortfall counted; a master lost meanwhile (its connection fails) has
    the receipt refused, so that the carrier delivers it again."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.push.state import receipt_replication_short
    from gateway.store.bridge import wait_deferred
    from gateway.store.local_cluster import LocalRedisCluster
    from gateway.store.replication import ReplicaWaits

    assert isinstance(redis_cluster, LocalRedisCluster)
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        p.ledger.receipt_wait_replicas = 1
        await p.accept(code("d1", to="13900000001"), code("d2", to="13900000002"), code("d3", to="13900000003"))
        await p.dispatch_all()
        message_id = {sms.reference: f"CMCC{k:08X}" for k, sms in enumerate(p.links[0].submitted, start=1)}
        short = receipt_replication_short._value.get()

        await wait_deferred(p.receipts.record_receipt(receipt(message_id["d1"])))
        assert await p.state("d1") == "delivered"
        assert receipt_replication_short._value.get() == short  # the replica had it

        master = redis_cluster.owner_of(p.redis.keyslot(p.keys.partition(p.keys.partition_of("d2")).replication_fence))
        (replica,) = redis_cluster.replicas_of(master)
        with redis_cluster.paused(replica):  # the wait's bound (1 s) is short of the node timeout (2 s)
            started = time.monotonic()
            await wait_deferred(p.receipts.record_receipt(receipt(message_id["d2"])))
            assert time.monotonic() - started >= 0.9
        assert await p.state("d2") == "delivered"
        assert receipt_replication_short._value.get() == short + 1

        p.ledger.replica_waits = ReplicaWaits(p.redis, hold_off_seconds=0)  # d2's master: asked again
        with _master_lost_while_waiting(), pytest.raises(RedisConnectionError):
            await wait_deferred(p.receipts.record_receipt(receipt(message_id["d3"])))
        # Delivered again by the carrier: recorded, and the state it already had is kept.
        await wait_deferred(p.receipts.record_receipt(receipt(message_id["d3"])))
        assert await p.state("d3") == "delivered"


@on_asyncio
async def test_index_entries_wait_for_a_replica_before_their_submit_is_recorded(redis_cluster: object,
                                                                                redis_cluster_url: str) -> None:
    """push.delivery_wait_replicas 1 on the real Cluster: an accepted submit whose message
    id is indexed in another partition is recorded once a replica of the index's master
    has the entry.  With that replica stopped: after the wait's bound, counted.  With the
    master lost meanwhile: the submit is not recorded but held, and recorded with its
    entry written again once the master answers.  Before, a master killed with entries
    its replica never had left receipts nothing to find: parked, acknowledged, never
    applied (125 notifications `unconfirmed` in one soak of 60,000)."""
    from gateway.push.state import receipt_replication_short
    from gateway.store.bridge import wait_deferred
    from gateway.store.local_cluster import LocalRedisCluster
    from gateway.store.replication import ReplicaWaits

    assert isinstance(redis_cluster, LocalRedisCluster)
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        p.ledger.receipt_wait_replicas = 1
        # The scripted carrier numbers its message ids in submit order: CMCC00000001, ...
        index_partition = [p.keys.index_partition_of("cmcc", canonical_message_id(f"CMCC{k:08X}"))
                           for k in (1, 2, 3)]

        def elsewhere(k: int) -> str:  # a notification id whose partition is not its index's
            return next(f"x{k}-{i}" for i in range(100) if p.keys.partition_of(f"x{k}-{i}") != index_partition[k - 1])

        def index_master(k: int) -> int:
            return redis_cluster.owner_of(p.redis.keyslot(p.keys.partition(index_partition[k - 1]).replication_fence))

        first, second, third = elsewhere(1), elsewhere(2), elsewhere(3)
        short = receipt_replication_short._value.get()
        await p.accept(code(first))
        await p.dispatch_all()
        assert await p.state(first) == "submitted"
        assert receipt_replication_short._value.get() == short  # the replica had it

        (replica,) = redis_cluster.replicas_of(index_master(2))
        await p.accept(code(second))
        with redis_cluster.paused(replica):  # the wait's bound (1 s) is short of the node timeout (2 s)
            started = time.monotonic()
            await p.dispatch_all()
            assert await p.state(second) == "submitted"
            assert time.monotonic() - started >= 0.9
        assert receipt_replication_short._value.get() == short + 1

        p.ledger.replica_waits = ReplicaWaits(p.redis, hold_off_seconds=0)  # that master: asked again
        await p.accept(code(third))
        with _master_lost_while_waiting():
            assert await p.dispatcher.dispatch_once() == 1
            for _ in range(100):
                if p.writer.failing:
                    break
                await asyncio.sleep(0.02)
            assert p.writer.failing and await p.state(third) == "submitting"
        await p.writer.flushed()
        assert await p.state(third) == "submitted"
        entry = await p.redis.get(p.keys.message_id("cmcc", canonical_message_id("CMCC00000003")))
        assert entry == f"{third} 0"
        await wait_deferred(p.receipts.record_receipt(receipt("CMCC00000003")))
        assert await p.state(third) == "delivered"


# The real-failover tests below share one Cluster of this module's own, one master each:
# each kills the master it picked, whose replica then serves without a replica of its own.
FAILOVER_MASTERS = 4


@pytest.fixture(scope="module")
def failover_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """4 masters with a replica each, for the tests that kill one (a cluster start is
    7 s here; one each cost the suite 20 s more)."""
    from gateway.store.local_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(Path(tmp_path_factory.mktemp("failover-cluster")), masters=FAILOVER_MASTERS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def failover_url(failover_cluster: Any) -> str:
    """The failover cluster's ``cluster:`` URL, flushed.  A client of it must send a
    command before a replica is stopped: a RedisCluster client learns the slots at its
    first command from the first startup node that answers, and a stopped one answers
    nobody (in the loaded suite an MO's recording waited past the test's 10 s for that)."""
    failover_cluster.flushall()
    return "cluster:" + ",".join(failover_cluster.startup_nodes)


class _Topology:
    """Who serves which slot and which masters still have a replica, from one CLUSTER
    NODES (a redis-cli call per key would cost seconds over thousands of candidates)."""

    def __init__(self, cluster: Any, redis: Any) -> None:
        from gateway.store.local_cluster import command

        self.redis = redis
        self.ranges: list[tuple[int, int, int]] = []
        ids: dict[str, int] = {}
        replicated: set[str] = set()
        lines = [line.split() for line in command(cluster.running()[0].port, "cluster", "nodes").splitlines()]
        for parts in lines:
            port = int(parts[1].split(":")[1].split("@")[0])
            ids[parts[0]] = port
            if "slave" in parts[2] and "fail" not in parts[2]:
                replicated.add(parts[3])
            if "master" in parts[2] and "fail" not in parts[2]:
                for spec in parts[8:]:
                    if not spec.startswith("["):
                        low, _, high = spec.partition("-")
                        self.ranges.append((int(low), int(high or low), port))
        self.with_replica = {ids[node_id] for node_id in replicated if node_id in ids}

    def master_of(self, key: str) -> int:
        slot = self.redis.keyslot(key)
        for low, high, port in self.ranges:
            if low <= slot <= high:
                return port
        raise AssertionError(f"no master serves slot {slot} (a failover not finished?)")

    def first_with_a_replica(self, candidates: Iterable[str], key_of: Callable[[str], str]) -> str:
        """The first candidate whose key's master still has a replica (not killed yet)."""
        for candidate in candidates:
            if self.master_of(key_of(candidate)) in self.with_replica:
                return candidate
        raise AssertionError("no master with a replica left: FAILOVER_MASTERS too small")


async def _master_killed_once_it_has(cluster: Any, master: int, probe: tuple[str, ...], expected: str) -> None:
    """With the master's replica stopped and its link cut (CLIENT KILL TYPE replica: a
    stopped replica would still find what was sent in its socket buffer when it wakes),
    wait until the master alone answers `probe` (a read command) with `expected`, SIGKILL
    it, then let the replica wake and take over.  What the master took after the cut dies
    with it."""
    from gateway.store.local_cluster import command

    def current() -> str:
        return command(master, *probe)

    (replica,) = cluster.replicas_of(master)
    with cluster.paused(replica):
        assert command(master, "client", "kill", "type", "replica") == "1"
        deadline = time.monotonic() + 30
        while current() != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert current() == expected
        await asyncio.to_thread(cluster.kill, master)
    await asyncio.to_thread(cluster.wait_for_new_master_of, master)
    await asyncio.to_thread(cluster.wait_ok)  # every node's view has the new master (the next test reads it)


async def _once_answered(read: Callable[[], Awaitable[Any]]) -> Any:
    """`read()` once the client's slot map no longer names the dead master."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    for _ in range(100):
        try:
            return await read()
        except RedisConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the promoted replica never answered")


def _waits(p: Pipeline, timeout_ms: int) -> None:
    """Replica waits with this bound.  Across a kill: 5 s, well beyond it (tens of
    milliseconds after the write is seen), so that a loaded machine cannot let the wait
    end short, and the write be acknowledged, before the master dies.  Otherwise 200 ms:
    a master promoted by an earlier test has no replica, and each wait on it takes its
    bound."""
    from gateway.store.replication import ReplicaWaits

    p.ledger.replica_waits = ReplicaWaits(p.redis, timeout_ms=timeout_ms)


@pytest.mark.slow
@on_asyncio
async def test_index_entries_survive_their_master_killed_before_its_replica_had_them(
        failover_cluster: Any, failover_url: str) -> None:
    """A real failover: the master of a message id's index partition is SIGKILLed after
    it took the index entry and before its replica had it; the replica is promoted.  With
    push.delivery_wait_replicas 1 the submit waited for that replica, so the kill fails
    the wait, the submit is held and writes its entry again on the promoted replica, and
    the receipt finds it: delivered.  Without the wait the submit was recorded at once,
    the entry died with the master, and the receipt was parked for ever (the notification
    stayed submitted)."""
    from gateway.store.bridge import wait_deferred

    cluster = failover_cluster
    async with pipeline(failover_url, partitions=PARTITIONS) as p:
        p.ledger.receipt_wait_replicas = 1
        p.writer.backoff_max_seconds = 0.5  # retried soon after the promotion (5 s by default)
        _waits(p, 200)

        def index_key(k: int) -> str:  # the scripted carrier numbers its message ids in submit order
            return p.keys.message_id("cmcc", canonical_message_id(f"CMCC{k:08X}"))

        topology = _Topology(cluster, p.redis)
        k = int(topology.first_with_a_replica((str(k) for k in range(1, 200)), lambda k: index_key(int(k))))
        master = topology.master_of(index_key(k))
        # k notifications, none of them on that master: the k-th submitted is indexed there.
        ids = [n for n in (f"f{i}" for i in range(2000)) if topology.master_of(p.keys.notification(n)) != master][:k]
        await p.accept(*(code(n, to=f"139{j:08d}") for j, n in enumerate(ids)))
        _waits(p, 5_000)
        assert await p.dispatcher.dispatch_once() == k
        indexed = p.links[0].submitted[k - 1].reference
        await _master_killed_once_it_has(cluster, master, ("get", index_key(k)), f"{indexed} 0")
        _waits(p, 200)
        await asyncio.wait_for(p.writer.flushed(), 60)
        assert await _once_answered(lambda: p.redis.get(index_key(k))) == f"{indexed} 0"
        assert await p.state(indexed) == "submitted"
        await wait_deferred(p.receipts.record_receipt(receipt(f"CMCC{k:08X}")))
        assert await p.state(indexed) == "delivered"


@pytest.mark.slow
@on_asyncio
async def test_a_receipt_acknowledged_survives_its_master_killed_before_its_replica_had_it(
        failover_cluster: Any, failover_url: str) -> None:
    """A real failover: the master of a notification's partition is SIGKILLed after it
    recorded the receipt and before its replica had it; the replica is promoted.  With
    push.delivery_wait_replicas 1 the receipt was not yet acknowledged: the kill fails the
    wait, the carrier is refused and delivers it again, and the promoted replica records
    it.  Without the wait the carrier was told it was recorded, and it died with the
    master (the notification stayed submitted, and later unconfirmed)."""
    from gateway.store.bridge import wait_deferred
    from gateway.store.refusals import is_unavailable

    cluster = failover_cluster
    async with pipeline(failover_url, partitions=PARTITIONS) as p:
        p.ledger.receipt_wait_replicas = 1
        _waits(p, 200)
        notification = _Topology(cluster, p.redis).first_with_a_replica((f"r{i}" for i in range(200)),
                                                                        p.keys.notification)
        await p.accept(code(notification))
        await p.dispatch_all()
        assert await p.state(notification) == "submitted"
        master = cluster.owner_of(p.redis.keyslot(p.keys.notification(notification)))
        _waits(p, 5_000)
        recorded = asyncio.ensure_future(wait_deferred(p.receipts.record_receipt(receipt("CMCC00000001"))))
        await _master_killed_once_it_has(cluster, master, ("hget", p.keys.notification(notification), "state"),
                                         "delivered")
        with pytest.raises(Exception) as refused:
            await asyncio.wait_for(recorded, 30)
        assert is_unavailable(refused.value), refused.value
        _waits(p, 200)
        # The record died with its master.
        assert await _once_answered(lambda: p.state(notification)) == "submitted"
        await wait_deferred(p.receipts.record_receipt(receipt("CMCC00000001")))  # delivered again
        assert await p.state(notification) == "delivered"


@pytest.mark.slow
@on_asyncio
async def test_an_accepted_notification_survives_its_master_killed_before_its_replica_had_it(
        failover_cluster: Any, failover_url: str) -> None:
    """A real failover: the master of a notification's partition is SIGKILLed after it
    recorded the notification and before its replica had it.  With
    push.intake_wait_replicas 1 the caller was not yet told it was accepted: the kill
    fails the acceptance (HTTP answers 503, the caller sends it again) and the promoted
    replica accepts it once.  Without the wait the caller had its acceptance, and the
    notification died with the master."""
    from gateway.store.refusals import is_unavailable

    cluster = failover_cluster
    async with pipeline(failover_url, partitions=PARTITIONS) as p:
        p.ledger.wait_replicas = 1
        notification = _Topology(cluster, p.redis).first_with_a_replica((f"i{i}" for i in range(200)),
                                                                        p.keys.notification)
        assert await p.redis.exists(p.keys.notification(notification)) == 0  # the client knows the slots
        master = cluster.owner_of(p.redis.keyslot(p.keys.notification(notification)))
        _waits(p, 5_000)
        accepted = asyncio.ensure_future(p.accept(code(notification)))
        await _master_killed_once_it_has(cluster, master, ("hget", p.keys.notification(notification), "state"),
                                         "queued")
        with pytest.raises(Exception) as refused:
            await asyncio.wait_for(accepted, 30)
        assert is_unavailable(refused.value), refused.value
        # It died with its master.
        assert await _once_answered(lambda: p.redis.exists(p.keys.notification(notification))) == 0
        _waits(p, 200)
        assert [o.state for o in await p.accept(code(notification))] == ["queued"]  # sent again: accepted once


@pytest.mark.slow
@on_asyncio
async def test_a_citizens_message_survives_its_master_killed_before_its_replica_had_it(
        failover_cluster: Any, failover_url: str) -> None:
    """A real failover: the master of a citizen's MO stream is SIGKILLed after it took the
    MO and before its replica had it.  With push.delivery_wait_replicas 1 the SMSC was not
    yet answered: the kill fails the recording (an error status), the SMSC delivers the
    MO again, and the promoted replica has it once.  Without the wait the SMSC was told
    it was recorded, and the citizen's message died with the master."""
    from gateway.ports import MobileOriginated
    from gateway.privacy import PhoneNumber
    from gateway.push.mo import MoRecorder
    from gateway.store.bridge import wait_deferred
    from gateway.store.refusals import is_unavailable
    from gateway.store.replication import ReplicaWaits

    cluster = failover_cluster
    async with pipeline(failover_url, partitions=PARTITIONS) as p:
        sender = _Topology(cluster, p.redis).first_with_a_replica((f"139{i:08d}" for i in range(200)),
                                                                  p.keys.mo_stream_of)
        recorder = MoRecorder(p.redis, p.keys, lambda: 1_700_000_000.0, wait_replicas=1)
        recorder.replica_waits = ReplicaWaits(p.redis, timeout_ms=5_000)  # well beyond the kill
        stream = p.keys.mo_stream_of(sender)
        assert await p.redis.xlen(stream) == 0  # the client knows the slots (see failover_url)
        master = cluster.owner_of(p.redis.keyslot(stream))
        texted = MobileOriginated("cmcc", PhoneNumber(sender), "12123", "QX 1234", 5.0)
        recorded = asyncio.ensure_future(wait_deferred(recorder.record_mo(texted)))
        await _master_killed_once_it_has(cluster, master, ("xlen", stream), "1")
        with pytest.raises(Exception) as refused:
            await asyncio.wait_for(recorded, 30)
        assert is_unavailable(refused.value), refused.value
        assert await _once_answered(lambda: p.redis.xlen(stream)) == 0  # it died with its master
        recorder.replica_waits = ReplicaWaits(p.redis, timeout_ms=200)
        await wait_deferred(recorder.record_mo(texted))  # the SMSC delivers it again
        assert [fields["text"] for _, fields in await p.redis.xrange(stream)] == ["QX 1234"]


@on_asyncio
async def test_a_citizens_message_waits_for_a_replica_of_its_master_when_asked(redis_cluster: object,
                                                                              redis_cluster_url: str) -> None:
    """push.delivery_wait_replicas 1: an MO is reported recorded (the SMSC then forgets
    it) once a replica of its stream's master has it; with the replica stopped, after the
    bound, counted; a master lost meanwhile fails the recording (the SMSC delivers it
    again)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from gateway.ports import MobileOriginated
    from gateway.privacy import PhoneNumber
    from gateway.push.mo import MoRecorder, mo_replication_short
    from gateway.store.bridge import wait_deferred
    from gateway.store.local_cluster import LocalRedisCluster
    from gateway.store.replication import ReplicaWaits

    assert isinstance(redis_cluster, LocalRedisCluster)
    sender = "13900000009"
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        recorder = MoRecorder(p.redis, p.keys, lambda: 1_700_000_000.0, wait_replicas=1)
        stream = p.keys.mo_stream_of(sender)
        short = mo_replication_short._value.get()

        def texted(text: str) -> MobileOriginated:
            return MobileOriginated("cmcc", PhoneNumber(sender), "12123", text, 5.0)

        await wait_deferred(recorder.record_mo(texted("CXYY")))
        assert mo_replication_short._value.get() == short
        master = redis_cluster.owner_of(p.redis.keyslot(stream))
        (replica,) = redis_cluster.replicas_of(master)
        with redis_cluster.paused(replica):
            await wait_deferred(recorder.record_mo(texted("CXJF")))
        assert mo_replication_short._value.get() == short + 1

        # Held off after that shortfall: the next one is acknowledged at once, counted.
        started = time.monotonic()
        await wait_deferred(recorder.record_mo(texted("CXJF")))
        assert time.monotonic() - started < 0.5
        assert mo_replication_short._value.get() == short + 2

        recorder.replica_waits = ReplicaWaits(p.redis, hold_off_seconds=0)
        with _master_lost_while_waiting(), pytest.raises(RedisConnectionError):
            await wait_deferred(recorder.record_mo(texted("CXWF")))
        assert [fields["text"] for _, fields in await p.redis.xrange(stream)] == ["CXYY", "CXJF", "CXJF", "CXWF"]
