"""Which carrier link a number goes to: ported numbers, longest prefix, then failover.

Theory of operation
-------------------
Each carrier link serves number prefixes (``134``, ``1703``...; the number-segment
tables of China Mobile, Unicom, Telecom and Broadnet's ``192``).  For a number, the
*home* carrier is the one that serves it: the carrier named in the ported-number table
(携号转网, number portability, nationwide since 2019: a number keeps its segment but
moves carrier) when the number is in it, else the link with the longest matching prefix
(as in routing tables: a ``1703`` MVNO segment beats a carrier's ``170``).  The other
links are candidates after it only when their config says they accept other carriers'
numbers (``accepts_other_carriers``; the three big carriers interconnect SMS for the
national 12123 short code, seeds/004: "实现全国范围内、不同通信运营商手机用户告知信息互联推送"):
first those whose prefixes match the number (longest first: for a ported number its old
carrier), then the rest in configuration order.  With ``failover=False`` only the home
carrier is a candidate.

The pipeline submits to the first candidate that is bound and has not refused this
message permanently.  A home carrier that lost its bind is waited for
``failover_after_seconds`` (per carrier, counted from when `observe` first saw it
unbound) before its numbers go elsewhere: after a network blip every link reconnects
within seconds, and without the wait every message retried meanwhile went to whichever
carrier happened to bind first.  A carrier never bound since start is not waited for;
a carrier that refused the message is skipped at once.

Sans-IO: a pure function of the links' prefixes and config, their `is_bound()` answers,
the ported carrier the caller looked up (`PortedNumbers`) and the time passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from gateway.ports import CarrierLink

__all__ = ["PortedNumbers", "PrefixRouter"]

# A segment with no ported numbers is asked again after this long: a carrier's porting
# takes days (the citizen's request, the carriers' checks), so a first entry in a new
# segment applying within 30 s is no loss, and a batch of such numbers costs no round trip.
RECHECK_ABSENT_SEGMENT_SECONDS = 30.0


class PrefixRouter:
    """Candidate carrier links for a number, best first.

    Args:
        links: the carrier links, in configuration order.  A link may have
            ``accepts_other_carriers`` (default False: only its own numbers) and
            ``failover_after_seconds`` (default 0: no wait).
        failover: whether links other than the home carrier are candidates at all.
    """

    def __init__(self, links: Sequence[CarrierLink], *, failover: bool = True) -> None:
        self.links = tuple(links)
        self.failover = failover
        self._index = {link.name: i for i, link in enumerate(self.links)}
        self._by_prefix: dict[str, list[int]] = {}
        for index, link in enumerate(self.links):
            for prefix in link.prefixes:
                self._by_prefix.setdefault(str(prefix), []).append(index)
        self._max_prefix = max((len(p) for p in self._by_prefix), default=0)
        self._accepts_others = tuple(bool(getattr(link, "accepts_other_carriers", False)) for link in self.links)
        self._grace = tuple(float(getattr(link, "failover_after_seconds", 0.0)) for link in self.links)
        self._unbound_since: dict[int, float] = {}  # links that lost their bind: since when
        self._was_bound: set[int] = set()
        self._candidates = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, head: str, ported: int | None) -> tuple[int, ...]:
        matching: list[int] = []
        for length in range(min(len(head), self._max_prefix), 0, -1):
            for index in self._by_prefix.get(head[:length], ()):
                if index not in matching:
                    matching.append(index)
        home = ported if ported is not None else (matching[0] if matching else None)
        if home is None:
            # A segment no carrier is configured for: any carrier, in configuration order,
            # rather than none.
            return tuple(range(len(self.links))) if self.failover else ()
        order = [home]
        if self.failover:
            others = [*matching, *range(len(self.links))]
            order.extend(i for i in dict.fromkeys(others) if i != home and self._accepts_others[i])
        return tuple(order)

    def _order(self, digits: str, ported: str | None) -> tuple[int, ...]:
        return self._candidates(digits[: self._max_prefix], self._index.get(ported) if ported else None)

    def candidates(self, digits: str, ported: str | None = None) -> list[CarrierLink]:
        """Every candidate link for `digits`, best first (bound or not)."""
        return [self.links[i] for i in self._order(digits, ported)]

    def choose(self, digits: str, exclude: Collection[str] = (), *, ported: str | None = None,
               now: float | None = None) -> CarrierLink | None:
        """The best bound link not named in `exclude`, or None (then see `waiting_possible`).

        ported: the carrier the ported-number table names for `digits`, if any.
        now: seconds; with it, an unbound home carrier is waited for its
            ``failover_after_seconds`` before another carrier is offered.
        """
        for position, index in enumerate(self._order(digits, ported)):
            link = self.links[index]
            if link.name in exclude:
                continue
            if link.is_bound():
                return link
            if position == 0 and now is not None:
                since = self._unbound_since.get(index)
                if since is not None and now - since < self._grace[index]:
                    return None  # the home carrier is reconnecting: wait for it
        return None

    def observe(self, now: float) -> None:
        """Note which links lost their bind, and when (call before choosing, e.g. once per
        claimed batch).  Only a link that was bound and went down is waited for: one never
        bound since start (a carrier that is down) does not hold its numbers back."""
        for index, link in enumerate(self.links):
            if link.is_bound():
                self._was_bound.add(index)
                self._unbound_since.pop(index, None)
            elif index in self._was_bound and index not in self._unbound_since:
                self._unbound_since[index] = now

    def waiting_possible(self, digits: str, exclude: Collection[str] = (), *, ported: str | None = None) -> bool:
        """True when an unbound candidate not in `exclude` exists (worth waiting for)."""
        return any(link.name not in exclude for link in self.candidates(digits, ported))

    def any_bound(self) -> bool:
        return any(link.is_bound() for link in self.links)


class PortedNumbers:
    """The ported-number table that core systems keep in Redis (number portability).

    One hash per 3-digit number segment, ``<prefix>ported:<segment>`` (e.g.
    ``12123:ported:138``), field the 11-digit number, value the carrier's ``name`` in
    gateway.yaml.  Core systems HSET a number when it is ported and HDEL it when it
    returns; per-segment hashes keep each key small (Redis Cluster spreads them).  Read
    once per claimed batch (`lookup`: one HMGET per segment, one round trip); a name that
    is no configured carrier is ignored (prefix routing applies).

    A segment whose hash did not exist is not asked again for `recheck_seconds`: with no
    ported numbers (or none in the batch's segments) a batch costs no round trip at all.
    A segment's first ported number thus applies within `recheck_seconds`; a number
    ported into a segment that has others already applies to the next batch.

    Args:
        redis: a redis.asyncio client (decode_responses=True).
        prefix: the key prefix (``Keys.prefix``).
        carriers: the configured carrier names.
        recheck_seconds: how long a missing segment hash is believed missing.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, redis: Any, prefix: str, carriers: Iterable[str], *,
                 recheck_seconds: float = RECHECK_ABSENT_SEGMENT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.prefix = prefix
        self.carriers = frozenset(carriers)
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        # segment key -> until when it is believed missing; at most one entry per
        # 3-digit segment (1,000)
        self._absent_until: dict[str, float] = {}

    def key(self, digits: str) -> str:
        return f"{self.prefix}ported:{digits[:3]}"

    async def lookup(self, numbers: Iterable[str]) -> Mapping[str, str]:
        """number -> carrier name, for the numbers in the table."""
        now = self.clock()
        by_key: dict[str, list[str]] = {}
        for digits in dict.fromkeys(numbers):
            key = self.key(digits)
            if self._absent_until.get(key, 0.0) <= now:
                by_key.setdefault(key, []).append(digits)
        if not by_key:
            return {}
        # One HMGET per segment in the batch (and whether its hash exists), one round trip.
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, wanted in by_key.items():
                pipe.hmget(key, wanted)
                pipe.exists(key)
            replies = await pipe.execute()
        found: dict[str, str] = {}
        for k, (key, wanted) in enumerate(by_key.items()):
            names, exists = replies[2 * k], replies[2 * k + 1]
            if exists:
                self._absent_until.pop(key, None)
            else:
                self._absent_until[key] = now + self.recheck_seconds
            found.update((d, n) for d, n in zip(wanted, names, strict=True) if n and n in self.carriers)
        return found
