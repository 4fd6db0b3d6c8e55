"""Kannel as a partner ESME: its bearerbox binds to our listener, and a message sent with
smsbox's sendsms HTTP interface comes out at a simulator-backed carrier link.

    Kannel smsbox --HTTP sendsms--> bearerbox --SMPP submit_sm--> SmppListener
        --PartnerIntake--> CarrierLink --SMPP--> CarrierSimulator

Kannel is an independent SMPP implementation (C, Debian's kannel 1.4.5), so this checks
our listener's bind, submit_sm (UCS2, UDH multi-part) and submit_sm_resp against a peer
we did not write.  Skipped when ``bearerbox`` is not installed.
"""

from __future__ import annotations

import shutil
import signal
import socket
import string
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from gateway.config import CarrierConfig, PartnerAccount, Secret, SmppServerConfig
from gateway.ports import OutboundSms
from gateway.privacy import PhoneNumber
from gateway.smpp.link import CarrierLink
from gateway.smpp.listener import SmppListener
from gateway.smpp.simulator import CarrierSimulator, options_for_carrier
from tests.smpp.test_link import WaitingSink

pytestmark = [
    pytest.mark.kannel,
    pytest.mark.skipif(
        shutil.which("bearerbox") is None, reason="Kannel (bearerbox) not installed"
    ),
]

TEMPLATE = Path(__file__).resolve().parents[2] / "bench" / "kannel" / "kannel.conf.in"
KANNEL_SYSTEM_ID = "kannel"
KANNEL_PASSWORD = "kpw123"
WAIT_SECONDS = 30.0  # Kannel reconnects once a second; it binds within a few


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ForwardingIntake:
    """A PartnerIntake that submits the partner's message through a carrier link at once
    (the real one queues it in Redis first) and answers with the carrier's first id."""

    def __init__(self, link: CarrierLink) -> None:
        self.link = link
        self.calls: list[tuple[str, PhoneNumber, str, bool]] = []

    def submit_from_partner(
        self, system_id: str, destination: PhoneNumber, text: str, registered_delivery: bool
    ) -> Deferred[str]:
        self.calls.append((system_id, destination, text, registered_delivery))
        sms = OutboundSms(f"{system_id}-{len(self.calls)}", destination, text)
        return self.link.submit(sms).addCallback(lambda accepted: accepted.message_ids[0])


def eventually(condition: Callable[[], bool], what: str) -> Deferred[None]:
    """Fire when ``condition()`` holds; fail after WAIT_SECONDS.  Kannel is another
    process with no event we can subscribe to, so we look every 50 ms."""

    async def wait() -> None:
        deadline = reactor.seconds() + WAIT_SECONDS  # type: ignore[attr-defined]
        while not condition():
            if reactor.seconds() > deadline:  # type: ignore[attr-defined]
                raise AssertionError(f"timed out waiting for {what}")
            await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]

    return Deferred.fromCoroutine(wait())


