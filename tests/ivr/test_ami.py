"""AMI framing and correlation core: no reactor, bytes in, messages out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ivr.ami import (
    ASTERISK_MAX_HEADERS,
    ActionCompleted,
    ActionCorrelator,
    ActionTimedOut,
    AmiBanner,
    AmiFraming,
    AmiLocalProtocolError,
    AmiMessage,
    AmiProtocolError,
    MessageKind,
    encode_action,
    encode_message,
)

BANNER = b"Asterisk Call Manager/7.0.3\r\n"

# An OriginateResponse as Asterisk 18 writes it (docs.asterisk.org, AMI Events,
# OriginateResponse), with the repeated ChanVariable headers of manager.conf channelvars.
ORIGINATE_RESPONSE = (
    b"Event: OriginateResponse\r\n"
    b"Privilege: call,all\r\n"
    b"ActionID: rem-n1-1\r\n"
    b"Response: Failure\r\n"
    b"Channel: PJSIP/13800138000@carrier-trunk\r\n"
    b"Context: 12123-reminder\r\n"
    b"Exten: s\r\n"
    b"Application: \r\n"
    b"Data: \r\n"
    b"Reason: 5\r\n"
    b"Uniqueid: <null>\r\n"
    b"CallerIDNum: 12123\r\n"
    b"CallerIDName: <unknown>\r\n"
    b"ChanVariable: NOTIFICATION_ID=n1\r\n"
    b"ChanVariable: ATTEMPT=1\r\n"
    b"\r\n"
)


def framed(*chunks: bytes) -> list[AmiBanner | AmiMessage]:
    framing = AmiFraming()
    out: list[AmiBanner | AmiMessage] = []
    for chunk in chunks:
        out.extend(framing.receive_data(chunk))
    return out


def test_banner_then_event_in_one_chunk():
    """The banner line and a complete event in one read give a banner and one message."""
    banner, event = framed(BANNER + ORIGINATE_RESPONSE)
    assert banner == AmiBanner(version="7.0.3")
    assert isinstance(event, AmiMessage)
    assert event.kind is MessageKind.EVENT
    assert event.is_event("originateresponse")
    assert event.action_id == "rem-n1-1"
    assert event.get("reason") == "5"
    assert event.get("Application") == ""


def test_message_split_at_every_byte():
    """A message delivered one byte at a time frames exactly as when delivered whole."""
    whole = framed(BANNER + ORIGINATE_RESPONSE)
    data = BANNER + ORIGINATE_RESPONSE
    assert framed(*[data[i:i + 1] for i in range(len(data))]) == whole


def test_repeated_headers_are_kept_as_lists_in_order():
    """Repeated headers (ChanVariable) keep every value in order; get() gives the first."""
    _, event = framed(BANNER + ORIGINATE_RESPONSE)
    assert isinstance(event, AmiMessage)
    assert event.get_all("ChanVariable") == ["NOTIFICATION_ID=n1", "ATTEMPT=1"]
    assert event.get("chanvariable") == "NOTIFICATION_ID=n1"
    assert event.variables("ChanVariable") == {"NOTIFICATION_ID": "n1", "ATTEMPT": "1"}
    assert event.get_all("Missing") == []


def test_bare_lf_line_endings_are_accepted():
    """A peer that ends lines with a bare LF is framed like one using CRLF."""
    lf = (BANNER + ORIGINATE_RESPONSE).replace(b"\r\n", b"\n")
    assert framed(lf) == framed(BANNER + ORIGINATE_RESPONSE)


def test_stray_empty_lines_between_messages_are_ignored():
    """Empty lines between messages do not produce empty messages."""
    out = framed(BANNER + b"\r\n\r\nResponse: Success\r\nPing: Pong\r\n\r\n\r\n")
    assert [m.name for m in out[1:]] == ["Success"]  # type: ignore[union-attr]


def test_wrong_banner_is_a_protocol_error():
    """A peer that is not an Asterisk Call Manager is refused at the first line."""
    with pytest.raises(AmiProtocolError):
        framed(b"SSH-2.0-OpenSSH_9.6\r\n")


def test_oversized_message_is_refused_before_it_completes():
    """A message growing past max_message_bytes raises even before its end arrives."""
    framing = AmiFraming(max_message_bytes=200)
    framing.receive_data(BANNER)
    framing.receive_data(b"Event: Big\r\n")
    with pytest.raises(AmiProtocolError):
        framing.receive_data(b"X: " + b"a" * 300)  # no newline yet: still refused


def test_oversized_message_in_complete_lines_is_refused():
    """Many short complete lines adding up past the byte limit are refused too."""
    framing = AmiFraming(max_message_bytes=200)
    framing.receive_data(BANNER)
    with pytest.raises(AmiProtocolError):
        framing.receive_data(b"Event: Big\r\n" + b"X: y\r\n" * 60)


def test_too_many_headers_is_refused():
    """A message with more headers than max_headers raises (Asterisk keeps 128)."""
    framing = AmiFraming(expect_banner=False, max_headers=ASTERISK_MAX_HEADERS)
    lines = b"Action: Originate\r\n" + b"Variable: A=1\r\n" * ASTERISK_MAX_HEADERS
    with pytest.raises(AmiProtocolError):
        framing.receive_data(lines)


def test_limit_counts_per_message_not_per_connection():
    """Many messages each under the limit never trip it, however much traffic passes."""
    framing = AmiFraming(max_message_bytes=100)
    framing.receive_data(BANNER)
    for _ in range(100):
        assert len(framing.receive_data(b"Response: Success\r\nPing: Pong\r\n\r\n")) == 1


def test_follows_response_keeps_its_body_with_empty_lines():
    """Old Command output (Response: Follows) keeps its body, empty lines included."""
    data = (BANNER + b"Response: Follows\r\nPrivilege: Command\r\nActionID: 9\r\n"
            b"line one\r\n\r\nName: looks like a header\r\n--END COMMAND--\r\n\r\n"
            b"Response: Success\r\nActionID: 10\r\n\r\n")
    _, follows, success = framed(data)
    assert isinstance(follows, AmiMessage) and isinstance(success, AmiMessage)
    assert follows.action_id == "9"
    assert follows.body == ("line one", "", "Name: looks like a header")
    assert success.action_id == "10"


def test_server_side_framing_reads_actions_without_banner():
    """The server side of a connection frames actions with no banner first."""
    framing = AmiFraming(expect_banner=False)
    (action,) = framing.receive_data(encode_action("Ping", "7"))
    assert isinstance(action, AmiMessage)
    assert action.kind is MessageKind.ACTION and action.name == "Ping" and action.action_id == "7"


def test_encode_action_golden_bytes():
    """encode_action writes Action, ActionID, then headers; a list repeats the header."""
    data = encode_action("Originate", "rem-n1-1", {"Channel": "PJSIP/1@t", "Variable": ["A=1", "B=2"],
                                                    "Async": "true"})
    assert data == (b"Action: Originate\r\nActionID: rem-n1-1\r\nChannel: PJSIP/1@t\r\n"
                    b"Variable: A=1\r\nVariable: B=2\r\nAsync: true\r\n\r\n")


@pytest.mark.parametrize("value", ["a\r\nAction: Command", "a\nb", "a\rb"])
def test_encode_refuses_line_breaks_in_values(value):
    """A CR or LF in a value would inject headers or actions, so encoding refuses it."""
    with pytest.raises(AmiLocalProtocolError):
        encode_action("UserEvent", "1", {"Text": value})


def test_encode_refuses_bad_header_names():
    """Header names must be tokens; a colon or space in a name is refused."""
    with pytest.raises(AmiLocalProtocolError):
        encode_message([("Bad: name", "x")])


def test_message_repr_hides_header_values():
    """repr(AmiMessage) names the message but never shows values such as phone numbers."""
    _, event = framed(BANNER + ORIGINATE_RESPONSE)
    assert "13800138000" not in repr(event)
    assert "OriginateResponse" in repr(event)


_names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1,
                 max_size=16).filter(lambda n: n.lower() not in ("response", "event", "action"))
_values = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.tuples(st.sampled_from(["Event", "Response"]), st.text("ABCxyz", min_size=1, max_size=8),
                  st.lists(st.tuples(_names, _values), max_size=8)),
        min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=1200), max_size=6),
)
def test_encode_then_frame_round_trips_under_any_split(messages, cuts):
    """encode_message then framing, split anywhere, gives back the same headers."""
    expected = [AmiMessage(((kind, name), *headers)) for kind, name, headers in messages
                if not (kind == "Response" and name.lower() == "follows")]
    data = BANNER + b"".join(encode_message(m.headers) for m in expected)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    out = framed(*chunks)
    assert out[0] == AmiBanner("7.0.3")
    assert out[1:] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_the_framing_error(data):
    """Arbitrary bytes after a banner either frame or raise AmiProtocolError, nothing else."""
    framing = AmiFraming(max_message_bytes=256, max_headers=16)
    framing.receive_data(BANNER)
    try:
        framing.receive_data(data)
    except AmiProtocolError:
        pass


# --- correlation -----------------------------------------------------------------------


def msg(**headers: str) -> AmiMessage:
    return AmiMessage(tuple(headers.items()))


def test_response_completes_its_action_and_later_event_is_unsolicited():
    """A response completes its action; the OriginateResponse with the same ActionID after it is an event."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("rem-n1-1", "Originate", now=0)
    completed, consumed = correlator.receive(msg(Response="Success", ActionID="rem-n1-1",
                                                 Message="Originate successfully queued"))
    assert consumed and isinstance(completed, ActionCompleted) and completed.success
    assert completed.name == "Originate"
    assert correlator.receive(msg(Event="OriginateResponse", ActionID="rem-n1-1", Response="Success")) == (None, False)


