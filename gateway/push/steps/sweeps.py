"""promote.lua, recover.lua and receipts_overdue.lua in Python: the sweeps of the scheduled,
in-flight and awaiting-receipt sets.  Each takes the members its caller listed that are
still due (take_listed.lua).  Arguments, guarantees and replies: the scripts'."""

from __future__ import annotations

import math
from typing import Any

from gateway.push.steps.ledger import Ledger, tonumber
from gateway.push.steps.reads import ReadBatch, Reads


def _listed(led: Ledger) -> list[str]:
    return [str(x) for x in led.ARGV[2:2 + int(tonumber(led.ARGV[1]) or 0)]]


def _listed_reads(led: Ledger, key: str, fields: tuple[str, ...], sequence: bool = False,
                  ttls: bool = True) -> Reads:
    batch = ReadBatch(led).declared(ttl_for=None if ttls else (), fields=fields).scores(key, _listed(led))
    if sequence:
        batch.string(led.SEQUENCE)
    yield from batch.read()


def promote_reads(led: Ledger) -> Reads:
    return _listed_reads(led, led.SCHEDULED, ("state", "priority", "expires_at", "type"), sequence=True,
                         ttls=False)  # TTL: only for expiring ones


def promote(led: Ledger) -> list[Any]:
    r = led.r
    ids = led.take_listed(led.SCHEDULED, led.ARGV[0], _listed(led))
    for notification_id in ids:
        key = led.nkey(notification_id)
        state, priority, expires_at, ntype = r.hmget(key, "state", "priority", "expires_at", "type")
        if state == "scheduled":
            exp = tonumber(expires_at or "0") or 0
            if 0 < exp <= led.now:
                led.transition(notification_id, key, "expired", ntype, [], [])
                led.on_final(notification_id, key, "expired")
            else:
                led.transition(notification_id, key, "queued", ntype, [], ["priority", priority or "normal"])
                led.lane_push(priority, notification_id)
    led.flush_sorted_sets()
    return led.reply([str(len(ids))])


def recover_reads(led: Ledger) -> Reads:
    return _listed_reads(led, led.INFLIGHT, ("state", "priority", "type", "possible_duplicates"),
                         ttls=False)  # queued again: no final state


def _taken(led: Ledger, set_key: str, fields: tuple[str, ...],
           state: str) -> tuple[list[str], list[tuple[str, str, list[str | None]]]]:
    """The listed members of `set_key` still due, taken (take_listed), and those of them
    whose notification is in `state`: (id, its key, its `fields`, state first)."""
    ids = led.take_listed(set_key, led.ARGV[0], _listed(led))
    found = []
    for notification_id in ids:
        key = led.nkey(notification_id)
        values = led.r.hmget(key, *fields)
        if values[0] == state:
            found.append((notification_id, key, values))
    return ids, found


def recover(led: Ledger) -> list[Any]:
    r = led.r
    _, found = _taken(led, led.INFLIGHT, ("state", "priority", "type"), "submitting")
    for notification_id, key, (_, priority, ntype) in found:
        r.hincrby(key, "possible_duplicates", 1)
        led.count("possible_duplicate")
        led.transition(notification_id, key, "queued", ntype, ["recovered_at", led.NOW],
                       ["priority", priority or "normal", "recovered", "1"])
        r.zadd(led.lane_key(priority), 0, notification_id)
    return led.reply([str(len(found))])


def overdue_reads(led: Ledger) -> Reads:
    return _listed_reads(led, led.AWAITING, ("state", "type", "submitted_at", "channel", "partner",
                                             "partner_receipt", "voice_requested_at"))


def receipts_overdue(led: Ledger) -> list[Any]:
    ids, found = _taken(led, led.AWAITING, ("state", "type", "submitted_at"), "submitted")
    for notification_id, key, (_, ntype, submitted_at) in found:
        submitted = tonumber(submitted_at or led.NOW)
        waited = math.floor(led.now - (led.now if submitted is None else submitted))
        error = f"no receipt within {waited} s"
        led.transition(notification_id, key, "unconfirmed", ntype, ["error", error], ["error", error])
        led.on_final(notification_id, key, "unconfirmed")
    return led.reply([str(len(ids)), str(len(found))])
