"""Fuzzing AMI framing with what a broken or hostile manager peer can send.

``AmiFraming.receive_data`` may raise only ``AmiProtocolError``; the same bytes give the
same messages however they are chunked; one message never grows past
``max_message_bytes`` / ``max_headers``, so the framing holds a bounded amount of memory;
and what ``encode_message`` lets through is exactly one message on the other side (no
header or action injection through a value).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ivr.ami import (
    AmiBanner,
    AmiFraming,
    AmiLocalProtocolError,
    AmiMessage,
    AmiProtocolError,
    encode_message,
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BANNER = b"Asterisk Call Manager/7.0.3\r\n"

_LINES = [
    b"Response: Success\r\n",
    b"Response: Follows\r\n",
    b"Response: Error\r\n",
    b"Event: Hangup\r\n",
    b"ActionID: 1\r\n",
    b"EventList: start\r\n",
    b"EventList: Complete\r\n",
    b"Variable: A=1\r\n",
    b"Privilege: Command\r\n",
    b"--END COMMAND--\r\n",
    b"output line--END COMMAND--\r\n",
    b"free text without a colon\r\n",
    b"Bad Name: value\r\n",
    b":\r\n",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"Asterisk Call Manager/1.1\r\n",
]
ami_streams = st.lists(st.one_of(st.sampled_from(_LINES), st.binary(max_size=30)), max_size=25).map(
    b"".join
)


def run(
    data: bytes, chunks: list[bytes], *, expect_banner: bool, **limits: int
) -> tuple[list[Any], bool]:
    """Feed ``chunks`` (whose concatenation is ``data``); the items before the first
    AmiProtocolError and whether one was raised."""
    assert b"".join(chunks) == data
    framing = AmiFraming(expect_banner=expect_banner, **limits)
    out: list[Any] = []
    for chunk in chunks:
        try:
            out += framing.receive_data(chunk)
        except AmiProtocolError:
            return out, True
    return out, False


def by_lines(data: bytes) -> list[bytes]:
    """One chunk per line: each call completes at most one message, so an error loses none."""
    lines = data.split(b"\n")
    return [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def by_cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@FUZZ
@given(
    body=ami_streams,
    cuts=st.lists(st.integers(0, 5000), max_size=10),
    expect_banner=st.booleans(),
    max_message_bytes=st.sampled_from([64, 300, 65_536]),
    max_headers=st.sampled_from([2, 8, 1024]),
)
def test_any_stream_frames_the_same_in_any_chunking(
    body: bytes, cuts: list[int], expect_banner: bool, max_message_bytes: int, max_headers: int
) -> None:
    """Random and AMI-shaped bytes raise only AmiProtocolError; an error happens or not
    whatever the chunking, and the messages before it are the same."""
    data = (BANNER if expect_banner else b"") + body
    limits = {"max_message_bytes": max_message_bytes, "max_headers": max_headers}
    reference, failed = run(data, by_lines(data), expect_banner=expect_banner, **limits)
    chunked, chunked_failed = run(data, by_cuts(data, cuts), expect_banner=expect_banner, **limits)
    assert chunked_failed == failed
    if failed:
        assert chunked == reference[: len(chunked)]
    else:
        assert chunked == reference
    for item in reference:
        assert isinstance(item, AmiBanner | AmiMessage)
        if isinstance(item, AmiMessage):
            assert len(item.headers) <= max_headers
            size = sum(len(n) + len(v) + 3 for n, v in item.headers) + sum(
                len(line) for line in item.body
            )
            assert size <= max_message_bytes


@FUZZ
@given(data=st.binary(max_size=800), cuts=st.lists(st.integers(0, 800), max_size=6))
def test_random_bytes_from_a_fake_server(data: bytes, cuts: list[int]) -> None:
    """Something that is not Asterisk on the AMI port: the missing banner is an
    AmiProtocolError at the first line, never another exception."""
    out, failed = run(data, by_cuts(data, cuts), expect_banner=True)
    if not data.startswith(b"Asterisk Call Manager/") and b"\n" in data:
        assert failed and out == []


_header_names = st.from_regex(r"[A-Za-z0-9_\-]{1,12}", fullmatch=True).filter(
    lambda n: n.lower() not in ("response", "event", "action")
)
_any_values = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)


@FUZZ
@given(
    headers=st.lists(st.tuples(_header_names, _any_values), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_no_value_can_inject_a_header_or_an_action(
    headers: list[tuple[str, str]], cuts: list[int]
) -> None:
    """A value with CR or LF is refused at encode; any other value (NEL, U+2028, NUL,
    surrogates are encoded as UTF-8 with escapes) arrives as exactly one message with
    the same header names, in order."""
    pairs = [("Action", "Originate"), *headers]
    if any("\r" in v or "\n" in v for _, v in headers):
        with pytest.raises(AmiLocalProtocolError):
            encode_message(pairs)
        return
    try:
        data = encode_message(pairs)
    except UnicodeEncodeError:
        return  # a lone surrogate cannot be sent at all: also no injection
    out, failed = run(data, by_cuts(data, cuts), expect_banner=False)
    assert not failed
    [message] = out
    assert [n for n, _ in message.headers] == [n for n, _ in pairs]
    assert message.body == ()


@pytest.mark.parametrize("chunk", [1, 1_000, 100_000, 4_000_000])
def test_endless_message_is_refused_and_memory_stays_bounded(chunk: int) -> None:
    """4 MB of headers that never end (no blank line) is refused once it passes
    max_message_bytes; until then the framing holds about one message."""
    framing = AmiFraming(expect_banner=False)
    data = b"Event: Flood\r\n" + b"ChanVariable: X=yyyyyyyyyyyyyyyy\r\n" * 120_000
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held = 0
        with pytest.raises(AmiProtocolError):
            for i in range(0, len(data), chunk):
                framing.receive_data(data[i : i + chunk])
                held = max(held, tracemalloc.get_traced_memory()[0] - baseline)
    finally:
        tracemalloc.stop()
    # 1024 headers of ~60 bytes as Python objects, plus the chunk being framed.
    assert held < 400_000 + chunk, held


def test_endless_line_is_refused() -> None:
    """A line that never ends is refused once the message passes max_message_bytes."""
    framing = AmiFraming(expect_banner=False, max_message_bytes=1024)
    framing.receive_data(b"Response: Follows\r\n")
    with pytest.raises(AmiProtocolError):
        for _ in range(100):
            framing.receive_data(b"x" * 100)


def test_endless_follows_body_is_refused() -> None:
    """A Follows response whose --END COMMAND-- never comes is refused at the limit."""
    framing = AmiFraming(expect_banner=False, max_message_bytes=4096)
    framing.receive_data(b"Response: Follows\r\nPrivilege: Command\r\n")
    with pytest.raises(AmiProtocolError):
        for _ in range(1000):
            framing.receive_data(b"output\r\n\r\n")


def test_stray_empty_lines_do_not_count_against_the_next_message() -> None:
    """Empty lines between messages are ignored (module docstring) and do not use up the
    next message's byte limit."""
    framing = AmiFraming(expect_banner=False, max_message_bytes=1024)
    for _ in range(600):
        assert framing.receive_data(b"\r\n") == []
    [message] = framing.receive_data(b"Event: Hangup\r\n\r\n")
    assert message.name == "Hangup"
