"""The fleet clock (gateway/fleet/clock.py) on a real redis-server: the offset to Redis's
TIME, the round-trip bound, the warning, the service's first measurement.

A `Clock` stands for a host whose clock is wherever the test puts it; Redis's clock is
this machine's real one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from gateway import metrics
from gateway.fleet import clock as fleet_clock_module
from gateway.fleet.clock import FleetClock, takeovers_held
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client


@contextmanager
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "gateway.fleet.clock":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


@on_asyncio
async def test_offset_moves_a_host_clock_onto_redis_time_and_timers_stay_local(redis_url: str) -> None:
    host = Clock()
    host.advance(time.time() + 60)  # a minute ahead
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, Keys().partition_members, host)
        assert not fleet.synced and fleet.seconds() == host.seconds()  # until measured: the host's
        with logged() as lines:
            assert await fleet.sync_once() is True
        assert fleet.synced
        assert abs(fleet.offset + 60) < 0.5
        assert abs(fleet.seconds() - time.time()) < 0.5
        assert ["ahead of Redis's" in line for line in lines] == [True]
        # Timers are the host reactor's: a delay means the same on either clock.
        fired: list[float] = []
        fleet.callLater(5, lambda: fired.append(fleet.seconds()))
        assert fleet.getDelayedCalls() == host.getDelayedCalls() and len(fired) == 0
        host.advance(5)
        assert len(fired) == 1
        # Still far at the next measurement: not logged again within WARN_INTERVAL_SECONDS.
        # (The 5 s this host's clock moved, Redis's did not: the offset moved back by as
        # much, said apart.)
        with logged() as lines:
            assert await fleet.sync_once() is True
        assert [line for line in lines if "stepped" not in line] == []


@on_asyncio
async def test_a_host_in_time_is_not_warned_about_and_behind_is_named(redis_url: str) -> None:
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, Keys().partition_members, reactor)
        with logged() as lines:
            assert await fleet.sync_once() is True
        assert abs(fleet.offset) < 0.5 and lines == []
        host = Clock()
        host.advance(time.time() - 90)
        behind = FleetClock(redis, Keys().partition_members, host)
        with logged() as lines:
            await behind.sync_once()
        assert abs(behind.offset - 90) < 0.5
        assert len(lines) == 1 and "90.0 s behind Redis's" in lines[0]


@on_asyncio
async def test_a_slow_answer_keeps_the_last_offset_but_the_first_is_taken_whatever(redis_url: str) -> None:
    """A round trip over MAX_ROUND_TRIP_SECONDS (Redis paused with CLIENT PAUSE) says
    little about where Redis's clock stands: dropped once an offset is known, taken when
    none is."""
    async with redis_client(redis_url) as redis, redis_client(redis_url) as admin:
        pause_ms = int(fleet_clock_module.MAX_ROUND_TRIP_SECONDS * 1000 * 3)
        fleet = FleetClock(redis, Keys().partition_members, reactor)
        await redis.ping()  # connected: the pause below delays the script, not the connect
        await admin.execute_command("CLIENT", "PAUSE", pause_ms, "ALL")
        assert await fleet.sync_once() is True  # first: taken, to within half its round trip
        assert fleet.synced and abs(fleet.offset) < pause_ms / 1000
        fleet.offset = 42.0
        await admin.execute_command("CLIENT", "PAUSE", pause_ms, "ALL")
        assert await fleet.sync_once() is False
        assert fleet.offset == 42.0
        assert await fleet.sync_once() is True and abs(fleet.offset) < 0.5


async def until(condition: Callable[[], bool], what: str, deadline: float) -> None:
    """Poll `condition` (the service measures on the real reactor) until `deadline`."""
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@on_asyncio
async def test_the_service_measures_at_start_then_every_interval(redis_url: str) -> None:
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, Keys().partition_members, reactor, interval_seconds=0.2)
        fleet.startService()
        try:
            deadline = time.monotonic() + 10
            await until(lambda: fleet.synced, "no first measurement", deadline)
            assert fleet._loop is not None and fleet._loop.interval == 0.2
            fleet.offset = 42.0
            await until(lambda: fleet.offset != 42.0, "no second measurement", deadline)
            assert abs(fleet.offset) < 0.5
        finally:
            fleet.stopService()


@on_asyncio
async def test_redis_away_keeps_the_host_clock_until_it_answers() -> None:
    from redis.asyncio import Redis

    from gateway.store.embedded import free_port

    away = Redis(port=free_port(), socket_connect_timeout=0.5)
    fleet = FleetClock(away, Keys().partition_members, reactor, interval_seconds=0.2)
    fleet.startService()
    try:
        await asyncio.sleep(0.6)  # two tries at FIRST_SYNC_RETRY_SECONDS, both refused
        assert not fleet.synced and fleet.offset == 0.0
        assert fleet._loop is not None and fleet._loop.running
    finally:
        fleet.stopService()
        await away.aclose()


@on_asyncio
async def test_a_host_clock_put_right_after_start_is_no_longer_warned_about_and_the_fleet_clock_holds(
        redis_url: str) -> None:
    """In the daemon the local clock is the reactor's steady one (gateway/reactor.py): a
    host that started a minute ahead and was then put right keeps its steady clock a
    minute ahead, so the offset stays; the host's own wall clock is right again, and the
    warning and the gauge say how far *it* is off."""
    def gauge() -> float:
        return float(metrics.REGISTRY.get_sample_value("gateway12123_clock_offset_seconds") or 0.0)

    steady = Clock()
    steady.advance(time.time() + 60)  # the wall clock at start, a minute ahead, plus elapsed time
    wall = [time.time() + 60]
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, Keys().partition_members, steady, wall=lambda: wall[0])
        with logged() as lines:
            await fleet.sync_once()
        assert ["60.0 s ahead of Redis's" in line for line in lines] == [True]
        assert abs(gauge() + 60) < 0.5
        wall[0] = time.time()  # NTP steps the host's clock back; the steady clock does not move
        fleet._warned_at = None  # not waiting out WARN_INTERVAL_SECONDS
        with logged() as lines:
            await fleet.sync_once()
        assert lines == []
        assert abs(fleet.host_offset) < 0.5 and abs(gauge()) < 0.5
        assert abs(fleet.offset + 60) < 0.5 and abs(fleet.seconds() - time.time()) < 0.5


# Intervals this short let a test wait for a settling measurement in real time (Redis's
# clock is this machine's), the test's host clock moved on by as much.
SHORT_INTERVAL = 0.2


async def settled(fleet: FleetClock, host: Clock) -> None:
    """The first measurement, and the one an interval (and the slack) later that settles
    a starting process (see gateway/fleet/clock.py)."""
    await fleet.sync_once()
    assert not fleet.settled
    wait = fleet.interval_seconds + fleet_clock_module.SETTLE_SLACK_SECONDS
    await asyncio.sleep(wait)
    host.advance(wait)
    await fleet.sync_once()
    assert fleet.settled


def steps(direction: str) -> float:
    return float(metrics.REGISTRY.get_sample_value("gateway12123_clock_steps_total", {"direction": direction}) or 0.0)


@on_asyncio
async def test_redis_clock_stepping_forward_holds_takeovers_for_a_lease_here_and_across_the_fleet(
        redis_url: str) -> None:
    """A failover to a replica on a host a minute ahead: between two measurements the
    offset grows by 60 s.  The fleet clock follows, and take-overs are held for the lease
    plus one interval, counted on this host's steady clock; the marker it sets holds a
    second process too, one that saw no step of its own (started after it).  Small
    changes are no step."""
    keys = Keys()
    host = Clock()
    host.advance(time.time())
    async with redis_client(redis_url) as redis:
        await redis.delete(keys.clock_step)
        fleet = FleetClock(redis, keys.partition_members, host, step_key=keys.clock_step, lease_seconds=6, wall=time.time,
                           interval_seconds=SHORT_INTERVAL)
        assert fleet.hold_seconds == 6 + SHORT_INTERVAL
        await settled(fleet, host)
        host.advance(-0.5)  # within STEP_SECONDS: measurement noise, not a step
        with logged() as lines:
            await fleet.sync_once()
        assert lines == [] and not fleet.takeovers_held()
        before = steps("forward")
        host.advance(-60)  # the host's steady clock stands; Redis's is now 60 s further on
        with logged() as lines:
            await fleet.sync_once()
        assert abs(fleet.seconds() - time.time()) < 0.5  # followed
        assert len(lines) == 1 and "stepped 60.0 s forward" in lines[0] and "for 6 s" in lines[0]
        assert steps("forward") == before + 1
        assert fleet.takeovers_held() and takeovers_held(fleet)
        assert 5_000 < await redis.pttl(keys.clock_step) <= 6_200
        # Another process of the fleet, in time with the new clock: held by the marker.
        other = FleetClock(redis, keys.partition_members, reactor, step_key=keys.clock_step)
        await other.sync_once()
        other._settles_after = None  # (its start settled: the next test)
        assert other.takeovers_held()
        host.advance(6)
        assert fleet.takeovers_held()
        host.advance(0.5)
        assert not fleet.takeovers_held()
        # Without the shared key (tests, the CLI) the marker is neither read nor written.
        assert not takeovers_held(reactor)
        await redis.delete(keys.clock_step)


@on_asyncio
async def test_a_process_started_just_after_a_step_holds_until_the_others_have_measured_it(redis_url: str) -> None:
    """Redis's clock steps forward; before the running process's next measurement a new
    process starts.  Its first measurement is on the new clock: no step of its own, and
    no marker yet.  It holds take-overs until a measurement an interval later, which
    reads the marker the running process set meanwhile; without a step it then holds
    nothing."""
    keys = Keys()
    running_host, new_host = Clock(), Clock()
    running_host.advance(time.time())
    new_host.advance(time.time())
    async with redis_client(redis_url) as redis:
        await redis.delete(keys.clock_step)
        running = FleetClock(redis, keys.partition_members, running_host, step_key=keys.clock_step,
                             lease_seconds=6, wall=time.time, interval_seconds=SHORT_INTERVAL)
        await settled(running, running_host)
        running_host.advance(-60)  # Redis's clock steps 60 s forward, unseen so far
        new = FleetClock(redis, keys.partition_members, new_host, step_key=keys.clock_step, lease_seconds=6,
                         wall=time.time, interval_seconds=SHORT_INTERVAL)
        assert new.takeovers_held() and not new.settled  # before any measurement
        assert new.status() == {"host_offset_seconds": None, "takeovers_held": "starting"}  # for operators
        with logged() as lines:
            await new.sync_once()
        assert lines == [] and await redis.exists(keys.clock_step) == 0  # nothing seen yet
        assert new.takeovers_held() and not new.settled
        assert new.status()["takeovers_held"] == "starting" and abs(new.status()["host_offset_seconds"]) < 0.5
        new_host.advance(SHORT_INTERVAL)  # short of the interval and its slack: not settling
        await new.sync_once()
        assert new.takeovers_held() and not new.settled
        await running.sync_once()  # the running process sees the step and sets the marker
        assert running.takeovers_held()
        await asyncio.sleep(fleet_clock_module.SETTLE_SLACK_SECONDS)
        new_host.advance(fleet_clock_module.SETTLE_SLACK_SECONDS)
        await new.sync_once()
        assert new.settled and new.takeovers_held()  # now by the marker
        assert new.status()["takeovers_held"] == "redis_clock_stepped"
        new_host.advance(6 + SHORT_INTERVAL)
        assert not new.takeovers_held() and new.status()["takeovers_held"] is None
        # No step: settled, it holds nothing.
        await redis.delete(keys.clock_step)
        calm = FleetClock(redis, keys.partition_members, new_host, step_key=keys.clock_step, wall=time.time,
                          interval_seconds=SHORT_INTERVAL)
        await settled(calm, new_host)
        assert not calm.takeovers_held()
        # Without the fleet's marker (tests, the CLI) there is nothing to wait for.
        assert not FleetClock(redis, keys.partition_members, new_host).takeovers_held()


@on_asyncio
async def test_the_service_asks_for_the_settling_measurement(redis_url: str) -> None:
    """The regular measurements run every interval from the loop's start and may fall just
    short of settling; the service asks for one an interval and the slack after the first."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, keys.partition_members, reactor, step_key=keys.clock_step, interval_seconds=0.3)
        fleet.startService()
        try:
            deadline = time.monotonic() + 10
            await until(lambda: fleet.synced, "no first measurement", deadline)
            first = time.monotonic()
            assert fleet.takeovers_held()
            await until(lambda: fleet.settled, "not settled", deadline)
            assert time.monotonic() - first >= 0.3 + fleet_clock_module.SETTLE_SLACK_SECONDS - 0.05
            assert not fleet.takeovers_held()
        finally:
            fleet.stopService()
        assert fleet._settling_call is not None and not fleet._settling_call.active()


