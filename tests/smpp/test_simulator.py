"""The carrier simulator: an SMSC peer built on the codec alone.

Three rings: the sans-IO parts (decisions, receipts, reassembly); the shell on
MemoryReactorClock + StringTransport (timers, windows, redelivery, the state table);
real sockets on 127.0.0.1 port 0 with smpplib (a third-party ESME, in a thread) and a
small ESME written on our codec.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import smpplib.client
import smpplib.consts
import smpplib.gsm
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.config import CarrierConfig, Secret
from gateway.smpp.pdu import (
    PDU_CLASSES,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    SmeAddress,
    SubmitMulti,
    SubmitMultiResp,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    command_length,
    decode,
    encode,
    is_response,
)
from gateway.smpp.receipts import normalise_message_id, parse_receipt_text, receipt_from_deliver
from gateway.smpp.simulator import (
    HANDLERS,
    CarrierBehaviour,
    CarrierSimulator,
    MessageRecorder,
    SessionState,
    SimulatorOptions,
    SmscProtocol,
    add_arguments,
    encode_receipt,
    encode_submit_sm_resp,
    format_receipt_text,
    options_for_carrier,
    options_from_args,
    run_from_args,
)
from gateway.smpp.text import Reassembler, decode_pdu_text, plan_message
from gateway.smpp.tlv import Tlv, TlvTag, tlv_cstring, tlv_int
from tests.smpp import decode_all

CITIZEN = "13800138000"
CREDENTIALS = {"gw12123cm": "cmpass"}
# 200 characters of Chinese: three UCS2 parts of at most 67 characters.
LONG_CHINESE = (
    "【12123】尊敬的机动车驾驶人：您预约的科目一考试已安排在2026年11月30日上午9时，"
    "地点为市车管所考试中心。请携带身份证件提前三十分钟到达，逾期视为缺考。如需取消预约，请回复QX。"
    "交通安全，人人有责，请您遵守交通法规，文明驾驶，安全出行。祝您考试顺利！"
)
LONG_CHINESE = (LONG_CHINESE * 2)[:200]
assert len(LONG_CHINESE) == 200


# ---------------------------------------------------------------------------------------
# Ring 1: sans-IO
# ---------------------------------------------------------------------------------------


def test_receipt_text_follows_appendix_b():
    """The receipt text has every Appendix B field and the gateway's parser reads it back."""
    text = format_receipt_text("12345", "UNDELIV", "2611301200", "2611301201", "a" * 30)
    assert text == (
        "id:12345 sub:001 dlvrd:000 submit date:2611301200 done date:2611301201 "
        "stat:UNDELIV err:003 text:" + "a" * 20
    )
    fields = parse_receipt_text(text)
    assert (fields.id, fields.stat, fields.dlvrd, fields.done_date) == (
        "12345", "UNDELIV", "000", "2611301201"
    )
    assert parse_receipt_text(format_receipt_text("9", "DELIVRD", "x", "y", "")).dlvrd == "001"


_ADDRESS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=24)


@settings(max_examples=200, deadline=None)
@given(
    source=_ADDRESS,
    destination=_ADDRESS,
    text=st.text(max_size=200),
    receipt_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=64),
    state=st.integers(0, 255),
    with_tlvs=st.booleans(),
)
def test_packed_receipt_equals_the_codec(source, destination, text, receipt_id, state, with_tlvs):
    """The hand-packed receipt deliver_sm is byte for byte what the codec encodes (or
    fails as the codec does)."""
    tlvs = (Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, receipt_id), Tlv.uint8(TlvTag.MESSAGE_STATE, state))
    reference = DeliverSm(0, source_addr=source, destination_addr=destination, esm_class=0x04,
                          short_message=text.encode("ascii", "replace"), tlvs=tlvs if with_tlvs else ())
    try:
        expected = encode(reference)
    except ValueError as e:
        with pytest.raises(type(e)):
            encode_receipt(source, destination, text, receipt_id, state, with_tlvs=with_tlvs)
        return
    assert encode_receipt(source, destination, text, receipt_id, state, with_tlvs=with_tlvs) == expected


def test_packed_submit_sm_resp_equals_the_codec():
    """The hand-packed submit_sm_resp is what the codec encodes."""
    for sequence, message_id in ((1, "1"), (0x7FFFFFFF, "f" * 64), (42, "")):
        assert encode_submit_sm_resp(sequence, message_id) == encode(SubmitSmResp(sequence, message_id=message_id))


