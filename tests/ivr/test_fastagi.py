"""Scripted calls through the real FastAGI server on 127.0.0.1 (port 0), with the
Asterisk-faithful client of tests/peers and the session's real redis-server."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway import metrics
from gateway.config import ConfigError, FastAgiConfig, IvrConfig
from gateway.domain import from_unix
from gateway.domain.bookings import BookingStatus, BookingStore
from gateway.domain.sample import (
    SAMPLE_CALLER,
    SAMPLE_CALLER_AFTER_DEADLINE,
    SAMPLE_CALLER_NINE_POINTS,
    SAMPLE_CALLER_UNICOM,
    SAMPLE_ID_NUMBERS,
    SampleSummary,
    load_sample,
)
from gateway.fleet.clock import FleetClock
from gateway.ivr.actions import CATALOGUE
from gateway.ivr.fastagi import (
    HANGUP_GRACE_SECONDS,
    HEADER_TIMEOUT_SECONDS,
    FastAgiProtocol,
    FastAgiService,
)
from gateway.ivr.menus import MenuBook, chinese_date, load_menus, parse_menus, speech_clip
from gateway.store.bridge import wait_deferred
from gateway.store.keys import Keys
from gateway.store.service import make_client
from tests.aio import on_asyncio
from tests.peers.fastagi_client import AsteriskFastAgiClient, CallerInput, Transcript, place_call

IVR_YAML = Path(__file__).resolve().parents[2] / "config" / "ivr.yaml"
BOOK = load_menus(IVR_YAML)
TRANSCRIPT = Transcript({c.name: c.text for c in BOOK.all_clips()})
KEYS = Keys()


@dataclass
class Harness:
    service: FastAgiService
    redis: Any
    summary: SampleSummary
    port: int

    async def call(self, script: str = "12123", **options: Any) -> AsteriskFastAgiClient:
        client = await wait_deferred(place_call(reactor, self.port, script, **options))
        await wait_deferred(self.service.when_idle())
        return client

    async def events(self, kind: str = "ivr.call") -> list[dict[str, str]]:
        return [fields for _, fields in await self.redis.xrange(KEYS.events_stream) if fields.get("type") == kind]


@asynccontextmanager
async def fastagi(redis_url: str, book: MenuBook = BOOK, **ivr: Any) -> AsyncIterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="fastagi-sounds-") as sounds:  # removed after each test
        ivr.setdefault("sounds_dir", sounds)
        async with _fastagi(redis_url, book, **ivr) as harness:
            yield harness


@asynccontextmanager
async def _fastagi(redis_url: str, book: MenuBook, **ivr: Any) -> AsyncIterator[Harness]:
    redis = make_client(redis_url)
    summary = await load_sample(redis, KEYS, today=from_unix(reactor.seconds()).date())
    config = IvrConfig(fastagi=FastAgiConfig(listen="127.0.0.1:0"), **ivr)
    service = FastAgiService(config, lambda: book, redis, KEYS, reactor)
    service.startService()
    assert service.listening_port is not None
    try:
        yield Harness(service, redis, summary, service.listening_port.getHost().port)
    finally:
        await wait_deferred(service.stopService())
        await redis.aclose()


def heard(client: AsteriskFastAgiClient) -> str:
    return TRANSCRIPT.heard(client)


def id_suffix(phone: str) -> str:
    return SAMPLE_ID_NUMBERS[phone][-6:].replace("X", "*")


@on_asyncio
async def test_status_query_by_booking_number(redis_url: str) -> None:
    """1, the booking number and # read the booking back; the call is recorded, caller masked."""
    async with fastagi(redis_url) as h:
        booking = h.summary.cancellable_booking
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["1", booking + "#", "#"])
        text = heard(client)
        assert "预约号" + "".join("零幺二三四五六七八九"[int(d)] for d in booking) in text  # 1 read 幺
        assert "科目二集美灌口考场" in text and "状态：已预约" in text
        assert text.endswith("感谢您的来电，再见。")
        assert client.hung_up_by_script
        [event] = await h.events()
        assert event["outcome"] == "completed" and event["script"] == "12123"
        assert event["caller"] == "138****8000"
        assert event["path"].split(",")[:4] == ["greeting", "main", "status_gate", "status_identity"]
        assert "status_read" in event["path"]


