"""MoService against a real redis-server and the domain's sample data.

Most tests record MOs with `record_mo` (what a carrier link calls) and answer them with
`answer_waiting` (what the consumer loop does, without blocking), then look at what Redis
shows: the reply in the notify stream, the events, the booking.  The loop itself, restart
recovery and a Redis outage are tested with the service running on the reactor; those
wait on the notify stream with XREAD BLOCK, not with sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from gateway.config import MoConfig
from gateway.domain import from_unix
from gateway.domain.bookings import BookingStore
from gateway.domain.people import LicenceStatus, Person, UserClass, person_to_hash
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_CALLER_AFTER_DEADLINE,
    SAMPLE_CALLER_NINE_POINTS,
    SAMPLE_CALLER_UNICOM,
    SAMPLE_ID_NUMBERS,
    SampleSummary,
    load_sample,
)
from gateway.ports import MobileOriginated
from gateway.privacy import IdNumber, PhoneNumber
from gateway.push.mo import (
    FLOOD_TEXT,
    MO_REDELIVERY_WINDOW_SECONDS,
    NOT_ALLOWED_TEXT,
    NOT_ON_RECORD_TEXT,
    TRY_LATER_TEXT,
    MoService,
    mo_reply_id,
)
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.embedded import RedisServerProcess
from gateway.store.keys import Keys
from gateway.store.service import make_client
from tests.aio import on_asyncio
from tests.push.harness import READ_BLOCK_LIMIT_MS

KEYS = Keys()
STRANGER = "13712345670"  # a valid mobile number with nobody on record


class Now:
    """A clock the test moves: business time of the service (code expiry, flood windows)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(self, redis: Redis, service: MoService, now: Now, sample: SampleSummary) -> None:
        self.redis = redis
        self.service = service
        self.now = now
        self.sample = sample

    async def send(self, sender: str, text: str, carrier: str = "cmcc") -> str:
        """Record an MO as a carrier link would, answer everything waiting; the reply text."""
        before = len(await self.replies())
        await wait_deferred(
            self.service.record_mo(MobileOriginated(carrier, PhoneNumber(sender), "12123", text))
        )
        await self.service.answer_waiting()
        replies = await self.replies()
        assert len(replies) == before + 1, "expected exactly one reply"
        return str(replies[-1]["text"])

    async def send_unanswered(self, sender: str, text: str) -> None:
        before = len(await self.replies())
        await wait_deferred(
            self.service.record_mo(MobileOriginated("cmcc", PhoneNumber(sender), "12123", text))
        )
        await self.service.answer_waiting()
        assert len(await self.replies()) == before

    async def replies(self) -> list[dict[str, str]]:
        """The mo_reply notifications, oldest first, with their params' text as `text`."""
        out = []
        for _, fields in await self.redis.xrange(KEYS.notify_stream):
            if fields["type"] == "mo_reply":
                out.append({**fields, "text": json.loads(fields["params"])["text"]})
        return out

    async def events(self, kind: str) -> list[dict[str, str]]:
        return [f for _, f in await self.redis.xrange(KEYS.events_stream) if f["type"] == kind]

    async def booking_status(self, booking_no: str) -> str:
        booking = await BookingStore(self.redis, KEYS).get(booking_no)
        assert booking is not None
        return booking.status.value

    async def seats_left(self, booking_no: str) -> int:
        plan_id = await self.redis.get(KEYS.booking_index(booking_no))
        return int(await self.redis.hget(KEYS.exam_plan(plan_id), "seats_left"))


@asynccontextmanager
async def harness(redis_url: str, config: MoConfig | None = None) -> AsyncIterator[Harness]:
    redis = make_client(redis_url)
    now = Now()
    sample = await load_sample(redis, KEYS, today=from_unix(now()).date())
    service = MoService(redis, KEYS, config or MoConfig(), reactor, now=now, consumer_name="test")
    try:
        yield Harness(redis, service, now, sample)
    finally:
        await redis.aclose()


