"""atheris harness: the AGI reply parser and the FastAGI session.

The input is what Asterisk (or anything on the FastAGI port) writes after the AGI
environment.  Every line goes through ``parse_agi_reply``, which may raise only
AgiReplyError; the whole input then goes through an ``AgiSession`` with a few commands
queued, whole and in fuzzer-chosen chunks, which must give the same events and only
Reply, Hangup and ProtocolError.  Inputs whose one line takes longer than 0.1 s to
parse are reported as findings too (``-timeout`` catches worse).
"""

from __future__ import annotations

import time

import _common  # first: puts the repository on sys.path
import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.ivr.agi import (
        AgiReplyError,
        AgiSession,
        Hangup,
        ProtocolError,
        Reply,
        parse_agi_reply,
    )

ENVIRONMENT = b"agi_network: yes\nagi_network_script: 12123\nagi_callerid: 13800138000\n\n"
SLOW_LINE_SECONDS = 0.1


def parse_seconds(line: str) -> float:
    started = time.perf_counter()
    try:
        parse_agi_reply([line])
    except AgiReplyError:
        pass
    return time.perf_counter() - started


def run(data: bytes, cuts: list[int], max_line_bytes: int) -> list[object]:
    session = AgiSession(max_line_bytes=max_line_bytes)
    session.receive_data(ENVIRONMENT)
    for n in range(3):
        session.send_command(f"VERBOSE {n}")
    events: list[object] = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in zip(bounds, bounds[1:], strict=False):
        events += session.receive_data(data[start:stop])
    return events


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_line_bytes = fdp.ConsumeIntInRange(48, 8192)  # the environment lines fit
    cuts = fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 6), 0, 4096)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    for raw in stream.split(b"\n"):
        line = raw.decode("utf-8", "replace").removesuffix("\r")
        # Timed twice: one slow run can be a garbage collection, two are the parser.
        if min(parse_seconds(line), parse_seconds(line)) > SLOW_LINE_SECONDS:
            raise RuntimeError(f"slow reply line: {len(line)} characters")
    whole = run(stream, [], max_line_bytes)
    chunked = run(stream, cuts, max_line_bytes)
    assert whole == chunked
    for i, event in enumerate(whole):
        assert isinstance(event, Reply | Hangup | ProtocolError), event
        assert not isinstance(event, ProtocolError) or i == len(whole) - 1


def seeds() -> list[bytes]:
    prefix = b"\x00\x20\x00"  # max_line_bytes small, no cuts
    return [
        prefix + b"200 result=0\n200 result=49 endpos=3200\n",
        prefix + b"200 result=1 (some value) x=1\nHANGUP\n511 Command Not Permitted\n",
        prefix
        + b"520-Invalid command syntax.  Proper usage follows:\n usage\n520 End of proper usage.\n",
        prefix + b"100 result=0 Trying...\n200 result= (timeout)\n510 Invalid or unknown command\n",
    ]


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
