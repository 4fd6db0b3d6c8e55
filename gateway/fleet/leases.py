"""Leases in Redis for things a carrier sells by the count: binds of an account, calls on a trunk.

Theory of operation
-------------------
``lua/lease.lua`` keeps, per account (or trunk), a sorted set of holders scored by the
Redis-clock time their lease expires.  A holder is named ``<host>-<pid>-<what>``.

* **Acquire** before the scarce thing is used: a bind slot asks before it connects, a
  reminder asks before its Originate.  Refused (N holders already): the bind is not
  attempted and the link retries after ``retry_seconds``; the call stays due.
* **Renew** every third of the lease time while held.  A process that dies (SIGKILL)
  stops renewing, and its place is free after at most the lease time.
* **Self-fencing.**  A holder that cannot renew (Redis away) keeps its bind only while
  the lease it last renewed is surely still valid, counted from the moment that renewal
  was *sent*; a safety margin before that, it unbinds.  A renewal answered "not yours
  any more" (the lease expired and its place was taken) unbinds at once.  So the binds
  held never outnumber the live leases, even across a Redis restart that lost them.
  A lapsed lease whose place nobody took is renewed: after Redis's clock stepped
  forward (a failover to a host whose clock is ahead) every lease lapses at once, and
  the whole fleet unbound with its submits on the wire.
* **Release** on clean unbind and when a session is lost, so another process can bind
  at once instead of after the lease time.

Calls differ on one point: a call that exists must be counted even if its lease had
lapsed (Redis was away, or the call was adopted from a previous run), so call slots
are renewed in ``hold`` mode (added whatever the count) and never cut a call short:
the limit then holds for new calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.fleet.names import live_name
from gateway.store.bridge import as_deferred
from gateway.store.scripts import register_lua
from gateway.store.service import REDIS_ERRORS

__all__ = [
    "BindLeases",
    "CallSlots",
    "LeaseTable",
    "bind_leases_key",
    "call_slots_for",
    "call_slots_key",
    "holder_prefix",
    "trunk_id",
]

log = Logger()

LEASE_LUA = "lease.lua"  # gateway/fleet/lua/lease.lua, loaded by gateway.store.scripts
LEASE_ERRORS = (*REDIS_ERRORS, ResponseError)

# Renew (and check the fence) this many times per lease time: two renewals may fail (a
# Redis blip, a busy reactor) before the fence is reached.
RENEWALS_PER_LEASE = 5
# A holder that could not renew gives up its bind once less than this fraction of its
# last lease is left.  The check runs every 1/RENEWALS_PER_LEASE of the lease, so the
# unbind starts with between 0.2 and 0.4 of the lease left: time for it to reach the
# SMSC before another process may bind (3 s of a 15 s lease).
FENCE_MARGIN_FRACTION = 0.4


def holder_prefix() -> str:
    """``<host>-<pid>-<run>``: unique per running process (host name and pid are not:
    gateway/fleet/names.py), readable in `ZRANGE`."""
    return live_name()


def bind_leases_key(prefix: str, account: str) -> str:
    """Bind leases of a carrier account (``12123:{acct:cmcc}:binds``)."""
    return f"{prefix}{{acct:{account}}}:binds"


def trunk_id(channel_pattern: str) -> str:
    """A name for the trunk of an Originate channel pattern, fit for a hash tag:
    ``PJSIP/{number}@carrier-trunk`` -> ``PJSIP-carrier-trunk``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", channel_pattern.replace("{number}", "")).strip("-")


def call_slots_key(prefix: str, trunk: str) -> str:
    """Call slots of a voice trunk (``12123:{trunk:PJSIP-carrier-trunk}:calls``)."""
    return f"{prefix}{{trunk:{trunk}}}:calls"


class LeaseTable:
    """lease.lua on one key: at most ``limit`` holders, each for ``lease_seconds``."""

    def __init__(self, redis: Any, key: str, limit: int, lease_seconds: float) -> None:
        self._redis = redis
        self.key = key
        self.limit = limit
        self.lease_seconds = lease_seconds
        self._script: Any = None

    async def _run(self, holder: str, mode: str) -> bool:
        if self._script is None:
            self._script = register_lua(self._redis, __file__, LEASE_LUA)
        granted, _count = await self._script(
            keys=[self.key], args=[holder, int(self.lease_seconds * 1000), self.limit, mode])
        return bool(int(granted))

    async def acquire(self, holder: str) -> bool:
        """Take a place if fewer than ``limit`` hold one (or renew ours)."""
        return await self._run(holder, "acquire")

    async def renew(self, holder: str) -> bool:
        """Extend our lease; False when it had expired and the places are all taken (ours
        may be another's now).  A lapsed lease whose place is free is ours again: see
        lua/lease.lua."""
        return await self._run(holder, "renew")

    async def hold(self, holder: str) -> None:
        """Add or extend our lease whatever the count (a thing that exists already)."""
        await self._run(holder, "hold")

    async def release(self, holder: str) -> None:
        await self._redis.zrem(self.key, holder)

    async def holders(self) -> list[str]:
        return list(await self._redis.zrange(self.key, 0, -1))


