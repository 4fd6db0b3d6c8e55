"""What a ledger step sees of Redis: the keys it read, changed in memory as it writes, and
the writes themselves, in order, as Redis commands.

A step (gateway/push/steps/) runs the logic a ledger script ran inside Redis, but in the
gateway: its driver reads what the step needs first (`Overlay.load_*`), the step reads
and writes only through this class, and the driver then sends `writes` in one
transaction.  Reading a key that was not loaded is a bug in the step's reads and raises
`NotLoaded`, as ledger.lua's declared() fails on a key that was not declared: a value
guessed would be written back wrong.

The commands are those the scripts sent, with the same arguments, so that a partition
written by steps is the same as one written by the scripts (tests/push/test_steps.py
compares them key by key on real redis-servers).
"""

from __future__ import annotations

from bisect import insort
from typing import Any

Command = tuple[Any, ...]


class NotLoaded(KeyError):
    """A step read a key, field or member its driver did not load."""


def redis_number(value: float | int) -> str:
    """A number as redis.call sent a Lua number: integers plainly, others with %.17g."""
    return str(value) if isinstance(value, int) else f"{value:.17g}"


class PartialSortedSet:
    """What a step knows of a sorted set: some members' scores (None: known absent) and,
    for the parked-receipts set, its size and its lowest members from a score on."""

    def __init__(self) -> None:
        self.scores: dict[str, float | None] = {}
        self.size: int | None = None
        self.lowest: list[tuple[float, str]] | None = None  # sorted; the set's first members

    def score(self, member: str) -> float | None:
        if member not in self.scores:
            raise NotLoaded(member)
        return self.scores[member]


