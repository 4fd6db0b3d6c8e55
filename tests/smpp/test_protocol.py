"""The Twisted shell around the session: bytes written, timers on a Clock, owner callbacks."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway import metrics
from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    CommandStatus,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    encode,
)
from gateway.smpp.protocol import BindRefused, RequestNotAnswered, SessionOwner, SmppProtocol
from gateway.smpp.session import Role, SessionState, SmppSession
from tests.smpp import decode_all


class RecordingOwner(SessionOwner):
    def __init__(self) -> None:
        self.received: list[Pdu] = []
        self.closed: list[str] = []
        self.lost = 0
        self.unbinds = 0

    def pdu_received(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        self.received.append(pdu)

    def session_closed(self, protocol: SmppProtocol, reason: str) -> None:
        self.closed.append(reason)

    def connection_lost(self, protocol: SmppProtocol, reason: Failure) -> None:
        self.lost += 1

    def unbind_requested(self, protocol: SmppProtocol) -> None:
        self.unbinds += 1


def connect(
    clock: Clock, transport: StringTransport, role: Role = Role.ESME, **options: float
) -> tuple[SmppProtocol, RecordingOwner]:
    settings = {
        "window": 2,
        "response_timeout_seconds": 10.0,
        "enquire_link_interval_seconds": 30.0,
    }
    settings.update(options)
    owner = RecordingOwner()

    def factory(now: float) -> SmppSession:
        return SmppSession(role, now=now, **settings)  # type: ignore[arg-type]

    protocol = SmppProtocol(factory, owner, clock, label="test")
    protocol.makeConnection(transport)
    return protocol, owner


def connect_bound_esme(
    clock: Clock, transport: StringTransport, **options: float
) -> tuple[SmppProtocol, RecordingOwner]:
    protocol, owner = connect(clock, transport, **options)
    bound = protocol.request(BindTransceiver(0, system_id="gw", password="pw"))
    [bind] = decode_all(transport.value())
    protocol.dataReceived(encode(BindTransceiverResp(bind.sequence_number, system_id="smsc")))
    assert isinstance(bound.result, BindTransceiverResp)  # type: ignore[attr-defined]
    transport.clear()
    return protocol, owner


def test_idle_bound_session_sends_enquire_link() -> None:
    """A bound session with no traffic writes enquire_link when the interval passes."""
    clock, transport = Clock(), StringTransport()
    connect_bound_esme(clock, transport, enquire_link_interval_seconds=30)
    clock.advance(29)
    assert transport.value() == b""
    clock.advance(1)
    assert [type(p) for p in decode_all(transport.value())] == [EnquireLink]


def test_unanswered_enquire_link_disconnects() -> None:
    """An enquire_link unanswered within the response timeout closes the connection."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport, enquire_link_interval_seconds=30)
    clock.advance(30)
    clock.advance(10)
    assert transport.disconnecting
    assert owner.closed == ["enquire_link unanswered: the link is dead"]
    protocol.connectionLost(Failure(ConnectionDone()))
    assert owner.closed == ["enquire_link unanswered: the link is dead"]  # reported once
    assert owner.lost == 1
    assert clock.getDelayedCalls() == []


def test_peer_enquire_link_is_answered_on_the_wire() -> None:
    """The peer's enquire_link gets enquire_link_resp written at once."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect_bound_esme(clock, transport)
    protocol.dataReceived(encode(EnquireLink(5)))
    assert decode_all(transport.value()) == [EnquireLinkResp(5)]


def test_request_fires_with_the_response() -> None:
    """request() fires with the response PDU."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect_bound_esme(clock, transport)
    d = protocol.request(SubmitSm(0, destination_addr="13800138000"))
    [submit] = decode_all(transport.value())
    protocol.dataReceived(encode(SubmitSmResp(submit.sequence_number, message_id="m-1")))
    assert d.result == SubmitSmResp(submit.sequence_number, message_id="m-1")  # type: ignore[attr-defined]


def test_request_times_out_on_the_clock() -> None:
    """A request unanswered for response_timeout_seconds fails with RequestNotAnswered."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect_bound_esme(clock, transport, response_timeout_seconds=10)
    d = protocol.request(SubmitSm(0))
    failures: list[Failure] = []
    d.addErrback(failures.append)
    clock.advance(9.9)
    assert failures == []
    clock.advance(0.1)
    assert failures[0].check(RequestNotAnswered)


def test_connection_lost_fails_outstanding_requests() -> None:
    """Outstanding requests fail when the connection is lost; the owner hears of it once."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport)
    failures: list[Failure] = []
    protocol.request(SubmitSm(0)).addErrback(failures.append)
    protocol.request(SubmitSm(0)).addErrback(failures.append)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert [f.check(RequestNotAnswered) for f in failures] == [
        RequestNotAnswered,
        RequestNotAnswered,
    ]
    assert owner.closed == ["connection lost: Connection was closed cleanly."]
    assert clock.getDelayedCalls() == []


