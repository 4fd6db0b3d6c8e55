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
it; never put in events or logs), ``to_masked`` (rejected requests only, whose ``to`` is
the raw input; otherwise derived from ``to`` when shown), ``params`` (JSON), ``text``,
``priority``, ``channel``, ``expires_at``, ``quiet_hours`` ("1" when held for quiet hours,
else absent), ``attempts`` (absent until the first claim), ``carrier``,
``parts``, ``message_ids`` (space separated, part order, as the carrier sent them),
``partial_message_ids`` (``carrier:id`` of parts accepted before the rest of a long
message failed), ``p0``, ``p1``... (each part's last receipt state), ``error``, ``reason``, ``possible_duplicates`` and a ``<state>_at``
timestamp for each state reached (``submit_started_at`` for submitting).  The key
expires retention + validity after acceptance, and at least the retention after a final
state (renewed then only when less is left).  Each change appends an event
``type=notification.<state>`` (push.events: all; final: final states only; off: none)
with the id and non-personal fields to ``keys.events_stream`` (approximately capped at
`events_maxlen` entries, by the first XADD of each script).

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

import asyncio
import json
import math
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from prometheus_client import Counter
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway import metrics
from gateway.privacy import mask_phone
from gateway.push.render import DEFAULT_SIGNATURE
from gateway.push.steps import STEPS
from gateway.push.steps.driver import Fence, StepLocks, StepScript
from gateway.records import hot_record
from gateway.smpp.receipts import canonical_message_id
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys, PartitionKeys
from gateway.store.reads import get_many
from gateway.store.refusals import RefusalLog, is_unavailable
from gateway.store.replication import ReplicaWaits
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
    "gateway12123_push_possible_duplicates_total",
    "Submits retried after their response was lost (the citizen may get the message twice)",
    registry=metrics.REGISTRY,
)

replication_short = Counter(
    "gateway12123_push_intake_replication_short_total",
    "Intake batches acknowledged although fewer replicas than push.intake_wait_replicas had them",
    registry=metrics.REGISTRY,
)

receipt_replication_short = Counter(
    "gateway12123_push_receipt_replication_short_total",
    "Batches of receipts acknowledged, or of submits recorded, although fewer replicas than "
    "push.delivery_wait_replicas had them (the receipts, or the submits' message-id index entries)",
    registry=metrics.REGISTRY,
)

# Deferred receipts kept per partition at most: a migration's or failover's worth at a
# national peak (1,200 receipts/s for a minute is 72,000; about 200 bytes each).  Beyond
# it a receipt is refused and the carrier delivers it again, as without deferral.
DEFERRED_RECEIPTS_MAX = 100_000

# An entry of a deferred-receipts stream this version cannot read (a newer gateway's
# layout during a rolling deploy, or damaged) is passed over and left this long for a
# process that can read it, then deleted and counted: a deploy rolls through a fleet in
# minutes, and newer processes apply what they kept within a housekeeping period.
UNREADABLE_DEFERRED_KEEP_SECONDS = 600.0

_script_counters = {
    "receipt_wrong_number": Counter(
        "gateway12123_push_receipts_wrong_number_total",
        "Receipts not applied to the notification their message id named: they carry another number "
        "(an SMSC reusing ids, or another message's id in hex or decimal)", registry=metrics.REGISTRY),
    "claim_replayed": Counter(
        "gateway12123_push_claims_replayed_total",
        "Claims sent again after their reply was lost, answered with the batch they took",
        registry=metrics.REGISTRY),
    "receipt_late": Counter(
        "gateway12123_push_receipts_ignored_total",
        "Receipts for notifications already final or gone (duplicates)", registry=metrics.REGISTRY),
    "voice_requested": Counter(
        "gateway12123_push_voice_handoffs_total", "Notifications handed to the voice channel",
        registry=metrics.REGISTRY),
    "possible_duplicate": possible_duplicates,
    "receipt_deferred_unreadable": Counter(
        "gateway12123_push_receipts_deferred_unreadable_total",
        "Entries of the deferred-receipts streams this version could not read, deleted after "
        "UNREADABLE_DEFERRED_KEEP_SECONDS (their receipts lost: the notification may end unconfirmed)",
        registry=metrics.REGISTRY),
    "receipt_deferred": Counter(
        "gateway12123_push_receipts_deferred_total",
        "Receipts kept in their message id's partition while their notification's partition failed "
        "(applied later, not refused)", registry=metrics.REGISTRY),
}

# Counted by the scripts as '<name>:<carrier>'.
_carrier_counters = {
    "receipt_early": metrics.receipts_early,
    "receipt_early_applied": metrics.receipts_early_applied,
    "receipt_unparked": metrics.receipts_unparked,
}

# ----------------------------------------------------------------------------------------
# Lua: gateway/push/lua/*.lua, each including ledger.lua (the argument header, key names
# and shared functions).  KEYS: the ledger's thirteen (NotificationLedger._ledger_keys),
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


@hot_record
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


@hot_record
class AcceptOutcome:
    id: str
    state: str
    duplicate: bool
    reason: str = ""


@hot_record
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


async def _gather(*runs: Any, return_exceptions: bool = False) -> list[Any]:
    """asyncio.gather, except that a single awaitable is awaited in place.  gather makes a
    Task of each (a loop turn to start it and one to wake the caller, each an epoll_wait),
    which with one partition, the default, is all it adds.  Measured: 1,172 -> 1,164
    thousand gateway instructions per notification (bench/redis_instructions.py --process
    gateway), within that count's 1 % between runs."""
    if len(runs) == 1:
        try:
            return [await runs[0]]
        except Exception as e:  # as gather's return_exceptions: errors, not cancellation
            if return_exceptions:
                return [e]
            raise
    return list(await asyncio.gather(*runs, return_exceptions=return_exceptions))


def _fmt(value: float) -> str:
    # Times to the millisecond: enough for ordering and far below any timer we run.
    return f"{value:.3f}"


LANES = ("high", "normal", "bulk")


class ParkedReceipt(NamedTuple):
    """A receipt parked before its submit was recorded: its key, and the sorted set (of
    its partition) that counts it against push.early_receipts_max, with its member."""
    key: str
    counted_in: str
    member: str


