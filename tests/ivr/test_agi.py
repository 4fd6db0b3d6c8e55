"""The AGI reply grammar, the command builders and the sans-IO session (no reactor)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from gateway.ivr import agi
from gateway.ivr.agi import (
    ALL_DIGITS,
    AgiReply,
    AgiReplyError,
    AgiSession,
    AgiStatus,
    ConnectionClosed,
    Environment,
    Hangup,
    LocalProtocolError,
    ProtocolError,
    Reply,
    SessionState,
    parse_agi_reply,
)
from tests.peers.fastagi_client import AsteriskFastAgiClient, CallerInput, parse_args

HEADER = (
    b"agi_network: yes\n"
    b"agi_network_script: 12123\n"
    b"agi_request: agi://127.0.0.1:4573/12123\n"
    b"agi_channel: PJSIP/carrier-00000001\n"
    b"agi_language: zh\n"
    b"agi_type: PJSIP\n"
    b"agi_uniqueid: 1764460800.17\n"
    b"agi_version: 20.5.0\n"
    b"agi_callerid: 13800138000\n"
    b"agi_calleridname: unknown\n"
    b"agi_callingpres: 0\n"
    b"agi_callingani2: 0\n"
    b"agi_callington: 0\n"
    b"agi_callingtns: 0\n"
    b"agi_dnid: 12123\n"
    b"agi_rdnis: unknown\n"
    b"agi_context: 12123-inbound\n"
    b"agi_extension: 12123\n"
    b"agi_priority: 2\n"
    b"agi_enhanced: 0.0\n"
    b"agi_accountcode: \n"
    b"agi_threadid: 140245522609920\n"
    b"agi_arg_1: first\n"
    b"agi_arg_2: second arg\n"
    b"\n"
)


# --- the reply grammar ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=0", AgiReply(AgiStatus.SUCCESS, result="0")),
        ("200 result=1", AgiReply(AgiStatus.SUCCESS, result="1")),
        ("200 result=-1", AgiReply(AgiStatus.SUCCESS, result="-1")),
        ("200 result=0 endpos=12345", AgiReply(AgiStatus.SUCCESS, result="0", endpos=12345)),
        ("200 result=49 endpos=3200", AgiReply(AgiStatus.SUCCESS, result="49", endpos=3200)),
        ("200 result=20261130001", AgiReply(AgiStatus.SUCCESS, result="20261130001")),
        ("200 result= (timeout)", AgiReply(AgiStatus.SUCCESS, result="", timeout=True)),
        ("200 result=12 (timeout)", AgiReply(AgiStatus.SUCCESS, result="12", timeout=True)),
        ("200 result=1 (testvariable)", AgiReply(AgiStatus.SUCCESS, result="1", data="testvariable")),
        ("200 result=1 (a value (with) parens)", AgiReply(AgiStatus.SUCCESS, result="1", data="a value (with) parens")),
        ("200 result=49 (dtmf) endpos=800", AgiReply(AgiStatus.SUCCESS, result="49", data="dtmf", endpos=800)),
        ("200 result=-1 (hangup) endpos=0", AgiReply(AgiStatus.SUCCESS, result="-1", data="hangup", endpos=0)),
        ("200 result=1 (digit) digit=5 endpos=99",
         AgiReply(AgiStatus.SUCCESS, result="1", data="digit", endpos=99, extra=(("digit", "5"),))),
        ("503 result=-2 Memory allocation failure",
         AgiReply(AgiStatus.MEMORY_FAILURE, result="-2", text="Memory allocation failure")),
        ("510 Invalid or unknown command", AgiReply(AgiStatus.INVALID_COMMAND, text="Invalid or unknown command")),
        ("511 Command Not Permitted on a dead channel or intercept routine",
         AgiReply(AgiStatus.DEAD_CHANNEL, text="Command Not Permitted on a dead channel or intercept routine")),
        ("520 Invalid command syntax.  Proper usage not available.",
         AgiReply(AgiStatus.USAGE, text="Invalid command syntax.  Proper usage not available.")),
    ],
)
def test_single_line_replies(line: str, expected: AgiReply) -> None:
    """Every single-line reply form of res_agi.c parses into its fields."""
    assert parse_agi_reply([line]) == expected


def test_hangup_line() -> None:
    """The bare HANGUP line is the hang-up notification, not a reply."""
    assert parse_agi_reply(["HANGUP"]) == Hangup()


def test_usage_block() -> None:
    """A 520- block keeps the usage lines between its first and last line."""
    lines = [
        "520-Invalid command syntax.  Proper usage follows:",
        " Usage: STREAM FILE <filename> <escape digits> [sample offset]",
        "520 looks like a code but is indented?",
        "520 End of proper usage.",
    ]
    with pytest.raises(AgiReplyError):
        parse_agi_reply(lines)  # closed twice
    del lines[2]
    reply = parse_agi_reply(lines)
    assert isinstance(reply, AgiReply)
    assert reply.code is AgiStatus.USAGE
    assert reply.usage == (" Usage: STREAM FILE <filename> <escape digits> [sample offset]",)
    assert reply.text == "Invalid command syntax.  Proper usage follows:"


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [""],
        ["hello"],
        ["200"],
        ["200 "],
        ["200 result"],
        ["200 result=1 garbage"],
        ["200 result=1 endpos=abc"],
        ["200  result=1"],
        ["999 result=1"],
        ["20 result=1"],
        ["HANGUP", "200 result=1"],
        ["200 result=1", "200 result=1"],
        ["520-Invalid command syntax.  Proper usage follows:"],
        ["520-Invalid", "no end"],
        ["200-result=1", "200 x"],
        ["hangup"],
    ],
)
def test_malformed_replies(lines: list[str]) -> None:
    """Anything outside the grammar raises AgiReplyError."""
    with pytest.raises(AgiReplyError):
        parse_agi_reply(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=4))
def test_random_lines_raise_only_the_parser_error(lines: list[str]) -> None:
    """Random text either parses or raises AgiReplyError, never anything else."""
    try:
        parse_agi_reply(lines)
    except AgiReplyError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    result=st.from_regex(r"-?[0-9]{0,12}", fullmatch=True),
    data=st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=20)),
    endpos=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
)
def test_success_line_round_trip(result: str, data: str | None, endpos: int | None) -> None:
    """A 200 line built the way res_agi.c prints it parses back to its parts."""
    line = f"200 result={result}"
    if data is not None:
        line += f" ({data})"
    if endpos is not None:
        line += f" endpos={endpos}"
    reply = parse_agi_reply([line])
    assert isinstance(reply, AgiReply)
    assert reply.result == result
    assert reply.endpos == endpos
    if data == "timeout":
        assert reply.timeout and reply.data is None
    else:
        assert reply.data == data and not reply.timeout


def test_hostile_line_refused_in_linear_time() -> None:
    """A 64 KiB line built to make a backtracking parser quadratic is refused quickly."""
    import time

    line = ("200 result=1 (" + ") a=b" * 65_536)[:65_536] + " !"
    started = time.perf_counter()
    with pytest.raises(AgiReplyError):
        parse_agi_reply([line])
    assert time.perf_counter() - started < 0.2
    long_data = "200 result=1 (" + ") a=b" * 10_000 + ") endpos=7"
    reply = parse_agi_reply([long_data])
    assert isinstance(reply, AgiReply) and reply.endpos == 7 and reply.data is not None


def test_digit_of_reply() -> None:
    """A character-code result gives the key; 0, -1 and errors give none."""
    assert AgiReply(AgiStatus.SUCCESS, result="49").digit == "1"
    assert AgiReply(AgiStatus.SUCCESS, result="35").digit == "#"
    assert AgiReply(AgiStatus.SUCCESS, result="42").digit == "*"
    assert AgiReply(AgiStatus.SUCCESS, result="0").digit is None
    assert AgiReply(AgiStatus.SUCCESS, result="-1").digit is None
    assert AgiReply(AgiStatus.DEAD_CHANNEL).digit is None
    assert not AgiReply(AgiStatus.SUCCESS, result="-1").ok
    assert AgiReply(AgiStatus.SUCCESS, result="0").ok


# --- command builders -------------------------------------------------------------------


def test_command_builders() -> None:
    """Builders write the command lines of the AGI documentation, arguments quoted."""
    assert agi.answer() == "ANSWER"
    assert agi.stream_file("12123/welcome", "0123456789*#") == 'STREAM FILE 12123/welcome "0123456789*#"'
    assert agi.stream_file("beep") == 'STREAM FILE beep ""'
    assert agi.stream_file("beep", "#", 800) == 'STREAM FILE beep "#" 800'
    assert agi.get_data("12123/ask", 5000, 11) == "GET DATA 12123/ask 5000 11"
    assert agi.get_data("", 5000, 4) == 'GET DATA "" 5000 4'
    assert agi.wait_for_digit(5000) == "WAIT FOR DIGIT 5000"
    assert agi.say_digits("2026", "0123456789*#") == 'SAY DIGITS 2026 "0123456789*#"'
    assert agi.say_number(12, "") == 'SAY NUMBER 12 ""'
    assert agi.say_date(1796000000, "#") == 'SAY DATE 1796000000 "#"'
    assert agi.set_variable("REMINDER_HEARD", "1") == 'SET VARIABLE REMINDER_HEARD "1"'
    assert agi.exec_("Queue", "12123-agents,t") == 'EXEC Queue "12123-agents,t"'
    assert agi.verbose('say "hi" \\ bye', 3) == 'VERBOSE "say \\"hi\\" \\\\ bye" 3'
    assert agi.hangup() == "HANGUP"


@pytest.mark.parametrize(
    "build",
    [
        lambda: agi.quote("two\nlines"),
        lambda: agi.stream_file("x", "12a"),
        lambda: agi.say_digits("12a4"),
        lambda: agi.set_variable("BAD NAME", "1"),
        lambda: agi.exec_("Queue;Dial", ""),
        lambda: agi.get_data("x", 0, 3),
    ],
)
def test_builders_refuse_what_asterisk_would_misread(build) -> None:  # type: ignore[no-untyped-def]
    """Line breaks, bad escape digits, bad names and non-digits are refused."""
    with pytest.raises(ValueError):
        build()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=30))
def test_quote_survives_asterisk_argument_parsing(value: str) -> None:
    """A quoted value comes out of Asterisk's argument parser exactly as it went in."""
    argv = parse_args(agi.set_variable("V", value))
    assert argv == ["SET", "VARIABLE", "V", value]