def test_options_for_carrier_match_the_gateway_link():
    """Options built from a CarrierConfig accept its bind and produce receipt ids in the
    form its message_id_format undoes."""
    carrier = CarrierConfig(name="cucc", host="127.0.0.1", port=2777, system_id="gw12123cu",
                            password=Secret("cupass"), prefixes=("130",), message_id_format="dec_to_hex")
    options = options_for_carrier(carrier, throttle_rate=0.01)
    assert (options.port, dict(options.credentials), options.throttle_rate) == (2777, {"gw12123cu": "cupass"}, 0.01)
    assert (options.message_id_style, options.receipt_id_format) == ("hex", "decimal_of_hex")


def test_options_collect_every_problem():
    """Inconsistent options raise one ValueError naming each problem."""
    with pytest.raises(ValueError) as e:
        SimulatorOptions(throttle_rate=1.5, outcome_weights={"LOST": 1.0}, receipt_id_format="hex_of_decimal",
                         message_id_style="uuid")
    message = str(e.value)
    assert "throttle_rate" in message
    assert "unknown stat 'LOST'" in message
    assert "hex_of_decimal needs message_id_style decimal" in message


def test_behaviour_is_deterministic_per_seed():
    """The same seed gives the same throttling and outcomes; each rate has its own stream."""
    options = SimulatorOptions(throttle_rate=0.3, outcome_weights={"DELIVRD": 1, "UNDELIV": 1})
    runs = []
    for _ in range(2):
        b = CarrierBehaviour(options)
        runs.append([(b.submit_status("1"), b.receipt_stat("1", 1)) for _ in range(200)])
    assert runs[0] == runs[1]
    throttled = sum(1 for status, _ in runs[0] if status == CommandStatus.ESME_RTHROTTLED)
    assert 30 < throttled < 90
    assert {stat for _, stat in runs[0]} == {"DELIVRD", "UNDELIV"}
    # Adding an error rate does not change which submits are throttled.
    b = CarrierBehaviour(SimulatorOptions(throttle_rate=0.3, error_rate=0.5))
    again = [b.submit_status("1") == CommandStatus.ESME_RTHROTTLED for _ in range(200)]
    assert again == [status == CommandStatus.ESME_RTHROTTLED for status, _ in runs[0]]


def test_behaviour_overrides_and_registered_delivery():
    """A per-number outcome wins; registered_delivery 0 asks nothing, 2 only failures."""
    b = CarrierBehaviour(SimulatorOptions(outcome_overrides={"13900000000": "UNDELIV"},
                                          rejected_destinations=frozenset({"13700000000"})))
    assert b.receipt_stat("13900000000", 1) == "UNDELIV"
    assert b.receipt_stat(CITIZEN, 1) == "DELIVRD"
    assert b.receipt_stat(CITIZEN, 0) is None
    assert b.receipt_stat(CITIZEN, 2) is None
    assert b.receipt_stat("13900000000", 2) == "UNDELIV"
    assert b.submit_status("13700000000") == CommandStatus.ESME_RINVDSTADR


@pytest.mark.parametrize("concatenation", ["udh8", "udh16", "sar", "payload"])
def test_recorder_reassembles_every_concatenation(concatenation):
    """UDH IE 0x00 and 0x08, sar_* TLVs and message_payload all give back the text,
    whatever order the parts arrive in."""
    plan = plan_message(LONG_CHINESE, concatenation=concatenation, reference=0x1234)
    recorder = MessageRecorder()
    results = []
    order = list(reversed(range(len(plan.parts))))
    for i in order:
        part = plan.parts[i]
        results.append(recorder.add("gw", "12123", CITIZEN, part.short_message, part.data_coding,
                                    part.esm_class, part.tlvs, f"id{i}", now=1.0))
    assert results[:-1] == [None] * (len(order) - 1)
    whole = results[-1]
    assert whole is not None
    assert whole.text == LONG_CHINESE
    assert whole.message_ids == tuple(f"id{i}" for i in range(len(plan.parts)))
    assert recorder.messages == 1


def test_recorder_joins_a_surrogate_pair_cut_between_parts():
    """An ESME that splits UCS2 octets blindly may cut an emoji in two; the parts'
    octets are joined before decoding, so the emoji survives."""
    octets = ("您好" + "\U0001F697" + "再见").encode("utf-16-be")  # the car is a surrogate pair
    cut = 6  # after the first half of the pair
    recorder = MessageRecorder()
    for seq, chunk in ((1, octets[:cut]), (2, octets[cut:])):
        recorder.add("gw", "12123", CITIZEN, bytes((5, 0, 3, 0x42, 2, seq)) + chunk, 8, 0x40, (), str(seq), now=0.0)
    [message] = recorder.received
    assert message.text == "您好\U0001F697再见"


