"""Voice reminders end to end: the real redis-server, the AMI server peer, our AMI client."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from typing import Any

import pytest
import pytest_twisted
from redis.asyncio import Redis
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from gateway.ivr.ami_client import AmiClientService
from gateway.ivr.reminders import ReminderOptions, VoiceReminders, action_id_for, quiet_until
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.peers.ami_server import AmiServer, AmiUser, Outcome, default_user, listen

try:
    from gateway.push.state import NotificationLedger
except ImportError:  # pragma: no cover - only while the push pipeline is not in the tree
    NotificationLedger = None  # type: ignore[assignment,misc]

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
NOON = dt.datetime(2026, 3, 2, 12, 0, tzinfo=SHANGHAI).timestamp()
LATE_EVENING = dt.datetime(2026, 3, 2, 23, 0, tzinfo=SHANGHAI).timestamp()
NEXT_MORNING = dt.datetime(2026, 3, 3, 8, 0, tzinfo=SHANGHAI).timestamp()
NUMBER = "13800138000"

pytestmark = pytest.mark.skipif(NotificationLedger is None, reason="gateway.push.state not in the tree")


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    """AMI server peer + AmiClientService + VoiceReminders on one Redis database."""

    def __init__(self, redis_url: str, **options: Any) -> None:
        self.keys = Keys()
        self.redis = Redis.from_url(redis_url, decode_responses=True)
        self.server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=reactor)
        self.port = listen(self.server, reactor)
        self.wall = WallClock(NOON)
        self.ami = AmiClientService(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
            username="gateway12123", secret="s3cret", clock=reactor, md5_challenge=True,
            reconnect_initial_seconds=0.01, reconnect_max_seconds=0.05, jitter=lambda: 0.0)
        self.ledger = NotificationLedger(self.redis, self.keys, retention_seconds=86400)
        settings: dict[str, Any] = dict(read_block_ms=50, retry_delay_seconds=0.0, reconcile_grace_seconds=0.05)
        settings.update(options)
        self.options = ReminderOptions(**settings)
        self.reminders = self.new_reminders()

    def new_reminders(self) -> VoiceReminders:
        return VoiceReminders(self.redis, self.keys, self.ami, self.ledger, self.options, clock=reactor,
                              wall_clock=self.wall)

    async def start(self) -> None:
        self.ami.startService()
        await wait_deferred(self.ami.whenConnected(failAfterFailures=1))
        self.reminders.startService()

    async def stop(self) -> None:
        if self.reminders.running:
            await wait_deferred(self.reminders.stopService())
        if self.ami.running:
            await wait_deferred(self.ami.stopService())
        await wait_deferred(self.port.stopListening())
        await self.redis.aclose()

    async def notification(self, notification_id: str) -> None:
        """The notification as the pipeline left it when it handed over to voice."""
        await self.redis.hset(self.keys.notification(notification_id),
                              mapping={"type": "exam_reminder", "state": "submitted", "channel": "voice"})

    async def request(self, notification_id: str, to: str = NUMBER, not_before: float = 0,
                      text: str = "您预约的科目二考试将于明天8点30分开始。") -> None:
        await self.notification(notification_id)
        await self.redis.xadd(self.keys.voice_requests, {"id": notification_id, "to": to, "text": text,
                                                         "not_before": str(not_before)})

    async def state(self, notification_id: str) -> dict[str, str]:
        return await self.redis.hgetall(self.keys.notification(notification_id))

    def originates(self, notification_id: str) -> list[Any]:
        return self.server.originates_with("NOTIFICATION_ID", notification_id)


async def wait(d: Deferred[Any], seconds: float = 20.0) -> Any:
    # Generous: the suite shares 2 cores with other work (a 5 s wait timed out at load 9).
    # A positive event only; a test that needs "not before X" passes its own limit.
    return await wait_deferred(d.addTimeout(seconds, reactor))


@pytest.fixture
def harness_factory(redis_url):
    """Makes harnesses for one test and stops them after it, passed or failed."""
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        made.append(Harness(redis_url, **options))
        return made[-1]

    yield make
    for harness in made:
        pytest_twisted.blockon(as_deferred(harness.stop()))


def test_quiet_until_spans_midnight():
    """Quiet hours 22:00-08:00 hold 23:00 and 07:59 until 08:00; noon and 08:00 are free."""
    def q(t: float) -> float:
        return quiet_until(t, "22:00", "08:00", "Asia/Shanghai")
    assert q(LATE_EVENING) == NEXT_MORNING
    assert q(NEXT_MORNING - 60) == NEXT_MORNING
    assert q(NEXT_MORNING) == 0.0
    assert q(NOON) == 0.0
    assert quiet_until(NOON, "08:00", "08:00", "Asia/Shanghai") == 0.0


@on_asyncio
async def test_answered_and_heard_is_delivered(harness_factory):
    """A call answered and heard makes the notification delivered; one Originate as configured."""
    h = harness_factory()
    await h.start()
    finished = h.reminders.when_finished("n1")
    await h.request("n1")
    assert await wait(finished) == "heard"
    state = await h.state("n1")
    assert (state["state"], state["channel"], state["call_outcome"]) == ("delivered", "voice", "heard")
    (originate,) = h.originates("n1")
    assert originate.action_id == action_id_for("n1", 1) == "rem-n1-1"
    assert originate.get("Channel") == f"PJSIP/{NUMBER}@carrier-trunk"
    assert (originate.get("Context"), originate.get("Exten"), originate.get("Priority")) == ("12123-reminder", "s", "1")
    assert (originate.get("CallerID"), originate.get("Timeout"), originate.get("Async")) == ("12123", "30000", "true")
    assert originate.get_all("Variable") == ["NOTIFICATION_ID=n1"]
    assert originate.get("ChannelId") == "rem-n1-1"  # the channel's Uniqueid: its Hangup is ours
    call = await h.redis.hgetall(h.keys.call("rem-n1-1"))
    assert (call["state"], call["outcome"], call["reported"]) == ("finished", "heard", "1")
    assert call["uniqueid"]
    assert await h.redis.zcard(h.keys.voice_calls_open) == 0
    assert await h.redis.xlen(h.keys.voice_requests) == 0  # acknowledged and deleted


@pytest.mark.parametrize(("outcome", "call_outcome", "error"), [
    (Outcome.BUSY, "busy", "busy"),
    (Outcome.NO_ANSWER, "no_answer", "no_answer"),
    (Outcome.ANSWER_NOT_HEARD, "not_heard", "not_heard"),
    (Outcome.CONGESTION, "congestion", "failed"),
    (Outcome.FAILED, "failed", "failed"),
    (Outcome.BUSY_SIGNAL, "busy", "busy"),
    (Outcome.RING_TIMEOUT, "no_answer", "no_answer"),
])
@on_asyncio
async def test_unsuccessful_calls_fail_the_notification_without_calling_again(harness_factory, outcome,
                                                                              call_outcome, error):
    """Busy, no answer, hung up unheard, congestion, failure: failed(error), and one call only."""
    h = harness_factory()
    h.server.script(NUMBER, outcome)
    await h.start()
    finished = h.reminders.when_finished("n2")
    await h.request("n2")
    assert await wait(finished) == call_outcome
    state = await h.state("n2")
    assert (state["state"], state["error"], state["call_outcome"]) == ("failed", error, call_outcome)
    assert len(h.originates("n2")) == 1


@on_asyncio
async def test_heard_by_varset_when_the_user_may_read_dialplan_events(harness_factory):
    """With read=dialplan, the AGI's VarSet REMINDER_HEARD=1 alone ends the call as heard."""
    h = harness_factory()
    user = default_user("s3cret")
    h.server.users["gateway12123"] = AmiUser(secret="s3cret", read=user.read | {"dialplan"}, write=user.write)
    h.server.script(NUMBER, Outcome.ANSWER_HEARD, heard_signal="varset")
    await h.start()
    finished = h.reminders.when_finished("n3")
    await h.request("n3")
    assert await wait(finished) == "heard"


