"""Dead letters: notifications that failed or were rejected, listed and sent again.

Every notification that ends ``failed`` or ``rejected`` is in the sorted set
``keys.dead_letters`` (scored by when).  `retry_dead_letters` hands each one back to the
intake stream with its original request (type, number, params, priority, channel, the
caller's expires_at) and ``retry=1``: the intake validates it again (a template fixed
since, a cap reset by a new day) and, if it passes, replaces the old record, with
attempts back at zero.  Going through the stream keeps one acceptance path, so the CLI
needs neither the templates nor the carriers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.push.state import public_view, read_notifications
from gateway.store.keys import Keys

__all__ = ["list_dead_letters", "retry_dead_letters"]

DEAD_STATES = frozenset({"failed", "rejected"})


async def list_dead_letters(redis: Any, keys: Keys, *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """The newest dead letters first, as status views (masked numbers, no texts).

    Ids whose record has expired (retention) or that were retried successfully since
    are dropped from the set on the way.
    """
    # One set per partition: the newest of them all (each read to offset + limit).
    scored: list[tuple[float, str]] = []
    for part in keys.all_partitions:
        scored += [(score, i) for i, score in
                   await redis.zrevrange(part.dead_letters, 0, offset + limit - 1, withscores=True)]
    scored.sort(reverse=True)
    ids = [i for _, i in scored[offset:offset + limit]]
    if not ids:
        return []
    records = await read_notifications(redis, keys, ids)
    rows: list[dict[str, Any]] = []
    gone: list[str] = []
    for notification_id, raw in zip(ids, records, strict=True):
        if not raw or raw.get("state") not in DEAD_STATES:
            gone.append(notification_id)
            continue
        rows.append(public_view(notification_id, raw))
    for notification_id in gone:
        await redis.zrem(keys.partition(keys.partition_of(notification_id)).dead_letters, notification_id)
    return rows


async def retry_dead_letters(redis: Any, keys: Keys, ids: Iterable[str]) -> list[dict[str, Any]]:
    """Send dead letters again through the intake stream; one result row per id."""
    results: list[dict[str, Any]] = []
    for notification_id in ids:
        raw = await redis.hgetall(keys.notification(notification_id))
        if not raw:
            results.append({"id": notification_id, "retried": False, "error": "not found"})
            continue
        if raw.get("state") not in DEAD_STATES:
            results.append({"id": notification_id, "retried": False, "state": raw.get("state", ""),
                            "error": "not failed or rejected"})
            continue
        fields = {
            "id": notification_id,
            "type": raw.get("type", ""),
            "to": raw.get("to", ""),
            "params": raw.get("params") or "{}",
            "retry": "1",
            "source": "retry",
        }
        priority = raw.get("priority") or raw.get("requested_priority")
        if priority:
            fields["priority"] = priority
        if raw.get("channel"):
            fields["channel"] = raw["channel"]
        if raw.get("requested_expires_at"):
            fields["expires_at"] = raw["requested_expires_at"]
        await redis.xadd(keys.notify_stream, fields)
        results.append({"id": notification_id, "retried": True})
    return results
