"""The SMPP listener with a Clock and StringTransports: partner binds and their checks,
lock-out, partner submits, receipts to partners, carrier outbind."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.config import PartnerAccount, Secret, SmppServerConfig
from gateway.ports import PartnerMessageState
from gateway.privacy import PhoneNumber
from gateway.smpp.link import CarrierLink
from gateway.smpp.listener import (
    BindFailureTracker,
    ListenerOptions,
    NoReceiverBound,
    ReceiptRefused,
    SmppListener,
)
from gateway.smpp.pdu import (
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CancelSm,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    Outbind,
    Pdu,
    QuerySm,
    QuerySmResp,
    ReplaceSm,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
)
from gateway.smpp.receipts import receipt_from_deliver
from gateway.smpp.simulator import CarrierSimulator, options_for_carrier
from gateway.smpp.tlv import Tlv, TlvTag
from tests.smpp.test_link import (
    WAIT_SECONDS,
    FakeSmsc,
    RecordingSink,
    StringEndpoint,
    WaitingSink,
    carrier_config,
    decode_all,
    result_of,
)


class RecordingIntake:
    """A PartnerIntake that records calls and answers with message ids (or as told)."""

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.calls: list[tuple[str, PhoneNumber, str, bool]] = []
        self.pending: list[Deferred[tuple[str, ...]]] = []
        self.options: list[dict[str, Any]] = []
        self.states: dict[str, PartnerMessageState] = {}
        self.queries: list[tuple[str, str]] = []
        self.changeable: set[str] = set()
        self.replaced: list[tuple[str, str, bytes]] = []

    def submit_from_partner(
        self, system_id: str, destination: PhoneNumber, text: str, registered_delivery: bool,
        **options: Any,
    ) -> Deferred[tuple[str, ...]]:
        self.calls.append((system_id, destination, text, registered_delivery))
        self.options.append(options)
        parts = max(1, len(options.get("receipt_parts", ())))
        if self.immediate:
            return succeed(self.ids(f"gw{len(self.calls)}", parts))
        d: Deferred[tuple[str, ...]] = Deferred()
        self.pending.append(d)
        return d

    def query_from_partner(self, system_id: str, message_id: str) -> Deferred[PartnerMessageState | None]:
        self.queries.append((system_id, message_id))
        return succeed(self.states.get(message_id))

    def cancel_from_partner(self, system_id: str, message_id: str) -> Deferred[bool]:
        return succeed(message_id in self.changeable)

    def replace_from_partner(self, system_id: str, message_id: str, short_message: bytes,
                             **options: Any) -> Deferred[bool]:
        if message_id in self.changeable:
            self.replaced.append((system_id, message_id, short_message))
        return succeed(message_id in self.changeable)

    @staticmethod
    def ids(message_id: str, parts: int = 1) -> tuple[str, ...]:
        return (message_id, *(f"{message_id}-{k}" for k in range(2, parts + 1)))


def server_config(**overrides: Any) -> SmppServerConfig:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "accounts": (
            PartnerAccount(system_id="partner", password=Secret("pw123"), tps_limit=5.0),
            PartnerAccount(
                system_id="faraway", password=Secret("pw"), allowed_networks=("10.0.0.0/8",)
            ),
            PartnerAccount(
                system_id="txonly", password=Secret("pw"), allowed_bind_types=("transmitter",)
            ),
        ),
        "max_bind_failures": 3,
        "bind_failure_window_seconds": 60.0,
        "lockout_seconds": 600.0,
        "response_timeout_seconds": 10.0,
        "enquire_link_interval_seconds": 300.0,
        "window": 2,
    }
    settings.update(overrides)
    return SmppServerConfig(**settings)


class Peer(FakeSmsc):
    """The partner (or carrier) end of one listener connection."""


def make_listener(
    intake: RecordingIntake | None = None,
    links: dict[str, CarrierLink] | None = None,
    **config: Any,
) -> tuple[SmppListener, Clock, RecordingIntake]:
    clock = Clock()
    clock.advance(1_700_000_000)  # receipts print dates
    intake = intake or RecordingIntake()
    listener = SmppListener(
        server_config(**config),
        intake,
        links or {},
        clock,
        options=ListenerOptions(reassembly_timeout_seconds=30),
    )
    return listener, clock, intake


def connect(listener: SmppListener, host: str = "127.0.0.1") -> Peer:
    protocol = listener._new_protocol()
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    protocol.makeConnection(transport)
    return Peer(protocol, transport)


def bind(
    peer: Peer, system_id: str = "partner", password: str = "pw123", cls: type = BindTransceiver
) -> Pdu:
    peer.send(cls(1, system_id=system_id, password=password))
    [resp] = peer.read()
    return resp


# -- binds ------------------------------------------------------------------------------------


def test_partner_binds_with_its_account() -> None:
    """The right system_id and password from an allowed network bind; the resp names the gateway."""
    listener, _, _ = make_listener()
    assert bind(connect(listener)) == BindTransceiverResp(1, system_id="12123GW")


@pytest.mark.parametrize(
    ("system_id", "password", "host", "status"),
    [
        ("nobody", "pw123", "127.0.0.1", CommandStatus.ESME_RINVSYSID),
        ("partner", "wrong", "127.0.0.1", CommandStatus.ESME_RINVPASWD),
        ("faraway", "pw", "127.0.0.1", CommandStatus.ESME_RBINDFAIL),
    ],
    ids=["unknown-system-id", "wrong-password", "outside-allowed-networks"],
)
def test_bind_refusals(system_id: str, password: str, host: str, status: CommandStatus) -> None:
    """Unknown system_id, wrong password and a source outside allowed_networks are refused."""
    listener, _, _ = make_listener()
    assert bind(connect(listener, host), system_id, password) == BindTransceiverResp(1, status)


def test_partner_from_its_allowed_network_binds() -> None:
    """faraway binds from 10.1.2.3, inside its 10.0.0.0/8."""
    listener, _, _ = make_listener()
    assert (
        bind(connect(listener, "10.1.2.3"), "faraway", "pw").command_status
        == CommandStatus.ESME_ROK
    )


def test_bind_type_not_allowed_is_refused() -> None:
    """An account limited to transmitter cannot bind as transceiver, but can as transmitter."""
    listener, _, _ = make_listener()
    assert bind(connect(listener), "txonly", "pw").command_status == CommandStatus.ESME_RBINDFAIL
    assert bind(connect(listener), "txonly", "pw", BindTransmitter) == BindTransmitterResp(
        1, system_id="12123GW"
    )


def test_repeated_failures_lock_the_address_out() -> None:
    """After max_bind_failures failed binds, even the right password gets ESME_RBINDFAIL and
    the connection closes, until lockout_seconds have passed."""
    listener, clock, _ = make_listener(max_bind_failures=3, lockout_seconds=600)
    for _ in range(3):
        assert (
            bind(connect(listener), "partner", "wrong").command_status
            == CommandStatus.ESME_RINVPASWD
        )
    peer = connect(listener)
    assert bind(peer).command_status == CommandStatus.ESME_RBINDFAIL
    assert peer.transport.disconnecting
    assert (
        bind(connect(listener, "127.0.0.2")).command_status == CommandStatus.ESME_ROK
    )  # per address
    clock.advance(600)
    assert bind(connect(listener)).command_status == CommandStatus.ESME_ROK


def test_refused_bind_type_does_not_count_towards_lock_out() -> None:
    """A bind type not allowed is a usage error, not a guess: it never locks the address."""
    listener, _, _ = make_listener(max_bind_failures=1)
    bind(connect(listener), "txonly", "pw")
    assert bind(connect(listener)).command_status == CommandStatus.ESME_ROK


def test_failure_tracker_forgets_failures_outside_the_window() -> None:
    """Failures older than the window do not count."""
    tracker = BindFailureTracker(3, 60.0, 600.0)
    assert not tracker.failed("a", 0)
    assert not tracker.failed("a", 10)
    assert not tracker.failed("a", 61)  # the first one expired: 2 in the window
    assert not tracker.is_locked("a", 61)
    assert tracker.failed("a", 62)
    assert tracker.is_locked("a", 661) and not tracker.is_locked("a", 662)


def test_failure_tracker_is_bounded() -> None:
    """At most max_addresses addresses are remembered."""
    tracker = BindFailureTracker(3, 60.0, 600.0, max_addresses=2)
    for address in ("a", "b", "c"):
        tracker.failed(address, 0)
    assert len(tracker._failures) == 2


# -- partner submits ------------------------------------------------------------------------------


def bound_partner(
    intake: RecordingIntake | None = None, **config: Any
) -> tuple[SmppListener, Peer, Clock, RecordingIntake]:
    listener, clock, intake = make_listener(intake, **config)
    peer = connect(listener)
    assert bind(peer).command_status == CommandStatus.ESME_ROK
    return listener, peer, clock, intake


def test_partner_submit_reaches_the_intake_and_gets_the_gateway_message_id() -> None:
    """submit_sm is decoded and handed to the intake; submit_sm_resp waits for its id."""
    listener, peer, _, intake = bound_partner(RecordingIntake(immediate=False))
    peer.send(
        SubmitSm(
            5,
            destination_addr="+8613800138000",
            registered_delivery=1,
            data_coding=8,
            short_message="考试提醒".encode("utf-16-be"),
        )
    )
    assert intake.calls == [("partner", PhoneNumber("13800138000"), "考试提醒", True)]
    assert peer.read() == []
    intake.pending[0].callback(("gw-42",))
    assert peer.read() == [SubmitSmResp(5, message_id="gw-42")]


def test_partner_data_sm_is_accepted_too() -> None:
    """data_sm with message_payload is a submit like any other."""
    listener, peer, _, intake = bound_partner()
    peer.send(
        DataSm(6, destination_addr="13800138000", tlvs=(Tlv(TlvTag.MESSAGE_PAYLOAD, b"hello"),))
    )
    assert intake.calls[0][2] == "hello"
    assert peer.read() == [DataSmResp(6, message_id="gw1")]


def test_partner_beyond_its_tps_limit_is_throttled() -> None:
    """With tps_limit 5 the sixth submit in the same instant gets ESME_RTHROTTLED."""
    listener, peer, clock, intake = bound_partner()
    peer.send(
        *[SubmitSm(10 + i, destination_addr="13800138000", short_message=b"x") for i in range(6)]
    )
    statuses = [p.command_status for p in peer.read()]
    assert statuses == [0] * 5 + [CommandStatus.ESME_RTHROTTLED]
    clock.advance(0.2)
    peer.send(SubmitSm(20, destination_addr="13800138000", short_message=b"x"))
    assert peer.read()[0].command_status == CommandStatus.ESME_ROK


def test_partner_submit_to_a_non_mobile_number_is_refused() -> None:
    """A destination that is not a Chinese mobile number gets ESME_RINVDSTADR."""
    listener, peer, _, intake = bound_partner()
    peer.send(SubmitSm(5, destination_addr="12345", short_message=b"x"))
    assert peer.read() == [SubmitSmResp(5, CommandStatus.ESME_RINVDSTADR)]
    assert intake.calls == []


def udh_submit(sequence_number: int, reference: int, total: int, index: int, text: str) -> SubmitSm:
    return SubmitSm(
        sequence_number,
        destination_addr="13800138000",
        esm_class=0x40,
        data_coding=8,
        short_message=bytes((5, 0, 3, reference, total, index)) + text.encode("utf-16-be"),
    )


def test_partner_multi_part_submit_is_joined_and_every_part_answered() -> None:
    """A UDH multi-part submit becomes one intake call; each part gets its own id."""
    listener, peer, _, intake = bound_partner()
    peer.send(udh_submit(1, 77, 2, 1, "第一"))
    assert intake.calls == [] and peer.read() == []
    peer.send(udh_submit(2, 77, 2, 2, "第二"))
    assert [c[2] for c in intake.calls] == ["第一第二"]
    assert sorted((p.sequence_number, p.message_id) for p in peer.read()) == [
        (1, "gw1"),
        (2, "gw1-2"),
    ]  # type: ignore[attr-defined]


def test_partner_multi_part_submit_never_completed_fails_its_parts() -> None:
    """Parts whose siblings never come are answered ESME_RSUBMITFAIL after the timeout."""
    listener, peer, clock, intake = bound_partner()
    peer.send(udh_submit(1, 77, 3, 1, "第一"))
    clock.advance(30)
    assert peer.read() == [SubmitSmResp(1, CommandStatus.ESME_RSUBMITFAIL)]
    assert intake.calls == []


def test_intake_failure_answers_a_system_error() -> None:
    """If the intake cannot record the message (Redis down), the partner gets ESME_RSYSERR."""
    listener, peer, _, intake = bound_partner(RecordingIntake(immediate=False))
    peer.send(SubmitSm(5, destination_addr="13800138000", short_message=b"x"))
    intake.pending[0].errback(ConnectionError("redis down"))
    assert peer.read() == [SubmitSmResp(5, CommandStatus.ESME_RSYSERR)]


def test_submit_on_a_receiver_bind_is_refused_by_the_state_table() -> None:
    """A receiver may not submit: ESME_RINVBNDSTS."""
    listener, _, _ = make_listener()
    peer = connect(listener)
    assert bind(peer, cls=BindReceiver) == BindReceiverResp(1, system_id="12123GW")
    peer.send(SubmitSm(5, destination_addr="13800138000"))
    assert peer.read() == [SubmitSmResp(5, CommandStatus.ESME_RINVBNDSTS)]


def test_query_sm_is_answered_from_the_intakes_state() -> None:
    """query_sm of a known id gets its message_state and final date (absolute, UTC); an
    unknown one ESME_RQUERYFAIL."""
    listener, peer, _, intake = bound_partner()
    intake.states["gw7"] = PartnerMessageState(2, 1_700_000_000.0, 0)
    peer.send(QuerySm(5, message_id="gw7"), QuerySm(6, message_id="x"))
    assert peer.read() == [
        QuerySmResp(5, message_id="gw7", final_date="231114221320000+", message_state=2),
        QuerySmResp(6, CommandStatus.ESME_RQUERYFAIL),
    ]
    assert intake.queries == [("partner", "gw7"), ("partner", "x")]


def test_cancel_and_replace_sm_answer_what_the_intake_could_do() -> None:
    """cancel_sm / replace_sm get ESME_ROK when the intake changed the message, else
    ESME_RCANCELFAIL / ESME_RREPLACEFAIL; cancel_sm without a message_id is refused."""
    listener, peer, _, intake = bound_partner()
    intake.changeable.add("gw7")
    peer.send(CancelSm(5, message_id="gw7"), CancelSm(6, message_id="gw8"), CancelSm(7))
    peer.send(ReplaceSm(8, message_id="gw7", short_message=b"new"), ReplaceSm(9, message_id="gw8"))
    assert [(type(r).__name__, r.command_status) for r in peer.read()] == [
        ("CancelSmResp", CommandStatus.ESME_ROK),
        ("CancelSmResp", CommandStatus.ESME_RCANCELFAIL),
        ("CancelSmResp", CommandStatus.ESME_RCANCELFAIL),
        ("ReplaceSmResp", CommandStatus.ESME_ROK),
        ("ReplaceSmResp", CommandStatus.ESME_RREPLACEFAIL),
    ]
    assert intake.replaced == [("partner", "gw7", b"new")]


# -- receipts to partners -------------------------------------------------------------------------


def test_receipt_goes_to_the_partner_as_deliver_sm() -> None:
    """deliver_receipt sends an esm_class 0x04 deliver_sm with the receipt text and TLVs and
    fires on deliver_sm_resp."""
    listener, peer, clock, _ = bound_partner()
    peer.send(SubmitSm(5, source_addr="95588", destination_addr="13800138000", short_message=b"x"))
    peer.read()
    clock.advance(60)
    d = listener.deliver_receipt("partner", "gw1", "DELIVRD", "0")
    [receipt] = peer.read()
    assert isinstance(receipt, DeliverSm)
    assert (receipt.esm_class, receipt.source_addr, receipt.destination_addr) == (
        4,
        "13800138000",
        "95588",
    )
    text = receipt.short_message.decode()
    assert text.startswith(
        "id:gw1 sub:001 dlvrd:001 submit date:2311150613 done date:2311150614 stat:DELIVRD err:000"
    )
    parsed = receipt_from_deliver(receipt)
    assert parsed is not None and (parsed.message_id, parsed.stat) == ("gw1", "DELIVRD")
    assert not d.called
    peer.send(DeliverSmResp(receipt.sequence_number))
    assert result_of(d) is None


def test_receipt_without_a_receiver_bound_fails() -> None:
    """No receiver/transceiver session for the partner: NoReceiverBound (the pipeline retries)."""
    listener, _, _ = make_listener()
    failure = result_of(listener.deliver_receipt("partner", "gw1", "DELIVRD", "000"))
    assert failure.check(NoReceiverBound)


def test_receipt_refused_by_the_partner_fails_with_its_status() -> None:
    """deliver_sm_resp with an error status fails the Deferred with ReceiptRefused."""
    listener, peer, _, _ = bound_partner()
    d = listener.deliver_receipt("partner", "gw9", "UNDELIV", "001")
    [receipt] = peer.read()
    peer.send(DeliverSmResp(receipt.sequence_number, CommandStatus.ESME_RX_T_APPN))
    failure = result_of(d)
    assert failure.check(ReceiptRefused) and failure.value.status == CommandStatus.ESME_RX_T_APPN


def test_receiver_gone_means_no_receipts() -> None:
    """After the partner's connection drops, receipts fail with NoReceiverBound."""
    listener, peer, _, _ = bound_partner()
    peer.protocol.connectionLost(Failure(ConnectionDone()))
    assert result_of(listener.deliver_receipt("partner", "gw1", "DELIVRD", "000")).check(
        NoReceiverBound
    )


