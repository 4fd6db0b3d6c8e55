"""claim.lua in Python: claim up to n queued notifications for submission, high lane first,
with a reserve offered to normal and bulk.  Arguments, guarantees and reply: claim.lua's."""

from __future__ import annotations

import math
from typing import Any

from gateway.push.steps.ledger import Ledger, tonumber
from gateway.push.steps.reads import ReadBatch, Reads

LANES = ("high", "normal", "bulk")
FIELDS = ("state", "expires_at", "to", "text", "attempts", "failed_carriers", "accepted_at", "type",
          "quiet_hours", "claim", "priority")


def _candidates(led: Ledger) -> dict[str, list[str]]:
    argv = led.ARGV
    j = 10
    out: dict[str, list[str]] = {}
    for k, lane in enumerate(LANES):
        count = int(tonumber(argv[7 + k]) or 0)
        out[lane] = [str(x) for x in argv[j:j + count]]
        j += count
    return out


def reads(led: Ledger) -> Reads:
    # no TTLs: only an expired one needs its TTL (a final state without its expires_at)
    batch = ReadBatch(led).declared(ttl_for=(), fields=FIELDS if led.ARGV[6] == "replay" else FIELDS[:9])
    if led.ARGV[6] == "claim":
        for lane, ids in _candidates(led).items():
            batch.scores(led.LANE[lane], ids)
    yield from batch.read()


def run(led: Ledger) -> list[Any]:
    r, argv = led.r, led.ARGV
    quota = {"high": int(tonumber(argv[0]) or 0), "normal": int(tonumber(argv[1]) or 0),
             "bulk": int(tonumber(argv[2]) or 0)}
    n = quota["high"] + quota["normal"] + quota["bulk"]
    lease = tonumber(argv[3]) or 0
    lease_deadline = f"{led.now + lease:.3f}"
    quiet_s = argv[4]
    quiet = tonumber(quiet_s) or 0
    token, mode = argv[5], argv[6]
    claim_key = led.declared("k")
    out: list[list[str]] = []
    if mode == "claim" and r.lrange_all(claim_key):
        return [["replay"], [], []]
    earlier = r.lrange_all(claim_key) if mode == "replay" else []
    if earlier:
        for notification_id in earlier:
            h = r.hmget(led.nkey(notification_id), *FIELDS)
            if h[0] == "submitting" and h[9] == token:
                out.append([notification_id, h[2] or "", h[3] or "", h[4] or "1", h[5] or "", h[6] or "0",
                            h[7] or "", h[10] or "normal", h[1] or ""])
        led.count("claim_replayed")
        return led.reply(out)
    taken: list[str] = []
    candidates = _candidates(led)
    cursor = dict.fromkeys(LANES, 0)
    total = 0

    def take(lane: str, want: int) -> None:
        nonlocal total
        claimed = 0
        ids = candidates[lane]
        while claimed < want and cursor[lane] < len(ids):
            notification_id = ids[cursor[lane]]
            cursor[lane] += 1
            # still in its lane when read (this step's removals are sent at its end)
            if r.zscore(led.LANE[lane], notification_id) is not None:
                led.zrem_later(led.LANE[lane], notification_id)
                key = led.nkey(notification_id)
                h = r.hmget(key, *FIELDS[:9])
                if h[0] == "queued":
                    exp = tonumber(h[1] or "0") or 0
                    if 0 < exp <= led.now:
                        led.transition(notification_id, key, "expired", h[7], [], [])
                        led.on_final(notification_id, key, "expired")
                    elif quiet > 0 and h[8] == "1":
                        led.transition(notification_id, key, "scheduled", h[7],
                                       ["due_at", quiet_s, "scheduled_reason", "quiet_hours"],
                                       ["priority", lane, "due_at", quiet_s])
                        r.zadd(led.SCHEDULED, quiet_s, notification_id)
                    else:
                        attempts = str(int(tonumber(h[4] or "0") or 0) + 1)
                        led.transition(notification_id, key, "submitting", h[7],
                                       ["attempts", attempts, "claim", token], ["attempt", attempts])
                        led.zadd_later(led.INFLIGHT, lease_deadline, notification_id)
                        taken.append(notification_id)
                        out.append([notification_id, h[2] or "", h[3] or "", attempts, h[5] or "", h[6] or "0",
                                    h[7] or "", lane, h[1] or ""])
                        claimed += 1
                else:
                    led.count("stale_lane_entry")
        total += claimed

    for lane in LANES:
        take(lane, quota[lane])
    for lane in LANES:
        take(lane, n - total)
    for k in range(0, len(taken), 1000):
        r.command("RPUSH", claim_key, *taken[k:k + 1000])
    if taken:
        r.command("EXPIRE", claim_key, math.ceil(2 * lease))
    led.flush_sorted_sets()
    return led.reply(out)
