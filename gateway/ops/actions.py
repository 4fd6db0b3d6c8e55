"""Operator actions and queries, shared by the HTTP API and the CLI.

Every action writes an audit entry into ``keys.audit`` (who, role, what, target,
details, from where, when) and an ``operator.<action>`` event into the events stream
(no personal data in either).  Carrier controls only write ``keys.control``: each
process's FleetReporter applies them (gateway/ops/fleet.py), so they act fleet-wide.

Searches never return a whole phone number: the status views carry the masked form
(``138****5678``) whatever the operator typed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import metrics
from gateway.fleet.clock import redis_time
from gateway.ops.fleet import CARRIER_STATES
from gateway.privacy import InvalidPhoneNumber, normalise_cn_mobile
from gateway.push.deadletters import DEAD_STATES, retry_dead_letters
from gateway.push.index import ids_for_number
from gateway.push.state import public_view, read_notifications
from gateway.push.steps.driver import (
    WRITER_POLL_FIRST_SECONDS,
    WRITER_POLL_MAX_SECONDS,
    WRITER_WAIT_SECONDS,
)
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = [
    "ActionError",
    "Actor",
    "audit",
    "cancel_batch",
    "cancel_by_type",
    "dead_letters",
    "notification_text",
    "paused",
    "read_audit",
    "retry_dead_letter_with",
    "search",
    "set_carrier",
    "set_carrier_tps",
    "set_paused",
    "timeline",
]

# Audit entries kept (approximate MAXLEN of the stream): months of a busy duty desk.
AUDIT_MAXLEN = 100_000
EVENTS_MAXLEN = 1_000_000
# A cancel by type and time looks at this many waiting notifications at most: more than
# a whole day of 12123 bulk reminders for one city; beyond it the operator narrows it.
MAX_CANCEL_SCAN = 200_000
# Search and dead-letter answers are for a person to read: at most this many rows.
MAX_ROWS = 500
# A dead-letter filter looks at the newest 10,000 of each partition: a day of failures
# on a bad day; an older one is found by narrowing the time range.
MAX_DEAD_SCAN = 10_000


class ActionError(Exception):
    """A request an operator made that cannot be done; `code` is the HTTP status."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code, self.error, self.message = code, error, message


@dataclass(frozen=True)
class Actor:
    """Who acts: a console user, the bearer token, or a CLI user; and from where."""

    user: str
    role: str  # viewer or operator
    origin: str  # an address, or cli@host


async def audit(redis: Any, keys: Keys, actor: Actor, action: str, target: str = "",
                detail: Mapping[str, Any] | None = None, *, now: float | None = None) -> str:
    """Record an action in the audit stream and as an event; returns the audit entry id.
    Stamped on Redis's clock unless `now` is given: the acting process may run on a host
    whose clock is off (an operator's laptop), and the console compares the stamps with
    the fleet's time."""
    now = await redis_time(redis, keys.partition_members) if now is None else now
    fields = {"at": f"{now:.3f}", "user": actor.user, "role": actor.role, "action": action,
              "target": target, "from": actor.origin,
              "detail": json.dumps(dict(detail or {}), ensure_ascii=False, sort_keys=True)}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(keys.audit, fields, maxlen=AUDIT_MAXLEN, approximate=True)
        pipe.xadd(keys.events_stream, {"type": f"operator.{action}", "target": target, "user": actor.user,
                                       "from": actor.origin, "at": f"{now:.3f}"},
                  maxlen=EVENTS_MAXLEN, approximate=True)
        entry_id, _ = await pipe.execute()
    return str(entry_id)


async def read_audit(redis: Any, keys: Keys, *, limit: int = 100, action: str = "",
                     user: str = "") -> list[dict[str, Any]]:
    """Newest audit entries first, optionally only one action or user."""
    rows: list[dict[str, Any]] = []
    entries = await redis.xrevrange(keys.audit, count=min(max(1, limit), 10_000) * (1 if not (action or user) else 20))
    for entry_id, fields in entries:
        if action and fields.get("action") != action:
            continue
        if user and fields.get("user") != user:
            continue
        row: dict[str, Any] = {"id": entry_id, **fields}
        row["at"] = float(fields.get("at") or 0)
        try:
            row["detail"] = json.loads(fields.get("detail") or "{}")
        except ValueError:
            pass
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def check_carrier(name: str, known: Iterable[str]) -> None:
    if name not in set(known):
        raise ActionError(404, "not_found", f"no carrier named {name!r}")