# --- the session ------------------------------------------------------------------------


def started_session(**kwargs: int) -> AgiSession:
    session = AgiSession(**kwargs)
    events = session.receive_data(HEADER)
    assert [type(e) for e in events] == [Environment]
    return session


def test_environment_parsed_byte_by_byte() -> None:
    """The environment arrives in any chunking and gives its variables once, at the blank line."""
    session = AgiSession()
    events = []
    for i in range(len(HEADER)):
        events += session.receive_data(HEADER[i : i + 1])
    assert len(events) == 1
    env = events[0]
    assert isinstance(env, Environment)
    assert env.network_script == "12123"
    assert env.uniqueid == "1764460800.17"
    assert env.arguments == ("first", "second arg")
    assert env.get("accountcode") == ""
    assert env.caller is not None and env.caller.digits == "13800138000"
    assert "13800138000" not in repr(env)
    assert session.state is SessionState.IDLE


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("13800138000", "13800138000"),
        ("+8613800138000", "13800138000"),
        ("013800138000", "13800138000"),
        ("0592-5551234", "05925551234"),
        ("unknown", None),
        ("", None),
        ("anonymous", None),
    ],
)
def test_caller_number(raw: str, digits: str | None) -> None:
    """agi_callerid becomes a normalised PhoneNumber; withheld ids become None."""
    number = agi.caller_number(raw)
    assert (number.digits if number else None) == digits


