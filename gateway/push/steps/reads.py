"""The reads a step needs before it runs.

A step's `reads` is a generator: it yields a `ReadBatch`'s commands, receives their replies
(the driver sends them in one pipeline) and the batch loads them into the step's overlay.
Most steps need one round trip; a few need a second, when what the first said decides
what to read next.

`ReadBatch.declared` reads every key a script call declared, by its label (ledger.lua):
``n`` a notification (HGETALL and TTL), ``m`` an index entry, ``e`` a parked receipt and
``c`` a daily-cap counter (GET), ``k`` a claim list (LRANGE).  The intake stream (``s``)
is read by accept's own reads, which know the consumer group.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Sequence
from typing import Any

from gateway.push.steps.ledger import Ledger

Reads = Generator[list[tuple[Any, ...]], list[Any], None]


class ReadBatch:
    """Read commands, each with what loads its reply."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.commands: list[tuple[Any, ...]] = []
        self.loaders: list[Callable[[Any], None]] = []
        self._fields: Sequence[str] | None = None

    def add(self, command: tuple[Any, ...], load: Callable[[Any], None]) -> None:
        self.commands.append(command)
        self.loaders.append(load)

    def declared(self, *, ttl_for: Collection[str] | None = None, index_for: Collection[str] | None = None,
                 fields: Sequence[str] | None = None, parked_for: Collection[str] | None = None) -> ReadBatch:
        """Every declared key; the TTL of a notification only if its label is in `ttl_for`,
        an index entry only if its label is in `index_for` and a parked receipt only if
        in `parked_for` (None: all), and of each notification only `fields` (HMGET; None:
        HGETALL).  What is left out a step
        rarely needs: if it does, it fails with NotLoaded and its driver runs it again
        with everything read (`Ledger.full`).

        HMGET of a few fields costs Redis less than HGETALL, which sends the text too
        (three HGETALLs were 61 of a notification's 406 thousand instructions, 2026-12-06);
        of many fields more, each asked being a scan of the hash's listpack."""
        full = self.led.full
        self._fields = None if full else fields
        for label, key in self.led.DECLARED.items():
            kind = label[0]
            if kind == "n":
                if key not in self.led.r.hashes:  # accept's EXISTS may have said it is absent
                    self._notification(key, full or ttl_for is None or label in ttl_for)
            elif kind == "m" and not (full or index_for is None or label in index_for):
                continue
            elif kind == "e" and not (full or parked_for is None or label in parked_for):
                continue
            elif kind in "mec":
                self.string(key)
            elif kind == "k":
                self._list(key)
        return self

    def _notification(self, key: str, with_ttl: bool) -> None:
        ttl: list[int] = []  # TTL is read first: the hash's loader gets both replies

        def load_ttl(reply: Any) -> None:
            ttl.append(int(reply))

        def load_hash(reply: Any) -> None:
            self.led.r.load_hash(key, reply, ttl[0] if ttl else None)

        if with_ttl:
            self.add(("TTL", key), load_ttl)
        fields = self._fields
        if fields is None:
            self.add(("HGETALL", key), load_hash)
            return
        names = list(fields)

        def load_fields(reply: Any) -> None:
            self.led.r.load_fields(key, names, reply)
            if ttl and self.led.r.hashes[key] is not None:
                self.led.r.ttls[key] = ttl[0]

        self.add(("HMGET", key, *names), load_fields)

    def _list(self, key: str) -> None:
        def load(reply: Any) -> None:
            self.led.r.load_list(key, reply)

        self.add(("LRANGE", key, 0, -1), load)

    def scores(self, key: str, members: list[str]) -> ReadBatch:
        """The scores of `members` in sorted set `key` (ZMSCORE)."""
        if members:
            self.add(("ZMSCORE", key, *members), lambda reply: self.led.r.load_scores(key, members, reply))
        return self

    def string(self, key: str) -> ReadBatch:
        def load(reply: Any) -> None:
            self.led.r.load_string(key, reply)

        self.add(("GET", key), load)
        return self

    def read(self) -> Reads:
        """Yields the commands, loads the replies."""
        if not self.commands:
            return
        replies = yield self.commands
        for load, reply in zip(self.loaders, replies, strict=True):
            load(reply)