def test_event_before_response_is_not_swallowed():
    """An event carrying a pending ActionID before its response is left for subscribers."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("5", "Originate", now=0)
    assert correlator.receive(msg(Event="Newchannel", ActionID="5")) == (None, False)
    assert "5" in correlator


def test_event_list_is_collected_until_complete():
    """A list action completes with its events once the EventList: Complete event arrives."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("s1", "Status", now=0)
    assert correlator.receive(msg(Response="Success", ActionID="s1", EventList="start")) == (None, True)
    assert correlator.receive(msg(Event="Status", ActionID="s1", Channel="PJSIP/a")) == (None, True)
    assert correlator.receive(msg(Event="Hangup", Channel="PJSIP/b")) == (None, False)
    completed, consumed = correlator.receive(msg(Event="StatusComplete", ActionID="s1", EventList="Complete"))
    assert consumed and completed is not None
    assert [e.get("Channel") for e in completed.events] == ["PJSIP/a"]
    assert len(correlator) == 0


def test_error_response_completes_unsuccessfully():
    """Response: Error completes the action with success False."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("1", "Login", now=0)
    completed, _ = correlator.receive(msg(Response="Error", ActionID="1", Message="Authentication failed"))
    assert completed is not None and not completed.success


def test_unanswered_action_times_out_at_its_deadline():
    """An action with no response is reported at its deadline, not before, and only once."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("1", "Ping", now=100)
    correlator.start("2", "Ping", now=105)
    assert correlator.next_deadline() == 110
    assert correlator.expire(109.9) == []
    assert correlator.expire(110) == [ActionTimedOut("1", "Ping")]
    assert correlator.next_deadline() == 115
    assert correlator.expire(110) == []