def test_one_command_at_a_time() -> None:
    """A second command waits until the first is answered (a new line aborts playback)."""
    session = started_session()
    session.send_command(agi.stream_file("a", "#"))
    session.send_command(agi.stream_file("b", "#"))
    assert session.data_to_send() == b'STREAM FILE a "#"\n'
    assert session.data_to_send() == b""
    events = session.receive_data(b"200 result=0 endpos=1000\n")
    assert events == [Reply('STREAM FILE a "#"', AgiReply(AgiStatus.SUCCESS, result="0", endpos=1000))]
    assert session.data_to_send() == b'STREAM FILE b "#"\n'


def test_usage_block_through_the_session() -> None:
    """A 520 multi-line block, split anywhere, is one Reply to the outstanding command."""
    session = started_session()
    session.send_command("STREAM FILE")
    session.data_to_send()
    block = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b" Usage: STREAM FILE <filename> <escape digits> [sample offset]\n"
        b"HANGUP\n"
        b"520 End of proper usage.\n"
    )
    events = session.receive_data(block[:30]) + session.receive_data(block[30:])
    assert len(events) == 1
    reply = events[0]
    assert isinstance(reply, Reply) and reply.reply.code is AgiStatus.USAGE
    assert reply.reply.usage == (" Usage: STREAM FILE <filename> <escape digits> [sample offset]", "HANGUP")
    assert session.state is SessionState.IDLE


