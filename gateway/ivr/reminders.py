"""Outbound voice reminders: voice requests in, Asterisk Originates out, outcomes recorded.

Theory of operation
-------------------
The push pipeline XADDs a *voice request* to ``keys.voice_requests`` (fields ``id`` =
notification id, ``to`` = digits, ``text`` = what the call reads out, ``not_before`` =
Unix seconds, 0 for now).  `VoiceReminders` reads that stream with a consumer group and
moves each request, in one Lua script per request, into Redis:

* ``keys.voice_reminder(id)`` (hash: to, text, due_at, attempts, state) and
* ``keys.voice_due`` (sorted set by the time the call may start: ``not_before``, pushed
  to the end of quiet hours when it falls inside them),

and only then XACKs (and XDELs) the entry: the hand-over is recorded before the
acknowledgement.  A request whose id is already known is acknowledged and otherwise
ignored, so the pipeline re-sending it, or XAUTOCLAIM re-delivering it, never yields a
second call.  The notify AGI script reads the text from the reminder hash.

A dispatcher takes due reminders while fewer than ``max_concurrent_calls`` calls are
open and the AMI session is logged in.  For each it first stores the call in Redis
(``keys.call(ActionID)`` with state ``originating``, and the ActionID in
``keys.voice_calls_open``), then sends::

    Action: Originate / ActionID: rem-<notification id>-<attempt> / Channel: <trunk>
    ChannelId: <the ActionID> / Context: <context> / Exten: s / Priority: 1 / CallerID
    Timeout: <ms> / Variable: NOTIFICATION_ID=<id> / Async: true

The ActionID is derived from the notification id and the attempt number, so a call
can be found again after a restart; it is also the channel's Uniqueid (ChannelId), so
the channel's Hangup event is recognised even when the OriginateResponse carries no
Uniqueid (Asterisk 22: ``<unknown>`` on failure).  Its outcome comes from events:

==============================  ============================================  ==================
event                           meaning                                       notification
==============================  ============================================  ==================
Response: Error to Originate    never placed (the only retryable outcome)     retried, then failed
OriginateResponse Success       answered (Uniqueid noted)                     --
UserEvent ReminderHeard /       the dialplan's notify AGI played the text     delivered
VarSet REMINDER_HEARD=1
Hangup after answer, unheard    hung up before the end                        failed(not_heard)
Hangup before answer, and/or    the Hangup Cause when it says why (17 busy,    failed(busy|no_answer|failed)
OriginateResponse Failure       18/19/21 no answer, 34/38/41/42/44/47
                                congestion, 1/3/27/28 failed), else Reason 5
                                busy, 3 or 1 no answer, 8 congestion, else
                                failed
==============================  ============================================  ==================

(Reason is the last AST_CONTROL_* frame of the outgoing channel: 0 none/failed,
1 hangup, 3 ringing, 4 answer, 5 busy, 8 congestion.  Measured on Asterisk 22.10.1:
a callee that hangs up before answering with cause 17, 19 or 21, and a PJSIP callee
answering 486, all give Reason 0; only the Hangup's Cause tells them apart.)

**Never a second call for one reminder.**  When the Originate's response does not come
(timeout, lost connection, our restart) the call may or may not exist.  It is then
*reconciled*, never re-sent: ``Action: Status`` with ``Variables: NOTIFICATION_ID``
lists live channels; a channel carrying the id is adopted (its Uniqueid then matches
the Hangup).  A call found nowhere is looked for once more after
``reconcile_grace_seconds`` (the originate thread may not have created its channel
yet); still absent, its outcome is ``unknown`` and the notification fails without a
retry.  Only ``Response: Error`` (Asterisk says it did not queue the call), or a send
refused locally before any byte left, make a new attempt.  A busy or unanswered citizen
is not called again either: that is a decision for the pipeline, with a new id.

Reporting: the outcome is written to the call and reminder hashes first (the call stays
in ``voice_calls_open`` marked ``reported=0``), then the notification's state goes
through the push pipeline's `NotificationLedger.transition` (``channel=voice``,
``call_outcome``, ``error``), then the call leaves ``voice_calls_open``.  After a crash
between the two, the start-up load finds the outcome and reports it again (the same
transition), instead of reconciling a call that is over.

Partitions and several processes
--------------------------------
With ``push.partitions`` > 1 every voice key is its notification's partition's
(``12123:{p<k>}:voice-due``, ``…:voice-calls-open``, ``…:voice-reminder:<id>``,
``…:call:<ActionID>``, and the ledger's ``…:voice-requests`` stream), so each script
touches one Cluster slot; one partition keeps the names of before.  `VoiceReminders`
works the partitions its ``partitions`` callable returns (all by default; the one place
to limit it to the partitions a process owns): it reads their streams in turn, and
dispatch takes due reminders from each in turn.

Any number of processes share them.  `start_call.lua` lets one process start a given
attempt; the call then belongs to that process (``owner`` in the call hash) under a
lease: ``voice-calls-open`` is scored by the end of it, renewed every fifth of
``call_lease_seconds`` (``ami.call_slot_lease_seconds``).  A process that stops gives up
the leases of calls still ringing; one that dies lets them run out.  Then another
process takes the call over (`take_over_calls.lua`), reconciles it on its own AMI
session as after a restart, and reports it; the process that lost it (alive but too
slow) learns so at its next renewal and drops it, and `finish_call.lua` refuses an
outcome from a process that no longer owns the call.  So a reminder is dialled once; a
call taken over on a different Asterisk than the one that placed it is found nowhere and
ends ``unknown`` (the one case of an outcome never learned, counted in
``gateway12123_ami_originates_total{outcome="unknown"}``; takeovers in
``gateway12123_ami_calls_taken_over_total``).  At start a process also takes back its
own calls of a previous run at once (same ``push.consumer_name``; without one, each run
has a name of its own and a previous run's calls are taken over once their lease ran out).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway import metrics
from gateway.fleet.names import live_name
from gateway.ivr.ami import AmiLocalProtocolError, AmiMessage
from gateway.ivr.ami_client import (
    AmiActionError,
    AmiConnectionLost,
    AmiNotConnected,
    AmiResponseTimeout,
)
from gateway.privacy import mask_digit_runs
from gateway.push.queue import QuietHoursPolicy
from gateway.store.bridge import as_deferred
from gateway.store.keys import Keys
from gateway.store.scripts import register_lua
from gateway.store.streams import stream_entries

__all__ = [
    "CallOutcome",
    "CallState",
    "ReminderOptions",
    "VoiceReminders",
    "VoiceService",
    "action_id_for",
    "build_voice_reminders",
    "quiet_until",
]

log = Logger()


class CallState(enum.StrEnum):
    ORIGINATING = "originating"  # stored; the Originate is being sent, no response yet
    QUEUED = "queued"  # Response: Success; ringing somewhere
    RINGING = "ringing"  # found ringing by reconciliation
    ANSWERED = "answered"  # OriginateResponse Success (or found Up)
    FINISHED = "finished"  # outcome known (see CallOutcome)


class CallOutcome(enum.StrEnum):
    HEARD = "heard"
    NOT_HEARD = "not_heard"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    FAILED = "failed"
    NOT_PLACED = "not_placed"  # Asterisk refused the Originate: safe to retry
    UNKNOWN = "unknown"  # the response was lost and the call was found nowhere
    INTERRUPTED = "interrupted_by_shutdown"  # the gateway stopped before the call ended


# Outcome -> (notification state, error field).  Errors as the pipeline names them.
_LEDGER: dict[CallOutcome, tuple[str, str]] = {
    CallOutcome.HEARD: ("delivered", ""),
    CallOutcome.NOT_HEARD: ("failed", "not_heard"),
    CallOutcome.BUSY: ("failed", "busy"),
    CallOutcome.NO_ANSWER: ("failed", "no_answer"),
    CallOutcome.CONGESTION: ("failed", "failed"),
    CallOutcome.FAILED: ("failed", "failed"),
    CallOutcome.NOT_PLACED: ("failed", "failed"),
    CallOutcome.UNKNOWN: ("failed", "failed"),
    CallOutcome.INTERRUPTED: ("failed", "interrupted_by_shutdown"),
}

# OriginateResponse Reason (the last AST_CONTROL_* frame) of a Failure.  Asterisk 22 says 0
# for most callees that hang up before answering (a PJSIP 486, Hangup(17), Hangup(19)): the
# cause of the channel's Hangup event (below) says more, the Reason is the fall-back.
_FAILURE_REASONS = {"5": CallOutcome.BUSY, "3": CallOutcome.NO_ANSWER, "1": CallOutcome.NO_ANSWER,
                    "8": CallOutcome.CONGESTION}

# Q.850 cause (AST_CAUSE_* in include/asterisk/causes.h) of the Hangup of the channel we
# originated (ChannelId), when it ends before it was answered.  0 (unknown) and 16 (normal
# clearing: an originate timeout, a Local channel's plain Hangup()) are not here: for them
# the OriginateResponse Reason decides.
_HANGUP_CAUSES = {
    "17": CallOutcome.BUSY,  # user busy (SIP 486, 600)
    "18": CallOutcome.NO_ANSWER,  # no user responding (SIP 408)
    "19": CallOutcome.NO_ANSWER,  # no answer (SIP 480)
    "21": CallOutcome.NO_ANSWER,  # call rejected (SIP 603): the citizen declined the call
    "34": CallOutcome.CONGESTION,  # no circuit available (SIP 503)
    "38": CallOutcome.CONGESTION,  # network out of order (SIP 502)
    "41": CallOutcome.CONGESTION,  # temporary failure
    "42": CallOutcome.CONGESTION,  # switching equipment congestion
    "44": CallOutcome.CONGESTION,  # requested channel not available
    "47": CallOutcome.CONGESTION,  # resource unavailable
    "1": CallOutcome.FAILED,  # unallocated number (SIP 404)
    "3": CallOutcome.FAILED,  # no route to destination
    "27": CallOutcome.FAILED,  # destination out of order
    "28": CallOutcome.FAILED,  # invalid number format (SIP 484)
}
# After an OriginateResponse Failure, how long to wait for the channel's Hangup event: both
# are sent at the end of the originate, on different paths (the response directly, the
# Hangup through Stasis), so the Hangup may come a little later.  A channel that was never
# created has no Hangup; then the Reason decides once this has passed.
HANGUP_CAUSE_GRACE_SECONDS = 2.0
# What Asterisk puts in OriginateResponse's Uniqueid when the channel is gone (22: <unknown>,
# older versions: <null>).
_NO_UNIQUEID = frozenset({"", "<null>", "<unknown>"})


def outcome_of_unanswered(hangup_cause: str, reason: str) -> CallOutcome:
    """The outcome of a call that ended before it was answered: the channel's Hangup cause
    when it says why, else the OriginateResponse Reason."""
    return _HANGUP_CAUSES.get(hangup_cause) or _FAILURE_REASONS.get(reason, CallOutcome.FAILED)


def action_id_for(notification_id: str, attempt: int) -> str:
    """The Originate's ActionID: derived, so reconciliation can find the call again."""
    return f"rem-{notification_id}-{attempt}"


