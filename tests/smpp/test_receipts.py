"""Delivery receipts: recognising, parsing text and TLVs, and matching message ids."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp.pdu import DataSm, DeliverSm, decode, encode
from gateway.smpp.receipts import (
    ParsedReceipt,
    ReceiptFields,
    ReceiptParseError,
    canonical_message_id,
    is_receipt,
    message_id_candidates,
    normalise_message_id,
    parse_receipt_text,
    receipt_datetime,
    receipt_from_deliver,
)
from gateway.smpp.tlv import Tlv, TlvTag

STANDARD = (
    "id:1234567890 sub:001 dlvrd:001 submit date:2401151230 done date:2401151231 "
    "stat:DELIVRD err:000 text:您好"
)


def receipt_pdu(text: str = STANDARD, *, esm_class: int = 0x04, tlvs=(), data_coding=0):
    data = text.encode("utf-16-be") if data_coding == 8 else text.encode("latin-1", "replace")
    pdu = DeliverSm(
        11,
        source_addr="8613800138000",
        destination_addr="12123",
        esm_class=esm_class,
        data_coding=data_coding,
        short_message=data,
        tlvs=tuple(tlvs),
    )
    return decode(encode(pdu))  # as it arrives off the wire


# -- parse_receipt_text ------------------------------------------------------------------


def test_parse_standard_text():
    """The Appendix B layout parses into every field."""
    assert parse_receipt_text(STANDARD) == ReceiptFields(
        id="1234567890",
        sub="001",
        dlvrd="001",
        submit_date="2401151230",
        done_date="2401151231",
        stat="DELIVRD",
        err="000",
        text="您好",
    )


def test_parse_hex_id_and_upper_case_keys():
    """Upper-case keys, a hex id and lower-case stat values are accepted; id keeps its case."""
    fields = parse_receipt_text(
        "ID:0A1b2C3D SUB:1 DLVRD:0 SUBMIT DATE:2401151230 DONE DATE:2401151231 STAT:undeliv ERR:012"
    )
    assert fields.id == "0A1b2C3D"
    assert fields.stat == "UNDELIV"
    assert fields.err == "012"
    assert fields.submit_date == "2401151230"
    assert fields.text is None


def test_parse_missing_fields_and_extra_spaces():
    """Missing fields are None; spaces around keys and values are ignored."""
    fields = parse_receipt_text("  id :  77   stat:  EXPIRED  ")
    assert fields == ReceiptFields(id="77", stat="EXPIRED")


def test_parse_underscore_dates_with_seconds():
    """'submit_date' / 'done_date' spellings and 12-digit dates are understood."""
    fields = parse_receipt_text(
        "id:9 submit_date:240115123059 done_date:240115123101 stat:DELIVRD err:0"
    )
    assert (fields.submit_date, fields.done_date) == ("240115123059", "240115123101")
    assert receipt_datetime(fields.done_date) == datetime(2024, 1, 15, 12, 31, 1)
    assert receipt_datetime("2401151230") == datetime(2024, 1, 15, 12, 30)
    assert receipt_datetime("2413151230") is None
    assert receipt_datetime("") is None


def test_parse_long_stat_spellings():
    """Long state names are abbreviated as Appendix B spells them."""
    assert parse_receipt_text("id:1 stat:Delivered").stat == "DELIVRD"
    assert parse_receipt_text("id:1 stat:REJECTED").stat == "REJECTD"
    assert parse_receipt_text("id:1 stat:MK:0001").stat == "MK:0001"  # carrier code kept


def test_parse_text_takes_the_rest():
    """text: is last and may itself contain key-like words."""
    fields = parse_receipt_text("id:5 stat:DELIVRD err:000 text:your id:5 stat:ok")
    assert fields.text == "your id:5 stat:ok"
    assert fields.stat == "DELIVRD"


def test_parse_refuses_text_without_id_or_stat():
    """Something with neither id nor stat is not a receipt."""
    for text in ("", "hello 12123", "sub:001 dlvrd:001 err:000"):
        with pytest.raises(ReceiptParseError):
            parse_receipt_text(text)
    assert parse_receipt_text("stat:DELIVRD").id is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parse_raises_only_receipt_parse_error(text):
    """Arbitrary text parses or raises ReceiptParseError, nothing else."""
    try:
        parse_receipt_text(text)
    except ReceiptParseError:
        pass


# -- receipt_from_deliver ----------------------------------------------------------------


def test_text_receipt():
    """esm_class 0x04 marks a receipt; its text gives id, stat, err and dates."""
    receipt = receipt_from_deliver(receipt_pdu())
    assert receipt == ParsedReceipt(
        message_id="1234567890",
        stat="DELIVRD",
        err="000",
        submit_date="2401151230",
        done_date="2401151231",
        text_fields=parse_receipt_text(STANDARD.replace("您好", "??")),  # latin-1 "replace"
    )
    assert receipt is not None and receipt.is_final


def test_mo_is_not_a_receipt():
    """A citizen's message (esm_class 0, no receipted_message_id) is not a receipt."""
    mo = receipt_pdu("id:1 stat:DELIVRD looks like one but is an MO", esm_class=0)
    assert not is_receipt(mo)
    assert receipt_from_deliver(mo) is None