def code_in(text: str) -> str:
    match = re.search(r"验证码(\d{6})", text)
    assert match, text
    return match.group(1)


# --- recording ---------------------------------------------------------------------------


def test_mo_consumer_name_is_the_process_name_or_one_per_process_when_partitioned() -> None:
    """Named processes read MOs as <name>-mo; unnamed ones as <host>-mo with one partition
    (a restart finds its own pending MOs at once) and <host>-<pid>-mo with several (two
    processes on one host must not share the pending MOs of a partition moving between
    them)."""
    from gateway.push.mo import mo_consumer_name

    assert mo_consumer_name("gateway0", 16, "gw-host", 4242) == "gateway0-mo"
    assert mo_consumer_name("", 1, "gw-host", 4242) == "gw-host-mo"
    assert mo_consumer_name("", 16, "gw-host", 4242) == "gw-host-4242-mo"
    assert mo_consumer_name("", 16, "gw-host", 4243) != mo_consumer_name("", 16, "gw-host", 4242)


@on_asyncio
async def test_record_mo_writes_the_mo_stream_before_firing(redis_url: str) -> None:
    """record_mo fires after one XADD holding the MO; answering waits for the consumer."""
    async with harness(redis_url) as h:
        await wait_deferred(
            h.service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", "CXYY", 5.0))
        )
        [(_, fields)] = await h.redis.xrange(KEYS.mo_stream)
        assert fields == {
            "carrier": "cmcc", "from": SAMPLE_CALLER, "from_masked": "138****8000",
            "to": "12123", "text": "CXYY", "received_at": "5.0",
        }
        assert await h.redis.xlen(KEYS.notify_stream) == 0


@on_asyncio
async def test_record_mo_accepts_text_that_is_not_valid_unicode(redis_url: str) -> None:
    """A lone surrogate in the text is replaced, not a reason to refuse the MO forever."""
    async with harness(redis_url) as h:
        await h.send(SAMPLE_CALLER, "CXYY\ud800")
        [(_, fields)] = await h.redis.xrange(KEYS.mo_stream)
        assert fields["text"] == "CXYY?"


# --- keywords end to end -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["CXYY", "cxyy", "ＣＸＹＹ", "查询预约"])
@on_asyncio
async def test_query_bookings_lists_upcoming_bookings_without_id_numbers(redis_url: str, text: str) -> None:
    """CXYY in any form answers with the sender's upcoming bookings, never an ID number."""
    async with harness(redis_url) as h:
        reply = await h.send(SAMPLE_CALLER, text)
        assert h.sample.cancellable_booking in reply
        assert "科目二" in reply and "已预约" in reply
        assert h.sample.attended_booking not in reply  # in the past
        assert h.sample.slot_booking not in reply  # someone else's
        for id_number in SAMPLE_ID_NUMBERS.values():
            assert id_number not in reply and id_number[-6:] not in reply
        assert SAMPLE_CALLER not in reply
        [notification] = await h.replies()
        assert notification["to"] == SAMPLE_CALLER
        assert notification["priority"] == "high" and notification["channel"] == "sms"


@pytest.mark.parametrize("text", ["CXJF", "查询记分", "ｃｘｊｆ"])
@on_asyncio
async def test_query_points_gives_points_status_and_expiry(redis_url: str, text: str) -> None:
    """CXJF answers with points, licence status and expiry."""
    async with harness(redis_url) as h:
        reply = await h.send(SAMPLE_CALLER_NINE_POINTS, text)
        assert "记分9分" in reply and "状态：正常" in reply and "有效期至" in reply
        assert SAMPLE_ID_NUMBERS[SAMPLE_CALLER_NINE_POINTS] not in reply


@pytest.mark.parametrize("text", ["BZ", "帮助", "你好", "？"])
@on_asyncio
async def test_help_and_unrecognised_list_the_keywords(redis_url: str, text: str) -> None:
    """BZ, 帮助 and anything unrecognised get the list of keywords."""
    async with harness(redis_url) as h:
        reply = await h.send(STRANGER, text)
        assert "CXYY" in reply and "QXYY" in reply and "CXJF" in reply
        # The signature 【交管12123】 names the service; the text does not repeat it.
        assert "交管12123" not in reply


