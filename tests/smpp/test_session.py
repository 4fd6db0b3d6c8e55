"""The sans-IO SMPP session: the state table, timers, window, framing limits; no reactor."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp.pdu import (
    PDU_CLASSES,
    BindReceiver,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    CommandId,
    CommandStatus,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Outbind,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
    encode,
    is_response,
)
from gateway.smpp.session import (
    TRANSITIONS,
    BindFailed,
    BindSucceeded,
    Direction,
    LocalProtocolError,
    PduReceived,
    PeerProtocolError,
    RequestAbandoned,
    RequestTimedOut,
    ResponseReceived,
    Role,
    SessionClosed,
    SessionState,
    SmppSession,
    UnbindRequested,
    WindowFull,
    describe_diagram,
    describe_transitions,
)
from tests.smpp import decode_all

S = SessionState
DOCS = Path(__file__).resolve().parents[2] / "docs" / "smpp-session.md"


def new_session(role: Role, **options: object) -> SmppSession:
    settings_ = {
        "window": 3,
        "response_timeout_seconds": 10.0,
        "enquire_link_interval_seconds": 30.0,
        "max_pdu_bytes": 4096,
    }
    settings_.update(options)
    return SmppSession(role, **settings_)  # type: ignore[arg-type]


BIND_FOR_STATE = {
    S.BOUND_TX: BindTransmitter,
    S.BOUND_RX: BindReceiver,
    S.BOUND_TRX: BindTransceiver,
}


def session_in(state: SessionState, role: Role, **options: object) -> SmppSession:
    """A session driven through real PDUs into ``state``; its output buffer cleared."""
    session = new_session(role, **options)
    if state is S.OUTBOUND:
        if role is Role.ESME:
            session.receive_data(encode(Outbind(1, system_id="smsc", password="pw")), 0)
        else:
            session.send(Outbind(0, system_id="smsc", password="pw"), 0)
    elif state in BIND_FOR_STATE or state is S.UNBOUND:
        bind_cls = BIND_FOR_STATE.get(state, BindTransceiver)
        if role is Role.ESME:
            seq = session.send(bind_cls(0, system_id="gw", password="pw"), 0)
            resp = PDU_CLASSES[bind_cls.command_id | 0x80000000](seq, system_id="smsc")
            session.receive_data(encode(resp), 0)
        else:
            [event] = session.receive_data(encode(bind_cls(7, system_id="gw", password="pw")), 0)
            assert isinstance(event, PduReceived)
            session.respond(event.pdu, system_id="smsc")
        if state is S.UNBOUND:
            session.receive_data(encode(Unbind(99)), 0)
    session.data_to_send()
    assert session.state is state
    return session


def sample_request(command_id: CommandId, sequence_number: int = 42) -> Pdu:
    return PDU_CLASSES[command_id](sequence_number)


REQUEST_IDS = [c for c in CommandId if not is_response(c)]
LIVE_STATES = [s for s in SessionState if s is not S.CLOSED]


# -- the table, every pair --------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "role", "command_id"),
    list(itertools.product(LIVE_STATES, Role, REQUEST_IDS)),
    ids=lambda v: getattr(v, "name", None) or getattr(v, "value", str(v)),
)
def test_inbound_request_is_accepted_exactly_when_the_table_says(
    state: SessionState, role: Role, command_id: CommandId
) -> None:
    """An inbound request is handled when TRANSITIONS has it; otherwise answered with
    ESME_RINVBNDSTS (ESME_RALYBND for a bind when bound, generic_nack without a resp)."""
    session = session_in(state, role)
    request = sample_request(command_id)
    events = session.receive_data(encode(request), 1.0)
    answers = decode_all(session.data_to_send())
    if (state, role, command_id, Direction.RECEIVE) in TRANSITIONS:
        assert not any(isinstance(e, PeerProtocolError) for e in events)
        if command_id in (CommandId.ENQUIRE_LINK, CommandId.UNBIND):
            [answer] = answers
            assert answer.command_id == command_id | 0x80000000
            assert answer.command_status == CommandStatus.ESME_ROK
        else:
            assert answers == []
            assert events == [PduReceived(request)]
    else:
        [answer] = answers
        assert answer.sequence_number == 42
        bound_or_binding = state in (S.BOUND_TX, S.BOUND_RX, S.BOUND_TRX)
        if command_id in (CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION):
            assert isinstance(answer, GenericNack)
        else:
            assert answer.command_id == command_id | 0x80000000
        expected = (
            CommandStatus.ESME_RALYBND
            if bound_or_binding and command_id.name.startswith("BIND_")
            else CommandStatus.ESME_RINVBNDSTS
        )
        assert answer.command_status == expected
        assert isinstance(events[-1], PeerProtocolError)
        assert session.state is state  # refused input does not move the state


@pytest.mark.parametrize(
    ("state", "role", "command_id"),
    list(itertools.product(LIVE_STATES, Role, REQUEST_IDS)),
    ids=lambda v: getattr(v, "name", None) or getattr(v, "value", str(v)),
)
def test_outbound_request_is_allowed_exactly_when_the_table_says(
    state: SessionState, role: Role, command_id: CommandId
) -> None:
    """send() queues a request the table allows and raises LocalProtocolError otherwise."""
    session = session_in(state, role)
    request = sample_request(command_id, 0)
    if (state, role, command_id, Direction.SEND) in TRANSITIONS:
        seq = session.send(request, 1.0)
        [sent] = decode_all(session.data_to_send())
        assert sent.command_id == command_id and sent.sequence_number == seq
    else:
        with pytest.raises(LocalProtocolError):
            session.send(request, 1.0)
        assert session.data_to_send() == b""


def test_the_docs_table_is_drawn_from_the_transitions() -> None:
    """docs/smpp-session.md carries the table and diagram generated from TRANSITIONS."""
    text = DOCS.read_text(encoding="utf-8")
    assert describe_transitions() in text
    assert describe_diagram() in text


# -- binding ------------------------------------------------------------------------------


def test_esme_bind_success_moves_to_bound_trx() -> None:
    """A bind_transceiver answered ESME_ROK yields BindSucceeded and BOUND_TRX."""
    session = new_session(Role.ESME)
    seq = session.send(BindTransceiver(0, system_id="gw", password="pw"), 0, context="ctx")
    events = session.receive_data(encode(BindTransceiverResp(seq, system_id="smsc")), 0.5)
    assert events == [BindSucceeded(S.BOUND_TRX, BindTransceiverResp(seq, system_id="smsc"), "ctx")]
    assert session.is_bound


def test_esme_bind_refused_stays_open_and_reports_the_status() -> None:
    """A bind answered ESME_RINVPASWD yields BindFailed with that status; still OPEN."""
    session = new_session(Role.ESME)
    seq = session.send(BindTransceiver(0, system_id="gw", password="bad"), 0)
    events = session.receive_data(
        encode(BindTransceiverResp(seq, CommandStatus.ESME_RINVPASWD)), 0.5
    )
    assert events == [
        BindFailed(
            CommandStatus.ESME_RINVPASWD, BindTransceiverResp(seq, CommandStatus.ESME_RINVPASWD)
        )
    ]
    assert session.state is S.OPEN


def test_bind_answered_by_generic_nack_fails() -> None:
    """A generic_nack to our bind is a failed bind, not a success."""
    session = new_session(Role.ESME)
    seq = session.send(BindTransmitter(0), 0)
    [event] = session.receive_data(encode(GenericNack(seq, CommandStatus.ESME_RINVCMDID)), 0.5)
    assert isinstance(event, BindFailed) and event.status == CommandStatus.ESME_RINVCMDID
    assert session.state is S.OPEN


def test_unanswered_bind_fails_and_closes() -> None:
    """A bind without bind_resp within the response timeout fails and closes the session."""
    session = new_session(Role.ESME, response_timeout_seconds=5.0)
    session.send(BindTransceiver(0), 0)
    assert session.next_deadline() == 5.0
    assert session.tick(4.9) == []
    events = session.tick(5.0)
    assert [type(e) for e in events] == [BindFailed, SessionClosed]
    assert events[0].status is None  # type: ignore[union-attr]
    assert session.state is S.CLOSED


def test_second_bind_while_binding_is_refused_locally() -> None:
    """We never send two binds at once."""
    session = new_session(Role.ESME)
    session.send(BindTransceiver(0), 0)
    with pytest.raises(LocalProtocolError):
        session.send(BindTransceiver(0), 0)


def test_smsc_refused_bind_keeps_session_open_and_answers_the_status() -> None:
    """The SMSC side answering a bind with ESME_RINVPASWD sends that status, stays OPEN."""
    session = new_session(Role.SMSC)
    [event] = session.receive_data(encode(BindTransceiver(3, system_id="p", password="x")), 0)
    assert isinstance(event, PduReceived)
    session.respond(event.pdu, CommandStatus.ESME_RINVPASWD)
    [resp] = decode_all(session.data_to_send())
    assert resp == BindTransceiverResp(3, CommandStatus.ESME_RINVPASWD)
    assert session.state is S.OPEN


def test_smsc_closes_a_connection_that_never_binds() -> None:
    """No bind within the session_init timeout closes the SMSC side's session."""
    session = new_session(Role.SMSC, session_init_timeout_seconds=7.0)
    assert session.next_deadline() == 7.0
    events = session.tick(7.0)
    assert events == [SessionClosed("not bound within the session_init timeout")]