@on_asyncio
async def test_varset_is_not_delivered_with_the_shipped_manager_conf(harness_factory):
    """With manager.conf's read=call,user the VarSet never arrives: hung up counts as not heard."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.ANSWER_HEARD, heard_signal="varset")
    await h.start()
    finished = h.reminders.when_finished("n4")
    await h.request("n4")
    assert await wait(finished) == "not_heard"


@on_asyncio
async def test_quiet_hours_hold_the_call_until_they_end(harness_factory):
    """A request at 23:00 is held, not called, until 08:00; then it is called."""
    h = harness_factory()
    h.wall.now = LATE_EVENING
    await h.start()
    recorded = h.reminders.when_recorded("n5")
    finished = h.reminders.when_finished("n5")
    await h.request("n5")
    assert await wait(recorded) == NEXT_MORNING
    assert await wait_deferred(h.reminders.dispatch()) == 0
    assert await h.redis.zscore(h.keys.voice_due, "n5") == NEXT_MORNING
    assert h.originates("n5") == []
    h.wall.now = NEXT_MORNING + 1
    await wait_deferred(h.reminders.dispatch())
    assert await wait(finished) == "heard"
    assert len(h.originates("n5")) == 1


@on_asyncio
async def test_not_before_in_the_future_is_respected(harness_factory):
    """not_before later than now holds the call until then."""
    h = harness_factory()
    await h.start()
    recorded = h.reminders.when_recorded("n6")
    await h.request("n6", not_before=NOON + 3600)
    assert await wait(recorded) == NOON + 3600
    assert await wait_deferred(h.reminders.dispatch()) == 0
    assert h.originates("n6") == []


@on_asyncio
async def test_concurrent_calls_are_capped(harness_factory):
    """With max_concurrent_calls=2 a third reminder waits until a call ends."""
    h = harness_factory(max_concurrent_calls=2)
    numbers = {"c0": "13800000001", "c1": "13800000002", "c2": "13800000003"}
    for number in numbers.values():
        h.server.script(number, Outcome.ANSWER_HEARD, hold="ringing")
    await h.start()
    recorded = [h.reminders.when_recorded(i) for i in numbers]
    finished = {i: h.reminders.when_finished(i) for i in numbers}
    for notification_id, number in numbers.items():
        await h.request(notification_id, to=number)
    for waiter in recorded:
        await wait(waiter)
    await wait(h.server.wait_for_originates(2))
    assert await wait_deferred(h.reminders.dispatch()) == 0
    assert len(h.server.originates) == 2 and h.reminders.open_calls == 2
    first = h.server.originates[0].variables()["NOTIFICATION_ID"]
    h.server.proceed(numbers[first])
    assert await wait(finished[first]) == "heard"
    await wait(h.server.wait_for_originates(3))
    # The peer places a call just after answering its Originate (callLater 0): wait until
    # the third is held too, or it would never be let through (seen on a loaded machine).
    deadline = reactor.seconds() + 20
    while len(h.server.held()) < 2 and reactor.seconds() < deadline:
        await asyncio.sleep(0.01)
    for number in h.server.held():
        h.server.proceed(number)
    assert [await wait(w) for i, w in finished.items() if i != first] == ["heard", "heard"]
    assert len(h.server.originates) == 3


@on_asyncio
async def test_disconnect_after_originate_is_reconciled_not_resent(harness_factory):
    """The session drops before the Originate response: the call is found by Status, adopted, delivered; one Originate."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.ANSWER_HEARD, drop_before_response=True, hold="ringing")
    await h.start()
    finished = h.reminders.when_finished("n7")
    status = h.server.wait_for_action("Status")
    await h.request("n7")
    await wait(status)  # reconnected, logged in and asked which channels exist
    call = await h.redis.hgetall(h.keys.call("rem-n7-1"))
    assert call["state"] in ("originating", "ringing")
    h.server.proceed(NUMBER)
    assert await wait(finished) == "heard"
    assert len(h.originates("n7")) == 1
    assert len(h.server.actions_named("Login")) == 2
    assert (await h.state("n7"))["state"] == "delivered"


