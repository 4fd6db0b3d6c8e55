"""The carrier link with a Clock and StringTransports: binding, submitting, receipts, MOs,
reconnecting and stopping, asserted on the bytes the SMSC would see."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import metrics
from gateway.config import CarrierConfig, Secret, StatusClassOverride
from gateway.ports import DeliveryReceipt, MobileOriginated, OutboundSms, SubmitAccepted
from gateway.privacy import PhoneNumber
from gateway.smpp.link import CarrierLink, LinkOptions, LinkSubmitFailed
from gateway.smpp.pdu import (
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandStatus,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    encode,
)
from gateway.smpp.text import decode_pdu_text
from gateway.smpp.tlv import Tlv, TlvTag
from tests.smpp import decode_all

CITIZEN = PhoneNumber("13800138000")


def carrier_config(**overrides: Any) -> CarrierConfig:
    settings: dict[str, Any] = {
        "name": "cmcc",
        "host": "127.0.0.1",
        "port": 2775,
        "system_id": "gw12123",
        "password": Secret("secret"),
        "prefixes": ("138", "139"),
        "window": 4,
        "tps_limit": 1000.0,
        "response_timeout_seconds": 10.0,
        "enquire_link_interval_seconds": 30.0,
        "reconnect_initial_seconds": 1.0,
        "reconnect_max_seconds": 8.0,
        "bind_rejected_retry_seconds": 300.0,
    }
    settings.update(overrides)
    return CarrierConfig(**settings)


class FakeSmsc:
    """The far end of one StringTransport connection, driven by the test."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def read(self) -> list[Pdu]:
        data = self.transport.value()
        self.transport.clear()
        return decode_all(data)

    def send(self, *pdus: Pdu) -> None:
        self.protocol.dataReceived(b"".join(encode(p) for p in pdus))

    def accept_bind(self) -> Pdu:
        [bind] = self.read()
        resp = {
            BindTransceiver: BindTransceiverResp,
            BindTransmitter: BindTransmitterResp,
            BindReceiver: BindReceiverResp,
        }[type(bind)]
        self.send(resp(bind.sequence_number, system_id="SMSC"))
        return bind

    def drop(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Connects at once over a StringTransport (or refuses, when told to)."""

    def __init__(self) -> None:
        self.smscs: list[FakeSmsc] = []
        self.refuse = 0
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.smscs.append(FakeSmsc(protocol, transport))
        return succeed(protocol)


class RecordingSink:
    """An InboundSink whose Deferreds the test fires (or that fire at once)."""

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.receipts: list[DeliveryReceipt] = []
        self.mos: list[MobileOriginated] = []
        self.pending: list[Deferred[None]] = []

    def _result(self) -> Deferred[None]:
        if self.immediate:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        self.receipts.append(receipt)
        return self._result()

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        self.mos.append(message)
        return self._result()


def start_link(
    clock: Clock | None = None,
    sink: RecordingSink | None = None,
    options: LinkOptions | None = None,
    **config: Any,
) -> tuple[CarrierLink, StringEndpoint, Clock, RecordingSink]:
    clock = clock or Clock()
    sink = sink or RecordingSink()
    endpoint = StringEndpoint()
    link = CarrierLink(
        carrier_config(**config),
        sink,
        clock,
        endpoint=endpoint,
        options=options or LinkOptions(),
        jitter=lambda: 0.0,
    )
    link.startService()
    return link, endpoint, clock, sink


def bound_link(**kwargs: Any) -> tuple[CarrierLink, FakeSmsc, Clock, RecordingSink]:
    link, endpoint, clock, sink = start_link(**kwargs)
    [smsc] = endpoint.smscs
    smsc.accept_bind()
    assert link.is_bound()
    return link, smsc, clock, sink


def result_of(d: Deferred[Any]) -> Any:
    """The Deferred's result now (a Failure for errors), consuming errors."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


# -- binding -------------------------------------------------------------------------------


def test_link_binds_as_transceiver_with_its_credentials() -> None:
    """On start the link connects and sends bind_transceiver with system_id and password."""
    link, endpoint, _, _ = start_link(system_type="VMA")
    [smsc] = endpoint.smscs
    [bind] = smsc.read()
    assert bind == BindTransceiver(
        bind.sequence_number, system_id="gw12123", password="secret", system_type="VMA"
    )
    assert not link.is_bound()
    smsc.send(BindTransceiverResp(bind.sequence_number, system_id="SMSC"))
    assert link.is_bound()


def test_transmitter_receiver_mode_binds_a_pair_per_session() -> None:
    """bind_mode transmitter_receiver with sessions=2 opens two transmitters and two receivers."""
    link, endpoint, _, _ = start_link(bind_mode="transmitter_receiver", sessions=2)
    kinds = sorted(type(smsc.accept_bind()).__name__ for smsc in endpoint.smscs)
    assert kinds == ["BindReceiver", "BindReceiver", "BindTransmitter", "BindTransmitter"]
    assert link.is_bound()


def test_refused_bind_is_retried_after_bind_rejected_retry_seconds() -> None:
    """ESME_RINVPASWD closes the connection; the next attempt waits bind_rejected_retry_seconds."""
    link, endpoint, clock, _ = start_link(bind_rejected_retry_seconds=300.0)
    smsc = endpoint.smscs[0]
    [bind] = smsc.read()
    smsc.send(BindTransceiverResp(bind.sequence_number, CommandStatus.ESME_RINVPASWD))
    assert smsc.transport.disconnecting and not link.is_bound()
    smsc.drop()
    clock.advance(299)
    assert endpoint.attempts == 1
    clock.advance(1)
    assert endpoint.attempts == 2
    endpoint.smscs[1].accept_bind()
    assert link.is_bound()


def test_network_failures_back_off_exponentially() -> None:
    """Refused connections are retried after 1.5 s, 2.25 s, ... (backoffPolicy, no jitter)."""
    link, endpoint, clock, _ = start_link(reconnect_initial_seconds=1.0)
    endpoint.smscs[0].drop()  # connected but never bound
    endpoint.refuse = 2
    assert endpoint.attempts == 1
    clock.advance(1.5)
    assert endpoint.attempts == 2
    clock.advance(2.24)
    assert endpoint.attempts == 2
    clock.advance(0.01)
    assert endpoint.attempts == 3
    clock.advance(3.375)
    assert endpoint.attempts == 4
    endpoint.smscs[-1].accept_bind()
    assert link.is_bound()


def test_bound_session_lost_reconnects_and_rebinds() -> None:
    """When a bound connection drops, the link reconnects and binds again."""
    link, smsc, clock, _ = bound_link()
    smsc.drop()
    assert not link.is_bound()
    clock.advance(1.5)
    link_smscs = link.binding_endpoints[0].endpoint.smscs  # type: ignore[attr-defined]
    link_smscs[-1].accept_bind()
    assert link.is_bound()


def test_binds_up_gauge_follows_the_sessions() -> None:
    """gateway12123_smpp_sessions_bound counts bound sessions per carrier and bind type."""

    def gauge() -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "gateway12123_smpp_sessions_bound", {"carrier": "gauge-test", "bind_type": "transceiver"}
            )
            or 0.0
        )

    link, smsc, _, _ = bound_link(name="gauge-test")
    assert gauge() == 1
    smsc.drop()
    assert gauge() == 0