# --- identity ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["CXYY", "CXJF", "QXYY {booking}", "123456"])
@on_asyncio
async def test_sender_not_on_record_is_told_so_and_nothing_else(redis_url: str, text: str) -> None:
    """A number with nobody on record gets the same fixed answer whatever it asks."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        reply = await h.send(STRANGER, text.format(booking=booking))
        assert reply == NOT_ON_RECORD_TEXT
        assert "交管12123 App" in reply and "车管所" in reply  # both ways to change the number
        assert await h.redis.exists(KEYS.mo_cancel_code(STRANGER)) == 0
        assert await h.booking_status(booking) == "booked"


@on_asyncio
async def test_someone_elses_booking_looks_like_no_booking(redis_url: str) -> None:
    """QXYY for another person's booking answers exactly like a booking that does not exist."""
    async with harness(redis_url) as h:
        theirs = await h.send(SAMPLE_CALLER_UNICOM, f"QXYY {h.sample.cancellable_booking}")
        missing = await h.send(SAMPLE_CALLER_UNICOM, "QXYY 20991231999")
        assert theirs == missing
        assert await h.redis.exists(KEYS.mo_cancel_code(SAMPLE_CALLER_UNICOM)) == 0
        assert await h.booking_status(h.sample.cancellable_booking) == "booked"


@on_asyncio
async def test_a_shared_phone_answers_for_each_person_with_masked_names(redis_url: str) -> None:
    """People on one phone: each line carries a masked name, never an ID number; the
    learner on the phone (exam matters only, seed 001) is not answered for points."""
    async with harness(redis_url) as h:
        for id_number, name, points in (("350203196001011234", "林国华", 2), ("350203196202021236", "林国强", 0)):
            relative = Person(IdNumber(id_number), name, PhoneNumber(SAMPLE_CALLER),
                              UserClass.COUNTER, points=points, licence_status=LicenceStatus.NORMAL,
                              licence_class="C1")
            await h.redis.hset(KEYS.person(id_number), mapping=dict(person_to_hash(relative)))
            await h.redis.sadd(KEYS.person_by_phone(SAMPLE_CALLER), id_number)
        reply = await h.send(SAMPLE_CALLER, "CXJF")
        assert "林*华：驾驶证（C1）状态：正常，本记分周期累积记分2分" in reply
        assert "林*强：驾驶证（C1）状态：正常，本记分周期累积记分0分" in reply
        assert "林*燕" not in reply
        assert "林国华" not in reply and "350203196001011234" not in reply


@on_asyncio
async def test_logs_hold_no_whole_number_text_or_code(redis_url: str) -> None:
    """Everything logged while answering (message and fields) masks numbers, omits texts."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with harness(redis_url) as h:
            code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {h.sample.cancellable_booking}"))
            await h.send(SAMPLE_CALLER, f"确认取消 {code}")
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace", "").startswith("gateway.push.mo")]
    assert mine
    logged = "\n".join(formatEvent(e) + " " + " ".join(str(v) for v in e.values()) for e in mine)
    assert SAMPLE_CALLER not in logged and code not in logged and "确认取消" not in logged
    assert "138****8000" in logged


# --- the two-step cancel -----------------------------------------------------------------


@on_asyncio
async def test_cancel_with_the_code_within_the_ttl_cancels_and_releases_the_seat(redis_url: str) -> None:
    """QXYY gets a code; the same number sending it back in time cancels, seat released."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        seats = await h.seats_left(booking)
        first = await h.send(SAMPLE_CALLER, f"取消预约 {booking}")
        code = code_in(first)
        assert booking in first and "10分钟" in first
        assert await h.booking_status(booking) == "booked"
        h.now.t += 599
        second = await h.send(SAMPLE_CALLER, f"确认 {code}")
        assert "已取消" in second
        assert await h.booking_status(booking) == "cancelled"
        assert await h.seats_left(booking) == seats + 1
        # The domain queued the cancellation SMS itself.
        ids = [f["id"] for _, f in await h.redis.xrange(KEYS.notify_stream)]
        assert f"booking-cancelled:{booking}" in ids
        # The code is single use.
        assert "没有待确认" in await h.send(SAMPLE_CALLER, code)