# -- carrier outbind ------------------------------------------------------------------------------


def outbind_link(sink: RecordingSink) -> CarrierLink:
    config = carrier_config(
        accept_outbind=True, outbind_system_id="CMCC-SMSC", outbind_password=Secret("ob")
    )
    return CarrierLink(config, sink, Clock(), endpoint=StringEndpoint(), jitter=lambda: 0.0)


def test_carrier_outbind_hands_the_connection_to_its_link() -> None:
    """An outbind with the carrier's outbind credentials makes the link bind_receiver over
    that connection with its own credentials; deliver_sm then reaches the link's sink."""
    sink = RecordingSink()
    link = outbind_link(sink)
    listener, _, _ = make_listener(links={"cmcc": link})
    peer = connect(listener)
    peer.send(Outbind(1, system_id="CMCC-SMSC", password="ob"))
    [bind_receiver] = peer.read()
    assert bind_receiver == BindReceiver(
        bind_receiver.sequence_number, system_id="gw12123", password="secret"
    )
    peer.send(BindReceiverResp(bind_receiver.sequence_number, system_id="CMCC"))
    receipt_text = b"id:77 sub:001 dlvrd:001 submit date:2501011200 done date:2501011201 stat:DELIVRD err:000 text:"
    peer.send(DeliverSm(9, esm_class=4, short_message=receipt_text))
    assert [(r.carrier, r.message_id, r.state) for r in sink.receipts] == [
        ("cmcc", "77", "DELIVRD")
    ]
    assert peer.read() == [DeliverSmResp(9)]


