"""The dispatcher: claims ready notifications, submits them, records what happened.

Theory of operation
-------------------
`dispatch_once` claims up to ``min(batch_size, free in-flight slots)`` notifications in
one Lua call (highest lane first; see gateway/push/queue.py), then hands each to a
carrier link chosen by the `PrefixRouter`.  From the claim on, a notification sits in
``keys.inflight`` under a lease that this process renews (`renew_leases_once`) until its
outcome is recorded; after ``kill -9`` the lease runs out and the ledger puts it back in
its lane (see gateway/push/state.py).

Outcomes, all recorded through the coalescing `OutcomeWriter` (one script per reactor
turn, not per message):

* ``SubmitAccepted``: state submitted, carrier, parts, message ids (canonical form, for
  receipt correlation); a receipt that came first is applied right there.
* ``SubmitFailed(transient=True)``: scheduled again after ``retry_initial_seconds *
  2**(attempt-1)`` (capped at ``retry_max_seconds``) until ``max_attempts`` submits were
  made, then failed with the last error.  ``response_unknown`` (a timeout or a lost link
  after submit_sm went out) counts a possible duplicate.
* ``SubmitFailed(link_down=True)``: the link went away under the submit (lost, not
  bound, stopping), which says nothing about the message: scheduled again after
  ``retry_initial_seconds`` without spending an attempt, ``max_link_losses`` times; after
  that like any transient failure.
* ``SubmitFailed(transient=False)``: this carrier refused this message; fail over at once
  to the next bound carrier the router offers.  When none is bound but one exists, wait
  (scheduled, no attempt used); when every carrier refused, failed.

Each claim carries a token; when a claim fails, the next one reuses it, so a claim whose
reply was lost (the script ran, the connection did not survive) hands back its batch
instead of leaving it to its lease.  No carrier bound at all: nothing is claimed (the
lanes keep the work).  Nothing is
logged per message at info level; failures of whole batches and bugs are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

from redis.exceptions import RedisError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import metrics
from gateway.ports import OutboundSms, SubmitAccepted, SubmitFailed
from gateway.privacy import PhoneNumber
from gateway.push.queue import QuietHoursPolicy, reserved_lower_lane_slots, retry_delay_seconds
from gateway.push.routing import PortedNumbers, PrefixRouter
from gateway.push.state import (
    Claimed,
    NotificationLedger,
    OutcomeWriter,
    new_claim_token,
    op_accepted,
    op_carrier_refused,
    op_failed,
    op_link_down,
    op_partly_sent,
    op_retry,
    op_wait,
)
from gateway.store.bridge import wait_deferred

__all__ = ["Dispatcher", "Waker"]

log = Logger()
# A claim is fenced this fraction of its lease early (3 s of the default 30): a renewal
# sent just before still reaches Redis in time, and the other processes' sweep reads a
# clock within 50 ms of Redis's (gateway/fleet/clock.py).  As ownership.FENCE_MARGIN.
CLAIM_FENCE_MARGIN = 0.1
# A paused type's notifications are looked at again this often: an operator's resume acts
# within half a minute, and a large paused type cycles through scheduled at most twice a minute.
PAUSED_RECHECK_SECONDS = 30.0


class Waker:
    """Wake a sleeping loop early; a wake before the wait is not lost."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._flag = False
        self._waiting: Deferred[None] | None = None

    def wake(self) -> None:
        self._flag = True
        d, self._waiting = self._waiting, None
        if d is not None and not d.called:
            d.callback(None)

    async def wait(self, timeout_seconds: float) -> None:
        if self._flag:
            self._flag = False
            return
        d: Deferred[None] = Deferred()
        self._waiting = d
        call = self.clock.callLater(timeout_seconds, lambda: None if d.called else d.callback(None))
        try:
            await wait_deferred(d)
        finally:
            self._flag = False
            if call.active():
                call.cancel()


