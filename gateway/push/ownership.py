"""Partition ownership: which gateway process works which partition of the pipeline.

Theory of operation
-------------------
With ``push.partitions`` > 1 (a Redis Cluster) every partition has one owner at a time.
Only the owner reads the partition's intake stream, claims from its lanes, promotes its
scheduled notifications, recovers its expired in-flight leases and closes its overdue
receipts; so processes do not race for the same lane heads and stream entries.  The
shared ``12123:notify`` stream stays open to every process (consumer group), and HTTP
intake, submit outcomes and receipts are recorded in any partition by any process:
ownership is about who *takes work*, the scripts stay safe without it (a claim only takes
``queued`` notifications, acceptance is idempotent).

Each tick (`PartitionOwnership.tick`, every lease / 5):

1. **Heartbeat**: ``members.lua`` scores this consumer in ``keys.partition_members`` (one
   key) with the Redis-clock expiry now + lease and returns the live members M.
2. **Owners**: one GET per partition of ``keys.partition(k).owner`` (in the partition's
   slot: it moves and fails over with the work it governs).
3. **Plan** (`plan_ownership`, pure): the fair share is ceil(P / M).  Partitions held
   beyond the share are released (a joiner has taken a heartbeat: the others make room,
   nobody restarts); free ones are taken until the share is held, in this process's
   rendezvous order (`rendezvous_score` of (consumer, partition)), so processes that
   start together prefer different partitions.
4. ``owner.lua`` holds (takes or renews, SET PX) each planned partition, releases extras.

**Fence.** A partition counts as owned (`owned`) only until the local time at which its
last successful hold was *sent* plus the lease minus a tenth: a lost lease (another
process holds it) stops the claims at once; an unrenewable one (Redis away) stops them
before Redis could give it to another process.  Work already claimed is not fenced: the
per-notification in-flight leases govern who records an outcome, and outcomes are
recorded whoever owns the partition.

**Failure semantics.** A process killed with SIGKILL stops heartbeating and renewing: its
membership and leases run out after at most ``push.partition_lease_seconds``; at the
next tick after that (lease / 5) the others' share rises and they take its partitions,
then recover its expired in-flight work and finish the intake entries it left pending
(XAUTOCLAIM at take-over).  A clean stop releases its leases and leaves the members at
once.  With one partition there is nothing to share: every process works partition 0
(`PartitionOwnership` with ``enabled`` False), as a single Redis fleet always has.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.logger import Logger

from gateway import metrics
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = ["OwnershipPlan", "PartitionLeases", "PartitionOwnership", "fair_share", "plan_ownership",
           "rendezvous_score"]

log = Logger()

# Members counted at most: the share is ceil(P / M), and with more members than
# partitions (1024 at most, config) each holds one or none anyway.
MAX_MEMBERS = 1024
# A hold is trusted locally for the lease minus this fraction of it: room for the clock
# rates of this host and the Redis host differing and for the reactor turn between the
# reply and the next claim (a lease of 10 s keeps 1 s).
FENCE_MARGIN = 0.1
# Ticks per lease: a lease survives four failed renewals (a Redis failover of a few
# seconds), and a joiner or a dead process's partitions are handled within a fifth of it.
TICKS_PER_LEASE = 5

partitions_owned = Gauge("gateway12123_push_partitions_owned",
                         "Pipeline partitions this process owns (reads, claims, sweeps)", registry=metrics.REGISTRY)
partition_owned = Gauge("gateway12123_push_partition_owned",
                        "1 while this process owns the partition", ["partition"], registry=metrics.REGISTRY)
partition_members = Gauge("gateway12123_push_partition_members",
                          "Gateway processes sharing the partitions, as last seen", registry=metrics.REGISTRY)
ownership_changes = Counter("gateway12123_push_partition_ownership_changes_total",
                            "Partitions taken, released (rebalancing, stop) or lost (another owner, lease ran out)",
                            ["change"], registry=metrics.REGISTRY)


def rendezvous_score(consumer: str, partition: int) -> int:
    """Highest-random-weight hashing: how much `consumer` prefers `partition` (stable
    across processes and hosts, independent of which other members exist)."""
    digest = hashlib.blake2b(f"{consumer}\0{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def fair_share(partitions: int, members: int) -> int:
    """ceil(P / M): the shares of all members cover every partition."""
    return math.ceil(partitions / max(1, members))


@dataclass(frozen=True)
class OwnershipPlan:
    hold: tuple[int, ...]     # take (free) or renew (ours), best first
    release: tuple[int, ...]  # ours beyond the share
    share: int


# An owner not known this tick (its GET failed): neither free nor ours.
UNKNOWN = object()


def plan_ownership(me: str, partitions: int, members: Iterable[str], owners: Mapping[int, Any],
                   held: Iterable[int] = ()) -> OwnershipPlan:
    """What to hold and release this tick (pure).

    Args:
        me: this consumer.
        partitions: P.
        members: the live members (this one counted whether or not it is listed).
        owners: partition -> owner name, None when free; missing or `UNKNOWN` when its
            read failed.
        held: partitions this process holds by its local record: kept (renewed) when their
            owner is unknown or free (the lease ran out but nobody took it), dropped
            when another name owns them.
    """
    share = fair_share(partitions, len(set(members) | {me}))
    held = set(held)

    def mine(p: int) -> bool:
        owner = owners.get(p, UNKNOWN)
        return owner == me or (p in held and (owner is None or owner is UNKNOWN))

    def preference(p: int) -> int:
        return -rendezvous_score(me, p)

    ours = sorted((p for p in range(partitions) if mine(p)), key=preference)
    keep, release = ours[:share], ours[share:]
    free = sorted((p for p in range(partitions) if not mine(p) and owners.get(p, UNKNOWN) is None), key=preference)
    take = free[:max(0, share - len(keep))]
    return OwnershipPlan(hold=(*keep, *take), release=tuple(release), share=share)


class PartitionLeases:
    """This process's partition leases as it knows them: partition -> local time until
    which it may work the partition (the fence).  Sans-IO: time comes in as a number."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._valid_until: dict[int, float] = {}

    def granted(self, partition: int, sent_at: float) -> bool:
        """A hold sent at `sent_at` succeeded; True when the partition is new to us."""
        new = partition not in self._valid_until
        self._valid_until[partition] = sent_at + self.lease_seconds * (1 - FENCE_MARGIN)
        return new

    def drop(self, partition: int) -> bool:
        """Stop working the partition now; True when it was held."""
        return self._valid_until.pop(partition, None) is not None

    def owned(self, now: float) -> tuple[int, ...]:
        """Partitions whose lease is still good at `now`, in order; expired ones dropped."""
        for partition in [p for p, until in self._valid_until.items() if until <= now]:
            del self._valid_until[partition]
        return tuple(sorted(self._valid_until))

    def recorded(self) -> tuple[int, ...]:
        """Every partition on record, good or not (what a tick tries to renew)."""
        return tuple(sorted(self._valid_until))


