"""Citizens' messages to 12123 (MO): record them, then answer through the notification pipeline.

Theory of operation
-------------------
**Checkpoint, then acknowledge.**  A carrier link hands every MO to `MoService.record_mo`
and sends deliver_sm_resp only when the returned Deferred fires.  `record_mo` does one
XADD to the MO stream (``{prefix}mo``) and nothing else, so the carrier waits one Redis
round trip; if Redis is away the Deferred fails, the link answers with an error and the
SMSC delivers the MO again later.  Nothing is lost and nothing is acknowledged unrecorded.

The MO stream is *private*, like a notification hash: the ``from`` field holds the whole
sender number (the reply must go back to it) and ``text`` the message as sent (it may
hold a confirmation code or an ID number a citizen typed).  ``from_masked`` is for
anyone browsing the stream.  Entries older than ``retention_seconds`` are trimmed.  What
core systems read is the events stream, where numbers are masked and texts never appear.

**Answering** happens in a consumer loop, not in `record_mo`: deliver_sm_resp never waits
for the answer.  The loop reads the MO stream through the consumer group ``mo``
(XREADGROUP), so MOs recorded while the gateway was down, or read but unanswered before a
crash, are answered after a restart: it first re-reads its own pending entries, and now
and then claims entries another (dead) consumer left pending for ``claim_idle_seconds``
(XAUTOCLAIM).  A batch is answered with the entries of one sender in order and different
senders concurrently.  For each entry, in this order:

1. ``mo-handled:<mo id>`` exists: it was answered before a crash lost the XACK; ack it.
2. The sender is not a Chinese mobile number: record ``mo.received`` (outcome
   ``invalid_sender``), no reply.
   The same text from the same number was taken from another MO within
   ``MO_REDELIVERY_WINDOW_SECONDS``: the SMSC delivering it again (its deliver_sm_resp
   lost); outcome ``redelivered``, no reply.
3. Flood check (one Lua script on ``mo-rate:<phone>``, time from our clock): more than
   ``rate_limit_per_minute`` MOs in a minute get one answer, "发送过于频繁，请稍后再试",
   and the number is then ignored for ``ignore_seconds`` (recorded, not answered).
4. `parse_mo` gives the command; `MoResponder` works out the reply (below).
5. One pipeline: XADD the reply to the notify stream with id ``mo-reply:<mo id>``, XADD
   ``mo.received`` and ``mo.replied`` to the events stream, SET the handled marker, XACK.

A crash anywhere before the XACK means the entry is answered again.  That is safe: the
handled marker stops a second reply before it is even built; without the marker (a crash
between the XADDs and the SET), the reply id is the same and the push pipeline drops a
notification id it has seen; a re-issued cancel code is the *same* code (the code record
remembers which MO issued it); a code already accepted is accepted again for the same MO
(ditto), and the domain, given the MO id as ``request_id``, answers CANCELLED again, so
the booking is cancelled once and the reply is the same.  Event readers may see
``mo.received`` twice for one ``mo_id`` and must treat it as one fact.  A replay may
count once more against the flood limit or a wrong-code attempt; that errs on the side of
caution.

**Identity.**  The gateway talks about a person only to the phone on record for them
(seed 001: online registration must use the number registered at the vehicle office).
A sender with no person on record gets one fixed answer that says so and nothing else;
a booking number that does not exist and one that belongs to another phone get the same
"not found".  Help needs no identity.

**Cancelling is two-step.**  ``QXYY <booking number>`` from the phone on record, for a
booking still cancellable online, gets a six-digit code (`secrets`), stored in
``mo-cancel:<phone>`` with the booking number and an expiry ``cancel_code_ttl_seconds``
ahead (by our clock; the Redis TTL only collects garbage).  Only that phone sending that
code before expiry cancels, through the domain's `BookingCancellation` (the same Lua
script as the voice menu; the domain queues the cancellation SMS itself).  Wrong codes
are counted; the ``max_code_attempts``-th voids the code.  A new QXYY replaces the code.
After the booking window closes, cancelling needs a visit in person at least a day
before the exam (seeds 001 and 003); the reply says so.

**Partitions.**  With ``push.partitions`` > 1 an MO goes to the MO stream of its sender's
partition (``12123:{p<k>}:mo``, k = crc32 of the normalised number, `Keys.mo_stream_of`),
where the sender's rate window and pending cancel code live too, and the handled marker
of each entry: everything of one sender is in one Cluster slot, and one sender's MOs stay
in order.  The MO id is then ``p<k>-<entry id>`` (entry ids of two streams may be equal;
the reply id ``mo-reply:<mo id>`` must not).  The loop works the partitions its
``partitions`` callable returns (all by default), reading their streams in turn; any
number of processes share them through the consumer group, and an MO read by a process
that died is claimed by another after ``claim_idle_seconds``.  On a Cluster the reply and
events go out first and the marker and XACK follow in one MULTI (a Cluster pipeline runs
commands to different nodes in no set order).  One partition keeps the names of before
(``12123:mo``, ``mo-handled:<entry id>``, ``mo-rate:<phone>``, ``mo-cancel:<phone>``).

**Redis outages.**  Every Redis call in the loop may raise ConnectionError/TimeoutError;
the loop then waits with capped exponential backoff (jittered) and carries on from the
pending entries, so nothing is dropped.  A `CorruptRecord` (core-system data broken) gets
a "try later" answer and is acknowledged; a bug in answering one MO is logged with
`log.failure`, answered with the same apology and acknowledged, so one poison message
cannot stall everyone else's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gateway import metrics
from gateway.config import MoConfig
from gateway.domain import CorruptRecord, decode_text, format_cn_date, from_unix, iso_time
from gateway.domain.bookings import (
    Booking,
    BookingCancellation,
    BookingStatus,
    BookingStore,
    CancellationOutcome,
    CancellationResult,
    booking_summary,
    cancellation_reply,
    format_when,
)
from gateway.domain.people import Person, PersonStore, licence_summary, may, violation_summary
from gateway.ports import MobileOriginated
from gateway.privacy import InvalidPhoneNumber, PhoneNumber, mask_phone, normalise_cn_mobile
from gateway.push.keywords import (
    CancelBooking,
    ConfirmCancel,
    Help,
    HelpReason,
    MoCommand,
    QueryBookings,
    QueryPoints,
    QueryViolations,
    parse_mo,
)
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys
from gateway.store.replication import ReplicaWaits
from gateway.store.scripts import register_lua
from gateway.store.service import REDIS_ERRORS
from gateway.store.streams import stream_entries

__all__ = [
    "MO_REPLY_TYPE",
    "MoRecorder",
    "MoReply",
    "MoResponder",
    "MoService",
    "mo_reply_id",
]

log = Logger()

mo_replication_short = Counter(
    "gateway12123_mo_replication_short_total",
    "MOs acknowledged to the SMSC although fewer replicas than push.delivery_wait_replicas had them",
    registry=metrics.REGISTRY,
)

MO_REPLY_TYPE = "mo_reply"  # notification type; template "【交管12123】{text}"
# Partitioned, the MO streams are polled (not blocked on: a Cluster cannot block on
# streams of different slots in one command).  After a poll that found an MO the next
# comes after MO_POLL_SECONDS; each empty poll doubles the pause up to MO_POLL_MAX_SECONDS.
# An MO this process records wakes the poll at once, so only an MO that another process
# received for a partition this one answers waits up to MO_POLL_MAX_SECONDS, next to the
# seconds its reply SMS takes anyway.  Why not always 0.25 s: each poll reads every owned
# partition's stream (24 partitions: 96 XREADGROUP/s per idle process, 2026-12-02).
MO_POLL_SECONDS = 0.25
MO_POLL_MAX_SECONDS = 1.0
CONSUMER_GROUP = "mo"


def mo_reply_id(mo_id: str) -> str:
    """The reply's notification id: the push pipeline drops a repeated one."""
    return f"mo-reply:{mo_id}"


