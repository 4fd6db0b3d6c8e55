"""Fuzzing the AGI reply parser and the FastAGI session with what a broken or hostile
Asterisk (or whatever connected to our FastAGI port) can send.

``parse_agi_reply`` may raise only ``AgiReplyError``; ``AgiSession.receive_data`` raises
nothing and reports a broken peer as a ``ProtocolError`` event that closes the session;
a line longer than ``max_line_bytes`` is refused before it completes, so the session never
holds more than one line.  Replies are checked against the pure parser, and every stream
must give the same events however it is cut into chunks.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ivr import agi
from gateway.ivr.agi import (
    AgiReply,
    AgiReplyError,
    AgiSession,
    AgiStatus,
    ConnectionClosed,
    Environment,
    Hangup,
    ProtocolError,
    Reply,
    SessionState,
    parse_agi_reply,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HEADER = (
    b"agi_network: yes\nagi_network_script: 12123\nagi_request: agi://127.0.0.1/12123\n"
    b"agi_channel: PJSIP/trunk-00000001\nagi_uniqueid: 1764460800.17\n"
    b"agi_callerid: 13800138000\nagi_arg_1: first\n\n"
)

# Pieces of the reply grammar (res/res_agi.c), so that random lines are often almost right.
_TOKENS = [
    "200",
    "510",
    "511",
    "520",
    "503",
    "100",
    "999",
    " ",
    "-",
    "result=",
    "-1",
    "0",
    "49",
    "(timeout)",
    "(",
    ")",
    "endpos=",
    "12345",
    "x=",
    "=",
    "HANGUP",
    "\r",
    "Invalid command syntax.  Proper usage follows:",
    "End of proper usage.",
    "\x00",
    "\u00e9",
    "\ud800",
]
grammar_lines = st.lists(st.sampled_from(_TOKENS), max_size=8).map("".join)
any_lines = st.one_of(grammar_lines, st.text(max_size=40))


def check_reply(reply: AgiReply, lines: list[str]) -> None:
    """A parsed reply has the shape its code promises."""
    assert isinstance(reply.code, AgiStatus)
    assert lines[0][:3] == str(int(reply.code))
    if reply.code in (AgiStatus.SUCCESS, AgiStatus.MEMORY_FAILURE, AgiStatus.TRYING):
        assert reply.result is not None
    else:
        assert reply.result is None
    if reply.usage:
        assert reply.code is AgiStatus.USAGE
    assert reply.endpos is None or isinstance(reply.endpos, int)


@FUZZ
@given(lines=st.lists(any_lines, min_size=0, max_size=5))
def test_parser_raises_only_its_own_error(lines: list[str]) -> None:
    """Grammar-shaped or random lines give a reply, Hangup, or AgiReplyError: nothing else."""
    try:
        parsed = parse_agi_reply(lines)
    except AgiReplyError:
        return
    if isinstance(parsed, Hangup):
        assert lines == ["HANGUP"]
    else:
        check_reply(parsed, lines)


_no_space = st.characters(codec="utf-8").filter(lambda c: not c.isspace())


@FUZZ
@given(
    result=st.text(_no_space, max_size=12),
    data=st.one_of(
        st.none(), st.text(st.characters(exclude_characters="\r\n", codec="utf-8"), max_size=20)
    ),
    extras=st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True).filter(
                lambda k: k != "endpos"
            ),
            st.text(_no_space.filter(lambda c: c not in "()"), max_size=6),
        ),
        max_size=3,
    ),
    endpos=st.one_of(st.none(), st.integers(-5, 10**9)),
)
def test_success_lines_round_trip_through_the_parser(
    result: str, data: str | None, extras: list[tuple[str, str]], endpos: int | None
) -> None:
    """``200 result=V [(data)] k=v...`` gives back V, the data (even with spaces and
    parentheses inside), endpos and the other items in order: nothing Asterisk said is lost."""
    line = "200 result=" + result
    if data is not None:
        line += f" ({data})"
    items = list(extras) + ([("endpos", str(endpos))] if endpos is not None else [])
    line += "".join(f" {k}={v}" for k, v in items)
    parsed = parse_agi_reply([line])
    assert isinstance(parsed, AgiReply)
    assert parsed.result == result
    if data is None:
        assert parsed.data is None and not parsed.timeout
    elif data == "timeout":
        assert parsed.timeout and parsed.data is None
    else:
        assert parsed.data == data
    assert parsed.endpos == endpos
    assert parsed.extra == tuple(extras)


# -- the session ---------------------------------------------------------------------------


def started(max_line_bytes: int = 256) -> AgiSession:
    session = AgiSession(max_line_bytes=max_line_bytes)
    [environment] = session.receive_data(HEADER)
    assert isinstance(environment, Environment)
    return session


def feed(session: AgiSession, data: bytes, cuts: list[int]) -> list[Any]:
    """Feed ``data`` cut at ``cuts``; empty chunks are skipped (b"" means end of file)."""
    events: list[Any] = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:], strict=False):
        events += session.receive_data(data[start:stop])
    return events


reply_lines = st.one_of(
    st.sampled_from(
        [
            b"200 result=0\n",
            b"200 result=49 endpos=3200\n",
            b"200 result= (timeout)\n",
            b"200 result=1 (a (value) with) spaces) x=1\n",
            b"510 Invalid or unknown command\n",
            b"511 Command Not Permitted on a dead channel or intercept routine\n",
            b"520-Invalid command syntax.  Proper usage follows:\n usage\n\n520 End of proper usage.\n",
            b"100 result=0 Trying...\n",
            b"HANGUP\n",
            b"\n",
            b"200 result=0\r\n",
        ]
    ),
    grammar_lines.map(lambda s: s.encode("utf-8", "surrogatepass") + b"\n"),
    st.binary(max_size=30),
)


@FUZZ
@given(
    lines=st.lists(reply_lines, max_size=10),
    commands=st.integers(0, 6),
    cuts=st.lists(st.integers(0, 2000), max_size=8),
    max_line_bytes=st.sampled_from([40, 64, 8192]),
)
def test_session_events_are_the_parsers_and_independent_of_chunking(
    lines: list[bytes], commands: int, cuts: list[int], max_line_bytes: int
) -> None:
    """After the environment, any stream gives only Reply, Hangup and ProtocolError events,
    in the same order however it is chunked; each Reply is the pure parser's reading of its
    line and answers the oldest command; after ProtocolError nothing more comes."""
    data = b"".join(lines)
    readings = []
    for raw in data.split(b"\n"):
        text = raw.decode("utf-8", "replace").removesuffix("\r")
        try:
            readings.append(parse_agi_reply([text]))
        except AgiReplyError:
            pass
    runs = []
    for chunking in ([], cuts):
        session = started(max_line_bytes)
        sent = [f"VERBOSE {i}" for i in range(commands)]
        for command in sent:
            session.send_command(command)
        events = feed(session, data, chunking)
        runs.append(events)
        answered = [e.command for e in events if isinstance(e, Reply)]
        assert answered == sent[: len(answered)]
        for i, event in enumerate(events):
            assert isinstance(event, Reply | Hangup | ProtocolError), event
            if isinstance(event, ProtocolError):
                assert i == len(events) - 1
                assert session.state is SessionState.CLOSED
            if isinstance(event, Reply) and not event.reply.usage:
                assert event.reply in readings, event
        assert sum(isinstance(e, Hangup) for e in events) <= 1
    assert runs[0] == runs[1]


@FUZZ
@given(data=st.binary(min_size=1, max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_random_bytes_before_the_environment(data: bytes, cuts: list[int]) -> None:
    """Whatever connects to the FastAGI port and sends random bytes gets at most an
    Environment and a ProtocolError; no exception, and no command can be sent before it."""
    session = AgiSession(max_line_bytes=128)
    events = feed(session, data, cuts)
    assert all(isinstance(e, Environment | ProtocolError) for e in events)
    if not any(isinstance(e, Environment) for e in events):
        with pytest.raises(agi.LocalProtocolError):
            session.send_command("ANSWER")


@pytest.mark.parametrize("chunk", [1, 100, 10_000, 1_000_000])
def test_over_long_line_is_refused_before_it_completes(chunk: int) -> None:
    """A line that never ends (4 MB without a newline) is a ProtocolError once it passes
    max_line_bytes, whatever the chunk size, and the session then holds nothing."""
    session = started(max_line_bytes=8192)
    session.send_command("ANSWER")
    data = b"200 result=" + b"7" * 4_000_000
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        events: list[Any] = []
        held = 0
        for i in range(0, len(data), chunk):
            events += session.receive_data(data[i : i + chunk])
            held = max(held, tracemalloc.get_traced_memory()[0] - baseline)
            if events:
                break
    finally:
        tracemalloc.stop()
    assert [type(e) for e in events] == [ProtocolError]
    assert "longer than 8192" in events[0].reason
    assert session.state is SessionState.CLOSED
    assert held < 8192 + chunk + 16_384, held
    assert session.receive_data(b"200 result=0\n") == []


def test_line_of_exactly_max_line_bytes_is_accepted() -> None:
    """The limit is inclusive: a reply line of max_line_bytes octets (newline excluded) is read."""
    session = started(max_line_bytes=64)
    session.send_command("ANSWER")
    line = b"200 result=" + b"5" * (64 - 11)
    [event] = session.receive_data(line + b"\n")
    assert isinstance(event, Reply) and event.reply.result == "5" * 53


def test_end_of_file_closes_once() -> None:
    """b"" is end of file: one ConnectionClosed, then nothing."""
    session = started()
    assert session.receive_data(b"") == [ConnectionClosed()]
    assert session.receive_data(b"") == []
    assert session.receive_data(b"HANGUP\n") == []


def test_endless_usage_block_is_bounded() -> None:
    """A 520- block that never closes is refused after MAX_USAGE_LINES lines."""
    session = started()
    session.send_command("ANSWER")
    events = session.receive_data(b"520-Invalid command syntax.\n" + b"usage\n" * 10_000)
    assert [type(e) for e in events] == [ProtocolError]


def _worst_success_line(length: int) -> str:
    # ") a=b" repeated: every ")" may end the data group and every " a=b" extends the
    # key=value tail, which then fails at the last item.
    return ("200 result=1 (" + ") a=b" * length)[: length - 2] + " !"


def test_worst_case_reply_line_parses_in_linear_time() -> None:
    """A hostile 16 KiB 200-line is refused in well under 0.1 s (linear work per octet;
    the backtracking regex this replaced took 0.8 s, and 3 s at 32 KiB)."""
    line = _worst_success_line(16_384)
    started_at = time.perf_counter()
    with pytest.raises(AgiReplyError):
        parse_agi_reply([line])
    assert time.perf_counter() - started_at < 0.1
