"""Kannel (Debian's kannel 1.4.5) as a partner ESME: its bearerbox binds to our listener.

    Kannel smsbox --HTTP sendsms--> bearerbox --SMPP submit_sm--> SmppListener
        --PartnerIntake--> CarrierLink --SMPP--> CarrierSimulator
    SmppListener --deliver_sm receipt--> bearerbox --dlr-url--> this test

Kannel is an independent SMPP implementation (C), so these tests check our listener's
bind, submit_sm (UCS2, UDH multi-part), submit_sm_resp and receipt deliver_sm against a
peer we did not write: Kannel, not our code, parses what we send.  Real processes with a
configuration rendered from bench/kannel/kannel.conf.in into the test's folder, free
ports only.  Skipped when ``bearerbox`` is not installed (``apt-get install kannel``;
.ci/run installs it when it runs as root).
"""

from __future__ import annotations

import os
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
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway.config import CarrierConfig, PartnerAccount, Secret, SmppServerConfig
from gateway.ports import OutboundSms
from gateway.privacy import PhoneNumber
from gateway.smpp.link import CarrierLink
from gateway.smpp.listener import SmppListener
from gateway.smpp.simulator import CarrierSimulator, SimulatorOptions, options_for_carrier
from tests.integration.daemon import REPO, Daemon, write_config
from tests.smpp.test_link import WaitingSink


def _kannel_binary(name: str) -> str | None:
    """The box's path: from PATH, or Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


KANNEL_BINARIES = {name: _kannel_binary(name) for name in ("bearerbox", "smsbox")}
pytestmark = [
    pytest.mark.kannel,
    pytest.mark.skipif(
        None in KANNEL_BINARIES.values(),
        reason="Kannel is not installed (apt-get install kannel gives /usr/sbin/bearerbox and smsbox)",
    ),
]

TEMPLATE = Path(__file__).resolve().parents[2] / "bench" / "kannel" / "kannel.conf.in"
KANNEL_SYSTEM_ID = "kannel"
KANNEL_PASSWORD = "kpw123"  # SMPP 3.4: at most 8 octets
WAIT_SECONDS = 30.0  # Kannel reconnects once a second; it binds within a few
# 92 characters: Kannel sends it as two UCS2 parts with a UDH.
CHINESE_TEXT = (
    "【12123】尊敬的机动车驾驶人：您预约的科目一考试已安排在2026年11月30日上午9时，"
    "地点为市车管所考试中心。请携带身份证件提前三十分钟到达，逾期视为缺考。如需取消，请回复QX。"
)
# Kannel's delivery report types (the %d of a dlr-url): 1 delivered to the phone,
# 2 not delivered, 8 accepted by the SMSC (submit_sm_resp ESME_ROK), 16 refused by it.
DLR_DELIVERED = "1"
DLR_SMSC_ACCEPTED = "8"


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
        self, system_id: str, destination: PhoneNumber, text: str, registered_delivery: bool,
        **options: Any,
    ) -> Deferred[tuple[str, ...]]:
        self.calls.append((system_id, destination, text, registered_delivery))
        sms = OutboundSms(f"{system_id}-{len(self.calls)}", destination, text)
        parts = max(1, len(options.get("receipt_parts", ())))
        return self.link.submit(sms).addCallback(
            lambda accepted: (accepted.message_ids[0], *(f"{accepted.message_ids[0]}-{k}" for k in range(2, parts + 1))))


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
            subprocess.Popen([str(KANNEL_BINARIES[program]), conf], stdout=log, stderr=subprocess.STDOUT)
        )

    def log(self, program: str) -> str:
        return (self.work_dir / f"{program}.log").read_text(errors="replace")[-3000:]

    def smsbox_ready(self) -> bool:
        """smsbox answers sendsms correctly: its port is open *and* it loaded its users.
        It opens the port first and reads the sendsms users after, then connects to
        bearerbox; a request in between is refused "Authorization failed for sendsms"
        (seen once on a loaded machine, 2026-12-05)."""
        if not listening(self.values["SENDSMS_PORT"]):
            return False
        try:
            return "Connected to bearerbox" in (self.work_dir / "smsbox.log").read_text(errors="replace")
        except FileNotFoundError:
            return False

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
        text = CHINESE_TEXT
        assert len(text) > 70  # two UCS2 parts at Kannel and at our link
        yield eventually(kannel.smsbox_ready, "smsbox's sendsms port and users")
        status = yield deferToThread(sendsms, values["SENDSMS_PORT"], values, "13800138000", text)
        assert status == 202, kannel.log("smsbox")
        yield eventually(lambda: bool(simulator.received), "the message at the carrier")
        [message] = simulator.received
        assert (message.text, message.destination, message.parts) == (text, "13800138000", 2)
        assert intake.calls == [(KANNEL_SYSTEM_ID, PhoneNumber("13800138000"), text, False)]
    finally:
        yield listener.stopService()
        yield link.stopService()
        yield simulator.stopService()


class RecordingIntake:
    """A PartnerIntake that records what the listener hands over and names it gwNNNNNN."""

    def __init__(self) -> None:
        self.submits: DeferredQueue[tuple[str, PhoneNumber, str, bool, str]] = DeferredQueue()
        self._count = 0

    def submit_from_partner(
        self, system_id: str, destination: PhoneNumber, text: str, registered_delivery: bool,
        **options: Any,
    ) -> Deferred[tuple[str, ...]]:
        self._count += 1
        message_id = f"gw{self._count:06d}"
        self.submits.put((system_id, destination, text, registered_delivery, message_id))
        parts = max(1, len(options.get("receipt_parts", ())))
        return defer.succeed((message_id, *(f"{message_id}-{k}" for k in range(2, parts + 1))))


class DlrReceiver(Resource):
    """Kannel's dlr-url: the query of every GET (type, foreign id) goes into a queue."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.reports: DeferredQueue[dict[str, str]] = DeferredQueue()

    def render_GET(self, request: Any) -> bytes:
        self.reports.put({k.decode(): v[0].decode() for k, v in request.args.items()})
        return b"ok"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def next_from(queue: DeferredQueue[Any], what: str, kannel: Kannel) -> Deferred[Any]:
    """The queue's next item; fails after WAIT_SECONDS, with Kannel's logs."""
    d = queue.get()
    d.addTimeout(WAIT_SECONDS, reactor)  # type: ignore[arg-type]

    def timed_out(failure: Any) -> None:
        failure.trap(defer.TimeoutError)
        raise AssertionError(f"timed out waiting for {what}\n{kannel.log('bearerbox')}\n{kannel.log('smsc')}")

    return d.addErrback(timed_out)