@on_asyncio
async def test_codes_are_random(redis_url: str) -> None:
    """Each QXYY issues a fresh code from `secrets` (not a counter or a constant)."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        codes = set()
        for _ in range(4):
            codes.add(code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}")))
            h.now.t += MO_REDELIVERY_WINDOW_SECONDS  # a request again, not a redelivery
        assert len(codes) >= 3


@on_asyncio
async def test_wrong_code_is_refused_and_attempts_are_limited(redis_url: str) -> None:
    """A wrong code is refused; the third wrong one voids the code, even for the right one."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        assert "还可尝试2次" in await h.send(SAMPLE_CALLER, wrong)
        assert "还可尝试1次" in await h.send(SAMPLE_CALLER, f"QR {wrong}")
        assert "错误次数过多" in await h.send(SAMPLE_CALLER, f"确认 {wrong}")
        assert "没有待确认" in await h.send(SAMPLE_CALLER, code)
        assert await h.booking_status(booking) == "booked"


@on_asyncio
async def test_expired_code_does_not_cancel(redis_url: str) -> None:
    """The right code after cancel_code_ttl_seconds (by the service's clock) is expired."""
    async with harness(redis_url, MoConfig(cancel_code_ttl_seconds=600)) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        h.now.t += 600
        assert "已过期" in await h.send(SAMPLE_CALLER, code)
        assert await h.booking_status(booking) == "booked"


@on_asyncio
async def test_code_from_a_different_number_does_nothing(redis_url: str) -> None:
    """Another number (on record) sending the code cancels nothing and spends no attempt."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        for text in (code, f"QR {code}", f"确认 {code}"):
            assert "没有待确认" in await h.send(SAMPLE_CALLER_UNICOM, text)
        assert await h.booking_status(booking) == "booked"
        assert "已取消" in await h.send(SAMPLE_CALLER, code)


@on_asyncio
async def test_after_the_deadline_the_reply_sends_the_citizen_to_the_office(redis_url: str) -> None:
    """A booking whose window closed gets no code but the in-person rule (one day before)."""
    async with harness(redis_url) as h:
        booking = h.sample.after_deadline_booking
        reply = await h.send(SAMPLE_CALLER_AFTER_DEADLINE, f"QXYY {booking}")
        assert "车管所" in reply and "截止" in reply
        assert not re.search(r"验证码\d{6}", reply)
        assert await h.redis.exists(KEYS.mo_cancel_code(SAMPLE_CALLER_AFTER_DEADLINE)) == 0


@on_asyncio
async def test_deadline_passing_between_code_and_confirmation(redis_url: str) -> None:
    """A code confirmed after the booking window closed answers with the deadline rule."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        # The core system closes the window early (the plan filled up), a minute from now.
        plan_id = await h.redis.get(KEYS.booking_index(booking))
        await h.redis.hset(KEYS.exam_plan(plan_id), "cancel_deadline", str(int(h.now.t) + 60))
        h.now.t += 120
        assert "车管所" in await h.send(SAMPLE_CALLER, code)
        assert await h.booking_status(booking) == "booked"


# --- flooding ----------------------------------------------------------------------------