@dataclass
class _Held:
    valid_until: float  # local clock: last renewal sent + lease time


class BindLeases:
    """The bind leases of one carrier account in one process (used by the carrier link).

    Args:
        table: the account's `LeaseTable` (limit = carriers[].max_binds).
        clock: reactor time.
        on_lost: called with a holder name whose lease is lost or about to lapse: the
            link unbinds that session.
        account: for logs.
    """

    def __init__(self, table: LeaseTable, clock: IReactorTime, on_lost: Callable[[str], None] | None = None,
                 *, account: str = "") -> None:
        self.table = table
        self._clock = clock
        self.on_lost = on_lost
        self.account = account
        self.prefix = holder_prefix()
        self._held: dict[str, _Held] = {}
        self._releasing: set[Deferred[None]] = set()  # ZREMs on their way (stop waits for them)
        self._renewal = LoopingCall(self._tick)
        self._renewal.clock = clock
        self._renewing = False

    def holder(self, slot: str) -> str:
        return f"{self.prefix}-{slot}"

    @property
    def held(self) -> list[str]:
        return list(self._held)

    def acquire(self, holder: str) -> Deferred[bool]:
        """Fires True when the lease is ours (then renewed until released), False when
        the account's binds are all leased or Redis cannot be asked."""
        sent_at = self._clock.seconds()

        async def call() -> bool:
            try:
                granted = await self.table.acquire(holder)
            except LEASE_ERRORS as e:
                log.error("account {account}: cannot ask Redis for a bind lease ({error}); not binding",
                          account=self.account, error=type(e).__name__)
                return False
            if granted:
                self._held[holder] = _Held(sent_at + self.table.lease_seconds)
                if not self._renewal.running:
                    self._renewal.start(self.table.lease_seconds / RENEWALS_PER_LEASE, now=False)
            return granted

        return as_deferred(call())

    def release(self, holder: str) -> Deferred[None]:
        """Give the lease back (fire and forget: if Redis is away it expires by itself)."""
        if self._held.pop(holder, None) is None:
            return succeed(None)
        if not self._held and self._renewal.running:
            self._renewal.stop()

        async def call() -> None:
            try:
                await self.table.release(holder)
            except LEASE_ERRORS:
                pass  # it lapses after the lease time

        d = as_deferred(call())
        self._releasing.add(d)
        d.addBoth(self._released, d)
        return d

    def _released(self, result: object, d: Deferred[None]) -> None:
        self._releasing.discard(d)

    def release_all(self) -> Deferred[None]:
        """Give back every lease held, and wait for the releases already on their way
        (a session that unbound just before), so they reach Redis before it is closed."""
        from twisted.internet.defer import DeferredList

        for holder in list(self._held):
            self.release(holder)
        return DeferredList(list(self._releasing)).addCallback(lambda _: None)

    def _tick(self) -> None:
        # The fence is checked on every tick, even while a renewal hangs on a dead Redis.
        self.check_fence()
        if self._renewing or not self._held:
            return
        self._renewing = True

        async def renew() -> None:
            try:
                for holder in list(self._held):
                    await self._renew(holder)
            finally:
                self._renewing = False

        as_deferred(renew())

    async def _renew(self, holder: str) -> None:
        sent_at = self._clock.seconds()
        try:
            still_ours = await self.table.renew(holder)
        except LEASE_ERRORS as e:
            log.error("account {account}: cannot renew bind lease {holder} ({error})",
                      account=self.account, holder=holder, error=type(e).__name__)
            return
        if holder not in self._held:
            return  # released meanwhile
        if still_ours:
            self._held[holder].valid_until = sent_at + self.table.lease_seconds
        else:
            log.error("account {account}: bind lease {holder} had expired and its place is taken; unbinding",
                      account=self.account, holder=holder)
            self._lost(holder)

    def _lost(self, holder: str) -> None:
        self._held.pop(holder, None)
        if not self._held and self._renewal.running:
            self._renewal.stop()
        if self.on_lost is not None:
            self.on_lost(holder)

    def check_fence(self) -> None:
        """Unbind holders whose last renewal is about to lapse (also run by the renewal loop)."""
        now = self._clock.seconds()
        margin = self.table.lease_seconds * FENCE_MARGIN_FRACTION
        for holder, held in list(self._held.items()):
            if now >= held.valid_until - margin:
                log.error("account {account}: bind lease {holder} not renewed in time; unbinding",
                          account=self.account, holder=holder)
                self._lost(holder)

    def stop(self) -> None:
        if self._renewal.running:
            self._renewal.stop()