class Overlay:
    """Loaded keys, their changes, and the writes that make them (see the module doc)."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str] | None] = {}  # None: no such key
        # Hashes read in part (HMGET): the fields read; any other is NotLoaded unless written.
        self.fields_read: dict[str, set[str]] = {}
        self.ttls: dict[str, int] = {}
        self.strings: dict[str, str | None] = {}
        self.lists: dict[str, list[str]] = {}
        self.sorted_sets: dict[str, PartialSortedSet] = {}
        self.writes: list[Command] = []
        # What to do with a write's reply once the writes ran: {write's position: function}
        self.then: dict[int, Any] = {}

    # -- loading (the driver) ---------------------------------------------------------

    def load_hash(self, key: str, fields: dict[str, str] | list[str], ttl: int | None = None) -> None:
        """HGETALL's reply (a dict, or RESP2's flat list) and TTL's (None: not read; a
        step that needs it then fails with NotLoaded)."""
        if isinstance(fields, list):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        self.hashes[key] = dict(fields) if fields else None
        if ttl is not None:
            self.ttls[key] = ttl
        elif not fields:
            self.ttls[key] = -2

    def load_fields(self, key: str, names: list[str], values: list[str | None]) -> None:
        """HMGET's reply; `names` holds "state", which every notification has, so that
        none of them read means no such key."""
        fields = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        if "state" not in fields:
            self.load_absent(key)
            return
        self.hashes[key] = fields
        self.fields_read[key] = set(names)

    def load_absent(self, key: str) -> None:
        """A key known not to exist (EXISTS said so)."""
        self.hashes[key] = None
        self.ttls[key] = -2

    def load_string(self, key: str, value: str | None) -> None:
        self.strings[key] = value

    def load_list(self, key: str, items: list[str]) -> None:
        self.lists[key] = list(items)

    def sorted_set(self, key: str) -> PartialSortedSet:
        known = self.sorted_sets.get(key)
        if known is None:
            known = self.sorted_sets[key] = PartialSortedSet()
        return known

    def load_scores(self, key: str, members: list[str], scores: list[Any]) -> None:
        known = self.sorted_set(key).scores
        for member, score in zip(members, scores, strict=True):
            known[member] = None if score is None else float(score)

    # -- reads (the step) -------------------------------------------------------------

    def _hash(self, key: str) -> dict[str, str] | None:
        if key not in self.hashes:
            raise NotLoaded(key)
        return self.hashes[key]

    def hget(self, key: str, field: str) -> str | None:
        fields = self._hash(key)
        if fields is None:
            return None
        read = self.fields_read.get(key)
        if read is not None and field not in read and field not in fields:
            raise NotLoaded(f"{key} {field}")
        return fields.get(field)

    def hmget(self, key: str, *names: str) -> list[str | None]:
        return [self.hget(key, name) for name in names]

    def exists_hash(self, key: str) -> bool:
        return self._hash(key) is not None

    def ttl(self, key: str) -> int:
        if self._hash(key) is None:
            return -2
        if key not in self.ttls:
            raise NotLoaded(f"TTL {key}")
        return self.ttls[key]

    def get(self, key: str) -> str | None:
        if key not in self.strings:
            raise NotLoaded(key)
        return self.strings[key]

    def lrange_all(self, key: str) -> list[str]:
        if key not in self.lists:
            raise NotLoaded(key)
        return list(self.lists[key])

    def zscore(self, key: str, member: str) -> float | None:
        return self.sorted_set(key).score(member)

    # -- writes -----------------------------------------------------------------------

    def _write(self, *command: Any) -> None:
        self.writes.append(tuple(redis_number(x) if isinstance(x, float) else x for x in command))

    def hset(self, key: str, *pairs: str) -> None:
        fields = self._hash(key)
        if fields is None:
            fields = self.hashes[key] = {}
            self.ttls[key] = -1
            self.fields_read.pop(key, None)
        for k in range(0, len(pairs), 2):
            fields[pairs[k]] = pairs[k + 1]
        self._write("HSET", key, *pairs)

    def hincrby(self, key: str, field: str, by: int) -> int:
        value = int(self.hget(key, field) or 0) + by
        fields = self._hash(key)
        if fields is None:
            fields = self.hashes[key] = {}
            self.ttls[key] = -1
            self.fields_read.pop(key, None)
        fields[field] = str(value)
        self._write("HINCRBY", key, field, by)
        return value

    def delete(self, key: str) -> None:
        if key in self.hashes:
            self.hashes[key] = None
            self.fields_read.pop(key, None)
        if key in self.strings:
            self.strings[key] = None
        self._write("DEL", key)

    def expire(self, key: str, seconds: int | str) -> None:
        if self._hash(key) is not None:
            self.ttls[key] = int(seconds)
        self._write("EXPIRE", key, seconds)

    def set(self, key: str, value: str, *options: Any) -> None:
        self.strings[key] = value
        self._write("SET", key, value, *options)

    def set_get(self, key: str, value: str, *options: Any, then: Any) -> None:
        """SET ... GET, the value it replaced handed to `then` once the writes ran: the
        step need not read the key first (an index entry, written blind)."""
        self.strings[key] = value
        self.then[len(self.writes)] = then
        self._write("SET", key, value, *options, "GET")

    def zadd(self, key: str, *score_members: Any) -> None:
        known = self.sorted_set(key)
        for k in range(0, len(score_members), 2):
            score, member = float(score_members[k]), score_members[k + 1]
            if known.lowest is not None:
                if member in known.scores and known.scores[member] is not None:
                    known.lowest = [entry for entry in known.lowest if entry[1] != member]
                elif known.size is not None:
                    known.size += 1
                insort(known.lowest, (score, member))
            known.scores[member] = score
        self._write("ZADD", key, *score_members)

    def zrem(self, key: str, *members: str) -> None:
        known = self.sorted_set(key)
        for member in members:
            if known.lowest is not None and known.scores.get(member) is not None:
                known.lowest = [entry for entry in known.lowest if entry[1] != member]
                if known.size is not None:
                    known.size -= 1
            known.scores[member] = None
        self._write("ZREM", key, *members)

    def command(self, *command: Any) -> None:
        """A write whose effect no step reads back (XADD, XACK, XTRIM, RPUSH, INCRBY...)."""
        self._write(*command)
