"""Which carrier link a number goes to: longest prefix first, then failover.

Theory of operation
-------------------
Each carrier link serves number prefixes (``134``, ``1703``...; the number-segment
tables of China Mobile, Unicom and Telecom).  For a number, the candidate links are
ordered by the length of their longest matching prefix (longest wins, as in routing
tables: a ``1703`` MVNO segment beats a carrier's ``170``), then the links that match no
prefix, in configuration order.  The pipeline submits to the first candidate that is
bound and has not refused this message permanently; so when a carrier's link is down
(``is_bound()`` false) or the carrier refuses a message for good, the next carrier takes
it.  The three carriers interconnect SMS for the national 12123 short code (seeds/004:
"实现全国范围内、不同通信运营商手机用户告知信息互联推送"), which is why any link is a
valid failover.  With ``failover=False`` only matching links are candidates.

Sans-IO: a pure function of the links' prefixes and their `is_bound()` answers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache

from gateway.ports import CarrierLink

__all__ = ["PrefixRouter"]


class PrefixRouter:
    """Candidate carrier links for a number, best first.

    Args:
        links: the carrier links, in configuration order.
        failover: whether links that match none of a number's prefixes are candidates
            (after the matching ones).
    """

    def __init__(self, links: Sequence[CarrierLink], *, failover: bool = True) -> None:
        self.links = tuple(links)
        self.failover = failover
        self._by_prefix: dict[str, list[int]] = {}
        for index, link in enumerate(self.links):
            for prefix in link.prefixes:
                self._by_prefix.setdefault(str(prefix), []).append(index)
        self._max_prefix = max((len(p) for p in self._by_prefix), default=0)
        self._candidates = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, head: str) -> tuple[int, ...]:
        order: list[int] = []
        for length in range(min(len(head), self._max_prefix), 0, -1):
            for index in self._by_prefix.get(head[:length], ()):
                if index not in order:
                    order.append(index)
        if self.failover:
            order.extend(i for i in range(len(self.links)) if i not in order)
        return tuple(order)

    def candidates(self, digits: str) -> list[CarrierLink]:
        """Every candidate link for `digits`, best first (bound or not)."""
        return [self.links[i] for i in self._candidates(digits[: self._max_prefix])]

    def choose(self, digits: str, exclude: Collection[str] = ()) -> CarrierLink | None:
        """The best bound link not named in `exclude`, or None."""
        for index in self._candidates(digits[: self._max_prefix]):
            link = self.links[index]
            if link.name not in exclude and link.is_bound():
                return link
        return None

    def waiting_possible(self, digits: str, exclude: Collection[str] = ()) -> bool:
        """True when an unbound candidate not in `exclude` exists (worth waiting for)."""
        return any(link.name not in exclude for link in self.candidates(digits))

    def any_bound(self) -> bool:
        return any(link.is_bound() for link in self.links)