def quiet_until(now: float, start: str, end: str, timezone: str) -> float:
    """The Unix time the quiet window around ``now`` ends, or 0.0 outside it: the push
    pipeline's rule (QuietHoursPolicy), so SMS and calls keep the same hours."""
    return QuietHoursPolicy(start, end, timezone).quiet_until(now)


@dataclass(frozen=True)
class ReminderOptions:
    """What `VoiceReminders` needs from AmiConfig and PushConfig (see `from_config`)."""

    trunk: str = "PJSIP/{number}@carrier-trunk"
    context: str = "12123-reminder"
    caller_id: str = "12123"
    max_concurrent_calls: int = 10
    originate_timeout_seconds: float = 30.0
    quiet_hours_start: str = "22:00"
    quiet_hours_end: str = "08:00"
    quiet_hours_timezone: str = "Asia/Shanghai"
    consumer_group: str = "gateway"
    consumer_name: str = ""  # empty: host name and pid
    batch_size: int = 50
    read_block_ms: int = 1000
    claim_idle_seconds: float = 60.0
    max_originate_attempts: int = 3  # counting only Originates Asterisk refused
    retry_delay_seconds: float = 60.0
    reconcile_grace_seconds: float = 10.0
    max_call_seconds: float = 600.0
    retention_seconds: float = 30 * 86400.0
    due_check_seconds: float = 30.0
    drain_timeout_seconds: float = 10.0
    voice_drain_seconds: float = 60.0  # IvrConfig.voice_drain_seconds: calls in progress at stop
    # ami.call_slot_lease_seconds: the open calls of a process that died are taken over by
    # another after this long (renewed every fifth of it).
    call_lease_seconds: float = 30.0

    @classmethod
    def from_config(cls, ami: Any, push: Any, **overrides: Any) -> ReminderOptions:
        """Options from gateway.config's AmiConfig and PushConfig sections."""
        values: dict[str, Any] = dict(
            trunk=ami.trunk, context=ami.context, caller_id=ami.caller_id,
            max_concurrent_calls=ami.max_concurrent_calls,
            originate_timeout_seconds=ami.originate_timeout_seconds,
            quiet_hours_start=push.quiet_hours.start, quiet_hours_end=push.quiet_hours.end,
            quiet_hours_timezone=push.quiet_hours.timezone, consumer_group=push.consumer_group,
            consumer_name=push.consumer_name, claim_idle_seconds=push.claim_idle_seconds,
            retention_seconds=push.retention_days * 86400.0,
            call_lease_seconds=ami.call_slot_lease_seconds,
        )
        values.update(overrides)
        return cls(**values)


