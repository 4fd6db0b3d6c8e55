"""A carrier account's TPS, fleet-wide: send slots reserved in Redis (lua/gcra.lua), spent locally.

Theory of operation
-------------------
A carrier sells an account a rate (``carriers[].account_tps``) that holds over every
bind of that account, whichever gateway process or host it is in.  Asking Redis before
each submit_sm would cost a round trip per part; instead a process *reserves* a small
batch of send slots at a time and spends them on its own:

* ``lua/gcra.lua`` is GCRA in reservation form: one key per account holds the theoretical
  arrival time (TAT); a call for ``n`` slots gets ``k <= n`` consecutive slots, one
  emission interval (1 / account_tps) apart, starting at the TAT, none later than a
  short horizon ahead of now.  All slots of the account, over all processes, are
  therefore at least one interval apart.
* `SlotReservations` (sans-IO: time is a number passed in) keeps the granted slots as
  runs on the local clock.  A slot may be spent from ``EARLY_SECONDS`` before its time
  to ``max_lateness_seconds`` after it: slots not spent in time (the queue ran dry,
  the reactor was busy) are dropped, not carried.  So the submits in any window of
  1 s come from slots in ``1 s + early + max_lateness``: at most account_tps *
  (1 + 0.005 + 0.03) + 1, i.e. 3.5 % above the limit.  A dropped slot is capacity
  lost to the fleet, never capacity added.  (The 5 ms early lets one pump of the link
  send the few parts due within 5 ms together, in one write, instead of waking the
  reactor for every part.)
* The Redis clock is mapped to the local one conservatively: the reply's ``now`` is
  taken as the moment the reply *arrived*, which is later than the moment Redis read
  its clock, so a slot can only be spent later than its Redis time, never earlier.
* The batch follows the process's own recent rate (spent per second, measured between
  reservations) so that one reservation covers about ``PREFETCH_SECONDS``; it is
  bounded by ``PREFETCH_SECONDS`` of the *whole* account's rate, so one process
  never holds more than 50 ms of the account and three busy processes call Redis
  about 20 times per second each instead of once per submit.  A process that sends
  slower than the account (its own binds' ``tps_limit``, its window) spends slots that
  are one *account* interval apart at its own pace, falling behind by the difference
  with each one: the batch is also cut to what it can spend before the last slot is
  ``max_lateness`` late, or the end of every batch would be dropped.

`AccountRateLimiter` is the Twisted/asyncio shell: ``take(now)`` answers at once from
the reservations and, when they run low, starts one reservation call in the
background; when the slots arrive it calls ``on_slots`` (the carrier link pumps).

Redis unreachable: no new slots, so the account's links stop submitting after the
slots already granted (at most ``PREFETCH_SECONDS`` of the rate).  Falling back to a
local share (account_tps / expected processes) would exceed the carrier's limit as
soon as one process more than expected runs, and nothing can be claimed or recorded
without Redis anyway (the pipeline lives there); stopping is the choice that never
exceeds the contract.  Reservations are retried with backoff (`RETRY_*`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway import metrics
from gateway.store.bridge import as_deferred
from gateway.store.scripts import register_lua

__all__ = [
    "AccountRateLimiter",
    "SlotReservations",
    "account_key",
    "reserve_slots",
]

log = Logger()

GCRA_LUA = "gcra.lua"  # gateway/fleet/lua/gcra.lua, loaded by gateway.store.scripts

# One reservation covers about this much of a process's own recent rate, and never more
# than this much of the whole account: 50 ms means about 20 Redis calls per second per
# busy process (against one per submit_sm), and a process that stops sending wastes at
# most 50 ms of the account's capacity.
PREFETCH_SECONDS = 0.05
# Slots are granted at most this far ahead of Redis's now.  Twice the prefetch: the
# next reservation is asked for while the current one still lasts (REFILL_LEAD_SECONDS),
# and with several processes asking, one's slots queue behind another's.
HORIZON_SECONDS = 0.1
# A slot not spent within this time after it is dropped.  Late slots are what could
# push a 1 s window above the limit: by at most account_tps * 30 ms = 3 % (3.5 % with
# EARLY_SECONDS), within the 5 % a carrier's per-second counter is checked against.
# Longer would let a process that sends slower than the account take bigger batches
# (fewer Redis calls, see batch_size) at the price of a worse bound.
MAX_LATENESS_SECONDS = 0.03
# Of that, the part a batch may use up by design; the rest is for the reactor's delays.
BATCH_LATENESS_SECONDS = 0.02
# A slot may be spent this long before its time: one wake-up of the link's pump sends
# the parts due within 5 ms in one write (7 parts at 1,500/s) instead of one timer and
# one write each; it adds 0.5 % to the worst 1 s window.
EARLY_SECONDS = 0.005
# Ask for the next batch when the reserved slots last less than this (one Redis round
# trip on a loaded host is well under 20 ms; the batch arrives before the last slot).
REFILL_LEAD_SECONDS = 0.02
MIN_BATCH = 2
# After late slots were dropped the believed pace falls to the measured rate (not below
# this fraction of tps_limit, so a stall does not shrink batches to nothing), and it
# climbs back by this factor per reservation without drops (twice in about ten).
MIN_PACE_FRACTION = 0.1
PACE_RECOVERY = 1.07
# Reservation calls that fail (Redis away, an error reply) are retried after this,
# doubling up to the cap: the pipeline itself waits on Redis then.
RETRY_INITIAL_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0
# How long take() tells the link to wait when no slot is known yet and a reservation is
# on its way (the arrival pumps the link earlier through on_slots).
POLL_SECONDS = 0.05


def account_key(prefix: str, account: str) -> str:
    """The account's GCRA key, hash-tagged per account (``12123:{acct:cmcc}:gcra``)."""
    return f"{prefix}{{acct:{account}}}:gcra"