def test_refused_bind_fails_with_its_status() -> None:
    """A bind refused with ESME_RINVPASWD fails with BindRefused carrying that status."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport)
    d = protocol.request(BindTransceiver(0, system_id="gw", password="bad"))
    [bind] = decode_all(transport.value())
    protocol.dataReceived(
        encode(BindTransceiverResp(bind.sequence_number, CommandStatus.ESME_RINVPASWD))
    )
    failure = d.result  # type: ignore[attr-defined]
    d.addErrback(lambda _: None)
    assert failure.check(BindRefused) and failure.value.status == CommandStatus.ESME_RINVPASWD


def test_requests_reach_the_owner_and_responses_go_out() -> None:
    """A deliver_sm goes to the owner; respond() writes deliver_sm_resp."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport)
    protocol.dataReceived(encode(DeliverSm(9, source_addr="13800138000", short_message=b"hi")))
    [pdu] = owner.received
    assert transport.value() == b""
    protocol.respond(pdu)
    assert decode_all(transport.value()) == [DeliverSmResp(9)]


def test_peer_unbind_is_answered_and_the_connection_closed() -> None:
    """The peer's unbind is answered with unbind_resp and the connection is closed."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport)
    protocol.dataReceived(encode(Unbind(3)))
    assert decode_all(transport.value()) == [UnbindResp(3)]
    assert transport.disconnecting
    assert owner.unbinds == 1
    assert protocol.session is not None and protocol.session.state is SessionState.UNBOUND


def test_smsc_closes_a_connection_that_never_binds() -> None:
    """The SMSC side disconnects a peer that does not bind within the session_init timeout."""
    clock, transport = Clock(), StringTransport()
    connect(clock, transport, Role.SMSC, response_timeout_seconds=5)
    clock.advance(5)
    assert transport.disconnecting


def test_absurd_command_length_closes_the_connection() -> None:
    """A 2 GB command_length is never buffered: generic_nack and disconnect at once."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport)
    protocol.dataReceived(b"\x7f\xff\xff\xff" + bytes(12))
    [nack] = decode_all(transport.value())
    assert nack.command_status == CommandStatus.ESME_RINVCMDLEN
    assert transport.disconnecting
    assert owner.closed and "command_length" in owner.closed[0]


def sample(direction: str, command: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "gateway12123_smpp_pdus_total", {"direction": direction, "command": command}
    )
    return value or 0.0


def test_pdus_are_counted_by_direction_and_command() -> None:
    """gateway12123_smpp_pdus_total counts PDUs written and read, by command name."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect_bound_esme(clock, transport)
    before_out, before_in = sample("out", "enquire_link_resp"), sample("in", "enquire_link")
    protocol.dataReceived(encode(EnquireLink(5)) + encode(EnquireLink(6)))
    assert sample("in", "enquire_link") == before_in + 2
    assert sample("out", "enquire_link_resp") == before_out + 2


@pytest.mark.parametrize("step", [1, 7, 100])
def test_chunked_input_is_framed(step: int) -> None:
    """PDUs arriving in arbitrary chunks are framed the same."""
    clock, transport = Clock(), StringTransport()
    protocol, owner = connect_bound_esme(clock, transport)
    data = encode(DeliverSm(1, short_message=b"a")) + encode(DeliverSm(2, short_message=b"b"))
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i : i + step])
    assert [p.sequence_number for p in owner.received] == [1, 2]


# -- backpressure (issue 12 item 3) ------------------------------------------------------------


def test_protocol_registers_as_streaming_producer_at_the_first_bytes() -> None:
    """The protocol becomes the transport's streaming producer when the peer first speaks."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport, role=Role.SMSC)
    assert transport.producer is None
    protocol.dataReceived(encode(EnquireLink(1)))
    assert transport.producer is protocol and transport.streaming


@pytest.mark.parametrize("role", [Role.SMSC, Role.ESME])
def test_paused_protocol_stops_reading_and_aborts_when_the_peer_does_not_drain(role: Role) -> None:
    """Unsent output past the transport's bound pauses reading; undrained for the drain
    timeout, the connection is aborted (listener sessions and carrier links alike)."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport, role=role, response_timeout_seconds=5.0)
    protocol.dataReceived(encode(EnquireLink(1)))
    protocol.pauseProducing()  # what the transport does when its buffer passes bufferSize
    assert transport.producerState == "paused" and protocol.paused
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # StringTransport.abortConnection sets it


def test_drained_output_resumes_reading_and_keeps_the_connection() -> None:
    """A peer that drains our output within the timeout is read again and stays connected."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport, role=Role.SMSC, response_timeout_seconds=5.0,
                              session_init_timeout_seconds=100.0, enquire_link_interval_seconds=100.0)
    protocol.dataReceived(encode(EnquireLink(1)))
    protocol.pauseProducing()
    clock.advance(3.0)
    protocol.resumeProducing()
    assert transport.producerState == "producing" and not protocol.paused
    clock.advance(10.0)
    assert not transport.disconnecting


def test_disconnect_is_bounded_by_the_drain_timeout() -> None:
    """A closing session whose farewell is not taken is aborted after the drain timeout."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport, role=Role.SMSC, response_timeout_seconds=5.0)
    aborted: list[bool] = []
    transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    protocol.disconnect()
    assert transport.disconnecting and not aborted
    clock.advance(5.0)
    assert aborted == [True]


def test_disconnect_unregisters_the_producer_so_the_close_happens() -> None:
    """A paused session that closes gives up being the producer: Twisted closes a
    connection only after its producer is unregistered (a paused one would be resumed
    instead when the peer drains, and the connection would stay open)."""
    clock, transport = Clock(), StringTransport()
    protocol, _ = connect(clock, transport, role=Role.SMSC, response_timeout_seconds=5.0)
    protocol.dataReceived(encode(EnquireLink(1)))
    protocol.pauseProducing()
    protocol.disconnect()
    assert transport.producer is None and transport.disconnecting