@on_asyncio
async def test_status_query_by_id_suffix(redis_url: str) -> None:
    """From the phone on record, the last six of the ID number list the person's exams."""
    async with fastagi(redis_url) as h:
        client = await h.call(callerid=SAMPLE_CALLER_UNICOM, inputs=["1", id_suffix(SAMPLE_CALLER_UNICOM) + "#", "#"])
        text = heard(client)
        assert "您共有一个考试预约。" in text
        assert "上午八点半至十点半" in text  # the 08:30-10:30 time slot


@on_asyncio
async def test_successful_cancellation(redis_url: str) -> None:
    """2, booking number, the holder's ID suffix, 1: the booking is read back, cancelled
    atomically, and the SMS queued."""
    async with fastagi(redis_url) as h:
        booking = h.summary.cancellable_booking
        client = await h.call(callerid=SAMPLE_CALLER,
                              inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER), "1", "#"])
        text = heard(client)
        assert "确认取消该考试预约请按1" in text and "该考试预约已取消" in text
        stored = await BookingStore(h.redis, KEYS).get(booking)
        assert stored is not None and stored.status is BookingStatus.CANCELLED
        assert stored.cancelled_via == "voice"
        sms = [f for _, f in await h.redis.xrange(KEYS.notify_stream)]
        assert [f["type"] for f in sms] == ["exam_booking_cancelled"]
        [event] = await h.events()
        assert event["outcome"] == "completed" and "cancel_done" in event["path"]


@on_asyncio
async def test_cancellation_after_deadline(redis_url: str) -> None:
    """After the booking window closed the caller hears: in person, at least a day before."""
    async with fastagi(redis_url) as h:
        booking = h.summary.after_deadline_booking
        client = await h.call(callerid=SAMPLE_CALLER_AFTER_DEADLINE,
                              inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER_AFTER_DEADLINE), "#"])
        text = heard(client)
        stored = await BookingStore(h.redis, KEYS).get(booking)
        assert stored is not None and stored.status is BookingStatus.BOOKED
        assert "该预约已过网上取消的截止时间" in text and "到车管所窗口办理" in text
        assert "确认取消该考试预约请按1" not in text  # told at once, not asked to confirm
        # This year's date, said as callers say it: 十二月五日, without the year.
        assert "即" + chinese_date(stored.exam_date - timedelta(days=1), stored.exam_date) + "，" in text


@on_asyncio
async def test_wrong_identity_reveals_nothing(redis_url: str) -> None:
    """Another person's booking number and an unknown number get the same answer, with no
    detail of either booking, and each costs an attempt."""
    async with fastagi(redis_url) as h:
        someone_elses = await h.call(callerid=SAMPLE_CALLER, inputs=["1", h.summary.slot_booking + "#"])
        unknown = await h.call(callerid=SAMPLE_CALLER, inputs=["1", "20991231999#"])

        def after_entry(client: AsteriskFastAgiClient) -> list[str]:
            names = [p.what for p in client.played if "/pause-" not in p.what]
            return names[names.index("12123/ask_identity") + 1 :][:1]

        assert after_entry(someone_elses) == after_entry(unknown) == ["12123/not_verified"]
        for client in (someone_elses, unknown):
            assert not any("booking_readback" in p.what for p in client.played)
        assert await h.redis.get(KEYS.ivr_attempts(SAMPLE_CALLER)) == "2"