# --- reply texts (the template adds 【交管12123】) -----------------------------------------

_COMMANDS_TEXT = "回复CXYY查询考试预约，QXYY+预约号取消考试预约，CXJF查询驾驶证记分，CXWF查询未处理交通违法。"
_HELP_TEXTS = {
    # The signature already names the service: 【交管12123】回复CXYY…, not 【交管12123】交管12123….
    HelpReason.ASKED: _COMMANDS_TEXT,
    HelpReason.EMPTY: _COMMANDS_TEXT,
    HelpReason.UNRECOGNISED: "未能识别您的指令。" + _COMMANDS_TEXT,
    HelpReason.MISSING_BOOKING_NUMBER: "请在QXYY后附上预约号，例如：QXYY 20261130001。",
    HelpReason.MALFORMED_BOOKING_NUMBER: "预约号格式不正确，每次只能取消一个预约，例如：QXYY 20261130001。",
    HelpReason.MALFORMED_CODE: "请回复短信中的6位数字验证码，例如：QR 123456。",
}
FLOOD_TEXT = "发送过于频繁，请稍后再试。"
NOT_ON_RECORD_TEXT = (
    "本机号码不是交管业务登记的手机号码，无法通过短信办理。"
    "如需变更登记手机号码，请通过交管12123 App办理，或本人携带身份证明到车管所窗口办理。"
)
BOOKING_NOT_FOUND_TEXT = "未查询到该预约，请核对预约号后重试。"
NO_BOOKINGS_TEXT = "您当前没有待参加的考试预约。"
NO_PENDING_CODE_TEXT = "您没有待确认的取消预约申请，或验证码已失效。取消预约请回复QXYY+预约号。"
CODE_EXPIRED_TEXT = "验证码已过期，本次取消申请已失效。如需取消，请重新回复QXYY+预约号获取验证码。"
CODE_LOCKED_TEXT = "验证码错误次数过多，本次取消申请已失效。如需取消，请重新回复QXYY+预约号获取验证码。"
TRY_LATER_TEXT = "系统繁忙，暂时无法办理，请稍后再试或拨打12123咨询。"
# The user classes of seed 001 have different rights (push.mo.rights): one answer for
# every refusal, naming where the business can be done instead.
NOT_ALLOWED_TEXT = "您的用户类型不能通过短信办理该业务，请登录交管12123 App或到车管所窗口办理。"
NO_VIOLATION_DATA_TEXT = "暂未查询到您的交通违法信息，请登录交管12123 App查询。"

# Upcoming bookings listed in one reply; more would exceed a few SMS parts.
MAX_LISTED_BOOKINGS = 5


