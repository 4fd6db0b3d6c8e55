"""Search indexes the operators' console and CLI read (gateway/ops/queries.py).

Two sorted sets per notification accepted, scored by acceptance time and expiring with
the notifications (retention): one per recipient number, named by a digest of the
number (`phone_digest`) so that no Redis key name holds a phone number, and one per
batch (the ``batch`` field a caller gave, or the id the HTTP API gave a POST).
Written after the ledger recorded the batch; an index write that fails only makes a
search miss, so it is logged and not retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from gateway.push.state import AcceptItem, AcceptOutcome
from gateway.store.keys import Keys

__all__ = ["SearchIndex", "phone_digest"]


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
        touched: set[str] = set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for item, outcome in zip(items, outcomes, strict=False):
                if outcome.duplicate:
                    continue
                digits = "".join(ch for ch in str(item.fields.get("to", "")) if ch.isdigit())
                names = []
                if digits:
                    names.append(keys.phone_index(phone_digest(keys, digits)))
                batch = item.fields.get("batch")
                if batch:
                    names.append(keys.batch(str(batch)))
                for name in names:
                    pipe.zadd(name, {item.id: now})
                    touched.add(name)
            for name in touched:
                pipe.expire(name, self.retention_seconds)
            if touched:
                await pipe.execute()