@on_asyncio
async def test_withheld_caller_id_never_verified(redis_url: str) -> None:
    """A withheld caller id cannot pass the identity check, even with a real booking number."""
    async with fastagi(redis_url) as h:
        client = await h.call(callerid="unknown", inputs=["1", h.summary.cancellable_booking + "#"])
        assert "12123/not_verified" in [p.what for p in client.played]


@on_asyncio
async def test_attempts_per_hour_limit(redis_url: str) -> None:
    """After the hour's failed attempts on one booking number from one caller, that pair is
    held (the way forward is told) and its counter expires within the hour; the same
    caller's own booking still verifies (a stranger's guesses do not lock the owner out)."""
    async with fastagi(redis_url, attempts_per_hour=2) as h:
        for _ in range(2):
            await h.call(callerid=SAMPLE_CALLER, inputs=["1", "20991231999#"], hangup_at=lambda i, line: "not_verified" in line)
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["1", "20991231999#"],
                              hangup_at=lambda i, line: "attempts_way_forward" in line)
        names = [p.what for p in client.played]
        assert "12123/attempts_way_forward" in names
        ttl = await h.redis.ttl(KEYS.ivr_attempts_pair(SAMPLE_CALLER, "20991231999"))
        assert 0 < ttl <= 3600
        owner = await h.call(callerid=SAMPLE_CALLER, inputs=["1", h.summary.cancellable_booking + "#", "#"])
        assert any("booking_readback" in p.what for p in owner.played)


@on_asyncio
async def test_three_invalid_entries(redis_url: str) -> None:
    """Three wrong keys at the main menu: a polite goodbye and our HANGUP."""
    async with fastagi(redis_url) as h:
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["7", "8", "5"])
        assert heard(client).endswith("对不起，您的输入有误次数过多。感谢您的来电，再见。")
        assert client.commands[-1] == "HANGUP" and client.hung_up_by_script
        [event] = await h.events()
        assert event["outcome"] == "invalid_input"
        assert metrics.agi_calls.labels(outcome="invalid_input")._value.get() >= 1


@on_asyncio
async def test_hangup_during_readback_cancels_nothing(redis_url: str) -> None:
    """The caller hangs up while the booking is read back: nothing is cancelled, the call is
    recorded as caller_hangup with the path so far."""
    async with fastagi(redis_url) as h:
        booking = h.summary.cancellable_booking
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER), "1"],
                              hangup_at=lambda i, line: "word-" in line)
        stored = await BookingStore(h.redis, KEYS).get(booking)
        assert stored is not None and stored.status is BookingStatus.BOOKED
        assert client.replies[-2:] == ["200 result=-1 endpos=800", "HANGUP"]
        [event] = await h.events()
        assert event["outcome"] == "caller_hangup"
        assert event["path"].endswith("cancel_lookup,cancel_confirm")


@on_asyncio
async def test_hangup_then_dead_channel(redis_url: str) -> None:
    """When Asterisk keeps the socket after HANGUP, the server stops at once and closes it."""
    async with fastagi(redis_url) as h:
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["1"], close_on_hangup=False,
                              hangup_at=lambda i, line: "ask_identity" in line)
        assert client.dead and client.closed
        assert not any(r.startswith("511") for r in client.replies)  # no command after HANGUP
        [event] = await h.events()
        assert event["outcome"] == "caller_hangup"


@on_asyncio
async def test_keys_typed_during_prompts_are_kept(redis_url: str) -> None:
    """Keys pressed during the greeting and the identity prompt are all used: the menu prompt
    is skipped and the booking number arrives whole."""
    async with fastagi(redis_url) as h:
        booking = h.summary.cancellable_booking
        client = await h.call(callerid=SAMPLE_CALLER, inputs=[
            CallerInput("1", barge_in=True), CallerInput(booking + "#", barge_in=True), "#",
        ])
        names = [p.what for p in client.played]
        assert names[0] == "12123/welcome" and client.played[0].interrupted_by == "1"
        assert "12123/main_menu" not in names
        assert any(c == 'GET DATA "" 8000 19' for c in client.commands)
        assert "状态：已预约" in heard(client)


