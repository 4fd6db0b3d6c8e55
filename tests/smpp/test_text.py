"""Message text: GSM 03.38 and UCS2 encoding, splitting into parts, decoding and reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp.pdu import DataSm, DeliverSm, SubmitSm
from gateway.smpp.text import (
    DATA_CODING_DEFAULT,
    DATA_CODING_UCS2,
    ESM_CLASS_UDHI,
    Concatenation,
    MessageTooLong,
    NotGsm7Encodable,
    Reassembler,
    decode_pdu_text,
    decode_short_message,
    gsm7_can_encode,
    gsm7_decode,
    gsm7_encode,
    gsm7_pack,
    gsm7_septet_count,
    gsm7_unpack,
    plan_message,
    ucs2_unit_count,
)
from gateway.smpp.tlv import Tlv, TlvTag, tlv_bytes, tlv_int

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"
gsm_text = st.text(st.sampled_from(GSM_BASIC + GSM_EXTENSION), max_size=600)
any_text = st.text(
    st.one_of(
        st.sampled_from(GSM_BASIC + GSM_EXTENSION),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),  # CJK
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji (astral)
    ),
    max_size=500,
)
CHINESE = "您好，您的机动车驾驶证将于近期到期，请及时办理换证业务。交管12123提醒您：安全驾驶。"


def joined(plan, *, gsm7_packed=False):
    """Decode every part of a plan and join them in order (the handset's view)."""
    texts, concats = [], []
    for part in plan.parts:
        text, concat = decode_short_message(
            part.short_message, part.data_coding, part.esm_class, gsm7_packed=gsm7_packed
        )
        texts.append(text)
        concats.append(concat)
    return "".join(texts), concats


# -- GSM 03.38 -------------------------------------------------------------------------------


def test_gsm7_alphabet_positions():
    """Characters land on 23.038's septets; extension characters are escape + septet."""
    assert gsm7_encode("@£$") == b"\x00\x01\x02"
    assert gsm7_encode("ΔA_a") == b"\x10\x41\x11\x61"
    assert gsm7_encode("€") == b"\x1b\x65"
    assert gsm7_encode("{}") == b"\x1b\x28\x1b\x29"
    assert gsm7_encode(GSM_BASIC) == bytes(i for i in range(128) if i != 0x1B)


def test_gsm7_can_encode():
    """Only the default alphabet and extension table are GSM-encodable."""
    assert gsm7_can_encode("Hello [world] €5 @home")
    assert gsm7_can_encode("")
    assert not gsm7_can_encode("你好")
    assert not gsm7_can_encode("naïve")  # ï is not in GSM 03.38
    assert not gsm7_can_encode("`")
    assert not gsm7_can_encode("\x1b")  # the escape itself is not a character
    with pytest.raises(NotGsm7Encodable):
        gsm7_encode("ok 你")


def test_gsm7_septet_count():
    """Extension characters count 2 septets."""
    assert gsm7_septet_count("abc") == 3
    assert gsm7_septet_count("a€{") == 5


def test_gsm7_pack_known_vector():
    """'hellohello' packs to the well-known E8329BFD4697D9EC37."""
    assert gsm7_pack(gsm7_encode("hellohello")) == bytes.fromhex("E8329BFD4697D9EC37")


def test_gsm7_pack_pads_seven_spare_bits_with_cr():
    """7 septets leave 7 spare bits: they are a CR, not zeros read as '@' (23.038 6.1.2.3.1)."""
    packed = gsm7_pack(gsm7_encode("1234567"))
    assert len(packed) == 7
    assert packed[-1] >> 1 == 0x0D
    assert gsm7_unpack(packed) == gsm7_encode("1234567")


def test_gsm7_decode_escape_edge_cases():
    """An escape before a non-extension septet reads as the basic character; a lone one is a space."""
    assert gsm7_decode(b"\x1b\x41") == "A"
    assert gsm7_decode(b"a\x1b") == "a "


@settings(max_examples=200, deadline=None)
@given(gsm_text)
def test_gsm7_round_trip(text):
    """gsm7_decode(gsm7_encode(t)) == t for any GSM text."""
    assert gsm7_decode(gsm7_encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_gsm7_pack_round_trip(septets, fill_bits):
    """unpack(pack(s)) == s, except a final CR on an octet boundary gains a second CR (spec)."""
    unpacked = gsm7_unpack(gsm7_pack(septets, fill_bits), fill_bits)
    if unpacked != septets:
        assert septets.endswith(b"\r") and unpacked == septets + b"\r"


# -- planning: single parts ------------------------------------------------------------------


def test_single_gsm_part():
    """A 160-septet GSM text is one part, data_coding 0, no UDH."""
    plan = plan_message("a" * 160)
    assert plan.parts_count == 1
    assert plan.data_coding == DATA_CODING_DEFAULT
    assert plan.parts[0].short_message == b"a" * 160
    assert plan.parts[0].esm_class == 0
    assert plan.parts[0].tlvs == ()


def test_single_ucs2_part():
    """A 70-character Chinese text is one UCS2 part of 140 octets."""
    plan = plan_message("好" * 70)
    assert plan.parts_count == 1
    assert plan.data_coding == DATA_CODING_UCS2 == plan.parts[0].data_coding
    assert plan.parts[0].short_message == ("好" * 70).encode("utf-16-be")


def test_empty_text_is_one_empty_part():
    """An empty text still makes one (empty) submit."""
    plan = plan_message("")
    assert plan.parts_count == 1 and plan.parts[0].short_message == b""


def test_escape_counts_two_septets_for_single_limit():
    """159 letters plus '€' are 161 septets: two parts."""
    assert plan_message("a" * 158 + "€").parts_count == 1
    assert plan_message("a" * 159 + "€", reference=1).parts_count == 2


def test_surrogate_pair_counts_two_units_for_single_limit():
    """69 characters plus one emoji are 71 UCS2 units: two parts."""
    assert ucs2_unit_count("好" * 68 + "😀") == 70
    assert plan_message("好" * 68 + "😀").parts_count == 1
    assert plan_message("好" * 69 + "😀", reference=1).parts_count == 2


def test_forced_encodings():
    """encoding='ucs2' for GSM text gives data_coding 8; 'gsm7' refuses non-GSM text."""
    plan = plan_message("abc", encoding="ucs2")
    assert plan.data_coding == 8 and plan.parts[0].short_message == "abc".encode("utf-16-be")
    with pytest.raises(NotGsm7Encodable):
        plan_message("你好", encoding="gsm7")


# -- planning: multi-part ---------------------------------------------------------------------


def test_chinese_200_chars_udh8_three_parts():
    """200 Chinese characters are 3 UCS2 parts of 67/67/66 with UDH IE 0x00 and UDHI."""
    text = (CHINESE * 5)[:200]
    plan = plan_message(text, reference=0x1A7)
    assert plan.parts_count == 3
    for seq, part in enumerate(plan.parts, 1):
        assert part.esm_class == ESM_CLASS_UDHI
        assert part.data_coding == DATA_CODING_UCS2
        assert part.short_message[:6] == bytes((5, 0, 3, 0xA7, 3, seq))  # 8-bit ref = low byte
        assert len(part.short_message) <= 140
    assert [len(p.short_message) - 6 for p in plan.parts] == [134, 134, 132]
    text_back, concats = joined(plan)
    assert text_back == text
    assert concats == [Concatenation(0xA7, 3, i) for i in (1, 2, 3)]


def test_chinese_udh16():
    """With udh16 each UCS2 part holds 66 units behind a 7-octet UDH with a 16-bit reference."""
    text = (CHINESE * 5)[:200]
    plan = plan_message(text, concatenation="udh16", reference=0x1A7)
    assert plan.parts_count == 4  # 66 + 66 + 66 + 2
    assert plan.parts[0].short_message[:7] == bytes((6, 8, 4, 0x01, 0xA7, 4, 1))
    assert all(len(p.short_message) <= 140 for p in plan.parts)
    text_back, concats = joined(plan)
    assert text_back == text
    assert concats[3] == Concatenation(0x1A7, 4, 4)


def test_sar_mode_uses_tlvs_not_udh():
    """With sar the parts carry sar_* TLVs, no UDH and no UDHI; 67 units per part."""
    text = "好" * 134
    plan = plan_message(text, concatenation="sar", reference=0x1234)
    assert plan.parts_count == 2
    for seq, part in enumerate(plan.parts, 1):
        assert part.esm_class == 0
        assert part.short_message == ("好" * 67).encode("utf-16-be")
        assert tlv_int(part.tlvs, TlvTag.SAR_MSG_REF_NUM) == 0x1234
        assert tlv_bytes(part.tlvs, TlvTag.SAR_MSG_REF_NUM) == b"\x12\x34"
        assert tlv_int(part.tlvs, TlvTag.SAR_TOTAL_SEGMENTS) == 2
        assert tlv_int(part.tlvs, TlvTag.SAR_SEGMENT_SEQNUM) == seq
    pdus = [
        DeliverSm(1, short_message=p.short_message, data_coding=8, tlvs=p.tlvs) for p in plan.parts
    ]
    assert [decode_pdu_text(p)[1] for p in pdus] == [
        Concatenation(0x1234, 2, 1),
        Concatenation(0x1234, 2, 2),
    ]


def test_payload_mode_one_submit():
    """With payload the whole text goes in message_payload and short_message is empty."""
    text = CHINESE * 4
    plan = plan_message(text, concatenation="payload")
    assert plan.parts_count == 1
    part = plan.parts[0]
    assert part.short_message == b"" and part.esm_class == 0
    assert part.tlvs == (Tlv(TlvTag.MESSAGE_PAYLOAD, text.encode("utf-16-be")),)
    pdu = SubmitSm(1, data_coding=part.data_coding, tlvs=part.tlvs)
    assert decode_pdu_text(pdu) == (text, None)
    assert decode_pdu_text(DataSm(1, data_coding=8, tlvs=part.tlvs)) == (text, None)


def test_payload_mode_refuses_over_64k():
    """message_payload cannot carry more than 65535 octets."""
    with pytest.raises(MessageTooLong):
        plan_message("好" * 40000, concatenation="payload")


def test_gsm_udh8_unpacked_and_packed():
    """GSM parts hold 153 septets after UDH8, unpacked or packed with one fill bit."""
    text = "x" * 306
    unpacked = plan_message(text, reference=5)
    assert [len(p.short_message) for p in unpacked.parts] == [6 + 153, 6 + 153]
    packed = plan_message(text, reference=5, gsm7_packed=True)
    assert [len(p.short_message) for p in packed.parts] == [140, 140]
    assert joined(unpacked)[0] == text
    assert joined(packed, gsm7_packed=True)[0] == text


def test_gsm_udh16_152_septets():
    """With udh16 a GSM part holds 152 septets (the 7-octet UDH is 8 septets, no fill)."""
    plan = plan_message("y" * 304, concatenation="udh16", reference=9, gsm7_packed=True)
    assert plan.parts_count == 2
    assert all(len(p.short_message) == 140 for p in plan.parts)
    assert joined(plan, gsm7_packed=True)[0] == "y" * 304


def test_emoji_at_boundary_is_not_split():
    """A surrogate pair that would straddle the 67-unit boundary moves whole to the next part."""
    text = "好" * 66 + "😀" + "好" * 10
    plan = plan_message(text, reference=1)
    first = plan.parts[0].short_message[6:]
    assert first == ("好" * 66).encode("utf-16-be")  # 66 units: the pair did not fit in 1
    assert plan.parts[1].short_message[6:].decode("utf-16-be").startswith("😀")
    assert joined(plan)[0] == text


def test_gsm_escape_at_boundary_is_not_split():
    """A GSM escape sequence that would straddle the 153-septet boundary moves whole."""
    text = "a" * 152 + "€" + "b" * 10
    plan = plan_message(text, reference=1)
    assert plan.parts[0].short_message[6:] == b"a" * 152
    assert plan.parts[1].short_message[6:8] == b"\x1b\x65"
    assert joined(plan)[0] == text


def test_max_parts_refusal():
    """A text needing more than max_parts parts raises MessageTooLong, never cuts."""
    text = "好" * 202  # 67 + 67 + 67 + 1
    assert plan_message(text, max_parts=4, reference=1).parts_count == 4
    with pytest.raises(MessageTooLong) as e:
        plan_message(text, max_parts=3, reference=1)
    assert e.value.parts_needed == 4 and e.value.max_parts == 3
    assert "max_parts=3" in e.value.reason


def test_multi_part_needs_reference():
    """A multi-part plan without a reference is a caller bug, reported as ValueError."""
    with pytest.raises(ValueError, match="reference"):
        plan_message("好" * 71)


@pytest.mark.parametrize(
    "kwargs", [{"concatenation": "udh9"}, {"encoding": "latin1"}, {"max_parts": 0}]
)
def test_bad_arguments(kwargs):
    """Unknown modes and impossible max_parts are refused."""
    with pytest.raises(ValueError):
        plan_message("x", **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    text=any_text,
    concatenation=st.sampled_from(["udh8", "udh16", "sar"]),
    packed=st.booleans(),
    reference=st.integers(0, 0xFFFF),
)
def test_plan_reassembles_exactly(text, concatenation, packed, reference):
    """Any text split by any mode decodes and reassembles to itself, within the limits."""
    plan = plan_message(text, concatenation=concatenation, gsm7_packed=packed, reference=reference)
    limit = 140 if (packed or plan.data_coding == 8) else 160
    assert all(len(p.short_message) <= limit for p in plan.parts)
    reassembler = Reassembler()
    result = None
    for part in plan.parts:
        pdu = DeliverSm(
            1,
            source_addr="13800138000",
            esm_class=part.esm_class,
            data_coding=part.data_coding,
            short_message=part.short_message,
            tlvs=part.tlvs,
        )
        part_text, concat = decode_pdu_text(pdu, gsm7_packed=packed)
        if concat is None:
            assert plan.parts_count == 1
            result = part_text
        else:
            assert concat.total == plan.parts_count
            result = reassembler.add(pdu.source_addr, concat, part_text, now=0.0) or result
    if text.endswith("\r") and packed and plan.data_coding == 0:
        assert result in (text, text + "\r")  # 23.038's doubled final CR
    else:
        assert result == text


# -- inbound decoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "data_coding", "expected"),
    [
        (gsm7_encode("Hi @12123 €"), 0, "Hi @12123 €"),
        (b"caf\xe9", 3, "café"),
        ("回复1确认".encode("utf-16-be"), 8, "回复1确认"),
        ("回复".encode("gbk"), 15, "回复"),
        (b"plain ascii", 1, "plain ascii"),
        ("utf8 文".encode(), 4, "utf8 文"),
        (b"\xff\xfe", 4, "\xff\xfe"),
        (gsm7_encode("class 1"), 0xF1, "class 1"),
    ],
)
def test_decode_short_message_codings(data, data_coding, expected):
    """Each data_coding decodes with its alphabet; binary is best effort."""
    assert decode_short_message(data, data_coding, 0) == (expected, None)


def test_default_alphabet_latin1_for_ascii_smscs():
    """default_alphabet='latin-1' reads data_coding 0 as ASCII/latin-1 ('@' stays '@')."""
    data = b"TD @12123_ok"
    assert decode_short_message(data, 0, 0)[0] == "TD \u00a112123\u00a7ok"  # GSM 03.38 reading
    assert decode_short_message(data, 0, 0, default_alphabet="latin-1")[0] == "TD @12123_ok"
    pdu = DeliverSm(1, short_message=data)
    assert decode_pdu_text(pdu, default_alphabet="latin-1") == ("TD @12123_ok", None)


def test_default_alphabet_ascii_reads_ia5_and_replaces_eight_bit_octets():
    """default_alphabet='ascii' (IA5) keeps @ $ _ and marks octets above 0x7F as unreadable."""
    assert decode_short_message(b"a@b$_", 0, 0, default_alphabet="ascii")[0] == "a@b$_"
    assert decode_short_message(b"a\xe9", 0, 0, default_alphabet="ascii")[0] == "a\ufffd"


def test_decode_never_raises_on_bad_input():
    """Odd-length UCS2 and a UDH length beyond the message still give text."""
    assert decode_short_message(b"\x4f\x60\x59", 8, 0)[0].startswith("你")
    text, concat = decode_short_message(b"\x10abc", 0, ESM_CLASS_UDHI)
    assert concat is None and text.endswith("abc")


def test_decode_udh_with_other_ies():
    """A UDH with a port IE before the concatenation IE still yields the concatenation."""
    udh = bytes((11, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x00, 3, 0x42, 2, 1))
    text, concat = decode_short_message(udh + "好".encode("utf-16-be"), 8, ESM_CLASS_UDHI)
    assert (text, concat) == ("好", Concatenation(0x42, 2, 1))


def test_udh_ignored_without_udhi():
    """Without the UDHI bit, leading octets are text, not a header."""
    data = bytes((5, 0, 3, 1, 2, 1)) + b"x"
    text, concat = decode_short_message(data, 3, 0)
    assert concat is None and len(text) == 7


# -- reassembly ------------------------------------------------------------------------------


def test_reassembler_out_of_order_and_duplicates():
    """Parts arriving out of order, one twice, join once the last missing one arrives."""
    r = Reassembler()
    assert r.add("a", Concatenation(7, 3, 3), "C", now=1) is None
    assert r.add("a", Concatenation(7, 3, 1), "A", now=2) is None
    assert r.add("a", Concatenation(7, 3, 1), "A", now=3) is None
    assert r.add("b", Concatenation(7, 3, 2), "x", now=3) is None  # other source, other group
    assert r.add("a", Concatenation(7, 3, 2), "B", now=4) == "ABC"
    assert len(r) == 1


def test_reassembler_expiry():
    """Groups expire timeout_seconds after their first part and are handed back with their parts."""
    r = Reassembler(timeout_seconds=60)
    r.add("a", Concatenation(1, 2, 1), "first", now=100)
    r.add("b", Concatenation(1, 2, 2), "second", now=130)
    assert r.next_deadline() == 160
    assert r.expire(159.9) == []
    expired = r.expire(160)
    assert [(e.source, e.partial_text()) for e in expired] == [("a", "first")]
    assert r.next_deadline() == 190
    assert r.add("a", Concatenation(1, 2, 2), "late", now=161) is None  # a new group
    assert [e.source for e in r.expire(1000)] == ["b", "a"]
    assert r.next_deadline() is None


def test_reassembler_bounded():
    """Beyond max_pending groups the oldest is evicted and reported by the next expire."""
    r = Reassembler(max_pending=2)
    for ref in range(3):
        r.add("a", Concatenation(ref, 2, 1), str(ref), now=ref)
    assert len(r) == 2
    assert r.next_deadline() == float("-inf")
    assert [e.reference for e in r.expire(3)] == [0]


def test_reassembler_rejects_impossible_parts():
    """Part 0, part beyond total, and total 0 are refused; a 1-of-1 part is returned at once."""
    r = Reassembler()
    for bad in (Concatenation(1, 2, 0), Concatenation(1, 2, 3), Concatenation(1, 0, 0)):
        with pytest.raises(ValueError):
            r.add("a", bad, "x", now=0)
    assert r.add("a", Concatenation(1, 1, 1), "solo", now=0) == "solo"
    assert len(r) == 0