class Ledger(Protocol):
    """The push pipeline's NotificationLedger, as far as reminders use it."""

    async def transition(self, notification_id: str, state: str, *, now: float, **fields: Any) -> bool: ...


class AmiSession(Protocol):
    """What reminders need of gateway.ivr.ami_client.AmiClientService."""

    @property
    def is_logged_in(self) -> bool: ...

    def send_action(self, name: str, *, action_id: str | None = None, timeout_seconds: float | None = None,
                    **headers: Any) -> Deferred[AmiMessage]: ...

    def send_list_action(self, name: str, *, action_id: str | None = None,
                         timeout_seconds: float | None = None, **headers: Any) -> Deferred[tuple[AmiMessage, ...]]: ...

    def subscribe(self, callback: Callable[[AmiMessage], object]) -> Callable[[], None]: ...

    def add_login_listener(self, callback: Callable[[Any], object]) -> None: ...


# The scripts are gateway/ivr/lua/record_request.lua, start_call.lua, finish_call.lua,
# renew_calls.lua and take_over_calls.lua.

@dataclass
class _Call:
    action_id: str
    notification_id: str
    attempt: int
    state: CallState
    uniqueid: str = ""
    deadline: float | None = None  # reactor time of the next look at it (reconcile)
    missing: int = 0  # consecutive reconciliations that did not find it
    heard: bool = False
    hangup_cause: str | None = None  # the Hangup event's Cause, before any answer
    failure_reason: str | None = None  # OriginateResponse Failure's Reason
    cause_timer: IDelayedCall | None = None  # waiting for the Hangup after a Failure
    answered_while_stopping: bool = False  # its AGI could no longer reach the gateway


@dataclass
class _Waiters:
    finished: list[Deferred[str]] = field(default_factory=list)
    recorded: list[Deferred[float]] = field(default_factory=list)