class _Declared:
    """The keys one ledger script call touches beyond the ledger's own, each with the
    label the script asks for it by (ledger.lua's declared()): ``n<id>`` a notification,
    ``m<carrier>\\0<message id>`` an index entry, ``e...`` a parked receipt, ``s`` the
    intake stream, ``k`` a claim list, ``c<key>`` a daily-cap counter.  All of one
    partition (`PartitionKeys`): the script runs in that partition's slot."""

    __slots__ = ("_keys", "keys", "labels")

    def __init__(self, keys: PartitionKeys) -> None:
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
        events: push.events: which state changes become events (all, final, off).
        wait_replicas: push.intake_wait_replicas: replicas that must have an accepted
            batch (WAIT) before `accept` returns.
        receipt_wait_replicas: push.delivery_wait_replicas: replicas that must have the
            receipts of a batch (WAIT) before `apply` reports them recorded, and an
            accepted submit's message-id index entries before its submit is recorded.
        signature: stripped from texts handed to voice.
        early_receipt_ttl_seconds: how long a receipt waits for its submit response.
        early_receipts_max: push.early_receipts_max, receipts parked at once in the whole
            pipeline (each partition takes its share).
        receipt_timeout_seconds: how long a submit waits for its receipt before it is
            unconfirmed (0: for ever).
        engine: "scripts" (Lua in Redis) or "steps" (the same logic in this process,
            gateway/push/steps/; benchmarks and tests only: the writers that do not own a
            partition, HTTP intake and receipts among them, do not go through its owner yet).
        step_fence: with engine "steps", the `Fence` of a call given its KEYS (its
            partition's owner key and this process), None for none.
        step_writer_lock: with engine "steps", each step holds its partition's writer
            lock (any number of processes may write a partition; gateway/push/steps/driver.py).
    """

    def __init__(self, redis: Any, keys: Keys, retention_seconds: float, *,
                 events_maxlen: int = 1_000_000, signature: str = DEFAULT_SIGNATURE, events: str = "all",
                 wait_replicas: int = 0, receipt_wait_replicas: int = 0,
                 early_receipt_ttl_seconds: float = 86_400.0, receipt_timeout_seconds: float = 172_800.0,
                 early_receipts_max: int = 1_000_000, on_partner_final: Any = None,
                 engine: str = "scripts", step_fence: Callable[[list[str]], Fence | None] | None = None,
                 step_writer_lock: bool = False) -> None:
        self.redis = redis
        self.keys = keys
        self.retention_seconds = int(max(1, retention_seconds))
        self.early_receipt_ttl_seconds = int(max(1, early_receipt_ttl_seconds))
        # push.early_receipts_max is the fleet's: each partition parks its share.
        self.early_receipts_per_partition = max(1, -(-early_receipts_max // keys.partitions))
        # Called with the ids of partner messages that reached a final state.
        self.on_partner_final = on_partner_final
        self.wait_replicas = wait_replicas
        self.receipt_wait_replicas = receipt_wait_replicas
        self.replica_waits = ReplicaWaits(redis)  # intake's and receipts': one view of each master
        # KEYS[1..13] of every ledger script in partition k (ledger.lua names them).
        self._ledger_keys = [[
            part.lane("high"), part.lane("normal"), part.lane("bulk"),
            part.scheduled, part.inflight, part.dead_letters, part.events_stream,
            part.voice_requests, part.partner_receipts_pending, part.lane_sequence,
            part.early_receipts_parked, part.awaiting_receipt, part.early_receipts,
        ] for part in keys.all_partitions]
        self._claim_rotation = 0
        if events not in ("all", "final", "off"):
            raise ValueError(f"events must be all, final or off, not {events!r}")
        self._header = [str(self.retention_seconds), str(events_maxlen), signature,
                        str(int(max(0, receipt_timeout_seconds))), events]
        # The header as the middle of a JSON array: "a","b",...,"z".
        self._header_json = _dumps(self._header)[1:-1]
        if engine not in ("scripts", "steps"):
            raise ValueError(f"engine must be scripts or steps, not {engine!r}")

        step_locks = StepLocks()
        # a call's partition, by its first KEY (the partition's high lane)
        writer_by_lane = {part.lane("high"): part.step_writer for part in keys.all_partitions}
        writer_of = (lambda call_keys: writer_by_lane[call_keys[0]]) if step_writer_lock else None

        def register(name: str) -> Any:
            if engine == "steps" and name in STEPS:
                # the script's logic run in this process (gateway/push/steps/): only where
                # this process is the partitions' one writer, which nothing enforces yet
                return StepScript(redis, name, step_fence, step_locks, writer_of)
            return register_lua(redis, __file__, name)

        self._accept = register("accept.lua")
        self._claim = register("claim.lua")
        self._outcomes = register("outcomes.lua")
        self._promote = register("promote.lua")
        self._recover = register("recover.lua")
        self._receipts_overdue = register("receipts_overdue.lua")
        self._transition = register("transition.lua")
        self._daily_cap = register("daily_cap.lua")
        self._change_if = register("change_if.lua")
        self._ack_trim = register("ack_trim.lua")

    # -- script plumbing -------------------------------------------------------------

    def _declared(self, partition: int = 0) -> _Declared:
        return _Declared(self.keys.partition(partition))

    async def _run(self, script: Any, now: float, args: list[Any], declared: _Declared | None = None,
                   partition: int = 0) -> list[Any]:
        # Strings and ints only (the scripts tonumber() what they count with).
        labels = list(declared.labels) if declared else []
        tail = _dumps([len(labels), *labels, *args])[1:]
        payload = f'["{_fmt(now)}",{self._header_json},{tail}'
        fixed = self._ledger_keys[partition]
        keys = fixed + declared.keys if declared else fixed
        result = await script(keys=keys, args=[payload])
        payload, flat_counts, partner_ids = result
        for k in range(0, len(flat_counts), 2):
            what, n = flat_counts[k], int(flat_counts[k + 1])
            if what in STATES:
                metrics.notifications.labels(what).inc(n)
            elif what in _script_counters:
                _script_counters[what].inc(n)
            else:  # '<name>:<carrier>'
                name, _, carrier = what.partition(":")
                if name in _carrier_counters:
                    _carrier_counters[name].labels(carrier).inc(n)
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
        partition = self.keys.partition_of(notification_id)
        declared = self._declared(partition)
        declared.notification(notification_id)
        payload = await self._run(self._transition, now, [notification_id, state, len(flat), len(event), *flat, *event],
                                  declared, partition)
        return payload[0] == "1"

    async def change_if(self, notification_id: str, allowed: Sequence[str], *, now: float,
                        state: str = "", **fields: str) -> tuple[bool, str]:
        """Set `fields` (and `state`, leaving lanes and schedule) only while the
        notification is in one of the `allowed` states, atomically; returns (changed,
        the state found: "" when unknown).  For partners' cancel_sm and replace_sm."""
        if state and state not in STATES:
            raise ValueError(f"unknown notification state {state!r}")
        flat = [x for name, value in fields.items() for x in (name, value)]
        partition = self.keys.partition_of(notification_id)
        declared = self._declared(partition)
        declared.notification(notification_id)
        payload = await self._run(self._change_if, now,
                                  [notification_id, " ".join(allowed), state, len(flat), *flat], declared,
                                  partition)
        return payload[0] == "1", payload[1]

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

        One script per partition.  Entries of a partition's own stream are acknowledged
        by its script; entries of the shared ``notify`` stream in a partitioned pipeline
        (or of a partition stream that got another partition's id) after every script ran
        (a crash in between reads them again: duplicates, left alone).
        """
        if not items:
            return []
        if self.keys.partitioned:
            items = await self._take_daily_caps(items)
        groups: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(self.keys.partition_of(item.id), []).append(index)
        ack_later: list[str] = []
        runs = []
        for partition, indexes in groups.items():
            acked_here = bool(stream[0]) and stream[0] == self.keys.partition(partition).notify_stream
            if not acked_here:
                ack_later += [items[i].entry_id for i in indexes if items[i].entry_id]
            runs.append(self._accept_partition(partition, [items[i] for i in indexes], now,
                                               stream if acked_here else ("", stream[1])))
        results = await _gather(*runs)
        outcomes: list[AcceptOutcome] = [AcceptOutcome("", "", False)] * len(items)
        for indexes, result in zip(groups.values(), results, strict=True):
            for i, outcome in zip(indexes, result, strict=True):
                outcomes[i] = outcome
        if ack_later:
            await self.ack_only(stream[0], stream[1], ack_later)
        if self.wait_replicas:
            await _gather(*(self._wait_replicated(partition) for partition in groups))
        return outcomes

    async def _wait_replicated(self, partition: int) -> None:
        """WAIT until `wait_replicas` replicas of the partition's master have what it
        wrote so far (gateway/store/replication.py: on a connection that wrote);
        replication is asynchronous, so without it a failover right after the acceptance
        can lose it.  Bounded by WAIT_TIMEOUT_MS, and a master that fell short is not
        waited for again for a while (ReplicaWaits): a replica that is down must not stop
        intake (the loss is then what it would be without waiting)."""
        acked = await self.replica_waits.confirmed(self.keys.partition(partition).replication_fence,
                                                   self.wait_replicas, "intake batches")
        if acked < self.wait_replicas:
            replication_short.inc()

    async def _accept_partition(self, partition: int, items: list[AcceptItem], now: float,
                                stream: tuple[str, str]) -> list[AcceptOutcome]:
        declared = self._declared(partition)
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
            args += [item.id, item.entry_id if stream[0] else "", "1" if item.retry else "0", item.disposition,
                     _fmt(item.due_at) if item.due_at else "0", item.lane, cap_label, item.cap, item.reason,
                     item.type, str(ttl), len(fields), *fields]
        payload = await self._run(self._accept, now, args, declared, partition)
        return [AcceptOutcome(payload[k], payload[k + 1], payload[k + 2] == "duplicate",
                              "" if payload[k + 2] == "duplicate" else payload[k + 2])
                for k in range(0, len(payload), 3)]

    async def _take_daily_caps(self, items: Sequence[AcceptItem]) -> list[AcceptItem]:
        """Partitioned pipeline: a number's bulk reminders span partitions, so its daily
        cap is a set of notification ids outside them (keys.daily_count), taken before the
        accept scripts by daily_cap.lua (idempotent per id: a replayed entry or a
        duplicate id counts once).  Over the cap the item becomes a rejection."""
        capped = [i for i, item in enumerate(items) if item.cap_key and item.disposition in ("queue", "schedule")]
        if not capped:
            return list(items)
        verdicts: list[Any] = []
        # A few at a time: round trips overlap without a burst of new connections (a
        # RedisCluster opens one per command in flight per node).
        for start in range(0, len(capped), 8):
            verdicts += await _gather(*(
                self._daily_cap(keys=[items[i].cap_key], args=[items[i].id, items[i].cap, 172_800])
                for i in capped[start:start + 8]))
        out = list(items)
        for i, allowed in zip(capped, verdicts, strict=True):
            item = items[i]
            if int(allowed):
                out[i] = replace(item, cap_key="")
            else:
                out[i] = replace(item, cap_key="", disposition="reject",
                                 reason=f"daily cap: {item.cap} bulk reminders to this number today")
        return out

    async def ack_only(self, stream: str, group: str, entry_ids: Iterable[str]) -> None:
        """XACK and delete entries that carried nothing to record (e.g. empty entries),
        and trim the stream as the accept script does (ack_trim.lua)."""
        ids = list(entry_ids)
        if ids:
            await self._ack_trim(keys=[stream], args=[group, *ids])

    async def claim(self, n: int, *, now: float, lease_seconds: float, quiet_until: float,
                    reserve: int = 0, token: str | None = None,
                    skip_lanes: Collection[str] = (), partitions: Sequence[int] | None = None,
                    retrying: bool | None = None) -> list[Claimed]:
        """Take up to `n` queued notifications, highest lane first, for submission.

        Expired ones become expired; quiet-hours types claimed inside quiet hours go back
        to scheduled (`quiet_until` is the end of the current window or 0).

        `token` names this claim (a fresh one when None).  Called again with a token whose
        claim did happen (its reply was lost on the way), it returns what that claim took
        and still holds, and takes nothing new: a lost reply costs no lease wait and no
        possible duplicate.

        With several partitions the lanes' heads of all of them are read in one pipeline
        and the batch is shared among them (`_share_batch`: high lanes first, partitions
        taking turns); one script runs per partition that has a share.  A lane is first
        in, first out within its partition.

        `partitions`: claim only from these (the ones this process owns:
        gateway/push/ownership.py); None: all.  `retrying`: the token is that of a claim
        whose reply was lost, so its batch is looked for in every partition (ownership may
        have moved since), while new work still comes only from `partitions`; False: the
        token is fresh, so its claim list is not looked for (the script still notices one
        that appears); None: looked for in `partitions`.
        """
        if n <= 0:
            return []
        token = token or new_claim_token()
        numbers = list(range(self.keys.partitions)) if partitions is None else list(partitions)
        chosen = set(numbers)
        replay_only = [k for k in range(self.keys.partitions) if k not in chosen] if retrying else []
        if not numbers and not replay_only:
            return []
        # The script may only touch notifications it declares, so the lanes' heads are read
        # first; what another process takes meanwhile, the script skips.
        look_for_claim = retrying is not False
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in numbers:
                part = self.keys.partition(k)
                for lane in LANES:
                    pipe.zrange(part.lane(lane), 0, n - 1)
                if look_for_claim:
                    pipe.llen(part.claim(token))
            for k in replay_only:
                pipe.llen(self.keys.partition(k).claim(token))
            replies = await pipe.execute()
        stride = 4 if look_for_claim else 3
        runs = []
        for k, exists in zip(replay_only, replies[stride * len(numbers):], strict=True):
            if exists:
                runs.append(self._claim_partition(k, (0, 0, 0), now, lease_seconds, quiet_until, token,
                                                  [[], [], []], replay=True))
        start = self._claim_rotation % max(1, len(numbers))
        self._claim_rotation = (start + 1) % max(1, len(numbers))
        heads = [replies[stride * k:stride * k + 3] for k in range(len(numbers))]
        if skip_lanes:  # a paused lane offers no candidates, so it gets no share
            heads = [[[] if LANES[i] in skip_lanes else ids for i, ids in enumerate(h)] for h in heads]
        # A claim whose reply was lost may have run in some partitions only (one master
        # away): what those replay counts against `n`, or the batch exceeds it and the
        # dispatcher holds more than max_in_flight (a Cluster failover did, 2026-12-02).
        replayed = sum(int(r) for r in replies[stride * len(numbers):])
        if look_for_claim:
            replayed += sum(int(replies[stride * k + 3]) for k in range(len(numbers)))
        if replayed:  # a replaying partition takes nothing new, so it gets no share
            heads = [[[], [], []] if look_for_claim and replies[stride * k + 3] else h
                     for k, h in enumerate(heads)]
        budget = max(0, n - replayed)
        quotas = _share_batch(budget, min(reserve, budget // 2), heads, start) if numbers else []
        for position, partition in enumerate(numbers):
            if look_for_claim and replies[stride * position + 3]:
                runs.append(self._claim_partition(partition, (0, 0, 0), now, lease_seconds, quiet_until, token,
                                                  [[], [], []], replay=True))
            elif sum(quotas[position]):
                # Its share of each lane and a few more, to make up for entries another
                # process takes meanwhile (every declared key costs the script a lookup).
                candidates = [ids[:quota + quota // 4 + 2] if quota else []
                              for ids, quota in zip(heads[position], quotas[position], strict=True)]
                runs.append(self._claim_partition(partition, quotas[position], now, lease_seconds, quiet_until,
                                                  token, candidates))
        claimed = [c for batch in await _gather(*runs) for c in batch]
        rank = {"high": 0, "normal": 1, "bulk": 2}
        claimed.sort(key=lambda c: rank.get(c.lane, 1))  # stable: FIFO within a lane
        return claimed

    async def _claim_partition(self, partition: int, quotas: tuple[int, int, int], now: float,
                               lease_seconds: float, quiet_until: float, token: str, peeked: list[list[str]],
                               *, replay: bool = False) -> list[Claimed]:
        part = self.keys.partition(partition)
        head = [*quotas, _fmt(lease_seconds), _fmt(quiet_until), token]
        declared = self._declared(partition)
        declared.add("k", part.claim(token))
        if replay:
            # This token's claim did run (its reply was lost): declare what it listed.
            for notification_id in await self.redis.lrange(part.claim(token), 0, -1):
                declared.notification(notification_id)
            payload = await self._run(self._claim, now, [*head, "replay", 0, 0, 0], declared, partition)
        else:
            for ids in peeked:
                for notification_id in ids:
                    declared.notification(notification_id)
            payload = await self._run(self._claim, now, [*head, "claim", *map(len, peeked),
                                                         *(i for ids in peeked for i in ids)], declared, partition)
            if payload == ["replay"]:  # the claim list appeared since it was looked for
                return await self._claim_partition(partition, quotas, now, lease_seconds, quiet_until,
                                                   token, peeked, replay=True)
        return [Claimed(row[0], row[1], row[2], int(row[3]), tuple(row[4].split()) if row[4] else (),
                        float(row[5]), row[6], row[7], float(row[8] or 0)) for row in payload]

    async def apply(self, ops: Sequence[Sequence[Any]], *, now: float,
                    defer: bool = True) -> list[tuple[int, BaseException]]:
        """Apply outcome ops (see OutcomeWriter): one script per partition concerned.

        Receipts are looked up in the message-id index first (one MGET), because a script
        may only touch the notifications it declares; one whose index entry appears in
        between is sent again (rare: the entry is written while the receipt travels).

        A partitioned pipeline keeps a message id's index entry in the partition of the
        message id, not of the notification (a receipt names only the message id): an
        accepted submit's index entries are written in their partitions first, then the
        submit is recorded in its notification's; receipts parked there meanwhile come
        back and are applied after it.

        Returns the ops (positions in `ops`, each with its error) whose partition's script
        failed because Redis was away or refused (`is_unavailable`); all the others are
        applied.  On a Cluster one partition's trouble (its master failing over, its slot
        migrating: TRYAGAIN until the last key has moved) does not hold back the rest of
        the batch; nor does a failed index lookup (its receipts wait) or index write (its
        submits wait).  A carrier's receipt that a failing partition could not record is
        kept in a partition that answers and not returned (`_defer_receipts`; `defer`
        False: returned, for `apply_deferred_receipts`, which keeps its own).  Any other
        error fails the whole call: applying an op twice changes nothing.
        """
        pending = list(ops)
        origins = list(range(len(ops)))  # each pending op's position in `ops`
        unapplied: dict[int, BaseException] = {}
        # The carriers' receipts (by origin) recorded by each partition's script.
        receipts_in: dict[int, list[int]] = {}
        # Carriers' receipts a failing partition could not record (by origin): the Y op if
        # the index named its notification, else the carrier's X op; and the partitions
        # seen failing, where they are not to be kept.
        deferrable: dict[int, Sequence[Any]] = {}
        failing: set[int] = set()
        # Parked receipts read for submits of this call (origin, Y op, key): deleted once
        # their submit and they are recorded, unless their notification refused them.
        read_parked: list[tuple[int, Sequence[Any], ParkedReceipt]] = []
        # Each round resolves what the last one found written meanwhile (or parked):
        # a receipt is applied by the second round, so six are generous.
        for _ in range(6):
            if not pending:
                if defer:
                    await self._defer_receipts(ops, deferrable, failing, unapplied, receipts_in)
                await self._wait_receipts_replicated(receipts_in, unapplied)
                await self._forget_parked([key for origin, _, key in read_parked if origin not in unapplied])
                return sorted(unapplied.items())
            try:
                resolved = await self._resolve_receipts(pending)
            except Exception as e:
                if not is_unavailable(e):
                    raise
                # The index could not be read (a node away): the receipts wait for the
                # carrier's next delivery, the submit outcomes go on.
                for number, op in enumerate(pending):
                    if op[0] == "X":
                        unapplied.setdefault(origins[number], e)
                        deferrable[origins[number]] = op
                origins = [origin for origin, op in zip(origins, pending, strict=True) if op[0] != "X"]
                pending = resolved = [op for op in pending if op[0] != "X"]
                if not pending:
                    continue
            groups: dict[int, list[tuple[int, Sequence[Any]]]] = {}
            indexing: dict[int, list[tuple[int, Sequence[Any]]]] = {}
            for number, op in enumerate(resolved):
                partition = self._op_partition(op)
                if op[0] == "A" and self.keys.partitioned:
                    op = self._index_elsewhere(op, partition, indexing, origins[number])
                groups.setdefault(partition, []).append((number, op))
            # Index entries first: a process killed before the B op that follows leaves the
            # notification submitting (its lease brings it back, a possible duplicate),
            # never submitted with receipts that cannot find it.
            parked: list[tuple[int, Sequence[Any]]] = []
            if indexing:
                entries = [entry for entries in indexing.values() for entry in entries]
                try:
                    parked_keys = await self._write_index_entries(entries)
                    parked = [(origin, op) for origin, op, _ in parked_keys]
                    read_parked += parked_keys
                    if self.receipt_wait_replicas:
                        await self._wait_index_replicated(indexing)
                except Exception as e:
                    if not is_unavailable(e):
                        raise
                    # A submit is recorded after its index entries or not at all: these
                    # wait (the writer retries them whole), the other ops go on.
                    failed = {origin for origin, _ in entries}
                    for origin in failed:
                        unapplied.setdefault(origin, e)
                    groups = {partition: kept for partition, numbered in groups.items()
                              if (kept := [(number, op) for number, op in numbered if origins[number] not in failed])}
            results = await _gather(*(self._apply_partition(partition, [op for _, op in numbered], now)
                                             for partition, numbered in groups.items()), return_exceptions=True)
            again: list[Sequence[Any]] = []
            again_origins: list[int] = []
            for (partition, numbered), result in zip(groups.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception) or not is_unavailable(result):
                        raise result
                    failing.add(partition)
                    for number, op in numbered:
                        unapplied.setdefault(origins[number], result)
                        if op[0] in "XY" and ops[origins[number]][0] == "X":
                            deferrable[origins[number]] = op
                    continue
                local_again, local_refused = result
                sent_again = {int(local) for local in local_again}
                for local in sorted(sent_again):
                    number = numbered[local - 1][0]
                    again.append(pending[number])
                    again_origins.append(origins[number])
                # A Y op refused by its notification (the receipt names another number):
                # its X op is resolved again without that notification.  A Y op kept in a
                # deferred stream has no X op to go back to: the receipt is not applied.
                for local in map(int, local_refused):
                    number, refused_op = numbered[local - 1]
                    # a parked receipt its submit's notification refused stays parked
                    read_parked = [entry for entry in read_parked if entry[1] is not pending[number]]
                    if pending[number][0] == "X":
                        sent_again.add(local)
                        again.append(_excluding(pending[number], refused_op[1]))
                        again_origins.append(origins[number])
                if self.receipt_wait_replicas:
                    receipts_in.setdefault(partition, []).extend(
                        origins[number] for local, (number, op) in enumerate(numbered, 1)
                        if op[0] in "XY" and ops[origins[number]][0] == "X" and local not in sent_again)
            # A receipt parked for a submit whose record failed is found again when that
            # submit is retried (its index entries written again, the parked receipt read).
            parked = [(origin, op) for origin, op in parked if origin not in unapplied]
            pending = again + [op for _, op in parked]
            origins = again_origins + [origin for origin, _ in parked]
        raise RuntimeError(f"{len(pending)} receipts kept changing their message-id index entries")

    async def _defer_receipts(self, ops: Sequence[Sequence[Any]], deferrable: dict[int, Sequence[Any]],
                              failing: set[int], unapplied: dict[int, BaseException],
                              receipts_in: dict[int, list[int]]) -> None:
        """Carriers' receipts that a failing partition could not record (its master
        failing over, its slot migrating): the notification's partition, or the message
        id's when its index could not be read or a receipt not yet indexed not parked.
        Each is kept in the ``deferred-receipts`` stream of a partition that answers (its
        message id's first, else the next ones) and reported recorded, so that the carrier
        is not asked to deliver it again; `apply_deferred_receipts` applies it once its
        partitions answer.  Without it the carrier's redeliveries came after the
        migration, up to 45 s after the submit (bench/cluster_soak.py).  One that no
        partition's stream takes (every one tried away, or DEFERRED_RECEIPTS_MAX reached)
        stays refused; so on one Redis, whose one partition is the failing one."""
        waiting = {origin: op for origin, op in deferrable.items() if origin in unapplied}
        tried = set(failing)
        # Each round moves the receipts of a partition whose stream refused to the next
        # one; three partitions away at once is already more than a failover or a slot
        # migration makes.
        for _ in range(3):
            by_partition: dict[int, list[tuple[int, Sequence[Any]]]] = {}
            for origin, op in waiting.items():
                target = self._deferral_partition(self._op_partition(ops[origin]), tried)
                if target is not None:
                    by_partition.setdefault(target, []).append((origin, op))
            if not by_partition:
                return
            kept = await self._keep_deferred(by_partition)
            for partition, entries in by_partition.items():
                if partition not in kept:
                    tried.add(partition)
                    continue
                for origin, _ in entries:
                    del waiting[origin]
                    del unapplied[origin]
                    receipts_in.setdefault(partition, []).append(origin)
                    _script_counters["receipt_deferred"].inc()
            if not waiting:
                return

    def _deferral_partition(self, home: int, tried: set[int]) -> int | None:
        """The first partition from `home` on (wrapping) not in `tried`, or None."""
        total = self.keys.partitions
        for step in range(total):
            candidate = (home + step) % total
            if candidate not in tried:
                return candidate
        return None

    async def _keep_deferred(self, by_partition: dict[int, list[tuple[int, Sequence[Any]]]]) -> set[int]:
        """XADD each partition's receipts to its deferred-receipts stream, one pipeline per
        partition (on a Cluster one node's trouble fails its own only); returns the
        partitions that took all of theirs."""
        async def keep(partition: int, entries: list[tuple[int, Sequence[Any]]]) -> bool:
            stream = self.keys.partition(partition).deferred_receipts
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for _, op in entries:
                        pipe.xadd(stream, {"op": _dumps(list(op))})
                    pipe.xlen(stream)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as e:
                if not is_unavailable(e):
                    raise
                return False
            added, length = results[:-1], results[-1]
            if not isinstance(length, Exception) and length <= DEFERRED_RECEIPTS_MAX and \
                    not any(isinstance(entry_id, Exception) for entry_id in added):
                return True
            written = [entry_id for entry_id in added if not isinstance(entry_id, Exception)]
            if written:
                try:
                    await self.redis.xdel(stream, *written)
                except Exception as e:
                    if not is_unavailable(e):
                        raise
                    # Left in the stream as well: applied later once more than the carrier
                    # is told, which changes nothing (the same receipt twice).
            return False

        partitions = list(by_partition)
        results = await _gather(*(keep(k, by_partition[k]) for k in partitions))
        return {k for k, took in zip(partitions, results, strict=True) if took}

    async def apply_deferred_receipts(self, *, now: float, partitions: Sequence[int] | None = None,
                                      limit: int = 1000) -> int:
        """Apply the receipts `_defer_receipts` kept in these partitions' streams (at most
        `limit` each) and delete those applied; those whose partition still fails stay, and
        so does a stream whose own node is away (read again at the next call: housekeeping
        goes on meanwhile).  Returns how many were applied."""
        numbers = list(range(self.keys.partitions)) if partitions is None else list(partitions)
        if not numbers:
            return 0
        streams = await self._read_deferred(numbers, limit)
        applied = 0
        for k, entries in zip(numbers, streams, strict=True):
            if not entries:
                continue
            readable: list[tuple[str, list[Any]]] = []
            abandoned: list[str] = []
            for entry_id, fields in entries:
                op = readable_receipt_op(fields)
                if op is not None:
                    readable.append((entry_id, op))
                elif now - int(entry_id.partition("-")[0]) / 1000 >= UNREADABLE_DEFERRED_KEEP_SECONDS:
                    abandoned.append(entry_id)
            stream = self.keys.partition(k).deferred_receipts
            if abandoned:
                await self._drop_unreadable(stream, abandoned)
            failed = {position for position, _ in
                      await self.apply([op for _, op in readable], now=now, defer=False)} if readable else set()
            done = [entry_id for position, (entry_id, _) in enumerate(readable) if position not in failed]
            if not done:
                continue
            try:
                await self.redis.xdel(stream, *done)
            except Exception as e:
                if not is_unavailable(e):
                    raise
                continue  # applied again next time: the same receipts twice change nothing
            applied += len(done)
        return applied

    async def _drop_unreadable(self, stream: str, entry_ids: list[str]) -> None:
        try:
            await self.redis.xdel(stream, *entry_ids)
        except Exception as e:
            if not is_unavailable(e):
                raise
            return  # deleted at the next call
        _script_counters["receipt_deferred_unreadable"].inc(len(entry_ids))
        # Ids and the stream only: an entry holds a receipt's number digits.
        _writer_log.warn("deleted {count} entries of {stream} that no gateway read within {seconds:.0f} s "
                         "(first {first}): their receipts are lost",
                         count=len(entry_ids), stream=stream, seconds=UNREADABLE_DEFERRED_KEEP_SECONDS,
                         first=entry_ids[0])

    async def _read_deferred(self, numbers: list[int], limit: int) -> list[list[Any] | None]:
        """The deferred-receipts entries of these partitions, in one pipeline; when a node
        is away (the pipeline fails whole), partition by partition, None for those that
        fail."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for k in numbers:
                    pipe.xrange(self.keys.partition(k).deferred_receipts, count=limit)
                return list(await pipe.execute())
        except Exception as e:
            if not is_unavailable(e):
                raise
        streams: list[list[Any] | None] = []
        for k in numbers:
            try:
                streams.append(await self.redis.xrange(self.keys.partition(k).deferred_receipts, count=limit))
            except Exception as e:
                if not is_unavailable(e):
                    raise
                streams.append(None)
        return streams

    async def _wait_receipts_replicated(self, receipts_in: dict[int, list[int]],
                                        unapplied: dict[int, BaseException]) -> None:
        """With push.delivery_wait_replicas, WAIT until that many replicas of each master
        that recorded receipts have them, before the carrier is told they are recorded
        (it then forgets them): a failover would otherwise lose receipts the gateway had
        acknowledged.  A master that goes away meanwhile has not said so: its receipts
        join `unapplied` (refused; the carrier delivers them again, which changes
        nothing if they were kept).  Fewer replicas within the bound, or a master held off
        after that (ReplicaWaits): counted, accepted."""
        waits = {partition: origins for partition, origins in receipts_in.items() if origins}
        if not waits:
            return
        results = await _gather(*(self.replica_waits.confirmed(self.keys.partition(p).replication_fence,
                                                                      self.receipt_wait_replicas, "receipts")
                                         for p in waits),
                                       return_exceptions=True)
        for origins, result in zip(waits.values(), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception) or not is_unavailable(result):
                    raise result
                for origin in origins:
                    unapplied.setdefault(origin, result)
            elif result < self.receipt_wait_replicas:
                receipt_replication_short.inc()

    async def _wait_index_replicated(self, indexing: dict[int, list[tuple[int, Sequence[Any]]]]) -> None:
        """With push.delivery_wait_replicas, WAIT until that many replicas of each master
        that took index entries have them, before the submits are recorded: a master lost
        with entries its replica never had left their receipts nothing to find (parked as
        early, acknowledged, never applied: the soak's 125 `unconfirmed` in one run of
        60,000).  A master that goes away meanwhile raises, and the submits wait and write
        their entries again (on its promoted replica); fewer replicas within the bound,
        or a master held off after that (ReplicaWaits): counted, recorded."""
        fences = self._fences_by_master(indexing)
        results = await _gather(*(self.replica_waits.confirmed(fence, self.receipt_wait_replicas,
                                                                      "submits (message-id index entries)")
                                         for fence in fences))
        if any(acked < self.receipt_wait_replicas for acked in results):
            receipt_replication_short.inc()

    def _fences_by_master(self, partitions: Iterable[int]) -> list[str]:
        """One replication fence per master among these partitions (one WAIT covers all
        that master wrote: replication is one ordered stream per master); on one Redis,
        one fence."""
        fences = [self.keys.partition(k).replication_fence for k in partitions]
        node_of = getattr(self.redis, "get_node_from_key", None)
        if node_of is None:
            return fences[:1]
        by_node: dict[str, str] = {}
        for fence in fences:
            try:
                name = node_of(fence).name
            except Exception:  # the slot map being refreshed: one fence per partition then
                name = fence
            by_node.setdefault(name, fence)
        return list(by_node.values())

    def _op_partition(self, op: Sequence[Any]) -> int:
        if op[0] == "X":  # the partition of its first candidate's index entry
            return self.keys.index_partition_of(op[1], op[7]) if int(op[6]) else 0
        return self.keys.partition_of(op[1])

    def _index_elsewhere(self, op: Sequence[Any], partition: int,
                         indexing: dict[int, list[tuple[int, Sequence[Any]]]], origin: int) -> Sequence[Any]:
        """An A op whose index entries are not all in its notification's partition
        becomes a B op (the same, without the index) and one I op per entry (with the
        A op's `origin`, its position in the batch)."""
        notification_id, carrier = op[1], op[2]
        indexed = indexed_parts(op)
        homes = [self.keys.index_partition_of(carrier, m) for _, m in indexed]
        if all(home == partition for home in homes):
            return op
        for (part_number, message_id), home in zip(indexed, homes, strict=True):
            indexing.setdefault(home, []).append((origin, ("I", notification_id, carrier, part_number, message_id)))
        return ("B", *op[1:])

    async def _write_index_entries(
            self, ops: Sequence[tuple[int, Sequence[Any]]]) -> list[tuple[int, Sequence[Any], ParkedReceipt]]:
        """Write I ops' index entries with plain commands, one pipeline for all partitions,
        and return a Y op for each receipt parked under one of them (each I op comes and
        each Y op goes with the origin of its A op), with the parked receipt's key.

        Not a script per partition: with 24 partitions nearly every entry of a batch is in
        a partition of its own, and a script call costs far more than the SET it carries
        (bench/cluster.py, c3: 2.08 script calls per notification, about half of them
        these).  Without a script it stays exact: the receipt side (outcomes.lua X op) runs
        atomically either before a SET (it parks; the GET, sent only once every SET was
        acknowledged, finds it), or after it (it finds the entry).  Two pipelines, not one:
        a Cluster pipeline that follows a MOVED or ASK (a slot migrating) may send a slot's
        commands again in another order.  A parked receipt is left in place until its
        submit and it are recorded (`_forget_parked`), so that a submit whose record fails
        finds it again when retried; applying one twice changes nothing."""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, (_, notification_id, carrier, part, message_id) in ops:
                pipe.set(keys.message_id(carrier, message_id), f"{notification_id} {part}",
                         ex=self.retention_seconds, get=True)
            earlier_entries = await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, (_, _, carrier, _, message_id) in ops:
                pipe.get(keys.early_receipt(carrier, message_id))
            # entries taken from other notifications: kept as previous (_keep_previous_entries)
            for (_, (_, notification_id, carrier, _, message_id)), earlier in zip(ops, earlier_entries, strict=True):
                if earlier and not earlier.startswith(f"{notification_id} "):
                    pipe.set(keys.message_id_previous(carrier, message_id), earlier, ex=self.retention_seconds)
            parked_receipts = (await pipe.execute())[:len(ops)]
        parked: list[tuple[int, Sequence[Any], ParkedReceipt]] = []
        for (origin, (_, notification_id, carrier, part, message_id)), early in zip(ops, parked_receipts,
                                                                                     strict=True):
            if early:
                # '<stat> <err>', and ' <tails>' when it carried numbers (outcomes.lua)
                receipt_state, _, rest = early.partition(" ")
                error, _, tails = rest.partition(" ")
                parked.append((origin, ("Y", notification_id, str(part), receipt_state, error, tails),
                               ParkedReceipt(keys.early_receipt(carrier, message_id),
                                             keys.partition(keys.index_partition_of(carrier, message_id)).early_receipts,
                                             f"{carrier} {message_id}")))
        return parked

    async def _forget_parked(self, parked_receipts: list[ParkedReceipt]) -> None:
        """Delete parked receipts applied with their submit, and their place in the count
        of parked receipts.  They were left to expire (a day): on a partitioned pipeline
        every receipt that beat its submit_sm_resp stayed in Redis that long (measured
        2026-12-05: 100 of 100).  Best effort: one left behind expires as before, and
        counts against push.early_receipts_max until then."""
        if not parked_receipts:
            return
        for parked in parked_receipts:
            metrics.receipts_early_applied.labels(parked.member.partition(" ")[0]).inc()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for parked in parked_receipts:
                    pipe.delete(parked.key)
                    pipe.zrem(parked.counted_in, parked.member)
                await pipe.execute()
        except Exception as e:
            if not is_unavailable(e):
                raise

    async def _apply_partition(self, partition: int, ops: list[Sequence[Any]],
                               now: float) -> tuple[list[str], list[str]]:
        declared = self._declared(partition)
        args: list[Any] = [len(ops), self.early_receipt_ttl_seconds, self.early_receipts_per_partition]
        for op in ops:
            _declare_op(declared, op)
            args.extend(op)
        payload = await self._run(self._outcomes, now, args, declared, partition)
        if payload[2]:
            await self._delete_evicted(payload[2])
        if payload[3]:
            await self._keep_previous_entries([entry.split(" ", 2) for entry in payload[3]])
        return list(payload[0]), list(payload[1])

    async def _keep_previous_entries(self, entries: Sequence[Sequence[str]]) -> None:
        """Keep the index entries (carrier, message id, entry) that submits just took from
        other notifications as the ids' previous entries: an SMSC that gave two live
        messages one id sends the earlier one's receipt with its number, the later one
        refuses it, and it is looked for there (`_resolve_receipts`).  Before 2026-12-05
        it found nothing and that notification ended unconfirmed.  Best effort: one lost
        leaves it so."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for carrier, message_id, entry in entries:
                    pipe.set(self.keys.message_id_previous(carrier, message_id), entry, ex=self.retention_seconds)
                await pipe.execute()
        except Exception as e:
            if not is_unavailable(e):
                raise

    async def _delete_evicted(self, members: Sequence[str]) -> None:
        """Delete the parked receipts the script dropped to stay within
        push.early_receipts_max (it was not given their keys).  Best effort: one left
        behind expires with the early-receipt TTL, uncounted."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for member in members:
                    carrier, _, message_id = member.partition(" ")
                    pipe.delete(self.keys.early_receipt(carrier, message_id))
                await pipe.execute()
        except Exception as e:
            if not is_unavailable(e):
                raise

    async def _resolve_receipts(self, ops: list[Sequence[Any]]) -> list[Sequence[Any]]:
        """X ops whose candidate is in the message-id index become Y ops (the notification
        and part named); the others stay X (parked by the script as early receipts).  An X
        op that a notification refused (it names another number) is looked for among the
        ids' previous entries too, after the current ones."""
        message_id, previous = self.keys.message_id, self.keys.message_id_previous
        lookups = [message_id(op[1], candidate) for op in ops if op[0] == "X"
                   for candidate in op[7:7 + int(op[6])]]
        # refused once (op[5], rare): the previous entries too, after the current ones
        lookups += [previous(op[1], candidate) for op in ops if op[0] == "X" and op[5]
                    for candidate in op[7:7 + int(op[6])]]
        if not lookups:
            return ops
        values = await get_many(self.redis, lookups)
        found = iter(values)
        found_previous = iter(values[sum(int(op[6]) for op in ops if op[0] == "X"):])
        resolved: list[Sequence[Any]] = []
        for op in ops:
            if op[0] != "X":
                resolved.append(op)
                continue
            excluded = op[5].split()
            entries = [next(found) for _ in range(int(op[6]))]
            if excluded:
                entries += [next(found_previous) for _ in range(int(op[6]))]
            hits = [(notification_id, part) for value in entries if value
                    for notification_id, _, part in (value.rpartition(" "),) if notification_id not in excluded]
            if hits:
                notification_id, part = hits[0]
                resolved.append(("Y", notification_id, part, op[2], op[3], op[4]))
            else:
                resolved.append(op)
        return resolved

    async def promote_due(self, *, now: float, limit: int = 1000, partitions: Sequence[int] | None = None) -> int:
        """Move scheduled notifications whose time has come to their lane; how many."""
        payloads = await self._sweep(self._promote, "scheduled", now, limit, partitions)
        return sum(int(payload[0]) for payload in payloads)

    async def close_overdue_receipts(self, *, now: float, limit: int = 1000,
                                     partitions: Sequence[int] | None = None,
                                     grace_seconds: float = 0.0) -> tuple[int, int]:
        """Notifications still ``submitted`` whose receipt timeout passed at least
        `grace_seconds` ago become ``unconfirmed``; returns (entries due, notifications
        closed).  The grace lets a receipt kept in another partition while this one failed
        (`apply_deferred_receipts`, another process's housekeeping) land first."""
        payloads = await self._sweep(self._receipts_overdue, "awaiting_receipt", now, limit, partitions,
                                     due_by=now - grace_seconds)
        return sum(int(p[0]) for p in payloads), sum(int(p[1]) for p in payloads)

    async def recover_expired_leases(self, *, now: float, limit: int = 1000,
                                     partitions: Sequence[int] | None = None) -> int:
        """Put notifications whose claim lease ran out back at the front of their lane."""
        payloads = await self._sweep(self._recover, "inflight", now, limit, partitions)
        return sum(int(payload[0]) for payload in payloads)

    async def _sweep(self, script: Any, key_name: str, now: float, limit: int,
                     partitions: Sequence[int] | None = None, *, due_by: float | None = None) -> list[list[Any]]:
        """Run a sweep script, in each partition (of `partitions`; None: all), on the
        members of its sorted set `key_name` due by `due_by` (default `now`; at most
        `limit` each), read first so that the script can declare their notifications; no
        script runs where none is due.  The script's arguments: the cutoff, the number of
        members, the members."""
        cutoff = _fmt(now if due_by is None else due_by)
        numbers = list(range(self.keys.partitions)) if partitions is None else list(partitions)
        if not numbers:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in numbers:
                pipe.zrangebyscore(getattr(self.keys.partition(k), key_name), "-inf", cutoff, start=0, num=limit)
            due: list[list[str]] = await pipe.execute()
        runs = []
        for partition, ids in zip(numbers, due, strict=True):
            if ids:
                declared = self._declared(partition)
                for notification_id in ids:
                    declared.notification(notification_id)
                runs.append(self._run(script, now, [cutoff, len(ids), *ids], declared, partition))
        return await _gather(*runs)

    async def renew_leases(self, ids: Iterable[str], *, deadline: float) -> None:
        """Extend the leases of notifications this process is still submitting."""
        by_partition: dict[int, dict[str, float]] = {}
        for notification_id in ids:
            by_partition.setdefault(self.keys.partition_of(notification_id), {})[notification_id] = deadline
        if len(by_partition) == 1:
            partition, mapping = by_partition.popitem()
            await self.redis.zadd(self.keys.partition(partition).inflight, mapping, xx=True)
        elif by_partition:
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition, mapping in by_partition.items():
                    pipe.zadd(self.keys.partition(partition).inflight, mapping, xx=True)
                await pipe.execute()


# ----------------------------------------------------------------------------------------
# Outcome ops: built by the dispatcher and the receipt recorder, applied in batches.
# ----------------------------------------------------------------------------------------


def op_accepted(notification_id: str, carrier: str, message_ids: Sequence[str], *,
                receipt_parts: int | None = None, receipt_from_last: bool = False) -> tuple[Any, ...]:
    """The carrier accepted every part; message ids in part order, as the carrier sent
    them (kept so, for grepping carrier logs; indexed under their canonical form).

    receipt_parts: how many leading parts asked for a receipt (None: all); only their
    ids are indexed, and delivery is judged on their receipts alone.  An SMSC that gave
    every part one id (the long message's) receipts them under that id, once or once
    per part, so part 1's receipt stands for all: indexed as `receipt_parts` 1, the
    message is not left waiting for the other parts' receipts that cannot be told apart.

    receipt_from_last: the one part that asked is the last (carriers[].receipt_parts
    last): only its id is indexed, and its receipt alone decides; `indexed` is then -1.
    """
    parts = len(message_ids)
    indexed = parts if receipt_parts is None else max(0, min(receipt_parts, parts))
    canonical = [canonical_message_id(m) for m in message_ids]
    if indexed > 1 and canonical.count(canonical[0]) == parts:
        indexed = 1
    elif receipt_from_last and indexed == 1 and parts > 1:
        indexed = LAST_PART_ONLY
    return ("A", notification_id, carrier, parts, indexed, *message_ids, *canonical)


# An A op's `indexed` for a long message whose last part alone asked for a receipt.
LAST_PART_ONLY = -1


def indexed_parts(op: Sequence[Any]) -> list[tuple[int, str]]:
    """An A op's indexed parts: (part number from 0, canonical message id)."""
    parts, indexed = int(op[3]), int(op[4])
    canonical = op[5 + parts:5 + 2 * parts]
    if indexed == LAST_PART_ONLY:
        return [(parts - 1, canonical[-1])]
    return list(enumerate(canonical[:indexed]))


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


def op_receipt(carrier: str, state: str, error_code: str, candidates: Sequence[str],
               tails: str = "") -> tuple[Any, ...]:
    """A delivery receipt; candidates: canonical message-id forms to look up, best first;
    tails: the last digits of the numbers it carries (`gateway.push.receipts.number_tails`),
    "" when it carries none."""
    return ("X", carrier, state, error_code or "", tails, "", len(candidates), *candidates)


def _excluding(op: Sequence[Any], notification_id: str) -> tuple[Any, ...]:
    """The X op `op`, its index hits naming `notification_id` to be passed over: that
    notification refused the receipt (sent to another number)."""
    excluded = f"{op[5]} {notification_id}" if op[5] else notification_id
    return (*op[:5], excluded, *op[6:])


def readable_receipt_op(fields: Mapping[str, Any]) -> list[Any] | None:
    """The receipt op of a deferred-receipts entry in today's layout, or None when this
    version cannot read it (not JSON, not an X or Y op of the right shape)."""
    try:
        loaded = json.loads(fields["op"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(loaded, list) or not loaded:
        return None
    op = current_layout(loaded)
    if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in op):
        return None
    if op[0] == "Y" and len(op) == 6 and str(op[2]).isdigit():
        return op
    if op[0] == "X" and len(op) >= 7 and str(op[6]).isdigit() and len(op) == 7 + int(op[6]):
        return op
    return None


def current_layout(op: Sequence[Any]) -> list[Any]:
    """A receipt op kept in a deferred-receipts stream by a gateway before 2026-12-05
    (X without tails and exclusions, Y without tails), in today's layout; others as
    they are."""
    if op and op[0] == "X" and str(op[4]).isdigit() and len(op) == 5 + int(op[4]):
        return [*op[:4], "", "", *op[4:]]
    if op and op[0] == "Y" and len(op) == 5:
        return [*op, ""]
    return list(op)


def _share_batch(n: int, reserve: int, heads: Sequence[Sequence[Sequence[str]]],
                 start: int) -> list[tuple[int, int, int]]:
    """How many of each lane (high, normal, bulk) each partition's claim takes.

    `heads[k]` are partition k's lane heads as read.  The batch is shared as one queue
    would share it: up to ``n - 2 * reserve`` from the high lanes, `reserve` each from
    normal and bulk (so a flood of codes lets reminders through), then the rest high
    first; within a lane the partitions take turns, starting at `start` (each claim one
    further), so none waits behind another's backlog.
    """
    count = len(heads)
    order = [(start + step) % count for step in range(count)]
    # Each lane's entries as a queue would serve them: partitions taking turns.
    merged: list[list[int]] = []
    for lane in range(3):
        turns: list[int] = []
        depth = max((len(heads[k][lane]) for k in order), default=0)
        for position in range(depth):
            turns += [k for k in order if position < len(heads[k][lane])]
        merged.append(turns)
    taken = [0, 0, 0]

    def grab(lane: int, want: int) -> None:
        taken[lane] += max(0, min(want, len(merged[lane]) - taken[lane]))

    grab(0, n - 2 * reserve)
    grab(1, reserve)
    grab(2, reserve)
    for lane in range(3):
        grab(lane, n - sum(taken))
    quotas = [[0, 0, 0] for _ in range(count)]
    for lane in range(3):
        for k in merged[lane][:taken[lane]]:
            quotas[k][lane] += 1
    return [(q[0], q[1], q[2]) for q in quotas]


def _declare_op(declared: _Declared, op: Sequence[Any]) -> None:
    """Declare the keys outcomes.lua touches for one op."""
    kind = op[0]
    if kind == "I":  # I id carrier part message-id: only the index entry's partition
        declared.message_id(op[2], op[4])
        declared.early_receipt(op[2], op[4])
        return
    if kind == "X":
        carrier, candidates = op[1], op[7:7 + int(op[6])]
        for candidate in candidates:
            declared.message_id(carrier, candidate)
        if candidates:
            declared.early_receipt(carrier, candidates[0])
        return
    declared.notification(op[1])
    if kind == "A":  # A id carrier parts indexed sent-ids... canonical-ids...
        carrier = op[2]
        for _, message_id in indexed_parts(op):
            declared.message_id(carrier, message_id)
            declared.early_receipt(carrier, message_id)


# ----------------------------------------------------------------------------------------


_PUBLIC_SCALARS = ("state", "type", "priority", "channel", "carrier", "error", "reason",
                   "receipt_state", "late_receipt", "scheduled_reason", "source", "partner")
_PUBLIC_NUMBERS = ("attempts", "parts", "possible_duplicates")


async def read_notifications(redis: Any, keys: Keys, ids: Sequence[str]) -> list[dict[str, str]]:
    """The raw records of `ids`, in order ({} for one that is gone): one pipeline, not an
    MGET-like call, because on Redis Cluster the records hash to different slots."""
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for notification_id in ids:
            pipe.hgetall(keys.notification(notification_id))
        return list(await pipe.execute())


def public_view(notification_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    """A notification as the status API shows it: masked recipient, no text or params."""
    view: dict[str, Any] = {"id": notification_id}
    for name in _PUBLIC_SCALARS:
        if raw.get(name):
            view[name] = raw[name]
    for name in _PUBLIC_NUMBERS:
        if raw.get(name):
            view[name] = int(raw[name])
    if raw:
        view.setdefault("attempts", 0)  # not stored before the first claim
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
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):  # a stored "nan" (before strict intake) is no JSON number
                view[name] = number
    return view


# ----------------------------------------------------------------------------------------
# Coalescing writer
# ----------------------------------------------------------------------------------------


class OutcomeWriter:
    """Collects outcome ops arriving in one reactor turn and applies them in one script.

    `add(op)` returns a Deferred that fires once the op is in Redis.  One flush runs at a
    time; ops added meanwhile form the next batch, so batches grow with the load.

    When Redis is unreachable or refuses the write (an error reply such as OOM or
    READONLY: gateway/store/refusals.py), ops with ``keep=True`` (submit outcomes: the
    message went out, its message ids must be recorded) stay queued and are retried with
    backoff, logged once per 5 s with counts;
    ops with ``keep=False`` (receipts) fail their Deferred, so that the link does not
    acknowledge the deliver_sm and the carrier delivers the receipt again.

    On a Cluster that holds for the ops of the partitions whose node failed
    (`NotificationLedger.apply`): the others' are applied, and the kept ops wait out their
    backoff aside (``_held``), so that what comes meanwhile for the partitions that answer
    is not held behind them.
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
        self.refusals = RefusalLog("outcome writer", clock, _writer_log)
        self._applying: list[tuple[Sequence[Any], Any, bool]] = []
        # Kept ops of partitions that failed while others passed, back in the queue after
        # _held_delay (doubling from backoff_initial_seconds to backoff_max_seconds while
        # they keep failing): each retry of a migrating slot costs redis-py's redirection
        # TTL (about 0.4 s) to the batch it joins.
        self._held: list[tuple[Sequence[Any], Any, bool]] = []
        self._held_delay = backoff_initial_seconds
        self._held_release: Any = None

    @property
    def failing(self) -> bool:
        """True while Redis refuses (or cannot be reached for) the last batch."""
        return self.refusals.failing

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

    def unrecorded(self) -> list[list[Any]]:
        """The submit outcomes not yet in Redis (keep=True), the batch being applied
        included: what a stop hands over to the next start (`PushService`).  Applying
        one twice is harmless: an outcome for a notification no longer submitting (or
        queued after a lost lease) changes nothing (outcomes.lua)."""
        return [list(op) for op, _, keep in [*self._applying, *self._pending, *self._held] if keep]

    @property
    def pending(self) -> int:
        """Ops waiting to be applied, those held aside for their backoff included."""
        return len(self._pending) + len(self._held)

    def _start(self) -> None:
        self._scheduled = False
        if self._flushing:
            return
        if not self._pending:
            if not self._held:
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
                self._applying = batch
                try:
                    unapplied = await self.ledger.apply([op for op, _, _ in batch], now=self.clock.seconds())
                except Exception as e:
                    if not is_unavailable(e):
                        # A bug (a script error that is no refusal): retrying would fail
                        # alike for ever; the lease recovers these messages.
                        _writer_log.failure("recording {count} outcomes failed", count=len(batch))
                        for _, d, _ in batch:
                            d.errback(e)
                        continue
                    # Redis away or refusing writes (OOM, READONLY, MISCONF, BUSY, LOADING,
                    # NOSCRIPT...): the submits went out, so their outcomes are kept and
                    # retried until Redis takes them; forgetting them would let the lease
                    # send them again.  Receipts (keep=False) fail: the link answers
                    # ESME_RX_T_APPN and the SMSC delivers them again.
                    kept = [entry for entry in batch if entry[2]]
                    for _, d, keep in batch:
                        if not keep:
                            d.errback(e)  # only add() takes keep=False, so a Deferred
                    self._pending[:0] = kept
                    self.refusals.failed(e, len(batch), kept=len(self._pending))
                    await _sleep(self.clock, delay)
                    # Doubling up to backoff_max_seconds (push: 5 s): one attempt per
                    # 5 s at most while Redis refuses, and a kept batch is written within
                    # 5 s of Redis taking writes again.
                    delay = min(delay * 2, self.backoff_max_seconds)
                    continue
                finally:
                    self._applying = []
                delay = self.backoff_initial_seconds
                if unapplied:
                    self._partly_applied(batch, unapplied)
                    continue
                self.refusals.succeeded()
                if not self._held and self._held_release is None:  # what was held got through
                    self._held_delay = self.backoff_initial_seconds
                for _, d, _ in batch:
                    d.callback(None)
        finally:
            self._flushing = False
            if self._pending and not self._scheduled:
                self._scheduled = True
                self.clock.callLater(0, self._start)
            elif not self._pending and not self._held:
                self._release_waiters()

    def _partly_applied(self, batch: list[tuple[Sequence[Any], Any, bool]],
                        unapplied: list[tuple[int, BaseException]]) -> None:
        """The ops of the partitions that failed: receipts fail (the carrier delivers
        them again), submit outcomes are held aside for `_held_delay`; the rest passed."""
        failed = dict(unapplied)
        kept = []
        for number, entry in enumerate(batch):
            _, d, keep = entry
            if number not in failed:
                d.callback(None)
            elif keep:
                kept.append(entry)
            else:
                d.errback(failed[number])
        self.refusals.failed(unapplied[0][1], len(unapplied), kept=len(kept) + len(self._held))
        if kept:
            self._held.extend(kept)
            if self._held_release is None:
                self._held_release = self.clock.callLater(self._held_delay, self._release_held)
            self._held_delay = min(self._held_delay * 2, self.backoff_max_seconds)

    def _release_held(self) -> None:
        self._held_release = None
        self._pending[:0] = self._held
        self._held = []
        if self._pending and not self._scheduled and not self._flushing:
            self._scheduled = True
            self.clock.callLater(0, self._start)

    def _release_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a bounded wait may have given up (cancelled) meanwhile
                waiter.callback(None)

    async def flushed(self) -> None:
        """Wait until every op added so far is applied (or failed)."""
        if not self._pending and not self._held and not self._flushing and not self._scheduled:
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