async def kannel_bound_to_listener(kannel: Kannel, intake: RecordingIntake) -> SmppListener:
    """Our listener with one transceiver account, and Kannel bound to it, sendsms ready."""
    listener = SmppListener(
        SmppServerConfig(
            listen="127.0.0.1:0",
            accounts=(
                PartnerAccount(
                    system_id=KANNEL_SYSTEM_ID,
                    password=Secret(KANNEL_PASSWORD),
                    allowed_bind_types=("transceiver",),
                ),
            ),
        ),
        intake,
        {},
        reactor,
    )
    listener.startService()
    port = await listener.listening()
    kannel.configure(port.getHost().port)
    kannel.start("bearerbox")
    await eventually(lambda: KANNEL_SYSTEM_ID in listener._receivers, "Kannel to bind")
    kannel.start("smsbox")
    await eventually(kannel.smsbox_ready, "smsbox's sendsms port and users")
    return listener


def sendsms_with_dlr(
    values: dict[str, Any], dlr_port: int, dlr_mask: int, text: str = CHINESE_TEXT
) -> tuple[int, bytes]:
    """GET /cgi-bin/sendsms: ``text`` (UCS2) to 13800138000 with a dlr-url to ``dlr_port``
    that reports the type (%d) and the SMSC's message id (%F); (status, body)."""
    query = urllib.parse.urlencode(
        {
            "username": values["SENDSMS_USERNAME"],
            "password": values["SENDSMS_PASSWORD"],
            "from": "12123",
            "to": "13800138000",
            "text": text,
            "coding": 2,
            "charset": "UTF-8",
            "dlr-mask": dlr_mask,
            "dlr-url": f"http://127.0.0.1:{dlr_port}/dlr?type=%d&foreign=%F",
        }
    )
    url = f"http://127.0.0.1:{values['SENDSMS_PORT']}/cgi-bin/sendsms?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