@on_asyncio
async def test_transfer_to_agents_within_hours(redis_url: str) -> None:
    """0 within the service hours sets the queue for the dialplan and closes the AGI socket."""
    async with fastagi(redis_url, service_hours="00:00-00:00") as h:
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["0"])
        assert client.variables == {"IVR_TRANSFER_QUEUE": "12123-agents"}
        assert not client.hung_up_by_script and client.closed
        [event] = await h.events()
        assert event["outcome"] == "transferred"


@on_asyncio
async def test_transfer_outside_hours_tells_the_hours(redis_url: str) -> None:
    """0 outside the service hours: the hours are spoken and no transfer happens."""
    local = from_unix(reactor.seconds())
    start = (local + timedelta(hours=2)).strftime("%H:%M")
    end = (local + timedelta(hours=3)).strftime("%H:%M")
    async with fastagi(redis_url, service_hours=f"{start}-{end}") as h:
        client = await h.call(callerid=SAMPLE_CALLER, inputs=["0", "7", "7", "7"])
        assert "人工服务时间为每天" in heard(client)
        assert "IVR_TRANSFER_QUEUE" not in client.variables


@on_asyncio
async def test_reminder_call_records_heard(redis_url: str) -> None:
    """The notify script reads the notification, speaks it without the name, sets
    REMINDER_HEARD=1, and records heard=1 on call:<id> and as an event."""
    async with fastagi(redis_url) as h:
        await h.redis.hset(KEYS.notification("n-42"), mapping={
            "type": "exam_booking_confirmed", "to": SAMPLE_CALLER,
            "params": '{"name": "林晓燕", "subject": "科目二", "date": "2026-12-07", "session": "上午", '
                      '"site": "集美灌口考场", "booking_no": "20261207001"}',
        })
        await h.redis.hset(KEYS.voice_reminder("n-42"), mapping={"to": SAMPLE_CALLER, "state": "calling",
                                                                  "action_id": "rem-n-42-1"})
        await h.redis.hset(KEYS.call("rem-n-42-1"), mapping={"state": "answered", "notification_id": "n-42"})
        client = await h.call("notify", callerid="12123", arguments=["n-42"], inputs=[""])
        text = heard(client)
        assert text.startswith("您好，这里是交管12123，现在为您播报一条提醒。您已成功预约科目二考试，考试时间为十二月七日上午")
        assert "按缺考处理，科目二和科目三还将占用一次预约考试机会。" in text  # the cost of a no-show
        assert "林" not in text
        assert client.variables["REMINDER_HEARD"] == "1"
        assert all(p.interrupted_by is None for p in client.played)
        assert await h.redis.hget(KEYS.voice_reminder("n-42"), "heard") == "1"
        assert await h.redis.hget(KEYS.call("rem-n-42-1"), "heard") == "1"
        [reminder] = await h.events("ivr.reminder")
        assert reminder["notification"] == "n-42" and reminder["heard"] == "1"


@on_asyncio
async def test_reminder_hung_up_is_not_heard(redis_url: str) -> None:
    """A reminder cut short by the callee is recorded as not heard."""
    async with fastagi(redis_url) as h:
        await h.redis.hset(KEYS.notification("n-43"), mapping={"type": "points_reached_9", "params": '{"points": "9"}'})
        await h.redis.hset(KEYS.voice_reminder("n-43"), mapping={"to": SAMPLE_CALLER, "state": "calling"})
        client = await h.call("notify", arguments=["n-43"], hangup_at=lambda i, line: "reminder_points" in line)
        assert "REMINDER_HEARD" not in client.variables
        assert await h.redis.hget(KEYS.voice_reminder("n-43"), "heard") == "0"
        assert not await h.redis.exists(KEYS.call("n-43"))  # no stray hash without an ActionID
        [event] = await h.events()
        assert event["outcome"] == "caller_hangup" and event["script"] == "notify"


