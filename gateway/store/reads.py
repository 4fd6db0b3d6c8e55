"""Reads that must work the same on one Redis and on a Cluster, slot migrations included."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ClusterError, TryAgainError

__all__ = ["get_many"]


async def get_many(redis: Any, keys: list[str]) -> list[str | None]:
    """GET of many keys that may live in several Cluster slots (RedisCluster splits the
    MGET by slot), or one MGET on a single Redis.

    While a slot migrates with its keys on both nodes, a multi-key MGET in it is answered
    TRYAGAIN until the migration ends (seconds for a large slot) and redis-py gives up
    after its TTL: then one GET per key, each of which follows ASK."""
    nonatomic = getattr(redis, "mget_nonatomic", None)
    if nonatomic is None:
        return list(await redis.mget(keys))
    try:
        return list(await nonatomic(keys))
    except (ClusterError, TryAgainError):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            return list(await pipe.execute())