@on_asyncio
async def test_call_answered_while_disconnected_is_adopted_by_its_channel(harness_factory):
    """Answered during the outage: Status finds it Up, and its Hangup (by Uniqueid) ends it as not heard."""
    h = harness_factory(reconcile_grace_seconds=30.0)
    h.server.script(NUMBER, Outcome.ANSWER_NOT_HEARD, drop_before_response=True, hold="answered")
    await h.start()
    finished = h.reminders.when_finished("n13")
    status = h.server.wait_for_action("Status")
    await h.request("n13")
    await wait(status)
    assert h.server.held() == [NUMBER]  # answered while we were away; OriginateResponse missed
    h.server.proceed(NUMBER)
    assert await wait(finished, 3.0) == "not_heard"
    assert len(h.originates("n13")) == 1
    call = await h.redis.hgetall(h.keys.call("rem-n13-1"))
    assert call["answered_at"] and call["uniqueid"] == "rem-n13-1"  # the ChannelId it was given


@on_asyncio
async def test_disconnect_and_call_found_nowhere_is_unknown_and_never_resent(harness_factory):
    """Dropped before the response and no channel appears: outcome unknown, failed, no second Originate."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.REJECT, drop_before_response=True)  # read, dropped, never placed
    await h.start()
    finished = h.reminders.when_finished("n8")
    await h.request("n8")
    assert await wait(finished) == "unknown"
    state = await h.state("n8")
    assert (state["state"], state["call_outcome"]) == ("failed", "unknown")
    assert len(h.originates("n8")) == 1
    assert len(h.server.actions_named("Status")) == 2  # looked twice, grace in between
    assert await wait_deferred(h.reminders.dispatch()) == 0
    assert len(h.originates("n8")) == 1


@on_asyncio
async def test_refused_originate_is_retried_until_the_attempts_run_out(harness_factory):
    """Response: Error means never placed: retried with a new ActionID, then failed(not_placed)."""
    h = harness_factory(max_originate_attempts=2)
    h.server.script(NUMBER, Outcome.REJECT)
    await h.start()
    finished = h.reminders.when_finished("n9")
    await h.request("n9")
    assert await wait(finished) == "not_placed"
    assert [o.action_id for o in h.originates("n9")] == ["rem-n9-1", "rem-n9-2"]
    state = await h.state("n9")
    assert (state["state"], state["error"], state["call_outcome"]) == ("failed", "failed", "not_placed")


@on_asyncio
async def test_the_same_request_twice_makes_one_call(harness_factory):
    """A voice request repeated with the same id (pipeline retry, XAUTOCLAIM) is called once."""
    h = harness_factory()
    await h.start()
    finished = h.reminders.when_finished("n10")
    await h.request("n10")
    await h.request("n10")
    assert await wait(finished) == "heard"
    await wait_deferred(h.reminders.dispatch())
    assert len(h.originates("n10")) == 1


@on_asyncio
async def test_invalid_request_fails_the_notification_without_a_call(harness_factory):
    """A voice request without a usable number fails its notification and places no call."""
    h = harness_factory()
    await h.start()
    finished = h.reminders.when_finished("n11")
    await h.request("n11", to="not-a-number")
    assert await wait(finished) == "failed"
    assert (await h.state("n11"))["state"] == "failed"
    assert h.originates("n11") == []


@on_asyncio
async def test_restart_with_a_call_in_progress_adopts_it(harness_factory):
    """After a restart the open call is loaded from Redis, found by Status and finished; one Originate."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.ANSWER_HEARD, hold="ringing")
    await h.start()
    await h.request("n12")
    await wait(h.server.wait_for_originates(1))
    h.server.drop_sessions()  # the old process is gone, so is its session
    await wait_deferred(h.reminders.stopService())  # still ringing: left open, not interrupted
    h.reminders = h.new_reminders()
    finished = h.reminders.when_finished("n12")
    status = h.server.wait_for_action("Status")
    h.reminders.startService()
    await wait(status)
    h.server.proceed(NUMBER)
    assert await wait(finished) == "heard"
    assert len(h.originates("n12")) == 1