@on_asyncio
@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                    reason="needs espeak-ng and sox (apt-get install espeak-ng sox)")
async def test_reminder_without_wording_is_read_from_its_text(redis_url: str, tmp_path: Path) -> None:
    """A reminder type without pre-built wording is synthesised from the voice text for the
    call, played, and its file deleted afterwards."""
    async with fastagi(redis_url, sounds_dir=str(tmp_path)) as h:
        text = "您的闽D6F220号牌机动车有违法停车的交通违法行为，请及时处理。"
        await h.redis.hset(KEYS.notification("n-44"), mapping={"type": "camera_violation", "params": "{}"})
        await h.redis.hset(KEYS.voice_reminder("n-44"), mapping={"to": SAMPLE_CALLER, "text": text})
        clip = speech_clip(text)
        sound = tmp_path / "12123" / f"{clip.name}.wav"
        existed_when_played: list[bool] = []

        def watch(index: int, line: str) -> bool:
            if clip.name in line:
                existed_when_played.append(sound.is_file())
            return False

        client = await h.call("notify", arguments=["n-44"], inputs=[""], hangup_at=watch)
        assert f"12123/{clip.name}" in [p.what for p in client.played]
        assert existed_when_played == [True]
        assert client.variables["REMINDER_HEARD"] == "1"
        assert not sound.exists()


@on_asyncio
async def test_hundred_calls_at_once(redis_url: str) -> None:
    """A hundred simultaneous status queries all complete with their own answer."""
    # One caller number makes all hundred calls: each check takes an attempt before it is
    # refunded, so the hourly allowance must cover a hundred checks in flight at once.
    async with fastagi(redis_url, attempts_per_hour=1000, attempts_per_booking_per_day=1000,
                       attempts_per_caller_per_hour=1000, enumeration_failures_per_minute=1000) as h:
        booking = h.summary.cancellable_booking
        calls = [
            place_call(reactor, h.port, "12123", callerid=SAMPLE_CALLER, uniqueid=f"1764460800.{n}",
                       inputs=["1", booking + "#", "#"])
            for n in range(100)
        ]
        results = await wait_deferred(DeferredList(calls, fireOnOneErrback=True, consumeErrors=True))
        await wait_deferred(h.service.when_idle())
        clients = [client for _, client in results]
        bad = [heard(c) for c in clients if not (heard(c).endswith("感谢您的来电，再见。") and "状态：已预约" in heard(c))]
        assert not bad, (len(bad), bad[:1])
        events = await h.events()
        assert len(events) == 100 and {e["outcome"] for e in events} == {"completed"}
        assert len({e["uniqueid"] for e in events}) == 100


@on_asyncio
async def test_unknown_script_is_closed_and_recorded(redis_url: str) -> None:
    """A script we do not serve gets its socket closed; the call is recorded."""
    async with fastagi(redis_url) as h:
        client = await h.call("nonsense")
        assert client.commands == [] and client.closed
        [event] = await h.events()
        assert event["outcome"] == "unknown_script"
        with_query = await h.call("12123?source=test", inputs=["7", "7", "7"])
        assert with_query.commands[0] == "ANSWER"


def _offline_service(clock: Clock) -> FastAgiService:
    # A client that is never used: these tests end before any action or record.
    return FastAgiService(IvrConfig(), lambda: BOOK, make_client("redis://127.0.0.1:1"), KEYS, clock)


def _connect(service: FastAgiService, environment: bytes) -> tuple[FastAgiProtocol, StringTransport]:
    protocol = FastAgiProtocol(service)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(environment)
    return protocol, transport