class Kannel:
    """Renders kannel.conf and runs bearerbox and smsbox; ``stop`` terminates them."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.values: dict[str, Any] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def configure(self, listener_port: int) -> None:
        self.values = {
            "ADMIN_PORT": free_port(),
            "ADMIN_PASSWORD": "admin",
            "SMSBOX_PORT": free_port(),
            "WORK_DIR": str(self.work_dir),
            "LOG_LEVEL": 1,
            "STORE_LINES": "",
            "SMSC_ID": "gateway12123",
            "SMSC_PORT": listener_port,
            "SMSC_USERNAME": KANNEL_SYSTEM_ID,
            "SMSC_PASSWORD": KANNEL_PASSWORD,
            "MAX_PENDING_SUBMITS": 10,
            "SENDSMS_PORT": free_port(),
            "MAX_PENDING_REQUESTS": 16,
            "SENDSMS_USERNAME": "tester",
            "SENDSMS_PASSWORD": "testpw",
        }
        conf = self.work_dir / "kannel.conf"
        conf.write_text(string.Template(TEMPLATE.read_text()).substitute(self.values))

    def start(self, program: str) -> None:
        """Start bearerbox or smsbox (smsbox gives up at once if bearerbox is not up)."""
        log = (self.work_dir / f"{program}.stdout").open("wb")
        conf = str(self.work_dir / "kannel.conf")
        self.processes.append(
            subprocess.Popen([program, conf], stdout=log, stderr=subprocess.STDOUT)
        )

    def log(self, program: str) -> str:
        return (self.work_dir / f"{program}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def kannel(tmp_path: Path) -> Iterator[Kannel]:
    runner = Kannel(tmp_path)
    yield runner
    runner.stop()


def sendsms(port: int, values: dict[str, Any], to: str, text: str) -> int:
    """GET /cgi-bin/sendsms as UCS2 (coding=2, UTF-8 in); the HTTP status."""
    query = urllib.parse.urlencode(
        {
            "username": values["SENDSMS_USERNAME"],
            "password": values["SENDSMS_PASSWORD"],
            "to": to,
            "from": "95588",
            "text": text,
            "charset": "UTF-8",
            "coding": 2,
        }
    )
    url = f"http://127.0.0.1:{port}/cgi-bin/sendsms?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:  # an answer, not a connection failure: report it
        return int(e.code)


@pytest_twisted.inlineCallbacks
def test_kannel_submits_through_our_listener_to_a_carrier(kannel: Kannel) -> Any:
    """A two-part Chinese message sent via Kannel's sendsms reaches the simulated carrier
    whole, through our listener (reassembled) and our carrier link (split again)."""
    carrier = CarrierConfig(
        name="sim",
        host="127.0.0.1",
        port=0,
        system_id="gw12123",
        password=Secret("secret"),
        prefixes=("138",),
        reconnect_initial_seconds=0.05,
        reconnect_max_seconds=0.2,
    )
    simulator = CarrierSimulator(options_for_carrier(carrier, port=0), reactor)
    simulator.startService()
    link = CarrierLink(
        CarrierConfig(**{**carrier.__dict__, "port": simulator.port_number}), WaitingSink(), reactor
    )
    link.startService()
    intake = ForwardingIntake(link)
    listener = SmppListener(
        SmppServerConfig(
            listen="127.0.0.1:0",
            accounts=(
                PartnerAccount(system_id=KANNEL_SYSTEM_ID, password=Secret(KANNEL_PASSWORD)),
            ),
        ),
        intake,
        {},
        reactor,
    )
    listener.startService()
    try:
        port = yield listener.listening()
        kannel.configure(port.getHost().port)
        kannel.start("bearerbox")
        yield eventually(lambda: KANNEL_SYSTEM_ID in listener._receivers, "Kannel to bind")
        kannel.start("smsbox")  # bearerbox is up: it bound to us
        values = kannel.values
        yield link.when_bound()
        text = (
            "【12123】尊敬的机动车驾驶人：您预约的科目一考试已安排在2026年11月30日上午9时，"
            "地点为市车管所考试中心。请携带身份证件提前三十分钟到达，逾期视为缺考。如需取消，请回复QX。"
        )
        assert len(text) > 70  # two UCS2 parts at Kannel and at our link
        status = 0
        for _ in range(50):  # smsbox connects to bearerbox shortly after starting
            try:
                status = yield deferToThread(
                    sendsms, values["SENDSMS_PORT"], values, "13800138000", text
                )
                break
            except OSError:
                yield deferLater(reactor, 0.1, lambda: None)
        assert status == 202, kannel.log("smsbox")
        yield eventually(lambda: bool(simulator.received), "the message at the carrier")
        [message] = simulator.received
        assert (message.text, message.destination, message.parts) == (text, "13800138000", 2)
        assert intake.calls == [(KANNEL_SYSTEM_ID, PhoneNumber("13800138000"), text, False)]
    finally:
        yield listener.stopService()
        yield link.stopService()
        yield simulator.stopService()
