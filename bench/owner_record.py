"""The columnar record written without Lua by the partition's owner (bench/record_layouts.py's
`owner` layout; not the gateway's ledger).

bench/record_layouts.py showed that a columnar record's commands are cheap and that the Lua
interpreter is most of what its scripts cost Redis (stop 39, docs/benchmarks.md).  This
layout keeps the same keys and the same record (columnar_record.lua's fields joined by TAB)
and moves the logic into the process that owns the partition:

* **One writer per partition.**  A partition's hot path (accept, claim, submitted, applying
  receipts) is written only by its owner, whose claim on it is the value of the
  partition's `epoch` key (gateway/push/ownership.py hands partitions out; a take-over
  writes a new epoch).  Each step reads what it needs, then sends its writes between MULTI
  and EXEC under WATCH of the epoch: if another process took the partition meanwhile, EXEC
  writes nothing and the step raises `FencedOut`.  No other key is watched, because no
  other process writes these keys.
* **Receipts through an inbox.**  A receipt arrives on whichever process holds the bind.
  That process looks its message id up (one HMGET of the index) and appends
  `id, part, stat, err, tails` to the partition's inbox list; the owner applies the
  inbox in batches.
* **The lane is a list** (RPUSH, LRANGE, LTRIM): with one writer, first in first out needs
  no sequence counter and no scores.

What is deliberately not here (as in the columnar layout): retries, schedules, dead
letters, voice, partners and early receipts; and the writers that are not the owner
(cancellations, dead-letter retries, operators' actions), which would go through the inbox
or bump the epoch.  So this measures the floor of a Lua-free hot path with the same
guarantees, not a ledger.

The sans-IO part is `decode`, `encode`, `stamp` and the `plan_*` functions: they take what
was read and return the new records and events; `OwnerLedger` only reads and writes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

# columnar_record.lua's F: the record's fields in order, joined by TAB.
FIELDS = ("state", "type", "priority", "expires_at", "quiet", "to_tail", "flags", "attempts", "claim",
          "carrier", "parts", "receipt_parts", "message_ids", "indexed", "receipts", "history")
F = {name: k for k, name in enumerate(FIELDS)}
FINAL = frozenset({"delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected"})
CARRIER = "cmcc"


class FencedOut(Exception):
    """The partition's epoch changed: another process owns it now; nothing was written."""


def decode(record: str) -> list[str]:
    return record.split("\t")


def encode(record: list[str]) -> str:
    return "\t".join(record)


def stamp(record: list[str], state: str, now: str) -> None:
    record[F["state"]] = state
    record[F["history"]] += f" {'submit_started' if state == 'submitting' else state}={now}"


class Events:
    """The XADDs a step sends, as the gateway writes them (push.events all, final, off)."""

    def __init__(self, mode: str, maxlen: int, bucketed: bool = False) -> None:
        self.mode, self.maxlen, self.bucketed = mode, maxlen, bucketed
        self.entries: list[tuple[str, ...]] = []

    def emit(self, kind: str, notification_id: str, notification_type: str, now: str, **fields: str) -> None:
        if self.mode == "off" or (self.mode == "final" and kind not in FINAL):
            return
        if self.bucketed and " " in notification_id:  # '<bucket> <id>': core systems get the id
            notification_id = notification_id.split(" ", 1)[1]
        entry = ("type", f"notification.{kind}", "id", notification_id, "at", now, "notification_type", notification_type)
        self.entries.append(entry + tuple(x for pair in fields.items() for x in pair))

    def commands(self, key: str) -> list[tuple[Any, ...]]:
        # trimmed on a step's first entry only, as the gateway's scripts do
        return [("XADD", key, *(("MAXLEN", "~", self.maxlen) if k == 0 else ()), "*", *entry)
                for k, entry in enumerate(self.entries)]


