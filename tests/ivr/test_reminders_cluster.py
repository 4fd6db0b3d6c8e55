"""Voice reminders on a real Redis Cluster (3 masters, 3 replicas) with 16 partitions:
the push pipeline's ledger hands voice notifications to their partitions' voice streams,
two gateway processes (two VoiceReminders, each with its own AMI session to the repo's
AMI server peer, tests/peers/ami_server.py) share them, each reminder is dialled once;
a process whose call lease runs out has that call taken over by the other, which follows
it to its end, still with one Originate and one report."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from gateway.ivr.ami_client import AmiClientService
from gateway.ivr.reminders import ReminderOptions, VoiceReminders
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio
from tests.peers.ami_server import AmiServer, Outcome, default_user, listen
from tests.push.harness import Pipeline, code, pipeline

PARTITIONS = 16
NOON = 1772424000.0  # 2026-03-02 12:00 Asia/Shanghai: outside quiet hours


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Process:
    """One gateway process's voice part: its AMI session and its VoiceReminders."""

    def __init__(self, p: Pipeline, ami_port: int, name: str, wall: WallClock, **options: Any) -> None:
        self.ami = AmiClientService(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ami_port), username="gateway12123", secret="s3cret",
            clock=reactor, md5_challenge=True, reconnect_initial_seconds=0.01, reconnect_max_seconds=0.05,
            jitter=lambda: 0.0)
        settings: dict[str, Any] = dict(read_block_ms=50, retry_delay_seconds=0.0, reconcile_grace_seconds=0.05,
                                        consumer_name=name, quiet_hours_start="00:00", quiet_hours_end="00:00")
        settings.update(options)
        self.reminders = VoiceReminders(p.redis, p.keys, self.ami, p.ledger, ReminderOptions(**settings),
                                        clock=reactor, wall_clock=wall)

    async def start(self) -> None:
        self.ami.startService()
        await wait_deferred(self.ami.whenConnected(failAfterFailures=1))
        self.reminders.startService()

    async def stop(self) -> None:
        if self.reminders.running:
            await wait_deferred(self.reminders.stopService())
        if self.ami.running:
            await wait_deferred(self.ami.stopService())


async def poll(condition: Any, seconds: float = 20.0) -> None:
    deadline = reactor.seconds() + seconds
    while not await condition():
        assert reactor.seconds() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@on_asyncio
async def test_reminders_of_many_partitions_are_dialled_once_each_by_two_processes(redis_cluster_url: str) -> None:
    """24 voice notifications accepted through the ledger land in the voice streams of
    their partitions (ledger.lua request_voice); two processes share them: each number is
    called once and each notification ends delivered, and every voice key carries the tag
    of its notification's partition."""
    server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=reactor)
    port = listen(server, reactor)
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        wall = WallClock(NOON)
        processes = [Process(p, port.getHost().port, name, wall) for name in ("gw-a", "gw-b")]
        # Initialise the fresh cluster client before two processes' loops and the intake use
        # it at once: concurrent first commands of a new redis-py RedisCluster failed with
        # "Connection closed by server" in 3 of 4 runs (after a fresh cluster), 0 of 5 with this.
        await p.redis.initialize()
        try:
            for process in processes:
                await process.start()
            ids = [f"v{i}" for i in range(24)]
            outcomes = await p.accept(*(code(i, to=f"139{n:08d}", channel="voice") for n, i in enumerate(ids)))
            assert {o.state for o in outcomes} == {"submitted"}
            used = {p.keys.partition_of(i) for i in ids}
            assert len(used) >= 8

            async def all_delivered() -> bool:
                return all([await p.state(i) == "delivered" for i in ids])

            await poll(all_delivered)
            for i in ids:
                assert len(server.originates_with("NOTIFICATION_ID", i)) == 1, i
                assert (await p.ledger.raw(i))["call_outcome"] == "heard"
            callers = {await p.redis.hget(p.keys.call(f"rem-{i}-1"), "owner") for i in ids}
            assert callers <= {"gw-a", "gw-b"}
            voice_keys = [k for k in await p.redis.keys("*", target_nodes="primaries") if re.search(r":(voice-|call:)", k)]
            assert voice_keys
            for key in voice_keys:
                match = re.match(r"^12123:\{p(\d+)\}:(voice-reminder:|call:rem-)(v\d+)", key)
                if match:
                    assert int(match.group(1)) == p.keys.partition_of(match.group(3)), key
                else:
                    assert re.match(r"^12123:\{p(\d+)\}:voice-(due|calls-open|requests)$", key), key
            for part in p.keys.all_partitions:
                assert await p.redis.zcard(part.voice_calls_open) == 0
                assert await p.redis.zcard(part.voice_due) == 0
        finally:
            for process in processes:
                await process.stop()
            await wait_deferred(port.stopListening())


