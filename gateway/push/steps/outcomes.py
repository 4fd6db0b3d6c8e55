"""outcomes.lua in Python: apply a batch of submit outcomes and receipts (OutcomeWriter).
Arguments (the ops A B P R W F L C Y X), guarantees and reply: outcomes.lua's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.push.steps.ledger import RECEIPT_FINAL, Ledger, StepError, tonumber
from gateway.push.steps.reads import ReadBatch, Reads


def _ops(led: Ledger) -> Iterator[tuple[str, int]]:
    """Each op's name and its position in ARGV (the layouts are outcomes.lua's)."""
    argv = led.ARGV
    i = 3
    for _ in range(int(tonumber(argv[0]) or 0)):
        op = argv[i]
        yield op, i
        if op in ("A", "B"):
            i += 5 + 2 * int(tonumber(argv[i + 3]) or 0)
        elif op in ("R", "W", "F"):
            i += 5
        elif op == "L":
            i += 11
        elif op == "P":
            i += 4 + int(tonumber(argv[i + 3]) or 0)
        elif op == "C":
            i += 4
        elif op == "Y":
            i += 6
        elif op == "X":
            i += 7 + int(tonumber(argv[i + 6]) or 0)
        else:
            return


# What each op reads of its notification (outcomes.lua's HMGETs, with what on_final reads).
_FINAL_FIELDS = ("channel", "partner", "partner_receipt", "voice_requested_at")
OP_FIELDS = {
    "A": ("state", "type", "priority"), "B": ("state", "type", "priority"),
    "R": ("state", "type", "possible_duplicates"), "W": ("state", "type", "possible_duplicates", "attempts"),
    "F": ("state", "type", "possible_duplicates", *_FINAL_FIELDS),
    "L": ("state", "type", "possible_duplicates", "attempts", "link_losses", *_FINAL_FIELDS),
    "P": ("state", "partial_message_ids", "possible_duplicates"), "C": ("state", "failed_carriers"),
}


def _cutoff(led: Ledger) -> str:
    return f"{led.now - (tonumber(led.ARGV[1]) or 0):.3f}"


def reads(led: Ledger) -> Reads:
    # TTLs only where a final state without expires_at at hand is likely (failed); index
    # entries only where a receipt looks for one (an accepted submit's are written blind)
    ttl_for: set[str] = set()
    index_for: set[str] = set()
    x_parks: set[str] = set()  # '<carrier>\0<message id>' a receipt may park under
    fields: dict[str, None] | None = {}  # what the batch's ops read of their notifications
    for op, i in _ops(led):
        if op in ("F", "L"):
            ttl_for.add("n" + str(led.ARGV[i + 1]))
        elif op == "X":
            if int(tonumber(led.ARGV[i + 6]) or 0) > 0:
                x_parks.add(str(led.ARGV[i + 1]) + "\0" + str(led.ARGV[i + 7]))
            index_for.update("m" + str(led.ARGV[i + 1]) + "\0" + str(c)
                             for c in led.ARGV[i + 7:i + 7 + int(tonumber(led.ARGV[i + 6]) or 0)])
        if fields is not None:
            if op in ("X", "Y"):
                fields = None  # a receipt reads 14 fields, most absent: HGETALL costs less
            else:
                fields.update(dict.fromkeys(OP_FIELDS.get(op, ())))
    # a submit's parked receipts only once the flag says some may be parked (as the script)
    parked_for = {label for label in led.DECLARED if label[0] == "e" and label[1:] in x_parks}
    batch = ReadBatch(led).declared(ttl_for=ttl_for, index_for=index_for, parked_for=parked_for,
                                    fields=None if fields is None else list(fields)).string(led.EARLY_PARKED)
    parks = [f"{led.ARGV[i + 1]} {led.ARGV[i + 7]}" for op, i in _ops(led)
             if op == "X" and int(tonumber(led.ARGV[i + 6]) or 0) > 0]
    early = led.r.sorted_set(led.EARLY_SET)
    if parks:
        # what count_parked and park need: the set's size from the cutoff on, its lowest
        # members (those ZPOPMIN would drop) and whether the ones to park are in it
        batch.scores(led.EARLY_SET, list(dict.fromkeys(parks)))
        batch.add(("ZCOUNT", led.EARLY_SET, _cutoff(led), "+inf"), lambda reply: setattr(early, "size", int(reply)))
    yield from batch.read()
    if led.r.strings.get(led.EARLY_PARKED) is not None and not led.full:
        submits = ReadBatch(led)
        for label, key in led.DECLARED.items():
            if label[0] == "e" and label not in parked_for:
                submits.string(key)
        yield from submits.read()
    if parks:
        cap = int(tonumber(led.ARGV[2]) or 0)
        limit = len(parks) + max(0, (early.size or 0) - cap)
        lowest = ReadBatch(led)
        lowest.add(("ZRANGE", led.EARLY_SET, _cutoff(led), "+inf", "BYSCORE", "LIMIT", 0, limit, "WITHSCORES"),
                   lambda reply: setattr(early, "lowest", _pairs(reply)))
        yield from lowest.read()


def _pairs(reply: list[Any]) -> list[tuple[float, str]]:
    if reply and isinstance(reply[0], (list, tuple)):  # a client that pairs them
        return [(float(score), member) for member, score in reply]
    return [(float(reply[k + 1]), reply[k]) for k in range(0, len(reply), 2)]


def _parked_receipt(value: str) -> tuple[str, str, str]:
    stat, _, rest = value.partition(" ")
    err, space, tails = rest.partition(" ")
    return (stat, rest, "") if not space else (stat, err, tails)


class _Parking:
    """count_parked and park: the receipts parked in this partition, at most EARLY_MAX."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.early_ttl = tonumber(led.ARGV[1]) or 0
        self.early_max = int(tonumber(led.ARGV[2]) or 0)
        self.count: int | None = None
        self.parks = 0
        self.evicted: list[str] = []

    def counted(self) -> int:
        if self.count is None:
            led = self.led
            known = led.r.sorted_set(led.EARLY_SET)
            cutoff = float(_cutoff(led))
            led.r.command("ZREMRANGEBYSCORE", led.EARLY_SET, "-inf", "(" + _cutoff(led))
            for member, score in known.scores.items():
                if score is not None and score < cutoff:
                    known.scores[member] = None
            self.count = known.size or 0
        return self.count

    def park(self, member: str) -> None:
        led = self.led
        known = led.r.sorted_set(led.EARLY_SET)
        # counted one more even when the member was parked already (as park() does)
        self.count = self.counted() + 1
        led.r.zadd(led.EARLY_SET, f"{led.now + self.parks * 1e-6:.6f}", member)
        self.parks += 1
        if self.count > self.early_max:
            excess = self.count - self.early_max
            led.r.command("ZPOPMIN", led.EARLY_SET, excess)
            lowest = known.lowest or []
            popped, known.lowest = lowest[:excess], lowest[excess:]
            if len(popped) < excess and (known.size or 0) > len(popped):
                raise StepError("outcomes: parked receipts to drop were not read")
            for _, gone in popped:
                known.scores[gone] = None
                self.evicted.append(gone)
                led.count("receipt_unparked:" + gone.split(" ", 1)[0])
            if known.size is not None:
                known.size -= len(popped)
            self.count = self.early_max