class RawConnection:
    """One connection that sends a step's commands as one write (hiredis packs them) and
    reads their replies in bulk (hiredis parses them): redis-py's pipeline reads each reply
    through its own coroutine and timeout, which cost this layout more CPU than its logic
    (the bench's client figure, stop 40)."""

    # A reply larger than this many bytes per read is read in several (what asyncio's
    # StreamReader reads at most at once by default).
    READ_BYTES = 65_536

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._stream, self._writer = reader, writer
        self._replies = hiredis.Reader(encoding="utf-8", errors="replace")

    @classmethod
    async def open(cls, host: str, port: int) -> RawConnection:
        return cls(*await asyncio.open_connection(host, port))

    async def call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Every command's reply, in order; an error reply is a hiredis.ReplyError in its place."""
        self._writer.write(b"".join(hiredis.pack_command(c) for c in commands))
        await self._writer.drain()
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self._replies.gets()
            if reply is False:
                data = await self._stream.read(self.READ_BYTES)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                self._replies.feed(data)
            else:
                replies.append(reply)
        return replies

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def plan_accept(items: list[dict[str, Any]], known: list[str | None], now: str,
                events: Events) -> tuple[list[str], dict[str, str], dict[str, str], list[str], dict[str, float]]:
    """Which requests are new, and their bodies, records, lane order and retention ends."""
    duplicates: list[str] = []
    bodies: dict[str, str] = {}
    states: dict[str, str] = {}
    lane: list[str] = []
    expiry: dict[str, float] = {}
    for item, record in zip(items, known, strict=True):
        notification_id = item["id"]
        if record is not None or notification_id in states:
            duplicates.append(notification_id)
            continue
        r = ["queued", item["type"], "normal", f"{item['expires_at']:.3f}", "0", item["to"][-8:], "", "0",
             "", "", "", "", "", "", "", f"accepted={now}"]
        stamp(r, "queued", now)
        bodies[notification_id] = json.dumps(item["fields"], ensure_ascii=False, separators=(",", ":"))
        states[notification_id] = encode(r)
        lane.append(notification_id)
        expiry[notification_id] = item["retention_ends"]
        events.emit("queued", notification_id, item["type"], now, priority="normal")
    return duplicates, bodies, states, lane, expiry