# A due reminder that found the trunk full looks again after this: a slot frees when any
# process's call ends, and a second of delay is nothing to a reminder call.
TRUNK_FULL_RETRY_SECONDS = 1.0


class CallSlots:
    """Fleet-wide concurrent calls on one voice trunk (the reminders' hook).

    ``acquire(call)`` before an Originate; ``release(call)`` when the call is over (or
    was never placed); ``adopt(call)`` for a call found open at start-up.  Held slots
    are renewed in ``hold`` mode while any is held.  ``call`` is the notification id; in
    Redis the holder is ``<owner>:<call>`` so that two processes trying the same due
    reminder at once hold (and release) two different places.
    """

    def __init__(self, table: LeaseTable, clock: IReactorTime, *, trunk: str = "", owner: str = "") -> None:
        self.owner = owner or holder_prefix()
        self.table = table
        self._clock = clock
        self.trunk = trunk
        self._held: set[str] = set()
        self._renewal = LoopingCall(self._renew_all)
        self._renewal.clock = clock
        self._renewing = False
        self.retry_seconds = TRUNK_FULL_RETRY_SECONDS

    @property
    def held(self) -> set[str]:
        return set(self._held)

    def _holder(self, call: str) -> str:
        return f"{self.owner}:{call}"

    async def acquire(self, call: str) -> bool:
        """True when a call slot is ours; False when the trunk is full or Redis is away
        (the call then waits: never more calls than the trunk carries)."""
        holder = self._holder(call)
        try:
            granted = await self.table.acquire(holder)
        except LEASE_ERRORS as e:
            log.error("trunk {trunk}: cannot ask Redis for a call slot ({error}); call waits",
                      trunk=self.trunk, error=type(e).__name__)
            return False
        if granted:
            self._keep(holder)
        return granted

    def adopt(self, call: str) -> None:
        """Count a call that exists (adopted after a restart) at once, whatever the count."""
        holder = self._holder(call)
        if holder not in self._held:
            self._keep(holder)
            self._renew_all()

    def _keep(self, holder: str) -> None:
        self._held.add(holder)
        if not self._renewal.running:
            self._renewal.start(self.table.lease_seconds / RENEWALS_PER_LEASE, now=False)

    def release(self, call: str) -> None:
        holder = self._holder(call)
        if holder not in self._held:
            return
        self._held.discard(holder)
        if not self._held and self._renewal.running:
            self._renewal.stop()

        async def give_back() -> None:
            try:
                await self.table.release(holder)
            except LEASE_ERRORS:
                pass  # it lapses after the lease time

        as_deferred(give_back())

    def _renew_all(self) -> Deferred[None] | None:
        if self._renewing:
            return None
        self._renewing = True

        async def renew() -> None:
            try:
                for holder in list(self._held):
                    await self.table.hold(holder)
            except LEASE_ERRORS as e:
                log.error("trunk {trunk}: cannot renew call slots ({error})", trunk=self.trunk,
                          error=type(e).__name__)
            finally:
                self._renewing = False

        return as_deferred(renew())

    def stop(self) -> None:
        if self._renewal.running:
            self._renewal.stop()


def call_slots_for(ami: Any, redis: Any, prefix: str, clock: IReactorTime) -> CallSlots | None:
    """The trunk's fleet-wide call slots from an AmiConfig (None when trunk_max_calls is 0).

    Every process whose ``ami.trunk`` names the same trunk shares the slots."""
    if not ami.trunk_max_calls:
        return None
    trunk = trunk_id(ami.trunk)
    table = LeaseTable(redis, call_slots_key(prefix, trunk), ami.trunk_max_calls, ami.call_slot_lease_seconds)
    return CallSlots(table, clock, trunk=trunk)
