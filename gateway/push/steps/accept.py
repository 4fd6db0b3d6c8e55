"""accept.lua in Python: record a batch of validated intake requests, acknowledge their
stream entries and trim what the consumer group no longer needs.  Arguments, guarantees
and reply: accept.lua's."""

from __future__ import annotations

from typing import Any

from gateway.push.steps.ledger import Ledger, StepError, tonumber, tostring
from gateway.push.steps.reads import ReadBatch, Reads


def _requests(led: Ledger) -> list[tuple[int, int]]:
    """Each request's position in ARGV and its number of fields."""
    out = []
    i, n = 2, int(led.ARGV[1])
    for _ in range(n):
        nf = int(tonumber(led.ARGV[i + 11]) or 0)
        out.append((i, nf))
        i += 12 + nf
    return out


def reads(led: Ledger) -> Reads:
    # As accept.lua: one EXISTS over the batch; the records themselves only if one is
    # known (a duplicate), which is rare.
    notifications = [key for label, key in led.DECLARED.items() if label[0] == "n"]
    if notifications and not led.full:
        known: list[int] = []
        first = ReadBatch(led)
        first.add(("EXISTS", *notifications), lambda reply: known.append(int(reply)))
        yield from first.read()
        if known == [0]:
            for key in notifications:
                led.r.load_absent(key)
        else:
            led.full = True
    batch = ReadBatch(led).declared().string(led.SEQUENCE)
    stream = led.DECLARED.get("s")
    group = led.ARGV[0]
    acks = sum(1 for i, _ in _requests(led) if led.ARGV[i + 1] != "")
    if stream and acks:
        # trim_intake's view: the group's last delivered entry, and enough of its pending
        # entries to know the first one this batch's acknowledgements leave
        batch.add(("XINFO", "GROUPS", stream), lambda reply: led.loaded.__setitem__("groups", reply))
        batch.add(("XPENDING", stream, group, "-", "+", acks + 1),
                  lambda reply: led.loaded.__setitem__("pending", [entry[0] for entry in reply]))
    yield from batch.read()


def first_needed(led: Ledger, group: str, acked: set[str]) -> str | None:
    """trim_intake.lua's first_needed, after this batch's acknowledgements."""
    for g in led.loaded.get("groups", []):
        info = g if isinstance(g, dict) else dict(zip(g[::2], g[1::2], strict=True))
        if info.get("name") == group:
            for entry in led.loaded["pending"]:
                if entry not in acked:
                    return str(entry)
            last = str(info.get("last-delivered-id"))
            ms, _, seq = last.partition("-")
            if not (ms.isdigit() and seq.isdigit()) or len(seq) > 14:
                return last
            return f"{ms}-{int(seq) + 1}"
    return None


def run(led: Ledger) -> list[Any]:
    r, argv = led.r, led.ARGV
    group = argv[0]
    out: list[str] = []
    acks: list[str] = []
    requests = _requests(led)
    any_known = any(r.exists_hash(led.nkey(argv[i])) for i, _ in requests)
    seen: set[str] = set()
    for i, nf in requests:
        notification_id, entry, retry, disp = argv[i], argv[i + 1], argv[i + 2], argv[i + 3]
        due, lane, cap_key, cap = argv[i + 4], argv[i + 5], argv[i + 6], tonumber(argv[i + 7])
        reason, ntype, ttl = argv[i + 8], argv[i + 9], argv[i + 10]
        fstart = i + 12
        key = led.nkey(notification_id)
        st = r.hget(key, "state") if (any_known or notification_id in seen) else None
        seen.add(notification_id)
        if st and not (st == "rejected" or (retry == "1" and st == "failed")):
            out += [notification_id, st, "duplicate"]
        else:
            if st:
                r.delete(key)
                r.zrem(led.DEAD, notification_id)
            if cap_key != "" and disp in ("queue", "schedule"):
                cap_key = led.declared(cap_key)
                if cap is None:
                    raise StepError("accept: cap is not a number")
                sent = tonumber(r.get(cap_key) or "0") or 0
                if sent >= cap:
                    disp = "reject"
                    reason = f"daily cap: {tostring(cap)} bulk reminders to this number today"
                else:
                    r.strings[cap_key] = str(int(sent) + 1)
                    r.command("INCR", cap_key)
                    r.command("EXPIRE", cap_key, 172800)
            fields = ["accepted_at", led.NOW, "type", ntype, "priority", lane, *argv[fstart:fstart + nf]]
            if disp == "queue":
                state = "queued"
                led.transition(notification_id, key, state, ntype, fields, ["priority", lane], ttl)
                led.lane_push(lane, notification_id)
            elif disp == "schedule":
                state = "scheduled"
                fields += ["due_at", due, "scheduled_reason", "quiet_hours"]
                led.transition(notification_id, key, state, ntype, fields, ["priority", lane, "due_at", due], ttl)
                r.zadd(led.SCHEDULED, due, notification_id)
            elif disp == "expired":
                state = "expired"
                led.transition(notification_id, key, state, ntype, fields, [])
                led.on_final(notification_id, key, state)
            elif disp == "voice":
                state = "submitted"
                fields += ["carrier", "voice"]
                led.transition(notification_id, key, state, ntype, fields, ["carrier", "voice"], ttl)
                led.request_voice(notification_id, key, due)
            else:
                state = "rejected"
                fields += ["reason", reason]
                led.transition(notification_id, key, state, ntype, fields, ["reason", reason])
                led.on_final(notification_id, key, state)
            out += [notification_id, state, reason if state == "rejected" else ""]
        if entry != "":
            acks.append(entry)
    if acks:
        stream = led.declared("s")
        for k in range(0, len(acks), 1000):
            r.command("XACK", stream, group, *acks[k:k + 1000])
        bound = first_needed(led, group, set(acks))
        if bound:
            r.command("XTRIM", stream, "MINID", bound)
    led.flush_sorted_sets()
    return led.reply(out)