@on_asyncio
async def test_redis_clock_stepping_back_is_logged_and_holds_nothing(redis_url: str) -> None:
    keys = Keys()
    host = Clock()
    host.advance(time.time())
    async with redis_client(redis_url) as redis:
        await redis.delete(keys.clock_step)
        fleet = FleetClock(redis, keys.partition_members, host, step_key=keys.clock_step, wall=time.time,
                           interval_seconds=SHORT_INTERVAL)
        await settled(fleet, host)
        before = steps("back")
        host.advance(30)  # Redis's clock is now 30 s behind where it was
        with logged() as lines:
            await fleet.sync_once()
        assert len(lines) == 1 and "stepped 30.0 s back" in lines[0]
        assert steps("back") == before + 1
        assert not fleet.takeovers_held() and await redis.exists(keys.clock_step) == 0


def test_the_step_marker_is_on_the_members_keys_slot_whatever_the_prefix() -> None:
    """time.lua reads both keys in one script: on a Cluster they must share a slot."""
    from redis.crc import key_slot

    for prefix in ("12123:", "gw:{fleet}:", "odd{:"):
        keys = Keys(prefix=prefix)
        assert key_slot(keys.clock_step.encode()) == key_slot(keys.partition_members.encode()), prefix
    assert Keys().clock_step == "{12123:members}:clock-step"
