"""smpplib, an independent blocking SMPP client, against our listener over real sockets.

smpplib runs in a thread (deferToThread); the listener runs on the reactor at 127.0.0.1,
port 0.  Each smpplib step is one thread call, so the test decides what the reactor does
in between (a receipt is sent only once the submit was recorded).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import smpplib.client
import smpplib.consts
import smpplib.exceptions
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from gateway.config import PartnerAccount, Secret, SmppServerConfig
from gateway.privacy import PhoneNumber
from gateway.smpp.listener import SmppListener
from tests.smpp.test_link import self_signed_pem
from tests.smpp.test_listener import RecordingIntake

SYSTEM_ID = "partner"
PASSWORD = "pw123"


@pytest.fixture
def listener() -> Iterator[SmppListener]:
    config = SmppServerConfig(
        listen="127.0.0.1:0",
        accounts=(PartnerAccount(system_id=SYSTEM_ID, password=Secret(PASSWORD)),),
        max_bind_failures=3,
        bind_failure_window_seconds=60.0,
        lockout_seconds=600.0,
    )
    service = SmppListener(config, RecordingIntake(), {}, reactor)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


def client_for(listener: SmppListener) -> smpplib.client.Client:
    assert listener.port is not None
    port = listener.port.getHost().port
    return smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)


def bind_status(listener: SmppListener, system_id: str, password: str) -> int:
    """Bind as transceiver in a fresh connection; the status (0 when bound)."""
    client = client_for(listener)
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password=password)
    except smpplib.exceptions.PDUError as e:
        return int(e.args[1])
    finally:
        client.disconnect()
    return 0


@pytest_twisted.inlineCallbacks
def test_smpplib_binds_submits_gets_a_receipt_and_unbinds(listener: SmppListener) -> Any:
    """smpplib binds as transceiver, submits (the intake sees it), receives the receipt as
    deliver_sm (which fires deliver_receipt's Deferred when acknowledged), unbinds."""
    intake: RecordingIntake = listener.intake  # type: ignore[assignment]
    client = client_for(listener)
    sent: list[Any] = []
    received: list[Any] = []
    client.set_message_sent_handler(lambda pdu: sent.append(pdu))
    client.set_message_received_handler(lambda pdu: received.append(pdu))

    def bind_and_submit() -> None:
        client.connect()
        client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
        client.send_message(
            source_addr="95588",
            destination_addr="13800138000",
            short_message=b"exam at 9:00",
            registered_delivery=1,
        )
        client.read_once()  # submit_sm_resp -> message_sent_handler

    yield deferToThread(bind_and_submit)
    assert intake.calls == [(SYSTEM_ID, PhoneNumber("13800138000"), "exam at 9:00", True)]
    message_id = sent[0].message_id.decode()
    assert message_id == "gw1"

    receipt = listener.deliver_receipt(SYSTEM_ID, message_id, "DELIVRD", "000")
    yield deferToThread(client.read_once)  # deliver_sm -> handler -> deliver_sm_resp
    yield receipt
    [deliver] = received
    assert deliver.esm_class == 0x04  # SMSC delivery receipt
    assert deliver.receipted_message_id.rstrip(b"\0").decode() == "gw1"
    assert b"stat:DELIVRD" in deliver.short_message

    def unbind() -> int:
        resp = client.unbind()
        client.disconnect()
        return int(resp.status)

    assert (yield deferToThread(unbind)) == 0


@pytest_twisted.inlineCallbacks
def test_smpplib_wrong_password_gets_esme_rinvpaswd(listener: SmppListener) -> Any:
    """A bind with a wrong password is refused with ESME_RINVPASWD."""
    status = yield deferToThread(bind_status, listener, SYSTEM_ID, "wrong")
    assert status == smpplib.consts.SMPP_ESME_RINVPASWD


@pytest_twisted.inlineCallbacks
def test_smpplib_unknown_system_id_gets_esme_rinvsysid(listener: SmppListener) -> Any:
    """A bind with an unknown system_id is refused with ESME_RINVSYSID."""
    status = yield deferToThread(bind_status, listener, "stranger", PASSWORD)
    assert status == smpplib.consts.SMPP_ESME_RINVSYSID


@pytest_twisted.inlineCallbacks
def test_smpplib_is_locked_out_after_repeated_failures(listener: SmppListener) -> Any:
    """After max_bind_failures (3) wrong passwords, even the right one gets ESME_RBINDFAIL."""
    for _ in range(3):
        status = yield deferToThread(bind_status, listener, SYSTEM_ID, "wrong")
        assert status == smpplib.consts.SMPP_ESME_RINVPASWD
    status = yield deferToThread(bind_status, listener, SYSTEM_ID, PASSWORD)
    assert status == smpplib.consts.SMPP_ESME_RBINDFAIL


@pytest_twisted.inlineCallbacks
def test_smpplib_binds_over_tls(tmp_path: Any) -> Any:
    """With tls_certificate set the listener speaks TLS: smpplib, verifying our
    certificate, binds and unbinds."""
    certificate_path, certificate_pem = self_signed_pem(tmp_path)
    config = SmppServerConfig(
        listen="127.0.0.1:0",
        tls_certificate=certificate_path,
        accounts=(PartnerAccount(system_id=SYSTEM_ID, password=Secret(PASSWORD)),),
    )
    service = SmppListener(config, RecordingIntake(), {}, reactor)
    service.startService()
    try:
        port = yield service.listening()
        context = ssl.create_default_context(cadata=certificate_pem)
        context.check_hostname = False  # smpplib wraps the socket without a server name
        client = smpplib.client.Client(
            "127.0.0.1",
            port.getHost().port,
            timeout=5,
            ssl_context=context,
            allow_unknown_opt_params=True,
        )

        def bind_and_unbind() -> int:
            client.connect()
            client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
            status = int(client.unbind().status)
            client.disconnect()
            return status

        assert (yield deferToThread(bind_and_unbind)) == 0
    finally:
        yield service.stopService()