class VoiceReminders(Service):
    """The reminder service (see the module docstring).

    Args:
        redis: a redis.asyncio client with ``decode_responses=True`` on the reactor's loop.
        keys: the key schema.
        ami: the AMI client service (or anything with its methods, see `AmiSession`).
        ledger: the push pipeline's NotificationLedger.
        options: `ReminderOptions`.
        clock: reactor time for timers.
        wall_clock: Unix time for quiet hours, timestamps and call leases (tests move it;
            the daemon's is Redis's time: gateway/fleet/clock.py).
        wall_clock_ready: False until `wall_clock` can be trusted (the fleet clock's first
            measurement): open calls are not taken over before.
        takeovers_held: True while other processes' call leases must not be taken over
            although they look run out (Redis's clock stepped forward: FleetClock.takeovers_held).
    """

    name = "voice-reminders"

    def __init__(self, redis: Any, keys: Keys, ami: AmiSession, ledger: Ledger, options: ReminderOptions, *,
                 clock: IReactorTime, wall_clock: Callable[[], float] = time.time,
                 wall_clock_ready: Callable[[], bool] = lambda: True,
                 takeovers_held: Callable[[], bool] = lambda: False, call_slots: Any = None,
                 partitions: Callable[[], Sequence[int]] | None = None) -> None:
        # The partitions whose voice requests, due reminders and open calls this process
        # works: all of them unless the caller limits it (partition ownership).
        self.partitions: Callable[[], Sequence[int]] = partitions or (lambda: range(keys.partitions))
        # ami.trunk_max_calls: fleet-wide call slots (gateway.fleet.leases.CallSlots), or None.
        self._call_slots = call_slots
        self._redis = redis
        self._keys = keys
        self._ami = ami
        self._ledger = ledger
        self._options = options
        self._clock = clock
        self._now = wall_clock
        self._now_ready = wall_clock_ready
        self._takeovers_held = takeovers_held
        # The owner of the calls this process follows: push.consumer_name names this
        # process across restarts (its calls of a previous run are taken back at start);
        # without it, a name no other live process has (gateway/fleet/names.py).
        self._consumer = options.consumer_name or live_name()
        self._calls: dict[str, _Call] = {}
        self._by_notification: dict[str, str] = {}
        self._by_uniqueid: dict[str, str] = {}
        self._waiters: dict[str, _Waiters] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._intake_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] | None = None
        self._due_timer: IDelayedCall | None = None
        self._reconcile_timer: IDelayedCall | None = None
        self._dispatching = False
        self._next_dispatch: list[Deferred[int]] = []
        self._reconciling = False
        self._scripts: dict[str, Any] = {}
        self._lease_timer: IDelayedCall | None = None
        self._dispatch_rotation = 0
        self._listening_for_logins = False
        # Whether the FastAGI server's voice drain cut this channel's AGI (gateway/app.py
        # wires FastAgiService.cut_by_shutdown here).
        self.cut_by_shutdown: Callable[[str], bool] = lambda uniqueid: False

    # --- lifecycle ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._scripts = {"record": register_lua(self._redis, __file__, "record_request.lua"),
                         "start": register_lua(self._redis, __file__, "start_call.lua"),
                         "finish": register_lua(self._redis, __file__, "finish_call.lua"),
                         "renew": register_lua(self._redis, __file__, "renew_calls.lua"),
                         "take_over": register_lua(self._redis, __file__, "take_over_calls.lua")}
        self._writes = asyncio.Queue()
        self._writer_task = asyncio.ensure_future(self._writer())
        self._intake_task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        while self.running and not self._now_ready():
            await asyncio.sleep(0.1)  # the fleet clock's first answer (FIRST_SYNC_RETRY_SECONDS)
        while self.running:
            try:
                await self._take_over_calls(starting=True)
                break
            except (RedisConnectionError, RedisTimeoutError) as e:
                log.error("voice reminders cannot start, Redis unreachable: {error}", error=str(e))
                await asyncio.sleep(1.0)
        if not self.running:
            return
        self._unsubscribe = self._ami.subscribe(self._on_event)
        if not self._listening_for_logins:
            self._listening_for_logins = True
            self._ami.add_login_listener(lambda _: self._on_login() if self.running else None)
        if self._ami.is_logged_in:
            self._on_login()
        self._arm_lease_timer()
        self.dispatch()
        await self._intake_loop()

    def stopService(self) -> Deferred[None]:
        """Stop intake, dispatch and timers; let calls in progress end for up to the voice
        drain (their events are still followed), record those still open as interrupted
        by shutdown, then wait for queued Redis writes."""
        super().stopService()
        for timer in (self._due_timer, self._reconcile_timer, self._lease_timer):
            if timer is not None and timer.active():
                timer.cancel()
        return as_deferred(self._stop())

    async def _stop(self) -> None:
        if self._intake_task is not None:
            self._intake_task.cancel()
            await asyncio.wait([self._intake_task], timeout=self._options.drain_timeout_seconds)
        await self._drain_calls()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._writes is not None:
            try:
                await asyncio.wait_for(self._writes.join(), self._options.drain_timeout_seconds)
            except TimeoutError:
                log.error("voice call changes not yet in Redis at stop: {count}", count=self._writes.qsize())
        if self._writer_task is not None:
            self._writer_task.cancel()
            await asyncio.wait([self._writer_task], timeout=1.0)

    async def _drain_calls(self) -> None:
        """Wait (polling, 0.1 s) up to voice_drain_seconds for the calls in progress to end.
        Answered calls still going then are finished as interrupted by shutdown (not the
        citizen's doing; not called again: part of the reminder may have been heard).
        Calls not yet answered (the AMI session is down, or the drain is shorter than the
        ring time) stay open in Redis and are reconciled by the next start."""
        deadline = self._clock.seconds() + self._options.voice_drain_seconds
        if self._calls:
            log.info("waiting up to {seconds} s for {count} voice call(s) in progress",
                     seconds=self._options.voice_drain_seconds, count=len(self._calls))
        while self._calls and self._clock.seconds() < deadline and self._ami.is_logged_in:
            await asyncio.sleep(0.1)
        for call in list(self._calls.values()):
            if call.state is CallState.ANSWERED:
                log.warn("voice call {action_id} still in progress at shutdown: interrupted", action_id=call.action_id)
                self._finish(call, CallOutcome.INTERRUPTED)
            elif call.state is not CallState.FINISHED:
                log.info("voice call {action_id} still {state} at shutdown: left for the next start to reconcile",
                         action_id=call.action_id, state=call.state.value)
        left = [call for call in self._calls.values() if call.state is not CallState.FINISHED]
        if left:
            # Give up their leases: another process (or the next start) takes them over now.
            async def release() -> None:
                await self._renew_leases(left, lease_until=0.0)
            self._enqueue(release)

    # --- public: for the pipeline's drain, the admin API and tests ----------------------

    def when_finished(self, notification_id: str) -> Deferred[str]:
        """Fires with the CallOutcome value once this reminder's final outcome is recorded."""
        waiter: Deferred[str] = Deferred()
        self._waiters.setdefault(notification_id, _Waiters()).finished.append(waiter)
        return waiter

    def when_recorded(self, notification_id: str) -> Deferred[float]:
        """Fires with the due time once the request for this id is taken from the stream."""
        waiter: Deferred[float] = Deferred()
        self._waiters.setdefault(notification_id, _Waiters()).recorded.append(waiter)
        return waiter

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    # --- intake ------------------------------------------------------------------------

    async def _ensure_group(self, stream: str) -> None:
        from redis.exceptions import ResponseError

        try:
            await self._redis.xgroup_create(stream, self._options.consumer_group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _intake_loop(self) -> None:
        """Read the voice requests streams of the partitions worked (one stream unless
        partitioned).  One stream: a blocking XREADGROUP.  Several: each read without
        blocking in turn (a Cluster cannot block on streams of different slots in one
        command), then a pause of read_block_ms when none had anything: a request waits
        at most that long, nothing next to a call's ring time."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        group = self._options.consumer_group
        ready: set[str] = set()  # streams whose group exists and whose own pending were read
        last_claim: dict[str, float] = {}
        # `running` as well as cancellation ends the loop: redis-py can turn a cancel that
        # lands as its socket read times out into a TimeoutError, swallowing the cancel.
        while self.running:
            stream = ""
            try:
                streams = [self._keys.partition(k).voice_requests for k in self.partitions()]
                read_any = False
                for stream in streams:
                    if stream not in ready:
                        await self._ensure_group(stream)
                        # Our own entries left pending by a previous run under this name.
                        while entries := stream_entries(await self._redis.xreadgroup(
                                group, self._consumer, {stream: "0"}, count=self._options.batch_size)):
                            await self._record_entries(stream, entries)
                            if not self.running:
                                return
                        ready.add(stream)
                    if self._clock.seconds() - last_claim.get(stream, -1e18) >= self._options.claim_idle_seconds / 2:
                        last_claim[stream] = self._clock.seconds()
                        claimed = await self._redis.xautoclaim(
                            stream, group, self._consumer,
                            min_idle_time=int(self._options.claim_idle_seconds * 1000),
                            start_id="0-0", count=self._options.batch_size)
                        await self._record_entries(stream, claimed[1])
                    block = self._options.read_block_ms if len(streams) == 1 else None
                    entries = stream_entries(await self._redis.xreadgroup(
                        group, self._consumer, {stream: ">"}, count=self._options.batch_size, block=block))
                    read_any = read_any or bool(entries)
                    await self._record_entries(stream, entries)
                if len(streams) != 1 and not read_any:
                    await asyncio.sleep(self._options.read_block_ms / 1000)
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                ready.discard(stream)  # the stream or group vanished (FLUSHALL, a restore): make them again
            except (RedisConnectionError, RedisTimeoutError) as e:
                if not self.running:
                    return
                log.error("voice reminders cannot read {stream}: {error}", stream=stream, error=str(e))
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug: say so loudly, but keep taking requests.
                log.failure("voice reminder intake failed")
                await asyncio.sleep(1.0)

    async def _record_entries(self, stream: str, entries: list[Any]) -> None:
        if not entries:
            return
        now = self._now()
        group = self._options.consumer_group
        retention = int(self._options.retention_seconds)
        recorded: list[tuple[str, float]] = []
        invalid: list[str] = []
        done: list[str] = []
        for entry in entries:
            if entry is None:
                continue
            entry_id, fields = entry
            done.append(entry_id)
            if not fields:
                continue  # deleted while pending (XREADGROUP 0 / XAUTOCLAIM give no fields): just ack
            notification_id = str(fields.get("id") or "")
            to = str(fields.get("to") or "")
            text = str(fields.get("text") or "")
            if not notification_id:
                log.warn("voice request {entry} without an id, dropped", entry=entry_id)
            elif not (to.isdigit() and 5 <= len(to) <= 20) or not text:
                invalid.append(notification_id)
            else:
                not_before = _float(fields.get("not_before"))
                due = max(not_before, now)
                due = quiet_until(due, self._options.quiet_hours_start, self._options.quiet_hours_end,
                                  self._options.quiet_hours_timezone) or due
                # The reminder and its due entry live in the notification's partition
                # (the stream it came from, when the ledger wrote it).
                part = self._keys.partition(self._keys.partition_of(notification_id))
                await self._scripts["record"](
                    keys=[part.voice_reminder(notification_id), part.voice_due],
                    args=[notification_id, to, text, _fmt(not_before), _fmt(due), _fmt(now), retention])
                recorded.append((notification_id, due))
        if done:
            # Acknowledged only once recorded: the hand-over is in Redis first.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xack(stream, group, *done)
                pipe.xdel(stream, *done)
                await pipe.execute()
        for notification_id in invalid:
            log.warn("voice request {id} has no valid number or text", id=notification_id)
            await self._report(notification_id, CallOutcome.FAILED, extra={"reason": "invalid voice request"})
        for notification_id, due in recorded:
            waiters = self._waiters.get(notification_id)
            if waiters is not None:
                ready, waiters.recorded = waiters.recorded, []
                for waiter in ready:
                    waiter.callback(due)
        if recorded:
            self.dispatch()

    # --- dispatch ----------------------------------------------------------------------

    def dispatch(self) -> Deferred[int]:
        """Start calls for due reminders while there is room; fires with how many were started.

        Called while a pass runs, it gets the result of a new pass started after that one
        (so what it sees reflects everything done before the call).
        """
        if self._dispatching:
            waiter: Deferred[int] = Deferred()
            self._next_dispatch.append(waiter)
            return waiter
        if not self.running:
            return succeed(0)
        self._dispatching = True

        def done(result: Any) -> Any:
            self._dispatching = False
            waiters, self._next_dispatch = self._next_dispatch, []
            if waiters:
                self.dispatch().addCallback(_fan_out, waiters)
            return result

        def failed(failure: Any) -> int:
            log.failure("voice reminder dispatch failed", failure)
            return 0

        return as_deferred(self._dispatch_once()).addErrback(failed).addBoth(done)

    async def _dispatch_once(self) -> int:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        started = 0
        try:
            now = self._now()
            room = self._options.max_concurrent_calls - len(self._calls)
            quiet = quiet_until(now, self._options.quiet_hours_start, self._options.quiet_hours_end,
                                self._options.quiet_hours_timezone)
            if room > 0 and self._ami.is_logged_in and not quiet:
                candidates = await self._due_candidates(now, room)
                for notification_id in candidates:
                    if len(self._calls) >= self._options.max_concurrent_calls or not self._ami.is_logged_in:
                        break
                    if self._call_slots is not None and not await self._call_slots.acquire(notification_id):
                        self._set_due_timer(self._call_slots.retry_seconds)  # the trunk is full fleet-wide
                        return started
                    if await self._start_call(notification_id, now):
                        started += 1
                    elif self._call_slots is not None:
                        self._call_slots.release(notification_id)
            await self._schedule_due_check(quiet)
        except (RedisConnectionError, RedisTimeoutError) as e:
            log.error("voice reminder dispatch cannot reach Redis: {error}", error=str(e))
            self._set_due_timer(self._options.due_check_seconds)
        return started

    async def _due_candidates(self, now: float, room: int) -> list[str]:
        """Up to `room` due reminders of the partitions worked, the partitions taking turns
        at being first (with one partition: the oldest due first, as before)."""
        parts = list(self.partitions())
        if not parts:
            return []
        start = self._dispatch_rotation % len(parts)
        self._dispatch_rotation += 1
        async with self._redis.pipeline(transaction=False) as pipe:
            for k in parts[start:] + parts[:start]:
                pipe.zrangebyscore(self._keys.partition(k).voice_due, "-inf", _fmt(now), start=0, num=room)
            heads = await pipe.execute()
        candidates: list[str] = []
        for depth in range(room):  # round robin over the partitions' heads
            for ids in heads:
                if depth < len(ids):
                    candidates.append(ids[depth])
            if len(candidates) >= room:
                break
        return candidates[:room]

    async def _schedule_due_check(self, quiet: float) -> None:
        delay = self._options.due_check_seconds
        if quiet:
            delay = min(delay, max(0.0, quiet - self._now()))
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for k in self.partitions():
                    pipe.zrange(self._keys.partition(k).voice_due, 0, 0, withscores=True)
                firsts = await pipe.execute()
            for first in firsts:
                if first:
                    delay = min(delay, max(0.0, float(first[0][1]) - self._now()))
        self._set_due_timer(delay)

    def _set_due_timer(self, delay: float) -> None:
        if self._due_timer is not None and self._due_timer.active():
            self._due_timer.cancel()
        if self.running:
            self._due_timer = self._clock.callLater(delay, self.dispatch)

    async def _start_call(self, notification_id: str, now: float) -> bool:
        part = self._keys.partition(self._keys.partition_of(notification_id))
        reminder = await self._redis.hmget(part.voice_reminder(notification_id), "to", "attempts")
        to, attempts = reminder[0], int(reminder[1] or 0)
        if not to:
            # The reminder hash expired or was removed: nothing to call.
            await self._redis.zrem(part.voice_due, notification_id)
            return False
        attempt = attempts + 1
        action_id = action_id_for(notification_id, attempt)
        stored = await self._scripts["start"](
            keys=[part.voice_due, part.voice_reminder(notification_id), part.call(action_id),
                  part.voice_calls_open],
            args=[notification_id, attempt, action_id, _fmt(now), int(self._options.retention_seconds),
                  self._consumer, _fmt(now + self._options.call_lease_seconds)])
        if not stored:
            return False
        # The channel gets the ActionID as its Uniqueid (ChannelId): its Hangup event, which
        # says why an unanswered call ended, can be matched even when the OriginateResponse
        # carries no Uniqueid (Asterisk 22 sends "<unknown>" on failure).
        call = _Call(action_id, notification_id, attempt, CallState.ORIGINATING, uniqueid=action_id)
        self._track(call)
        headers: dict[str, Any] = {
            "Channel": self._options.trunk.replace("{number}", to),
            "ChannelId": action_id,
            "Context": self._options.context,
            "Exten": "s",
            "Priority": "1",
            "CallerID": self._options.caller_id,
            "Timeout": str(int(self._options.originate_timeout_seconds * 1000)),
            "Variable": [f"NOTIFICATION_ID={notification_id}"],
            "Async": "true",
        }
        log.info("calling for notification {id}, attempt {attempt} (ActionID {action_id})",
                 id=notification_id, attempt=attempt, action_id=action_id)
        self._ami.send_action("Originate", action_id=action_id, **headers).addCallbacks(
            lambda _: self._originate_queued(call), lambda f: self._originate_failed(call, f))
        return True

    def _originate_queued(self, call: _Call) -> None:
        if call.state is not CallState.ORIGINATING:
            return  # events (or reconciliation) got there first
        call.state = CallState.QUEUED
        call.deadline = self._clock.seconds() + self._options.originate_timeout_seconds \
            + self._options.reconcile_grace_seconds
        self._persist(call, state=CallState.QUEUED.value, queued_at=_fmt(self._now()))
        self._arm_reconcile_timer()

    def _originate_failed(self, call: _Call, failure: Any) -> None:
        if call.state is CallState.FINISHED:
            return
        if failure.check(AmiActionError):
            message = failure.value.response.get("Message") or ""
            log.warn("Asterisk refused the Originate {action_id}: {message}", action_id=call.action_id,
                     message=mask_digit_runs(message))
            self._finish(call, CallOutcome.NOT_PLACED, refusal=message[:200])
        elif failure.check(AmiNotConnected, AmiLocalProtocolError):
            # Refused before a byte left: positively not placed.
            log.warn("Originate {action_id} not sent: {error}", action_id=call.action_id,
                     error=failure.getErrorMessage())
            retryable = failure.check(AmiNotConnected) is not None
            self._finish(call, CallOutcome.NOT_PLACED if retryable else CallOutcome.FAILED,
                         refusal=failure.getErrorMessage()[:200])
        elif failure.check(AmiResponseTimeout, AmiConnectionLost):
            log.warn("no response to Originate {action_id}; reconciling instead of resending",
                     action_id=call.action_id)
            call.deadline = self._clock.seconds()  # look now if logged in, else at login
            self._arm_reconcile_timer()
        else:
            log.failure("Originate {action_id} failed unexpectedly", failure, action_id=call.action_id)
            call.deadline = self._clock.seconds()
            self._arm_reconcile_timer()

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: AmiMessage) -> None:
        name = event.name.lower()
        if name == "originateresponse":
            self._on_originate_response(event)
        elif name == "hangup":
            self._on_hangup(event)
        elif name == "userevent":
            self._on_user_event(event)
        elif name == "varset":
            if (event.get("Variable") or "").upper() == "REMINDER_HEARD" and event.get("Value") == "1":
                call = self._call_by_uniqueid(event.get("Uniqueid"))
                if call is not None:
                    self._heard(call)

    def _on_originate_response(self, event: AmiMessage) -> None:
        call = self._calls.get(event.action_id or "")
        if call is None or call.state is CallState.FINISHED:
            return
        if (event.get("Response") or "").lower() == "success":
            self._answered(call, event.get("Uniqueid") or "")
            if call.hangup_cause is not None:
                # Answered, and its Hangup already came (events on different paths).
                self._finish(call, CallOutcome.NOT_HEARD, cause=call.hangup_cause)
            return
        call.failure_reason = event.get("Reason") or ""
        if call.hangup_cause is not None:
            self._finish_unanswered(call)
        else:
            call.cause_timer = self._clock.callLater(HANGUP_CAUSE_GRACE_SECONDS, self._finish_unanswered, call)

    def _finish_unanswered(self, call: _Call) -> None:
        if call.state is CallState.FINISHED:
            return
        cause, reason = call.hangup_cause or "", call.failure_reason or ""
        details = {"reason": reason} if call.failure_reason is not None else {}
        if call.hangup_cause is not None:
            details["cause"] = cause
        self._finish(call, outcome_of_unanswered(cause, reason), **details)

    def _answered(self, call: _Call, uniqueid: str) -> None:
        if call.state is CallState.ANSWERED and call.uniqueid:
            return
        call.state = CallState.ANSWERED
        # Answered after SIGTERM: the FastAGI server no longer takes the call's AGI.
        call.answered_while_stopping = not self.running
        if uniqueid not in _NO_UNIQUEID:
            call.uniqueid = uniqueid
            self._by_uniqueid[uniqueid] = call.action_id
        call.deadline = self._clock.seconds() + self._options.max_call_seconds
        self._persist(call, state=CallState.ANSWERED.value, answered_at=_fmt(self._now()), uniqueid=call.uniqueid)
        self._arm_reconcile_timer()

    def _on_hangup(self, event: AmiMessage) -> None:
        call = self._call_by_uniqueid(event.get("Uniqueid"))
        if call is None or call.state is CallState.FINISHED:
            return
        cause = event.get("Cause") or ""
        if call.state is CallState.ANSWERED:
            ours = call.answered_while_stopping or self.cut_by_shutdown(call.uniqueid)
            outcome = CallOutcome.INTERRUPTED if ours else CallOutcome.NOT_HEARD
            self._finish(call, outcome, cause=cause)
            return
        # Ended before an answer: the cause says why (busy, no answer, congestion) when it
        # is one of _HANGUP_CAUSES; otherwise the OriginateResponse Reason, which follows.
        call.hangup_cause = cause
        if cause in _HANGUP_CAUSES or call.failure_reason is not None:
            self._finish_unanswered(call)

    def _on_user_event(self, event: AmiMessage) -> None:
        heard = (event.get("UserEvent") or "").lower() == "reminderheard" or event.get("REMINDER_HEARD") == "1"
        if not heard:
            return
        call = None
        action_id = self._by_notification.get(event.get("NOTIFICATION_ID") or "")
        if action_id is not None:
            call = self._calls.get(action_id)
        if call is None:
            call = self._call_by_uniqueid(event.get("Uniqueid"))
        if call is not None:
            self._heard(call)

    def _heard(self, call: _Call) -> None:
        if call.state is CallState.FINISHED:
            return
        call.heard = True
        self._finish(call, CallOutcome.HEARD)

    def _call_by_uniqueid(self, uniqueid: str | None) -> _Call | None:
        action_id = self._by_uniqueid.get(uniqueid or "")
        return self._calls.get(action_id) if action_id is not None else None

    # --- reconciliation ----------------------------------------------------------------

    def _on_login(self) -> None:
        # Every open call may have lost its response or events while we were away.
        now = self._clock.seconds()
        for call in self._calls.values():
            call.deadline = now
        self._arm_reconcile_timer()
        self.dispatch()

    def _arm_reconcile_timer(self) -> None:
        if not self.running:
            return
        deadlines = [c.deadline for c in self._calls.values()
                     if c.deadline is not None and c.state is not CallState.FINISHED]
        if self._reconcile_timer is not None and self._reconcile_timer.active():
            self._reconcile_timer.cancel()
        self._reconcile_timer = None
        if deadlines:
            delay = max(0.0, min(deadlines) - self._clock.seconds())
            self._reconcile_timer = self._clock.callLater(delay, self._reconcile_due)

    def _reconcile_due(self) -> None:
        self._reconcile_timer = None
        if self._reconciling or not self._ami.is_logged_in:
            return  # the login listener or the running pass re-arms it
        now = self._clock.seconds()
        due = [c for c in self._calls.values()
               if c.deadline is not None and c.deadline <= now and c.state is not CallState.FINISHED]
        if not due:
            self._arm_reconcile_timer()
            return
        self._reconciling = True

        def done(_: Any) -> None:
            self._reconciling = False
            self._arm_reconcile_timer()

        # Callbacks, not a coroutine: the Status answer must be applied before the next
        # event in the same read (a Hangup right behind it) is matched by Uniqueid.
        self._ami.send_list_action("Status", Variables="NOTIFICATION_ID").addCallbacks(
            lambda items: self._apply_status(due, items), lambda f: self._status_failed(due, f),
        ).addErrback(lambda f: log.failure("voice call reconciliation failed", f)).addBoth(done)

    def _status_failed(self, calls: list[_Call], failure: Any) -> None:
        failure.trap(AmiConnectionLost, AmiNotConnected, AmiResponseTimeout, AmiActionError)
        log.warn("cannot list channels to reconcile voice calls: {error}", error=failure.getErrorMessage())
        for call in calls:
            # Not logged in: the next login looks again.  Otherwise try after the grace.
            call.deadline = self._clock.seconds() + self._options.reconcile_grace_seconds \
                if self._ami.is_logged_in else None

    def _apply_status(self, calls: list[_Call], items: tuple[AmiMessage, ...]) -> None:
        live: dict[str, AmiMessage] = {}
        for item in items:
            notification_id = item.variables().get("NOTIFICATION_ID")
            if notification_id:
                live[notification_id] = item
        now = self._clock.seconds()
        for call in calls:
            if call.state is CallState.FINISHED:
                continue
            channel = live.get(call.notification_id)
            if channel is not None:
                call.missing = 0
                uniqueid = channel.get("Uniqueid") or ""
                if uniqueid:
                    call.uniqueid = uniqueid
                    self._by_uniqueid[uniqueid] = call.action_id
                up = (channel.get("ChannelStateDesc") or "").lower() == "up"
                log.info("voice call {action_id} found {state} by reconciliation", action_id=call.action_id,
                         state="up" if up else "ringing")
                if up and call.state is not CallState.ANSWERED:
                    self._answered(call, uniqueid)
                elif not up and call.state is CallState.ORIGINATING:
                    call.state = CallState.RINGING
                    call.deadline = now + self._options.originate_timeout_seconds \
                        + self._options.reconcile_grace_seconds
                    self._persist(call, state=CallState.RINGING.value, uniqueid=uniqueid)
                else:
                    limit = self._options.max_call_seconds if up else self._options.originate_timeout_seconds
                    call.deadline = now + limit + self._options.reconcile_grace_seconds
                continue
            call.missing += 1
            if call.missing < 2:
                call.deadline = now + self._options.reconcile_grace_seconds
                continue
            if call.state is CallState.ANSWERED:
                # Answered, then gone while we were not listening: not known to be heard.
                self._finish(call, CallOutcome.NOT_HEARD, reconciled="ended_unobserved")
            else:
                log.warn("voice call {action_id} found nowhere; outcome unknown, not calling again",
                         action_id=call.action_id)
                self._finish(call, CallOutcome.UNKNOWN)

    # --- recording ---------------------------------------------------------------------

    def _track(self, call: _Call) -> None:
        if self._call_slots is not None:
            self._call_slots.adopt(call.notification_id)  # a call open from a previous run counts
        self._calls[call.action_id] = call
        self._by_notification[call.notification_id] = call.action_id
        if call.uniqueid:
            self._by_uniqueid[call.uniqueid] = call.action_id

    def _untrack(self, call: _Call) -> None:
        if self._call_slots is not None:
            self._call_slots.release(call.notification_id)
        self._calls.pop(call.action_id, None)
        if self._by_notification.get(call.notification_id) == call.action_id:
            del self._by_notification[call.notification_id]
        if call.uniqueid and self._by_uniqueid.get(call.uniqueid) == call.action_id:
            del self._by_uniqueid[call.uniqueid]

    def _persist(self, call: _Call, **fields: str) -> None:
        key = self._keys.call(call.action_id)

        async def write() -> None:
            await self._redis.hset(key, mapping=fields)

        self._enqueue(write)

    def _finish(self, call: _Call, outcome: CallOutcome, **details: str) -> None:
        """Decide the outcome now (later events are ignored), record and report it in order."""
        call.state = CallState.FINISHED
        call.deadline = None
        if call.cause_timer is not None and call.cause_timer.active():
            call.cause_timer.cancel()
        call.cause_timer = None
        self._untrack(call)
        retry_at = 0.0
        if outcome is CallOutcome.NOT_PLACED and call.attempt < self._options.max_originate_attempts:
            retry_at = self._now() + self._options.retry_delay_seconds
        log.info("voice call {action_id} for notification {id}: {outcome}{retry}", action_id=call.action_id,
                 id=call.notification_id, outcome=outcome.value, retry=" (will retry)" if retry_at else "")
        metrics.ami_originates.labels(outcome.value).inc()
        fields = {k: mask_digit_runs(v) for k, v in details.items()}

        async def write() -> None:
            args: list[Any] = [outcome.value, _fmt(self._now()), int(self._options.retention_seconds),
                               _fmt(retry_at) if retry_at else "0", call.notification_id, self._consumer]
            for name, value in fields.items():
                args += [name, value]
            part = self._keys.partition(self._keys.partition_of(call.notification_id))
            mine = await self._scripts["finish"](
                keys=[part.call(call.action_id), part.voice_reminder(call.notification_id), part.voice_due],
                args=args)
            if not mine:
                # Our lease ran out and another process took the call over: it reports.
                log.warn("voice call {action_id} was taken over by another process; its outcome is theirs",
                         action_id=call.action_id)
                metrics.ami_calls_taken_over.labels("lost").inc()
                return
            if retry_at:
                await self._close_call(call.action_id)
                self._clock.callLater(0, self.dispatch)
                return
            await self._report(call.notification_id, outcome, action_id=call.action_id, extra=fields)
            self._clock.callLater(0, self.dispatch)

        self._enqueue(write)

    async def _report(self, notification_id: str, outcome: CallOutcome, *, action_id: str = "",
                      extra: Mapping[str, str] | None = None) -> None:
        state, error = _LEDGER[outcome]
        fields: dict[str, str] = {"channel": "voice", "call_outcome": outcome.value}
        if error:
            fields["error"] = error
        if action_id:
            fields["call_action_id"] = action_id
        for name, value in (extra or {}).items():
            fields.setdefault(f"call_{name}" if not name.startswith("call_") else name, value)
        known = await self._ledger.transition(notification_id, state, now=self._now(), **fields)
        if not known:
            log.warn("voice outcome for unknown notification {id}", id=notification_id)
        if action_id:
            await self._close_call(action_id)
        waiters = self._waiters.pop(notification_id, None)
        if waiters is not None:
            for waiter in waiters.finished:
                waiter.callback(outcome.value)
            if waiters.recorded:
                self._waiters[notification_id] = _Waiters(recorded=waiters.recorded)

    async def _close_call(self, action_id: str) -> None:
        part = self._keys.partition(self._keys.call_partition_of(action_id))  # one slot: MULTI works
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(part.call(action_id), "reported", "1")
            pipe.zrem(part.voice_calls_open, action_id)
            await pipe.execute()

    # --- leases on open calls (several processes) -------------------------------------

    def _arm_lease_timer(self) -> None:
        if self.running:
            self._lease_timer = self._clock.callLater(self._options.call_lease_seconds / 5, self._lease_tick)

    def _lease_tick(self) -> None:
        self._lease_timer = None

        async def tick() -> None:
            await self._renew_leases(list(self._calls.values()), lease_until=self._now() + self._options.call_lease_seconds)
            await self._take_over_calls()

        def failed(failure: Any) -> None:
            log.warn("voice call leases not renewed this time: {error}", error=failure.getErrorMessage())

        as_deferred(tick()).addErrback(failed).addBoth(lambda _: self._arm_lease_timer())

    async def _renew_leases(self, calls: list[_Call], *, lease_until: float) -> None:
        """Renew our leases on `calls` (or give them up: lease_until 0); stop following
        those another process took over."""
        by_partition: dict[int, list[str]] = {}
        for call in calls:
            if call.state is not CallState.FINISHED:
                by_partition.setdefault(self._keys.call_partition_of(call.action_id), []).append(call.action_id)
        for k, action_ids in by_partition.items():
            part = self._keys.partition(k)
            lost = await self._scripts["renew"](
                keys=[part.voice_calls_open, *(part.call(a) for a in action_ids)],
                args=[self._consumer, _fmt(lease_until), *action_ids])
            for action_id in lost:
                gone = self._calls.get(action_id)
                if gone is not None and gone.state is not CallState.FINISHED:
                    log.warn("voice call {action_id} taken over by another process (our lease ran out); "
                             "no longer following it", action_id=action_id)
                    metrics.ami_calls_taken_over.labels("lost").inc()
                    gone.state = CallState.FINISHED
                    if gone.cause_timer is not None and gone.cause_timer.active():
                        gone.cause_timer.cancel()
                    self._untrack(gone)

    async def _take_over_calls(self, *, starting: bool = False) -> None:
        """Follow the open calls of the partitions worked whose owner's lease ran out (a
        process that died, or stopped and gave them up), and at start our own of a
        previous run: report those already finished, reconcile the others (see the
        module docstring, "Several processes")."""
        now = self._now()
        # Redis's clock stepped forward: leases look older than they are; only our own
        # calls of a previous run are taken (run-out ones after the hold).
        held = self._takeovers_held()
        for k in self.partitions():
            part = self._keys.partition(k)
            # Open calls are bounded by max_concurrent_calls per process: a few hundred.
            entries = await self._redis.zrange(part.voice_calls_open, 0, -1, withscores=True)
            candidates = [a for a, score in entries
                          if a not in self._calls and (starting or (not held and float(score) <= now))]
            if not candidates:
                continue
            taken = await self._scripts["take_over"](
                keys=[part.voice_calls_open, *(part.call(a) for a in candidates)],
                args=[self._consumer, "0" if held else _fmt(now), _fmt(now + self._options.call_lease_seconds),
                      *candidates])
            for action_id in taken:
                await self._adopt(part.call(action_id), action_id)

    async def _adopt(self, key: str, action_id: str) -> None:
        raw = await self._redis.hgetall(key)
        notification_id = raw.get("notification_id", "")
        if not notification_id:
            return
        if raw.get("state") == CallState.FINISHED.value:
            outcome = CallOutcome(raw.get("outcome", CallOutcome.UNKNOWN.value))
            if outcome is CallOutcome.NOT_PLACED:
                await self._close_call(action_id)
            else:
                await self._report(notification_id, outcome, action_id=action_id)
            return
        call = _Call(action_id, notification_id, int(raw.get("attempt") or 1),
                     CallState(raw.get("state", CallState.ORIGINATING.value)),
                     # The channel's Uniqueid is the ActionID (ChannelId) unless noted otherwise.
                     uniqueid=raw.get("uniqueid") or action_id)
        self._track(call)
        metrics.ami_calls_taken_over.labels("taken").inc()
        log.info("voice call {action_id} open from a previous run or another process; will reconcile",
                 action_id=action_id)
        if self.running and self._ami.is_logged_in:
            call.deadline = self._clock.seconds()
            self._arm_reconcile_timer()

    # --- ordered writes ----------------------------------------------------------------

    def _enqueue(self, write: Callable[[], Awaitable[None]]) -> None:
        assert self._writes is not None
        self._writes.put_nowait(write)

    async def _writer(self) -> None:
        """Apply call writes one at a time, in the order the events decided them."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        assert self._writes is not None
        while True:
            write = await self._writes.get()
            delay = 0.5
            try:
                while True:
                    try:
                        await write()
                        break
                    except (RedisConnectionError, RedisTimeoutError) as e:
                        # The outcome must not be lost: keep it, in order, until Redis is back.
                        log.error("cannot record a voice call outcome yet: {error}", error=str(e))
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
                    except Exception:
                        log.failure("recording a voice call change failed")
                        break
            finally:
                self._writes.task_done()


