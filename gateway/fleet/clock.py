"""The fleet's one clock: this host's clock corrected to Redis's.

Theory of operation
-------------------
Several processes on several hosts write times into Redis that the others compare with
their own clock: the in-flight lease of a notification being submitted (claimed by one
process, recovered by another once it ran out), the lease of a voice call being followed.
A host whose clock is off by more than such a lease (30 s by default; NTP broken, a VM
resumed from a pause) then takes another process's live work for abandoned, and a
citizen gets the message twice: 60 of 240 notifications with one of two processes a
minute ahead (tests/fleet/test_clock_skew.py, before this module).

`FleetClock` is an IReactorTime whose ``seconds()`` is the local reactor's plus an offset
to Redis's TIME, measured every `SYNC_INTERVAL_SECONDS`: the offset is Redis's time minus
the midpoint of the round trip, kept only from round trips shorter than
`MAX_ROUND_TRIP_SECONDS`, so it is right to within half of that (the first answer is
kept whatever its round trip: any bound is better than none).  Every process of a
fleet then reads the same clock (on a Cluster, the master of ``12123:members``: see
``lua/time.lua``), whatever its host's.  Timers (``callLater``) are the reactor's own:
a delay does not depend on which clock tells the time.

What still uses the local clock: durations within one process (partition and bind lease
fences, back-offs, a voice call's length: `steady_clock`), which do not depend on where
the clock stands.  In the daemon the
local clock is the reactor's steady clock (gateway/reactor.py): a step of the host's
clock moves neither the timers nor the fences, and the offset to Redis stays as it was.
How far the host's own wall clock is off is measured besides (``host_offset``), for the
warning and the gauge.

Redis's clock itself can step: a failover to a replica on a host whose clock differs (a
Cluster master, or the one Redis behind a Sentinel), an NTP step on the Redis host.  The
host clock here is steady, so a change of the offset by `STEP_SECONDS` or more between two
measurements is such a step.  The fleet clock follows it (every process does within one
interval, and a process started later reads the new clock anyway), but a step forward
makes every lease written before it look that much older: a process sweeping for expired
in-flight leases would take live submits for abandoned and send them again.  So after a
step forward `takeovers_held()` is True for the longest lease the fleet compares
(``lease_seconds``) plus one interval: by then every live holder has measured the new
clock and renewed its leases on it.  The process that sees the step also sets
``keys.clock_step`` for that long (PX, on the members key's slot), and every process's
next measurement reads it (time.lua): a process that started after the step, or whose
measurements around it were dropped as slow, holds too.  A step back only delays
take-overs, and is logged.

A process that starts just after a step, before any other has measured it, reads the
new clock from its first measurement and sees no step of its own, while the others'
leases still stand on the old one.  Every live process measures within one interval, and
the first to see the step sets the marker: so a starting process holds take-overs until
a measurement taken an interval (and `SETTLE_SLACK_SECONDS`) after its first has read
the marker, or its absence (``settled``).  A process alone in the fleet waits as long:
it takes over a dead process's work no sooner than that after its start (5.5 s by
default), which the dead process's leases (30 s by default) mostly outlast anyway.

Until the first measurement ``synced`` is False and ``seconds()`` is the local clock;
users that write or compare leases wait for it (the push pipeline's claims and sweeps,
the voice reminders' take-over).  A step of the host's clock between measurements is
seen at the next one (at most `SYNC_INTERVAL_SECONDS`).  An offset of
`WARN_OFFSET_SECONDS` or more is logged: the host's clock needs fixing, although the
fleet no longer depends on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from gateway import metrics
from gateway.store.bridge import as_deferred
from gateway.store.scripts import register_lua
from gateway.store.service import REDIS_ERRORS

__all__ = ["FleetClock", "redis_time", "steady_clock", "takeovers_held"]

log = Logger()

# A drift of a few ppm moves a host's clock by well under a millisecond in 5 s; the
# interval bounds instead how long a step goes unseen: the host's (an NTP step, a resumed
# VM), or Redis's, during which processes disagree and a starting one holds take-overs
# (see the module).  One TIME per 5 s per process costs Redis nothing.
SYNC_INTERVAL_SECONDS = 5.0
# The offset is known to half the round trip: 100 ms keeps it within 50 ms, three
# orders below the shortest lease it serves (push.lease_seconds, at least 1 s).  A
# slower answer (a loaded Redis, a failover) is dropped and the last offset kept.
MAX_ROUND_TRIP_SECONDS = 0.1
# Until the first answer (Redis starting, or away) it is asked for this often.
FIRST_SYNC_RETRY_SECONDS = 0.5
# NTP keeps hosts within milliseconds of each other: a second means it is not running.
WARN_OFFSET_SECONDS = 1.0
# While the offset stays large it is logged again this often (seconds).
WARN_INTERVAL_SECONDS = 600.0
# A change of the offset between two measurements this large is Redis's clock stepping:
# each measurement is right to 50 ms (MAX_ROUND_TRIP_SECONDS / 2) and a drift of a few
# ppm moves it by microseconds in an interval; a second is well clear of both.
STEP_SECONDS = 1.0
# A starting process settles on a measurement at least an interval plus this after its
# first: another process's measurement in that interval may have seen a step, and its
# SET of the marker follows its TIME by a round trip (at most MAX_ROUND_TRIP_SECONDS for
# a measurement it keeps); half a second is five of them.
SETTLE_SLACK_SECONDS = 0.5

clock_offset = Gauge("gateway12123_clock_offset_seconds",
                     "Redis's clock minus this host's (TIME, last measurement); leases and recorded times use "
                     "Redis's", registry=metrics.REGISTRY)
clock_steps = Counter("gateway12123_clock_steps",
                      "Steps of Redis's clock seen between two measurements (a failover to a host whose clock "
                      "differs); after one forward, leases are not taken over for a lease period",
                      ["direction"], registry=metrics.REGISTRY)


@implementer(IReactorTime)
class FleetClock(Service):
    """The reactor's clock moved onto Redis's (see the module).

    Args:
        redis: the redis.asyncio client, or a zero-argument callable returning it.
        key: the key whose node answers (``keys.partition_members``).
        local: the reactor (IReactorTime): timers, and the clock corrected.
        interval_seconds: how often the offset is measured.
        wall: the host's wall clock (``time.time``), whose distance to Redis's the warning
            and the gauge report; the local clock when not given.
        step_key: ``keys.clock_step``, the fleet-wide marker of a step (None: not shared).
        lease_seconds: the longest lease the fleet's processes take over from each other
            (push.lease_seconds, ami.call_slot_lease_seconds): with one interval, how long
            take-overs are held after a step forward.
    """

    name = "fleet-clock"

    def __init__(self, redis: Any, key: str, local: IReactorTime, *,
                 interval_seconds: float = SYNC_INTERVAL_SECONDS, wall: Callable[[], float] | None = None,
                 step_key: str | None = None, lease_seconds: float = 30.0) -> None:
        self._redis: Callable[[], Any] = redis if callable(redis) and not hasattr(redis, "execute_command") \
            else (lambda: redis)
        self.key = key
        self.step_key = step_key
        self.hold_seconds = lease_seconds + interval_seconds
        self.local = local
        self.interval_seconds = interval_seconds
        self.wall = wall or local.seconds
        self.offset = 0.0
        self.host_offset = 0.0  # Redis's clock minus the host's wall clock
        self.synced = False
        self._script: Any = None
        self._client: Any = None
        self._loop: LoopingCall | None = None
        self._warned_at: float | None = None
        self._held_until: float | None = None  # local clock
        # Until settled (see the module): the local time a settling measurement starts at.
        self._settles_after: float | None = None
        self._settling_call: IDelayedCall | None = None

    # -- IReactorTime ---------------------------------------------------------------------

    def seconds(self) -> float:
        return self.local.seconds() + self.offset

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any, **kw: Any) -> IDelayedCall:  # noqa: N802
        return self.local.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:  # noqa: N802
        return self.local.getDelayedCalls()

    # -- steps of Redis's clock -----------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Whether a step of Redis's clock just before this process started would be
        known here by now (always, without the fleet's marker to read: see the module)."""
        return self.step_key is None or (self.synced and self._settles_after is None)

    def takeovers_held(self) -> bool:
        """True while leases must not be taken over: until settled, and within
        `hold_seconds` after Redis's clock stepped forward (seen here, or by any process
        of the fleet: see the module)."""
        return self.hold_reason() is not None

    def hold_reason(self) -> str | None:
        """Why take-overs are held: ``starting`` (not settled yet), ``redis_clock_stepped``,
        or None."""
        if not self.settled:
            return "starting"
        if self._held_until is not None and self.local.seconds() < self._held_until:
            return "redis_clock_stepped"
        return None

    def status(self) -> dict[str, Any]:
        """For this process's fleet report (gateway/ops/fleet.py), which the console and
        `gateway carriers` show: how far the host's clock is off Redis's (None until
        measured) and why take-overs are held, if they are."""
        return {"host_offset_seconds": round(self.host_offset, 3) if self.synced else None,
                "takeovers_held": self.hold_reason()}

    def _hold_until(self, until: float) -> None:
        self._held_until = until if self._held_until is None else max(self._held_until, until)

    async def _stepped(self, step: float, now: float) -> None:
        direction = "forward" if step > 0 else "back"
        clock_steps.labels(direction).inc()
        if step < 0:
            log.warn("Redis's clock stepped {seconds:.1f} s back (a failover to a host whose clock is behind, or an "
                     "NTP step on the Redis host): the fleet clock follows; times recorded go back by as much, and "
                     "leases run that much longer", seconds=-step)
            return
        self._hold_until(now + self.hold_seconds)
        log.warn("Redis's clock stepped {seconds:.1f} s forward (a failover to a host whose clock is ahead, or an "
                 "NTP step on the Redis host): the fleet clock follows; leases written before look that much older, "
                 "so none is taken over for {hold:.0f} s, until their holders have renewed them",
                 seconds=step, hold=self.hold_seconds)
        if self.step_key is None:
            return
        try:
            await self._redis().set(self.step_key, f"{step:.3f}", px=int(self.hold_seconds * 1000))
        except REDIS_ERRORS:
            pass  # this process holds anyway; the others see the step themselves

    # -- measuring ------------------------------------------------------------------------

    async def sync_once(self) -> bool:
        """Measure the offset once; False when Redis did not answer in time (the last
        offset is kept)."""
        client = self._redis()
        if self._script is None or client is not self._client:
            self._client, self._script = client, register_lua(client, __file__, "time.lua")
        sent, wall_sent = self.local.seconds(), self.wall()
        answer = await self._script(keys=[self.key] if self.step_key is None else [self.key, self.step_key], args=[])
        received, wall_received = self.local.seconds(), self.wall()
        if self.synced and received - sent > MAX_ROUND_TRIP_SECONDS:
            return False  # the first answer is kept whatever its round trip: better than none
        redis_now = int(answer[0]) + int(answer[1]) / 1e6
        offset = redis_now - (sent + received) / 2
        if len(answer) > 2 and int(answer[2]) > 0:
            self._hold_until(received + int(answer[2]) / 1000)  # another process saw a step
        step = offset - self.offset
        if self.synced and abs(step) >= STEP_SECONDS:
            await self._stepped(step, received)
        if self.step_key is not None:
            self._settle(sent, received)
        self.offset = offset
        self.host_offset = redis_now - (wall_sent + wall_received) / 2
        if not self.synced and self._loop is not None:
            self._loop.interval = self.interval_seconds  # read when the next call is scheduled
        self.synced = True
        clock_offset.set(self.host_offset)
        self._warn_if_far(received)
        return True

    def _settle(self, sent: float, received: float) -> None:
        """After the first measurement, wait for one an interval later (see the module);
        the regular ones may fall just short of it, so one is asked for then."""
        if not self.synced:
            wait = self.interval_seconds + SETTLE_SLACK_SECONDS
            self._settles_after = received + wait
            if self._loop is not None:
                self._settling_call = self.local.callLater(wait, lambda: as_deferred(self._sync()))
        elif self._settles_after is not None and sent >= self._settles_after:
            self._settles_after = None

    def _warn_if_far(self, now: float) -> None:
        if abs(self.host_offset) < WARN_OFFSET_SECONDS:
            self._warned_at = None
            return
        if self._warned_at is not None and now - self._warned_at < WARN_INTERVAL_SECONDS:
            return
        self._warned_at = now
        log.warn("this host's clock is {seconds:.1f} s {direction} Redis's: leases and recorded times use Redis's "
                 "clock; fix this host's time (NTP)",
                 seconds=abs(self.host_offset), direction="ahead of" if self.host_offset < 0 else "behind")

    async def _sync(self) -> None:
        try:
            await self.sync_once()
        except REDIS_ERRORS:
            pass  # Redis away: the last offset stands, the next round tries again
        except Exception:
            log.failure("fleet clock: measuring the offset to Redis's clock failed")

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(lambda: as_deferred(self._sync()))
        self._loop.clock = self.local
        # Every half second until the first answer (Redis starting): the pipeline waits
        # for it before it claims.
        self._loop.start(self.interval_seconds if self.synced else FIRST_SYNC_RETRY_SECONDS, now=True)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._settling_call is not None and self._settling_call.active():
            self._settling_call.cancel()
        return super().stopService()


async def redis_time(redis: Any, key: str) -> float:
    """Now on Redis's clock (Unix seconds), read once: for a short-lived process such as
    the CLI, whose views compare it with what the daemons wrote on the fleet clock (an
    operator's laptop a minute ahead saw every process as gone).  `key`: as FleetClock's."""
    seconds, micros = await register_lua(redis, __file__, "time.lua")(keys=[key], args=[])
    return int(seconds) + int(micros) / 1e6


def steady_clock(clock: IReactorTime) -> IReactorTime:
    """The clock to measure durations on: a FleetClock's local (steady) clock, which no
    new measurement moves, else `clock` itself.  A duration taken on the fleet clock would
    include any step of its offset in between: its first measurement, or Redis's clock
    stepping (a failover to a replica on a host whose clock differs)."""
    return clock.local if isinstance(clock, FleetClock) else clock


def takeovers_held(clock: IReactorTime) -> bool:
    """`FleetClock.takeovers_held` of `clock`; False for any other clock (tests' reactors)."""
    return isinstance(clock, FleetClock) and clock.takeovers_held()