async def set_carrier(redis: Any, keys: Keys, actor: Actor, name: str, state: str, *,
                      known: Iterable[str]) -> dict[str, Any]:
    """Stop, start (running) or isolate a carrier's links in every process."""
    check_carrier(name, known)
    if state not in CARRIER_STATES:
        raise ActionError(400, "bad_request", f"carrier state must be one of {', '.join(CARRIER_STATES)}")
    if state == "running":
        await redis.hdel(keys.control, f"carrier:{name}")
    else:
        await redis.hset(keys.control, f"carrier:{name}", state)
    action = {"running": "start", "stopped": "stop", "isolated": "isolate"}[state]
    await audit(redis, keys, actor, f"carrier.{action}", name)
    return {"carrier": name, "control": state}


async def set_carrier_tps(redis: Any, keys: Keys, actor: Actor, name: str, tps: float | None, *,
                          known: Iterable[str]) -> dict[str, Any]:
    """Set (or with None, reset to the configured value) a carrier's TPS in every process."""
    check_carrier(name, known)
    if tps is None:
        await redis.hdel(keys.control, f"tps:{name}")
    else:
        if not (0.1 <= tps <= 100_000):  # the same bounds as carriers[].tps_limit
            raise ActionError(400, "bad_request", "tps must be between 0.1 and 100000")
        await redis.hset(keys.control, f"tps:{name}", f"{tps:g}")
    await audit(redis, keys, actor, "carrier.tps", name, {"tps": tps})
    return {"carrier": name, "tps": tps}


LANE_NAMES = ("high", "normal", "bulk")