@pytest_twisted.ensureDeferred
async def test_kannel_gets_our_message_id_and_matches_our_receipt(kannel: Kannel) -> None:
    """A two-part Chinese sendsms with dlr-mask 1+2+8 reaches PartnerIntake once and exact;
    Kannel reports our submit_sm_resp message id (DLR 8, %F) and matches the DELIVRD receipt
    we send as deliver_sm to that message (DLR 1)."""
    intake = RecordingIntake()
    receiver = DlrReceiver()
    dlr_port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
    listener = None
    try:
        listener = await kannel_bound_to_listener(kannel, intake)
        answer = await deferToThread(sendsms_with_dlr, kannel.values, dlr_port.getHost().port, 1 + 2 + 8)
        assert answer == (202, b"0: Accepted for delivery")

        system_id, destination, text, _, message_id = await next_from(
            intake.submits, "the submit at PartnerIntake", kannel
        )
        assert (system_id, destination.digits, text) == (KANNEL_SYSTEM_ID, "13800138000", CHINESE_TEXT)

        accepted = await next_from(receiver.reports, "Kannel's SMSC-accepted report", kannel)
        assert accepted == {"type": DLR_SMSC_ACCEPTED, "foreign": message_id}

        await listener.deliver_receipt(KANNEL_SYSTEM_ID, message_id, "DELIVRD", "000")
        delivered = await next_from(receiver.reports, "Kannel's delivered report", kannel)
        assert delivered == {"type": DLR_DELIVERED, "foreign": message_id}
        assert intake.submits.pending == [], "Kannel's message reached the intake more than once"
    finally:
        if listener is not None:
            await listener.stopService()
        await dlr_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_kannel_receipt_request_on_first_part_reaches_the_intake(kannel: Kannel) -> None:
    """Kannel asks for a receipt (registered_delivery 1) on part 1 of a two-part message
    only; the intake must still be told that the partner wants a receipt."""
    intake = RecordingIntake()
    listener = None
    try:
        listener = await kannel_bound_to_listener(kannel, intake)
        answer = await deferToThread(sendsms_with_dlr, kannel.values, free_port(), 1 + 2)
        assert answer == (202, b"0: Accepted for delivery")
        _, _, text, registered_delivery, _ = await next_from(intake.submits, "the submit at PartnerIntake", kannel)
        assert text == CHINESE_TEXT
        assert registered_delivery is True
    finally:
        if listener is not None:
            await listener.stopService()


@pytest_twisted.ensureDeferred
async def test_kannel_through_the_daemon_to_the_carrier_and_its_receipt_back(kannel: Kannel, tmp_path: Path) -> None:
    """The whole chain with `gateway run`: Kannel's sendsms (UCS2, dlr-mask 1+2+8) reaches the
    simulated carrier exact, via listener, partner door, Redis and carrier link; the carrier's
    receipt comes back to Kannel as a deliver_sm it matches to the id we answered (DLR 8, 1)."""
    simulator = CarrierSimulator(
        SimulatorOptions(port=0, credentials={"gw": "pw"}, receipt_delay_seconds=0.05), reactor
    )
    simulator.startService()
    listener_port = free_port()
    config = write_config(
        tmp_path / "gateway",
        carriers=[{"name": "cmcc", "host": "127.0.0.1", "port": simulator.port_number, "system_id": "gw",
                   "password": "pw", "prefixes": ["138"], "enquire_link_interval_seconds": 5}],
        smpp_server={"listen": f"127.0.0.1:{listener_port}", "accounts": [
            {"system_id": KANNEL_SYSTEM_ID, "password": KANNEL_PASSWORD, "allowed_networks": ["127.0.0.0/8"],
             "tps_limit": 100}]},
        # Partner texts are held in quiet hours: none here, so the test runs at any hour.
        push={"templates_file": str(REPO / "config" / "templates.yaml"),
              "quiet_hours": {"start": "08:00", "end": "08:00"}},
    )
    daemon = Daemon(config, tmp_path / "gateway.log")
    receiver = DlrReceiver()
    dlr_port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
    # Signed already, and short enough (≤ 70) to be one UCS2 part at Kannel and at our link.
    text = "【交管12123】您预约的科目一考试已安排在11月30日上午9时，请携带身份证件提前三十分钟到达。"
    assert len(text) <= 70
    daemon.start()
    try:
        # The daemon is ready once its carrier link is bound to the simulator, which needs
        # this reactor: wait in a thread.
        await deferToThread(daemon.wait_until, "/readyz", 200, WAIT_SECONDS)
        kannel.configure(listener_port)
        kannel.start("bearerbox")
        await eventually(lambda: listening(kannel.values["SMSBOX_PORT"]), "bearerbox's box port")
        kannel.start("smsbox")
        await eventually(kannel.smsbox_ready, "smsbox's sendsms port and users")
        answer = await deferToThread(
            sendsms_with_dlr, kannel.values, dlr_port.getHost().port, 1 + 2 + 8, text=text
        )
        assert answer == (202, b"0: Accepted for delivery")

        accepted = await next_from(receiver.reports, "Kannel's SMSC-accepted report", kannel)
        assert accepted["type"] == DLR_SMSC_ACCEPTED and accepted["foreign"], accepted
        await eventually(lambda: bool(simulator.received), "the message at the carrier")
        [message] = simulator.received
        assert (message.text, message.destination, message.parts) == (text, "13800138000", 1)

        delivered = await next_from(receiver.reports, "Kannel's delivered report", kannel)
        assert delivered == {"type": DLR_DELIVERED, "foreign": accepted["foreign"]}
    finally:
        await dlr_port.stopListening()
        await deferToThread(daemon.terminate)
        await simulator.stopService()