def test_reload_keeps_running_calls_on_their_menus() -> None:
    """After reload(), a call in progress keeps its menus and a new call gets the new ones."""
    data = yaml.safe_load(IVR_YAML.read_text(encoding="utf-8"))
    data["prompts"]["hello"] = "新年好，这里是交管12123。"
    data["menus"]["12123"]["nodes"]["greeting"]["prompts"] = ["hello"]
    new_book = parse_menus(data, source="new.yaml", actions=CATALOGUE)
    service = _offline_service(Clock())
    environment = b"agi_network: yes\nagi_network_script: 12123\nagi_callerid: 13800138000\n\n"

    old_call, old_transport = _connect(service, environment)
    assert service.reload(new_book)
    new_call, new_transport = _connect(service, environment)
    for protocol, transport in ((old_call, old_transport), (new_call, new_transport)):
        assert transport.value() == b"ANSWER\n"
        transport.clear()
        protocol.dataReceived(b"200 result=0\n")
    assert old_transport.value() == b'STREAM FILE 12123/welcome "0123456789*#"\n'
    assert new_transport.value() == b'STREAM FILE 12123/hello "0123456789*#"\n'


def test_failed_reload_keeps_the_menus() -> None:
    """reload() without menus asks the provider; a ConfigError keeps the old menus."""
    books = iter([BOOK])

    def provider() -> MenuBook:
        try:
            return next(books)
        except StopIteration:
            raise ConfigError(["ivr.yaml: menus: broken"]) from None

    service = FastAgiService(IvrConfig(), provider, make_client("redis://127.0.0.1:1"), KEYS, Clock())
    assert not service.reload()
    assert service.menus is BOOK