async def set_paused(redis: Any, keys: Keys, actor: Actor, kind: str, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume a lane (nothing claimed from it) or a notification type (held in
    scheduled, looked at again every 30 s) in every process."""
    if kind not in ("lane", "type"):
        raise ActionError(400, "bad_request", "pause a lane or a type")
    if kind == "lane" and name not in LANE_NAMES:
        raise ActionError(404, "not_found", f"no lane {name!r} (lanes: {', '.join(LANE_NAMES)})")
    if not name or len(name) > 64:
        raise ActionError(400, "bad_request", "give the type name")
    field = f"pause:{kind}:{name}"
    if paused:
        await redis.hset(keys.control, field, "1")
    else:
        await redis.hdel(keys.control, field)
    await audit(redis, keys, actor, f"{kind}.{'pause' if paused else 'resume'}", name)
    return {kind: name, "paused": paused}


async def paused(redis: Any, keys: Keys) -> dict[str, list[str]]:
    control = await redis.hgetall(keys.control)
    return {"lanes": sorted(k.split(":", 2)[2] for k in control if k.startswith("pause:lane:")),
            "types": sorted(k.split(":", 2)[2] for k in control if k.startswith("pause:type:"))}


# -- search -------------------------------------------------------------------------------


async def _views(redis: Any, keys: Keys, ids: list[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    records = await read_notifications(redis, keys, ids)
    rows = []
    for notification_id, raw in zip(ids, records, strict=True):
        if raw:
            view = public_view(notification_id, raw)
            view["accepted_at"] = float(raw.get("accepted_at") or 0) or None
            if raw.get("batch"):
                view["batch"] = raw["batch"]
            rows.append(view)
    return rows


async def search(redis: Any, keys: Keys, *, notification_id: str = "", batch: str = "",
                 phone: str = "", limit: int = 100) -> dict[str, Any]:
    """Notifications by id, batch or phone number (newest first); numbers masked."""
    limit = min(max(1, limit), MAX_ROWS)
    if sum(bool(x) for x in (notification_id, batch, phone)) != 1:
        raise ActionError(400, "bad_request", "give exactly one of id, batch, phone")
    if notification_id:
        ids = [notification_id]
        by = "id"
    elif batch:
        ids = list(await redis.zrevrange(keys.batch(batch), 0, limit - 1))
        by = "batch"
    else:
        try:
            digits = normalise_cn_mobile(phone)
        except InvalidPhoneNumber as e:
            raise ActionError(400, "bad_request", f"phone: {e}") from None
        ids = await ids_for_number(redis, keys, digits, limit)
        by = "phone"
    return {"by": by, "results": await _views(redis, keys, ids)}


async def timeline(redis: Any, keys: Keys, notification_id: str) -> dict[str, Any]:
    """A notification's public view and the times it reached each state, in order."""
    raw = await redis.hgetall(keys.notification(notification_id))
    if not raw:
        raise ActionError(404, "not_found", "no such notification")
    steps = []
    for field, value in raw.items():
        if field.endswith("_at") and field not in ("expires_at", "requested_expires_at"):
            try:
                steps.append({"step": field[:-3], "at": float(value)})
            except ValueError:
                continue
    steps.sort(key=lambda s: s["at"])
    view = public_view(notification_id, raw)
    if raw.get("batch"):
        view["batch"] = raw["batch"]
    return {"notification": view, "timeline": steps}


async def notification_text(redis: Any, keys: Keys, actor: Actor, notification_id: str) -> dict[str, Any]:
    """The rendered text (operators only; every view is audited)."""
    if actor.role != "operator":
        raise ActionError(403, "forbidden", "only the operator role may read message texts")
    text = await redis.hget(keys.notification(notification_id), "text")
    if text is None:
        raise ActionError(404, "not_found", "no such notification, or it has no text")
    await audit(redis, keys, actor, "notification.view_text", notification_id)
    return {"id": notification_id, "text": text}


# -- dead letters -------------------------------------------------------------------------


async def dead_letters(redis: Any, keys: Keys, *, type: str = "", carrier: str = "", reason: str = "",
                       since: float | None = None, until: float | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
    """Dead letters newest first, filtered by type, carrier, reason (substring) and time."""
    limit = min(max(1, limit), MAX_ROWS)
    high = "+inf" if until is None else until
    low = "-inf" if since is None else since
    entries: list[tuple[str, float]] = []
    for part in keys.all_partitions:  # newest of every partition, merged
        entries.extend(await redis.zrevrangebyscore(part.dead_letters, high, low, start=0, num=MAX_DEAD_SCAN,
                                                    withscores=True))
    entries.sort(key=lambda e: -e[1])
    rows: list[dict[str, Any]] = []
    for start in range(0, len(entries), 500):
        page = entries[start:start + 500]
        records = await read_notifications(redis, keys, [i for i, _ in page])
        for (notification_id, score), raw in zip(page, records, strict=True):
            if not raw or raw.get("state") not in DEAD_STATES:
                continue
            if type and raw.get("type") != type:
                continue
            if carrier and carrier not in (raw.get("carrier", ""), *raw.get("failed_carriers", "").split()):
                continue
            why = f"{raw.get('error', '')} {raw.get('reason', '')}"
            if reason and reason.lower() not in why.lower():
                continue
            view = public_view(notification_id, raw)
            view["dead_at"] = float(score)
            try:
                view["params"] = json.loads(raw.get("params") or "{}")  # what "fix and retry" edits
            except ValueError:
                view["params"] = {}
            rows.append(view)
            if len(rows) >= limit:
                return rows
    return rows


async def retry_dead_letter_with(redis: Any, keys: Keys, actor: Actor, ids: list[str],
                                 params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Retry dead letters; with `params`, one notification with its parameters corrected
    first (merged over the old ones)."""
    if not ids:
        raise ActionError(400, "bad_request", "give at least one notification id")
    if params is not None:
        if len(ids) != 1:
            raise ActionError(400, "bad_request", "fix and retry takes one notification at a time")
        if not all(isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in params.items()):
            raise ActionError(400, "bad_request", "params must map names to strings or numbers")
        key = keys.notification(ids[0])
        raw = await redis.hgetall(key)
        if not raw:
            raise ActionError(404, "not_found", "no such notification")
        if raw.get("state") not in DEAD_STATES:
            raise ActionError(409, "conflict", f"state is {raw.get('state')}, not failed or rejected")
        try:
            old = json.loads(raw.get("params") or "{}")
        except ValueError:
            old = {}
        old.update({k: str(v) for k, v in params.items()})
        await redis.hset(key, "params", json.dumps(old, ensure_ascii=False))
    results = await retry_dead_letters(redis, keys, ids)
    action = "dead_letter.fix_and_retry" if params is not None else "dead_letter.retry"
    now = await redis_time(redis, keys.partition_members)  # once for the batch
    for row in results:
        await audit(redis, keys, actor, action, row["id"],
                    {"retried": row.get("retried", False), **({"params": sorted(params)} if params else {})},
                    now=now)
    return results


# -- cancelling ---------------------------------------------------------------------------


async def _cancel_ids(redis: Any, keys: Keys, actor: Actor, ids: list[str], why: str) -> dict[str, int]:
    script = register_lua(redis, __file__, "cancel.lua")
    now = await redis_time(redis, keys.partition_members)  # cancelled_at, on the fleet's clock
    counts = {"cancelled": 0, "not_waiting": 0, "gone": 0}
    loop = asyncio.get_running_loop()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        deadline = loop.time() + WRITER_WAIT_SECONDS
        pause = WRITER_POLL_FIRST_SECONDS
        while chunk:
            async with redis.pipeline(transaction=False) as pipe:
                for notification_id in chunk:
                    part = keys.partition(keys.partition_of(notification_id))
                    await script(keys=[part.notification(notification_id), part.lane("high"), part.lane("normal"),
                                       part.lane("bulk"), part.scheduled, part.events_stream, part.step_writer],
                                 args=[f"{now:.3f}", notification_id, actor.user, why, EVENTS_MAXLEN], client=pipe)
                results = await pipe.execute()
            busy = []
            for notification_id, (state, cancelled) in zip(chunk, results, strict=True):
                if state == "busy":  # a ledger step holds its partition: asked again below
                    busy.append(notification_id)
                elif int(cancelled):
                    counts["cancelled"] += 1
                elif state:
                    counts["not_waiting"] += 1
                else:
                    counts["gone"] += 1
            chunk = busy
            if chunk:
                if loop.time() + pause > deadline:
                    raise ActionError(503, "busy", f"{len(chunk)} notifications' partitions stayed busy; "
                                                   "nothing else was left undone, try those again")
                await asyncio.sleep(pause)
                pause = min(WRITER_POLL_MAX_SECONDS, 2 * pause)
    if counts["cancelled"]:
        metrics.notifications.labels("expired").inc(counts["cancelled"])
    return counts


async def _waiting(redis: Any, keys: Keys, ids: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        async with redis.pipeline(transaction=False) as pipe:
            for notification_id in chunk:
                pipe.hmget(keys.notification(notification_id), "state", "type", "accepted_at")
            records = await pipe.execute()
        for notification_id, (state, ntype, accepted_at) in zip(chunk, records, strict=True):
            if state in ("queued", "scheduled"):
                rows.append({"id": notification_id, "type": ntype or "", "accepted_at": accepted_at or "0"})
    return rows


async def cancel_batch(redis: Any, keys: Keys, actor: Actor, batch: str, *, confirm: bool) -> dict[str, Any]:
    """Cancel what of a batch still waits (queued or scheduled).  Without `confirm`
    nothing changes: the answer says how many would be cancelled."""
    ids = list(await redis.zrange(keys.batch(batch), 0, -1))
    if not ids:
        raise ActionError(404, "not_found", f"no batch {batch!r} (or it is past retention)")
    waiting = [row["id"] for row in await _waiting(redis, keys, ids)]
    answer: dict[str, Any] = {"batch": batch, "in_batch": len(ids), "waiting": len(waiting)}
    if not confirm:
        answer["confirm"] = "send again with confirm=true to cancel these"
        return answer
    counts = await _cancel_ids(redis, keys, actor, waiting, f"batch {batch}")
    answer.update(counts)
    await audit(redis, keys, actor, "batch.cancel", batch, counts)
    return answer


async def cancel_by_type(redis: Any, keys: Keys, actor: Actor, ntype: str, since: float, until: float, *,
                         confirm: bool) -> dict[str, Any]:
    """Cancel waiting notifications of one type accepted between `since` and `until`."""
    if not ntype:
        raise ActionError(400, "bad_request", "type is required")
    if until <= since:
        raise ActionError(400, "bad_request", "until must be after since")
    ids: list[str] = []
    names = [name for part in keys.all_partitions
             for name in (part.lane("high"), part.lane("normal"), part.lane("bulk"), part.scheduled)]
    for name in names:
        ids.extend(await redis.zrange(name, 0, MAX_CANCEL_SCAN - len(ids) - 1))
        if len(ids) >= MAX_CANCEL_SCAN:
            break
    matching = [row["id"] for row in await _waiting(redis, keys, list(dict.fromkeys(ids)))
                if row["type"] == ntype and since <= float(row["accepted_at"]) <= until]
    answer: dict[str, Any] = {"type": ntype, "since": since, "until": until, "waiting": len(matching),
                              "scan_limited": len(ids) >= MAX_CANCEL_SCAN}
    if not confirm:
        answer["confirm"] = "send again with confirm=true to cancel these"
        return answer
    counts = await _cancel_ids(redis, keys, actor, matching, f"type {ntype}")
    answer.update(counts)
    await audit(redis, keys, actor, "type.cancel", ntype, {"since": since, "until": until, **counts})
    return answer