def test_listener_session_becomes_esme_after_outbind() -> None:
    """A listener session whose first request is outbind turns into the ESME in OUTBOUND
    and may then bind_receiver."""
    session = SmppSession(Role.SMSC, accept_outbind=True)
    outbind = Outbind(1, system_id="cmcc", password="pw")
    assert session.receive_data(encode(outbind), 0) == [PduReceived(outbind)]
    assert (session.role, session.state) == (Role.ESME, S.OUTBOUND)
    session.send(BindReceiver(0, system_id="gw", password="pw"), 0)
    assert isinstance(decode_all(session.data_to_send())[0], BindReceiver)


def test_listener_session_without_outbind_support_refuses_outbind() -> None:
    """A plain SMSC session answers outbind with generic_nack ESME_RINVBNDSTS."""
    session = SmppSession(Role.SMSC)
    events = session.receive_data(encode(Outbind(1)), 0)
    assert decode_all(session.data_to_send()) == [GenericNack(1, CommandStatus.ESME_RINVBNDSTS)]
    assert isinstance(events[0], PeerProtocolError)
    assert session.role is Role.SMSC


# -- window, timeouts, sequence numbers ------------------------------------------------------


def test_window_full_raises_and_a_response_frees_a_slot() -> None:
    """Beyond `window` outstanding requests send() raises WindowFull; a response frees one."""
    session = session_in(S.BOUND_TRX, Role.ESME, window=2)
    first = session.send(SubmitSm(0), 1.0)
    session.send(SubmitSm(0), 1.0)
    assert session.window_free == 0
    with pytest.raises(WindowFull):
        session.send(SubmitSm(0), 1.0)
    [event] = session.receive_data(encode(SubmitSmResp(first, message_id="m1")), 1.5)
    assert isinstance(event, ResponseReceived) and event.pdu.message_id == "m1"  # type: ignore[attr-defined]
    assert event.elapsed == pytest.approx(0.5)
    assert session.window_free == 1
    session.send(SubmitSm(0), 1.5)


