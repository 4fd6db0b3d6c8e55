"""The operators' search index on a real redis-server: found by number and batch, newest
first, in a few commands per batch, with no phone number in any key or member."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from gateway.push.index import (
    LAST_UNBUCKETED_DAY,
    PAUSE_AFTER_FAILURE_SECONDS,
    PHONE_INDEX_BUCKETS,
    REASSERT_SECONDS,
    SearchIndex,
    ids_for_number,
    phone_digest,
)
from gateway.push.state import AcceptItem, AcceptOutcome
from gateway.store.keys import Keys
from gateway.store.local_cluster import LocalRedisCluster
from gateway.store.local_cluster import command as cluster_command
from tests.aio import on_asyncio, redis_client
from tests.push.harness import CMCC_NUMBER, CUCC_NUMBER, MORNING, code, connect, pipeline

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
                   for bucket in "0123456789abcdef"
                   for m in await redis.zrange(keys.phone_index(int(day), bucket), 0, -1)]
        assert len(members) == 5
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
        bucket = phone_digest(keys, "13800138000")[0]
        assert 0 < await redis.ttl(keys.phone_index(20_005, bucket)) <= 3 * DAY


async def _index_calls(redis: Any) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
            for name in ("zadd", "expire", "zremrangebyscore")}


@on_asyncio
async def test_a_batch_of_notifications_costs_a_few_commands_not_two_per_notification(redis_url: str) -> None:
    """500 notifications to 500 numbers in one batch: the index is written with a constant
    number of Redis commands (it was a ZADD and an EXPIRE per notification): a ZADD per
    digest bucket, and the keys' EXPIREs and the days list once; the next batch of the
    same day writes its ZADDs only."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        await redis.config_resetstat()
        await index.record(*_accepted(*((f"n{i}", f"138{i:08d}", "bulk-1") for i in range(500))), 20_000 * DAY)
        calls = await _index_calls(redis)
        # 16 buckets + the batch + the days list; their EXPIREs; the days list's trim.
        assert calls == {"zadd": PHONE_INDEX_BUCKETS + 2, "expire": PHONE_INDEX_BUCKETS + 1, "zremrangebyscore": 1}
        await redis.config_resetstat()
        await index.record(*_accepted(*((f"m{i}", f"139{i:08d}", "bulk-1") for i in range(500))), 20_000 * DAY + 60)
        assert await _index_calls(redis) == {"zadd": PHONE_INDEX_BUCKETS + 1, "expire": 1, "zremrangebyscore": 0}
        assert len(await ids_for_number(redis, keys, "13800000499", 5)) == 1
        assert len(await ids_for_number(redis, keys, "13900000499", 5)) == 1


@on_asyncio
async def test_at_a_carriers_rate_a_batch_of_one_costs_one_command(redis_url: str) -> None:
    """At a carrier's TPS intake batches hold a notification or two: each costs its ZADD
    alone (it cost four: ZADD, EXPIRE and two on the days list).  A key deleted by hand
    gets its TTL back within REASSERT_SECONDS, so no index key lives for ever."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        start = 20_000 * DAY
        await index.record(*_accepted(("first", "13800138000", "")), start)
        await redis.config_resetstat()
        for n in range(100):
            await index.record(*_accepted((f"one{n}", "13800138000", "")), start + 1 + n)
        assert await _index_calls(redis) == {"zadd": 100, "expire": 0, "zremrangebyscore": 0}
        assert len(await ids_for_number(redis, keys, "13800138000", 200)) == 101

        day_key = keys.phone_index(20_000, phone_digest(keys, "13800138000")[0])
        await redis.delete(day_key, keys.phone_index_days)
        await index.record(*_accepted(("again", "13800138000", "")), start + 200)
        assert await redis.ttl(day_key) == -1  # recreated within the 10 minutes
        await index.record(*_accepted(("later", "13800138000", "")), start + 200 + REASSERT_SECONDS)
        assert 6 * DAY < await redis.ttl(day_key) <= 8 * DAY
        assert await ids_for_number(redis, keys, "13800138000", 2) == ["later", "again"]


@on_asyncio
async def test_a_batch_redis_refused_leaves_the_expire_and_the_day_to_the_next(redis_url: str) -> None:
    """Redis refusing writes (NOREPLICAS) fails a batch's index write: the next batch,
    seconds later, writes the key's EXPIRE and the day, which the failed one would have."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        start = 20_000 * DAY
        await redis.config_set("min-replicas-to-write", 1)
        try:
            with pytest.raises(ResponseError, match="NOREPLICAS"):
                await index.record(*_accepted(("refused", "13800138000", "")), start)
        finally:
            await redis.config_set("min-replicas-to-write", 0)
        await index.record(*_accepted(("next", "13800138000", "")), start + 5)
        day_key = keys.phone_index(20_000, phone_digest(keys, "13800138000")[0])
        assert 6 * DAY < await redis.ttl(day_key) <= 8 * DAY
        assert await ids_for_number(redis, keys, "13800138000", 5) == ["next"]


