"""SMPP 3.4 optional parameters: tags, constructors, readers and the stream codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp.tlv import (
    Tlv,
    TlvStreamError,
    TlvTag,
    decode_tlvs,
    encode_tlvs,
    tlv_bytes,
    tlv_cstring,
    tlv_int,
)


def test_tag_values_from_the_spec():
    """A sample of table 5-9's tags, including the ones the gateway relies on."""
    assert TlvTag.DEST_ADDR_SUBUNIT == 0x0005
    assert TlvTag.RECEIPTED_MESSAGE_ID == 0x001E
    assert TlvTag.USER_MESSAGE_REFERENCE == 0x0204
    assert TlvTag.SOURCE_PORT == 0x020A
    assert TlvTag.DEST_PORT is TlvTag.DESTINATION_PORT == 0x020B
    assert TlvTag.SAR_MSG_REF_NUM == 0x020C
    assert TlvTag.SAR_TOTAL_SEGMENTS == 0x020E
    assert TlvTag.SAR_SEGMENT_SEQNUM == 0x020F
    assert TlvTag.SC_INTERFACE_VERSION == 0x0210
    assert TlvTag.NETWORK_ERROR_CODE == 0x0423
    assert TlvTag.MESSAGE_PAYLOAD == 0x0424
    assert TlvTag.MESSAGE_STATE == 0x0427
    assert TlvTag.ITS_SESSION_INFO == 0x1383
    assert len(TlvTag) == 44  # every 3.4 tag, the dest_port alias not counted


def test_constructors_encode_big_endian():
    """uint8/16/32 and cstring build the value octets the spec describes."""
    assert Tlv.uint8(TlvTag.MESSAGE_STATE, 2).value == b"\x02"
    assert Tlv.uint16(TlvTag.SAR_MSG_REF_NUM, 0x1234).value == b"\x12\x34"
    assert Tlv.uint32(TlvTag.QOS_TIME_TO_LIVE, 0x01020304).value == b"\x01\x02\x03\x04"
    assert Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "abc").value == b"abc\x00"
    with pytest.raises(ValueError):
        Tlv.uint8(TlvTag.MESSAGE_STATE, 256)
    with pytest.raises(ValueError):
        Tlv.uint16(TlvTag.SAR_MSG_REF_NUM, -1)


def test_encode_golden():
    """TLVs serialise as tag, length, value in the given order."""
    data = encode_tlvs([Tlv.uint16(TlvTag.SAR_MSG_REF_NUM, 7), Tlv(0x1401, b"")])
    assert data == bytes.fromhex("020c 0002 0007 1401 0000")


def test_readers():
    """tlv_int / tlv_bytes / tlv_cstring read the first TLV of a tag, None when absent."""
    tlvs = (
        Tlv.uint16(TlvTag.SAR_MSG_REF_NUM, 300),
        Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "0A1B"),
        Tlv.uint8(TlvTag.SAR_MSG_REF_NUM, 9),
        Tlv(TlvTag.ADDITIONAL_STATUS_INFO_TEXT, b"no nul"),
    )
    assert tlv_int(tlvs, TlvTag.SAR_MSG_REF_NUM) == 300
    assert tlv_bytes(tlvs, TlvTag.RECEIPTED_MESSAGE_ID) == b"0A1B\x00"
    assert tlv_cstring(tlvs, TlvTag.RECEIPTED_MESSAGE_ID) == "0A1B"
    assert tlv_cstring(tlvs, TlvTag.ADDITIONAL_STATUS_INFO_TEXT) == "no nul"
    assert tlv_int(tlvs, TlvTag.MESSAGE_STATE) is None
    assert tlv_bytes(tlvs, TlvTag.MESSAGE_STATE) is None
    assert tlv_cstring(tlvs, TlvTag.MESSAGE_STATE) is None


def test_tlv_int_tolerates_carrier_sizes():
    """A 1-octet sar_msg_ref_num (a common carrier mistake) still reads as its value."""
    assert tlv_int((Tlv(TlvTag.SAR_MSG_REF_NUM, b"\x05"),), TlvTag.SAR_MSG_REF_NUM) == 5
    assert tlv_int((Tlv(TlvTag.SAR_MSG_REF_NUM, b""),), TlvTag.SAR_MSG_REF_NUM) == 0


def test_decode_known_and_unknown_tags():
    """Known tags decode to TlvTag members, unknown ones stay ints; order is kept."""
    data = b"junk" + bytes.fromhex("3000 0001 ff 0427 0001 02")
    tlvs = decode_tlvs(data, 4, len(data))
    assert tlvs == (Tlv(0x3000, b"\xff"), Tlv(TlvTag.MESSAGE_STATE, b"\x02"))
    assert tlvs[1].tag is TlvTag.MESSAGE_STATE and type(tlvs[0].tag) is int


@pytest.mark.parametrize("tail", ["04", "0424", "042400", "0424 0002 00"])
def test_decode_broken_streams(tail):
    """Stray octets or a value running past the end raise TlvStreamError."""
    data = bytes.fromhex(tail)
    with pytest.raises(TlvStreamError):
        decode_tlvs(data, 0, len(data))


def test_encode_refuses_oversized_value():
    """A value longer than the u16 length field allows is refused."""
    with pytest.raises(ValueError):
        encode_tlvs([Tlv(TlvTag.MESSAGE_PAYLOAD, b"x" * 65536)])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(Tlv, st.integers(0, 0xFFFF), st.binary(max_size=300)),
        max_size=6,
    )
)
def test_round_trip(tlvs):
    """decode_tlvs(encode_tlvs(t)) == t for any tags and values."""
    data = encode_tlvs(tlvs)
    assert decode_tlvs(data, 0, len(data)) == tuple(tlvs)