class Outcome(Enum):
    """What became of an MO (events stream `outcome`; never a number or a code)."""

    ANSWERED = "answered"  # query or help answered
    NOT_ON_RECORD = "not_on_record"
    BOOKING_NOT_FOUND = "booking_not_found"
    NOT_CANCELLABLE = "not_cancellable"  # already cancelled, attended, absent
    DEADLINE_PASSED = "deadline_passed"
    CODE_SENT = "code_sent"
    CODE_NONE = "code_none"
    CODE_EXPIRED = "code_expired"
    CODE_WRONG = "code_wrong"
    CODE_LOCKED = "code_locked"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"  # the one answer to a flooding number
    IGNORED = "ignored"  # flooding number, not answered
    INVALID_SENDER = "invalid_sender"  # not a Chinese mobile number, not answered
    ERROR = "error"  # corrupt core data or a bug: apologised
    NOT_ALLOWED = "not_allowed"  # the sender's user class may not do this by SMS
    REDELIVERED = "redelivered"  # the same text from the same number just answered: not answered again


@dataclass(frozen=True)
class MoReply:
    text: str
    outcome: Outcome


# Lua: gateway/push/lua/mo_rate.lua, mo_issue_code.lua, mo_check_code.lua.

# An SMSC delivers an MO again when it did not get our deliver_sm_resp (the link dropped
# after we recorded it, a gateway killed, a response later than the SMSC's timeout): on
# its next bind at once, or after its response timeout, 30-60 s on the SMSCs we know.
# The same text from the same number within this window is taken for that, recorded
# and not answered again; a citizen who repeats a command later (a code that expired)
# is answered.  Never longer than half the cancel code's validity.
MO_REDELIVERY_WINDOW_SECONDS = 120.0


class _RateVerdict(Enum):
    ANSWER = 0
    ANSWER_FLOOD = 1
    IGNORE = 2


# --- recording -----------------------------------------------------------------------------


class MoRecorder:
    """`InboundSink.record_mo`: one XADD to the MO stream, then the Deferred fires."""

    def __init__(self, redis: Redis, keys: Keys, now: Callable[[], float], *, wait_replicas: int = 0) -> None:
        self._redis = redis
        self._keys = keys
        self._now = now
        # push.delivery_wait_replicas: replicas that must have the MO before the SMSC is
        # told it is recorded (it then forgets it).
        self._wait_replicas = wait_replicas
        self.replica_waits = ReplicaWaits(redis)

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        """Record an MO durably; fires once it is in Redis, fails if Redis refused it.

        The link sends deliver_sm_resp only after this fires (a failure: an error status,
        so the SMSC delivers again).
        """
        return as_deferred(self._record(message))

    async def _record(self, message: MobileOriginated) -> None:
        digits = message.source.digits
        fields = {
            "carrier": message.carrier,
            "from": digits,  # private: the reply goes back to it (see the module docstring)
            "from_masked": mask_phone(digits),
            "to": message.destination,
            # A lone surrogate (a cut UTF-16 pair) cannot be stored as UTF-8 and would fail
            # the XADD on every redelivery: keep the rest of the text, mark the hole.
            "text": message.text.encode("utf-8", "replace").decode("utf-8"),
            "received_at": repr(message.received_at or self._now()),
        }
        stream = self._keys.mo_stream_of(_sender_key(digits))
        entry_id = await self._redis.xadd(stream, fields)  # type: ignore[arg-type]
        partition = self._keys.number_partition_of(_sender_key(digits))
        if self._wait_replicas:
            # A master lost before its replica had the MO raises here: the SMSC gets an
            # error status and delivers it again.
            acked = await self.replica_waits.confirmed(self._keys.partition(partition).replication_fence,
                                                       self._wait_replicas, "citizens' messages (MO)")
            if acked < self._wait_replicas:
                mo_replication_short.inc()
        log.info(
            "MO {mo_id} from {sender} via {carrier} recorded",
            mo_id=self._keys.mo_id(partition, decode_text(entry_id)),
            sender=message.source,
            carrier=message.carrier,
        )


# --- answering -----------------------------------------------------------------------------