def plan_claim(candidates: list[str], records: list[str | None], now: float, token: str,
               events: Events) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Those still queued become submitting under `token` (the expired ones end expired)."""
    now_s = f"{now:.3f}"
    taken: list[tuple[str, int]] = []
    states: dict[str, str] = {}
    for notification_id, record in zip(candidates, records, strict=True):
        if record is None:
            continue
        r = decode(record)
        if r[F["state"]] != "queued":
            continue
        expires = float(r[F["expires_at"]] or 0)
        if 0 < expires <= now:
            stamp(r, "expired", now_s)
            events.emit("expired", notification_id, r[F["type"]], now_s)
        else:
            attempt = int(r[F["attempts"]] or 0) + 1
            r[F["attempts"]], r[F["claim"]] = str(attempt), token
            stamp(r, "submitting", now_s)
            taken.append((notification_id, attempt))
            events.emit("submitting", notification_id, r[F["type"]], now_s, attempt=str(attempt))
        states[notification_id] = encode(r)
    return taken, states


def plan_submitted(ops: list[tuple[str, list[str], int]], records: list[str | None], now: str,
                   events: Events) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """Records and index entries of the submits of notifications still submitting."""
    states: dict[str, str] = {}
    index: dict[str, str] = {}
    done: list[str] = []
    for (notification_id, message_ids, receipt_parts), record in zip(ops, records, strict=True):
        r = decode(record) if record is not None else None
        if r is None or r[F["state"]] not in ("submitting", "queued", "scheduled"):
            continue
        indexed = message_ids[:receipt_parts]
        for part, message_id in enumerate(indexed):
            index[f"{CARRIER}\0{message_id}"] = f"{notification_id} {part}"
        r[F["carrier"]], r[F["parts"]], r[F["receipt_parts"]] = CARRIER, str(len(message_ids)), str(receipt_parts)
        r[F["message_ids"]], r[F["indexed"]] = " ".join(message_ids), " ".join(indexed)
        stamp(r, "submitted", now)
        states[notification_id] = encode(r)
        done.append(notification_id)
        events.emit("submitted", notification_id, r[F["type"]], now, carrier=CARRIER, parts=str(len(message_ids)))
    return states, index, done


def plan_receipts(ops: list[tuple[str, int, str, str, str]], records: list[str | None], now: str,
                  events: Events) -> tuple[dict[str, str], list[str], list[int]]:
    """Receipts applied before a final state and only for the number they name; the new
    records, the notifications made final, the (1-based) receipts refused."""
    states: dict[str, str] = {}
    finals: list[str] = []
    refused: list[int] = []
    for k, ((notification_id, part, stat, err, tails), record) in enumerate(zip(ops, records, strict=True), 1):
        # a batch may carry two receipts of one notification: the later sees the earlier
        current = states.get(notification_id, record)
        r = decode(current) if current is not None else None
        if r is None:
            continue
        if tails and r[F["to_tail"]] and r[F["to_tail"]] not in tails.split():
            refused.append(k)
            continue
        if r[F["state"]] in FINAL:
            continue
        parts = int(r[F["receipt_parts"]] or r[F["parts"]] or 1)
        got = r[F["receipts"]].split(",") if r[F["receipts"]] else []
        got += [""] * (part + 1 - len(got))
        got[part] = stat
        r[F["receipts"]] = ",".join(got)
        if stat == "DELIVRD" and all(q < len(got) and got[q] == "DELIVRD" for q in range(parts)):
            stamp(r, "delivered", now)
            finals.append(notification_id)
            events.emit("delivered", notification_id, r[F["type"]], now, parts=str(parts))
        elif stat not in ("DELIVRD", "ENROUTE", "ACCEPTD"):
            stamp(r, "undeliverable", now)
            finals.append(notification_id)
            events.emit("undeliverable", notification_id, r[F["type"]], now, receipt_state=stat, error_code=err)
        states[notification_id] = encode(r)
    return states, finals, refused


def _pairs(mapping: dict[str, str]) -> list[str]:
    return [x for pair in mapping.items() for x in pair]


class OwnerLedger:
    """The hot path of one partition, written by its owner without Lua (see the module)."""

    def __init__(self, redis: Any, events: str = "all", prefix: str = "12123:{p0}:", *, retention: float = 7 * 86_400,
                 events_maxlen: int = 100_000, lease_seconds: float = 60, receipt_timeout: float = 172_800) -> None:
        self.redis, self.events_mode, self.events_maxlen, self.retention = redis, events, events_maxlen, retention
        self.lease_seconds, self.receipt_timeout = lease_seconds, receipt_timeout
        self.body, self.state, self.index = prefix + "body", prefix + "state", prefix + "index"
        self.lane, self.expiry, self.inflight = prefix + "lane:normal", prefix + "expiry", prefix + "inflight"
        self.awaiting, self.events, self.inbox = prefix + "awaiting-receipt", prefix + "events", prefix + "inbox"
        self.epoch_key = prefix + "epoch"
        self.epoch: str | None = None
        self._raw: RawConnection | None = None

    async def take(self) -> None:
        """Become the partition's owner: a new epoch fences out the one before."""
        self.epoch = uuid.uuid4().hex
        await self.redis.set(self.epoch_key, self.epoch)

    def _events(self) -> Events:
        return Events(self.events_mode, self.events_maxlen)

    async def _connection(self) -> RawConnection:
        if self._raw is None:
            kwargs = self.redis.connection_pool.connection_kwargs
            self._raw = await RawConnection.open(kwargs.get("host", "127.0.0.1"), kwargs["port"])
        return self._raw

    async def close(self) -> None:
        if self._raw is not None:
            await self._raw.close()
            self._raw = None

    async def _fenced(self, read: Callable[[RawConnection], Awaitable[Any]],
                      write: Callable[[Any], tuple[list[tuple[Any, ...]], Any]]) -> Any:
        """read(connection) under WATCH of the epoch, then the commands write(what was read)
        returns between MULTI and EXEC; FencedOut if the epoch is not ours (any more)."""
        connection = await self._connection()
        _, epoch = await connection.call([("WATCH", self.epoch_key), ("GET", self.epoch_key)])
        if epoch != self.epoch:
            await connection.call([("UNWATCH",)])
            raise FencedOut(self.epoch_key)
        commands, result = write(await read(connection))
        replies = await connection.call([("MULTI",), *commands, ("EXEC",)])
        if replies[-1] is None:  # EXEC aborted: the epoch was written since WATCH
            raise FencedOut(self.epoch_key)
        failed = [r for r in (*replies[:-1], *replies[-1]) if isinstance(r, hiredis.ReplyError)]
        if failed:
            raise failed[0]
        return result

    async def accept(self, items: list[dict[str, Any]], now: float) -> list[str]:
        """items: id, type, expires_at, to, fields; returns the duplicates."""
        events = self._events()
        items = [{**item, "retention_ends": max(now, item["expires_at"]) + self.retention} for item in items]

        async def read(connection: RawConnection) -> list[str | None]:
            [known] = await connection.call([("HMGET", self.state, *(item["id"] for item in items))])
            return known

        def write(known: list[str | None]) -> tuple[list[tuple[Any, ...]], list[str]]:
            duplicates, bodies, states, lane, expiry = plan_accept(items, known, f"{now:.3f}", events)
            if not states:
                return [], duplicates
            return [("HSET", self.body, *_pairs(bodies)), ("HSET", self.state, *_pairs(states)),
                    ("RPUSH", self.lane, *lane),
                    ("ZADD", self.expiry, *(x for i, end in expiry.items() for x in (f"{end:.3f}", i))),
                    *events.commands(self.events)], duplicates

        return await self._fenced(read, write)

    async def claim(self, n: int, now: float) -> list[tuple[str, int, dict[str, Any]]]:
        events, token = self._events(), uuid.uuid4().hex

        async def read(connection: RawConnection) -> tuple[list[str], list[str | None], list[str | None]]:
            [candidates] = await connection.call([("LRANGE", self.lane, 0, n - 1)])
            if not candidates:
                return [], [], []
            records, bodies = await connection.call([("HMGET", self.state, *candidates),
                                                     ("HMGET", self.body, *candidates)])
            return candidates, records, bodies

        def write(got: tuple[list[str], list[str | None], list[str | None]]) -> tuple[list[tuple[Any, ...]], Any]:
            candidates, records, bodies = got
            if not candidates:
                return [], []
            taken, states = plan_claim(candidates, records, now, token, events)
            commands: list[tuple[Any, ...]] = [("LTRIM", self.lane, len(candidates), -1)]
            if states:
                commands.append(("HSET", self.state, *_pairs(states)))
            if taken:
                deadline = f"{now + self.lease_seconds:.3f}"
                commands.append(("ZADD", self.inflight, *(x for i, _ in taken for x in (deadline, i))))
            body_of = dict(zip(candidates, bodies, strict=True))
            return [*commands, *events.commands(self.events)], [(i, a, json.loads(body_of[i] or "{}")) for i, a in taken]

        return await self._fenced(read, write)

    async def submitted(self, ops: list[tuple[str, list[str], int]], now: float) -> list[str]:
        """ops: (id, the parts' message ids, how many leading parts asked a receipt);
        returns the index entries taken from another notification."""
        events = self._events()
        fields = [f"{CARRIER}\0{m}" for _, message_ids, receipt_parts in ops for m in message_ids[:receipt_parts]]

        async def read(connection: RawConnection) -> tuple[list[str | None], list[str | None]]:
            if not fields:
                [records] = await connection.call([("HMGET", self.state, *(op[0] for op in ops))])
                return records, []
            records, before = await connection.call([("HMGET", self.state, *(op[0] for op in ops)),
                                                     ("HMGET", self.index, *fields)])
            return records, before

        def write(got: tuple[list[str | None], list[str | None]]) -> tuple[list[tuple[Any, ...]], list[str]]:
            records, before = got
            states, index, done = plan_submitted(ops, records, f"{now:.3f}", events)
            # an index entry another notification held (an SMSC reusing ids), as the scripts report it
            displaced = [f"{field} {entry}" for field, entry in zip(fields, before, strict=False)
                         if entry is not None and index.get(field, entry).split(" ")[0] != entry.split(" ")[0]]
            if not states:
                return [], displaced
            due = f"{now + self.receipt_timeout:.3f}"
            return [*([("HSET", self.index, *_pairs(index))] if index else []),
                    ("HSET", self.state, *_pairs(states)), ("ZREM", self.inflight, *done),
                    ("ZADD", self.awaiting, *(x for i in done for x in (due, i))),
                    *events.commands(self.events)], displaced

        return await self._fenced(read, write)

    async def receive(self, receipts: list[tuple[str, str, str, str]]) -> int:
        """On the process holding the bind: look each receipt's message id up and append
        it to the inbox; how many found their notification."""
        connection = await self._connection()
        entries = await self._index_entries(connection, [f"{CARRIER}\0{m}" for m, _, _, _ in receipts])
        found = []
        for message_id, stat, err, tails in receipts:
            entry = entries[f"{CARRIER}\0{message_id}"]
            if entry is not None:  # the gateway would park it; every receipt here finds its notification
                notification_id, part = entry.rsplit(" ", 1)
                found.append("\t".join((notification_id, part, stat, err, tails)))
        if found:
            await connection.call([("RPUSH", self.inbox, *found)])
        return len(found)

    async def _index_entries(self, connection: RawConnection, fields: list[str]) -> dict[str, str | None]:
        [entries] = await connection.call([("HMGET", self.index, *fields)])
        return dict(zip(fields, entries, strict=True))

    async def _records(self, connection: RawConnection, ids: list[str]) -> list[str | None]:
        if not ids:
            return []
        [records] = await connection.call([("HMGET", self.state, *ids)])
        return records

    def _state_writes(self, states: dict[str, str]) -> list[tuple[Any, ...]]:
        return [("HSET", self.state, *_pairs(states))] if states else []

    async def apply_inbox(self, n: int, now: float) -> list[int]:
        """The owner applies up to n receipts of its inbox; the (1-based) ones refused."""
        events = self._events()

        async def read(connection: RawConnection) -> tuple[list[tuple[str, int, str, str, str]], list[str | None]]:
            [raw] = await connection.call([("LRANGE", self.inbox, 0, n - 1)])
            ops = []
            for line in raw:
                notification_id, part, stat, err, tails = line.split("\t")
                ops.append((notification_id, int(part), stat, err, tails))
            return ops, await self._records(connection, [op[0] for op in ops])

        def write(got: tuple[list[tuple[str, int, str, str, str]], list[str | None]]) -> tuple[list[tuple[Any, ...]], list[int]]:
            ops, records = got
            if not ops:
                return [], []
            states, finals, refused = plan_receipts(ops, records, f"{now:.3f}", events)
            commands: list[tuple[Any, ...]] = [("LTRIM", self.inbox, len(ops), -1), *self._state_writes(states)]
            if finals:
                commands += [("ZREM", self.awaiting, *finals), ("ZREM", self.inflight, *finals)]
            return [*commands, *events.commands(self.events)], refused

        return await self._fenced(read, write)

    async def receipts(self, receipts: list[tuple[str, str, str, str]], now: float) -> list[int]:
        """receive() then apply_inbox(): the columnar layout's receipts() in two processes' steps."""
        found = await self.receive(receipts)
        return await self.apply_inbox(found, now) if found else []

    async def sweep(self, up_to: float, limit: int) -> int:
        """Delete the records whose retention ended, as columnar_sweep.lua does."""
        async def read(connection: RawConnection) -> tuple[list[str], list[str | None]]:
            [ids] = await connection.call([("ZRANGEBYSCORE", self.expiry, "-inf", f"{up_to}", "LIMIT", 0, limit)])
            if not ids:
                return [], []
            [records] = await connection.call([("HMGET", self.state, *ids)])
            return ids, records

        def write(got: tuple[list[str], list[str | None]]) -> tuple[list[tuple[Any, ...]], int]:
            ids, records = got
            if not ids:
                return [], 0
            fields = [f"{r[F['carrier']]}\0{m}" for r in (decode(x) for x in records if x is not None)
                      for m in r[F["indexed"]].split()]
            return [("HDEL", self.body, *ids), ("HDEL", self.state, *ids),
                    *([("HDEL", self.index, *fields)] if fields else []), ("ZREM", self.expiry, *ids)], len(ids)

        return await self._fenced(read, write)

    async def state_of(self, notification_id: str) -> str | None:
        record = await self.redis.hget(self.state, notification_id)
        return None if record is None else record.split("\t", 1)[0]

    async def lane_length(self) -> int:
        return await self.redis.llen(self.lane)