def test_recorder_counts_copies_and_keeps_sources_apart():
    """A message submitted twice is a duplicate; same reference from another number is not."""
    recorder = MessageRecorder()
    plan = plan_message(LONG_CHINESE, reference=7)
    for copy in range(2):
        for part in plan.parts:
            recorder.add("gw", "12123", CITIZEN, part.short_message, part.data_coding,
                         part.esm_class, part.tlvs, f"c{copy}", now=0.0)
    first = plan.parts[0]
    recorder.add("gw", "12123", "13900000000", first.short_message, first.data_coding,
                 first.esm_class, (), "other", now=0.0)
    assert recorder.copies[(CITIZEN, LONG_CHINESE)] == 2
    assert recorder.submit_pdus[(CITIZEN, LONG_CHINESE)] == 2 * len(plan.parts)
    assert recorder.duplicate_messages == 1
    assert recorder.pending_count() == 1
    assert recorder.expire(now=299.0) == 0
    assert recorder.expire(now=300.0) == 1
    assert recorder.incomplete_messages == 1


def test_recorder_without_texts_only_counts():
    """record_texts=False keeps no text, but still counts messages and parts."""
    recorder = MessageRecorder(record_texts=False)
    plan = plan_message(LONG_CHINESE, reference=9)
    for part in plan.parts:
        assert recorder.add("gw", "12123", CITIZEN, part.short_message, part.data_coding,
                            part.esm_class, part.tlvs, "x", now=0.0) is None
    recorder.add("gw", "12123", CITIZEN, b"hello", 0, 0, (), "y", now=0.0)
    assert (recorder.messages, recorder.parts, recorder.received) == (2, len(plan.parts), [])


# ---------------------------------------------------------------------------------------
# Ring 2: the shell on a fake reactor
# ---------------------------------------------------------------------------------------


class FakeSession:
    """An SmscProtocol on a StringTransport with helpers to speak and listen."""

    def __init__(self, simulator: CarrierSimulator) -> None:
        self.transport = StringTransport()
        self.protocol = SmscProtocol(simulator)
        self.protocol.makeConnection(self.transport)
        self._sequence = 0
        self.early: list[Pdu] = []  # PDUs that came with the bind_resp

    def send(self, cls: type[Pdu], **fields: Any) -> int:
        self._sequence += 1
        self.protocol.dataReceived(encode(cls(self._sequence, **fields)))
        return self._sequence

    def take(self) -> list[Pdu]:
        pdus = self.early + decode_all(self.transport.value())
        self.early = []
        self.transport.clear()
        return pdus

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("test")))


def fake_simulator(**options: Any) -> tuple[CarrierSimulator, MemoryReactorClock]:
    clock = MemoryReactorClock()
    simulator = CarrierSimulator(SimulatorOptions(port=0, message_id_start=1, **options), clock)
    simulator.startService()
    return simulator, clock


def bound_fake(simulator: CarrierSimulator, bind: type[Pdu] = BindTransceiver, system_id: str = "gw") -> FakeSession:
    session = FakeSession(simulator)
    session.send(bind, system_id=system_id, password="pw")
    resp, *session.early = session.take()
    assert resp.command_status == CommandStatus.ESME_ROK
    return session


def test_latency_delays_responses_by_the_configured_time():
    """With latency_seconds the submit_sm_resp comes that much later, not before."""
    simulator, clock = fake_simulator(latency_seconds=0.5)
    session = bound_fake(simulator)
    session.send(SubmitSm, destination_addr=CITIZEN, short_message=b"hi")
    clock.advance(0.49)
    assert session.take() == []
    clock.advance(0.02)
    assert [type(p) for p in session.take()] == [SubmitSmResp]


def test_receipts_due_together_share_one_timer():
    """Receipts come after receipt_delay_seconds, in bulk, from one delayed call per tick."""
    simulator, clock = fake_simulator(receipt_delay_seconds=2.0, deliver_window=1000)
    session = bound_fake(simulator)
    for _ in range(100):
        session.send(SubmitSm, destination_addr=CITIZEN, short_message=b"hi", registered_delivery=1)
    assert len(session.take()) == 100
    assert len([c for c in clock.getDelayedCalls() if c.active()]) <= 3  # receipts + housekeeping
    clock.advance(1.99)
    assert session.take() == []
    clock.advance(0.02)
    receipts = session.take()
    assert [type(p) for p in receipts] == [DeliverSm] * 100
    assert len({p.sequence_number for p in receipts}) == 100


def _receipts_sent_for(session, clock, *, submits: int) -> list:
    """Submit `submits` messages asking for receipts (receipt delay 0); the deliver_sm the
    simulator then writes, within its window."""
    for _ in range(submits):
        session.send(SubmitSm, destination_addr=CITIZEN, short_message=b"x", registered_delivery=1)
    session.take()
    clock.advance(0.02)
    return session.take()


