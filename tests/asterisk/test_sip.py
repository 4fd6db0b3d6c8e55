"""Real SIP through dialplans/pjsip.conf: SIPp (Debian's sip-tester) is the carrier trunk.

The trunk's address in pjsip.conf is the SIPp on 127.0.0.1 (dialplans/README.md: the
carrier's address in the aor contact, the identify match and from_domain)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from gateway.domain.sample import SAMPLE_CALLER
from tests.asterisk.conftest import KEYS, redis_client, wait_for
from tests.asterisk.ring import AmiDriver, AsteriskRing, Sipp
from tests.asterisk.test_reminders import call_record

pytestmark = [
    pytest.mark.asterisk,
    pytest.mark.skipif(shutil.which("sipp") is None,
                       reason="SIPp is not installed (apt-get install sip-tester gives /usr/bin/sipp)"),
]


@pytest.fixture(scope="module")
def gateway(start_gateway: Any) -> Any:
    return start_gateway("PJSIP/{number}@carrier-trunk")


def remind(gateway: Any, notification_id: str, to: str) -> dict[str, Any]:
    status, body = gateway.post("/v1/notifications", {
        "id": notification_id, "type": "verification_code", "to": to,
        "params": {"code": "123456", "minutes": "5"}, "channel": "voice"})
    assert status == 202, body

    def final() -> Any:
        code, view = gateway.get(f"/v1/notifications/{notification_id}", token="test-token")
        return view if code == 200 and view.get("state") in ("delivered", "failed") else None

    return wait_for(final, 60, f"the outcome of {notification_id}")


def test_menu_call_with_rfc4733_dtmf(gateway: Any, asterisk: AsteriskRing, tmp_path: Any) -> None:
    """A citizen calls 12123 over the trunk and presses 1 as a telephone-event: the
    gateway's menu takes it (path to the identity question), then the citizen hangs up."""
    sipp = Sipp("uac_menu_dtmf.xml", local_port=0, remote=f"127.0.0.1:{asterisk.sip_port}",
                extra=["-s", SAMPLE_CALLER], workdir=tmp_path)
    url = gateway.config["redis"]["url"]
    client = redis_client(url)
    try:
        last = client.xrevrange(KEYS.events_stream, count=1)
    finally:
        client.close()
    after = f"({last[0][0]}" if last else "-"
    sipp.start()
    code = sipp.wait(60)
    assert code == 0, sipp.errors()

    def event() -> Any:
        client = redis_client(url)
        try:
            return [f for _, f in client.xrange(KEYS.events_stream, min=after)
                    if f.get("type") == "ivr.call" and f.get("script") == "12123"]
        finally:
            client.close()

    [call] = wait_for(event, 30, "the SIP call's ivr.call event")
    assert call["caller"] == "138****8000" and call["outcome"] == "caller_hangup", call
    assert "status_gate" in call["path"].split(","), call  # the key 1 arrived
    assert call["path"].split(",")[-1] == "status_identity", call


def test_reminder_to_a_busy_callee(gateway: Any, asterisk: AsteriskRing, driver: AmiDriver, tmp_path: Any) -> None:
    """The trunk answers 486: OriginateResponse Reason 0, Hangup Cause 17, recorded busy."""
    sipp = Sipp("uas_busy.xml", local_port=asterisk.sip_trunk_port, workdir=tmp_path, calls=None)
    sipp.start()
    try:
        asterisk.wait_trunk_reachable()
        start = driver.mark()
        view = remind(gateway, "sip-busy", "13800000486")
        _, hangup = driver.wait_event(lambda e: e.name == "Hangup" and e.get("uniqueid") == "rem-sip-busy-1",
                                      start=start)
    finally:
        sipp.stop()
    assert (hangup.get("cause"), hangup.get("techcause")) == ("17", "486"), hangup.headers
    record = call_record(gateway, "sip-busy")
    assert (record["outcome"], record["cause"]) == ("busy", "17"), record
    # The Hangup may come before the OriginateResponse (then the cause decides at once).
    assert record.get("reason", "0") == "0", record
    assert view["state"] == "failed" and view["error"] == "busy", view


def test_reminder_to_a_callee_who_never_answers(gateway: Any, asterisk: AsteriskRing, driver: AmiDriver,
                                                tmp_path: Any) -> None:
    """The trunk rings until the Originate's Timeout (ami.originate_timeout_seconds: 4 s in
    the ring), Asterisk CANCELs: recorded no_answer."""
    sipp = Sipp("uas_ring_forever.xml", local_port=asterisk.sip_trunk_port, workdir=tmp_path, calls=None)
    sipp.start()
    try:
        asterisk.wait_trunk_reachable()
        start = driver.mark()
        view = remind(gateway, "sip-ringing", "13800000180")
        _, hangup = driver.wait_event(lambda e: e.name == "Hangup" and e.get("uniqueid") == "rem-sip-ringing-1",
                                      start=start)
    finally:
        sipp.stop()
    record = call_record(gateway, "sip-ringing")
    assert (hangup.get("cause"), hangup.get("techcause")) == ("19", "480"), hangup.headers
    assert record["outcome"] == "no_answer" and record.get("reason", "3") == "3", (record, hangup.headers)
    assert view["state"] == "failed" and view["error"] == "no_answer", view