def test_response_timeout_frees_the_slot() -> None:
    """A submit unanswered within the timeout becomes RequestTimedOut and frees its slot."""
    session = session_in(S.BOUND_TRX, Role.ESME, window=1, response_timeout_seconds=10.0)
    seq = session.send(SubmitSm(0), 5.0, context="n1")
    assert session.window_free == 0
    assert session.next_deadline() == 15.0
    assert session.tick(14.9) == []
    assert session.tick(15.0) == [RequestTimedOut(seq, SubmitSm(0), "n1")]
    assert session.window_free == 1
    # The late response is ignored: nothing waits for it any more.
    assert session.receive_data(encode(SubmitSmResp(seq, message_id="late")), 16.0) == []


def test_enquire_link_and_unbind_do_not_take_window_slots() -> None:
    """With a full window, enquire_link and unbind still go out."""
    session = session_in(S.BOUND_TRX, Role.ESME, window=1)
    session.send(SubmitSm(0), 0)
    session.send(EnquireLink(0), 0)
    session.send(Unbind(0), 0)
    assert [type(p) for p in decode_all(session.data_to_send())] == [SubmitSm, EnquireLink, Unbind]


def test_sequence_numbers_wrap_after_0x7fffffff_and_skip_outstanding_ones() -> None:
    """Sequence numbers run 1..0x7FFFFFFF, wrap to 1 and skip numbers still outstanding."""
    session = session_in(S.BOUND_TRX, Role.ESME, window=5)
    first = session.send(SubmitSm(0), 0)  # 2: the bind took 1
    session._next_sequence = 0x7FFFFFFF
    assert session.send(SubmitSm(0), 0) == 0x7FFFFFFF
    assert session.send(SubmitSm(0), 0) == 1
    assert session.send(SubmitSm(0), 0) == first + 1  # first is still outstanding
    assert first == 2


