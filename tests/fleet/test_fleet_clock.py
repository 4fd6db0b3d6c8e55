"""The fleet clock (gateway/fleet/clock.py) on a real redis-server: the offset to Redis's
TIME, the round-trip bound, the warning, the service's first measurement.

A `Clock` stands for a host whose clock is wherever the test puts it; Redis's clock is
this machine's real one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
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


@on_asyncio
async def test_the_service_measures_at_start_then_every_interval(redis_url: str) -> None:
    async with redis_client(redis_url) as redis:
        fleet = FleetClock(redis, Keys().partition_members, reactor, interval_seconds=0.2)
        fleet.startService()
        try:
            deadline = time.monotonic() + 10
            while not fleet.synced:
                assert time.monotonic() < deadline, "no first measurement"
                await asyncio.sleep(0.02)
            assert fleet._loop is not None and fleet._loop.interval == 0.2
            fleet.offset = 42.0
            while fleet.offset == 42.0:
                assert time.monotonic() < deadline, "no second measurement"
                await asyncio.sleep(0.02)
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
                           interval_seconds=10)
        assert fleet.hold_seconds == 16
        await fleet.sync_once()
        host.advance(-0.5)  # within STEP_SECONDS: measurement noise, not a step
        with logged() as lines:
            await fleet.sync_once()
        assert lines == [] and not fleet.takeovers_held()
        before = steps("forward")
        host.advance(-60)  # the host's steady clock stands; Redis's is now 60 s further on
        with logged() as lines:
            await fleet.sync_once()
        assert abs(fleet.seconds() - time.time()) < 0.5  # followed
        assert len(lines) == 1 and "stepped 60.0 s forward" in lines[0] and "for 16 s" in lines[0]
        assert steps("forward") == before + 1
        assert fleet.takeovers_held() and takeovers_held(fleet)
        assert 15_000 < await redis.pttl(keys.clock_step) <= 16_000
        # Another process of the fleet, in time with the new clock: held by the marker.
        other = FleetClock(redis, keys.partition_members, reactor, step_key=keys.clock_step)
        assert not other.takeovers_held()
        await other.sync_once()
        assert other.takeovers_held()
        host.advance(15)
        assert fleet.takeovers_held()
        host.advance(1.5)
        assert not fleet.takeovers_held()
        # Without the shared key (tests, the CLI) the marker is neither read nor written.
        assert not takeovers_held(reactor)
        await redis.delete(keys.clock_step)


@on_asyncio
async def test_redis_clock_stepping_back_is_logged_and_holds_nothing(redis_url: str) -> None:
    keys = Keys()
    host = Clock()
    host.advance(time.time())
    async with redis_client(redis_url) as redis:
        await redis.delete(keys.clock_step)
        fleet = FleetClock(redis, keys.partition_members, host, step_key=keys.clock_step, wall=time.time)
        await fleet.sync_once()
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