def test_late_response_after_timeout_is_not_consumed():
    """A response arriving after its action timed out is not matched to anything."""
    correlator = ActionCorrelator(response_timeout_seconds=1)
    correlator.start("1", "Ping", now=0)
    correlator.expire(5)
    assert correlator.receive(msg(Response="Success", ActionID="1")) == (None, False)


def test_duplicate_action_id_in_flight_is_refused():
    """Starting an ActionID already in flight is our bug and raises."""
    correlator = ActionCorrelator(response_timeout_seconds=1)
    correlator.start("x", "Originate", now=0)
    with pytest.raises(AmiLocalProtocolError):
        correlator.start("x", "Originate", now=0)


def test_abandon_all_returns_every_action_in_flight():
    """On connection loss every action in flight is handed back once."""
    correlator = ActionCorrelator(response_timeout_seconds=1, id_prefix="c1-")
    first, second = correlator.next_action_id(), correlator.next_action_id()
    assert (first, second) == ("c1-1", "c1-2")
    correlator.start(first, "Ping", now=0)
    correlator.start(second, "Originate", now=0)
    assert correlator.abandon_all() == [(first, "Ping"), (second, "Originate")]
    assert correlator.next_deadline() is None


def test_completed_action_never_times_out_and_leaves_the_deadline():
    """A completed action neither expires later nor holds next_deadline back."""
    correlator = ActionCorrelator(response_timeout_seconds=10)
    correlator.start("1", "Ping", now=0)
    correlator.start("2", "Ping", now=3, timeout_seconds=1)
    correlator.receive(msg(Response="Success", ActionID="2"))
    assert correlator.next_deadline() == 10
    correlator.receive(msg(Response="Success", ActionID="1"))
    assert correlator.next_deadline() is None
    assert correlator.expire(100) == []