def test_deliver_window_limits_unacknowledged_receipts():
    """At most deliver_window deliver_sm are outstanding; each ack lets one more go."""
    simulator, clock = fake_simulator(receipt_delay_seconds=0, deliver_window=2)
    session = bound_fake(simulator)
    first = _receipts_sent_for(session, clock, submits=5)
    assert len(first) == 2
    session.protocol.dataReceived(encode(DeliverSmResp(first[0].sequence_number)))
    assert len(session.take()) == 1
    assert simulator.report()["deliveries_queued"] == 2


def test_the_carriers_wait_for_each_receipt_answer_is_reported():
    """The time from writing a receipt's deliver_sm to reading its deliver_sm_resp is
    what a carrier sees of the gateway's receipt path: kept per answer, reported as
    percentiles (bench/cluster.py prints them)."""
    simulator, clock = fake_simulator(receipt_delay_seconds=0, deliver_window=10)
    session = bound_fake(simulator)
    assert simulator.report()["deliver_sm_answer_times"] == {}
    receipts = _receipts_sent_for(session, clock, submits=3)
    assert len(receipts) == 3
    for receipt, wait in zip(receipts, (0.004, 0.010, 0.250), strict=True):
        clock.advance(wait)
        session.protocol.dataReceived(encode(DeliverSmResp(receipt.sequence_number)))
    answers = simulator.report()["deliver_sm_answer_times"]
    # cumulative waits from the moment all three were written: 4, 14 and 264 ms
    assert answers == {"receipt": {"count": 3, "p50_ms": 14.0, "p99_ms": 264.0, "max_ms": 264.0}}


def test_answer_times_are_bounded_and_split_by_kind():
    from gateway.smpp.simulator import AnswerTimes

    times = AnswerTimes(keep=100)
    for i in range(1000):
        times.answered(True, i / 1000)
    times.answered(False, 0.5)
    report = times.report()
    assert report["receipt"]["count"] == 100  # the last 100 only: 0.900 .. 0.999 s
    assert report["receipt"]["p50_ms"] == 949.0 and report["receipt"]["max_ms"] == 999.0
    assert report["mo"] == {"count": 1, "p50_ms": 500.0, "p99_ms": 500.0, "max_ms": 500.0}


def test_refused_and_lost_receipts_are_delivered_again():
    """A receipt answered with an error comes again later; one outstanding when the
    connection drops comes again over the next receiver bind."""
    simulator, clock = fake_simulator(receipt_delay_seconds=0, redeliver_delay_seconds=3)
    session = bound_fake(simulator)
    session.send(SubmitSm, destination_addr=CITIZEN, short_message=b"x", registered_delivery=1)
    [resp] = session.take()
    clock.advance(0.02)
    [receipt] = session.take()
    session.protocol.dataReceived(encode(DeliverSmResp(receipt.sequence_number, CommandStatus.ESME_RX_T_APPN)))
    clock.advance(2.9)
    assert session.take() == []
    clock.advance(0.2)
    [again] = session.take()
    assert again.short_message == receipt.short_message
    session.lose()
    other = bound_fake(simulator, BindReceiver)
    [third] = other.take()  # sent as soon as the receiver is bound
    assert third.short_message == receipt.short_message
    other.protocol.dataReceived(encode(DeliverSmResp(third.sequence_number)))
    report = simulator.report()
    assert (report["receipts_sent"], report["receipts_acked"], report["receipts_redelivered"]) == (3, 1, 2)


_REQUESTS = sorted((cid for cid in PDU_CLASSES if not is_response(cid)), key=int)


@pytest.mark.parametrize("state", [SessionState.OPEN, SessionState.BOUND_TX, SessionState.BOUND_RX, SessionState.BOUND_TRX])
@pytest.mark.parametrize("command_id", _REQUESTS, ids=lambda c: CommandId(c).name.lower())
def test_state_table_decides_bind_status(state, command_id):
    """Every (state, request) pair: a request missing from HANDLERS gets ESME_RINVBNDSTS
    (in its own response, or a generic_nack when it has none); one present does not."""
    simulator, _ = fake_simulator()
    bind = {SessionState.BOUND_TX: BindTransmitter, SessionState.BOUND_RX: BindReceiver,
            SessionState.BOUND_TRX: BindTransceiver}.get(state)
    session = bound_fake(simulator, bind) if bind else FakeSession(simulator)
    assert session.protocol.state is state
    session.send(PDU_CLASSES[command_id])
    answers = session.take()
    if command_id in HANDLERS[state]:
        assert all(p.command_status != CommandStatus.ESME_RINVBNDSTS for p in answers)
    else:
        [answer] = answers
        assert answer.command_status == CommandStatus.ESME_RINVBNDSTS
        expected = PDU_CLASSES.get(command_id | 0x80000000, GenericNack)
        assert type(answer) is expected


