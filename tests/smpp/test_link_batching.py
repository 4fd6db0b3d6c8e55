"""CarrierLink.holding_submits: a batch of submits goes out together when the block ends."""

from __future__ import annotations

from gateway.ports import OutboundSms
from gateway.privacy import PhoneNumber
from gateway.smpp.pdu import SubmitSm, SubmitSmResp
from tests.smpp.test_link import bound_link, result_of


def test_submits_held_in_a_block_are_written_when_it_ends() -> None:
    """Nothing reaches the SMSC inside the block; at its end every submit_sm is written,
    in submit order, and each message gets its own outcome."""
    link, smsc, _, _ = bound_link(window=10)
    with link.holding_submits():
        deferreds = [link.submit(OutboundSms(f"n{k}", PhoneNumber(f"1380013800{k}"), f"text {k}"))
                     for k in range(3)]
        assert smsc.read() == []
    submits = smsc.read()
    assert [type(p) for p in submits] == [SubmitSm] * 3
    assert [p.short_message for p in submits] == [b"text 0", b"text 1", b"text 2"]
    for k, submit in enumerate(submits):
        smsc.send(SubmitSmResp(submit.sequence_number, message_id=f"id{k}"))
    assert [result_of(d).message_ids for d in deferreds] == [("id0",), ("id1",), ("id2",)]


def test_nested_blocks_send_when_the_outer_one_ends() -> None:
    """An inner block ending does not send; the outer one does."""
    link, smsc, _, _ = bound_link(window=10)
    with link.holding_submits():
        with link.holding_submits():
            link.submit(OutboundSms("n1", PhoneNumber("13800138001"), "a"))
        assert smsc.read() == []
    assert len(smsc.read()) == 1


def test_window_still_bounds_a_held_batch() -> None:
    """A held batch larger than the window sends a window's worth; responses send the rest."""
    link, smsc, _, _ = bound_link(window=2)
    with link.holding_submits():
        for k in range(3):
            link.submit(OutboundSms(f"n{k}", PhoneNumber(f"1380013800{k}"), f"t{k}"))
    first = smsc.read()
    assert len(first) == 2
    smsc.send(SubmitSmResp(first[0].sequence_number, message_id="x"))
    assert [p.short_message for p in smsc.read()] == [b"t2"]