def test_header_timeout_closes_silent_client() -> None:
    """A client that never completes the environment is disconnected after the timeout."""
    clock = Clock()
    _, transport = _connect(_offline_service(clock), b"agi_network: yes\n")
    clock.advance(HEADER_TIMEOUT_SECONDS - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


@on_asyncio
async def test_protocol_error_closes_connection(redis_url: str) -> None:
    """A reply outside the AGI grammar closes the connection and is recorded."""
    async with fastagi(redis_url) as h:
        protocol, transport = _connect(h.service, b"agi_network: yes\nagi_network_script: 12123\n\n")
        assert transport.value() == b"ANSWER\n"
        protocol.dataReceived(b"OK fine\n")
        assert transport.disconnecting
        await wait_deferred(h.service.when_idle())
        [event] = await h.events()
        assert event["outcome"] == "protocol_error"


@on_asyncio
async def test_hangup_without_reply_ends_call_after_grace(redis_url: str, tmp_path: Any) -> None:
    """HANGUP while a command is outstanding and no reply after it: the call is ended and
    recorded once the grace period passes."""
    clock = Clock()
    redis = make_client(redis_url)
    try:
        service = FastAgiService(IvrConfig(sounds_dir=str(tmp_path)), lambda: BOOK, redis, KEYS, clock)
        protocol, transport = _connect(service, b"agi_network: yes\nagi_network_script: 12123\n\n")
        protocol.dataReceived(b"200 result=0\n")
        assert transport.value().endswith(b'STREAM FILE 12123/welcome "0123456789*#"\n')
        protocol.dataReceived(b"HANGUP\n")
        clock.advance(HANGUP_GRACE_SECONDS - 0.5)
        assert not transport.disconnecting
        clock.advance(1)
        assert transport.disconnecting
        await wait_deferred(service.when_idle())
        [event] = [f for _, f in await redis.xrange(KEYS.events_stream)]
        assert event["outcome"] == "caller_hangup" and event["path"] == "greeting"
    finally:
        await redis.aclose()


@on_asyncio
async def test_a_step_of_the_fleet_clock_mid_call_does_not_lengthen_the_call(redis_url: str, tmp_path: Any) -> None:
    """The call's duration is measured on the steady clock: the fleet clock stepping an
    hour mid-call (Redis failed over to a replica whose host's clock is off) moves when the
    call is said to start and end, not how long it lasted (3605.0 s before)."""
    host = Clock()
    host.advance(time.time())
    redis = make_client(redis_url)
    try:
        fleet = FleetClock(redis, KEYS.partition_members, host)
        assert await fleet.sync_once()
        service = FastAgiService(IvrConfig(sounds_dir=str(tmp_path)), lambda: BOOK, redis, KEYS, fleet)
        protocol, transport = _connect(service, b"agi_network: yes\nagi_network_script: 12123\nagi_uniqueid: 1.1\n\n")
        started = fleet.seconds()
        protocol.dataReceived(b"200 result=0\n")
        host.advance(5)
        fleet.offset += 3600  # what the next measurement finds after such a failover
        protocol.dataReceived(b"HANGUP\n200 result=-1\n")
        await wait_deferred(service.when_idle())
        [event] = [f for _, f in await redis.xrange(KEYS.events_stream)]
        assert event["outcome"] == "caller_hangup"
        assert event["duration_seconds"] == "5.0"
        assert abs(int(event["at"]) - (started + 5)) <= 1
    finally:
        await redis.aclose()


@on_asyncio
async def test_violation_query_by_phone(redis_url: str) -> None:
    """5 and the ID number's last six from the phone on record: the violations still to
    handle and the points, read from the person's record (violations_pending, points)."""
    async with fastagi(redis_url) as h:
        client = await h.call(callerid=SAMPLE_CALLER_NINE_POINTS,
                              inputs=["5", id_suffix(SAMPLE_CALLER_NINE_POINTS), "#"])
        text = heard(client)
        assert "查询未处理的交通违法请按5" in text
        assert "您有两起交通违法未处理，驾驶证本记分周期累积记分九分。" in text
        other = await h.call(callerid=SAMPLE_CALLER_NINE_POINTS, inputs=["5", "000000", "#"])
        assert "您有两起" not in heard(other) and "12123/not_verified" in [p.what for p in other.played]


@on_asyncio
async def test_user_class_rights_by_phone(redis_url: str) -> None:
    """A learner (exam matters only, seed 001) verified by phone may hear their bookings
    but not their points or violations: they are told where to go instead."""
    async with fastagi(redis_url) as h:
        for choice in ("3", "5"):
            client = await h.call(callerid=SAMPLE_CALLER_UNICOM,
                                  inputs=[choice, id_suffix(SAMPLE_CALLER_UNICOM), "#"])
            assert "您的用户类型不能通过电话办理该业务" in heard(client), choice
        bookings = await h.call(callerid=SAMPLE_CALLER_UNICOM,
                                inputs=["1", id_suffix(SAMPLE_CALLER_UNICOM) + "#", "#"])
        assert "您共有" in heard(bookings)


@on_asyncio
async def test_call_still_going_when_the_drain_ends_is_interrupted_by_shutdown(redis_url: str, tmp_path: Any) -> None:
    """stopService lets calls go on for the drain time; one still going then is cut and
    recorded interrupted_by_shutdown, not caller_hangup."""
    import asyncio

    redis = make_client(redis_url)
    config = IvrConfig(fastagi=FastAgiConfig(listen="127.0.0.1:0"), sounds_dir=str(tmp_path))
    service = FastAgiService(config, lambda: BOOK, redis, KEYS, reactor, drain_timeout_seconds=0.5)
    service.startService()
    assert service.listening_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", service.listening_port.getHost().port)
    try:
        writer.write(b"agi_network: yes\nagi_network_script: 12123\nagi_uniqueid: 1764460800.9\n"
                     b"agi_callerid: 13800138000\n\n")
        await writer.drain()
        assert await reader.readline() == b"ANSWER\n"  # and then the "caller" stays silent
        await wait_deferred(service.stopService())
        [event] = [f for _, f in await redis.xrange(KEYS.events_stream) if f.get("type") == "ivr.call"]
        assert event["outcome"] == "interrupted_by_shutdown" and event["uniqueid"] == "1764460800.9"
    finally:
        writer.close()
        await redis.aclose()