def test_response_to_another_command_does_not_settle_the_request() -> None:
    """A deliver_sm_resp carrying a submit's sequence_number leaves the submit outstanding."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    seq = session.send(SubmitSm(0), 0)
    assert session.receive_data(encode(DeliverSmResp(seq)), 0.1) == []
    assert session.outstanding_count == 1


# -- enquire_link --------------------------------------------------------------------------


def test_idle_bound_session_sends_enquire_link() -> None:
    """A bound session with nothing received for the interval sends enquire_link."""
    session = session_in(S.BOUND_TRX, Role.ESME, enquire_link_interval_seconds=30.0)
    assert session.next_deadline() == 30.0
    assert session.tick(29.0) == []
    assert session.data_to_send() == b""
    assert session.tick(30.0) == []
    [probe] = decode_all(session.data_to_send())
    assert isinstance(probe, EnquireLink)
    # Answered: no event, and the next probe is an interval after the answer.
    assert session.receive_data(encode(EnquireLinkResp(probe.sequence_number)), 31.0) == []
    assert session.next_deadline() == 61.0


def test_traffic_postpones_enquire_link() -> None:
    """Any PDU received resets the idle timer."""
    session = session_in(S.BOUND_TRX, Role.ESME, enquire_link_interval_seconds=30.0)
    session.receive_data(encode(DeliverSm(5)), 20.0)
    session.tick(30.0)
    assert EnquireLink not in [type(p) for p in decode_all(session.data_to_send())]
    assert session.next_deadline() == 50.0


def test_unanswered_enquire_link_closes_the_session_as_dead() -> None:
    """An enquire_link unanswered within the response timeout closes the session and
    abandons every outstanding request."""
    session = session_in(
        S.BOUND_TRX, Role.ESME, enquire_link_interval_seconds=30.0, response_timeout_seconds=10.0
    )
    session.tick(30.0)
    seq = session.send(SubmitSm(0), 35.0, context="n1")
    events = session.tick(40.0)
    assert events == [
        SessionClosed("enquire_link unanswered: the link is dead"),
        RequestAbandoned(seq, SubmitSm(0), "n1"),
    ]
    assert session.state is S.CLOSED and session.next_deadline() is None


def test_peer_enquire_link_is_answered_automatically() -> None:
    """The peer's enquire_link gets enquire_link_resp with its sequence_number, no event."""
    session = session_in(S.BOUND_TX, Role.ESME)
    assert session.receive_data(encode(EnquireLink(77)), 1.0) == []
    assert decode_all(session.data_to_send()) == [EnquireLinkResp(77)]


# -- framing and bad input -----------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 15, 4097, 0xFFFFFFFF])
def test_absurd_command_length_closes_at_once(length: int) -> None:
    """command_length under 16 or over max_pdu_bytes closes the session without
    buffering, after queueing generic_nack ESME_RINVCMDLEN."""
    session = session_in(S.BOUND_TRX, Role.ESME, max_pdu_bytes=4096)
    events = session.receive_data(length.to_bytes(4, "big") + b"\0\0\0\x04", 1.0)
    assert isinstance(events[0], PeerProtocolError)
    assert events[-1] == SessionClosed(f"command_length {length} outside 16..4096")
    assert session.state is S.CLOSED
    assert decode_all(session.data_to_send()) == [GenericNack(0, CommandStatus.ESME_RINVCMDLEN)]
    assert session._buffer == b""