def emission_interval_us(account_tps: float) -> int:
    """Microseconds between two slots of the account, rounded up (never faster)."""
    return max(1, math.ceil(1_000_000 / account_tps))


def reserve_slots(tat_us: int, now_us: int, interval_us: int, wanted: int,
                  horizon_us: int, *, written_elsewhere: bool = False) -> tuple[int, int, int, int, int]:
    """gcra.lua in Python (the unit tests' Redis): returns (new TAT, granted,
    first_offset_us, interval_us, retry_after_us).  `written_elsewhere`: the TAT was
    written by another server (a promoted replica's copy may be stale), so it is first
    moved to now + horizon.  Held equal to the script by tests/fleet/test_tps.py against
    a real redis-server."""
    if written_elsewhere:
        tat_us = max(tat_us, now_us + horizon_us)
    tat = max(tat_us, now_us)
    room = (now_us + horizon_us - tat) // interval_us + 1 if tat <= now_us + horizon_us else 0
    granted = min(wanted, room)
    if granted < 1:
        return tat_us, 0, 0, interval_us, tat - now_us - horizon_us
    return tat + granted * interval_us, granted, tat - now_us, interval_us, 0


class SlotReservations:
    """Granted send slots on the local clock; see the module docstring.

    Args:
        account_tps: the account's fleet-wide rate (bounds the batch size).
        max_lateness_seconds: a slot older than this is dropped unspent.
        prefetch_seconds: a batch covers about this much of the recent rate.
    """

    def __init__(self, account_tps: float, *, max_lateness_seconds: float = MAX_LATENESS_SECONDS,
                 early_seconds: float = EARLY_SECONDS,
                 prefetch_seconds: float = PREFETCH_SECONDS, own_tps: float | None = None,
                 now: float = 0.0) -> None:
        self.account_tps = account_tps
        self.own_tps = own_tps  # this process's own ceiling (its binds' tps_limit), if any
        self.max_lateness = max_lateness_seconds
        self.early = early_seconds
        self.prefetch_seconds = prefetch_seconds
        self.max_batch = max(1, int(account_tps * prefetch_seconds))
        # Runs of slots: [first slot time, slots left, interval], oldest first.
        self._runs: deque[list[float]] = deque()
        self.spent = 0
        self.dropped = 0
        self._rate = 0.0  # recent spend rate (slots/s), measured between reservations
        self._spent_at_mark = 0
        self._mark = now
        self._starved = False  # a take found nothing while a reservation was needed
        self._last_batch = 0
        # The pace the process is believed to spend at (slots/s): its binds' limit until
        # it drops late slots (a busy reactor, a full window), then what it measured.
        self._pace = own_tps if own_tps is not None else 0.0
        self._dropped_at_mark = 0

    @property
    def remaining(self) -> int:
        return int(sum(run[1] for run in self._runs))

    def grant(self, granted: int, first_offset_seconds: float, interval_seconds: float,
              received_at: float) -> None:
        """Add ``granted`` slots from a reservation reply that arrived at ``received_at``."""
        if granted > 0:
            self._runs.append([received_at + first_offset_seconds, float(granted), interval_seconds])

    def _drop_late(self, now: float) -> None:
        oldest_allowed = now - self.max_lateness
        runs = self._runs
        while runs:
            run = runs[0]
            if run[0] >= oldest_allowed:
                return
            late = min(run[1], math.floor((oldest_allowed - run[0]) / run[2]) + 1)
            run[0] += late * run[2]
            run[1] -= late
            self.dropped += int(late)
            if run[1] <= 0:
                runs.popleft()

    def take(self, now: float) -> float:
        """Spend a slot and return 0, or return the seconds until the next known slot
        (``math.inf``: none known, a reservation is needed)."""
        self._drop_late(now)
        runs = self._runs
        if not runs:
            self._starved = True
            return math.inf
        run = runs[0]
        if run[0] > now + self.early + 1e-9:  # the epsilon absorbs float error
            return run[0] - self.early - now
        run[0] += run[2]
        run[1] -= 1
        if run[1] <= 0:
            runs.popleft()
        self.spent += 1
        return 0.0

    def needs_reservation(self, now: float, lead_seconds: float = REFILL_LEAD_SECONDS) -> bool:
        """True when the slots held run out within ``lead_seconds`` (or are gone): by
        their times, and by their number at the pace the process spends them.  (By
        times alone, a process slower than the account would ask again after every
        short batch and hold slots it can never spend, up to the horizon.)"""
        self._drop_late(now)
        if not self._runs:
            return True
        last = self._runs[-1]
        if last[0] + (last[1] - 1) * last[2] - now >= lead_seconds:
            return False
        pace = self._pace if self._pace > 0 else self._rate
        return pace <= 0 or self.remaining / pace < lead_seconds

    def batch_size(self, now: float) -> int:
        """Slots to ask for now: about prefetch_seconds of the recent rate, or twice the
        last batch while starved (the rate measures what the process got, not what it
        wants: doubling lets a process that gets few slots catch up with one that got
        many), within [MIN_BATCH, max_batch] and what it can spend in time."""
        elapsed = now - self._mark
        if elapsed > 0:
            measured = (self.spent - self._spent_at_mark) / elapsed
            # Smooth over a few reservations; a fresh measurement counts half.
            self._rate = measured if self._rate == 0 else (self._rate + measured) / 2
            self._mark, self._spent_at_mark = now, self.spent
        rate = self._rate if self.own_tps is None else min(self._rate, self.own_tps)
        wanted = math.ceil(rate * self.prefetch_seconds)
        if self._starved:
            wanted = max(wanted, 2 * self._last_batch)
            self._starved = False
        if self.own_tps is not None:
            if self.dropped > self._dropped_at_mark and self._rate > 0:
                # Late slots were dropped: it spends slower than believed; batch for that.
                self._pace = min(self._pace, max(self._rate, MIN_PACE_FRACTION * self.own_tps))
            else:
                self._pace = min(self.own_tps, self._pace * PACE_RECOVERY)
            self._dropped_at_mark = self.dropped
            pace = self._pace
        else:
            pace = rate
        if 0 < pace < self.account_tps:
            # Spending slots 1/account_tps apart at `pace`, slot k is k * (1/pace -
            # 1/account_tps) late: stop where that reaches BATCH_LATENESS_SECONDS
            # (with 4,500/s and 1,500/s: 46 slots; with 900/s and 300/s: 10).
            falls_behind = 1 / pace - 1 / self.account_tps
            budget = min(BATCH_LATENESS_SECONDS, self.max_lateness * 2 / 3)
            wanted = min(wanted, math.floor(budget / falls_behind) + 1)
        self._last_batch = max(min(MIN_BATCH, self.max_batch), min(self.max_batch, wanted))
        return self._last_batch