def run(led: Ledger) -> list[Any]:
    r, argv = led.r, led.ARGV
    parking = _Parking(led)
    again: list[str] = []
    refused: list[str] = []
    displaced: list[str] = []
    receipt_due = f"{led.now + led.RECEIPT_TIMEOUT:.3f}"
    number = 0
    for op, i in _ops(led):
        number += 1
        if op in ("A", "B"):
            notification_id, carrier = argv[i + 1], argv[i + 2]
            np, nr = int(tonumber(argv[i + 3]) or 0), int(tonumber(argv[i + 4]) or 0)
            start = 1
            if nr < 0:
                start, nr = np, 1
            sent = argv[i + 5:i + 5 + np]
            mids = argv[i + 5 + np:i + 5 + 2 * np]
            key = led.nkey(notification_id)
            h = r.hmget(key, "state", "type", "priority")
            if h[0] in ("submitting", "queued", "scheduled"):
                led.zrem_later(led.INFLIGHT, notification_id)
                if h[0] != "submitting":
                    r.zrem(led.lane_key(h[2]), notification_id)
                    r.zrem(led.SCHEDULED, notification_id)
                parts = str(np)
                fields = ["carrier", carrier, "parts", parts, "message_ids", " ".join(sent)]
                if nr < np:
                    fields += ["receipt_parts", str(nr)]
                led.transition(notification_id, key, "submitted", h[1], fields, ["carrier", carrier, "parts", parts])
                last_indexed = start + nr - 1 if op == "A" else 0
                for p in range(start, last_indexed + 1):
                    def keep_displaced(earlier: str | None, nid: str = notification_id,
                                       entry: str = f"{carrier} {mids[p - 1]}") -> None:
                        if earlier and earlier[:len(nid) + 1] != nid + " ":
                            displaced.append(f"{entry} {earlier}")

                    r.set_get(led.msgkey(carrier, mids[p - 1]), f"{notification_id} {p - 1}", "EX", led.RETENTION_S,
                              then=keep_displaced)
                if nr > 0 and led.RECEIPT_TIMEOUT > 0:
                    led.zadd_later(led.AWAITING, receipt_due, notification_id)
                last_early = start + nr - 1 if (op == "A" and led.early_possible()) else 0
                for p in range(start, last_early + 1):
                    ek = led.earlykey(carrier, mids[p - 1])
                    early = r.get(ek)
                    if early:
                        rstate, err, tails = _parked_receipt(early)
                        if led.apply_receipt(notification_id, key, p - 1, rstate, err, tails) is not False:
                            r.delete(ek)
                            led.zrem_later(led.EARLY_SET, f"{carrier} {mids[p - 1]}")
                            led.count("receipt_early_applied:" + carrier)
            else:
                led.count("outcome_ignored")
        elif op in ("R", "W", "F", "L"):
            notification_id, due, err, unknown = argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4]
            key = led.nkey(notification_id)
            h = r.hmget(key, "state", "type")
            free_reason = "no_carrier"
            if op == "L":
                cap = tonumber(argv[i + 5]) or 0
                if h[0] == "submitting" and r.hincrby(key, "link_losses", 1) <= cap:
                    op, free_reason = "W", "link_down"
                else:
                    op, due, err, unknown = argv[i + 6], argv[i + 8], argv[i + 9], argv[i + 10]
            if h[0] == "submitting":
                led.zrem_later(led.INFLIGHT, notification_id)
                if unknown == "1":
                    r.hincrby(key, "possible_duplicates", 1)
                    led.count("possible_duplicate")
                if op == "F":
                    led.transition(notification_id, key, "failed", h[1], ["error", err], ["error", err])
                    led.on_final(notification_id, key, "failed")
                else:
                    why = "retry"
                    if op == "W":
                        r.hincrby(key, "attempts", -1)
                        why = free_reason
                    led.transition(notification_id, key, "scheduled", h[1],
                                   ["due_at", due, "scheduled_reason", why, "error", err],
                                   ["due_at", due, "scheduled_reason", why, "error", err])
                    r.zadd(led.SCHEDULED, due, notification_id)
            else:
                led.count("outcome_ignored")
        elif op == "P":
            notification_id, carrier, np = argv[i + 1], argv[i + 2], int(tonumber(argv[i + 3]) or 0)
            key = led.nkey(notification_id)
            h = r.hmget(key, "state", "partial_message_ids")
            if h[0] == "submitting":
                ids = " ".join(f"{carrier}:{argv[i + 3 + p]}" for p in range(1, np + 1))
                if h[1]:
                    ids = h[1] + " " + ids
                r.hset(key, "partial_message_ids", ids)
                r.hincrby(key, "possible_duplicates", 1)
                led.count("possible_duplicate")
        elif op == "C":
            notification_id, carrier, err = argv[i + 1], argv[i + 2], argv[i + 3]
            key = led.nkey(notification_id)
            h = r.hmget(key, "state", "failed_carriers")
            if h[0] == "submitting":
                failed = f"{h[1]} {carrier}" if h[1] else carrier
                r.hset(key, "failed_carriers", failed, "error", err)
        elif op == "Y":
            notification_id, part, rstate, err = argv[i + 1], int(tonumber(argv[i + 2]) or 0), argv[i + 3], argv[i + 4]
            if led.apply_receipt(notification_id, led.nkey(notification_id), part, rstate, err, argv[i + 5]) is False:
                refused.append(str(number))
        elif op == "X":
            carrier, rstate, err, tails = argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4]
            excluded, nc = f" {argv[i + 5]} ", int(tonumber(argv[i + 6]) or 0)
            found = False
            for k in range(1, nc + 1):
                mk = led.DECLARED.get("m" + carrier + "\0" + str(argv[i + 6 + k]))
                v = r.get(mk) if mk else None
                if v:
                    found_id, _, found_part = v.partition(" ")
                    if f" {found_id} " in excluded:
                        pass
                    elif "n" + found_id not in led.DECLARED:
                        again.append(str(number))
                        found = True
                        break
                    elif led.apply_receipt(found_id, led.nkey(found_id), int(tonumber(found_part) or 0), rstate,
                                           err, tails) is not False:
                        found = True
                        break
            if not found and nc > 0:
                mid = str(argv[i + 7])
                ek = led.earlykey(carrier, mid)
                parked_value = f"{rstate} {err}" + (f" {tails}" if tails != "" else "")
                if r.get(ek) is not None:
                    if rstate in RECEIPT_FINAL:
                        r.set(ek, parked_value, "KEEPTTL")
                    led.count("receipt_early:" + carrier)
                else:
                    r.set(ek, parked_value, "EX", parking.early_ttl)
                    parking.park(f"{carrier} {mid}")
                    r.set(led.EARLY_PARKED, "1", "EX", parking.early_ttl)
                    led._early_parked = True
                    led.count("receipt_early:" + carrier)
        else:
            led.flush_sorted_sets()
            raise StepError(f"unknown outcome op {op}")
    led.flush_sorted_sets()
    return led.reply([again, refused, parking.evicted, displaced])