@on_asyncio
async def test_flooding_number_is_answered_once_then_ignored(redis_url: str) -> None:
    """Over the per-minute limit: one flood answer, then silence until ignore_seconds pass."""
    async with harness(redis_url, MoConfig(rate_limit_per_minute=3, ignore_seconds=600)) as h:
        # Each text a little different: the same text again would be taken for a redelivery.
        for text in ("BZ", "bz", " BZ"):
            assert "CXYY" in await h.send(SAMPLE_CALLER, text)
        assert await h.send(SAMPLE_CALLER, "BZ ") == FLOOD_TEXT
        for text in ("Bz", "bZ", "BZ  "):
            await h.send_unanswered(SAMPLE_CALLER, text)
        h.now.t += 59  # a new minute, but still being ignored
        await h.send_unanswered(SAMPLE_CALLER, "  BZ")
        # Others are not affected.
        assert "CXYY" in await h.send(SAMPLE_CALLER_UNICOM, "BZ")
        h.now.t += 600
        assert "CXYY" in await h.send(SAMPLE_CALLER, "BZ")
        outcomes = [e["outcome"] for e in await h.events("mo.received") if e["from"] == "138****8000"]
        assert outcomes == ["answered"] * 3 + ["rate_limited"] + ["ignored"] * 4 + ["answered"]


# --- idempotency and events --------------------------------------------------------------


@on_asyncio
async def test_after_try_again_later_the_same_text_is_answered(redis_url: str) -> None:
    """An MO answered "try again later" (a bug or broken core data) does not make the
    citizen's retry of the same text look like a redelivery."""
    async with harness(redis_url) as h:
        responder = h.service._responder
        real_answer = responder.answer

        async def failing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a defect")

        responder.answer = failing  # type: ignore[method-assign]
        assert await h.send(SAMPLE_CALLER, "CXYY") == TRY_LATER_TEXT
        responder.answer = real_answer  # type: ignore[method-assign]
        assert await h.send(SAMPLE_CALLER, "CXYY") != TRY_LATER_TEXT


@on_asyncio
async def test_an_mo_delivered_again_by_the_smsc_gets_no_second_answer(redis_url: str) -> None:
    """The SMSC delivers a QXYY again (our deliver_sm_resp was lost): it is recorded as
    `redelivered` and not answered, so the citizen holds one code, which cancels.  Before
    2026-12-05 the second delivery issued a second code that replaced the first: two texts
    with different codes, the first of which no longer worked.  The same text after the
    window is a new request and is answered."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        h.now.t += 30
        await h.send_unanswered(SAMPLE_CALLER, f"QXYY {booking}")
        outcomes = [e["outcome"] for e in await h.events("mo.received")]
        assert outcomes == ["code_sent", "redelivered"]
        assert "已取消" in await h.send(SAMPLE_CALLER, code)
        assert await h.booking_status(booking) == "cancelled"
        await h.send(SAMPLE_CALLER, "CXYY")
        h.now.t += MO_REDELIVERY_WINDOW_SECONDS
        await h.send(SAMPLE_CALLER, "CXYY")



@on_asyncio
async def test_replayed_mo_entry_sends_one_reply(redis_url: str) -> None:
    """Answering the same MO stream entry twice (a lost XACK) enqueues one reply."""
    async with harness(redis_url) as h:
        await h.send(SAMPLE_CALLER, "CXYY")
        [(mo_id, fields)] = await h.redis.xrange(KEYS.mo_stream)
        await h.service.answer_entry(mo_id, fields)
        replies = await h.replies()
        assert [r["id"] for r in replies] == [mo_reply_id(mo_id)]


@on_asyncio
async def test_replay_before_the_handled_marker_resends_the_same_code(redis_url: str) -> None:
    """A crash after the reply but before the marker: the replay repeats the same code and id."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        [(mo_id, fields)] = await h.redis.xrange(KEYS.mo_stream)
        await h.redis.delete(KEYS.mo_handled(mo_id))
        await h.service.answer_entry(mo_id, fields)
        first, again = await h.replies()
        assert first["id"] == again["id"] == mo_reply_id(mo_id)
        assert code_in(again["text"]) == code


