"""ledger.lua in Python: the header every step reads, its key names, its counters and the
functions every step uses (transition, emit, lane_push, on_final, apply_receipt...).

Each function is ledger.lua's, line for line where it can be, so that the two can be read
side by side and a step leaves Redis as the script did (tests/push/test_steps.py).  The
arguments are the scripts' (NotificationLedger._run builds them): KEYS, the thirteen
ledger keys then the declared ones; ARGV, one JSON array.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.push.steps.overlay import Overlay

FIXED_KEYS = 13
FINAL = frozenset({"delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected"})
UNDELIVERABLE = frozenset({"UNDELIV", "EXPIRED", "REJECTD", "DELETED"})
RECEIPT_FINAL = frozenset({"DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED"})
# See ledger.lua: the fields one HMGET reads for a receipt, how many parts' receipts it
# reads, the digits of a number compared with a receipt's, the clock margin of TTLs.
RECEIPT_FIELDS = ("state", "parts", "type", "channel", "partner", "partner_receipt",
                  "voice_requested_at", "receipt_parts", "p0", "p1", "p2", "p3", "expires_at", "to")
PARTS_READ = 4
NUMBER_TAIL = 8
TTL_CLOCK_MARGIN = 60


class StepError(Exception):
    """What a script answered with redis.error_reply, or an error() it raised."""


def tonumber(value: Any) -> float | int | None:
    """Lua's tonumber: a number as is, a numeral string as its number, anything else nil."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return int(text, 0) if text[:2].lower() == "0x" else int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return None if text.lower() in ("nan", "inf", "-inf", "infinity", "-infinity", "+inf") else number