def test_bad_frames_get_generic_nack():
    """Unknown command_id: generic_nack ESME_RINVCMDID; a command_length under 16 or over
    max_pdu_bytes: generic_nack ESME_RINVCMDLEN and the connection closes."""
    simulator, _ = fake_simulator(max_pdu_bytes=1024)
    session = bound_fake(simulator)
    session.protocol.dataReceived(bytes.fromhex("00000010 00000077 00000000 00000005".replace(" ", "")))
    [nack] = session.take()
    assert (type(nack), nack.command_status, nack.sequence_number) == (GenericNack, CommandStatus.ESME_RINVCMDID, 5)
    assert not session.transport.disconnecting
    session.protocol.dataReceived(bytes.fromhex("00100000 00000004 00000000 00000006".replace(" ", "")))
    [nack] = session.take()
    assert nack.command_status == CommandStatus.ESME_RINVCMDLEN
    assert session.transport.disconnecting


def test_undecodable_body_gets_its_response_with_the_codec_status():
    """A submit_sm whose destination_addr is too long is answered ESME_RINVDSTADR."""
    simulator, _ = fake_simulator()
    session = bound_fake(simulator)
    good = encode(SubmitSm(9, destination_addr=CITIZEN))
    bad = good.replace(CITIZEN.encode(), b"1" * 30)
    bad = len(bad).to_bytes(4, "big") + bad[4:]
    session.protocol.dataReceived(bad)
    [resp] = session.take()
    assert (type(resp), resp.command_status, resp.sequence_number) == (SubmitSmResp, CommandStatus.ESME_RINVDSTADR, 9)


def test_submit_multi_and_data_sm_are_answered_and_recorded():
    """submit_multi refuses rejected destinations one by one; data_sm reads message_payload."""
    simulator, _ = fake_simulator(rejected_destinations=frozenset({"13700000000"}))
    session = bound_fake(simulator)
    session.send(SubmitMulti, dest_addresses=(SmeAddress(1, 1, CITIZEN), SmeAddress(1, 1, "13700000000")),
                 short_message=b"hello")
    session.send(DataSm, destination_addr="13900000000",
                 tlvs=(Tlv(TlvTag.MESSAGE_PAYLOAD, "您好".encode("utf-16-be")),), data_coding=8)
    multi, data = session.take()
    assert isinstance(multi, SubmitMultiResp) and multi.command_status == CommandStatus.ESME_ROK
    assert [s.destination_addr for s in multi.unsuccess_smes] == ["13700000000"]
    assert isinstance(data, DataSmResp) and data.message_id
    assert [(m.destination, m.text) for m in simulator.received] == [(CITIZEN, "hello"), ("13900000000", "您好")]


