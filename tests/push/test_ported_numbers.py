"""PortedNumbers against a real redis-server: the table is read per batch, and a segment
with no hash is not asked again for a while (no round trip for a batch of such numbers)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.push.routing import PortedNumbers
from tests.aio import on_asyncio


class CountingRedis:
    """The real client, counting the pipelines sent (the round trips)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.pipelines = 0

    def pipeline(self, **kwargs: Any) -> Any:
        self.pipelines += 1
        return self.redis.pipeline(**kwargs)


@on_asyncio
async def test_missing_segment_is_asked_again_only_after_the_recheck(redis_url: str) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.delete("t12123:ported:138", "t12123:ported:139")
        await redis.hset("t12123:ported:139", "13900000001", "cucc")
        now = [1000.0]
        counting = CountingRedis(redis)
        ported = PortedNumbers(counting, "t12123:", ["cmcc", "cucc"], recheck_seconds=30, clock=lambda: now[0])
        assert await ported.lookup(["13800000001", "13900000001"]) == {"13900000001": "cucc"}
        assert counting.pipelines == 1
        # 138 had no hash: not asked again within the recheck, even once it has one
        await redis.hset("t12123:ported:138", "13800000001", "cucc")
        now[0] += 29
        assert await ported.lookup(["13800000001"]) == {}
        assert counting.pipelines == 1
        # 139 has a hash: read on every batch, a new entry applies at once
        await redis.hset("t12123:ported:139", "13900000002", "cmcc")
        assert await ported.lookup(["13900000002"]) == {"13900000002": "cmcc"}
        assert counting.pipelines == 2
        now[0] += 2
        assert await ported.lookup(["13800000001", "13900000001"]) == {"13800000001": "cucc", "13900000001": "cucc"}
        assert counting.pipelines == 3
        # and once 138 exists it is read on every batch
        await redis.hdel("t12123:ported:138", "13800000001")
        await redis.hset("t12123:ported:138", "13800000009", "cucc")
        assert await ported.lookup(["13800000001", "13800000009"]) == {"13800000009": "cucc"}
    finally:
        await redis.delete("t12123:ported:138", "t12123:ported:139")
        await redis.aclose()