def tostring(value: Any) -> str:
    """Lua 5.1's tostring of a number (%.14g) or a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (isinstance(value, float) and value == int(value) and abs(value) < 1e14):
        return str(int(value))
    return f"{value:.14g}"


class Ledger:
    """One script call's context: ledger.lua's locals and functions."""

    def __init__(self, keys: list[str], payload: str, overlay: Overlay) -> None:
        argv = json.loads(payload)
        self.r = overlay
        self.NOW: str = argv[0]
        self.now = float(self.NOW)
        self.RETENTION_S = argv[1]
        self.RETENTION = tonumber(argv[1]) or 0
        self.MAXLEN = argv[2]
        self.SIGNATURE: str = argv[3]
        self.RECEIPT_TIMEOUT = tonumber(argv[4]) or 0
        self.EVENTS_MODE = argv[5]
        self.LANE = {"high": keys[0], "normal": keys[1], "bulk": keys[2]}
        (self.SCHEDULED, self.INFLIGHT, self.DEAD, self.EVENTS, self.VOICE, self.PARTNER, self.SEQUENCE,
         self.EARLY_PARKED, self.AWAITING, self.EARLY_SET) = keys[3:FIXED_KEYS]
        labelled = int(argv[6])
        self.DECLARED = {argv[7 + j]: keys[FIXED_KEYS + j] for j in range(labelled)}
        self.ARGV: list[Any] = argv[7 + labelled:]  # the script's own arguments (ARGV[FIRST] on)
        self.counts: dict[str, int] = {}
        self.partner_final: list[str] = []
        self._zadds: dict[str, list[Any]] = {}
        self._zrems: dict[str, list[str]] = {}
        self._seq_next, self._seq_last = 1, 0
        self._events_trimmed = False
        self._early_parked: bool | None = None
        # What a step's reads loaded that is no key's value (the intake group's view).
        self.loaded: dict[str, Any] = {}
        # Read everything the call declared (ReadBatch.declared), after a first run
        # needed what its reads left out.
        self.full = False

    # -- keys and counters ----------------------------------------------------------

    def declared(self, label: str) -> str:
        key = self.DECLARED.get(label)
        if key is None:
            raise StepError("ledger script: key not declared in KEYS: " + label)
        return key

    def nkey(self, notification_id: str) -> str:
        return self.declared("n" + notification_id)

    def msgkey(self, carrier: str, message_id: str) -> str:
        return self.declared("m" + carrier + "\0" + message_id)

    def earlykey(self, carrier: str, message_id: str) -> str:
        return self.declared("e" + carrier + "\0" + message_id)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def lane_key(self, lane: str | None) -> str:
        return self.LANE.get(lane or "", self.LANE["normal"])

    # -- sorted sets written once per step (flush_sorted_sets) --------------------------

    def zadd_later(self, key: str, score: str, member: str) -> None:
        self._zadds.setdefault(key, []).extend((score, member))

    def zrem_later(self, key: str, member: str) -> None:
        self._zrems.setdefault(key, []).append(member)

    def flush_sorted_sets(self) -> None:
        for key, pairs in self._zadds.items():
            for k in range(0, len(pairs), 2000):
                self.r.zadd(key, *pairs[k:k + 2000])
        for key, members in self._zrems.items():
            for k in range(0, len(members), 1000):
                self.r.zrem(key, *members[k:k + 1000])
        self._zadds, self._zrems = {}, {}

    def lane_push(self, lane: str | None, notification_id: str) -> None:
        if self._seq_next > self._seq_last:
            self._seq_last = int(self.r.get(self.SEQUENCE) or 0) + 256
            self.r.strings[self.SEQUENCE] = str(self._seq_last)
            self.r.command("INCRBY", self.SEQUENCE, 256)
            self._seq_next = self._seq_last - 255
        self.zadd_later(self.lane_key(lane), str(self._seq_next), notification_id)
        self._seq_next += 1

    # -- events, transitions, final states ---------------------------------------------

    def emit(self, notification_id: str, kind: str, ev: list[str]) -> None:
        if self.EVENTS_MODE != "all" and (self.EVENTS_MODE == "off" or kind not in FINAL):
            return
        head = ("type", "notification." + kind, "id", notification_id, "at", self.NOW)
        if self._events_trimmed:
            self.r.command("XADD", self.EVENTS, "*", *head, *ev)
        else:
            self.r.command("XADD", self.EVENTS, "MAXLEN", "~", self.MAXLEN, "*", *head, *ev)
            self._events_trimmed = True

    def transition(self, notification_id: str, key: str, state: str, ntype: str | None, fields: list[str],
                   ev: list[str], ttl: str | None = None, expires_at: str | None = None) -> None:
        stamp = "submit_started_at" if state == "submitting" else state + "_at"
        self.r.hset(key, "state", state, stamp, self.NOW, *fields)
        if ttl is not None:  # a string, even empty, is true in Lua
            self.r.expire(key, ttl)
        elif state in FINAL:
            valid_until = tonumber(expires_at) if expires_at is not None else None
            if valid_until is not None:
                if valid_until - TTL_CLOCK_MARGIN < self.now:
                    self.r.expire(key, self.RETENTION_S)
            elif self.r.ttl(key) < self.RETENTION:
                self.r.expire(key, self.RETENTION_S)
        if self.EVENTS_MODE == "all" or (self.EVENTS_MODE == "final" and state in FINAL):
            self.emit(notification_id, state, ["notification_type", ntype or "", *ev])
        self.count(state)

    def request_voice(self, notification_id: str, key: str, not_before: str) -> None:
        to, text, ntype = self.r.hmget(key, "to", "text", "type")
        text = text or ""
        if text[:len(self.SIGNATURE)] == self.SIGNATURE:
            text = text[len(self.SIGNATURE):]
        self.r.command("XADD", self.VOICE, "*", "id", notification_id, "to", to or "", "text", text,
                       "not_before", not_before)
        self.r.hset(key, "voice_requested_at", self.NOW)
        self.emit(notification_id, "voice_requested", ["notification_type", ntype or ""])
        self.count("voice_requested")

    def on_final(self, notification_id: str, key: str, state: str, h: list[str | None] | None = None) -> None:
        if state in ("failed", "rejected"):
            self.r.zadd(self.DEAD, self.now, notification_id)
        if h is None:
            h = self.r.hmget(key, "channel", "partner", "partner_receipt", "voice_requested_at")
        if state in ("undeliverable", "failed") and h[0] == "auto" and not h[3]:
            self.request_voice(notification_id, key, "0")
        if h[1] and h[2] == "1":
            self.r.zadd(self.PARTNER, self.now, notification_id)
            self.partner_final.append(notification_id)

    def apply_receipt(self, notification_id: str, key: str, part: int, rstate: str, err: str,
                      tails: str | None) -> bool | None:
        """False: the receipt names another number and was not applied."""
        h = self.r.hmget(key, *RECEIPT_FIELDS)
        to = h[13]
        if tails and to and len(to) >= NUMBER_TAIL and f" {to[-NUMBER_TAIL:]} " not in f" {tails} ":
            self.count("receipt_wrong_number")
            return False
        if not h[0] or h[0] in FINAL:
            if h[0] == "unconfirmed":
                self.r.hset(key, "late_receipt", rstate, "late_receipt_at", self.NOW)
            self.count("receipt_late")
            return None
        pname = f"p{part}"
        final_fields = [h[3], h[4], h[5], h[6]]
        if rstate == "DELIVRD":
            np = tonumber(h[7] or h[1] or "1")
            np = 1 if np is None else int(np)
            if part >= np:
                np = 0
            for q in range(np):
                if q != part:
                    v = h[8 + q] if q < PARTS_READ else self.r.hget(key, f"p{q}")
                    if v != "DELIVRD":
                        self.r.hset(key, pname, rstate)
                        return None
            self.transition(notification_id, key, "delivered", h[2],
                            [pname, rstate, "receipt_state", "DELIVRD", "receipt_error", err],
                            ["parts", str(np)], None, h[12])
            self.zrem_later(self.AWAITING, notification_id)
            self.zrem_later(self.INFLIGHT, notification_id)
            self.on_final(notification_id, key, "delivered", final_fields)
        elif rstate in UNDELIVERABLE:
            self.transition(notification_id, key, "undeliverable", h[2],
                            [pname, rstate, "receipt_state", rstate, "receipt_error", err,
                             "error", f"receipt {rstate} err {err}"],
                            ["receipt_state", rstate, "error_code", err, "part", str(part)], None, h[12])
            self.zrem_later(self.AWAITING, notification_id)
            self.zrem_later(self.INFLIGHT, notification_id)
            self.on_final(notification_id, key, "undeliverable", final_fields)
        elif part >= PARTS_READ or h[8 + part] != rstate:
            self.r.hset(key, pname, rstate)
        return None

    def early_possible(self) -> bool:
        if self._early_parked is None:
            self._early_parked = self.r.get(self.EARLY_PARKED) is not None
        return self._early_parked

    def flat_counts(self) -> list[str]:
        return [x for what, n in self.counts.items() for x in (what, str(n))]

    def reply(self, payload: list[Any]) -> list[Any]:
        """What the script returned: {payload, counts, partner ids}."""
        return [payload, self.flat_counts(), list(self.partner_final)]

    # -- take_listed.lua --------------------------------------------------------------

    def take_listed(self, key: str, upto: Any, ids: list[str]) -> list[str]:
        limit = tonumber(upto)
        due = []
        for member in ids:
            score = self.r.zscore(key, member)
            if score is not None and limit is not None and score <= limit:
                due.append(member)
        for k in range(0, len(due), 1000):
            self.r.zrem(key, *due[k:k + 1000])
        return due
