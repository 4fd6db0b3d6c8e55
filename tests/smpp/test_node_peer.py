"""Carrier links and the listener against node-smpp (farhadi/node-smpp), a third SMPP
implementation besides smpplib and Kannel, over real TCP on 127.0.0.1.

node-smpp plays the carrier's SMSC (our link binds to it) or a partner ESME (it binds to
our listener); tests/peers/node_smpp.py drives it.  Every test asserts what node-smpp
saw on the wire or what it got back.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks

from gateway.config import PartnerAccount, Secret, StatusClassOverride
from gateway.ports import OutboundSms
from gateway.privacy import PhoneNumber
from gateway.smpp.listener import SmppListener
from gateway.smpp.pdu import CommandStatus
from gateway.smpp.times import parse_time
from tests.peers.node_smpp import NodeSmppPeer
from tests.smpp.test_link import WAIT_SECONDS, WaitingSink, real_link
from tests.smpp.test_listener import RecordingIntake, server_config

CITIZEN = PhoneNumber("13800138000")
RECEIPT = "id:{id} sub:001 dlvrd:001 submit date:2612021200 done date:2612021201 stat:DELIVRD err:000 text:"


def wait(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(WAIT_SECONDS, global_reactor)


@inlineCallbacks
def node_smsc_link(peer: NodeSmppPeer, sink: WaitingSink, **config: Any) -> Any:
    """A carrier link bound to node-smpp as SMSC; returns (link, node session number)."""
    port = yield peer.listen()
    link = real_link(port, sink, **config)
    link.startService()
    yield wait(link.when_bound())
    bind = yield peer.next_pdu("bind_transceiver")
    return link, bind["session"]


# -- item 1: receipts with data_coding 8 and ASCII text -------------------------------------


@pytest_twisted.inlineCallbacks
def test_receipt_declared_ucs2_but_written_in_ascii_is_read(node_peer: NodeSmppPeer) -> Any:
    """node-smpp sends a receipt with data_coding 8 whose Appendix B text is ASCII: the link
    records it (id and DELIVRD) and answers deliver_sm_resp ESME_ROK."""
    sink = WaitingSink()
    link, session = yield node_smsc_link(node_peer, sink)
    try:
        accepted = yield wait(link.submit(OutboundSms("n1", CITIZEN, "您的验证码是123456")))
        [message_id] = accepted.message_ids
        response = yield node_peer.send(
            session, "deliver_sm", source_addr="13800138000", destination_addr="12123",
            esm_class=0x04, data_coding=8, short_message=RECEIPT.format(id=message_id).encode("ascii"),
        )
        assert response["command_status"] == CommandStatus.ESME_ROK
        yield sink.wait_for("receipt", 1)
        [receipt] = sink.receipts
        assert (receipt.message_id, receipt.state) == (message_id, "DELIVRD")
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_unreadable_receipt_gets_a_temporary_error_when_the_carrier_resends(
    node_peer: NodeSmppPeer,
) -> Any:
    """A receipt with neither id nor stat in any reading is answered ESME_RX_T_APPN (the
    SMSC sends it again), or ESME_RX_P_APPN where the carrier does not resend."""
    sink = WaitingSink()
    link, session = yield node_smsc_link(node_peer, sink)
    try:
        response = yield node_peer.send(
            session, "deliver_sm", esm_class=0x04, data_coding=8, short_message=b"garbled receipt",
        )
        assert response["command_status"] == CommandStatus.ESME_RX_T_APPN
    finally:
        yield link.stopService()
    sink2 = WaitingSink()
    link, session = yield node_smsc_link(node_peer, sink2, unreadable_receipt_resend=False)
    try:
        response = yield node_peer.send(
            session, "deliver_sm", esm_class=0x04, data_coding=8, short_message=b"garbled receipt",
        )
        assert response["command_status"] == CommandStatus.ESME_RX_P_APPN
        assert sink.receipts == sink2.receipts == []
    finally:
        yield link.stopService()


# -- item 2: the alphabet of data_coding 0 ---------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_carrier_mo_in_data_coding_0_is_read_with_the_carriers_alphabet(
    node_peer: NodeSmppPeer,
) -> Any:
    """An MO whose data_coding 0 octets are ASCII reads as ASCII on a carrier configured
    `data_coding_0_alphabet: ascii` (GSM 03.38 would give ¡ ¤ § for @ $ _)."""
    sink = WaitingSink()
    link, session = yield node_smsc_link(node_peer, sink, data_coding_0_alphabet="ascii")
    try:
        response = yield node_peer.send(
            session, "deliver_sm", source_addr="13800138000", destination_addr="12123",
            data_coding=0, short_message=b"QX a@b.cn $5 my_plate",
        )
        assert response["command_status"] == CommandStatus.ESME_ROK
        yield sink.wait_for("mo", 1)
        assert [mo.text for mo in sink.mos] == ["QX a@b.cn $5 my_plate"]
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_partner_submit_in_data_coding_0_is_read_with_the_accounts_alphabet(
    node_peer: NodeSmppPeer,
) -> Any:
    """node-smpp as a partner ESME submits data_coding 0 latin-1/ASCII text: an account
    with `data_coding_0_alphabet: latin-1` hands the intake exactly that text, an account
    with the default reads GSM 03.38."""
    intake = RecordingIntake()
    accounts = (
        PartnerAccount(system_id="latin", password=Secret("pw"), data_coding_0_alphabet="latin-1"),
        PartnerAccount(system_id="gsm", password=Secret("pw")),
    )
    listener = SmppListener(server_config(accounts=accounts), intake, {}, global_reactor)
    listener.startService()
    try:
        port = yield listener.listening()
        for system_id in ("latin", "gsm"):
            session = yield node_peer.connect(port.getHost().port)
            bound = yield node_peer.send(session, "bind_transmitter", system_id=system_id, password="pw")
            assert bound["command_status"] == 0
            response = yield node_peer.send(
                session, "submit_sm", destination_addr="13800138000", data_coding=0,
                short_message=b"pay $5 at a@b_c",
            )
            assert response["command_status"] == 0 and response["message_id"]
        assert [(c[0], c[2]) for c in intake.calls] == [
            ("latin", "pay $5 at a@b_c"), ("gsm", "pay ¤5 at a¡b§c"),
        ]
    finally:
        yield listener.stopService()



# -- item 4: error classes ------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_system_error_from_the_smsc_is_temporary_and_overridable(node_peer: NodeSmppPeer) -> Any:
    """node-smpp answers submit_sm with ESME_RSYSERR (0x08): by default a temporary failure
    (the pipeline retries later); with `error_classes: [{status: 0x08, treat_as:
    permanent}]` a permanent one (fail over)."""
    sink = WaitingSink()
    yield node_peer.configure(submit_statuses=[0x08, 0x08])
    link, _ = yield node_smsc_link(node_peer, sink)
    try:
        failure = yield wait(link.submit(OutboundSms("n1", CITIZEN, "hello"))).addCallbacks(
            lambda r: pytest.fail(f"accepted: {r}"), lambda f: f.value
        )
        assert (failure.transient, failure.status, failure.response_unknown) == (True, "ESME_RSYSERR", False)
    finally:
        yield link.stopService()
    override = (StatusClassOverride(status=0x08, treat_as="permanent"),)
    link, _ = yield node_smsc_link(node_peer, sink, error_classes=override)
    try:
        failure = yield wait(link.submit(OutboundSms("n2", CITIZEN, "hello"))).addCallbacks(
            lambda r: pytest.fail(f"accepted: {r}"), lambda f: f.value
        )
        assert (failure.transient, failure.status) == (False, "ESME_RSYSERR")
        yield node_peer.next_pdu("submit_sm")
        yield node_peer.next_pdu("submit_sm")
        assert len(node_peer.pdus("submit_sm")) == 2  # one submit each, no resend by the link
    finally:
        yield link.stopService()


# -- item 5: bind refusals --------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_bind_fail_after_a_reconnect_is_retried_soon(node_peer: NodeSmppPeer) -> Any:
    """node-smpp refuses the first bind with ESME_RBINDFAIL (0x0D): the link binds again
    after its short backoff, not after bind_rejected_retry_seconds (300 s)."""
    yield node_peer.configure(bind_statuses=[0x0D])
    sink = WaitingSink()
    port = yield node_peer.listen()
    link = real_link(port, sink, bind_rejected_retry_seconds=300.0)
    link.startService()
    try:
        yield wait(link.when_bound())
        first = yield node_peer.next_pdu("bind_transceiver")
        second = yield node_peer.next_pdu("bind_transceiver")
        assert first["session"] != second["session"]  # a new connection, bound this time
        accepted = yield wait(link.submit(OutboundSms("n1", CITIZEN, "after the refusal")))
        assert len(accepted.message_ids) == 1
    finally:
        yield link.stopService()


# -- item 6: validity_period and priority_flag --------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_submit_carries_validity_period_and_priority_flag(node_peer: NodeSmppPeer) -> Any:
    """A high-lane message that expires in 10 minutes reaches node-smpp with priority_flag 1
    and a relative validity_period of 10 minutes; absolute mode writes the UTC instant;
    `validity_period: off` and `priority_flag_high_lane: 0` leave both empty/0."""
    sink = WaitingSink()
    link, _ = yield node_smsc_link(node_peer, sink)
    try:
        now = global_reactor.seconds()
        yield wait(link.submit(OutboundSms("n1", CITIZEN, "code", validity_seconds=600, lane="high")))
        yield wait(link.submit(OutboundSms("n2", CITIZEN, "reminder", validity_seconds=600)))
        high = yield node_peer.next_pdu("submit_sm")
        normal = yield node_peer.next_pdu("submit_sm")
        assert (high["priority_flag"], normal["priority_flag"]) == (1, 0)
        assert high["validity_period"].endswith("R")
        assert 590 <= parse_time(high["validity_period"], now=now) - now <= 600
    finally:
        yield link.stopService()
    link, _ = yield node_smsc_link(node_peer, sink, validity_period="absolute")
    try:
        now = global_reactor.seconds()
        yield wait(link.submit(OutboundSms("n3", CITIZEN, "code", validity_seconds=600, lane="high")))
        submit = yield node_peer.next_pdu("submit_sm")
        assert submit["validity_period"].endswith("00+")
        assert abs(parse_time(submit["validity_period"], now=0) - (now + 600)) < 1
    finally:
        yield link.stopService()
    link, _ = yield node_smsc_link(node_peer, sink, validity_period="off", priority_flag_high_lane=0)
    try:
        yield wait(link.submit(OutboundSms("n4", CITIZEN, "code", validity_seconds=600, lane="high")))
        submit = yield node_peer.next_pdu("submit_sm")
        assert (submit["validity_period"], submit["priority_flag"]) == ("", 0)
    finally:
        yield link.stopService()