class VoiceService(MultiService):
    """The ``ami`` part of the service tree: the AMI session and the reminders on it.

    Stops in order: reminders first (intake stops, queued call records reach Redis),
    then the AMI session.  Calls still ringing stay open in Redis and are reconciled by
    the next start.
    """

    def __init__(self, client: Any, reminders: VoiceReminders) -> None:
        super().__init__()
        self.setName("ami")
        self.client = client
        self.reminders = reminders
        client.setServiceParent(self)
        reminders.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)

        async def stop_in_order() -> None:
            from gateway.store.bridge import wait_deferred

            await wait_deferred(self.reminders.stopService())
            await wait_deferred(self.client.stopService())

        return as_deferred(stop_in_order())


def build_voice_reminders(config: Any, redis: Any, keys: Keys, reactor: Any, *,
                          fleet_clock: Any = None) -> VoiceService:
    """The ``ami`` service from a validated Config (gateway/app.py calls this).

    ``redis`` is the shared redis.asyncio client (decode_responses=True).  ``fleet_clock``
    (gateway/fleet/clock.py): the call leases' time, shared by every process; None: this
    host's clock.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from gateway.ivr.ami_client import AmiClientService
    from gateway.push.state import NotificationLedger

    ami = config.ami
    client = AmiClientService(
        TCP4ClientEndpoint(reactor, ami.host, ami.port, timeout=10), username=ami.username, secret=ami.secret,
        clock=reactor, md5_challenge=ami.md5_challenge, keepalive_seconds=ami.keepalive_seconds)
    client.setName("ami-client")
    ledger = NotificationLedger(redis, keys, retention_seconds=config.push.retention_days * 86400.0,
                                receipt_timeout_seconds=config.push.receipt_timeout_seconds,
                                early_receipts_max=config.push.early_receipts_max,
                                engine=config.push.ledger_engine, step_writer_lock=True)
    options = ReminderOptions.from_config(ami, config.push, drain_timeout_seconds=config.drain_timeout_seconds,
                                          voice_drain_seconds=config.ivr.voice_drain_seconds)
    from gateway.fleet.leases import call_slots_for

    reminders = VoiceReminders(redis, keys, client, ledger, options, clock=reactor,
                               call_slots=call_slots_for(ami, redis, keys.prefix, reactor),
                               **({} if fleet_clock is None else
                                  {"wall_clock": fleet_clock.seconds,
                                   "wall_clock_ready": lambda: fleet_clock.synced,
                                   "takeovers_held": fleet_clock.takeovers_held}))
    return VoiceService(client, reminders)


def _fan_out(result: int, waiters: list[Deferred[int]]) -> int:
    for waiter in waiters:
        waiter.callback(result)
    return result


def _float(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _fmt(value: float) -> str:
    return f"{value:.3f}"
