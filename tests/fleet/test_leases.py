"""Bind leases and call slots (lease.lua) on a real redis-server."""

from __future__ import annotations

import asyncio

from twisted.internet import reactor

from gateway.fleet.leases import (
    BindLeases,
    CallSlots,
    LeaseTable,
    bind_leases_key,
    call_slots_key,
    trunk_id,
)
from gateway.store.bridge import wait_deferred
from tests.aio import on_asyncio, redis_client


async def eventually(condition: object, timeout_seconds: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout_seconds
    while not condition():  # type: ignore[operator]
        assert reactor.seconds() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_keys_carry_one_hash_tag_per_account_or_trunk() -> None:
    """Every lease key is hash-tagged by its account or trunk (one Cluster slot each)."""
    assert bind_leases_key("12123:", "cmcc") == "12123:{acct:cmcc}:binds"
    assert trunk_id("PJSIP/{number}@carrier-trunk") == "PJSIP-carrier-trunk"
    assert call_slots_key("12123:", "PJSIP-carrier-trunk") == "12123:{trunk:PJSIP-carrier-trunk}:calls"


@on_asyncio
async def test_at_most_max_holders_and_a_dead_holders_place_frees_after_its_lease(redis_url: str) -> None:
    """Two places: the third asker is refused until a holder stops renewing; then its
    place frees after the lease time and the third gets it."""
    async with redis_client(redis_url) as redis:
        # 1.5 s: "a" renews every 0.1 s and must not lapse on a loaded machine.
        table = LeaseTable(redis, bind_leases_key("12123:", "cmcc"), limit=2, lease_seconds=1.5)
        assert await table.acquire("a") and await table.acquire("b")
        assert not await table.acquire("c")
        assert await table.acquire("a")  # ours already: renewed, not a second place
        assert sorted(await table.holders()) == ["a", "b"]
        # "a" keeps renewing, "b" died.
        deadline = reactor.seconds() + 10
        while not await table.acquire("c"):
            assert reactor.seconds() < deadline
            assert await table.renew("a")
            await asyncio.sleep(0.1)
        assert sorted(await table.holders()) == ["a", "c"]
        assert not await table.renew("b")  # expired: not "b"'s any more
        await table.release("a")
        assert await table.acquire("d")


@on_asyncio
async def test_a_lapsed_lease_is_renewed_while_its_place_is_free(redis_url: str) -> None:
    """Redis's clock stepping forward (a failover to a host a minute ahead) makes every
    lease look lapsed at once, its holders alive: renewing them gives each its place
    back, while a place another took meanwhile stays taken (before: every renewal was
    refused, and every bind of the fleet unbound with submits on the wire)."""
    async with redis_client(redis_url) as redis:
        table = LeaseTable(redis, bind_leases_key("12123:", "step"), limit=2, lease_seconds=30)
        assert await table.acquire("a") and await table.acquire("b")
        await redis.zadd(table.key, {"a": 1, "b": 1})  # both a minute and more behind Redis's clock now
        assert await table.renew("a")
        assert await table.acquire("c")  # b's lapsed place, taken before b renewed
        assert not await table.renew("b")
        assert sorted(await table.holders()) == ["a", "c"]
        await redis.delete(table.key)  # or Redis lost the set: the holders come back
        assert await table.renew("c") and await table.renew("a")
        assert not await table.acquire("d")
        await redis.delete(table.key)


@on_asyncio
async def test_hold_counts_an_existing_call_whatever_the_limit(redis_url: str) -> None:
    """'hold' adds a holder past the limit (a call that exists must be counted)."""
    async with redis_client(redis_url) as redis:
        table = LeaseTable(redis, call_slots_key("12123:", "t"), limit=1, lease_seconds=5)
        assert await table.acquire("call-1")
        await table.hold("call-2")
        assert sorted(await table.holders()) == ["call-1", "call-2"]
        assert not await table.acquire("call-3")


@on_asyncio
async def test_bind_leases_renew_while_held_and_unbind_when_taken_over(redis_url: str) -> None:
    """A held bind lease outlives its lease time by renewals; once it is gone from Redis
    (taken over), the next renewal reports it lost."""
    async with redis_client(redis_url) as redis:
        lost: list[str] = []
        table = LeaseTable(redis, bind_leases_key("12123:", "cmcc"), limit=1, lease_seconds=1.5)
        leases = BindLeases(table, reactor, lost.append, account="cmcc")
        holder = leases.holder("cmcc-transceiver-0")
        assert await wait_deferred(leases.acquire(holder))
        await asyncio.sleep(3.2)  # more than two lease times
        assert await table.holders() == [holder] and lost == []
        other = LeaseTable(redis, table.key, limit=1, lease_seconds=1.5)
        assert not await other.acquire("elsewhere")
        await redis.delete(table.key)  # as if Redis lost it and another took the place
        assert await other.acquire("elsewhere")
        await eventually(lambda: lost == [holder])
        assert leases.held == []
        leases.stop()


@on_asyncio
async def test_bind_lease_fences_itself_when_redis_cannot_renew_it(redis_url: str) -> None:
    """With Redis unreachable, a held lease is given up before it would expire."""
    async with redis_client(redis_url) as redis:
        lost: list[str] = []
        table = LeaseTable(redis, bind_leases_key("12123:", "cmcc"), limit=1, lease_seconds=1.0)
        leases = BindLeases(table, reactor, lost.append, account="cmcc")
        assert await wait_deferred(leases.acquire("h"))
        started = reactor.seconds()
        async with redis_client("redis://127.0.0.1:1") as nowhere:
            table._redis, table._script = nowhere, None  # Redis gone
            await eventually(lambda: lost == ["h"], timeout_seconds=5)
        assert reactor.seconds() - started < 1.0  # before the lease time ran out
        leases.stop()


@on_asyncio
async def test_call_slots_free_on_release_and_renew_in_hold_mode(redis_url: str) -> None:
    """A call slot is refused when the trunk is full and given again once released."""
    async with redis_client(redis_url) as redis:
        table = LeaseTable(redis, call_slots_key("12123:", "t"), limit=1, lease_seconds=1.0)
        slots = CallSlots(table, reactor, trunk="t", owner="gw1-42")
        assert await slots.acquire("n1")
        assert not await slots.acquire("n2")
        await asyncio.sleep(2.2)  # renewed past two lease times
        assert await table.holders() == ["gw1-42:n1"]
        slots.release("n1")
        await eventually(lambda: True)
        deadline = reactor.seconds() + 5
        while not await slots.acquire("n2"):
            assert reactor.seconds() < deadline
            await asyncio.sleep(0.02)
        slots.stop()