def test_hangup_then_result_then_511() -> None:
    """HANGUP is an event of its own; the pending reply still arrives; later commands get 511."""
    session = started_session()
    session.send_command(agi.stream_file("a", "#"))
    session.data_to_send()
    events = session.receive_data(b"200 result=-1 endpos=480\nHANGUP\n")
    assert [type(e) for e in events] == [Reply, Hangup]
    assert session.hung_up
    session.send_command(agi.stream_file("b", "#"))
    events = session.receive_data(b"511 Command Not Permitted on a dead channel or intercept routine\nHANGUP\n")
    assert [type(e) for e in events] == [Reply]  # the second HANGUP is not news
    assert events[0].reply.code is AgiStatus.DEAD_CHANNEL  # type: ignore[union-attr]
    assert session.receive_data(b"") == [ConnectionClosed()]
    assert session.state is SessionState.CLOSED


def test_hangup_while_idle() -> None:
    """HANGUP with no command outstanding is reported too."""
    session = started_session()
    assert session.receive_data(b"HANGUP\n") == [Hangup()]


def test_provisional_line_is_skipped() -> None:
    """Old versions' '100 result=0 Trying...' does not answer the command."""
    session = started_session()
    session.send_command(agi.exec_("Wait", "1"))
    session.data_to_send()
    events = session.receive_data(b"100 result=0 Trying...\n200 result=0\n")
    assert [type(e) for e in events] == [Reply]
    assert events[0].reply.result == "0"  # type: ignore[union-attr]


def test_crlf_line_ends_accepted() -> None:
    """A peer that ends lines with CRLF is understood."""
    session = AgiSession()
    events = session.receive_data(b"agi_network: yes\r\nagi_network_script: notify\r\n\r\n")
    assert isinstance(events[0], Environment) and events[0].network_script == "notify"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"200 result=0\n", "unexpected"),  # a reply nobody asked for
        (b"HANGUP extra\n", "unexpected"),
        (b"520 End of proper usage.\n", "unexpected"),
    ],
)
def test_unsolicited_lines_are_protocol_errors(data: bytes, reason: str) -> None:
    """Replies without an outstanding command close the session with a ProtocolError."""
    session = started_session()
    events = session.receive_data(data)
    assert len(events) == 1 and isinstance(events[0], ProtocolError)
    assert reason in events[0].reason
    assert session.state is SessionState.CLOSED
    assert session.receive_data(b"200 result=0\n") == []


def test_bad_reply_is_protocol_error() -> None:
    """A line outside the grammar while a command waits is a ProtocolError."""
    session = started_session()
    session.send_command(agi.answer())
    events = session.receive_data(b"OK then\n")
    assert [type(e) for e in events] == [ProtocolError]


def test_line_length_bounded() -> None:
    """A line longer than max_line_bytes is refused before it is complete."""
    session = started_session(max_line_bytes=256)
    session.send_command(agi.answer())
    events = session.receive_data(b"200 result=" + b"1" * 300)
    assert [type(e) for e in events] == [ProtocolError]
    session = started_session(max_line_bytes=256)
    session.send_command(agi.answer())
    assert session.receive_data(b"200 result=" + b"1" * 240 + b"\n")[0].reply.result == "1" * 240  # type: ignore[union-attr]


def test_header_bounded() -> None:
    """An environment of endless agi_ lines is refused at MAX_HEADER_LINES."""
    session = AgiSession()
    events = session.receive_data(b"agi_arg_1: x\n" * (agi.MAX_HEADER_LINES + 1))
    assert [type(e) for e in events] == [ProtocolError]