# -- submitting ------------------------------------------------------------------------------


def test_submit_sends_submit_sm_and_fires_with_the_message_id() -> None:
    """A short text is one submit_sm with the carrier's addresses; its id comes back."""
    link, smsc, _, _ = bound_link(
        source_addr_ton=3, dest_addr_ton=1, dest_addr_npi=1, registered_delivery=1
    )
    d = link.submit(OutboundSms("n1", CITIZEN, "hello"))
    [submit] = smsc.read()
    assert isinstance(submit, SubmitSm)
    assert (submit.source_addr, submit.source_addr_ton, submit.destination_addr) == (
        "12123",
        3,
        "13800138000",
    )
    assert (submit.dest_addr_ton, submit.dest_addr_npi, submit.registered_delivery) == (1, 1, 1)
    assert (submit.data_coding, submit.short_message) == (0, b"hello")
    assert not d.called
    smsc.send(SubmitSmResp(submit.sequence_number, message_id="abc123"))
    assert result_of(d) == SubmitAccepted("cmcc", ("abc123",))


def test_submit_without_receipt_request_sets_registered_delivery_zero() -> None:
    """OutboundSms(registered_delivery=False) sends registered_delivery 0."""
    link, smsc, _, _ = bound_link()
    d = link.submit(OutboundSms("n1", CITIZEN, "hi", registered_delivery=False))
    [submit] = smsc.read()
    assert submit.registered_delivery == 0  # type: ignore[attr-defined]
    smsc.send(SubmitSmResp(submit.sequence_number, message_id="quiet"))
    assert result_of(d) == SubmitAccepted("cmcc", ("quiet",), 0)  # no receipt will count


def test_long_chinese_text_goes_as_udh_parts_with_one_id_each() -> None:
    """A 200-character Chinese text is 3 UCS2 parts with a UDH; SubmitAccepted lists 3 ids."""
    link, smsc, _, _ = bound_link()
    text = "您好，您预约的科目一考试已安排。" * 13
    text = text[:200]
    d = link.submit(OutboundSms("n1", CITIZEN, text))
    parts = smsc.read()
    assert [type(p) for p in parts] == [SubmitSm] * 3
    assert all(p.esm_class & 0x40 and p.data_coding == 8 for p in parts)  # type: ignore[attr-defined]
    assert "".join(decode_pdu_text(p)[0] for p in parts) == text  # type: ignore[arg-type]
    for i, part in enumerate(parts):
        smsc.send(SubmitSmResp(part.sequence_number, message_id=f"id{i}"))
    assert result_of(d) == SubmitAccepted("cmcc", ("id0", "id1", "id2"))


def test_receipt_parts_first_asks_for_a_receipt_on_part_one_only() -> None:
    """receipt_parts "first": part 1 carries registered_delivery, the others 0, and
    SubmitAccepted says one part's receipt counts; "last": the last part alone, and
    SubmitAccepted says so; "every" (the default) asks on each."""
    text = ("您好，您预约的科目一考试已安排。" * 13)[:200]
    for receipt_parts, expected, counted, from_last in (("first", [1, 0, 0], 1, False), ("every", [1, 1, 1], None, False),
                                                       ("last", [0, 0, 1], 1, True)):
        link, smsc, _, _ = bound_link(receipt_parts=receipt_parts)
        d = link.submit(OutboundSms("n1", CITIZEN, text))
        parts = smsc.read()
        assert [p.registered_delivery for p in parts] == expected  # type: ignore[attr-defined]
        for i, part in enumerate(parts):
            smsc.send(SubmitSmResp(part.sequence_number, message_id=f"id{i}"))
        assert result_of(d) == SubmitAccepted("cmcc", ("id0", "id1", "id2"), counted, from_last)


def test_receipt_parts_first_leaves_single_part_messages_alone() -> None:
    """A one-part message asks for its receipt either way and counts it as before."""
    link, smsc, _, _ = bound_link(receipt_parts="first")
    d = link.submit(OutboundSms("n1", CITIZEN, "hi"))
    [submit] = smsc.read()
    assert submit.registered_delivery == 1  # type: ignore[attr-defined]
    smsc.send(SubmitSmResp(submit.sequence_number, message_id="one"))
    assert result_of(d) == SubmitAccepted("cmcc", ("one",))


def test_message_longer_than_max_parts_fails_permanently() -> None:
    """A text needing more than max_parts parts is refused (not transient) and nothing is sent."""
    link, smsc, _, _ = bound_link(max_parts=2)
    failure = result_of(link.submit(OutboundSms("n1", CITIZEN, "长" * 200)))
    assert failure.check(LinkSubmitFailed) and failure.value.transient is False
    assert smsc.read() == []


