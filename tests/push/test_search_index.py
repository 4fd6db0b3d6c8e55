"""The operators' search index on a real redis-server: found by number and batch, newest
first, in a few commands per batch, with no phone number in any key or member."""

from __future__ import annotations

from gateway.push.index import SearchIndex, ids_for_number
from gateway.push.state import AcceptItem, AcceptOutcome
from gateway.store.keys import Keys
from tests.aio import on_asyncio, redis_client

DAY = 86_400.0


def _accepted(*rows: tuple[str, str, str]) -> tuple[list[AcceptItem], list[AcceptOutcome]]:
    items = [AcceptItem(id=i, type="points_reached_9", disposition="queue", lane="normal",
                        fields={"to": to, **({"batch": batch} if batch else {})}) for i, to, batch in rows]
    return items, [AcceptOutcome(item.id, "queued", False) for item in items]


@on_asyncio
async def test_a_number_is_found_newest_first_across_days_and_only_its_own(redis_url: str) -> None:
    """Three days of notifications: a number's ids come newest first, limited, without the
    other numbers'; the batch index lists its batch; keys and members hold no number."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        start = 20_000 * DAY
        await index.record(*_accepted(("a1", "13800138000", "b1"), ("x1", "13900139000", "b1")), start)
        await index.record(*_accepted(("a2", "13800138000", "")), start + DAY + 5)
        await index.record(*_accepted(("a3", "13800138000", "b2")), start + 2 * DAY + 9)
        await index.record(*_accepted(("a4", "13800138000", "")), start + 2 * DAY + 10)
        assert await ids_for_number(redis, keys, "13800138000", 10) == ["a4", "a3", "a2", "a1"]
        assert await ids_for_number(redis, keys, "13800138000", 3) == ["a4", "a3", "a2"]
        assert await ids_for_number(redis, keys, "13900139000", 10) == ["x1"]
        assert await ids_for_number(redis, keys, "13700137000", 10) == []
        assert await redis.zrange(keys.batch("b1"), 0, -1) == ["a1", "x1"]
        names = [name async for name in redis.scan_iter("*")]
        members = [m for day in await redis.zrange(keys.phone_index_days, 0, -1)
                   for m in await redis.zrange(keys.phone_index(int(day)), 0, -1)]
        assert not [t for t in names + members if "13800138000" in t or "0013" in t]


@on_asyncio
async def test_index_days_past_the_retention_are_forgotten(redis_url: str) -> None:
    """The list of index days keeps the retention (plus a day), so a search never walks
    days whose keys have expired."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=2 * DAY)
        start = 20_000 * DAY
        for n in range(6):
            await index.record(*_accepted((f"d{n}", "13800138000", "")), start + n * DAY)
        days = [int(d) for d in await redis.zrange(keys.phone_index_days, 0, -1)]
        assert days == [20_002, 20_003, 20_004, 20_005]
        assert 0 < await redis.ttl(keys.phone_index(20_005)) <= 3 * DAY


@on_asyncio
async def test_a_batch_of_notifications_costs_a_few_commands_not_two_per_notification(redis_url: str) -> None:
    """500 notifications to 500 numbers in one batch: the index is written with a constant
    number of Redis commands (it was a ZADD and an EXPIRE per notification)."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        await redis.config_resetstat()
        await index.record(*_accepted(*((f"n{i}", f"138{i:08d}", "bulk-1") for i in range(500))), 20_000 * DAY)
        stats = await redis.info("commandstats")
        calls = sum(v["calls"] for k, v in stats.items() if k.split("_", 1)[1] in ("zadd", "expire", "zremrangebyscore"))
        assert calls <= 6
        assert len(await ids_for_number(redis, keys, "13800000499", 5)) == 1