class MoResponder:
    """Works out the answer to one command from one sender (identity, queries, the cancel).

    Side effects: issuing/checking a cancel code (``mo-cancel:<phone>``) and the domain's
    cancellation.  The reply itself is the caller's to enqueue.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        config: MoConfig,
        *,
        max_code_attempts: int = 3,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._config = config
        self._max_code_attempts = max_code_attempts
        self._people = PersonStore(redis, keys)
        self._bookings = BookingStore(redis, keys)
        self._cancellation = BookingCancellation(redis, keys)
        self._issue_code = register_lua(redis, __file__, "mo_issue_code.lua")
        self._check_code = register_lua(redis, __file__, "mo_check_code.lua")

    async def answer(self, command: MoCommand, phone: str, *, mo_id: str, now: float) -> MoReply:
        """The reply to `command` from `phone` (11 digits, normalised); may raise
        CorruptRecord (broken core data) or a Redis error."""
        if isinstance(command, Help):
            return MoReply(_HELP_TEXTS[command.reason], Outcome.ANSWERED)
        people = await self._people.find_by_phone(phone)
        if not people:
            return MoReply(NOT_ON_RECORD_TEXT, Outcome.NOT_ON_RECORD)
        rights = self._config.rights
        match command:
            case QueryBookings():
                allowed = [p for p in people if may(p, rights.query_bookings)]
                if not allowed:
                    return MoReply(NOT_ALLOWED_TEXT, Outcome.NOT_ALLOWED)
                return await self._query_bookings(allowed, phone, now)
            case QueryPoints():
                allowed = [p for p in people if may(p, rights.query_points)]
                if not allowed:
                    return MoReply(NOT_ALLOWED_TEXT, Outcome.NOT_ALLOWED)
                return MoReply(_points_text(allowed), Outcome.ANSWERED)
            case QueryViolations():
                allowed = [p for p in people if may(p, rights.query_violations)]
                if not allowed:
                    return MoReply(NOT_ALLOWED_TEXT, Outcome.NOT_ALLOWED)
                return MoReply(_violations_text(allowed), Outcome.ANSWERED)
            case CancelBooking(booking_no=booking_no):
                return await self._start_cancel(booking_no, phone, mo_id, now, people)
            case ConfirmCancel(code=code):
                return await self._confirm_cancel(code, phone, mo_id, now, people)
        raise AssertionError(command)

    async def _query_bookings(self, people: list[Person], phone: str, now: float) -> MoReply:
        today = from_unix(now).date()
        ids = {p.id_number.digits for p in people}
        upcoming = [b for b in await self._bookings.find_by_phone(phone)
                    if b.exam_date >= today and b.id_number.digits in ids]
        if not upcoming:
            return MoReply(NO_BOOKINGS_TEXT, Outcome.ANSWERED)
        shared_phone = len(people) > 1
        lines = [
            (f"{_masked_name(b.name)}，" if shared_phone else "") + booking_summary(b)
            for b in upcoming[:MAX_LISTED_BOOKINGS]
        ]
        text = "您的考试预约：\n" + "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))
        if len(upcoming) > MAX_LISTED_BOOKINGS:
            text += f"\n另有{len(upcoming) - MAX_LISTED_BOOKINGS}条预约，请登录交管12123 App查看。"
        cancellers = {p.id_number.digits for p in people if may(p, self._config.rights.cancel_booking)}
        listed = upcoming[:MAX_LISTED_BOOKINGS]
        # Offer QXYY only for what can still be cancelled online, by someone allowed to.
        if any(b.cancellable_online(now) and b.id_number.digits in cancellers for b in listed):
            text += "\n取消预约请回复QXYY+预约号。"
        closed = [b for b in listed if b.status is BookingStatus.BOOKED and not b.cancellable_online(now)]
        if closed:
            last = min(b.in_person_cancel_last_day for b in closed)
            text += (f"\n{'、'.join(b.booking_no for b in closed)}已过网上取消截止时间，如需取消请本人"
                     f"最迟于{format_cn_date(last)}到车管所窗口办理。")
        return MoReply(text, Outcome.ANSWERED)

    async def _start_cancel(self, booking_no: str, phone: str, mo_id: str, now: float,
                            people: list[Person]) -> MoReply:
        booking = await self._bookings.verify_by_booking_number(booking_no, phone)
        if booking is None:
            # Unknown and someone else's look the same: the answer reveals nothing.
            return MoReply(BOOKING_NOT_FOUND_TEXT, Outcome.BOOKING_NOT_FOUND)
        if not self._may_cancel(booking, people):
            return MoReply(NOT_ALLOWED_TEXT, Outcome.NOT_ALLOWED)
        refusal = _refusal(booking, now)
        if refusal is not None:
            return refusal
        ttl = self._config.cancel_code_ttl_seconds
        code = decode_text(
            await self._issue_code(
                keys=[self._keys.mo_cancel_code(phone)],
                args=[
                    f"{secrets.randbelow(1_000_000):06d}",
                    booking.booking_no,
                    repr(now + ttl),
                    mo_id,
                    # Garbage collection only: expiry is decided by `expires_at` and our clock.
                    str(math.ceil(ttl * 1000) + 60_000),
                ],
            )
        )
        minutes = max(1, math.ceil(ttl / 60))
        text = (
            f"您正在申请取消预约号{booking.booking_no}"
            f"（{booking.subject.label}，{booking.site}，{_when(booking)}）。"
            f"确认取消请在{minutes}分钟内回复验证码{code}，如非本人操作请忽略。"
        )
        return MoReply(text, Outcome.CODE_SENT)

    def _may_cancel(self, booking: Booking, people: list[Person]) -> bool:
        """The booking's person may cancel by SMS (push.mo.rights.cancel_booking); a
        booking whose person is not among the phone's people is judged by the phone's."""
        owners = [p for p in people if p.id_number.digits == booking.id_number.digits] or people
        return any(may(p, self._config.rights.cancel_booking) for p in owners)

    async def _confirm_cancel(self, code: str, phone: str, mo_id: str, now: float,
                              people: list[Person]) -> MoReply:
        status, detail = (
            decode_text(v)
            for v in await self._check_code(
                keys=[self._keys.mo_cancel_code(phone)],
                args=[code, repr(now), str(self._max_code_attempts), mo_id],
            )
        )
        match status:
            case "NONE":
                return MoReply(NO_PENDING_CODE_TEXT, Outcome.CODE_NONE)
            case "EXPIRED":
                return MoReply(CODE_EXPIRED_TEXT, Outcome.CODE_EXPIRED)
            case "LOCKED":
                return MoReply(CODE_LOCKED_TEXT, Outcome.CODE_LOCKED)
            case "WRONG":
                return MoReply(f"验证码不正确，请核对后重新回复（还可尝试{detail}次）。", Outcome.CODE_WRONG)
        booking_no = detail
        # The phone on record may have changed since the code went out: check again.
        verified = await self._bookings.verify_by_booking_number(booking_no, phone)
        if verified is None:
            return MoReply(BOOKING_NOT_FOUND_TEXT, Outcome.BOOKING_NOT_FOUND)
        if not self._may_cancel(verified, people):
            return MoReply(NOT_ALLOWED_TEXT, Outcome.NOT_ALLOWED)
        # request_id: a replay of this MO gets CANCELLED again, not ALREADY_CANCELLED.
        result = await self._cancellation.cancel(
            booking_no, channel="sms", actor_phone=phone, now=now, request_id=mo_id
        )
        match result.outcome:
            case CancellationOutcome.CANCELLED:
                return MoReply(f"已收到，预约号{booking_no}已取消。", Outcome.CANCELLED)
            case CancellationOutcome.NOT_FOUND:
                return MoReply(BOOKING_NOT_FOUND_TEXT, Outcome.BOOKING_NOT_FOUND)
            case CancellationOutcome.DEADLINE_PASSED:
                return MoReply(cancellation_reply(result), Outcome.DEADLINE_PASSED)
        return MoReply(cancellation_reply(result), Outcome.NOT_CANCELLABLE)


def _refusal(booking: Booking, now: float) -> MoReply | None:
    """The answer when a booking cannot be cancelled online now (no code is sent)."""
    outcome: CancellationOutcome | None = None
    if booking.status is BookingStatus.CANCELLED:
        outcome = CancellationOutcome.ALREADY_CANCELLED
    elif booking.status is not BookingStatus.BOOKED:
        outcome = CancellationOutcome.NOT_BOOKED
    elif not booking.cancellable_online(now):
        outcome = CancellationOutcome.DEADLINE_PASSED
    if outcome is None:
        return None
    text = cancellation_reply(CancellationResult(outcome, booking))
    kind = Outcome.DEADLINE_PASSED if outcome is CancellationOutcome.DEADLINE_PASSED else Outcome.NOT_CANCELLABLE
    return MoReply(text, kind)


def _when(booking: Booking) -> str:
    # As the domain's summaries write it: "2026年11月30日上午", "2026年11月30日上午8:30至10:30".
    return format_when(booking)


def _masked_name(name: str) -> str:
    """林*燕-style: enough for a family sharing a phone to tell whose line it is."""
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def _violations_text(people: list[Person]) -> str:
    summaries = [(p, violation_summary(p)) for p in people]
    if all(text is None for _, text in summaries):
        return NO_VIOLATION_DATA_TEXT
    if len(people) == 1:
        return f"{summaries[0][1]}。处理违法请登录交管12123 App或到交警部门办理。"
    return "\n".join(f"{_masked_name(p.name)}：{text or '暂无交通违法信息'}。" for p, text in summaries)


def _points_text(people: list[Person]) -> str:
    if len(people) == 1:
        return licence_summary(people[0]) + "。"
    return "\n".join(f"{_masked_name(p.name)}：{licence_summary(p)}。" for p in people)


# --- the service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    mo_id: str  # Keys.mo_id: the entry id, partitioned p<k>-<entry id>
    fields: Mapping[str, str]


def mo_consumer_name(push_consumer_name: str, partitions: int, hostname: str, pid: int) -> str:
    """The MO stream's consumer name for this process.

    ``push.consumer_name`` + ``-mo`` when the operator named the process.  Otherwise
    ``<host>-mo`` with one partition (one process per host: a restart finds its own
    pending MOs at once), and ``<host>-<pid>-mo`` with several, where several processes
    may run on one host: with a shared name, a partition moving from one to the other
    would hand the second the MOs the first is still answering (a second reply).  A dead
    process's pending MOs are claimed by the others after ``claim_idle_seconds``.
    """
    if push_consumer_name:
        return f"{push_consumer_name}-mo"
    if partitions > 1:
        return f"{hostname}-{pid}-mo"
    return f"{hostname}-mo"


class MoService(Service):
    """Records MOs (`record_mo`) and answers them from a consumer-group loop.

    redis: the shared redis.asyncio client (either decode_responses setting).
    config: the ``push.mo`` section.  clock: the reactor (backoff delays).  now: Unix
    seconds for business time (code expiry, flood windows, "upcoming"); defaults to
    ``clock.seconds``.  consumer_name: see `mo_consumer_name` (a restarted gateway picks
    up its own pending entries at once, others' after ``claim_idle_seconds``).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        config: MoConfig,
        clock: IReactorTime,
        *,
        now: Callable[[], float] | None = None,
        consumer_name: str = "",
        batch_size: int = 100,
        block_seconds: float = 2.0,
        claim_idle_seconds: float = 60.0,
        retention_seconds: float = 30 * 86400.0,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 10.0,
        max_code_attempts: int = 3,
        partitions: Callable[[], Sequence[int]] | None = None,
        wait_replicas: int = 0,
    ) -> None:
        # The partitions whose MO streams this process answers: all of them unless the
        # caller limits it (partition ownership).
        self.partitions: Callable[[], Sequence[int]] = partitions or (lambda: range(keys.partitions))
        self._redis = redis
        self._keys = keys
        self._config = config
        self._clock = clock
        # Any: mypy reads zope's IReactorTime.seconds as a function without self.
        reactor_time: Any = clock
        self._now: Callable[[], float] = now if now is not None else reactor_time.seconds
        self._consumer = consumer_name or f"{socket.gethostname()}-mo"
        self._batch_size = batch_size
        self._block_ms = int(block_seconds * 1000)
        self._claim_idle_seconds = claim_idle_seconds
        self._retention_seconds = retention_seconds
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._recorder = MoRecorder(redis, keys, self._now, wait_replicas=wait_replicas)
        self._responder = MoResponder(redis, keys, config, max_code_attempts=max_code_attempts)
        self._rate = register_lua(redis, __file__, "mo_rate.lua")
        self._redelivery_window = min(MO_REDELIVERY_WINDOW_SECONDS, config.cancel_code_ttl_seconds / 2)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = False  # waiting on XREADGROUP BLOCK or a backoff: safe to cancel
        self._last_claim = 0.0
        self._last_trim = 0.0
        # Pending entries of ours to go through first (after start and after an error).
        self._backlog = True
        self._ready: set[int] = set()  # partitions whose group exists and own pending were read
        self._poll_pause = MO_POLL_SECONDS  # partitioned: the pause after an empty poll
        self._poll_wait: tuple[Deferred[None], Any] | None = None  # the pause now, and its timer

    # InboundSink ----------------------------------------------------------------------

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        """See `MoRecorder.record_mo`: fires once the MO is in the MO stream."""
        d = self._recorder.record_mo(message)
        d.addCallback(self._wake_poll)
        return d

    def _wake_poll(self, result: Any = None) -> Any:
        """End the poll pause: an MO was just recorded (maybe for a partition we answer)."""
        self._poll_pause = MO_POLL_SECONDS
        wait, self._poll_wait = self._poll_wait, None
        if wait is not None and not wait[0].called:
            wait[1].cancel()
            wait[0].callback(None)
        return result

    # Service ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._backlog = True
        self._task = asyncio.ensure_future(self._run())
        done = Deferred.fromFuture(self._task)
        done.addErrback(self._loop_died)

    def stopService(self) -> Deferred[None]:
        """Stops reading; an answer in progress finishes first (the app bounds the wait)."""
        super().stopService()
        self._stopping = True
        task, self._task = self._task, None
        if task is None or task.done():
            return succeed(None)
        if self._idle:
            task.cancel()
        return as_deferred(_wait_quietly(task))

    def _loop_died(self, failure: Any) -> None:
        if failure.check(asyncio.CancelledError):
            return None
        log.failure("MO consumer loop stopped by a bug", failure)
        return None

    # The loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff_initial
        while not self._stopping:
            try:
                await self._step()
                delay = self._backoff_initial
                continue
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    # The stream or group vanished (FLUSHALL, a restore): make them again.
                    log.warn("MO consumer group missing; creating it")
                    self._backlog = True
                    continue
                log.error("MO consumer: redis refused a command ({error})", error=str(error))
            except (*REDIS_ERRORS, RedisError) as error:
                log.error("MO consumer: redis unavailable ({error})", error=type(error).__name__)
            except Exception:
                # A bug outside the answer to one MO (which has its own net): keep the
                # loop, whose work is the citizens' answers, and say so loudly.
                log.failure("MO consumer: unexpected error")
            # Nothing acknowledged is lost: the pending entries are read again first.
            self._backlog = True
            await self._sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, self._backoff_max)

    async def answer_waiting(self) -> int:
        """Answer every MO waiting now (our pending entries first), without blocking.

        Returns how many entries were handled.  For a drain at shutdown and for tests;
        the running loop does the same continuously.  Raises Redis errors.
        """
        handled = 0
        for partition in self.partitions():
            await self._ensure_group(partition)
            for start in ("0", ">"):
                while entries := await self._read(partition, start, block=False):
                    await self._answer_batch(entries)
                    handled += len(entries)
        return handled

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        self._idle = True
        try:
            await wait_deferred(deferLater(self._clock, seconds))
        finally:
            self._idle = False

    async def _pause(self, seconds: float) -> None:
        """`_sleep` that `_wake_poll` ends early."""
        if self._stopping:
            return
        wait: Deferred[None] = Deferred()
        self._poll_wait = (wait, self._clock.callLater(seconds, wait.callback, None))
        self._idle = True
        try:
            await wait_deferred(wait)
        finally:
            self._idle = False
            if self._poll_wait is not None and self._poll_wait[0] is wait:
                if self._poll_wait[1].active():
                    self._poll_wait[1].cancel()
                self._poll_wait = None

    async def _ensure_group(self, partition: int) -> None:
        try:
            # From "0": MOs recorded before any consumer existed are answered too.
            await self._redis.xgroup_create(self._keys.partition(partition).mo_stream, CONSUMER_GROUP,
                                            id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _step(self) -> None:
        """One round: our pending entries of partitions new to us first; then entries
        abandoned by a dead consumer now and then; then new ones.  One stream: a
        blocking read.  Several (partitioned): each read without blocking in turn (a
        Cluster cannot block on streams of different slots in one command), then a pause
        of at most MO_POLL_SECONDS when none had anything."""
        if self._backlog:
            self._ready.clear()
            self._backlog = False
        parts = list(self.partitions())
        for partition in parts:
            if partition not in self._ready:
                await self._ensure_group(partition)
                while entries := await self._read(partition, "0", block=False):
                    await self._answer_batch(entries)
                self._ready.add(partition)
        entries = await self._claim_abandoned(parts)
        if not entries:
            if len(parts) == 1:
                entries = await self._read(parts[0], ">", block=True)
            else:
                for partition in parts:
                    entries += await self._read(partition, ">", block=False)
                if entries:
                    self._poll_pause = MO_POLL_SECONDS
                else:
                    await self._pause(min(self._block_ms / 1000, self._poll_pause))
                    self._poll_pause = min(self._poll_pause * 2, MO_POLL_MAX_SECONDS)
        if entries:
            await self._answer_batch(entries)
        await self._trim(parts)

    async def _read(self, partition: int, start: str, *, block: bool) -> list[_Entry]:
        if block and self._stopping:
            # stopService ran while we were busy: do not start a wait it cannot see.
            return []
        self._idle = block
        try:
            reply: Any = await self._redis.xreadgroup(
                CONSUMER_GROUP,
                self._consumer,
                {self._keys.partition(partition).mo_stream: start},
                count=self._batch_size,
                block=self._block_ms if block else None,
            )
        finally:
            self._idle = False
        return [_Entry(self._keys.mo_id(partition, decode_text(i)), _decode_fields(f))
                for i, f in stream_entries(reply) if i]

    async def _claim_abandoned(self, parts: list[int]) -> list[_Entry]:
        """Entries another consumer read and never acknowledged (it died), now and then."""
        now = self._now()
        if now - self._last_claim < self._claim_idle_seconds:
            return []
        self._last_claim = now
        entries: list[_Entry] = []
        for partition in parts:
            reply: Any = await self._redis.xautoclaim(
                self._keys.partition(partition).mo_stream,
                CONSUMER_GROUP,
                self._consumer,
                min_idle_time=int(self._claim_idle_seconds * 1000),
                start_id="0-0",
                count=self._batch_size,
            )
            entries += [_Entry(self._keys.mo_id(partition, decode_text(i)), _decode_fields(f))
                        for i, f in reply[1] if i]
        return entries

    async def _trim(self, parts: list[int]) -> None:
        now = self._now()
        if now - self._last_trim < 3600:
            return
        self._last_trim = now
        oldest_ms = int((now - self._retention_seconds) * 1000)
        for partition in parts:
            await self._redis.xtrim(self._keys.partition(partition).mo_stream, minid=f"{max(oldest_ms, 0)}-0",
                                    approximate=True)

    async def _answer_batch(self, entries: list[_Entry]) -> None:
        # One sender's MOs in order (QXYY before its code); different senders concurrently.
        by_sender: dict[str, list[_Entry]] = {}
        for entry in entries:
            by_sender.setdefault(_sender_key(entry.fields.get("from", "")), []).append(entry)
        results = await asyncio.gather(
            *(self._answer_in_order(group) for group in by_sender.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _answer_in_order(self, entries: list[_Entry]) -> None:
        for entry in entries:
            await self.answer_entry(entry.mo_id, entry.fields)

    async def answer_entry(self, mo_id: str, fields: Mapping[str, str]) -> None:
        """Answer one MO stream entry and acknowledge it (see the module docstring).

        Raises Redis connection errors (the entry stays pending and is answered later).
        """
        partition, entry_id = self._keys.split_mo_id(mo_id)
        part = self._keys.partition(partition)
        if not fields:
            # Trimmed away while pending: nothing left to answer.
            await self._redis.xack(part.mo_stream, CONSUMER_GROUP, entry_id)
            return
        if await self._redis.exists(part.mo_handled(entry_id)):
            await self._redis.xack(part.mo_stream, CONSUMER_GROUP, entry_id)
            return
        now = self._now()
        command = parse_mo(fields.get("text", ""))
        metrics.mo_messages.labels(keyword=command.keyword).inc()
        try:
            phone: str | None = normalise_cn_mobile(fields.get("from", ""))
        except InvalidPhoneNumber:
            phone = None
        reply: MoReply | None
        if phone is None:
            reply, outcome = None, Outcome.INVALID_SENDER
        elif await self._redelivered(phone, fields.get("text", ""), mo_id, now):
            reply, outcome = None, Outcome.REDELIVERED
        else:
            verdict = await self._rate_verdict(phone, now)
            if verdict is _RateVerdict.IGNORE:
                reply, outcome = None, Outcome.IGNORED
            elif verdict is _RateVerdict.ANSWER_FLOOD:
                reply = MoReply(FLOOD_TEXT, Outcome.RATE_LIMITED)
                outcome = reply.outcome
            else:
                reply = await self._answer_safely(command, phone, mo_id, now)
                outcome = reply.outcome
                if outcome is Outcome.ERROR:
                    # "Try again later": the same text again must be answered, not taken
                    # for a redelivery.
                    await self._redis.delete(self._seen_key(phone, fields.get("text", "")))
        await self._finish(mo_id, fields, phone, command, outcome, reply, now)
        log.info(
            "MO {mo_id} from {sender}: {keyword} -> {outcome}",
            mo_id=mo_id,
            sender=PhoneNumber(fields.get("from", "")),
            keyword=command.keyword,
            outcome=outcome.value,
        )

    async def _answer_safely(self, command: MoCommand, phone: str, mo_id: str, now: float) -> MoReply:
        try:
            return await self._responder.answer(command, phone, mo_id=mo_id, now=now)
        except REDIS_ERRORS:
            raise  # the entry stays pending; the loop backs off and answers it later
        except CorruptRecord as error:
            log.error("MO {mo_id}: core data is broken ({error})", mo_id=mo_id, error=str(error))
        except Exception:
            # A bug: one message must not stall everyone else's (see the module docstring).
            log.failure("MO {mo_id}: answering failed", mo_id=mo_id)
        return MoReply(TRY_LATER_TEXT, Outcome.ERROR)

    def _seen_key(self, phone: str, text: str) -> str:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        return self._keys.mo_seen(phone, digest)

    async def _redelivered(self, phone: str, text: str, mo_id: str, now: float) -> bool:
        """Whether another MO with this text from this number was taken within the
        redelivery window (`MO_REDELIVERY_WINDOW_SECONDS`, on the business clock).  This
        one is marked taken otherwise; the same MO again (a crash before its XACK) is
        not a redelivery."""
        key = self._seen_key(phone, text)
        mark = f"{mo_id} {now + self._redelivery_window!r}"
        # The key's own expiry only collects garbage (a minute after the window).
        garbage_ms = int((self._redelivery_window + 60) * 1000)
        # SET NX, then GET when taken: SET's NX and GET together need Redis 7.0.
        if await self._redis.set(key, mark, nx=True, px=garbage_ms):
            return False
        taken = await self._redis.get(key)
        if taken is None:  # expired in between
            await self._redis.set(key, mark, px=garbage_ms)
            return False
        taken_by, _, until = decode_text(taken).partition(" ")
        if taken_by == mo_id:
            return False
        if float(until or 0) > now:
            return True
        await self._redis.set(key, mark, px=garbage_ms)
        return False

    async def _rate_verdict(self, phone: str, now: float) -> _RateVerdict:
        verdict = await self._rate(
            keys=[self._keys.mo_rate(phone)],
            args=[repr(now), str(self._config.rate_limit_per_minute), "60", repr(self._config.ignore_seconds)],
        )
        return _RateVerdict(int(verdict))

    async def _finish(
        self,
        mo_id: str,
        fields: Mapping[str, str],
        phone: str | None,
        command: MoCommand,
        outcome: Outcome,
        reply: MoReply | None,
        now: float,
    ) -> None:
        """Enqueue the reply and record the events; then mark handled and XACK.

        One pipeline on one Redis.  Partitioned, two round trips: on a Cluster a
        pipeline's commands to different nodes run in no set order, and the
        acknowledgement must not land without the reply; the marker and the XACK are in
        the MO stream's slot: one MULTI."""
        keys = self._keys
        masked = mask_phone(phone or fields.get("from", ""))
        at = iso_time(now)
        partition, entry_id = keys.split_mo_id(mo_id)
        part = keys.partition(partition)
        async with self._redis.pipeline(transaction=False) as pipe:
            if reply is not None and phone is not None:
                pipe.xadd(
                    # the reply's partition intake stream (the shared notify stream with one)
                    keys.partition(keys.partition_of(mo_reply_id(mo_id))).notify_stream,
                    {
                        "id": mo_reply_id(mo_id),
                        "type": MO_REPLY_TYPE,
                        "to": phone,
                        "params": json.dumps({"text": reply.text}, ensure_ascii=False),
                        "priority": "high",
                        "channel": "sms",
                    },
                )
            pipe.xadd(
                keys.events_stream,
                {
                    "type": "mo.received",
                    "mo_id": mo_id,
                    "from": masked,
                    "carrier": fields.get("carrier", ""),
                    "keyword": command.keyword,
                    "outcome": outcome.value,
                    "at": at,
                },
            )
            if reply is not None and phone is not None:
                pipe.xadd(
                    keys.events_stream,
                    {
                        "type": "mo.replied",
                        "mo_id": mo_id,
                        "to": masked,
                        "keyword": command.keyword,
                        "outcome": outcome.value,
                        "reply_id": mo_reply_id(mo_id),
                        "at": at,
                    },
                )
            if not keys.partitioned:  # one server runs a pipeline in order: one round trip
                pipe.set(part.mo_handled(entry_id), outcome.value, ex=max(1, int(self._retention_seconds)))
                pipe.xack(part.mo_stream, CONSUMER_GROUP, entry_id)
            await pipe.execute()
        if keys.partitioned:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(part.mo_handled(entry_id), outcome.value, ex=max(1, int(self._retention_seconds)))
                pipe.xack(part.mo_stream, CONSUMER_GROUP, entry_id)
                await pipe.execute()


def _sender_key(source: str) -> str:
    try:
        return normalise_cn_mobile(source)  # +86 or not, one sender
    except InvalidPhoneNumber:
        return source


def _decode_fields(raw: Mapping[Any, Any] | None) -> dict[str, str]:
    return {decode_text(k): decode_text(v) for k, v in (raw or {}).items()}


async def _wait_quietly(task: asyncio.Task[None]) -> None:
    try:
        await task
    except asyncio.CancelledError:
        pass