@on_asyncio
async def test_the_unbucketed_keys_of_before_the_upgrade_are_still_searched(redis_url: str) -> None:
    """On the upgrade day a number's notifications are in the old one-key-a-day index and
    in its bucket: a search merges both, newest first; later days read the bucket only."""
    keys = Keys()
    async with redis_client(redis_url) as redis:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        day = LAST_UNBUCKETED_DAY
        digest = phone_digest(keys, "13800138000")
        old_ms = int((day * DAY + 100) * 1000)
        await redis.zadd(keys.phone_index(day, ""), {f"{digest}:{old_ms:013d}:old-1": 0,
                                                     f"{digest}:{old_ms + 2000:013d}:old-2": 0})
        await index.record(*_accepted(("new-1", "13800138000", "")), day * DAY + 101)
        await index.record(*_accepted(("new-2", "13800138000", "")), day * DAY + 103)
        assert await ids_for_number(redis, keys, "13800138000", 10) == ["new-2", "old-2", "new-1", "old-1"]
        assert await ids_for_number(redis, keys, "13800138000", 3) == ["new-2", "old-2", "new-1"]
        await redis.zadd(keys.phone_index(day + 1, ""), {f"{digest}:{old_ms + int(DAY) * 1000:013d}:ignored": 0})
        await index.record(*_accepted(("next-day", "13800138000", "")), (day + 1) * DAY + 5)
        assert await ids_for_number(redis, keys, "13800138000", 2) == ["next-day", "new-2"]


@on_asyncio
async def test_on_a_cluster_a_days_index_is_spread_over_every_master(redis_cluster_url: str) -> None:
    """On the real 3-master Cluster, 2,000 notifications of one day put their index on
    every master (it was one key, on one master), and each number is still found with one
    read per day."""
    keys = Keys(partitions=16)
    redis = connect(redis_cluster_url)
    try:
        index = SearchIndex(redis, keys, retention_seconds=7 * DAY)
        start = 20_000 * DAY
        for batch in range(10):
            await index.record(*_accepted(*((f"c{batch}-{i}", f"137{batch:02d}{i:06d}", "")
                                            for i in range(200))), start + batch)
        day_keys = [keys.phone_index(20_000, bucket) for bucket in "0123456789abcdef"]
        sizes = [await redis.zcard(key) for key in day_keys]
        assert sum(sizes) == 2_000 and min(sizes) > 0
        masters = {redis.get_node_from_key(key).name for key in day_keys}
        assert len(masters) == 3
        for batch, i in ((0, 0), (4, 123), (9, 199)):
            assert await ids_for_number(redis, keys, f"137{batch:02d}{i:06d}", 5) == [f"c{batch}-{i}"]
    finally:
        await redis.aclose()


@on_asyncio
async def test_a_slot_without_a_master_costs_the_search_not_the_intake(tmp_path: Path) -> None:
    """A Cluster in which the slot of one day's index key loses its master while the
    gateway runs (as during a failover; cluster-require-full-coverage off, so the other
    slots serve): the index write fails (CLUSTERDOWN, after redis-py's own retries, about
    1 s).  The batch is still accepted and answered, the index write logged and skipped,
    and the notification goes out; with 16 index keys a day, a failover anywhere in the
    Cluster now reaches every batch's index write."""
    cluster = LocalRedisCluster(tmp_path / "cluster", masters=1, replicas_per_master=0, appendonly=False)
    cluster.start()
    try:
        [port] = cluster.master_ports()
        keys = Keys(partitions=16)
        bucket_key = keys.phone_index(int(MORNING // DAY), phone_digest(keys, CMCC_NUMBER)[0])
        slot = int(cluster_command(port, "CLUSTER", "KEYSLOT", bucket_key))
        cluster_command(port, "CONFIG", "SET", "cluster-require-full-coverage", "no")
        async with pipeline("cluster:" + ",".join(cluster.startup_nodes), partitions=16) as p:
            p.intake.index = SearchIndex(p.redis, p.keys, retention_seconds=7 * DAY)
            [outcome] = await p.accept(code("idx-covered"))  # the client's slot map, whole
            assert await ids_for_number(p.redis, p.keys, CMCC_NUMBER, 5) == ["idx-covered"]
            cluster_command(port, "CLUSTER", "DELSLOTS", str(slot))
            [outcome] = await p.accept(code("idx-uncovered"))
            assert (outcome.state, outcome.duplicate) == ("queued", False)
            # The next batches of the pause skip the index, even for a bucket that serves.
            assert phone_digest(keys, CUCC_NUMBER)[0] != phone_digest(keys, CMCC_NUMBER)[0]
            [paused] = await p.accept(code("idx-paused", to=CUCC_NUMBER))
            assert paused.state == "queued" and p.intake.index.batches_skipped == 1
            assert await ids_for_number(p.redis, p.keys, CUCC_NUMBER, 5) == []
            p.clock.advance(PAUSE_AFTER_FAILURE_SECONDS)
            await p.accept(code("idx-after", to=CUCC_NUMBER))
            assert await ids_for_number(p.redis, p.keys, CUCC_NUMBER, 5) == ["idx-after"]
            assert await p.dispatch_all() == 4
            assert await p.state("idx-uncovered") == "submitted"
    finally:
        cluster.stop()
