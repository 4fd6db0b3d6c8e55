"""Inbound menu calls through the real Asterisk: Local channels, keys by PlayDTMF."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.domain.sample import SAMPLE_CALLER, SAMPLE_CALLER_AFTER_DEADLINE, SAMPLE_ID_NUMBERS
from tests.asterisk.conftest import KEYS, call_events, seed, wait_for
from tests.asterisk.ring import AmiDriver, place_call

pytestmark = pytest.mark.asterisk


@pytest.fixture(scope="module")
def gateway(start_gateway: Any) -> Any:
    return start_gateway("Local/{number}@ring-callees")


def recorded(gateway: Any, uniqueid: str) -> dict[str, str]:
    url = gateway.config["redis"]["url"]
    [event] = wait_for(lambda: call_events(url, uniqueid), 30, f"the ivr.call event of {uniqueid}")
    return event


def test_status_query(gateway: Any, driver: AmiDriver) -> None:
    summary = seed(gateway.config["redis"]["url"])
    booking = summary.cancellable_booking
    call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER, inputs=["1", booking + "#", "#"])
    event = recorded(gateway, call.uniqueid)
    assert event["outcome"] == "completed", (event, call.agi_commands())
    assert event["caller"] == "138****8000"
    assert "status_read" in event["path"].split(",")


def id_suffix(phone: str) -> str:
    """The cancellation's second factor: the last six of the holder's ID number (* for X)."""
    return SAMPLE_ID_NUMBERS[phone][-6:].replace("X", "*")


def test_cancellation(gateway: Any, driver: AmiDriver) -> None:
    from gateway.domain.bookings import BookingStatus

    url = gateway.config["redis"]["url"]
    summary = seed(url)
    booking = summary.cancellable_booking
    call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER, inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER), "1", "#"])
    event = recorded(gateway, call.uniqueid)
    assert event["outcome"] == "completed" and "cancel_done" in event["path"].split(","), event
    assert booking_status(url, booking) == BookingStatus.CANCELLED.value


def test_cancellation_after_the_deadline(gateway: Any, driver: AmiDriver) -> None:
    from gateway.domain.bookings import BookingStatus

    url = gateway.config["redis"]["url"]
    summary = seed(url)
    booking = summary.after_deadline_booking
    call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER_AFTER_DEADLINE,
                      inputs=["2", booking + "#", id_suffix(SAMPLE_CALLER_AFTER_DEADLINE), "#"])
    event = recorded(gateway, call.uniqueid)
    assert event["outcome"] == "completed", event
    assert "cancel_too_late" in event["path"].split(",") and "cancel_done" not in event["path"].split(",")
    assert booking_status(url, booking) == BookingStatus.BOOKED.value
    # The in-person deadline is read out: the last clip files of cancel_too_late were played.
    assert any("12123/cancel_too_late" in c for c in call.agi_commands())


def test_hang_up_mid_menu(gateway: Any, driver: AmiDriver) -> None:
    call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER, inputs=["1"], hangup_after_inputs=True)
    event = recorded(gateway, call.uniqueid)
    assert event["outcome"] == "caller_hangup", event
    assert event["path"].split(",")[-1] == "status_identity"


def booking_status(url: str, booking: str) -> str:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from redis.asyncio import Redis

    from gateway.domain.bookings import BookingStore

    async def get() -> str:
        client = Redis.from_url(url, decode_responses=True)
        try:
            stored = await BookingStore(client, KEYS).get(booking)
            assert stored is not None
            return stored.status.value
        finally:
            await client.aclose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, get()).result(60)


def test_missing_prompt_is_logged_and_the_menu_goes_on(gateway: Any, driver: AmiDriver, asterisk: Any) -> None:
    """Asterisk answers STREAM FILE of a missing file with 200 result=-1 endpos=0, as for a
    hang-up; the gateway tells them apart by the next reply, logs the file and goes on."""
    summary = seed(gateway.config["redis"]["url"])
    welcome = asterisk.sounds_dir / "12123" / "welcome.wav"
    hidden = welcome.with_name("welcome.hidden")
    welcome.rename(hidden)
    try:
        call = place_call(driver, "s", "12123-inbound", callerid=SAMPLE_CALLER,
                          inputs=["1", summary.cancellable_booking + "#", "#"])
    finally:
        hidden.rename(welcome)
    event = recorded(gateway, call.uniqueid)
    assert event["outcome"] == "completed" and "status_read" in event["path"].split(","), event
    [answer] = [e for e in call.events if e.name == "AGIExecEnd" and "12123/welcome" in e.get("command")]
    # handle_streamfile's RESULT_FAILURE after it wrote "200 result=-1 endpos=0" to the gateway.
    assert (answer.get("resultcode"), answer.get("result")) == ("-1", "Failure"), answer.headers
    log = gateway.log_text()
    assert "no sound file 12123/welcome" in log
    code, metrics = gateway.get("/metrics")
    assert code == 200 and re.search(r"^gateway12123_agi_missing_prompts_total [1-9]", metrics, re.M), metrics[:300]


def test_gateway_down_fallback_uses_china_time(gateway: Any, driver: AmiDriver, asterisk: Any) -> None:
    """Without the gateway, GotoIfTime picks the queue by China time, not the host's (the
    ring's Asterisk runs with a TZ in which the agents' hours are the opposite of China's
    now), and a failed Queue() still apologises with system_error."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    if asterisk.host_zone is not None:
        # The host's clock as Asterisk sees it (its own /etc/localtime) is on the other side.
        # Its startup hour, not now's: the session's ring may have started in the hour before
        # (a minute either side of the start: the start itself may straddle the hour).
        startup = re.search(r"Startup time:\s+(\d\d):", asterisk.cli("core show settings"))
        hours = {datetime.fromtimestamp(asterisk.started_at + d, ZoneInfo(asterisk.host_zone)).hour for d in (-60, 60)}
        assert startup and int(startup[1]) in hours, (startup, hours)
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    minute = now.hour * 60 + now.minute
    within = 8 * 60 + 30 <= minute < 17 * 60 + 30
    call = place_call(driver, "gateway-down", "12123-inbound", callerid=SAMPLE_CALLER)
    applications = call.applications()
    assert "GotoIfTime" in applications, applications
    if within:
        # No agent is logged in: Queue() returns at once and the caller hears the apology.
        assert applications[applications.index("Queue"):] == ["Queue", "Playback", "Hangup"], applications
    else:
        assert "Queue" not in applications and applications[-2:] == ["Playback", "Hangup"], applications