def test_submit_when_not_bound_fails_transient() -> None:
    """Before the bind, submit fails at once and transiently."""
    link, _, _, _ = start_link()
    failure = result_of(link.submit(OutboundSms("n1", CITIZEN, "hi")))
    assert failure.value.transient is True and failure.value.response_unknown is False
    assert failure.value.link_down is True  # says nothing about the message


def test_submit_timeout_is_transient_and_response_unknown() -> None:
    """A submit_sm unanswered within response_timeout_seconds fails with response_unknown."""
    link, smsc, clock, _ = bound_link(response_timeout_seconds=10.0)
    d = link.submit(OutboundSms("n1", CITIZEN, "hi"))
    clock.advance(9.9)
    assert not d.called
    clock.advance(0.1)
    failure = result_of(d)
    assert failure.check(LinkSubmitFailed)
    assert (failure.value.transient, failure.value.response_unknown) == (True, True)
    assert failure.value.link_down is False  # the link is up: this attempt counts


def test_link_lost_mid_window_fails_every_outstanding_submit() -> None:
    """Dropping the connection with a full window fails every submit (transient, unknown)
    and the submits still queued behind the window (transient, not sent): none is lost."""
    link, smsc, _, _ = bound_link(window=3)
    ds = [link.submit(OutboundSms(f"n{i}", CITIZEN, f"msg {i}")) for i in range(5)]
    sent = smsc.read()
    assert len(sent) == 3  # the window
    smsc.send(SubmitSmResp(sent[0].sequence_number, message_id="ok0"))
    smsc.read()  # the 4th went out in the freed slot
    smsc.drop()
    results = [result_of(d) for d in ds]
    assert results[0] == SubmitAccepted("cmcc", ("ok0",))
    unknown = [r.value.response_unknown for r in results[1:]]
    assert unknown == [True, True, True, False]
    assert all(r.value.transient and r.value.link_down for r in results[1:])


def test_a_submit_whose_claim_ran_out_while_queued_is_not_sent() -> None:
    """OutboundSms.may_send is asked when the first part's turn comes: a message that
    waited in the queue past its sender's claim is failed (transient, link down: never
    sent, no attempt spent) instead of going out as another process's second copy; a
    long message whose first part went out is finished whatever may_send says later."""
    link, smsc, _, _ = bound_link(window=1)
    claim_valid = {"first": True, "queued": True, "long": True}
    fenced = metrics.REGISTRY.get_sample_value("gateway12123_submits_fenced_total", {"carrier": "cmcc"}) or 0.0
    first = link.submit(OutboundSms("first", CITIZEN, "a", may_send=lambda: claim_valid["first"]))
    queued = link.submit(OutboundSms("queued", CITIZEN, "b", may_send=lambda: claim_valid["queued"]))
    text = ("您好，您预约的科目一考试已安排。" * 13)[:120]  # 2 UCS2 parts of 67 at most
    long = link.submit(OutboundSms("long", CITIZEN, text, may_send=lambda: claim_valid["long"]))
    [sent] = smsc.read()  # the window holds one: the others wait
    claim_valid["queued"] = False  # its process paused past the lease meanwhile
    smsc.send(SubmitSmResp(sent.sequence_number, message_id="m1"))
    assert result_of(first) == SubmitAccepted("cmcc", ("m1",))
    failure = result_of(queued)
    assert failure.value.transient and failure.value.link_down and not failure.value.response_unknown
    assert "claim lease ran out" in failure.value.reason
    [part1] = smsc.read()  # the long message's first part: its claim still valid
    claim_valid["long"] = False
    smsc.send(SubmitSmResp(part1.sequence_number, message_id="p1"))
    [part2] = smsc.read()  # begun: finished
    smsc.send(SubmitSmResp(part2.sequence_number, message_id="p2"))
    assert result_of(long) == SubmitAccepted("cmcc", ("p1", "p2"))
    assert metrics.REGISTRY.get_sample_value("gateway12123_submits_fenced_total", {"carrier": "cmcc"}) == fenced + 1


def test_full_window_queues_and_a_response_sends_the_next() -> None:
    """Submits beyond the window wait; each response lets the next one out."""
    link, smsc, _, _ = bound_link(window=2)
    for i in range(3):
        link.submit(OutboundSms(f"n{i}", CITIZEN, f"m{i}"))
    first, second = smsc.read()
    assert smsc.read() == []
    smsc.send(SubmitSmResp(first.sequence_number, message_id="a"))
    [third] = smsc.read()
    assert third.short_message == b"m2"  # type: ignore[attr-defined]


def test_throttled_part_is_resubmitted_after_a_delay_and_the_bucket_slows() -> None:
    """ESME_RTHROTTLED: the same part is sent again after throttle_retry_seconds."""
    link, smsc, clock, _ = bound_link()
    d = link.submit(OutboundSms("n1", CITIZEN, "hello"))
    [first] = smsc.read()
    smsc.send(SubmitSmResp(first.sequence_number, CommandStatus.ESME_RTHROTTLED))
    assert smsc.read() == [] and not d.called
    assert link._bucket.rate < link._bucket.nominal_rate
    clock.advance(1.0)
    [again] = smsc.read()
    assert (
        again.short_message == first.short_message
        and again.sequence_number != first.sequence_number
    )  # type: ignore[attr-defined]
    smsc.send(SubmitSmResp(again.sequence_number, message_id="x"))
    assert result_of(d) == SubmitAccepted("cmcc", ("x",))


def test_throttling_beyond_the_retry_limit_fails_transient() -> None:
    """A part throttled more than max_throttle_retries times fails transiently."""
    link, smsc, clock, _ = bound_link(
        options=LinkOptions(max_throttle_retries=2, throttle_retry_seconds=1.0)
    )
    d = link.submit(OutboundSms("n1", CITIZEN, "hello"))
    for attempt in range(3):
        [pdu] = smsc.read()
        smsc.send(SubmitSmResp(pdu.sequence_number, CommandStatus.ESME_RTHROTTLED))
        clock.advance(attempt + 1.0)
    failure = result_of(d)
    assert failure.value.transient and failure.value.status == "ESME_RTHROTTLED"
    assert not failure.value.response_unknown