@on_asyncio
async def test_a_call_whose_lease_ran_out_is_taken_over_and_reported_once(redis_cluster_url: str) -> None:
    """Process a starts a call and goes silent (its AMI session gone, its clock behind);
    once a's lease has run out process b takes the call over, finds it ringing by Status,
    follows it to its end and reports it; a, seeing the call is no longer its, drops it.
    One Originate, one delivered transition."""
    server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=reactor)
    port = listen(server, reactor)
    number = "13912340000"
    server.script(number, Outcome.ANSWER_HEARD, hold="ringing")
    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        lease = 1.0
        a = Process(p, port.getHost().port, "gw-a", WallClock(NOON), call_lease_seconds=lease)
        b = Process(p, port.getHost().port, "gw-b", WallClock(NOON + lease + 1), call_lease_seconds=lease)
        try:
            await a.start()
            await p.accept(code("t1", to=number, channel="voice"))
            await wait_deferred(server.wait_for_originates(1).addTimeout(10, reactor))
            await wait_deferred(a.ami.stopService())  # a hears nothing more from Asterisk
            status = server.wait_for_action("Status")
            await b.start()
            await wait_deferred(status.addTimeout(10, reactor))
            assert await p.redis.hget(p.keys.call("rem-t1-1"), "owner") == "gw-b"

            async def a_dropped_it() -> bool:
                return a.reminders.open_calls == 0
            await poll(a_dropped_it)
            server.proceed(number)

            async def delivered() -> bool:
                return await p.state("t1") == "delivered"
            await poll(delivered)
            assert len(server.originates_with("NOTIFICATION_ID", "t1")) == 1
            events = [f["type"] for _, f in await p.redis.xrange(p.keys.partition(p.keys.partition_of("t1")).events_stream)
                      if f.get("id") == "t1"]
            assert events.count("notification.delivered") == 1
            assert await p.redis.zcard(p.keys.partition(p.keys.partition_of("t1")).voice_calls_open) == 0
        finally:
            for process in (a, b):
                await process.stop()
            await wait_deferred(port.stopListening())


@on_asyncio
async def test_the_fleet_queue_view_sums_the_voice_keys_of_every_partition(redis_cluster_url: str) -> None:
    """gateway/ops/fleet.py read_queues (console, `gateway status`): reminders waiting and
    calls open over the 16 partitions' voice keys."""
    from gateway.ops.fleet import read_queues

    async with pipeline(redis_cluster_url, partitions=PARTITIONS) as p:
        await p.redis.zadd(p.keys.partition(3).voice_due, {"a": NOON})
        await p.redis.zadd(p.keys.partition(9).voice_due, {"b": NOON})
        await p.redis.zadd(p.keys.partition(5).voice_calls_open, {"rem-c-1": NOON})
        queues = await read_queues(p.redis, p.keys, now=NOON)
        assert (queues["voice_reminders_queued"], queues["voice_calls_open"]) == (2, 1)