@on_asyncio
async def test_the_service_built_from_config_calls_and_reports(redis_url):
    """build_voice_reminders (what gateway/app.py adds as `ami`) logs in with MD5 and delivers a reminder."""
    from gateway.config import AmiConfig, Config, PushConfig, QuietHours, Secret
    from gateway.ivr.reminders import build_voice_reminders

    keys = Keys()
    redis = Redis.from_url(redis_url, decode_responses=True)
    server = AmiServer(users={"gateway12123": default_user("s3cret")}, clock=reactor)
    port = listen(server, reactor)
    config = Config(ami=AmiConfig(enabled=True, port=port.getHost().port, secret=Secret("s3cret")),
                    push=PushConfig(quiet_hours=QuietHours(start="00:00", end="00:00")))  # real clock: no quiet hours
    service = build_voice_reminders(config, redis, keys, reactor)
    assert service.name == "ami"
    service.startService()
    try:
        await wait_deferred(service.client.whenConnected(failAfterFailures=1))
        finished = service.reminders.when_finished("b1")
        await redis.hset(keys.notification("b1"), mapping={"type": "exam_reminder", "state": "submitted"})
        await redis.xadd(keys.voice_requests, {"id": "b1", "to": NUMBER, "text": "提醒", "not_before": "0"})
        assert await wait(finished) == "heard"
        assert [a.name for a in server.actions[:2]] == ["Challenge", "Login"]
    finally:
        await wait_deferred(service.stopService())
        await wait_deferred(port.stopListening())
        await redis.aclose()