@pytest.mark.parametrize(
    ("status", "overrides", "transient"),
    [
        (CommandStatus.ESME_RSYSERR, (), True),
        (CommandStatus.ESME_RMSGQFUL, (), True),
        (CommandStatus.ESME_RSUBMITFAIL, (), False),
        (CommandStatus.ESME_RINVDSTADR, (), False),
        (CommandStatus.ESME_RSUBMITFAIL, ((0x45, "temporary"),), True),
        (CommandStatus.ESME_RSYSERR, ((0x08, "permanent"),), False),
    ],
)
def test_submit_error_class_follows_the_carriers_table(
    status: CommandStatus, overrides: tuple[tuple[int, str], ...], transient: bool
) -> None:
    """A refused submit is transient or permanent as the defaults and the carrier's
    error_classes overrides say; the SMSC answered, so the outcome is known."""
    link, smsc, _, _ = bound_link(
        error_classes=tuple(StatusClassOverride(status=s, treat_as=c) for s, c in overrides)
    )
    d = link.submit(OutboundSms("n1", CITIZEN, "hello"))
    [pdu] = smsc.read()
    smsc.send(SubmitSmResp(pdu.sequence_number, status))
    failure = result_of(d)
    assert (failure.value.transient, failure.value.status) == (transient, status.name)
    assert not failure.value.response_unknown and not failure.value.link_down


def test_submit_answered_not_bound_rebinds_the_session() -> None:
    """ESME_RINVBNDSTS to a submit (class bind): the session is closed, the submit fails
    as a lost link (retried without spending an attempt), and the link binds again."""
    link, endpoint, clock, _ = start_link()
    endpoint.smscs[0].accept_bind()
    smsc = endpoint.smscs[0]
    d = link.submit(OutboundSms("n1", CITIZEN, "hello"))
    [pdu] = smsc.read()
    smsc.send(SubmitSmResp(pdu.sequence_number, CommandStatus.ESME_RINVBNDSTS))
    failure = result_of(d)
    assert failure.value.transient and failure.value.link_down
    assert smsc.transport.disconnecting
    smsc.drop()
    clock.advance(2.0)
    assert len(endpoint.smscs) == 2
    endpoint.smscs[1].accept_bind()
    assert link.is_bound()


def test_refused_part_fails_the_whole_message_and_reports_accepted_ids() -> None:
    """One part refused (ESME_RINVDSTADR): the submit fails permanently, naming the ids
    of the parts that were accepted."""
    link, smsc, _, _ = bound_link()
    d = link.submit(OutboundSms("n1", CITIZEN, "长" * 100))
    first, second = smsc.read()
    smsc.send(SubmitSmResp(second.sequence_number, CommandStatus.ESME_RINVDSTADR))
    assert not d.called  # the first part is still awaiting its response
    smsc.send(SubmitSmResp(first.sequence_number, message_id="p1"))
    failure = result_of(d)
    assert failure.value.transient is False and failure.value.status == "ESME_RINVDSTADR"
    assert failure.value.accepted_message_ids == ("p1",)


def test_tps_limit_spaces_the_submits() -> None:
    """With tps_limit 10 (burst 1), the second submit waits 0.1 s for a token."""
    link, smsc, clock, _ = bound_link(tps_limit=10.0, window=10)
    link.submit(OutboundSms("n1", CITIZEN, "a"))
    link.submit(OutboundSms("n2", CITIZEN, "b"))
    assert len(smsc.read()) == 1
    clock.advance(0.05)
    assert smsc.read() == []
    clock.advance(0.05)
    assert len(smsc.read()) == 1


def test_submits_are_spread_over_sessions() -> None:
    """With two transceivers bound, consecutive submits alternate between them."""
    link, endpoint, _, _ = start_link(sessions=2)
    for smsc in endpoint.smscs:
        smsc.accept_bind()
    for i in range(4):
        link.submit(OutboundSms(f"n{i}", CITIZEN, "x"))
    assert [len(smsc.read()) for smsc in endpoint.smscs] == [2, 2]


def test_submit_latency_and_response_status_are_measured() -> None:
    """submit_sm_resp statuses are counted by name and the latency observed."""

    def responses(status: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value(
                "gateway12123_smpp_submit_responses_total", {"carrier": "metric-test", "status": status}
            )
            or 0.0
        )

    link, smsc, clock, _ = bound_link(name="metric-test")
    d = link.submit(OutboundSms("n1", CITIZEN, "x"))
    [pdu] = smsc.read()
    clock.advance(0.2)
    smsc.send(SubmitSmResp(pdu.sequence_number, CommandStatus.ESME_RINVDSTADR))
    assert result_of(d).value.status == "ESME_RINVDSTADR"
    assert responses("ESME_RINVDSTADR") == 1
    count = metrics.REGISTRY.get_sample_value(
        "gateway12123_submit_latency_seconds_count", {"carrier": "metric-test"}
    )
    assert count == 1


# -- inbound ------------------------------------------------------------------------------------


def receipt_pdu(sequence_number: int, message_id: str, stat: str = "DELIVRD") -> DeliverSm:
    text = f"id:{message_id} sub:001 dlvrd:001 submit date:2501011200 done date:2501011201 stat:{stat} err:000 text:"
    return DeliverSm(
        sequence_number,
        source_addr="13800138000",
        destination_addr="12123",
        esm_class=0x04,
        short_message=text.encode(),
    )


def test_receipt_is_recorded_before_deliver_sm_resp() -> None:
    """deliver_sm_resp for a receipt goes out only after record_receipt's Deferred fired."""
    link, smsc, _, sink = bound_link(sink=RecordingSink(immediate=False))
    smsc.send(receipt_pdu(7, "abc123"))
    assert sink.receipts == [
        DeliveryReceipt("cmcc", "abc123", "DELIVRD", "000", "2501011200", "2501011201",
                        source_addr="13800138000", destination_addr="12123")
    ]
    assert smsc.read() == []
    sink.pending[0].callback(None)
    assert smsc.read() == [DeliverSmResp(7)]


