"""Search indexes the operators' console and CLI read (gateway/ops/actions.py).

Written after the ledger recorded a batch, in one pipeline of a few commands per batch
(not per notification: the index must not cost the pipeline its throughput):

- **by number**: one sorted set per day (`Keys.phone_index`), every member scored 0 and
  named ``<digest>:<accepted ms>:<id>``, the digest a SHA-256 of prefix and number
  (`phone_digest`) so that no key name or member holds a phone number.  One variadic ZADD
  per batch; a number's notifications of a day are one ZREVRANGEBYLEX.  The days in use
  are listed in `Keys.phone_index_days`, trimmed to the retention.
- **by batch**: a sorted set per batch id (the ``batch`` field a caller gave, or the id the
  HTTP API gave a POST), scored by acceptance time; one variadic ZADD per batch id.

Every key expires with the notifications (retention).  An index write that fails only
makes a search miss, so it is logged and not retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.push.state import AcceptItem, AcceptOutcome
from gateway.store.keys import Keys

__all__ = ["SearchIndex", "ids_for_number", "phone_digest"]


def phone_digest(keys: Keys, digits: str) -> str:
    """The name part of a number's index key: SHA-256 of prefix and digits, 24 hex."""
    return hashlib.sha256(f"{keys.prefix}{digits}".encode()).hexdigest()[:24]


class SearchIndex:
    """Records accepted notifications under their number and batch."""

    def __init__(self, redis: Any, keys: Keys, retention_seconds: float) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = int(max(1, retention_seconds))

    async def record(self, items: Sequence[AcceptItem], outcomes: Sequence[AcceptOutcome], now: float) -> None:
        keys = self.keys
        day = int(now // 86_400)
        millis = f"{int(now * 1000):013d}"
        by_number: dict[str, float] = {}
        by_batch: dict[str, dict[str, float]] = {}
        for item, outcome in zip(items, outcomes, strict=False):
            if outcome.duplicate:
                continue
            digits = "".join(ch for ch in str(item.fields.get("to", "")) if ch.isdigit())
            if digits:
                by_number[f"{phone_digest(keys, digits)}:{millis}:{item.id}"] = 0
            batch = item.fields.get("batch")
            if batch:
                by_batch.setdefault(keys.batch(str(batch)), {})[item.id] = now
        if not by_number and not by_batch:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if by_number:
                day_key = keys.phone_index(day)
                pipe.zadd(day_key, by_number)
                # A day's key lives as long as its last notification (+1 day).
                pipe.expire(day_key, self.retention_seconds + 86_400)
                pipe.zadd(keys.phone_index_days, {str(day): day})
                oldest = day - self.retention_seconds // 86_400 - 1
                pipe.zremrangebyscore(keys.phone_index_days, "-inf", f"({oldest}")
            for name, members in by_batch.items():
                pipe.zadd(name, members)
                pipe.expire(name, self.retention_seconds)
            await pipe.execute()


async def ids_for_number(redis: Any, keys: Keys, digits: str, limit: int) -> list[str]:
    """The newest `limit` notification ids accepted for `digits`, newest first."""
    digest = phone_digest(keys, digits)
    ids: list[str] = []
    for day in await redis.zrevrange(keys.phone_index_days, 0, -1):
        members = await redis.zrevrangebylex(keys.phone_index(int(day)), f"[{digest}:\xff", f"[{digest}:",
                                             start=0, num=limit - len(ids))
        ids += [member.split(":", 2)[2] for member in members]
        if len(ids) >= limit:
            break
    return ids