class AccountRateLimiter:
    """The account's fleet-wide rate for one process (the Redis shell of `SlotReservations`).

    Args:
        redis: a redis.asyncio client (decode_responses=True) on the reactor's loop.
        key: the account's GCRA key (`account_key`).
        account_tps: the fleet-wide rate.
        clock: reactor time (the same clock the link's pump uses).
        account: the account's name, for logs.
        on_slots: called when a reservation brought slots (the link pumps).
    """

    def __init__(self, redis: Any, key: str, account_tps: float, clock: IReactorTime, *,
                 account: str = "", on_slots: Callable[[], None] | None = None,
                 own_tps: float | None = None) -> None:
        self._redis = redis
        self.key = key
        self.account = account
        self.account_tps = account_tps
        self._clock = clock
        self.on_slots = on_slots
        self.reservations = SlotReservations(account_tps, own_tps=own_tps, now=clock.seconds())
        self._interval_us = emission_interval_us(account_tps)
        self._horizon_us = int(HORIZON_SECONDS * 1_000_000)
        self._script: Any = None
        self._reserving = False
        self._retry_at = 0.0
        self._retry_delay = RETRY_INITIAL_SECONDS
        self.reservation_calls = 0
        self._failing = False
        # Counted per reservation (not per submit): the slots spent and dropped since the last.
        self._spent_counter = metrics.account_slots.labels(account, "spent")
        self._dropped_counter = metrics.account_slots.labels(account, "dropped")
        self._counted = (0, 0)
        self._results = {result: metrics.account_reservations.labels(account, result)
                         for result in ("granted", "none_free", "failed", "fenced")}

    def set_account_tps(self, account_tps: float) -> None:
        """Change the account's fleet-wide rate at run time (an operator's TPS action).

        Every process applies the same value from the control hash within its refresh
        interval; slots already granted at the old interval are spent as granted (at most
        one prefetch batch, about 50 ms of the old rate)."""
        if account_tps <= 0 or account_tps == self.account_tps:
            return
        self.account_tps = account_tps
        self._interval_us = emission_interval_us(account_tps)
        self.reservations.account_tps = account_tps
        self.reservations.max_batch = max(1, int(account_tps * self.reservations.prefetch_seconds))

    def take(self, now: float) -> float:
        """Spend one of the account's slots and return 0, or return how long to wait
        (a reservation may be started in the background)."""
        wait = self.reservations.take(now)
        if not self._reserving and now >= self._retry_at and self.reservations.needs_reservation(now):
            self._reserve(now)
        if wait == math.inf:
            if self._reserving:
                return POLL_SECONDS  # the reply calls on_slots sooner
            return max(0.001, self._retry_at - now)
        return wait

    def _count_slots(self) -> None:
        spent, dropped = self.reservations.spent, self.reservations.dropped
        self._spent_counter.inc(spent - self._counted[0])
        self._dropped_counter.inc(dropped - self._counted[1])
        self._counted = (spent, dropped)

    def _reserve(self, now: float) -> None:
        self._count_slots()
        self._reserving = True
        wanted = self.reservations.batch_size(now)
        as_deferred(self._call(wanted)).addErrback(
            lambda f: log.failure("account {account}: slot reservation failed", f, account=self.account))

    async def _call(self, wanted: int) -> None:
        from redis.exceptions import ResponseError

        from gateway.store.service import REDIS_ERRORS

        try:
            if self._script is None:
                self._script = register_lua(self._redis, __file__, GCRA_LUA)
            self.reservation_calls += 1
            reply = await self._script(keys=[self.key],
                                       args=[self._interval_us, wanted, self._horizon_us])
        except (*REDIS_ERRORS, ResponseError) as e:
            now = self._clock.seconds()
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
            self._results["failed"].inc()
            if not self._failing:
                self._failing = True
                log.error("account {account}: cannot reserve send slots in Redis ({error}); "
                          "submits wait (never above the account's TPS)",
                          account=self.account, error=type(e).__name__)
            return
        finally:
            self._reserving = False
        received_at = self._clock.seconds()
        if self._failing:
            self._failing = False
            log.info("account {account}: send slots from Redis again", account=self.account)
        self._retry_delay = RETRY_INITIAL_SECONDS
        granted, first_offset_us, interval_us, retry_after_us, fenced = (int(v) for v in reply)
        self._results["granted" if granted else "none_free"].inc()
        if fenced:
            # Another server wrote the account's TAT (a failover, a restart, a slot that
            # moved): the script put it a horizon ahead, past any slot granted before.
            self._results["fenced"].inc()
            log.info("account {account}: send slots resume {ms:.0f} ms ahead, past what the "
                     "previous Redis master granted (failover, restart or slot migration)",
                     account=self.account, ms=first_offset_us / 1000)
        if granted:
            self.reservations.grant(granted, first_offset_us / 1e6, interval_us / 1e6, received_at)
            if self.on_slots is not None:
                self.on_slots()
        else:
            # Other processes hold the slots up to the horizon: ask again when they pass
            # (on_slots lets the link's pump wait for exactly that, not a whole poll).
            self._retry_at = received_at + max(0.0, retry_after_us / 1e6)
            if self.on_slots is not None:
                self.on_slots()
