"""The notification ledger: every notification's state in Redis, changed only by Lua.

Theory of operation
-------------------
A notification is the hash ``keys.notification(id)``.  Its ``state`` moves through::

    queued ──claim──> submitting ──accepted──> submitted ──receipts──> delivered
      │  ^              │   │                                   ├────> undeliverable
      │  │              │   │                  (no receipt in time) └─> unconfirmed
      │  └─promote──┐   │   └─transient──> scheduled (retry) ──promote──> queued
      v             │   └─permanent/last attempt──> failed
    scheduled ──────┘        (lease lost, kill -9) ──recover──> queued
    (quiet hours)
    rejected (at intake)      expired (at intake, promotion or claim)

Fields: ``type``, ``to`` (the 11 digits: only the dispatcher and the voice hand-off read
it; never put in events or logs), ``to_masked``, ``params`` (JSON), ``text``,
``priority``, ``channel``, ``expires_at``, ``quiet_hours``, ``attempts``, ``carrier``,
``parts``, ``message_ids`` (space separated, part order, as the carrier sent them),
``partial_message_ids`` (``carrier:id`` of parts accepted before the rest of a long
message failed), ``p0``, ``p1``... (each part's last receipt state), ``error``, ``reason``, ``possible_duplicates`` and a ``<state>_at``
timestamp for each state reached (``submit_started_at`` for submitting).  Each change
renews the key's EXPIRE (retention) and appends an event ``type=notification.<state>``
with the id and non-personal fields to ``keys.events_stream`` (approximately capped at
`events_maxlen` entries).

Why Lua: a change touches the hash, a lane / the scheduled set / the in-flight set, the
message-id index and the events stream together; one script is atomic and is one round
trip for a whole batch.  The scripts are batch-shaped: the intake accepts a batch of
stream entries (and XACKs them in the same script), the dispatcher claims a batch from
the lanes, and submit outcomes and receipts that arrive in the same reactor turn are
applied together (`OutcomeWriter`).

Crash safety: a claimed notification is in ``keys.inflight`` (a sorted set scored by its
lease deadline) from the moment it is claimed (``submit_started_at`` set) until its
outcome is recorded.  The live process renews its leases; after ``kill -9`` the leases
run out and `recover_expired_leases` puts such notifications back at the front of their
lane, counting a possible duplicate (the submit may have reached the carrier while its
response was lost).  Stale lane entries are harmless: a claim only takes ``queued`` ones.
Each claim carries a token (recorded in the hash and in ``keys.claim(token)``); a claim
sent again with the token of one whose reply was lost returns that batch instead of
taking another, so a lost reply orphans nothing.

A submit that asked for a receipt waits for it in ``keys.awaiting_receipt`` (scored by
now + push.receipt_timeout_seconds); `close_overdue_receipts` makes the ones still
``submitted`` at that time ``unconfirmed``: final, so nothing waits for ever (partners
get their receipt, UNKNOWN).  A receipt that comes later is noted on the hash
(``late_receipt``) and changes no state.

Receipts find their notification through ``keys.message_id(carrier, id)`` ("<id> <part>")
written when the submit is accepted.  A receipt that arrives before that (the carrier
answered faster than we recorded the submit_sm_resp) is parked under
``keys.early_receipt`` and applied by the same script that records the message ids.

Every key a script touches arrives in KEYS, built by `gateway.store.keys.Keys` (one
schema): Redis Cluster routes a script by its KEYS, and during a slot migration only
declared keys make the server answer ASK/TRYAGAIN instead of running on half the data.
So work whose ids a script would otherwise find itself is read first: the claim reads
the lanes' heads (ZRANGE), the sweeps the due members (ZRANGEBYSCORE), receipts their
message-id index entries (MGET); the script then skips what another process took in
between.  The client must be created with ``decode_responses=True`` (as
gateway/store/service.py does).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway import metrics
from gateway.privacy import mask_phone
from gateway.push.render import DEFAULT_SIGNATURE
from gateway.smpp.receipts import canonical_message_id
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = [
    "FINAL_STATES",
    "STATES",
    "AcceptItem",
    "AcceptOutcome",
    "Claimed",
    "NotificationLedger",
    "OutcomeWriter",
    "new_claim_token",
    "public_view",
]

STATES = ("queued", "scheduled", "submitting", "submitted", "delivered", "undeliverable",
          "unconfirmed", "expired", "failed", "rejected")
FINAL_STATES = frozenset({"delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected"})
# Hash fields that hold personal data: never in events, status answers or logs.
PRIVATE_FIELDS = frozenset({"to", "text", "params"})

possible_duplicates = Counter(
    "gateway_push_possible_duplicates_total",
    "Submits retried after their response was lost (the citizen may get the message twice)",
    registry=metrics.REGISTRY,
)

_script_counters = {
    "receipt_early": Counter(
        "gateway_push_receipts_early_total",
        "Receipts that arrived before their submit response was recorded (parked)",
        registry=metrics.REGISTRY),
    "receipt_early_applied": Counter(
        "gateway_push_receipts_early_applied_total",
        "Parked receipts applied when the submit response was recorded", registry=metrics.REGISTRY),
    "claim_replayed": Counter(
        "gateway_push_claims_replayed_total",
        "Claims sent again after their reply was lost, answered with the batch they took",
        registry=metrics.REGISTRY),
    "receipt_late": Counter(
        "gateway_push_receipts_ignored_total",
        "Receipts for notifications already final or gone (duplicates)", registry=metrics.REGISTRY),
    "voice_requested": Counter(
        "gateway_push_voice_handoffs_total", "Notifications handed to the voice channel",
        registry=metrics.REGISTRY),
    "possible_duplicate": possible_duplicates,
}

# ----------------------------------------------------------------------------------------
# Lua: gateway/push/lua/*.lua, each including ledger.lua (the argument header, key names
# and shared functions).  KEYS: the ledger's twelve (NotificationLedger._ledger_keys),
# then every other key the call touches, labelled in the header (`_Declared`).  The
# arguments travel as one JSON array (the script's only real argument) that the prologue
# decodes into a local ARGV: the time, the header built by NotificationLedger._header, the
# labels, then the script's own arguments from FIRST.  redis-py packs each argument in
# Python (a third of the intake's and the writer's CPU with thousands of them per batch),
# json.dumps and cjson.decode do the same work in C.
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# Python side
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceptItem:
    """One request ready for `NotificationLedger.accept`.

    disposition: "queue", "schedule" (due_at), "expired", "voice" (due_at = not_before),
    "reject" (reason).  cap_key/cap: the daily-cap counter for bulk reminders ("" = none).
    fields: further hash fields (to, to_masked, params, text, channel, expires_at, ...).
    """

    id: str
    type: str
    disposition: str
    lane: str
    fields: Mapping[str, str]
    due_at: float = 0.0
    reason: str = ""
    cap_key: str = ""
    cap: int = 0
    entry_id: str = ""
    retry: bool = False
    expires_at: float = 0.0  # the record lives retention_seconds beyond this


@dataclass(frozen=True)
class AcceptOutcome:
    id: str
    state: str
    duplicate: bool
    reason: str = ""


@dataclass(frozen=True)
class Claimed:
    """A notification claimed for submission (in keys.inflight under a lease)."""

    id: str
    digits: str
    text: str
    attempts: int
    failed_carriers: tuple[str, ...]
    accepted_at: float
    type: str
    lane: str
    expires_at: float = 0.0  # Unix seconds; 0: none (the SMSC may keep it as long as it likes)


# ensure_ascii=False: the texts travel as UTF-8, as they did as separate arguments.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def new_claim_token() -> str:
    return uuid.uuid4().hex


def _fmt(value: float) -> str:
    # Times to the millisecond: enough for ordering and far below any timer we run.
    return f"{value:.3f}"


LANES = ("high", "normal", "bulk")


class _Declared:
    """The keys one ledger script call touches beyond the ledger's own, each with the
    label the script asks for it by (ledger.lua's declared()): ``n<id>`` a notification,
    ``m<carrier>\\0<message id>`` an index entry, ``e...`` a parked receipt, ``s`` the
    intake stream, ``k`` a claim list, ``c<k>`` a daily-cap counter."""

    __slots__ = ("_keys", "keys", "labels")

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self.keys: list[str] = []
        self.labels: dict[str, None] = {}  # ordered, without repeats

    def add(self, label: str, key: str) -> None:
        if label not in self.labels:
            self.labels[label] = None
            self.keys.append(key)

    def notification(self, notification_id: str) -> None:
        self.add("n" + notification_id, self._keys.notification(notification_id))

    def message_id(self, carrier: str, message_id: str) -> None:
        self.add(f"m{carrier}\x00{message_id}", self._keys.message_id(carrier, message_id))

    def early_receipt(self, carrier: str, message_id: str) -> None:
        self.add(f"e{carrier}\x00{message_id}", self._keys.early_receipt(carrier, message_id))


class NotificationLedger:
    """Reads and changes notifications; every state change goes through here.

    Args:
        redis: a redis.asyncio client created with decode_responses=True.
        keys: the key schema.
        retention_seconds: EXPIRE of a notification (and of its message-id index).
        events_maxlen: approximate cap of the events stream.
        signature: stripped from texts handed to voice.
        early_receipt_ttl_seconds: how long a receipt waits for its submit response.
        receipt_timeout_seconds: how long a submit waits for its receipt before it is
            unconfirmed (0: for ever).
    """

    def __init__(self, redis: Any, keys: Keys, retention_seconds: float, *,
                 events_maxlen: int = 1_000_000, signature: str = DEFAULT_SIGNATURE,
                 early_receipt_ttl_seconds: float = 86_400.0, receipt_timeout_seconds: float = 172_800.0,
                 on_partner_final: Any = None) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = int(max(1, retention_seconds))
        self.early_receipt_ttl_seconds = int(max(1, early_receipt_ttl_seconds))
        # Called with the ids of partner messages that reached a final state.
        self.on_partner_final = on_partner_final
        # KEYS[1..12] of every ledger script (ledger.lua names them).
        self._ledger_keys = [
            keys.lane("high"), keys.lane("normal"), keys.lane("bulk"),
            keys.scheduled, keys.inflight, keys.dead_letters, keys.events_stream,
            keys.voice_requests, keys.partner_receipts_pending, keys.lane_sequence,
            keys.early_receipts_parked, keys.awaiting_receipt,
        ]
        self._header = [str(self.retention_seconds), str(events_maxlen), signature,
                        str(int(max(0, receipt_timeout_seconds)))]
        # The header as the middle of a JSON array: "a","b",...,"z".
        self._header_json = _dumps(self._header)[1:-1]
        def register(name: str) -> Any:
            return register_lua(redis, __file__, name)

        self._accept = register("accept.lua")
        self._claim = register("claim.lua")
        self._outcomes = register("outcomes.lua")
        self._promote = register("promote.lua")
        self._recover = register("recover.lua")
        self._receipts_overdue = register("receipts_overdue.lua")
        self._transition = register("transition.lua")

    # -- script plumbing -------------------------------------------------------------

    def _declared(self) -> _Declared:
        return _Declared(self.keys)

    async def _run(self, script: Any, now: float, args: list[Any], declared: _Declared | None = None) -> list[Any]:
        # Strings and ints only (the scripts tonumber() what they count with).
        labels = list(declared.labels) if declared else []
        tail = _dumps([len(labels), *labels, *args])[1:]
        payload = f'["{_fmt(now)}",{self._header_json},{tail}'
        keys = self._ledger_keys + declared.keys if declared else self._ledger_keys
        result = await script(keys=keys, args=[payload])
        payload, flat_counts, partner_ids = result
        for k in range(0, len(flat_counts), 2):
            what, n = flat_counts[k], int(flat_counts[k + 1])
            if what in STATES:
                metrics.notifications.labels(what).inc(n)
            elif what in _script_counters:
                _script_counters[what].inc(n)
        if partner_ids and self.on_partner_final is not None:
            self.on_partner_final(list(partner_ids))
        return list(payload)

    # -- the contract other components use ---------------------------------------------

    async def transition(self, notification_id: str, state: str, *, now: float, **fields: Any) -> bool:
        """Set `state`, `<state>_at` and `fields`; append the event; count it.

        Fields named to, text or params are stored but never put in the event.  Returns
        False when the notification does not exist (nothing is written then).
        """
        if state not in STATES:
            raise ValueError(f"unknown notification state {state!r}")
        flat: list[str] = []
        event: list[str] = []
        for name, value in fields.items():
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            flat += [name, text]
            if name not in PRIVATE_FIELDS:
                event += [name, text]
        declared = self._declared()
        declared.notification(notification_id)
        payload = await self._run(self._transition, now, [notification_id, state, len(flat), len(event), *flat, *event],
                                  declared)
        return payload[0] == "1"

    async def get(self, notification_id: str) -> dict[str, Any] | None:
        """The public view (masked recipient, no text) or None when unknown."""
        raw = await self.redis.hgetall(self.keys.notification(notification_id))
        return public_view(notification_id, raw) if raw else None

    async def raw(self, notification_id: str) -> dict[str, str]:
        """Every field, including the digits and the text: for the dispatcher and tests."""
        return dict(await self.redis.hgetall(self.keys.notification(notification_id)))

    # -- batch operations ---------------------------------------------------------------

    async def accept(self, items: Sequence[AcceptItem], *, now: float,
                     stream: tuple[str, str] = ("", "")) -> list[AcceptOutcome]:
        """Record a batch of validated requests (idempotent per id); XACK their entries.

        An id that exists is a duplicate and left alone, unless its state is rejected (a
        corrected request replaces it) or it failed and the item is a dead-letter retry.
        """
        if not items:
            return []
        declared = self._declared()
        if stream[0]:
            declared.add("s", stream[0])
        args: list[Any] = [stream[1], len(items)]
        for item in items:
            fields: list[str] = []
            for name, value in item.fields.items():
                fields += [name, value]
            ttl = self.retention_seconds + max(0, int(item.expires_at - now))
            declared.notification(item.id)
            cap_label = ""
            if item.cap_key:
                cap_label = "c" + item.cap_key
                declared.add(cap_label, item.cap_key)
            args += [item.id, item.entry_id, "1" if item.retry else "0", item.disposition,
                     _fmt(item.due_at) if item.due_at else "0", item.lane, cap_label, item.cap, item.reason,
                     item.type, ttl, len(fields), *fields]
        payload = await self._run(self._accept, now, args, declared)
        return [AcceptOutcome(payload[k], payload[k + 1], payload[k + 2] == "duplicate",
                              "" if payload[k + 2] == "duplicate" else payload[k + 2])
                for k in range(0, len(payload), 3)]

    async def ack_only(self, stream: str, group: str, entry_ids: Iterable[str]) -> None:
        """XACK and delete entries that carried nothing to record (e.g. empty entries)."""
        ids = list(entry_ids)
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, group, *ids)
                pipe.xdel(stream, *ids)
                await pipe.execute()

    async def claim(self, n: int, *, now: float, lease_seconds: float, quiet_until: float,
                    reserve: int = 0, token: str | None = None) -> list[Claimed]:
        """Take up to `n` queued notifications, highest lane first, for submission.

        Expired ones become expired; quiet-hours types claimed inside quiet hours go back
        to scheduled (`quiet_until` is the end of the current window or 0).

        `token` names this claim (a fresh one when None).  Called again with a token whose
        claim did happen (its reply was lost on the way), it returns what that claim took
        and still holds, and takes nothing new: a lost reply costs no lease wait and no
        possible duplicate.
        """
        if n <= 0:
            return []
        token = token or new_claim_token()
        claim_key = self.keys.claim(token)
        # The script may only touch notifications it declares, so the lanes' heads are read
        # first; what another process takes meanwhile, the script skips.
        async with self.redis.pipeline(transaction=False) as pipe:
            for lane in LANES:
                pipe.zrange(self.keys.lane(lane), 0, n - 1)
            peeked: list[list[str]] = await pipe.execute()
        if not any(peeked) and not await self.redis.exists(claim_key):
            return []
        head = [_fmt(lease_seconds), _fmt(quiet_until), token]
        declared = self._declared()
        declared.add("k", claim_key)
        for ids in peeked:
            for notification_id in ids:
                declared.notification(notification_id)
        payload = await self._run(self._claim, now, [n, reserve, *head, "claim", *map(len, peeked),
                                                     *(i for ids in peeked for i in ids)], declared)
        if payload == ["replay"]:
            # This token's claim did run (its reply was lost): declare what it listed.
            declared = self._declared()
            declared.add("k", claim_key)
            for notification_id in await self.redis.lrange(claim_key, 0, -1):
                declared.notification(notification_id)
            payload = await self._run(self._claim, now, [n, reserve, *head, "replay", 0, 0, 0], declared)
        rank = {"high": 0, "normal": 1, "bulk": 2}
        claimed = [Claimed(row[0], row[1], row[2], int(row[3]), tuple(row[4].split()) if row[4] else (),
                           float(row[5]), row[6], row[7], float(row[8] or 0)) for row in payload]
        claimed.sort(key=lambda c: rank.get(c.lane, 1))  # stable: FIFO within a lane
        return claimed

    async def apply(self, ops: Sequence[Sequence[Any]], *, now: float) -> None:
        """Apply outcome ops (see OutcomeWriter) in one script.

        Receipts are looked up in the message-id index first (one MGET), because the
        script may only touch the notifications it declares; one whose index entry appears
        in between is sent again (rare: the entry is written while the receipt travels).
        """
        pending = list(ops)
        # Each round resolves what the last one found written meanwhile; a receipt found
        # twice in a row is applied, so two rounds suffice and four are generous.
        for _ in range(4):
            if not pending:
                return
            resolved = await self._resolve_receipts(pending)
            declared = self._declared()
            args: list[Any] = [len(resolved), self.early_receipt_ttl_seconds]
            for op in resolved:
                _declare_op(declared, op)
                args.extend(op)
            again = await self._run(self._outcomes, now, args, declared)
            pending = [pending[int(number) - 1] for number in again]
        raise RuntimeError(f"{len(pending)} receipts kept changing their message-id index entries")

    async def _resolve_receipts(self, ops: list[Sequence[Any]]) -> list[Sequence[Any]]:
        """X ops whose candidate is in the message-id index become Y ops (the notification
        and part named); the others stay X (parked by the script as early receipts)."""
        lookups = [self.keys.message_id(op[1], candidate) for op in ops if op[0] == "X"
                   for candidate in op[5:5 + int(op[4])]]
        if not lookups:
            return ops
        found = iter(await self.redis.mget(lookups))
        resolved: list[Sequence[Any]] = []
        for op in ops:
            if op[0] != "X":
                resolved.append(op)
                continue
            hits = [value for value in (next(found) for _ in range(int(op[4]))) if value]
            if hits:
                notification_id, _, part = hits[0].rpartition(" ")
                resolved.append(("Y", notification_id, part, op[2], op[3]))
            else:
                resolved.append(op)
        return resolved

    async def promote_due(self, *, now: float, limit: int = 1000) -> int:
        """Move scheduled notifications whose time has come to their lane; how many."""
        payload = await self._sweep(self._promote, self.keys.scheduled, now, limit)
        return int(payload[0]) if payload else 0

    async def close_overdue_receipts(self, *, now: float, limit: int = 1000) -> tuple[int, int]:
        """Notifications still ``submitted`` whose receipt timeout has passed become
        ``unconfirmed``; returns (entries due, notifications closed)."""
        payload = await self._sweep(self._receipts_overdue, self.keys.awaiting_receipt, now, limit)
        return (int(payload[0]), int(payload[1])) if payload else (0, 0)

    async def recover_expired_leases(self, *, now: float, limit: int = 1000) -> int:
        """Put notifications whose claim lease ran out back at the front of their lane."""
        payload = await self._sweep(self._recover, self.keys.inflight, now, limit)
        return int(payload[0]) if payload else 0

    async def _sweep(self, script: Any, key: str, now: float, limit: int) -> list[Any] | None:
        """Run a sweep script on the members of sorted set `key` due by `now` (at most
        `limit`), read first so that the script can declare their notifications; None
        when none is due (no script runs)."""
        ids = await self.redis.zrangebyscore(key, "-inf", _fmt(now), start=0, num=limit)
        if not ids:
            return None
        declared = self._declared()
        for notification_id in ids:
            declared.notification(notification_id)
        return await self._run(script, now, [len(ids), *ids], declared)

    async def renew_leases(self, ids: Iterable[str], *, deadline: float) -> None:
        """Extend the leases of notifications this process is still submitting."""
        ids = list(ids)
        if ids:
            mapping = dict.fromkeys(ids, deadline)
            await self.redis.zadd(self.keys.inflight, mapping, xx=True)


# ----------------------------------------------------------------------------------------
# Outcome ops: built by the dispatcher and the receipt recorder, applied in batches.
# ----------------------------------------------------------------------------------------


def op_accepted(notification_id: str, carrier: str, message_ids: Sequence[str], *,
                receipt_parts: int | None = None) -> tuple[Any, ...]:
    """The carrier accepted every part; message ids in part order, as the carrier sent
    them (kept so, for grepping carrier logs; indexed under their canonical form).

    receipt_parts: how many leading parts asked for a receipt (None: all); only their
    ids are indexed, and delivery is judged on their receipts alone.
    """
    parts = len(message_ids)
    indexed = parts if receipt_parts is None else max(0, min(receipt_parts, parts))
    return ("A", notification_id, carrier, parts, indexed, *message_ids,
            *(canonical_message_id(m) for m in message_ids))


def op_partly_sent(notification_id: str, carrier: str, message_ids: Sequence[str]) -> tuple[Any, ...]:
    """A long message of which `carrier` accepted these parts before another part failed:
    the ids are kept (``partial_message_ids``, ``carrier:id``) and a possible duplicate
    is counted, since sending the message again repeats those parts."""
    return ("P", notification_id, carrier, len(message_ids), *message_ids)


def op_retry(notification_id: str, due_at: float, error: str, response_unknown: bool) -> tuple[Any, ...]:
    return ("R", notification_id, _fmt(due_at), error, "1" if response_unknown else "0")


def op_wait(notification_id: str, due_at: float, error: str) -> tuple[Any, ...]:
    """No carrier could take it now: scheduled again without using up an attempt."""
    return ("W", notification_id, _fmt(due_at), error, "0")


def op_failed(notification_id: str, error: str, response_unknown: bool) -> tuple[Any, ...]:
    return ("F", notification_id, "0", error, "1" if response_unknown else "0")


def op_link_down(notification_id: str, due_at: float, error: str, response_unknown: bool,
                 max_link_losses: int, otherwise: Sequence[Any]) -> tuple[Any, ...]:
    """The link went away under the submit: scheduled again without spending an attempt
    while the notification's ``link_losses`` stay within `max_link_losses`; beyond that
    `otherwise` (an op_retry or op_failed for the same id) applies."""
    return ("L", notification_id, _fmt(due_at), error, "1" if response_unknown else "0",
            max_link_losses, *otherwise)


def op_carrier_refused(notification_id: str, carrier: str, error: str) -> tuple[Any, ...]:
    """A permanent failure at one carrier; the dispatcher fails over to another."""
    return ("C", notification_id, carrier, error)


def op_receipt(carrier: str, state: str, error_code: str, candidates: Sequence[str]) -> tuple[Any, ...]:
    """A delivery receipt; candidates: canonical message-id forms to look up, best first."""
    return ("X", carrier, state, error_code or "", len(candidates), *candidates)


def _declare_op(declared: _Declared, op: Sequence[Any]) -> None:
    """Declare the keys outcomes.lua touches for one op."""
    kind = op[0]
    if kind == "X":
        carrier, candidates = op[1], op[5:5 + int(op[4])]
        for candidate in candidates:
            declared.message_id(carrier, candidate)
        if candidates:
            declared.early_receipt(carrier, candidates[0])
        return
    declared.notification(op[1])
    if kind == "A":  # A id carrier parts indexed sent-ids... canonical-ids...
        carrier, parts, indexed = op[2], int(op[3]), int(op[4])
        for message_id in op[5 + parts:5 + parts + indexed]:
            declared.message_id(carrier, message_id)
            declared.early_receipt(carrier, message_id)


# ----------------------------------------------------------------------------------------


_PUBLIC_SCALARS = ("state", "type", "priority", "channel", "carrier", "error", "reason",
                   "receipt_state", "late_receipt", "scheduled_reason", "source", "partner")
_PUBLIC_NUMBERS = ("attempts", "parts", "possible_duplicates")


def public_view(notification_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """A notification as the status API shows it: masked recipient, no text or params."""
    view: dict[str, Any] = {"id": notification_id}
    for name in _PUBLIC_SCALARS:
        if raw.get(name):
            view[name] = raw[name]
    for name in _PUBLIC_NUMBERS:
        if raw.get(name):
            view[name] = int(raw[name])
    view["to"] = raw.get("to_masked") or mask_phone(raw.get("to", ""))
    if raw.get("message_ids"):
        view["message_ids"] = raw["message_ids"].split()
    parts = int(raw.get("parts") or 0)
    if parts:
        view["part_states"] = [raw.get(f"p{p}", "") for p in range(parts)]
    if raw.get("failed_carriers"):
        view["failed_carriers"] = raw["failed_carriers"].split()
    if raw.get("partial_message_ids"):
        view["partial_message_ids"] = raw["partial_message_ids"].split()
    for name, value in raw.items():
        if name.endswith("_at") and value:
            try:
                view[name] = float(value)
            except ValueError:
                continue
    return view


# ----------------------------------------------------------------------------------------
# Coalescing writer
# ----------------------------------------------------------------------------------------


class OutcomeWriter:
    """Collects outcome ops arriving in one reactor turn and applies them in one script.

    `add(op)` returns a Deferred that fires once the op is in Redis.  One flush runs at a
    time; ops added meanwhile form the next batch, so batches grow with the load.

    When Redis is unreachable, ops with ``keep=True`` (submit outcomes: the message went
    out, its message ids must be recorded) stay queued and are retried with backoff;
    ops with ``keep=False`` (receipts) fail their Deferred, so that the link does not
    acknowledge the deliver_sm and the carrier delivers the receipt again.
    """

    def __init__(self, ledger: NotificationLedger, clock: Any, *, max_batch: int = 5000,
                 backoff_initial_seconds: float = 0.1, backoff_max_seconds: float = 5.0) -> None:
        self.ledger = ledger
        self.clock = clock
        self.max_batch = max_batch
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        # (op, what to tell when it is applied, keep): a Deferred, or a _Then (add_then)
        self._pending: list[tuple[Sequence[Any], Any, bool]] = []
        self._scheduled = False
        self._flushing = False
        self._idle_waiters: list[Deferred[None]] = []

    def add(self, op: Sequence[Any], *, keep: bool = True) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._enqueue((op, d, keep))
        return d

    def add_then(self, op: Sequence[Any], callback: Callable[..., object], *args: Any) -> None:
        """Like ``add(op, keep=True)``, but calls ``callback(*args)`` once the op is
        applied or has failed (the writer logs failures), without a Deferred: the
        dispatcher records every submit outcome so, and a Deferred with its callbacks
        cost more than the record itself."""
        self._enqueue((op, _Then(callback, args), True))

    def _enqueue(self, entry: tuple[Sequence[Any], Any, bool]) -> None:
        # One flush per reactor turn: ops added meanwhile join the batch.
        self._pending.append(entry)
        if not self._scheduled and not self._flushing:
            self._scheduled = True
            self.clock.callLater(0, self._start)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _start(self) -> None:
        self._scheduled = False
        if self._flushing:
            return
        if not self._pending:
            self._release_waiters()
            return
        self._flushing = True
        as_deferred(self._flush()).addErrback(
            lambda f: _writer_log.failure("outcome writer stopped", f))

    async def _flush(self) -> None:
        delay = self.backoff_initial_seconds
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    await self.ledger.apply([op for op, _, _ in batch], now=self.clock.seconds())
                except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                    kept = [entry for entry in batch if entry[2]]
                    for _, d, keep in batch:
                        if not keep:
                            d.errback(e)  # only add() takes keep=False, so a Deferred
                    self._pending[:0] = kept
                    _writer_log.error("redis unavailable while recording {count} outcomes: {error}; retrying",
                                      count=len(batch), error=type(e).__name__)
                    await _sleep(self.clock, delay)
                    delay = min(delay * 2, self.backoff_max_seconds)
                    continue
                except Exception as e:
                    _writer_log.failure("recording {count} outcomes failed", count=len(batch))
                    for _, d, _ in batch:
                        d.errback(e)
                    continue
                delay = self.backoff_initial_seconds
                for _, d, _ in batch:
                    d.callback(None)
        finally:
            self._flushing = False
            if self._pending and not self._scheduled:
                self._scheduled = True
                self.clock.callLater(0, self._start)
            elif not self._pending:
                self._release_waiters()

    def _release_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a bounded wait may have given up (cancelled) meanwhile
                waiter.callback(None)

    async def flushed(self) -> None:
        """Wait until every op added so far is applied (or failed)."""
        if not self._pending and not self._flushing and not self._scheduled:
            return
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        await wait_deferred(d)


class _Then:
    """What `OutcomeWriter.add_then` calls, shaped like the Deferred that `add` uses."""

    __slots__ = ("args", "function")

    def __init__(self, function: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args

    def callback(self, _: object) -> None:
        self.function(*self.args)

    def errback(self, _: object) -> None:
        self.function(*self.args)  # the writer logged it; the lease recovers the message


async def _sleep(clock: Any, seconds: float) -> None:
    await wait_deferred(deferLater(clock, seconds))


_writer_log = Logger()
