"""Fleet-wide concurrent calls on a trunk: two reminder services ("processes"), each with its
own AMI server peer, share call slots in one real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gateway.fleet.leases import CallSlots, LeaseTable, call_slots_key, trunk_id
from gateway.ivr.reminders import VoiceReminders
from gateway.store.bridge import as_deferred, wait_deferred
from tests.aio import on_asyncio
from tests.ivr.test_reminders import Harness, wait
from tests.peers.ami_server import Outcome

TRUNK = trunk_id("PJSIP/{number}@carrier-trunk")


class FleetHarness(Harness):
    """A reminder service with fleet-wide call slots (as build_voice_reminders makes it)."""

    trunk_max_calls = 2
    lease_seconds = 30.0

    def new_reminders(self) -> VoiceReminders:
        self.table = LeaseTable(self.redis, call_slots_key(self.keys.prefix, TRUNK), self.trunk_max_calls,
                                self.lease_seconds)
        self.slots = CallSlots(self.table, reactor, trunk=TRUNK, owner=self.options.consumer_name)
        self.slots.retry_seconds = 0.2
        return VoiceReminders(self.redis, self.keys, self.ami, self.ledger, self.options, clock=reactor,
                              wall_clock=self.wall, call_slots=self.slots)

    async def stop(self) -> None:
        self.slots.stop()
        await super().stop()


@pytest.fixture
def fleet(redis_url: str) -> Any:
    made: list[FleetHarness] = []

    def make(name: str, **options: Any) -> FleetHarness:
        made.append(FleetHarness(redis_url, consumer_name=name, **options))
        return made[-1]

    yield make
    for harness in made:
        pytest_twisted.blockon(as_deferred(harness.stop()))


def live_calls(*harnesses: FleetHarness) -> int:
    return sum(len(h.server.held()) for h in harnesses)


async def until(condition: Any, timeout_seconds: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout_seconds
    while not condition():
        assert reactor.seconds() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@on_asyncio
async def test_two_processes_never_hold_more_calls_than_the_trunk_carries(fleet: Any) -> None:
    """trunk_max_calls 2 over two processes (5 calls each allowed locally): two calls ring
    at once, the others wait for a slot and start when a call ends; all are heard."""
    first, second = fleet("p1", max_concurrent_calls=5), fleet("p2", max_concurrent_calls=5)
    numbers = {f"v{i}": f"1380000000{i}" for i in range(4)}
    for h in (first, second):
        for number in numbers.values():
            h.server.script(number, Outcome.ANSWER_HEARD, hold="answered")
    await first.start()
    await second.start()
    finished = {i: (first.reminders.when_finished(i), second.reminders.when_finished(i)) for i in numbers}
    for notification_id, number in numbers.items():
        await first.request(notification_id, to=number)
    await until(lambda: live_calls(first, second) == 2)
    for _ in range(10):  # both keep dispatching meanwhile (retry every 0.2 s)
        await wait_deferred(first.reminders.dispatch())
        await wait_deferred(second.reminders.dispatch())
        assert live_calls(first, second) == 2
        await asyncio.sleep(0.05)
    assert len(await first.table.holders()) == 2
    heard = 0
    while heard < len(numbers):
        await until(lambda: live_calls(first, second) > 0)
        assert live_calls(first, second) <= 2
        h = first if first.server.held() else second
        h.server.proceed(h.server.held()[0])
        heard += 1
        await asyncio.sleep(0.05)
    for pair in finished.values():
        outcome = await wait(_either(*pair), 15)
        assert outcome == "heard"
    assert len(first.server.originates) + len(second.server.originates) == 4
    await until(lambda: not first.slots.held and not second.slots.held)


@on_asyncio
async def test_a_dead_process_call_slot_frees_after_its_lease(fleet: Any) -> None:
    """A slot held by a process that died (never renewed) blocks the trunk only until its
    lease lapses; then the waiting reminder is called."""
    h = fleet("p1")
    h.table.limit = 1
    dead = LeaseTable(h.redis, h.table.key, 1, lease_seconds=1.0)
    assert await dead.acquire("dead-process-call")
    await h.start()
    finished = h.reminders.when_finished("w1")
    await h.request("w1")
    await asyncio.sleep(0.3)
    assert h.server.originates == []  # the trunk is full
    assert await wait(finished, 10) == "heard"
    assert len(h.server.originates) == 1


def _either(a: Any, b: Any) -> Any:
    from twisted.internet.defer import DeferredList

    return DeferredList([a, b], fireOnOneCallback=True, consumeErrors=True).addCallback(lambda r: r[0])
