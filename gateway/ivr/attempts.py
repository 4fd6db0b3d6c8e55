"""Attempt limits on the voice identity checks that a stranger cannot turn against the owner.

Theory of operation
-------------------
The caller id is asserted by the carrier trunk and can be spoofed (docs/ivr.md, threat
model).  A limit per caller number alone lets a stranger lock the owner out (five spoofed
calls from the owner's number) while 60 spoofed numbers get 60 guesses at one booking.
So every failed check counts against four counters (one key each: Redis Cluster may put
them in different slots), each a fixed window started by its first failure
(``identity_attempt.lua``):

* **per (caller, target)**, ``ivr.attempts_per_hour`` (5) an hour: the target is the
  booking number typed, or ``id`` for the ID-number check.  A stranger guessing other
  booking numbers from the owner's number does not lock the owner's own booking.
* **per booking**, ``ivr.attempts_per_booking_per_day`` (10) a day, from any caller
  number: 60 spoofed numbers get 10 answers, not 60.  Someone who knows the booking
  number can lock it for the day; the owner is then told the way forward.
* **global**, failures a minute: above ``ivr.enumeration_failures_per_minute`` (60) the
  rate looks like enumeration: ``gateway12123_ivr_enumeration_suspected_total`` counts every
  failure meanwhile, a warning is logged at most once a minute, and a caller number
  that already failed this hour gets no further check (one guess per spoofed number).
* **per caller number**, ``ivr.attempts_per_caller_per_hour`` (20) an hour over all
  targets: one number cannot walk through booking numbers below the global rate.  A
  stranger spoofing the owner's number can use this one against the owner, but it takes
  four times the calls of the old limit (5), and the owner hears the way forward.

A check takes all its counters first (one pipeline of the same script calls, whatever
the answer will be), looks, and gives them back when it succeeds or when a limit held it
(`refund`): the counters count checks that were made and failed.  A held check answers
``limited``; the menus answer it with the way forward (SMS to 12123 from the phone on
record, or an agent).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from twisted.logger import Logger

from gateway import metrics
from gateway.privacy import PhoneNumber
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua

__all__ = ["Attempt", "AttemptLimits", "IdentityAttempts"]

log = Logger()

HOUR_SECONDS = 3600
DAY_SECONDS = 86_400
MINUTE_SECONDS = 60
ID_TARGET = "id"


@dataclass(frozen=True)
class AttemptLimits:
    """The IvrConfig limits (see the module docstring)."""

    per_caller_target_per_hour: int = 5
    per_booking_per_day: int = 10
    enumeration_failures_per_minute: int = 60
    per_caller_per_hour: int = 20


@dataclass(frozen=True)
class Attempt:
    """One check's counters: ``limited`` names the limit that held it (None: go on)."""

    keys: tuple[str, ...]
    limited: str | None = None


class IdentityAttempts:
    """The counters of `AttemptLimits` on one Redis; see the module docstring."""

    def __init__(self, redis: Redis, keys: Keys, limits: AttemptLimits) -> None:
        self._redis = redis
        self._keys = keys
        self.limits = limits
        self._script = register_lua(redis, __file__, "identity_attempt.lua")
        self._last_enumeration_warning = float("-inf")

    async def take(self, caller: PhoneNumber, target: str, *, booking_no: str | None, now: float) -> Attempt:
        """Count one check of `caller` on `target` (a booking number, or ID_TARGET);
        `booking_no` also counts against that booking.  Returns which limit, if any,
        holds the check; a held check's counters are already given back."""
        phone = caller.digits
        counters = [(self._keys.ivr_attempts_pair(phone, target), HOUR_SECONDS)]
        if booking_no is not None:
            counters.append((self._keys.ivr_attempts_booking(booking_no), DAY_SECONDS))
        counters += [(self._keys.ivr_attempts(phone), HOUR_SECONDS),
                     (self._keys.ivr_attempts_global, MINUTE_SECONDS)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, window in counters:
                await self._script(keys=[key], args=[window], client=pipe)
            counts = [int(n) for n in await pipe.execute()]
        attempt = Attempt(tuple(key for key, _ in counters))
        pair_count, caller_count, global_count = counts[0], counts[-2], counts[-1]
        limited = None
        if pair_count > self.limits.per_caller_target_per_hour:
            limited = "caller_target"
        elif booking_no is not None and counts[1] > self.limits.per_booking_per_day:
            limited = "booking"
        elif caller_count > self.limits.per_caller_per_hour:
            limited = "caller"
        elif global_count > self.limits.enumeration_failures_per_minute:
            self._enumeration_suspected(global_count, now)
            if caller_count > 1:
                limited = "enumeration"
        if limited is None:
            return attempt
        metrics.ivr_identity_limited.labels(limited).inc()
        await self.refund(attempt)
        return Attempt(attempt.keys, limited)

    async def refund(self, attempt: Attempt) -> None:
        """Give the counters of `attempt` back (the check succeeded, or was not made)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in attempt.keys:
                pipe.decr(key)
            await pipe.execute()

    def _enumeration_suspected(self, failures: int, now: float) -> None:
        metrics.ivr_enumeration_suspected.inc()
        if now - self._last_enumeration_warning >= MINUTE_SECONDS:
            self._last_enumeration_warning = now
            log.warn(
                "voice identity checks: {failures} failed in the last minute, over {limit}: "
                "enumeration suspected; caller numbers that failed before get no further check",
                failures=failures, limit=self.limits.enumeration_failures_per_minute,
            )