def test_unknown_command_id_gets_generic_nack_and_the_session_continues() -> None:
    """A well-framed PDU with an unknown command_id gets generic_nack ESME_RINVCMDID."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    bogus = (
        (16).to_bytes(4, "big")
        + (0x00000099).to_bytes(4, "big")
        + bytes(4)
        + (9).to_bytes(4, "big")
    )
    events = session.receive_data(bogus + encode(EnquireLink(10)), 1.0)
    assert [type(e) for e in events] == [PeerProtocolError]
    assert events[0].status == CommandStatus.ESME_RINVCMDID  # type: ignore[union-attr]
    assert decode_all(session.data_to_send()) == [
        GenericNack(9, CommandStatus.ESME_RINVCMDID),
        EnquireLinkResp(10),
    ]
    assert session.state is S.BOUND_TRX


def test_bad_field_in_a_known_request_is_answered_with_its_own_resp() -> None:
    """A deliver_sm whose source_addr overruns its 21 octets gets deliver_sm_resp
    ESME_RINVSRCADR (the status the codec names), not a generic_nack."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    raw = bytearray(encode(DeliverSm(12, source_addr="1" * 20)))
    # Replace the 20-digit source_addr and its NUL by 21 digits and a NUL: 22 octets.
    start = raw.index(b"1" * 20)
    raw[start : start + 21] = b"1" * 21 + b"\0"
    raw[0:4] = len(raw).to_bytes(4, "big")
    events = session.receive_data(bytes(raw), 1.0)
    assert decode_all(session.data_to_send()) == [DeliverSmResp(12, CommandStatus.ESME_RINVSRCADR)]
    assert isinstance(events[0], PeerProtocolError)
    assert session.is_bound


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_pdus_split_anywhere_give_the_same_events(cuts: list[int]) -> None:
    """Events do not depend on how TCP chops the byte stream."""
    stream = b"".join(
        encode(p)
        for p in (
            DeliverSm(5, source_addr="13800138000", short_message=b"hi"),
            EnquireLink(6),
            DeliverSm(7),
        )
    )
    whole = session_in(S.BOUND_TRX, Role.ESME)
    expected = whole.receive_data(stream, 1.0)
    session = session_in(S.BOUND_TRX, Role.ESME)
    events = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        events.extend(session.receive_data(stream[a:b], 1.0))
    assert events == expected
    assert session.data_to_send() == whole.data_to_send()


# -- unbind and close -------------------------------------------------------------------------


def test_peer_unbind_is_answered_and_the_session_is_unbound() -> None:
    """The peer's unbind gets unbind_resp, UnbindRequested, and UNBOUND."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    assert session.receive_data(encode(Unbind(50)), 1.0) == [UnbindRequested()]
    assert decode_all(session.data_to_send()) == [UnbindResp(50)]
    assert session.state is S.UNBOUND
    assert [type(e) for e in session.close("peer hung up")] == [SessionClosed]
    assert session.state is S.CLOSED


def test_our_unbind_answered_moves_to_unbound() -> None:
    """Our unbind answered by unbind_resp yields ResponseReceived and UNBOUND."""
    session = session_in(S.BOUND_TX, Role.ESME)
    seq = session.send(Unbind(0), 1.0, context="bye")
    [event] = session.receive_data(encode(UnbindResp(seq)), 1.2)
    assert isinstance(event, ResponseReceived) and event.context == "bye"
    assert session.state is S.UNBOUND


def test_close_abandons_every_outstanding_request() -> None:
    """close() reports SessionClosed, then every unanswered request as RequestAbandoned."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    a = session.send(SubmitSm(0), 0, context="a")
    b = session.send(SubmitSm(0), 0, context="b")
    assert session.close("link lost") == [
        SessionClosed("link lost"),
        RequestAbandoned(a, SubmitSm(0), "a"),
        RequestAbandoned(b, SubmitSm(0), "b"),
    ]
    assert session.close("again") == []
    with pytest.raises(LocalProtocolError):
        session.send(SubmitSm(0), 0)


