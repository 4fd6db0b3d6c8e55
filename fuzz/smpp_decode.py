"""atheris harness: the SMPP PDU decoder against the spec-table reference.

Each input is one PDU candidate.  The first octet picks a mode: odd -> the rest is used
as is; even -> the rest gets its command_length patched to its real size, so that the
fuzzer spends its time in body parsing rather than on the length check.  The decoder must
raise only PduDecodeError, agree with ``reference_status`` (tests/fuzz/test_fuzz_smpp.py,
written from SMPP 3.4 section 4) on success and on the status, and re-encode what it
decoded.
"""

from __future__ import annotations

import _common  # first: puts the repository on sys.path
import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.smpp.pdu import (
        BindTransceiver,
        DeliverSm,
        EnquireLink,
        GenericNack,
        SubmitMulti,
        SubmitSm,
        SubmitSmResp,
        encode,
    )
    from gateway.smpp.tlv import Tlv, TlvTag
from tests.fuzz.test_fuzz_smpp import check_decode


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, pdu = data[0], data[1:]
    if mode % 2 == 0 and len(pdu) >= 4:
        pdu = len(pdu).to_bytes(4, "big") + pdu[4:]
    check_decode(pdu)  # raises AssertionError (a finding) on any disagreement


def seeds() -> list[bytes]:
    pdus = [
        BindTransceiver(1, system_id="partner", password="pw123", system_type="SMS"),
        SubmitSm(
            2,
            source_addr="12123",
            destination_addr="13800138000",
            short_message=b"hi",
            tlvs=(Tlv(TlvTag.SAR_MSG_REF_NUM, b"\0\1"),),
        ),
        DeliverSm(
            3,
            esm_class=4,
            short_message=b"id:1 stat:DELIVRD err:000",
            tlvs=(Tlv(TlvTag.RECEIPTED_MESSAGE_ID, b"1\0"),),
        ),
        SubmitSmResp(4, message_id="abc"),
        SubmitMulti(5, short_message=b"x"),
        EnquireLink(6),
        GenericNack(7, 3),
    ]
    return [b"\0" + encode(p) for p in pdus]


if __name__ == "__main__":
    _common.main(test_one_input, seeds)