def test_esm_class_mode_and_udhi_bits_do_not_matter():
    """Only bits 5-2 of esm_class classify: 0x04 with UDHI or mode bits is still a receipt."""
    assert is_receipt(receipt_pdu(esm_class=0x04 | 0x03))
    assert not is_receipt(receipt_pdu(esm_class=0x08))  # SME delivery acknowledgement
    assert is_receipt(receipt_pdu("id:1 stat:ENROUTE", esm_class=0x20))  # intermediate


def test_tlv_only_receipt():
    """receipted_message_id and message_state without any text make a receipt."""
    pdu = receipt_pdu(
        "",
        esm_class=0,
        tlvs=[
            Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "ABC123"),
            Tlv.uint8(TlvTag.MESSAGE_STATE, 5),
            Tlv(TlvTag.NETWORK_ERROR_CODE, b"\x03\x00\x22"),
        ],
    )
    receipt = receipt_from_deliver(pdu)
    assert receipt == ParsedReceipt(
        message_id="ABC123", stat="UNDELIV", err="034", network_error_code=(3, 0x22)
    )


def test_tlvs_win_over_text():
    """When both are present the TLVs' id and state are used; the text fills the rest."""
    pdu = receipt_pdu(
        tlvs=[
            Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "499602D2"),
            Tlv.uint8(TlvTag.MESSAGE_STATE, 3),
        ]
    )
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.err) == ("499602D2", "EXPIRED", "000")
    assert receipt.done_date == "2401151231"


@pytest.mark.parametrize(
    ("state", "stat"),
    [(1, "ENROUTE"), (2, "DELIVRD"), (3, "EXPIRED"), (4, "DELETED"), (5, "UNDELIV"),
     (6, "ACCEPTD"), (7, "UNKNOWN"), (8, "REJECTD"), (42, "STATE_42")],
)  # fmt: skip
def test_message_state_names(state, stat):
    """message_state values map to the receipt stat names (section 5.3.2.35)."""
    pdu = receipt_pdu("", tlvs=[Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "1"),
                                Tlv.uint8(TlvTag.MESSAGE_STATE, state)])  # fmt: skip
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None and receipt.stat == stat


def test_receipted_message_id_without_nul():
    """A receipted_message_id sent without its NUL is read anyway."""
    pdu = receipt_pdu(tlvs=[Tlv(TlvTag.RECEIPTED_MESSAGE_ID, b"77")])
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None and receipt.message_id == "77"


def test_receipt_text_is_ascii_whatever_data_coding_says():
    """With data_coding 0 the text is read as ASCII, not GSM 03.38 (where 0x5F is '§')."""
    pdu = receipt_pdu("id:abc_1 submit_date:2401151230 stat:DELIVRD", data_coding=0)
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None
    assert (receipt.message_id, receipt.submit_date) == ("abc_1", "2401151230")


def test_ucs2_receipt_text():
    """A receipt whose text is UCS2 (some SMSCs) parses the same."""
    receipt = receipt_from_deliver(receipt_pdu("id:88 stat:delivrd err:0", data_coding=8))
    assert receipt is not None and (receipt.message_id, receipt.stat) == ("88", "DELIVRD")