def test_respond_after_close_is_dropped() -> None:
    """A deliver_sm_resp the owner produces after the connection closed is not queued."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    [event] = session.receive_data(encode(DeliverSm(5)), 0)
    session.close()
    session.respond(event.pdu)  # type: ignore[union-attr]
    assert session.data_to_send() == b""


# -- our ESME against our SMSC ---------------------------------------------------------------


class SessionPair:
    """An ESME session and an SMSC session wired back to back (h11's ConnectionPair)."""

    def __init__(self) -> None:
        self.esme = new_session(Role.ESME, window=10)
        self.smsc = new_session(Role.SMSC, window=10)
        self.now = 0.0

    def pump(self) -> tuple[list[object], list[object]]:
        """Move bytes both ways until quiet; the events each side saw."""
        esme_events: list[object] = []
        smsc_events: list[object] = []
        while True:
            to_smsc, to_esme = self.esme.data_to_send(), self.smsc.data_to_send()
            if not to_smsc and not to_esme:
                return esme_events, smsc_events
            smsc_events += self.smsc.receive_data(to_smsc, self.now)
            esme_events += self.esme.receive_data(to_esme, self.now)


def test_esme_and_smsc_sessions_talk_to_each_other() -> None:
    """bind, submit, deliver, enquire_link and unbind between our two roles."""
    pair = SessionPair()
    pair.esme.send(BindTransceiver(0, system_id="gw", password="pw"), 0)
    _, smsc_events = pair.pump()
    [bind] = smsc_events
    assert isinstance(bind, PduReceived) and bind.pdu.system_id == "gw"  # type: ignore[attr-defined]
    pair.smsc.respond(bind.pdu, system_id="smsc")
    esme_events, _ = pair.pump()
    assert [type(e) for e in esme_events] == [BindSucceeded]
    assert pair.esme.state is pair.smsc.state is S.BOUND_TRX

    seq = pair.esme.send(SubmitSm(0, destination_addr="13800138000", short_message=b"x"), 1.0)
    _, [submit] = pair.pump()
    pair.smsc.respond(submit.pdu, message_id="abc")  # type: ignore[attr-defined]
    pair.smsc.send(DeliverSm(0, esm_class=0x04, short_message=b"id:abc stat:DELIVRD"), 1.0)
    esme_events, _ = pair.pump()
    assert isinstance(esme_events[0], ResponseReceived) and esme_events[0].sequence_number == seq
    assert isinstance(esme_events[1], PduReceived)
    pair.esme.respond(esme_events[1].pdu)
    _, smsc_events = pair.pump()
    assert isinstance(smsc_events[0], ResponseReceived)

    pair.now = 100.0
    pair.esme.tick(pair.now)
    pair.smsc.tick(pair.now)
    assert pair.pump() == ([], [])  # enquire_links answered automatically both ways
    assert pair.esme.is_bound and pair.smsc.is_bound

    pair.esme.send(Unbind(0), pair.now)
    esme_events, smsc_events = pair.pump()
    assert smsc_events == [UnbindRequested()]
    assert isinstance(esme_events[0], ResponseReceived)
    assert pair.esme.state is pair.smsc.state is S.UNBOUND


def test_pdu_counts_reflect_the_traffic() -> None:
    """pdu_counts() reports PDUs sent and received by command since the last call."""
    session = session_in(S.BOUND_TRX, Role.ESME)
    session.pdu_counts()
    session.send(SubmitSm(0), 0)
    session.receive_data(encode(EnquireLink(3)), 0)
    sent, received = session.pdu_counts()
    assert sent == {CommandId.SUBMIT_SM: 1, CommandId.ENQUIRE_LINK_RESP: 1}
    assert received == {CommandId.ENQUIRE_LINK: 1}
    assert session.pdu_counts() == ({}, {})


@settings(max_examples=200, deadline=None)
@given(
    role=st.sampled_from(list(Role)),
    chunks=st.lists(st.binary(max_size=300), max_size=8),
    headers=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=600),
            st.sampled_from([int(c) for c in CommandId] + [0x99, 0x80000099]),
            st.binary(max_size=80),
        ),
        max_size=6,
    ),
)
def test_arbitrary_bytes_never_raise_and_never_grow_the_buffer(
    role: Role, chunks: list[bytes], headers: list[tuple[int, int, bytes]]
) -> None:
    """Random bytes and random plausible headers yield events or a close, never an
    exception, and the receive buffer never holds more than max_pdu_bytes."""
    session = session_in(S.BOUND_TRX, role, max_pdu_bytes=512)
    framed = [
        length.to_bytes(4, "big")
        + command_id.to_bytes(4, "big")
        + bytes(4)
        + (1).to_bytes(4, "big")
        + body
        for length, command_id, body in headers
    ]
    for chunk in [*framed, *chunks]:
        session.receive_data(chunk, 1.0)
        assert len(session._buffer) <= 512
        session.data_to_send()
    session.tick(1000.0)