def test_receipt_not_recorded_is_answered_with_a_temporary_error() -> None:
    """When recording fails (Redis down) the SMSC gets ESME_RX_T_APPN and will retry."""
    link, smsc, _, sink = bound_link(sink=RecordingSink(immediate=False))
    smsc.send(receipt_pdu(7, "abc123"))
    sink.pending[0].errback(ConnectionRefusedError("redis down"))
    assert smsc.read() == [DeliverSmResp(7, CommandStatus.ESME_RX_T_APPN)]


def test_receipt_message_id_is_normalised_per_carrier_format() -> None:
    """message_id_format hex_to_dec turns the receipt's hex id into the decimal submit id."""
    link, smsc, _, sink = bound_link(message_id_format="hex_to_dec")
    smsc.send(receipt_pdu(7, "00BC614E"))
    assert sink.receipts[0].message_id == "12345678"


def test_receipt_tlvs_win_over_the_text() -> None:
    """receipted_message_id and message_state TLVs are used when present."""
    link, smsc, _, sink = bound_link()
    pdu = dataclasses.replace(
        receipt_pdu(7, "text-id"),
        tlvs=(
            Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "tlv-id"),
            Tlv.uint8(TlvTag.MESSAGE_STATE, 5),
        ),
    )
    smsc.send(pdu)
    assert (sink.receipts[0].message_id, sink.receipts[0].state) == ("tlv-id", "UNDELIV")


def test_mo_is_recorded_with_a_masked_phone_number_and_acknowledged() -> None:
    """A citizen's deliver_sm becomes MobileOriginated (UCS2 decoded) and is acknowledged."""
    link, smsc, clock, sink = bound_link()
    clock.advance(20)
    smsc.send(
        DeliverSm(
            3,
            source_addr="8613800138000",
            destination_addr="12123",
            data_coding=8,
            short_message="取消".encode("utf-16-be"),
        )
    )
    [mo] = sink.mos
    assert (mo.carrier, mo.source, mo.destination, mo.text, mo.received_at) == (
        "cmcc",
        CITIZEN,
        "12123",
        "取消",
        20.0,
    )
    assert str(mo.source) == "138****8000"
    assert smsc.read() == [DeliverSmResp(3)]


def udh_part(sequence_number: int, reference: int, total: int, index: int, text: str) -> DeliverSm:
    udh = bytes((5, 0, 3, reference, total, index))
    return DeliverSm(
        sequence_number,
        source_addr="13800138000",
        destination_addr="12123",
        esm_class=0x40,
        data_coding=8,
        short_message=udh + text.encode("utf-16-be"),
    )


def test_multi_part_mo_is_reassembled_and_its_parts_acknowledged_together() -> None:
    """Parts of a long MO are joined (in order, whatever the arrival order) into one
    record_mo, and every part's deliver_sm_resp waits for that record."""
    link, smsc, _, sink = bound_link(sink=RecordingSink(immediate=False))
    smsc.send(udh_part(1, 9, 2, 2, "第二部分"))
    assert sink.mos == [] and smsc.read() == []
    smsc.send(udh_part(2, 9, 2, 1, "第一部分"))
    [mo] = sink.mos
    assert mo.text == "第一部分第二部分"
    assert smsc.read() == []
    sink.pending[0].callback(None)
    assert sorted(p.sequence_number for p in smsc.read()) == [1, 2]


def test_incomplete_multi_part_mo_is_recorded_after_the_timeout() -> None:
    """A part whose siblings never come is recorded as incomplete after the timeout, and acknowledged."""
    link, smsc, clock, sink = bound_link(options=LinkOptions(mo_reassembly_timeout_seconds=20))
    smsc.send(udh_part(1, 9, 3, 1, "只有一部分"))
    clock.advance(19.9)
    assert sink.mos == []
    clock.advance(0.1)
    [mo] = sink.mos
    assert (mo.text, mo.extra) == ("只有一部分", {"incomplete": "1/3"})
    assert smsc.read() == [DeliverSmResp(1)]


# -- stopping -------------------------------------------------------------------------------------


def test_stop_drains_then_unbinds_then_closes() -> None:
    """stopService waits for the submit in flight, unbinds, and closes after unbind_resp."""
    link, smsc, clock, _ = bound_link()
    d = link.submit(OutboundSms("n1", CITIZEN, "x"))
    [submit] = smsc.read()
    stopped = link.stopService()
    assert result_of(link.submit(OutboundSms("n2", CITIZEN, "y"))).value.reason == "link stopping"
    assert smsc.read() == []  # no unbind while a submit is unanswered
    smsc.send(SubmitSmResp(submit.sequence_number, message_id="m"))
    assert result_of(d) == SubmitAccepted("cmcc", ("m",))
    [unbind] = smsc.read()
    assert isinstance(unbind, Unbind)
    smsc.send(UnbindResp(unbind.sequence_number))
    assert smsc.transport.disconnecting
    smsc.drop()
    assert stopped.called
    assert clock.getDelayedCalls() == []


def test_stop_gives_up_draining_after_the_timeout() -> None:
    """A submit still unanswered at the drain timeout is failed as unknown when the link closes."""
    link, smsc, clock, _ = bound_link(
        options=LinkOptions(drain_timeout_seconds=2, unbind_timeout_seconds=1),
        response_timeout_seconds=60,
    )
    d = link.submit(OutboundSms("n1", CITIZEN, "x"))
    smsc.read()
    stopped = link.stopService()
    clock.advance(2)
    [unbind] = smsc.read()
    assert isinstance(unbind, Unbind)
    clock.advance(1)  # no unbind_resp either
    assert smsc.transport.disconnecting
    smsc.drop()
    failure = result_of(d)
    assert failure.value.response_unknown
    assert stopped.called