class Dispatcher:
    """Submits claimed notifications through carrier links.

    Args:
        ledger, writer: the notification store and its coalescing writer.
        router: chooses carrier links.
        clock: IReactorTime; ``seconds()`` is the business time (expiry, backoff).
        policy: quiet hours (a claimed quiet-hours reminder goes back to scheduled).
        max_in_flight: notifications between claim and recorded outcome, at most.
        batch_size: most notifications claimed in one call.
        max_attempts, retry_initial_seconds, retry_max_seconds: transient failures.
        lease_seconds: how long a claim survives without renewal (crash recovery delay).
        no_carrier_wait_seconds: how long to wait when no carrier could take a message.
        ported: the ported-number table (None: prefix routing only).
    """

    def __init__(self, ledger: NotificationLedger, writer: OutcomeWriter, router: PrefixRouter,
                 clock: Any, *, policy: QuietHoursPolicy, max_in_flight: int = 2000,
                 batch_size: int = 200, max_attempts: int = 5, retry_initial_seconds: float = 2.0,
                 retry_max_seconds: float = 300.0, lease_seconds: float = 30.0,
                 no_carrier_wait_seconds: float = 5.0, max_link_losses: int = 20,
                 sender_for: Callable[[str], str | None] | None = None,
                 ported: PortedNumbers | None = None) -> None:
        self.ledger = ledger
        # The ported-number table (number portability), read once per claimed batch.
        self.ported = ported
        self._ported: dict[str, str] = {}  # notification id -> carrier its number was ported to
        # Notification type -> sender code of its service (None: the link's source_addr,
        # 12123); other police services send under their own code (render.SenderService).
        self.sender_for = sender_for
        self.writer = writer
        self.router = router
        self.clock = clock
        self.policy = policy
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_initial_seconds = retry_initial_seconds
        self.retry_max_seconds = retry_max_seconds
        self.lease_seconds = lease_seconds
        self.no_carrier_wait_seconds = no_carrier_wait_seconds
        self.max_link_losses = max_link_losses
        self.waker = Waker(clock)
        self._in_flight: dict[str, Claimed] = {}
        # The claim fence: notification id -> when its lease may have run out, on this
        # host's steady clock (the reactor's, gateway/reactor.py; the fleet clock's
        # offset may be corrected between two readings, a duration must not).  Counted
        # from when the claim or the last renewal that included it was *sent*.  A
        # notification past it is not sent (OutboundSms.may_send) and not renewed: the
        # other processes may have taken it back.
        self._fence_clock: Any = getattr(clock, "local", clock)
        self._lease_valid_until: dict[str, float] = {}
        self._refused: dict[str, set[str]] = {}
        self._last_error: dict[str, str] = {}
        self._refill = max(1, min(batch_size, max_in_flight) // 4)
        self._idle_waiters: list[Deferred[None]] = []
        self._claim_token: str | None = None  # set while a claim's outcome is unknown
        # Called with every SubmitAccepted (the partner door needs nothing; tests and
        # the bench may watch).
        self.on_submitted: Callable[[str, SubmitAccepted], None] | None = None
        # Set by the fleet-wide control (gateway/ops/fleet.py): lanes not claimed from, and
        # types held back in scheduled while an operator has them paused.
        self.paused_lanes: frozenset[str] = frozenset()
        # Set by the push service with several partitions: the partitions this process
        # owns now (gateway/push/ownership.py); claims come only from those.  None: all.
        self.owned_partitions: Callable[[], Sequence[int]] | None = None
        self.paused_types: frozenset[str] = frozenset()

    # -- claiming ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def free_slots(self) -> int:
        return self.max_in_flight - len(self._in_flight)

    async def dispatch_once(self) -> int:
        """Claim one batch and submit it; returns how many were claimed (0: idle)."""
        n = min(self.batch_size, self.free_slots())
        if n <= 0 or not self.router.any_bound():
            return 0
        now = self.clock.seconds()
        # A claim that failed may have happened with its reply lost (Redis restarting,
        # a connection cut): the next claim carries the same token and gets that batch.
        retrying = self._claim_token is not None
        # The fence: only partitions whose ownership lease is good right now.
        partitions = self.owned_partitions() if self.owned_partitions is not None else None
        if partitions is not None and not partitions and not retrying:
            return 0
        token = self._claim_token or new_claim_token()
        self._claim_token = token
        sent_at = self._fence_clock.seconds()
        claimed = await self.ledger.claim(
            n, now=now, lease_seconds=self.lease_seconds, quiet_until=self.policy.quiet_until(now),
            reserve=reserved_lower_lane_slots(n), token=token, skip_lanes=self.paused_lanes,
            partitions=partitions, retrying=retrying,
        )
        self._claim_token = None
        if self.paused_types:
            claimed = self._hold_paused_types(claimed, now)
        ported = await self._ported_carriers(claimed)
        self.router.observe(now)
        valid_until = sent_at + self.lease_seconds * (1 - CLAIM_FENCE_MARGIN)
        with self._holding_submits():
            for item in claimed:
                self._in_flight[item.id] = item
                self._lease_valid_until[item.id] = valid_until
                carrier = ported.get(item.digits)
                if carrier is not None:
                    self._ported[item.id] = carrier  # kept for failovers until the outcome
                if item.attempts == 1 and item.accepted_at:
                    metrics.intake_to_submit_latency.observe(max(0.0, now - item.accepted_at))
                self._submit(item)
        return len(claimed)

    def _hold_paused_types(self, claimed: list[Claimed], now: float) -> list[Claimed]:
        """Notifications of a type an operator paused go back to scheduled (no attempt
        spent) and are looked at again after PAUSED_RECHECK_SECONDS."""
        kept = []
        for item in claimed:
            if item.type in self.paused_types:
                self.writer.add(op_wait(item.id, now + PAUSED_RECHECK_SECONDS, "type paused by an operator"))
            else:
                kept.append(item)
        return kept

    async def _ported_carriers(self, claimed: list[Claimed]) -> Mapping[str, str]:
        """number -> carrier for the batch's ported numbers (one pipeline); on a Redis
        error, none: prefix routing still reaches them (carriers interconnect), and the
        claimed batch must not wait for its lease to run out."""
        if self.ported is None or not claimed:
            return {}
        try:
            return await self.ported.lookup(item.digits for item in claimed)
        except (ConnectionError, TimeoutError, RedisError) as e:
            log.warn("ported-number lookup failed ({error}); routing this batch by prefix",
                     error=str(e))
            return {}

    def _holding_submits(self) -> ExitStack:
        """Links that can send a batch of submits together (CarrierLink.holding_submits)
        do so for one claimed batch: one write per session instead of one per message."""
        stack = ExitStack()
        for link in self.router.links:
            hold = getattr(link, "holding_submits", None)
            if hold is not None:
                stack.enter_context(hold())
        return stack

    def _submit(self, item: Claimed) -> None:
        refused = self._refused.get(item.id)
        exclude = set(item.failed_carriers) | refused if refused else item.failed_carriers
        ported = self._ported.get(item.id)
        link = self.router.choose(item.digits, exclude, ported=ported, now=self.clock.seconds())
        if link is None:
            self._no_carrier(item, exclude, ported)
            return
        source = self.sender_for(item.type) if self.sender_for is not None else None
        sms = OutboundSms(reference=item.id, destination=PhoneNumber(item.digits), text=item.text,
                          source_addr=source, lane=item.lane,
                          validity_seconds=item.expires_at - self.clock.seconds() if item.expires_at else None,
                          may_send=partial(self.claim_valid, item.id))
        try:
            d = link.submit(sms)
        except Exception:
            # A link must answer with a Deferred; raising is a bug in it.  The message did
            # not go out: retry like a transient failure.
            log.failure("carrier link {carrier} raised from submit", carrier=link.name)
            self._transient(item, f"{link.name}: link error", response_unknown=False)
            return
        d.addCallbacks(self._accepted, self._failed, callbackArgs=(item, link.name),
                       errbackArgs=(item, link.name))

    def _no_carrier(self, item: Claimed, exclude: Any, ported: str | None = None) -> None:
        if self.router.waiting_possible(item.digits, exclude, ported=ported):
            now = self.clock.seconds()
            self._record(item.id, op_wait(item.id, now + self.no_carrier_wait_seconds, "no carrier bound"))
        else:
            error = self._last_error.pop(item.id, "refused by every carrier")
            self._record(item.id, op_failed(item.id, error, False))

    # -- outcomes --------------------------------------------------------------------------

    def _accepted(self, result: SubmitAccepted, item: Claimed, carrier: str) -> None:
        self._record(item.id, op_accepted(item.id, result.carrier or carrier, result.message_ids,
                                          receipt_parts=result.receipt_parts,
                                          receipt_from_last=result.receipt_from_last))
        if self.on_submitted is not None:
            self.on_submitted(item.id, result)

    def _failed(self, failure: Failure, item: Claimed, carrier: str) -> None:
        if failure.check(SubmitFailed):
            error: SubmitFailed = failure.value  # type: ignore[assignment]
        else:
            # Not the link's contract: assume the worst (it may have gone out), retry.
            log.failure("carrier link {carrier} failed a submit unexpectedly", failure, carrier=carrier)
            error = SubmitFailed("link error", transient=True, response_unknown=True)
        text = f"{carrier}: {error.status + ' ' if error.status else ''}{error.reason}"[:200]
        # Some parts of a long message were accepted before another failed: sending it
        # again repeats those parts.  Their ids are recorded and one possible duplicate
        # counted here (docs/notifications.md, "partly sent"); the retry or failover that
        # follows counts only a response that never came.
        accepted_parts: tuple[str, ...] = getattr(error, "accepted_message_ids", ())
        if accepted_parts:
            self.writer.add(op_partly_sent(item.id, carrier, accepted_parts))
        if error.transient and error.link_down and self.max_link_losses:
            # The link went away under it: retry soon without spending an attempt, up to
            # max_link_losses times (then it counts, so a message that brings links
            # down cannot loop for ever).
            self._record(item.id, op_link_down(
                item.id, self.clock.seconds() + self.retry_initial_seconds, text,
                error.response_unknown, self.max_link_losses,
                self._transient_op(item, text, error.response_unknown)))
            return
        if error.transient:
            self._transient(item, text, error.response_unknown)
            return
        # Permanent here: remember (also in Redis, for a restart) and fail over at once.
        self._refused.setdefault(item.id, set()).add(carrier)
        self._last_error[item.id] = text
        self.writer.add(op_carrier_refused(item.id, carrier, text))
        self._submit(item)

    def _transient(self, item: Claimed, error: str, response_unknown: bool) -> None:
        self._record(item.id, self._transient_op(item, error, response_unknown))

    def _transient_op(self, item: Claimed, error: str, response_unknown: bool) -> tuple[Any, ...]:
        """Retry with backoff, or failed once max_attempts submits were made."""
        if item.attempts >= self.max_attempts:
            return op_failed(item.id, error, response_unknown)
        delay = retry_delay_seconds(item.attempts, self.retry_initial_seconds, self.retry_max_seconds)
        return op_retry(item.id, self.clock.seconds() + delay, error, response_unknown)

    def _record(self, notification_id: str, op: Any) -> None:
        self._refused.pop(notification_id, None)
        self._ported.pop(notification_id, None)
        self._last_error.pop(notification_id, None)
        # Failures are logged by the writer; the lease recovers the message then.
        self.writer.add_then(op, self._done, notification_id)

    def claim_valid(self, notification_id: str) -> bool:
        """Whether this process's claim of the notification is surely still its own."""
        return self._fence_clock.seconds() < self._lease_valid_until.get(notification_id, float("-inf"))

    def _done(self, notification_id: str) -> None:
        self._in_flight.pop(notification_id, None)
        self._lease_valid_until.pop(notification_id, None)
        if self.free_slots() >= self._refill:
            self.waker.wake()
        if not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:  # a bounded wait may have given up (cancelled) meanwhile
                    waiter.callback(None)

    # -- leases and draining -----------------------------------------------------------------

    async def renew_leases_once(self) -> int:
        """Extend the leases of everything this process holds; returns how many."""
        sent_at = self._fence_clock.seconds()
        # A claim past its fence is not renewed: another process may hold it now, and a
        # renewal would lengthen *its* lease (the renewal is ZADD XX by id).
        ids = [i for i in self._in_flight if self._lease_valid_until.get(i, float("-inf")) > sent_at]
        await self.ledger.renew_leases(ids, deadline=self.clock.seconds() + self.lease_seconds)
        valid_until = sent_at + self.lease_seconds * (1 - CLAIM_FENCE_MARGIN)
        for notification_id in ids:
            if notification_id in self._lease_valid_until:  # not settled meanwhile
                self._lease_valid_until[notification_id] = valid_until
        return len(ids)

    async def idle(self) -> None:
        """Wait until nothing is in flight (every outcome recorded)."""
        if not self._in_flight:
            return
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        await wait_deferred(d)