def test_cli_flags_build_options_and_run_prints_masked_reports():
    """`smsc-sim` flags map onto SimulatorOptions; the run prints report lines and masks
    the MO source number."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--listen", "127.0.0.1:0", "--account", "gw:pw", "--throttle-rate", "0.1",
        "--outcome", "DELIVRD=9", "--outcome", "UNDELIV=1", "--outcome-for", "13900000000=rejectd",
        "--mo", f"{CITIZEN}:CXYY", "--report-interval", "1", "--duration", "2.5",
    ])
    options = options_from_args(args)
    assert options.credentials == {"gw": "pw"}
    assert options.outcome_weights == {"DELIVRD": 9.0, "UNDELIV": 1.0}
    assert options.outcome_overrides == {"13900000000": "REJECTD"}
    clock = MemoryReactorClock()
    out = io.StringIO()
    finished = run_from_args(args, clock, out=out)
    clock.advance(1)
    clock.advance(1)
    assert not finished.called
    clock.advance(1)
    assert finished.called
    text = out.getvalue()
    assert "138****8000" in text and CITIZEN not in text
    assert text.count("smsc-sim: bound=") == 3  # two ticks and the final report


# ---------------------------------------------------------------------------------------
# Ring 3: real sockets
# ---------------------------------------------------------------------------------------


class EsmeClient(Protocol):
    """A minimal ESME on our codec: records every PDU, answers deliver_sm, enquire_link,
    unbind and (as a listener) outbind with bind_receiver."""

    def __init__(self, deliver_sm_status: int = CommandStatus.ESME_ROK,
                 outbind_credentials: tuple[str, str] | None = None) -> None:
        self.pdus: list[Pdu] = []
        self.lost: Deferred[None] = Deferred()
        self._waiters: list[tuple[Callable[[list[Pdu]], bool], Deferred[list[Pdu]]]] = []
        self._buffer = b""
        self._sequence = 0
        self._deliver_sm_status = deliver_sm_status
        self._outbind_credentials = outbind_credentials

    def send(self, cls: type[Pdu], **fields: Any) -> int:
        self._sequence += 1
        self.transport.write(encode(cls(self._sequence, **fields)))
        return self._sequence

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while (n := command_length(self._buffer)) is not None and len(self._buffer) >= n:
            pdu = decode(self._buffer[:n])
            self._buffer = self._buffer[n:]
            self.pdus.append(pdu)
            if isinstance(pdu, DeliverSm):
                self.transport.write(encode(DeliverSmResp(pdu.sequence_number, self._deliver_sm_status)))
            elif isinstance(pdu, EnquireLink):
                self.transport.write(encode(EnquireLinkResp(pdu.sequence_number)))
            elif isinstance(pdu, Unbind):
                self.transport.write(encode(UnbindResp(pdu.sequence_number)))
            elif isinstance(pdu, Outbind) and self._outbind_credentials:
                system_id, password = self._outbind_credentials
                self.send(BindReceiver, system_id=system_id, password=password)
        for entry in list(self._waiters):
            if entry[0](self.pdus):
                self._waiters.remove(entry)
                entry[1].callback(self.pdus)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def wait_until(self, condition: Callable[[list[Pdu]], bool], timeout: float = 5.0) -> Deferred[list[Pdu]]:
        """Fires with all PDUs so far once ``condition(pdus)`` holds (fails after ``timeout``)."""
        d: Deferred[list[Pdu]] = Deferred()
        if condition(self.pdus):
            d.callback(self.pdus)
            return d
        self._waiters.append((condition, d))
        return d.addTimeout(timeout, reactor)

    async def response(self, sequence: int) -> Pdu:
        pdus = await self.wait_until(lambda ps: any(is_response(p.command_id) and p.sequence_number == sequence for p in ps))
        return next(p for p in pdus if is_response(p.command_id) and p.sequence_number == sequence)

    def of_type(self, cls: type[Pdu]) -> list[Any]:
        return [p for p in self.pdus if type(p) is cls]


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., CarrierSimulator]]:
    """Starts simulators on 127.0.0.1 port 0 and stops them after the test."""
    started: list[CarrierSimulator] = []

    def start(**options: Any) -> CarrierSimulator:
        options.setdefault("receipt_delay_seconds", 0.0)
        simulator = CarrierSimulator(SimulatorOptions(host="127.0.0.1", port=0, **options), reactor)
        simulator.startService()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        pytest_twisted.blockon(simulator.stopService())


async def connect(simulator: CarrierSimulator, **client_options: Any) -> EsmeClient:
    client = EsmeClient(**client_options)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", simulator.port_number), client)
    return client


async def bound_client(simulator: CarrierSimulator, bind: type[Pdu] = BindTransceiver, **client_options: Any) -> EsmeClient:
    client = await connect(simulator, **client_options)
    resp = await client.response(client.send(bind, system_id="gw12123cm", password="cmpass"))
    assert resp.command_status == CommandStatus.ESME_ROK
    return client


def _smpplib_long_message(port: int, text: str) -> tuple[list[str], list[tuple[str, int, bytes]]]:
    """In a thread: bind with smpplib, submit ``text`` as UCS2 UDH parts asking for
    receipts, collect the submit_sm_resp ids and the receipts (acknowledging them)."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=5, allow_unknown_opt_params=True)
    client.connect()
    try:
        client.bind_transceiver(system_id="gw12123cm", password="cmpass")
        parts, encoding, esm_class = smpplib.gsm.make_parts(text, encoding=smpplib.consts.SMPP_ENCODING_ISO10646)
        sequences = []
        for part in parts:
            pdu = client.send_message(
                source_addr_ton=0, source_addr="12123", dest_addr_ton=1, destination_addr=CITIZEN,
                short_message=part, data_coding=encoding, esm_class=esm_class, registered_delivery=1,
            )
            sequences.append(pdu.sequence)
        ids: dict[int, str] = {}
        receipts: list[tuple[str, int, bytes]] = []
        while len(ids) < len(parts) or len(receipts) < len(parts):
            pdu = client.read_pdu()
            if pdu.command == "submit_sm_resp":
                assert pdu.status == 0
                ids[pdu.sequence] = _text(pdu.message_id)
            elif pdu.command == "deliver_sm":
                receipts.append((_text(pdu.receipted_message_id), pdu.message_state, pdu.short_message))
                resp = smpplib.smpp.make_pdu("deliver_sm_resp", client=client)
                resp.sequence = pdu.sequence
                client.send_pdu(resp)
        client.unbind()
        return [ids[s] for s in sequences], receipts
    finally:
        client.disconnect()


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


