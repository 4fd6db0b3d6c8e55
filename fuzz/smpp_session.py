"""atheris harness: the SMPP session fed hostile streams in fuzzer-chosen chunks.

The input picks a scenario (tests/fuzz/test_fuzz_smpp.py: an SMSC or ESME session,
open, binding or bound, with requests outstanding), a max_pdu_bytes, a stream and its
chunking.  The stream is checked frame by frame against the documented answers
(``run_frame_by_frame``: the codec's status in a generic_nack or the request's own
response, a close for a command_length outside 16..max_pdu_bytes), then fed again in the
chosen chunks, which must give the same bytes and events.  Any exception is a finding.
"""

from __future__ import annotations

import os

import _common  # first: puts the repository on sys.path
import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.smpp.pdu import (
        BindTransceiver,
        BindTransceiverResp,
        DeliverSm,
        DeliverSmResp,
        EnquireLink,
        Outbind,
        SubmitSm,
        SubmitSmResp,
        Unbind,
        encode,
    )
    from gateway.smpp.session import PeerProtocolError
import tests.fuzz.test_fuzz_smpp as t

SIZES = (64, 300, 65_536)
# FUZZ_INCLUDE_KNOWN_BUGS=1 also fuzzes the streams the known session bug is skipped for
# (to check a fix, or to see how fast the harness finds it).
if os.environ.get("FUZZ_INCLUDE_KNOWN_BUGS"):
    t.SKIP_OUTBIND_WHILE_BINDING = False


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    name = t.SCENARIOS[fdp.ConsumeIntInRange(0, len(t.SCENARIOS) - 1)]
    max_pdu_bytes = SIZES[fdp.ConsumeIntInRange(0, len(SIZES) - 1)]
    cuts = fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 4096)
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    if fdp_patch_lengths(stream):
        stream = t_patch(stream)
    if t.SKIP_OUTBIND_WHILE_BINDING and t._reaches_outbind_while_binding(
        name, stream, max_pdu_bytes
    ):
        return  # the known bug (xfail test_outbind_while_our_bind_is_outstanding_does_not_crash)
    expected_events, expected_sent = t.run_frame_by_frame(
        t.make_scenario(name, max_pdu_bytes), stream
    )
    session = t.make_scenario(name, max_pdu_bytes).session
    events: list = []
    sent = b""
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if start < stop:
            events += session.receive_data(stream[start:stop], 1.0)
            sent += session.data_to_send()
    if sent != expected_sent and t.split_frames(stream, max_pdu_bytes)[1] is not None:
        expected_sent, expected_events = t._with_nack_sequence_zero(expected_sent, expected_events)
        assert any(isinstance(e, PeerProtocolError) for e in events)
    assert sent == expected_sent
    assert events == expected_events


def fdp_patch_lengths(stream: bytes) -> bool:
    """Inputs starting with 0xA5 get every frame's command_length repaired (see t_patch)."""
    return stream[:1] == b"\xa5"


def t_patch(stream: bytes) -> bytes:
    """Re-frame ``stream[1:]`` as PDUs: each 16-octet header plus a body whose length is
    the header's first octet, with command_length set to match; keeps the fuzzer inside
    well-framed streams where the state machine, not the framer, is exercised."""
    data, out, pos = stream[1:], [], 0
    while len(data) - pos >= 16:
        body_length = data[pos]
        piece = data[pos + 4 : pos + 16 + body_length]
        out.append((12 + len(piece)).to_bytes(4, "big") + piece)
        pos += 16 + body_length
    return b"".join(out) + data[pos:]


def seeds() -> list[bytes]:
    def framed(*pdus: object) -> bytes:
        return b"".join(encode(p) for p in pdus)  # type: ignore[arg-type]

    header = bytes([0, 2, 0])  # scenario 0, size 64, no cuts
    streams = [
        framed(BindTransceiver(1, system_id="gw", password="pw"), EnquireLink(2)),
        framed(SubmitSm(3, short_message=b"x"), DeliverSmResp(1), SubmitSmResp(2)),
        framed(Outbind(4, system_id="smsc"), BindTransceiverResp(1, system_id="s")),
        framed(DeliverSm(5, short_message=b"y"), Unbind(6)),
    ]
    return [bytes([n % len(t.SCENARIOS)]) + header[1:] + s for n, s in enumerate(streams)]


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