def test_outcome_of_an_unanswered_call_prefers_the_hangup_cause():
    """The Hangup cause says why when it can (Asterisk 22 gives Reason 0 for busy and
    unanswered callees); 0 and 16 say nothing, and then the Reason decides."""
    from gateway.ivr.reminders import CallOutcome, outcome_of_unanswered

    assert outcome_of_unanswered("17", "0") is CallOutcome.BUSY
    assert outcome_of_unanswered("19", "0") is CallOutcome.NO_ANSWER
    assert outcome_of_unanswered("21", "0") is CallOutcome.NO_ANSWER
    assert outcome_of_unanswered("34", "0") is CallOutcome.CONGESTION
    assert outcome_of_unanswered("0", "5") is CallOutcome.BUSY
    assert outcome_of_unanswered("16", "3") is CallOutcome.NO_ANSWER
    assert outcome_of_unanswered("", "0") is CallOutcome.FAILED
    assert outcome_of_unanswered("1", "0") is CallOutcome.FAILED


@on_asyncio
async def test_stop_lets_a_call_in_progress_finish_within_the_voice_drain(harness_factory):
    """SIGTERM during a reminder call: the call goes on and its outcome is recorded."""
    h = harness_factory(voice_drain_seconds=10.0)
    h.server.script(NUMBER, Outcome.ANSWER_HEARD, hold="answered")
    await h.start()
    finished = h.reminders.when_finished("n30")
    await h.request("n30")
    await wait(h.server.wait_for_originates(1))
    while h.server.held() != [NUMBER]:
        await asyncio.sleep(0.05)
    stopping = h.reminders.stopService()
    await asyncio.sleep(0.3)
    h.server.proceed(NUMBER)
    assert await wait(finished) == "heard"
    await wait_deferred(stopping)
    assert (await h.state("n30"))["state"] == "delivered"


@on_asyncio
async def test_a_call_cut_by_the_end_of_the_voice_drain_is_interrupted_by_shutdown(harness_factory):
    """Still in progress when the voice drain ends: recorded interrupted_by_shutdown, not
    not_heard (the citizen did nothing wrong)."""
    h = harness_factory(voice_drain_seconds=0.5)
    h.server.script(NUMBER, Outcome.ANSWER_NOT_HEARD, hold="answered")
    await h.start()
    finished = h.reminders.when_finished("n31")
    await h.request("n31")
    while h.server.held() != [NUMBER]:
        await asyncio.sleep(0.05)
    await wait_deferred(h.reminders.stopService())
    assert await wait(finished) == "interrupted_by_shutdown"
    state = await h.state("n31")
    assert (state["state"], state["error"], state["call_outcome"]) == (
        "failed", "interrupted_by_shutdown", "interrupted_by_shutdown")


@on_asyncio
async def test_busy_is_recognised_when_the_hangup_comes_after_the_originate_response(harness_factory):
    """OriginateResponse Failure (Reason 0) first, the Hangup (Cause 17) 0.3 s later: the
    gateway waits for the cause instead of recording failed."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.BUSY, hangup_after_response=True)
    await h.start()
    finished = h.reminders.when_finished("n32")
    await h.request("n32")
    assert await wait(finished) == "busy"
    call = await h.redis.hgetall(h.keys.call("rem-n32-1"))
    assert (call["reason"], call["cause"]) == ("0", "17")


@on_asyncio
async def test_hangup_of_a_call_whose_agi_the_drain_cut_is_interrupted_not_unheard(harness_factory):
    """The FastAGI server cut this call's AGI at shutdown (cut_by_shutdown, wired by app.py):
    the Hangup that follows is the gateway's doing."""
    h = harness_factory()
    h.server.script(NUMBER, Outcome.ANSWER_NOT_HEARD, hold="answered")
    await h.start()
    h.reminders.cut_by_shutdown = lambda uniqueid: uniqueid == "rem-n33-1"
    finished = h.reminders.when_finished("n33")
    await h.request("n33")
    while h.server.held() != [NUMBER]:
        await asyncio.sleep(0.05)
    h.server.proceed(NUMBER)
    assert await wait(finished) == "interrupted_by_shutdown"