@pytest_twisted.ensureDeferred
async def test_smpplib_long_chinese_message_is_reassembled_and_receipted(start_simulator):
    """smpplib submits 200 Chinese characters as UCS2 UDH parts: the simulator joins
    exactly the original text, and each part's receipt names its id with stat DELIVRD."""
    simulator = start_simulator(credentials=CREDENTIALS)
    ids, receipts = await threads.deferToThread(_smpplib_long_message, simulator.port_number, LONG_CHINESE)
    assert len(ids) == 3 and len(set(ids)) == 3
    [message] = simulator.received
    assert (message.text, message.parts, message.message_ids) == (LONG_CHINESE, 3, tuple(ids))
    assert (message.system_id, message.destination, message.source) == ("gw12123cm", CITIZEN, "12123")
    assert sorted(r[0] for r in receipts) == sorted(ids)
    assert {r[1] for r in receipts} == {2}  # message_state DELIVERED
    for receipted_id, _, short_message in receipts:
        fields = parse_receipt_text(short_message.decode("ascii"))
        assert (fields.id, fields.stat) == (receipted_id, "DELIVRD")
    assert simulator.report()["submit_pdus_by_message"] == {f"{CITIZEN} {LONG_CHINESE}": 3}


@pytest_twisted.ensureDeferred
async def test_receipts_carry_outcome_and_converted_id(start_simulator):
    """Per-number outcomes reach the receipt; with hex_of_decimal the receipt id is the
    hex form of the decimal submit_sm_resp id, in the TLV and the text alike."""
    simulator = start_simulator(outcome_overrides={"13900000000": "UNDELIV"},
                                receipt_id_format="hex_of_decimal", message_id_start=1_000_000)
    client = await bound_client(simulator)
    first = await client.response(client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"a", registered_delivery=1))
    second = await client.response(client.send(SubmitSm, destination_addr="13900000000", short_message=b"b", registered_delivery=1))
    await client.wait_until(lambda ps: sum(isinstance(p, DeliverSm) for p in ps) == 2)
    receipts = {r.source_addr: receipt_from_deliver(r) for r in client.of_type(DeliverSm)}
    assert receipts[CITIZEN].message_id == format(int(first.message_id), "x")
    assert receipts[CITIZEN].stat == "DELIVRD"
    assert receipts["13900000000"].message_id == format(int(second.message_id), "x")
    assert receipts["13900000000"].stat == "UNDELIV"
    assert receipts["13900000000"].text_fields.id == receipts["13900000000"].message_id
    # The gateway's carrier setting for this habit turns the receipt id back.
    assert normalise_message_id(receipts[CITIZEN].message_id, id_format="hex_to_dec") == first.message_id
    [deliver] = [p for p in client.of_type(DeliverSm) if p.source_addr == CITIZEN]
    assert (deliver.esm_class, deliver.destination_addr) == (0x04, "")


@pytest_twisted.ensureDeferred
async def test_receipt_before_response_arrives_first(start_simulator):
    """With receipt_before_response the deliver_sm precedes its submit_sm_resp."""
    simulator = start_simulator(receipt_before_response=True, receipt_delay_seconds=5.0)
    client = await bound_client(simulator)
    sequence = client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"x", registered_delivery=1)
    resp = await client.response(sequence)
    kinds = [type(p) for p in client.pdus[1:]]
    assert kinds == [DeliverSm, SubmitSmResp]
    assert tlv_cstring(client.pdus[1].tlvs, TlvTag.RECEIPTED_MESSAGE_ID) == resp.message_id


@pytest_twisted.ensureDeferred
async def test_receipts_wait_for_a_receiver_and_may_repeat(start_simulator):
    """Receipts for a transmitter-only ESME wait until a receiver with the same
    system_id binds; duplicate_receipts sends each twice."""
    # receipt_before_response: the receipts are queued before the response goes out.
    simulator = start_simulator(duplicate_receipts=True, receipt_before_response=True)
    transmitter = await bound_client(simulator, BindTransmitter)
    resp = await transmitter.response(transmitter.send(SubmitSm, destination_addr=CITIZEN, short_message=b"x",
                                                       registered_delivery=1))
    assert simulator.report()["deliveries_queued"] == 2
    receiver = await bound_client(simulator, BindReceiver)
    await receiver.wait_until(lambda ps: len([p for p in ps if isinstance(p, DeliverSm)]) == 2)
    ids = [tlv_cstring(p.tlvs, TlvTag.RECEIPTED_MESSAGE_ID) for p in receiver.of_type(DeliverSm)]
    assert ids == [resp.message_id, resp.message_id]
    assert not transmitter.of_type(DeliverSm)
    assert tlv_int(receiver.of_type(DeliverSm)[0].tlvs, TlvTag.MESSAGE_STATE) == 2


@pytest_twisted.ensureDeferred
async def test_throttle_rate_answers_throttled(start_simulator):
    """throttle_rate 1 answers every submit ESME_RTHROTTLED and records nothing."""
    simulator = start_simulator(throttle_rate=1.0)
    client = await bound_client(simulator)
    resp = await client.response(client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"x"))
    assert (resp.command_status, resp.message_id) == (CommandStatus.ESME_RTHROTTLED, "")
    assert simulator.received == []
    assert simulator.report()["throttled"] == 1