@on_asyncio
async def test_replayed_confirmation_cancels_once_and_answers_the_same(redis_url: str) -> None:
    """A confirmation answered again (marker lost) gives the same reply; one seat released."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        seats = await h.seats_left(booking)
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        await h.send(SAMPLE_CALLER, code)
        mo_id, fields = (await h.redis.xrange(KEYS.mo_stream))[-1]
        await h.redis.delete(KEYS.mo_handled(mo_id))
        await h.service.answer_entry(mo_id, fields)
        _, first, again = await h.replies()
        assert first["id"] == again["id"] and first["text"] == again["text"]
        assert "已取消" in again["text"]
        assert await h.seats_left(booking) == seats + 1


@on_asyncio
async def test_events_are_masked_and_never_hold_a_code(redis_url: str) -> None:
    """mo.received / mo.replied carry masked numbers, keyword and outcome; no code, no text."""
    async with harness(redis_url) as h:
        booking = h.sample.cancellable_booking
        code = code_in(await h.send(SAMPLE_CALLER, f"QXYY {booking}"))
        await h.send(SAMPLE_CALLER, f"QR {code}")
        received = await h.events("mo.received")
        replied = await h.events("mo.replied")
        assert [(e["keyword"], e["outcome"]) for e in received] == [
            ("cancel_booking", "code_sent"), ("confirm_cancel", "cancelled"),
        ]
        assert [(e["keyword"], e["outcome"]) for e in replied] == [
            ("cancel_booking", "code_sent"), ("confirm_cancel", "cancelled"),
        ]
        assert all(e["from"] == "138****8000" for e in received)
        assert all(e["to"] == "138****8000" for e in replied)
        everything = json.dumps(await h.redis.xrange(KEYS.events_stream), ensure_ascii=False)
        assert code not in everything and SAMPLE_CALLER not in everything


# --- the running service -----------------------------------------------------------------


async def next_reply(redis: Redis, after: str = "0", timeout_seconds: float = 10.0) -> tuple[str, dict[str, str]]:
    """Block on the notify stream (XREAD BLOCK) until an mo_reply arrives after `after`."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        reply = await redis.xread({KEYS.notify_stream: after}, block=READ_BLOCK_LIMIT_MS)
        for _, items in reply or ():
            for entry_id, fields in items:
                after = entry_id
                if fields["type"] == "mo_reply":
                    return entry_id, fields
    raise AssertionError("no reply")


@on_asyncio
async def test_running_service_answers_recorded_mos(redis_url: str) -> None:
    """Started, the service answers an MO shortly after record_mo; it stops cleanly."""
    async with harness(redis_url) as h:
        service = MoService(h.redis, KEYS, MoConfig(), reactor, now=h.now, consumer_name="loop",
                            block_seconds=5.0)
        service.startService()
        try:
            await wait_deferred(
                service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", "cxyy"))
            )
            _, fields = await next_reply(h.redis)
            assert h.sample.cancellable_booking in json.loads(fields["params"])["text"]
        finally:
            await wait_deferred(service.stopService())


async def blocked_clients(redis: Redis) -> int:
    """Connections Redis shows as blocked (flag b): a waiting XREADGROUP BLOCK."""
    return sum("b" in c["flags"] for c in await redis.client_list())


@on_asyncio
async def test_stop_interrupts_a_blocked_read(redis_url: str) -> None:
    """stopService does not wait out XREADGROUP's BLOCK when the loop is idle."""
    async with harness(redis_url) as h:
        service = MoService(h.redis, KEYS, MoConfig(), reactor, now=h.now, consumer_name="idle",
                            block_seconds=30.0)
        service.startService()
        for _ in range(500):  # wait for the condition, as seen by Redis
            if await blocked_clients(h.redis):
                break
            await asyncio.sleep(0.01)
        assert await blocked_clients(h.redis) == 1
        started = time.monotonic()
        await wait_deferred(service.stopService())
        assert time.monotonic() - started < 1.0
        assert await blocked_clients(h.redis) == 0