def test_header_lines_must_be_agi_variables() -> None:
    """A header line that is not 'agi_name: value' is a ProtocolError."""
    session = AgiSession()
    events = session.receive_data(b"GET / HTTP/1.1\n")
    assert [type(e) for e in events] == [ProtocolError]


def test_local_errors() -> None:
    """We may not send before the environment, after close, or lines Asterisk would cut."""
    session = AgiSession()
    with pytest.raises(LocalProtocolError):
        session.send_command("ANSWER")
    session = started_session()
    with pytest.raises(LocalProtocolError):
        session.send_command("ANSWER\nHANGUP")
    with pytest.raises(LocalProtocolError):
        session.send_command("VERBOSE " + "x" * agi.MAX_COMMAND_BYTES)
    session.close()
    with pytest.raises(LocalProtocolError):
        session.send_command("ANSWER")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    """Random bytes after the environment give events, never an exception."""
    session = started_session(max_line_bytes=256)
    session.send_command(agi.answer())
    for event in session.receive_data(data):
        assert isinstance(event, (Reply, Hangup, ProtocolError))


# --- our session against the Asterisk-faithful peer, back to back -------------------------


def peer_and_session(**options: object) -> tuple[AsteriskFastAgiClient, StringTransport, AgiSession]:
    peer = AsteriskFastAgiClient("12123", **options)  # type: ignore[arg-type]
    transport = StringTransport()
    peer.makeConnection(transport)
    session = AgiSession()
    assert [type(e) for e in session.receive_data(transport.value())] == [Environment]
    transport.clear()
    return peer, transport, session


def exchange(peer: AsteriskFastAgiClient, transport: StringTransport, session: AgiSession, command: str) -> list[object]:
    session.send_command(command)
    peer.dataReceived(session.data_to_send())
    events = session.receive_data(transport.value())
    transport.clear()
    return events  # type: ignore[return-value]


def test_session_understands_the_peer() -> None:
    """Every reply form the peer writes (200, 510, 520 block, barge-in, timeout) parses."""
    peer, transport, session = peer_and_session(inputs=[CallerInput("2", barge_in=True), "12"])
    [reply] = exchange(peer, transport, session, agi.stream_file("12123/main_menu", ALL_DIGITS))
    assert isinstance(reply, Reply) and reply.reply.digit == "2" and reply.reply.endpos == 800
    [reply] = exchange(peer, transport, session, agi.get_data("", 5000, 4))
    assert isinstance(reply, Reply) and reply.reply.result == "12" and reply.reply.timeout
    [reply] = exchange(peer, transport, session, "FROBNICATE NOW")
    assert isinstance(reply, Reply) and reply.reply.code is AgiStatus.INVALID_COMMAND
    [reply] = exchange(peer, transport, session, "STREAM FILE onlyname")
    assert isinstance(reply, Reply) and reply.reply.code is AgiStatus.USAGE
    assert reply.reply.usage == (" Usage: STREAM FILE <filename> <escape digits> [sample offset]",)
    [reply] = exchange(peer, transport, session, agi.set_variable("AB", 'x "y"'))
    assert isinstance(reply, Reply) and reply.reply.result == "1"
    assert peer.variables == {"AB": 'x "y"'}


def test_peer_hangup_then_dead_channel() -> None:
    """Hang-up mid-prompt: result -1, HANGUP, then 511 for commands needing the channel."""
    peer, transport, session = peer_and_session(close_on_hangup=False, hangup_at=lambda i, line: i == 0)
    events = exchange(peer, transport, session, agi.stream_file("12123/welcome", ALL_DIGITS))
    assert [type(e) for e in events] == [Reply, Hangup]
    assert events[0].reply.result == "-1"  # type: ignore[attr-defined]
    [reply] = exchange(peer, transport, session, agi.wait_for_digit(5000))
    assert isinstance(reply, Reply) and reply.reply.code is AgiStatus.DEAD_CHANNEL
    [reply] = exchange(peer, transport, session, agi.verbose("still here", 1))
    assert isinstance(reply, Reply) and reply.reply.result == "1"
