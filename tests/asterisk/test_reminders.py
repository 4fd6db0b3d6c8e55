"""Voice reminders through the real Asterisk: the gateway's AMI Originate over Local channels
to scripted callees (tests/asterisk/ring.py: [ring-callees])."""

from __future__ import annotations

from typing import Any

import pytest

from tests.asterisk.conftest import KEYS, redis_client, wait_for
from tests.asterisk.ring import CALLEES, AmiDriver

pytestmark = pytest.mark.asterisk


@pytest.fixture(scope="module")
def gateway(start_gateway: Any) -> Any:
    return start_gateway("Local/{number}@ring-callees")


def remind(gateway: Any, notification_id: str, callee: str) -> dict[str, Any]:
    """POST a voice notification; wait for its final state; returns the GET view."""
    status, body = gateway.post("/v1/notifications", {
        "id": notification_id, "type": "verification_code", "to": CALLEES[callee],
        "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
    assert status == 202, body

    def final() -> Any:
        code, view = gateway.get(f"/v1/notifications/{notification_id}", token="test-token")
        return view if code == 200 and view.get("state") in ("delivered", "failed") else None

    return wait_for(final, 60, f"the outcome of {notification_id}")


def call_record(gateway: Any, notification_id: str) -> dict[str, str]:
    client = redis_client(gateway.config["redis"]["url"])
    try:
        return client.hgetall(KEYS.call(f"rem-{notification_id}-1"))
    finally:
        client.close()


def test_reminder_heard(gateway: Any, driver: AmiDriver) -> None:
    start = driver.mark()
    view = remind(gateway, "ring-heard-1", "listener")
    with driver._cond:
        commands = [e.get("command") for e in driver.events[start:]
                    if e.name == "AGIExecStart" and e.get("uniqueid") == "rem-ring-heard-1-1"]
    assert 'SET VARIABLE REMINDER_HEARD "1"' in commands, commands
    assert view["state"] == "delivered", view


@pytest.mark.parametrize(("callee", "reason_and_cause", "outcome"), [
    ("cause17", ("0", "17"), "busy"), ("busy", ("5", "0"), "busy"), ("cause19", ("0", "19"), "no_answer"),
    ("cause21", ("0", "21"), "no_answer"), ("cause34", ("0", "34"), "congestion"),
])
def test_reminder_outcome_from_the_hangup_cause(gateway: Any, driver: AmiDriver, callee: str,
                                                reason_and_cause: tuple[str, str], outcome: str) -> None:
    """Asterisk 22 answers Reason 0 for most of these: the Hangup of the channel we named
    (ChannelId, echoed as the Uniqueid even on failure) says why."""
    start = driver.mark()
    view = remind(gateway, f"ring-{callee}", callee)
    action_id = f"rem-ring-{callee}-1"
    _, response = driver.wait_event(lambda e: e.name == "OriginateResponse" and e.get("actionid") == action_id,
                                    start=start)
    _, hangup = driver.wait_event(lambda e: e.name == "Hangup" and e.get("uniqueid") == action_id, start=start)
    record = call_record(gateway, view["id"])
    assert response.get("response") == "Failure" and response.get("uniqueid") == action_id, response.headers
    assert (response.get("reason"), hangup.get("cause")) == reason_and_cause, (response.headers, hangup.headers)
    assert record["outcome"] == outcome, (view, record, hangup.headers)


def test_logs_keep_gateway_identifiers_and_mask_numbers(gateway: Any, driver: AmiDriver) -> None:
    """An id with a phone-like digit run stays greppable in the log (as do its ActionID and
    channel id); the callee's number never appears whole."""
    view = remind(gateway, "acc-cause-13900009001", "cause17")
    assert call_record(gateway, view["id"])["outcome"] == "busy"
    log = wait_for(lambda: (text := gateway.log_text()) and "rem-acc-cause-13900009001-1" in text and text,
                   30, "the call's log line")
    assert "139****9001" not in log
    assert CALLEES["cause17"] not in log


def test_missing_reminder_prompt_is_not_heard(gateway: Any, driver: AmiDriver, asterisk: Any) -> None:
    """A prompt of the reminder itself is missing: Asterisk answers -1, CHANNEL STATUS says
    the citizen is still there; the call goes on, but the reminder is not recorded heard."""
    intro = asterisk.sounds_dir / "12123" / "reminder_intro.wav"
    hidden = intro.with_name("reminder_intro.hidden")
    intro.rename(hidden)
    try:
        view = remind(gateway, "ring-missing-intro", "listener")
    finally:
        hidden.rename(intro)
    assert view["state"] == "failed" and view["error"] == "not_heard", view
    assert "no sound file 12123/reminder_intro" in gateway.log_text()


def test_sigterm_during_a_reminder_call_lets_it_finish(gateway: Any, driver: AmiDriver) -> None:
    """SIGTERM while the notify AGI is reading a reminder out: the call goes on (voice drain,
    40 s in the ring) and ends heard and reported; then the gateway exits.  (Runs last in
    this module: it stops the module's gateway.)"""
    import signal

    start = driver.mark()
    status, body = gateway.post("/v1/notifications", {
        "id": "ring-drain", "type": "verification_code", "to": CALLEES["listener"],
        "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
    assert status == 202, body
    driver.wait_event(lambda e: e.name == "AGIExecStart" and e.get("uniqueid") == "rem-ring-drain-1"
                      and "STREAM FILE" in e.get("command"), start=start, timeout_seconds=30)
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(60) == 0
    record = call_record(gateway, "ring-drain")
    assert (record["outcome"], record["reported"]) == ("heard", "1"), record
    log = gateway.log_text()
    assert "waiting up to 40.0 s for 1 voice call(s) in progress" in log or "ended: completed" in log


def test_sigterm_with_a_short_voice_drain_records_the_reminder_interrupted(start_gateway: Any,
                                                                           driver: AmiDriver) -> None:
    """The voice drain runs out while the reminder is read (its own gateway: drain 5 s, the
    text takes about 12 s): the AGI is cut, Asterisk hangs up, and the call is recorded
    interrupted_by_shutdown, not not_heard."""
    import signal

    gateway = start_gateway("Local/{number}@ring-callees", voice_drain_seconds=1)
    start = driver.mark()
    status, body = gateway.post("/v1/notifications", {
        "id": "ring-cut", "type": "verification_code", "to": CALLEES["listener"],
        "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
    assert status == 202, body
    driver.wait_event(lambda e: e.name == "AGIExecStart" and e.get("uniqueid") == "rem-ring-cut-1"
                      and "STREAM FILE" in e.get("command"), start=start, timeout_seconds=30)
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(60) == 0
    record = call_record(gateway, "ring-cut")
    assert record["outcome"] == "interrupted_by_shutdown", record
    client = redis_client(gateway.config["redis"]["url"])
    try:
        events = [f for _, f in client.xrange(KEYS.events_stream)
                  if f.get("type") == "ivr.call" and f.get("uniqueid") == "rem-ring-cut-1"]
        notification = client.hgetall(KEYS.notification("ring-cut"))
    finally:
        client.close()
    assert [e["outcome"] for e in events] == ["interrupted_by_shutdown"]
    assert (notification.get("state"), notification.get("error")) == ("failed", "interrupted_by_shutdown")