def test_drain_timeout_with_only_waiting_submits_fails_them_once_and_stops() -> None:
    """At the drain timeout every submit in flight is still waiting for a token (never
    sent): failing them settles the drain by itself, and the timeout must not fire the
    drain a second time (it raised AlreadyCalledError in the reactor, and the stop went on
    without that link's unbind being waited for)."""
    link, smsc, clock, _ = bound_link(
        tps_limit=0.1, window=10, options=LinkOptions(drain_timeout_seconds=2, unbind_timeout_seconds=1))
    sent = link.submit(OutboundSms("n1", CITIZEN, "a"))
    waiting = [link.submit(OutboundSms(f"n{i}", CITIZEN, "b")) for i in (2, 3)]
    [first] = smsc.read()
    smsc.send(SubmitSmResp(first.sequence_number, message_id="m1"))
    assert result_of(sent) == SubmitAccepted("cmcc", ("m1",))
    errors: list[Any] = []
    globalLogPublisher.addObserver(errors.append)
    try:
        stopped = link.stopService()
        clock.advance(0.5)  # still no token: nothing sent while stopping
        assert smsc.read() == []
        clock.advance(1.5)  # the drain timeout
    finally:
        globalLogPublisher.removeObserver(errors.append)
    for d in waiting:
        failure = result_of(d)
        assert failure.value.transient and not failure.value.response_unknown  # never sent: no duplicate
    assert [e for e in errors if e.get("log_failure") is not None] == []
    [unbind] = smsc.read()  # the stop went on to the unbind
    assert isinstance(unbind, Unbind)
    smsc.send(UnbindResp(unbind.sequence_number))
    smsc.drop()
    assert stopped.called


def test_idle_link_sends_enquire_link() -> None:
    """The link's sessions send enquire_link when idle for the carrier's interval."""
    link, smsc, clock, _ = bound_link(enquire_link_interval_seconds=30)
    clock.advance(30)
    assert [type(p) for p in smsc.read()] == [EnquireLink]


def test_bind_fail_is_temporary_and_retried_with_backoff() -> None:
    """ESME_RBINDFAIL (often "previous session not yet released") is retried after the
    ordinary backoff, not bind_rejected_retry_seconds."""
    link, endpoint, clock, _ = start_link(bind_rejected_retry_seconds=300.0, reconnect_initial_seconds=1.0)
    smsc = endpoint.smscs[0]
    [bind] = smsc.read()
    smsc.send(BindTransceiverResp(bind.sequence_number, CommandStatus.ESME_RBINDFAIL))
    smsc.drop()
    clock.advance(1.5)
    assert endpoint.attempts == 2
    endpoint.smscs[1].accept_bind()
    assert link.is_bound()


@pytest.mark.parametrize("status", [CommandStatus.ESME_RINVPASWD, CommandStatus.ESME_RINVSYSID])
def test_all_credential_refusals_use_the_slow_retry(status: CommandStatus) -> None:
    """ESME_RINVPASWD and ESME_RINVSYSID count as refused credentials."""
    link, endpoint, clock, _ = start_link(bind_rejected_retry_seconds=50.0)
    smsc = endpoint.smscs[0]
    [bind] = smsc.read()
    smsc.send(BindTransceiverResp(bind.sequence_number, status))
    smsc.drop()
    clock.advance(49)
    assert endpoint.attempts == 1
    clock.advance(1)
    assert endpoint.attempts == 2


# -- real peers over 127.0.0.1 ----------------------------------------------------------------
#
# The link on the real reactor against (1) a tiny SMSC built from our own session in the
# SMSC role and (2) the carrier simulator, which is written on the codec alone so that a
# bug shared by our session and its peer cannot hide.

from collections.abc import Iterator  # noqa: E402

import pytest_twisted  # noqa: E402
from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.internet.defer import DeferredList  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from gateway.smpp.protocol import BindRefused, SessionOwner, SmppProtocol  # noqa: E402
from gateway.smpp.session import Role, SmppSession  # noqa: E402
from gateway.smpp.simulator import CarrierSimulator, options_for_carrier  # noqa: E402

WAIT_SECONDS = 10  # a real-peer test that waits longer than this has failed


