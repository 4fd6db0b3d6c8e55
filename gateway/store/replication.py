"""WAIT for replicas, on a connection whose writes the WAIT covers.

Redis's ``WAIT`` blocks until the replicas have acknowledged the writes *of the connection
that sends it*.  A pooled client sends it on whichever connection is free, and one that
has written nothing gets its answer at once, every replica counted, however far behind
they are (measured on the test Cluster with the replica stopped: ``WAIT 1 300`` answered
1 in 0 ms on another connection, 0 after 300 ms on the writing one).

So the WAIT here follows a write of its own in one pipeline (one connection): an INCR of
a small counter, the replication fence, in the slot of the keys just written.
Replication is one ordered stream per master, so a replica that has the fence has
everything its master wrote before it, whichever connection wrote it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import AskError, MovedError, TryAgainError
from twisted.logger import Logger

__all__ = ["HOLD_OFF_SECONDS", "WAIT_TIMEOUT_MS", "ReplicaWaits", "wait_for_replicas"]

# At most this long: a few replication round trips on a LAN, short enough that a replica
# being down costs a batch one second, not the service its availability.
WAIT_TIMEOUT_MS = 1000

# After a wait fell short, a master is not waited for again this long: its replica is down
# or far behind (a promoted replica has none until the old master rejoins: 9-11 s in
# bench/cluster_soak.py), and a second lost per batch would stall every partition's
# receipts behind it (measured: 1,207 of 60,000 receipts late past a 20 s timeout).
HOLD_OFF_SECONDS = 10.0

# The fence was sent to a node that no longer holds its slot (a slot migrating): the WAIT
# that followed covers nothing, so nothing is confirmed.
_REDIRECTED = (AskError, MovedError, TryAgainError)

log = Logger()


async def wait_for_replicas(redis: Any, fence_key: str, replicas: int, timeout_ms: int = WAIT_TIMEOUT_MS) -> int:
    """How many replicas (up to `replicas`) of the master that holds `fence_key` have all it
    wrote before this call, waiting at most `timeout_ms`.

    0 when the fence was redirected (its slot moving).  Raises what the connection raises:
    a master that went away while it was asked has not said its replicas had the writes.
    """
    node_of = getattr(redis, "get_node_from_key", None)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(fence_key)
        if node_of is not None:  # RedisCluster: both to the fence's master, one connection
            pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node_of(fence_key))
            fenced, acked = await pipe.execute(raise_on_error=False, allow_redirections=False)
        else:
            pipe.execute_command("WAIT", replicas, timeout_ms)
            fenced, acked = await pipe.execute(raise_on_error=False)
    for result in (fenced, acked):
        if isinstance(result, Exception) and not isinstance(result, _REDIRECTED):
            raise result
    if isinstance(fenced, Exception) or isinstance(acked, Exception):
        return 0
    return int(acked)


class ReplicaWaits:
    """`wait_for_replicas` per fence key, holding off a master whose replicas fell short.

    While held off a call answers 0 at once (acknowledge, counted short: what the bounded
    wait would have done a second later) and the next call after the hold-off asks again.
    """

    def __init__(self, redis: Any, *, hold_off_seconds: float = HOLD_OFF_SECONDS,
                 timeout_ms: int = WAIT_TIMEOUT_MS, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.hold_off_seconds = hold_off_seconds
        self.timeout_ms = timeout_ms
        self._clock = clock
        self._held_until: dict[str, float] = {}
        # Shortfalls per kind of wait since its last warning, and when the next may come:
        # while a master is held off every batch of it falls short (hundreds of lines per
        # gateway in a soak), so one line per hold-off period says how many.
        self._short_since: dict[str, int] = {}
        self._next_warning: dict[str, float] = {}

    async def confirmed(self, fence_key: str, replicas: int, what: str = "writes") -> int:
        """Replicas (up to `replicas`) that have what the fence's master wrote so far; 0
        without asking while that master is held off.  Raises as `wait_for_replicas`.
        A shortfall is warned about (`what` names what goes on without the replicas), at
        most once per hold-off period and kind."""
        if self._held_until.get(fence_key, 0.0) > self._clock():
            acked = 0
        else:
            acked = await wait_for_replicas(self.redis, fence_key, replicas, self.timeout_ms)
            if acked < replicas:
                self._held_until[fence_key] = self._clock() + self.hold_off_seconds
            else:
                self._held_until.pop(fence_key, None)
        if acked < replicas:
            self._fell_short(what, acked, replicas)
        return acked

    def _fell_short(self, what: str, acked: int, replicas: int) -> None:
        self._short_since[what] = self._short_since.get(what, 0) + 1
        now = self._clock()
        if now < self._next_warning.get(what, float("-inf")):
            return
        self._next_warning[what] = now + self.hold_off_seconds
        log.warn("{what}: acknowledged with {acked} of {wanted} replicas (bound {ms} ms; a master that fell short "
                 "is not waited for again for {hold:.0f} s); {times} such since the last line",
                 what=what, acked=acked, wanted=replicas, ms=self.timeout_ms, hold=self.hold_off_seconds,
                 times=self._short_since[what])
        self._short_since[what] = 0