@on_asyncio
async def test_mos_pending_from_before_a_crash_are_answered_after_restart(redis_url: str) -> None:
    """An MO read but never acknowledged (the process died) is answered when the loop starts."""
    async with harness(redis_url) as h:
        await wait_deferred(
            h.service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", "BZ"))
        )
        await h.redis.xgroup_create(KEYS.mo_stream, "mo", id="0")
        # Two dead consumers: one with our name (read, never acked), one other host.
        await h.redis.xreadgroup("mo", "restarted", {KEYS.mo_stream: ">"}, count=1)
        await wait_deferred(
            h.service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER_UNICOM), "12123", "BZ"))
        )
        await h.redis.xreadgroup("mo", "other-host", {KEYS.mo_stream: ">"}, count=1)
        service = MoService(h.redis, KEYS, MoConfig(), reactor, now=h.now, consumer_name="restarted",
                            claim_idle_seconds=0.0, block_seconds=0.2)
        service.startService()
        try:
            after, first = await next_reply(h.redis)
            _, second = await next_reply(h.redis, after)
            assert {first["to"], second["to"]} == {SAMPLE_CALLER, SAMPLE_CALLER_UNICOM}
        finally:
            await wait_deferred(service.stopService())
        assert (await h.redis.xpending(KEYS.mo_stream, "mo"))["pending"] == 0


@on_asyncio
async def test_redis_outage_loses_nothing(tmp_path: Path) -> None:
    """With Redis down record_mo fails (no deliver_sm_resp); after it returns all is answered."""
    server = RedisServerProcess(data_dir=tmp_path / "redis")
    server.start()
    redis = make_client(server.url, reconnect_max_delay_seconds=0.2)
    now = Now()
    try:
        await load_sample(redis, KEYS, today=from_unix(now()).date())
        service = MoService(redis, KEYS, MoConfig(), reactor, now=now, consumer_name="outage",
                            block_seconds=0.2, backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
        service.startService()
        try:
            await wait_deferred(
                service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", "BZ"))
            )
            after, _ = await next_reply(redis)
            server.stop()
            with pytest.raises(Exception) as refused:
                await wait_deferred(
                    service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER), "12123", "CXJF"))
                )
            assert "Connection" in type(refused.value).__name__ or isinstance(refused.value, OSError)
            server.start()
            await wait_deferred(
                service.record_mo(MobileOriginated("cmcc", PhoneNumber(SAMPLE_CALLER_UNICOM), "12123", "BZ"))
            )
            _, fields = await next_reply(redis, after)
            assert fields["to"] == SAMPLE_CALLER_UNICOM
        finally:
            await wait_deferred(service.stopService())
    finally:
        await redis.aclose()
        server.stop()


# --- violations and user classes ------------------------------------------------------------

INTERNET_USER = "13612345670"


async def add_internet_user(h: Harness) -> None:
    """An internet-registered user (seed 001: queries only) who owns a booking of the sample."""
    person = Person(IdNumber("350203198803031238"), "陈静", PhoneNumber(INTERNET_USER), UserClass.INTERNET,
                    points=4, licence_status=LicenceStatus.NORMAL, licence_class="C1", violations_pending=1)
    await h.redis.hset(KEYS.person(person.id_number.digits), mapping=dict(person_to_hash(person)))
    await h.redis.sadd(KEYS.person_by_phone(INTERNET_USER), person.id_number.digits)


@pytest.mark.parametrize("text", ["CXWF", "查违章", "违法查询"])
@on_asyncio
async def test_violation_query_answers_count_and_points_from_core_data(redis_url: str, text: str) -> None:
    """CXWF from the phone on record: violations to handle (person field
    violations_pending) and the points of the current cycle."""
    async with harness(redis_url) as h:
        reply = await h.send(SAMPLE_CALLER_NINE_POINTS, text)
        assert reply.startswith("您有2起交通违法未处理，驾驶证本记分周期累积记分9分。")
        assert await h.send(STRANGER, text) == NOT_ON_RECORD_TEXT