@pytest_twisted.ensureDeferred
async def test_never_respond_leaves_the_submit_unanswered(start_simulator):
    """A submit chosen by never_respond_rate is recorded but gets no response (the
    enquire_link sent after it is answered, the submit is not)."""
    simulator = start_simulator(never_respond_rate=1.0)
    client = await bound_client(simulator)
    submit = client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"lost")
    await client.response(client.send(EnquireLink))
    assert not [p for p in client.pdus if p.sequence_number == submit]
    assert [m.text for m in simulator.received] == ["lost"]


@pytest_twisted.ensureDeferred
async def test_drop_after_pdus_closes_the_connection(start_simulator):
    """drop_after_pdus 3: bind, submit, submit -> the connection closes without unbind;
    the third PDU was received but never answered."""
    simulator = start_simulator(drop_after_pdus=3)
    client = await bound_client(simulator)
    first = await client.response(client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"one"))
    client.send(SubmitSm, destination_addr=CITIZEN, short_message=b"two")
    await client.lost.addTimeout(5, reactor)
    assert [type(p) for p in client.pdus] == [BindTransceiverResp, SubmitSmResp]
    assert first.command_status == CommandStatus.ESME_ROK
    assert [m.text for m in simulator.received] == ["one", "two"]
    assert simulator.report()["dropped_connections"] == 1


@pytest_twisted.ensureDeferred
async def test_bad_credentials_are_refused(start_simulator):
    """Wrong password -> ESME_RINVPASWD, unknown system_id -> ESME_RINVSYSID; the session
    stays unbound, so a submit gets ESME_RINVBNDSTS."""
    simulator = start_simulator(credentials=CREDENTIALS)
    client = await connect(simulator)
    wrong = await client.response(client.send(BindTransmitter, system_id="gw12123cm", password="nope"))
    unknown = await client.response(client.send(BindTransmitter, system_id="stranger", password="cmpass"))
    submit = await client.response(client.send(SubmitSm, destination_addr=CITIZEN))
    assert type(wrong) is BindTransmitterResp
    assert wrong.command_status == CommandStatus.ESME_RINVPASWD
    assert unknown.command_status == CommandStatus.ESME_RINVSYSID
    assert submit.command_status == CommandStatus.ESME_RINVBNDSTS
    receiver = await bound_client(simulator, BindReceiver)
    on_receiver = await receiver.response(receiver.send(SubmitSm, destination_addr=CITIZEN))
    assert on_receiver.command_status == CommandStatus.ESME_RINVBNDSTS
    assert simulator.report()["bind_failures"] == 2


@pytest_twisted.ensureDeferred
async def test_outbind_then_scripted_mo(start_simulator):
    """The simulator outbinds to an ESME's listener, the ESME binds as receiver, and a
    long Chinese MO arrives as UCS2 UDH parts that join to the text; send_mo fires once
    every part is acknowledged."""
    simulator = start_simulator(credentials=CREDENTIALS)
    listener_clients: list[EsmeClient] = []

    def build() -> EsmeClient:
        client = EsmeClient(outbind_credentials=("gw12123cm", "cmpass"))
        listener_clients.append(client)
        return client

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(build))
    try:
        session = await simulator.outbind("127.0.0.1", port.getHost().port, "SIMSMSC", "secret")
        assert session.state is SessionState.BOUND_RX
        [esme] = listener_clients
        [outbind, bind_resp] = await esme.wait_until(lambda ps: len(ps) == 2)
        assert (type(outbind), outbind.system_id, outbind.password) == (Outbind, "SIMSMSC", "secret")
        assert type(bind_resp) is BindReceiverResp and bind_resp.command_status == CommandStatus.ESME_ROK
        await simulator.send_mo(CITIZEN, LONG_CHINESE).addTimeout(5, reactor)
        reassembler = Reassembler()
        joined = None
        for deliver in esme.of_type(DeliverSm):
            assert (deliver.source_addr, deliver.destination_addr, deliver.data_coding) == (CITIZEN, "12123", 8)
            text, concat = decode_pdu_text(deliver)
            assert concat is not None
            joined = reassembler.add(deliver.source_addr, concat, text, now=0.0) or joined
        assert joined == LONG_CHINESE
        assert simulator.report()["mo_acked"] == 3
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_stop_unbinds_bound_sessions(start_simulator):
    """stopService sends unbind to bound ESMEs and closes once they answer."""
    simulator = start_simulator()
    client = await bound_client(simulator)
    await simulator.stopService()
    await client.lost.addTimeout(5, reactor)
    assert [type(p) for p in client.pdus] == [BindTransceiverResp, Unbind]
