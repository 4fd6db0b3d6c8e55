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

from collections.abc import Callable, Generator
from typing import Any

from gateway.push.steps.ledger import Ledger

Reads = Generator[list[tuple[Any, ...]], list[Any], None]


class ReadBatch:
    """Read commands, each with what loads its reply."""

    def __init__(self, led: Ledger) -> None:
        self.led = led
        self.commands: list[tuple[Any, ...]] = []
        self.loaders: list[Callable[[Any], None]] = []

    def add(self, command: tuple[Any, ...], load: Callable[[Any], None]) -> None:
        self.commands.append(command)
        self.loaders.append(load)

    def declared(self) -> ReadBatch:
        for label, key in self.led.DECLARED.items():
            kind = label[0]
            if kind == "n":
                self._notification(key)
            elif kind in "mec":
                self.string(key)
            elif kind == "k":
                self._list(key)
        return self

    def _notification(self, key: str) -> None:
        ttl: list[int] = []  # TTL is read first: the hash's loader gets both replies

        def load_ttl(reply: Any) -> None:
            ttl.append(int(reply))

        def load_hash(reply: Any) -> None:
            self.led.r.load_hash(key, reply, ttl[0])

        self.add(("TTL", key), load_ttl)
        self.add(("HGETALL", key), load_hash)

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
