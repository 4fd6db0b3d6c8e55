"""Search indexes the operators' console and CLI read (gateway/ops/actions.py).

Written after the ledger recorded a batch, in one pipeline of a few commands per batch
(not per notification: the index must not cost the pipeline its throughput):

- **by number**: sorted sets per day and digest bucket (`Keys.phone_index`), every member
  scored 0 and named ``<digest>:<accepted ms>:<id>``, the digest a SHA-256 of prefix and
  number (`phone_digest`) so that no key name or member holds a phone number.  The
  bucket is the digest's first hex digit: a day is 16 keys, which a Cluster spreads over
  its masters (one key per day put a day's 168 bytes per notification, and every intake
  batch's ZADD, on one master).  One variadic ZADD per bucket per batch; a number's
  notifications of a day are one ZREVRANGEBYLEX on its bucket.  The days in use are
  listed in `Keys.phone_index_days`, trimmed to the retention.
- **by batch**: a sorted set per batch id (the ``batch`` field a caller gave, or the id the
  HTTP API gave a POST), scored by acceptance time; one variadic ZADD per batch id.

Every key expires with the notifications (retention).  A day key's EXPIRE and the list
of days are written by a process the first time it writes that key or day, and again
every `REASSERT_SECONDS`, not with every batch: at a carrier's TPS an intake batch holds
a few notifications, and those three commands per batch were as many as its ZADDs.  An
index write that fails only makes a search miss, so it is logged and not retried (and
what the failed batch would have re-asserted is written by the next); batches skip the
index for `PAUSE_AFTER_FAILURE_SECONDS` after it, so that a failover does not slow intake.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.push.state import AcceptItem, AcceptOutcome
from gateway.store.keys import Keys

__all__ = ["PHONE_INDEX_BUCKETS", "SearchIndex", "ids_for_number", "phone_digest"]

# Digest buckets per day: the first hex digit of the digest.  16 spreads a day over the
# masters of any Cluster up to 16 of them and keeps a batch of 200 at about 12 members per
# ZADD; a search still reads one key per day.
PHONE_INDEX_BUCKETS = 16

# How often a process writes a day key's EXPIRE and the days list again although it wrote
# them already: a key deleted by hand (or a FLUSHALL) and recreated by the next ZADD has
# its TTL back within this time.  16 EXPIREs and 2 commands per process per 10 minutes.
REASSERT_SECONDS = 600.0

# After a failed index write, batches skip the index for this long.  In a failover every
# write to the lost master's slots waits out redis-py's retries (CLUSTERDOWN: about 1 s,
# measured by tests/push/test_search_index.py's slot without a master), and with 16 keys a
# day every batch has one there: the intake would answer a second late all through the
# failover (cluster-node-timeout, Redis's default 15 s, 2 s in the tests, then the
# election).  Searches miss the batches of the pause, as they miss the failed one.
PAUSE_AFTER_FAILURE_SECONDS = 5.0

# Until this day (2026-12-04, days since the epoch) a day's index was one key without a
# bucket (``phone-index:<day>``, `Keys.phone_index` with no bucket): searches read
# it too for those days, so an upgraded fleet still finds the week before the upgrade.
# Harmless once the retention has expired those keys.
LAST_UNBUCKETED_DAY = 20_791


def phone_digest(keys: Keys, digits: str) -> str:
    """The name part of a number's index key: SHA-256 of prefix and digits, 24 hex."""
    return hashlib.sha256(f"{keys.prefix}{digits}".encode()).hexdigest()[:24]


class SearchIndex:
    """Records accepted notifications under their number and batch."""

    def __init__(self, redis: Any, keys: Keys, retention_seconds: float) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = int(max(1, retention_seconds))
        # When this process last wrote each day key's EXPIRE, and each day into the days list.
        self._expired_at: dict[str, float] = {}
        self._day_listed_at: dict[int, float] = {}
        self._paused_until = float("-inf")
        self.batches_skipped = 0  # in pauses after a failure (the intake logs the failure)

    @staticmethod
    def _due(written: dict[Any, float], what: Any, now: float) -> bool:
        """Whether `what` was not written within REASSERT_SECONDS."""
        last = written.get(what)
        return last is None or not 0 <= now - last < REASSERT_SECONDS

    @staticmethod
    def _note(written: dict[Any, float], what: Sequence[Any], now: float) -> None:
        """Note `what` as written at `now` (once its pipeline succeeded).  What is older
        than REASSERT_SECONDS is due anyway: dropping it bounds the dict to the last 10
        minutes' keys (16 a day, a day or two)."""
        for stale in [w for w, at in written.items() if not 0 <= now - at < REASSERT_SECONDS]:
            del written[stale]
        written.update(dict.fromkeys(what, now))

    async def record(self, items: Sequence[AcceptItem], outcomes: Sequence[AcceptOutcome], now: float) -> None:
        keys = self.keys
        day = int(now // 86_400)
        millis = f"{int(now * 1000):013d}"
        by_number: dict[str, dict[str, float]] = {}
        by_batch: dict[str, dict[str, float]] = {}
        for item, outcome in zip(items, outcomes, strict=False):
            if outcome.duplicate:
                continue
            to = str(item.fields.get("to", ""))
            digits = to if to.isdigit() else "".join(filter(str.isdigit, to))  # intake stores digits
            if digits:
                digest = phone_digest(keys, digits)
                by_number.setdefault(digest[0], {})[f"{digest}:{millis}:{item.id}"] = 0
            batch = item.fields.get("batch")
            if batch:
                by_batch.setdefault(keys.batch(str(batch)), {})[item.id] = now
        if not by_number and not by_batch:
            return
        if now < self._paused_until:
            self.batches_skipped += 1
            return
        expired: list[str] = []
        listed: list[int] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket, members in by_number.items():
                day_key = keys.phone_index(day, bucket)
                pipe.zadd(day_key, members)
                if self._due(self._expired_at, day_key, now):
                    # From the day's first write: retention + 1 day outlives its last one.
                    pipe.expire(day_key, self.retention_seconds + 86_400)
                    expired.append(day_key)
            if by_number and self._due(self._day_listed_at, day, now):
                listed.append(day)
                pipe.zadd(keys.phone_index_days, {str(day): day})
                oldest = day - self.retention_seconds // 86_400 - 1
                pipe.zremrangebyscore(keys.phone_index_days, "-inf", f"({oldest}")
            for name, members in by_batch.items():
                pipe.zadd(name, members)
                pipe.expire(name, self.retention_seconds)
            try:
                await pipe.execute()
            except Exception:
                self._paused_until = now + PAUSE_AFTER_FAILURE_SECONDS
                raise
        self._note(self._expired_at, expired, now)
        self._note(self._day_listed_at, listed, now)


async def ids_for_number(redis: Any, keys: Keys, digits: str, limit: int) -> list[str]:
    """The newest `limit` notification ids accepted for `digits`, newest first."""
    digest = phone_digest(keys, digits)
    ids: list[str] = []
    for day in map(int, await redis.zrevrange(keys.phone_index_days, 0, -1)):
        names = [keys.phone_index(day, digest[0])]
        if day <= LAST_UNBUCKETED_DAY:
            names.append(keys.phone_index(day, ""))
        members: list[str] = []
        for name in names:
            members += await redis.zrevrangebylex(name, f"[{digest}:\xff", f"[{digest}:", start=0, num=limit - len(ids))
        members.sort(reverse=True)  # one digest: by acceptance time, then id
        ids += [member.split(":", 2)[2] for member in members[:limit - len(ids)]]
        if len(ids) >= limit:
            break
    return ids