class BucketedOwnerLedger(OwnerLedger):
    """OwnerLedger with its hashes cut to a size a Cluster can move (docs/benchmarks.md,
    "Fortieth stop": MIGRATE of a 200 MB hash blocked its node 0.8 s).

    * Bodies and records go to the bucket of their acceptance time
      (``bucket_seconds``; a minute in production would hold about 5,600 records per
      partition at 1,500/s on 16 partitions): ``body:<bucket>``, ``state:<bucket>``.
      Lanes, in-flight and awaiting members, index entries and inbox lines carry the bucket
      (``<bucket> <id>``), so the hot path never looks it up.
    * Lookups by id (idempotency at acceptance, readers) use ``ids:<k>``, id -> bucket, and
      the message-id index is ``index:<k>``; k = crc32 % ``shards`` keeps each of them small.
    * Retention ends whole buckets: ``buckets`` scores each by when its last record's
      retention ends, and the sweep deletes its two hashes (UNLINK) and their ids and
      index entries.
    """

    def __init__(self, redis: Any, events: str = "all", prefix: str = "12123:{p0}:", *, bucket_seconds: float = 60,
                 shards: int = 16, **options: Any) -> None:
        super().__init__(redis, events, prefix, **options)
        self.prefix, self.bucket_seconds, self.shards = prefix, bucket_seconds, shards
        self.buckets = prefix + "buckets"
        self._claimed_bucket: dict[str, str] = {}  # what this owner claimed: the submitter holds it

    def _events(self) -> Events:
        return Events(self.events_mode, self.events_maxlen, bucketed=True)

    def bucket_at(self, now: float) -> str:
        return str(int(now // self.bucket_seconds))

    def shard(self, name: str) -> int:
        return zlib.crc32(name.encode()) % self.shards

    def ids_key(self, k: int) -> str:
        return f"{self.prefix}ids:{k}"

    def index_key(self, k: int) -> str:
        return f"{self.prefix}index:{k}"

    def _by_shard(self, names: list[str]) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for name in names:
            grouped.setdefault(self.shard(name), []).append(name)
        return grouped

    async def _hmget_sharded(self, connection: RawConnection, key: Callable[[int], str],
                             names: list[str]) -> dict[str, str | None]:
        grouped = self._by_shard(names)
        if not grouped:
            return {}
        replies = await connection.call([("HMGET", key(k), *members) for k, members in grouped.items()])
        return {name: value for members, values in zip(grouped.values(), replies, strict=True)
                for name, value in zip(members, values, strict=True)}

    async def accept(self, items: list[dict[str, Any]], now: float) -> list[str]:
        events, bucket = self._events(), self.bucket_at(now)
        items = [{**item, "retention_ends": max(now, item["expires_at"]) + self.retention} for item in items]

        async def read(connection: RawConnection) -> list[str | None]:
            known = await self._hmget_sharded(connection, self.ids_key, [item["id"] for item in items])
            return [known[item["id"]] for item in items]

        def write(known: list[str | None]) -> tuple[list[tuple[Any, ...]], list[str]]:
            duplicates, bodies, states, lane, expiry = plan_accept(items, known, f"{now:.3f}", events)
            if not states:
                return [], duplicates
            return [("HSET", f"{self.body}:{bucket}", *_pairs(bodies)),
                    ("HSET", f"{self.state}:{bucket}", *_pairs(states)),
                    *(("HSET", self.ids_key(k), *(x for i in members for x in (i, bucket)))
                      for k, members in self._by_shard(lane).items()),
                    ("RPUSH", self.lane, *(f"{bucket} {i}" for i in lane)),
                    ("ZADD", self.buckets, "GT", f"{max(expiry.values()):.3f}", bucket),
                    *events.commands(self.events)], duplicates

        return await self._fenced(read, write)

    async def claim(self, n: int, now: float) -> list[tuple[str, int, dict[str, Any]]]:
        events, token = self._events(), uuid.uuid4().hex

        async def read(connection: RawConnection) -> tuple[list[tuple[str, str]], dict[str, str | None],
                                                          dict[str, str | None]]:
            [entries] = await connection.call([("LRANGE", self.lane, 0, n - 1)])
            candidates = [tuple(e.split(" ", 1)) for e in entries]
            groups: dict[str, list[str]] = {}
            for bucket, i in candidates:
                groups.setdefault(bucket, []).append(i)
            if not groups:
                return [], {}, {}
            replies = await connection.call([c for b, ids in groups.items()
                                             for c in (("HMGET", f"{self.state}:{b}", *ids),
                                                       ("HMGET", f"{self.body}:{b}", *ids))])
            records, bodies = {}, {}
            for k, (b, ids) in enumerate(groups.items()):
                records.update({f"{b} {i}": r for i, r in zip(ids, replies[2 * k], strict=True)})
                bodies.update({f"{b} {i}": r for i, r in zip(ids, replies[2 * k + 1], strict=True)})
            return candidates, records, bodies  # type: ignore[return-value]

        def write(got: tuple[list[tuple[str, str]], dict[str, str | None], dict[str, str | None]]) -> tuple[
                list[tuple[Any, ...]], Any]:
            candidates, records, bodies = got
            if not candidates:
                return [], []
            members = [f"{b} {i}" for b, i in candidates]
            taken, states = plan_claim(members, [records[m] for m in members], now, token, events)
            commands: list[tuple[Any, ...]] = [("LTRIM", self.lane, len(candidates), -1),
                                               *self._state_writes(states)]
            if taken:
                deadline = f"{now + self.lease_seconds:.3f}"
                commands.append(("ZADD", self.inflight, *(x for m, _ in taken for x in (deadline, m))))
            out = []
            for member, attempt in taken:
                bucket, notification_id = member.split(" ", 1)
                self._claimed_bucket[notification_id] = bucket
                out.append((notification_id, attempt, json.loads(bodies[member] or "{}")))
            return [*commands, *events.commands(self.events)], out

        return await self._fenced(read, write)

    async def submitted(self, ops: list[tuple[str, list[str], int]], now: float) -> list[str]:
        events = self._events()
        members = [f"{self._claimed_bucket[op[0]]} {op[0]}" for op in ops]
        fields = [f"{CARRIER}\0{m}" for _, message_ids, receipt_parts in ops for m in message_ids[:receipt_parts]]

        async def read(connection: RawConnection) -> tuple[list[str | None], dict[str, str | None]]:
            records = await self._records(connection, members)
            return records, await self._hmget_sharded(connection, self.index_key, fields)

        def write(got: tuple[list[str | None], dict[str, str | None]]) -> tuple[list[tuple[Any, ...]], list[str]]:
            records, before = got
            bucketed_ops = [(m, message_ids, parts) for m, (_, message_ids, parts) in zip(members, ops, strict=True)]
            states, index, done = plan_submitted(bucketed_ops, records, f"{now:.3f}", events)
            # index values name the bucket too: '<bucket> <id> <part>'
            displaced = [f"{field} {entry}" for field, entry in before.items()
                         if entry is not None and index.get(field, entry).rsplit(" ", 1)[0] != entry.rsplit(" ", 1)[0]]
            for notification_id in (op[0] for op in ops):
                self._claimed_bucket.pop(notification_id, None)
            if not states:
                return [], displaced
            due = f"{now + self.receipt_timeout:.3f}"
            return [*(("HSET", self.index_key(k), *(x for f in fs for x in (f, index[f])))
                      for k, fs in self._by_shard(list(index)).items()),
                    *self._state_writes(states), ("ZREM", self.inflight, *done),
                    ("ZADD", self.awaiting, *(x for m in done for x in (due, m))),
                    *events.commands(self.events)], displaced

        return await self._fenced(read, write)

    async def _records(self, connection: RawConnection, ids: list[str]) -> list[str | None]:
        """The records of '<bucket> <id>' members, one HMGET per bucket."""
        members = ids
        groups: dict[str, list[str]] = {}
        for member in members:
            bucket, notification_id = member.split(" ", 1)
            groups.setdefault(bucket, []).append(notification_id)
        if not groups:
            return []
        replies = await connection.call([("HMGET", f"{self.state}:{b}", *ids) for b, ids in groups.items()])
        found = {f"{b} {i}": r for (b, ids), values in zip(groups.items(), replies, strict=True)
                 for i, r in zip(ids, values, strict=True)}
        return [found[m] for m in members]

    async def _index_entries(self, connection: RawConnection, fields: list[str]) -> dict[str, str | None]:
        return await self._hmget_sharded(connection, self.index_key, fields)

    def _state_writes(self, states: dict[str, str]) -> list[tuple[Any, ...]]:
        return _hset_by_bucket(self.state, states)

    async def sweep(self, up_to: float, limit: int) -> int:
        """End the oldest bucket whose retention ended (`limit` is not used: a bucket goes whole)."""
        async def read(connection: RawConnection) -> tuple[str | None, dict[str, str]]:
            [due] = await connection.call([("ZRANGEBYSCORE", self.buckets, "-inf", f"{up_to}", "LIMIT", 0, 1)])
            if not due:
                return None, {}
            [records] = await connection.call([("HGETALL", f"{self.state}:{due[0]}")])
            return due[0], dict(zip(records[::2], records[1::2], strict=True))

        def write(got: tuple[str | None, dict[str, str]]) -> tuple[list[tuple[Any, ...]], int]:
            bucket, records = got
            if bucket is None:
                return [], 0
            fields = [f"{r[F['carrier']]}\0{m}" for r in map(decode, records.values()) for m in r[F["indexed"]].split()]
            return [*(("HDEL", self.ids_key(k), *ids) for k, ids in self._by_shard(list(records)).items()),
                    *(("HDEL", self.index_key(k), *fs) for k, fs in self._by_shard(fields).items()),
                    ("UNLINK", f"{self.body}:{bucket}", f"{self.state}:{bucket}"),
                    ("ZREM", self.buckets, bucket)], max(len(records), 1)

        return await self._fenced(read, write)

    async def state_of(self, notification_id: str) -> str | None:
        bucket = await self.redis.hget(self.ids_key(self.shard(notification_id)), notification_id)
        record = None if bucket is None else await self.redis.hget(f"{self.state}:{bucket}", notification_id)
        return None if record is None else record.split("\t", 1)[0]


def _hset_by_bucket(state_key: str, states: dict[str, str]) -> list[tuple[Any, ...]]:
    """HSETs of records keyed '<bucket> <id>', one per bucket."""
    groups: dict[str, list[str]] = {}
    for member, record in states.items():
        bucket, notification_id = member.split(" ", 1)
        groups.setdefault(bucket, []).extend((notification_id, record))
    return [("HSET", f"{state_key}:{b}", *pairs) for b, pairs in groups.items()]