def test_ucs2_declared_receipt_written_in_ascii_is_read_as_ascii():
    """data_coding 8 with an ASCII Appendix B text (the SMSC copied the submit's coding):
    the UTF-16 reading has no id or stat, so the latin-1 reading is used."""
    pdu = decode(encode(DeliverSm(
        11, esm_class=0x04, data_coding=8, short_message=STANDARD.encode("utf-8")[:110],
    )))
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None and (receipt.message_id, receipt.stat) == ("1234567890", "DELIVRD")


def test_receipt_unreadable_in_every_reading_raises():
    """No id and no stat as UTF-16 nor as latin-1: ReceiptParseError (the link answers it)."""
    pdu = decode(encode(DeliverSm(11, esm_class=0x04, data_coding=8, short_message=b"garbled!")))
    with pytest.raises(ReceiptParseError):
        receipt_from_deliver(pdu)


def test_receipt_in_message_payload_of_data_sm():
    """data_sm receipts carry their text in message_payload."""
    pdu = DataSm(
        3,
        esm_class=0x04,
        tlvs=(Tlv(TlvTag.MESSAGE_PAYLOAD, b"id:0xff stat:ACCEPTD"),),
    )
    receipt = receipt_from_deliver(pdu)
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.is_final) == ("0xff", "ACCEPTD", False)


@pytest.mark.parametrize(
    ("text", "tlvs"),
    [
        ("garbage without fields", []),
        ("sub:001 err:000", []),
        ("stat:DELIVRD", []),  # no id anywhere
        ("", [Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, "5")]),  # no state anywhere
    ],
)
def test_unusable_receipts_raise(text, tlvs):
    """A receipt with no id or no state raises ReceiptParseError (the link decides what to do)."""
    with pytest.raises(ReceiptParseError):
        receipt_from_deliver(receipt_pdu(text, tlvs=tlvs))


# -- message ids ---------------------------------------------------------------------------


def test_normalise_message_id():
    """Per-carrier conversion between the receipt's and the submit_sm_resp's id formats."""
    assert normalise_message_id(" 0A1B ") == "0A1B"
    assert normalise_message_id("BC614E", id_format="hex_to_dec") == "12345678"
    assert normalise_message_id("bc614e", id_format="hex_to_dec") == "12345678"
    assert normalise_message_id("12345678", id_format="dec_to_hex") == "bc614e"
    assert (
        normalise_message_id("12345678", id_format="dec_to_hex", hex_upper=True, hex_width=10)
        == "0000BC614E"
    )
    assert normalise_message_id("not-hex", id_format="hex_to_dec") == "not-hex"
    assert normalise_message_id("12ab", id_format="dec_to_hex") == "12ab"
    with pytest.raises(ValueError):
        normalise_message_id("1", id_format="base64")  # type: ignore[arg-type]


def test_canonical_message_id():
    """Canonical form: trimmed, lower-case, no leading zeros, zero stays zero."""
    assert canonical_message_id(" 00BC614E ") == "bc614e"
    assert canonical_message_id("000") == "0"
    assert canonical_message_id("") == ""


def test_message_id_candidates():
    """Candidates: as is, lower-case, canonical, hex->decimal, decimal->hex; no duplicates."""
    assert message_id_candidates("00BC614E") == ("00BC614E", "00bc614e", "bc614e", "12345678")
    assert message_id_candidates("12345678") == ("12345678", "305419896", "bc614e", "BC614E")
    assert message_id_candidates("msg-7") == ("msg-7",)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64), st.booleans(), st.integers(0, 20))
def test_candidates_find_the_other_format(value, upper, width):
    """Whichever base a carrier uses in the receipt, a candidate equals the canonical submit id."""
    hex_id = format(value, f"0{width}{'X' if upper else 'x'}")
    dec_id = str(value)
    assert canonical_message_id(dec_id) in {
        canonical_message_id(c) for c in message_id_candidates(hex_id)
    }
    assert canonical_message_id(hex_id) in {
        canonical_message_id(c) for c in message_id_candidates(dec_id)
    }