def test_wrong_outbind_closes_the_connection() -> None:
    """An outbind nobody expects is logged and the connection closed."""
    link = outbind_link(RecordingSink())
    listener, _, _ = make_listener(links={"cmcc": link})
    peer = connect(listener)
    peer.send(Outbind(1, system_id="CMCC-SMSC", password="nope"))
    assert peer.read() == []
    assert peer.transport.disconnecting


def test_outbind_refused_without_carriers_accepting_it() -> None:
    """With no carrier accepting outbind, outbind gets generic_nack ESME_RINVBNDSTS."""
    listener, _, _ = make_listener()
    peer = connect(listener)
    peer.send(Outbind(1, system_id="x", password="y"))
    [nack] = decode_all(peer.transport.value())
    assert nack.command_status == CommandStatus.ESME_RINVBNDSTS


# -- real peers ---------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_simulated_carrier_outbinds_and_its_mo_reaches_the_link() -> Any:
    """Over real TCP: the carrier simulator outbinds to our listener, the link binds as
    receiver with its own credentials, and an MO sent by the simulator is recorded."""
    sink = WaitingSink()
    config = carrier_config(
        accept_outbind=True, outbind_system_id="CMCC-SMSC", outbind_password=Secret("ob")
    )
    link = CarrierLink(config, sink, global_reactor, jitter=lambda: 0.0)
    listener = SmppListener(
        server_config(enquire_link_interval_seconds=30.0),
        RecordingIntake(),
        {"cmcc": link},
        global_reactor,
    )
    simulator = CarrierSimulator(options_for_carrier(config, port=0), global_reactor)
    simulator.startService()
    listener.startService()
    try:
        port = yield listener.listening()
        yield simulator.outbind("127.0.0.1", port.getHost().port, "CMCC-SMSC", "ob").addTimeout(
            WAIT_SECONDS, global_reactor
        )
        yield simulator.send_mo("13800138000", "查询预约").addTimeout(WAIT_SECONDS, global_reactor)
        [mo] = sink.mos
        assert (mo.carrier, mo.text, mo.source) == ("cmcc", "查询预约", PhoneNumber("13800138000"))
        assert simulator.counters.binds == 1
    finally:
        yield link.stopService()
        yield listener.stopService()
        yield simulator.stopService()


def test_stop_unbinds_partners_and_closes() -> None:
    """stopService sends unbind to every bound partner and closes after unbind_resp."""
    listener, peer, _, _ = bound_partner()
    stopped = listener.stopService()
    [unbind] = peer.read()
    assert isinstance(unbind, Unbind)
    assert not stopped.called
    peer.send(UnbindResp(unbind.sequence_number))
    assert stopped.called
    assert peer.transport.disconnecting