class WaitingSink(RecordingSink):
    """A RecordingSink that tells when it has seen `n` receipts or MOs."""

    def __init__(self) -> None:
        super().__init__(immediate=True)
        self._waiters: list[tuple[str, int, Deferred[None]]] = []

    def wait_for(self, kind: str, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiters.append((kind, n, d))
        self._check()
        return d.addTimeout(WAIT_SECONDS, global_reactor)

    def _check(self) -> None:
        for entry in list(self._waiters):
            kind, n, d = entry
            if len(self.receipts if kind == "receipt" else self.mos) >= n:
                self._waiters.remove(entry)
                d.callback(None)

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        d = super().record_receipt(receipt)
        self._check()
        return d

    def record_mo(self, message: MobileOriginated) -> Deferred[None]:
        d = super().record_mo(message)
        self._check()
        return d


class SessionSmscOwner(SessionOwner):
    """A minimal SMSC on our session: accepts any bind, answers every submit with an id
    and sends its receipt right after."""

    def __init__(self, server: SessionSmsc) -> None:
        self.server = server

    def connection_made(self, protocol: SmppProtocol) -> None:
        self.server.connections.append(protocol)

    def pdu_received(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        if isinstance(pdu, BindTransceiver | BindTransmitter | BindReceiver):
            protocol.respond(pdu, system_id="TINY")
        elif isinstance(pdu, SubmitSm):
            self.server.submitted.append(pdu)
            message_id = f"{len(self.server.submitted):08d}"
            protocol.respond(pdu, message_id=message_id)
            protocol.request(receipt_pdu(0, message_id))

    def unbind_requested(self, protocol: SmppProtocol) -> None:
        self.server.unbinds += 1


class SessionSmsc(Factory):
    def __init__(self) -> None:
        self.submitted: list[SubmitSm] = []
        self.connections: list[SmppProtocol] = []
        self.unbinds = 0

    def buildProtocol(self, addr: Any) -> SmppProtocol:
        def new_session(now: float) -> SmppSession:
            return SmppSession(Role.SMSC, window=50, now=now)

        return SmppProtocol(new_session, SessionSmscOwner(self), global_reactor, label="tiny-smsc")


def real_link(port: int, sink: RecordingSink, **config: Any) -> CarrierLink:
    settings: dict[str, Any] = {
        "port": port,
        "reconnect_initial_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
        "response_timeout_seconds": 5.0,
        "window": 10,
    }
    settings.update(config)
    return CarrierLink(carrier_config(**settings), sink, global_reactor, jitter=lambda: 0.0)


@pytest_twisted.inlineCallbacks
def test_link_against_an_smsc_built_from_our_session() -> Any:
    """Over real TCP: bind, 20 submits accepted, 20 receipts recorded, unbind on stop."""
    server = SessionSmsc()
    port = yield TCP4ServerEndpoint(global_reactor, 0, interface="127.0.0.1").listen(server)
    sink = WaitingSink()
    link = real_link(port.getHost().port, sink)
    link.startService()
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        results = yield DeferredList(
            [link.submit(OutboundSms(f"n{i}", CITIZEN, f"message {i}")) for i in range(20)],
            consumeErrors=True,
        )
        accepted = [r for ok, r in results if ok]
        assert len(accepted) == 20
        assert sorted(a.message_ids[0] for a in accepted) == [f"{i:08d}" for i in range(1, 21)]
        yield sink.wait_for("receipt", 20)
        assert {r.message_id for r in sink.receipts} == {a.message_ids[0] for a in accepted}
    finally:
        yield link.stopService()
        yield port.stopListening()
    assert (len(server.connections), server.unbinds) == (1, 1)


@pytest.fixture
def simulator_factory() -> Iterator[Any]:
    started: list[CarrierSimulator] = []

    def start(config: CarrierConfig, **overrides: Any) -> CarrierSimulator:
        simulator = CarrierSimulator(
            options_for_carrier(config, port=0, receipt_delay_seconds=0.01, **overrides),
            global_reactor,
        )
        simulator.startService()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        pytest_twisted.blockon(simulator.stopService())


def simulator_link(
    simulator_factory: Any,
    sink: RecordingSink,
    config_overrides: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[CarrierLink, CarrierSimulator]:
    config = carrier_config(**(config_overrides or {}))
    simulator = simulator_factory(config, **options)
    link = real_link(simulator.port_number, sink, **(config_overrides or {}))
    link.startService()
    return link, simulator


@pytest_twisted.inlineCallbacks
def test_chinese_200_characters_arrive_as_parts_that_reassemble_exactly(
    simulator_factory: Any,
) -> Any:
    """A 200-character Chinese text reaches the simulated carrier as 3 UCS2 parts that it
    joins into exactly the text sent; its receipts come back for those ids."""
    sink = WaitingSink()
    link, simulator = simulator_link(simulator_factory, sink)
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        text = (
            "您好！您预约的机动车驾驶人科目一考试将于明日上午九点在车管所考场进行，请携带身份证按时参加。"
            * 4
        )[:200]
        accepted = yield link.submit(OutboundSms("n1", CITIZEN, text))
        [message] = simulator.received
        assert (message.text, message.parts, message.destination) == (text, 3, "13800138000")
        assert message.message_ids == accepted.message_ids
        yield sink.wait_for("receipt", 3)
        assert sorted(r.message_id for r in sink.receipts) == sorted(accepted.message_ids)
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_receipt_parts_first_gets_one_receipt_per_message_from_the_simulator(
    simulator_factory: Any,
) -> Any:
    """With receipt_parts "first" the simulated carrier sends one receipt for a 3-part
    message, for part 1's id; nothing comes for the other parts."""
    sink = WaitingSink()
    link, simulator = simulator_link(simulator_factory, sink, {"receipt_parts": "first"})
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        text = ("您好！您预约的机动车驾驶人科目一考试将于明日上午九点在车管所考场进行。" * 5)[:180]
        accepted = yield link.submit(OutboundSms("n1", CITIZEN, text))
        assert len(accepted.message_ids) == 3 and accepted.receipt_parts == 1
        yield sink.wait_for("receipt", 1)
        yield deferLater(global_reactor, 0.3, lambda: None)  # any further receipt would be here by now
        assert [r.message_id for r in sink.receipts] == [accepted.message_ids[0]]
        assert simulator.counters.receipts_scheduled == 1
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_throttling_carrier_still_gets_every_message_once(simulator_factory: Any) -> Any:
    """With 40% of submits answered ESME_RTHROTTLED, every message still arrives, once."""
    sink = WaitingSink()
    link, simulator = simulator_link(simulator_factory, sink, throttle_rate=0.4)
    link.options = LinkOptions(throttle_retry_seconds=0.01, max_throttle_retries=30)
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        texts = [f"reminder {i}" for i in range(30)]
        results = yield DeferredList(
            [link.submit(OutboundSms(t, CITIZEN, t)) for t in texts], consumeErrors=True
        ).addTimeout(WAIT_SECONDS, global_reactor)
        assert all(ok for ok, _ in results), [r for ok, r in results if not ok]
        assert simulator.counters.throttled > 0
        assert [simulator.copies_of("13800138000", t) for t in texts] == [1] * 30
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_dropped_link_mid_window_loses_nothing_and_reconnects(simulator_factory: Any) -> Any:
    """The carrier drops the TCP connection with submits in the window: each submit is
    accepted (and arrived once) or failed transient with response_unknown; the link
    reconnects and the next submit goes through."""
    sink = WaitingSink()
    link, simulator = simulator_link(simulator_factory, sink, drop_after_pdus=6)
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        texts = [f"notice {i}" for i in range(10)]
        results = yield DeferredList(
            [link.submit(OutboundSms(t, CITIZEN, t)) for t in texts], consumeErrors=True
        ).addTimeout(WAIT_SECONDS, global_reactor)
        accepted = [t for t, (ok, _) in zip(texts, results, strict=True) if ok]
        failed = [r.value for ok, r in results if not ok]
        assert 0 < len(accepted) < 10
        assert all(f.transient and f.response_unknown for f in failed), [f.reason for f in failed]
        assert all(simulator.copies_of("13800138000", t) == 1 for t in accepted)
        assert simulator.counters.dropped_connections >= 1
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        again = yield link.submit(OutboundSms("again", CITIZEN, "after the reconnect"))
        assert len(again.message_ids) == 1
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_mo_from_the_simulator_is_reassembled(simulator_factory: Any) -> Any:
    """A long citizen's message sent by the carrier as UDH parts is recorded whole, once."""
    sink = WaitingSink()
    link, simulator = simulator_link(simulator_factory, sink)
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        text = "我要取消明天的科目二考试预约，" * 8
        yield simulator.send_mo("13800138000", text).addTimeout(WAIT_SECONDS, global_reactor)
        [mo] = sink.mos
        assert (mo.text, mo.source, mo.destination) == (text, CITIZEN, "12123")
    finally:
        yield link.stopService()


@pytest_twisted.inlineCallbacks
def test_refused_credentials_are_not_retried_quickly(simulator_factory: Any) -> Any:
    """The simulator refuses our password: the attempt fails with ESME_RINVPASWD and the
    next one is scheduled bind_rejected_retry_seconds later, not after the short backoff."""
    sink = WaitingSink()
    config = carrier_config()
    simulator = simulator_factory(config, credentials={"gw12123": "other"})
    link = real_link(simulator.port_number, sink, bind_rejected_retry_seconds=60.0)
    link.startService()
    try:
        service = link.getServiceNamed("cmcc-transceiver-0")
        attempt = service.whenConnected(failAfterFailures=1).addTimeout(
            WAIT_SECONDS, global_reactor
        )
        [failure] = yield attempt.addCallbacks(lambda _: [None], lambda f: [f])
        # We resumed inside ClientService's state machine (it fired the Deferred from a
        # transition); leave that call stack before stopService re-enters the machine.
        yield deferLater(global_reactor, 0, lambda: None)
        assert failure.check(BindRefused) and failure.value.status == CommandStatus.ESME_RINVPASWD
        now = global_reactor.seconds()
        retries = [c for c in global_reactor.getDelayedCalls() if 59 <= c.getTime() - now <= 61]
        assert len(retries) == 1
        assert simulator.counters.bind_failures == 1 and not link.is_bound()
    finally:
        yield link.stopService()


def self_signed_pem(directory: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost: (path of cert+key PEM, cert PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = directory / "smpp.pem"
    path.write_text(cert_pem + key_pem)
    return str(path), cert_pem


@pytest_twisted.inlineCallbacks
def test_link_binds_and_submits_over_tls(tmp_path: Any) -> Any:
    """With tls: true the link speaks TLS, verifying the SMSC's certificate against the
    configured trust root; here the SMSC is our own TLS listener (the link binds as a
    partner ESME)."""
    from gateway.config import PartnerAccount, SmppServerConfig
    from gateway.smpp.listener import SmppListener
    from tests.smpp.test_listener import RecordingIntake

    certificate_path, certificate_pem = self_signed_pem(tmp_path)
    intake = RecordingIntake()
    listener = SmppListener(
        SmppServerConfig(
            listen="127.0.0.1:0",
            tls_certificate=certificate_path,
            accounts=(PartnerAccount(system_id="gw12123", password=Secret("secret")),),
        ),
        intake,
        {},
        global_reactor,
    )
    listener.startService()
    port = yield listener.listening()
    link = CarrierLink(
        carrier_config(port=port.getHost().port, tls=True),
        WaitingSink(),
        global_reactor,
        options=LinkOptions(tls_trust_root_pem=certificate_pem),
        jitter=lambda: 0.0,
    )
    link.startService()
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        accepted = yield link.submit(OutboundSms("n1", CITIZEN, "over TLS"))
        assert accepted == SubmitAccepted("cmcc", ("gw1",))
        assert [call[2] for call in intake.calls] == ["over TLS"]
        assert_nodelay_on_both_ends(link, listener)
    finally:
        yield link.stopService()
        yield listener.stopService()


def assert_nodelay_on_both_ends(link: CarrierLink, listener: Any) -> None:
    """Both ends of every SMPP connection write without Nagle's delay (TCP_NODELAY):
    a PDU written behind an unacknowledged one must not wait for a delayed ACK."""
    import socket

    protocols = [session.protocol for session in link._all_sessions] + list(listener._connections)
    assert len(protocols) >= 2
    for protocol in protocols:
        transport = protocol.transport
        while not isinstance(transport.getHandle(), socket.socket):  # TLS wraps the TCP transport
            transport = transport.transport
        assert transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, protocol


@pytest_twisted.inlineCallbacks
def test_smpp_connections_write_without_nagle_delay() -> Any:
    """Plain TCP: the link's connection and the listener's both set TCP_NODELAY."""
    from gateway.config import PartnerAccount, SmppServerConfig
    from gateway.smpp.listener import SmppListener
    from tests.smpp.test_listener import RecordingIntake

    listener = SmppListener(
        SmppServerConfig(listen="127.0.0.1:0", accounts=(PartnerAccount(system_id="gw12123", password=Secret("secret")),)),
        RecordingIntake(), {}, global_reactor)
    listener.startService()
    port = yield listener.listening()
    link = CarrierLink(carrier_config(port=port.getHost().port), WaitingSink(), global_reactor, jitter=lambda: 0.0)
    link.startService()
    try:
        yield link.when_bound().addTimeout(WAIT_SECONDS, global_reactor)
        assert_nodelay_on_both_ends(link, listener)
    finally:
        yield link.stopService()
        yield listener.stopService()


def test_mo_as_data_sm_is_answered_with_data_sm_resp() -> None:
    """An MO delivered as data_sm (message_payload) is recorded and answered data_sm_resp."""
    from gateway.smpp.pdu import DataSm, DataSmResp

    link, smsc, _, sink = bound_link()
    smsc.send(
        DataSm(
            4,
            source_addr="13800138000",
            destination_addr="12123",
            data_coding=8,
            tlvs=(Tlv(TlvTag.MESSAGE_PAYLOAD, "退订".encode("utf-16-be")),),
        )
    )
    assert [m.text for m in sink.mos] == ["退订"]
    assert smsc.read() == [DataSmResp(4)]