class PartitionOwnership:
    """Heartbeats, takes, renews and releases partition leases in Redis (see the module).

    Args:
        redis: a redis.asyncio client or RedisCluster (decode_responses=True).
        keys: the key schema; ownership is enabled when it has more than one partition.
        consumer: this process's consumer name (unique in the fleet).
        clock: IReactorTime; ``seconds()`` is the local time of the fence.
        lease_seconds: ``push.partition_lease_seconds``.
    """

    def __init__(self, redis: Any, keys: Keys, consumer: str, clock: Any, *, lease_seconds: float = 10.0) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.enabled = keys.partitioned
        self.leases = PartitionLeases(lease_seconds)
        self.members: tuple[str, ...] = (consumer,)
        self._all = tuple(range(keys.partitions))
        self._heartbeat_failing = False
        self._members = register_lua(redis, __file__, "members.lua")
        self._owner = register_lua(redis, __file__, "owner.lua")

    @property
    def tick_seconds(self) -> float:
        return self.lease_seconds / TICKS_PER_LEASE

    def owned(self, now: float | None = None) -> tuple[int, ...]:
        """The partitions this process may take work from now (all of them when ownership
        is off: one partition)."""
        if not self.enabled:
            return self._all
        return self.leases.owned(self.clock.seconds() if now is None else now)

    def holds(self, partition: int) -> bool:
        return partition in self.owned()

    async def tick(self) -> tuple[int, ...]:
        """One heartbeat and rebalancing step; returns the partitions owned after it."""
        if not self.enabled:
            return self._all
        sent_at = self.clock.seconds()
        lease_ms = int(self.lease_seconds * 1000)
        try:
            members = await self._members(keys=[self.keys.partition_members],
                                          args=[self.consumer, lease_ms, MAX_MEMBERS])
            self.members = tuple(members) or (self.consumer,)
            self._heartbeat_failing = False
        except Exception as e:  # the members' node away: renew with the members last seen
            if not self._heartbeat_failing:  # once per outage, not every tick
                log.warn("partition ownership: heartbeat failed ({error}); renewing with {count} members as last seen",
                         error=type(e).__name__, count=len(self.members))
            self._heartbeat_failing = True
        partition_members.set(len(self.members))
        owners = await self._read_owners()
        plan = plan_ownership(self.consumer, self.keys.partitions, self.members, owners,
                              self.leases.recorded())
        for partition in self.leases.recorded():
            if partition not in plan.hold and partition not in plan.release:
                self.leases.drop(partition)  # another process owns it now: fenced at once
                self._changed(partition, "lost", owners.get(partition))
        for partition in plan.release:
            self.leases.drop(partition)  # fence first, then let go
        results = await asyncio.gather(
            *(self._owner(keys=[self.keys.partition(p).owner], args=[self.consumer, "hold", lease_ms])
              for p in plan.hold),
            *(self._owner(keys=[self.keys.partition(p).owner], args=[self.consumer, "release", 0])
              for p in plan.release),
            return_exceptions=True)
        for partition, result in zip(plan.hold, results, strict=False):
            if isinstance(result, BaseException):
                continue  # unknown: the lease keeps its last validity and may run out
            if result == self.consumer:
                if self.leases.granted(partition, sent_at):
                    self._changed(partition, "taken", None)
            elif self.leases.drop(partition):
                self._changed(partition, "lost", result)
        for partition in plan.release:
            self._changed(partition, "released", None)
        owned = self.owned()
        self._publish(owned)
        return owned

    async def release_all(self) -> None:
        """A clean stop: leave the members and free every lease held, so the others take
        the partitions at their next tick instead of after the lease."""
        if not self.enabled:
            return
        held = self.leases.recorded()
        for partition in held:
            self.leases.drop(partition)
        await asyncio.gather(
            self._members(keys=[self.keys.partition_members], args=[self.consumer, 0, MAX_MEMBERS]),
            *(self._owner(keys=[self.keys.partition(p).owner], args=[self.consumer, "release", 0]) for p in held),
            return_exceptions=True)
        for partition in held:
            self._changed(partition, "released", None)
        self._publish(())

    async def _read_owners(self) -> dict[int, Any]:
        """partition -> owner (None: free); a partition whose read failed is left out
        (its node is away: neither taken nor given up on that ground)."""
        replies = await asyncio.gather(*(self.redis.get(part.owner) for part in self.keys.all_partitions),
                                       return_exceptions=True)
        return {k: reply for k, reply in enumerate(replies) if not isinstance(reply, BaseException)}

    def _changed(self, partition: int, change: str, other: Any) -> None:
        ownership_changes.labels(change).inc()
        if change == "lost":
            log.warn("partition {partition}: lost to {owner}; no more claims from it here",
                     partition=partition, owner=other or "nobody (lease ran out)")
        else:
            log.info("partition {partition}: {change}", partition=partition, change=change)

    def _publish(self, owned: Sequence[int]) -> None:
        partitions_owned.set(len(owned))
        held = set(owned)
        for partition in self._all:
            partition_owned.labels(str(partition)).set(1 if partition in held else 0)