@on_asyncio
async def test_user_classes_decide_what_may_be_done_by_sms(redis_url: str) -> None:
    """A learner may not query points or violations (exam matters only); an internet
    user may query but not cancel a booking; each refusal says where to go instead."""
    async with harness(redis_url) as h:
        assert await h.send(SAMPLE_CALLER, "CXWF") == NOT_ALLOWED_TEXT
        assert await h.send(SAMPLE_CALLER, "CXJF") == NOT_ALLOWED_TEXT
        await add_internet_user(h)
        assert (await h.send(INTERNET_USER, "CXWF")).startswith("您有1起交通违法未处理，驾驶证本记分周期累积记分4分")
        booking = h.sample.cancellable_booking
        # Give the internet user a booking of their own: cancelling it is refused by class.
        store = BookingStore(h.redis, KEYS)
        mine = await store.get(booking)
        assert mine is not None
        await h.redis.hset(KEYS.booking(mine.plan_id, booking), mapping={
            "phone": INTERNET_USER, "id_number": "350203198803031238"})
        await h.redis.sadd(KEYS.bookings_of_person("350203198803031238"), booking)
        assert await h.send(INTERNET_USER, f"QXYY {booking}") == NOT_ALLOWED_TEXT
        listing = await h.send(INTERNET_USER, "CXYY")
        assert booking in listing and "QXYY" not in listing
        assert await h.booking_status(booking) == "booked"


@on_asyncio
async def test_booking_query_offers_qxyy_only_while_cancellable(redis_url: str) -> None:
    """A booking past its online deadline is listed with the in-person rule, and the reply
    does not offer "reply QXYY to cancel"."""
    async with harness(redis_url) as h:
        reply = await h.send(SAMPLE_CALLER_AFTER_DEADLINE, "CXYY")
        assert h.sample.after_deadline_booking in reply
        assert "QXYY" not in reply and "已过网上取消截止时间" in reply and "到车管所窗口办理" in reply
        open_reply = await h.send(SAMPLE_CALLER, "CXYY")
        assert "取消预约请回复QXYY+预约号。" in open_reply


@on_asyncio
async def test_an_mo_recorded_whose_answer_the_smsc_never_got_is_answered_once_over_smpp(redis_url: str) -> None:
    """Over SMPP with the carrier simulator: the MO's XADD reached Redis but its reply did
    not come back (a socket timeout), so the link answered the deliver_sm with an error and
    the SMSC delivered the QXYY again.  Two MO entries, one answer: one code."""
    from twisted.internet.defer import Deferred, succeed

    from gateway.config import CarrierConfig, Secret
    from gateway.ports import DeliveryReceipt
    from gateway.smpp.link import CarrierLink
    from gateway.smpp.simulator import CarrierSimulator, options_for_carrier

    async with harness(redis_url) as h:

        class ReplyLostOnce:
            """The link's InboundSink: the first MO is recorded, then its reply is lost."""

            lost = False

            def record_mo(self, message: MobileOriginated) -> Deferred[None]:
                async def record() -> None:
                    await wait_deferred(h.service.record_mo(message))
                    if not self.lost:
                        self.lost = True
                        raise TimeoutError("the XADD's reply did not come back")

                return as_deferred(record())

            def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
                return succeed(None)

        config = CarrierConfig(name="cmcc", host="127.0.0.1", port=2775, system_id="gw12123",
                               password=Secret("secret"), prefixes=("138", "139"))
        simulator = CarrierSimulator(options_for_carrier(config, port=0, redeliver_delay_seconds=0.05), reactor)
        simulator.startService()
        link = CarrierLink(CarrierConfig(**{**config.__dict__, "port": simulator.port_number}), ReplyLostOnce(),
                           reactor, jitter=lambda: 0.0)
        link.startService()
        try:
            await wait_deferred(link.when_bound().addTimeout(10, reactor))
            booking = h.sample.cancellable_booking
            await wait_deferred(simulator.send_mo(SAMPLE_CALLER, f"QXYY {booking}").addTimeout(10, reactor))
            assert await h.redis.xlen(KEYS.mo_stream) == 2
            await h.service.answer_waiting()
            [offer] = await h.replies()
            outcomes = [e["outcome"] for e in await h.events("mo.received")]
            assert outcomes == ["code_sent", "redelivered"]
            assert "已取消" in await h.send(SAMPLE_CALLER, f"QR {code_in(offer['text'])}")
        finally:
            await wait_deferred(link.stopService())
            await wait_deferred(simulator.stopService())
