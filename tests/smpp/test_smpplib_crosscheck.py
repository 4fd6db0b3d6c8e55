"""Our codec against smpplib's, an independent SMPP 3.4 implementation, in both directions.

What we encode, smpplib (``smpplib.smpp.parse_pdu``) reads back with the same fields; what
smpplib generates (``smpplib.smpp.make_pdu(...).generate()``), we decode to the same fields.
smpplib keeps C-Octet strings as bytes after parsing, so they are compared as latin-1.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp

from gateway.smpp.pdu import (
    BindTransceiver,
    BindTransceiverResp,
    CommandStatus,
    DeliverSm,
    EnquireLink,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    decode,
    encode,
)
from gateway.smpp.tlv import Tlv, TlvTag

CROSSCHECK = settings(max_examples=100, deadline=None)

u8 = st.integers(0, 255)
sequences = st.integers(1, 0x7FFFFFFF)
digits = st.text("0123456789", min_size=1, max_size=20)
latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF)
chinese = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=70)


def smpplib_parse(data: bytes):
    # sequence= only stops smpplib asking its (absent) client for one; parse overwrites it.
    return smpp.parse_pdu(data, sequence=1)


def smpplib_generate(command_name: str, *, sequence: int, status: int = 0, **fields) -> bytes:
    pdu = smpp.make_pdu(command_name, sequence=sequence, **fields)
    # smpplib's constructor ignores sequence= and status= (its _set_vars only fills
    # attributes that are None, and both already have values); set them directly.
    pdu.sequence = sequence
    pdu.status = status
    return pdu.generate()


def s(value: bytes | None) -> str:
    return (value or b"").decode("latin-1")


# -- bind_transceiver --------------------------------------------------------------------


@CROSSCHECK
@given(
    seq=sequences,
    system_id=st.text(latin1, max_size=15),
    password=st.text(latin1, max_size=8),
    system_type=st.text(latin1, max_size=12),
    addr_ton=u8,
    addr_npi=u8,
    address_range=st.text(latin1, max_size=40),
)
def test_bind_transceiver(seq, system_id, password, system_type, addr_ton, addr_npi, address_range):
    """bind_transceiver: same fields whichever side encodes."""
    ours = BindTransceiver(
        seq,
        system_id=system_id,
        password=password,
        system_type=system_type,
        interface_version=0x34,  # smpplib always sends 3.4
        addr_ton=addr_ton,
        addr_npi=addr_npi,
        address_range=address_range,
    )
    theirs = smpplib_parse(encode(ours))
    assert theirs.command == "bind_transceiver"
    assert theirs.sequence == seq
    assert (s(theirs.system_id), s(theirs.password), s(theirs.system_type)) == (
        system_id,
        password,
        system_type,
    )
    assert (theirs.interface_version, theirs.addr_ton, theirs.addr_npi) == (
        0x34,
        addr_ton,
        addr_npi,
    )
    assert s(theirs.address_range) == address_range

    generated = smpplib_generate(
        "bind_transceiver",
        sequence=seq,
        system_id=system_id,
        password=password,
        system_type=system_type,
        addr_ton=addr_ton,
        addr_npi=addr_npi,
        address_range=address_range,
    )
    assert decode(generated) == ours


def test_bind_transceiver_resp_with_sc_interface_version():
    """bind_transceiver_resp with sc_interface_version reads the same on both sides."""
    ours = BindTransceiverResp(
        4, system_id="SMSC", tlvs=(Tlv.uint8(TlvTag.SC_INTERFACE_VERSION, 0x34),)
    )
    theirs = smpplib_parse(encode(ours))
    assert (s(theirs.system_id), theirs.sc_interface_version) == ("SMSC", 0x34)
    generated = smpplib_generate(
        "bind_transceiver_resp", sequence=4, system_id="SMSC", sc_interface_version=0x34
    )
    assert decode(generated) == ours


# -- submit_sm -----------------------------------------------------------------------------


@CROSSCHECK
@given(
    seq=sequences,
    source_addr=digits,
    destination_addr=digits,
    dest_addr_ton=u8,
    esm_class=u8,
    registered_delivery=u8,
    text=chinese,
    user_message_reference=st.integers(0, 0xFFFF),
)
def test_submit_sm_ucs2_with_tlv(
    seq, source_addr, destination_addr, dest_addr_ton, esm_class, registered_delivery, text,
    user_message_reference,
):  # fmt: skip
    """submit_sm with a UCS2 short_message and a user_message_reference TLV, both directions."""
    short_message = text.encode("utf-16-be")
    ours = SubmitSm(
        seq,
        source_addr=source_addr,
        dest_addr_ton=dest_addr_ton,
        dest_addr_npi=1,
        destination_addr=destination_addr,
        esm_class=esm_class,
        registered_delivery=registered_delivery,
        data_coding=8,
        short_message=short_message,
        tlvs=(Tlv.uint16(TlvTag.USER_MESSAGE_REFERENCE, user_message_reference),),
    )
    theirs = smpplib_parse(encode(ours))
    assert theirs.command == "submit_sm" and theirs.sequence == seq
    assert (s(theirs.source_addr), s(theirs.destination_addr)) == (source_addr, destination_addr)
    assert (theirs.dest_addr_ton, theirs.dest_addr_npi) == (dest_addr_ton, 1)
    assert (theirs.esm_class, theirs.registered_delivery, theirs.data_coding) == (
        esm_class,
        registered_delivery,
        8,
    )
    assert theirs.sm_length == len(short_message)
    assert (theirs.short_message or b"").decode("utf-16-be") == text
    assert theirs.user_message_reference == user_message_reference

    generated = smpplib_generate(
        "submit_sm",
        sequence=seq,
        service_type="",
        source_addr_ton=0,
        source_addr_npi=0,
        source_addr=source_addr,
        dest_addr_ton=dest_addr_ton,
        dest_addr_npi=1,
        destination_addr=destination_addr,
        esm_class=esm_class,
        protocol_id=0,
        priority_flag=0,
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=registered_delivery,
        replace_if_present_flag=0,
        data_coding=8,
        sm_default_msg_id=0,
        short_message=short_message,
        user_message_reference=user_message_reference,
    )
    assert decode(generated) == ours


@CROSSCHECK
@given(seq=sequences, message_id=st.text("0123456789abcdefABCDEF-", max_size=64))
def test_submit_sm_resp(seq, message_id):
    """submit_sm_resp's message_id survives both ways."""
    ours = SubmitSmResp(seq, message_id=message_id)
    theirs = smpplib_parse(encode(ours))
    assert (theirs.sequence, s(theirs.message_id)) == (seq, message_id)
    generated = smpplib_generate("submit_sm_resp", sequence=seq, message_id=message_id)
    assert decode(generated) == ours


def test_submit_sm_resp_error_from_smpplib():
    """smpplib's throttling error response decodes with its status."""
    generated = smpplib_generate("submit_sm_resp", sequence=5, status=CommandStatus.ESME_RTHROTTLED)
    pdu = decode(generated)
    assert pdu.command_status is CommandStatus.ESME_RTHROTTLED
    assert pdu.sequence_number == 5


# -- deliver_sm ----------------------------------------------------------------------------


@CROSSCHECK
@given(
    seq=sequences,
    source_addr=digits,
    receipt_id=st.text("0123456789ABCDEF", min_size=1, max_size=20),
    message_state=st.integers(1, 8),
    sm=st.binary(max_size=254),
)
def test_deliver_sm_receipt(seq, source_addr, receipt_id, message_state, sm):
    """deliver_sm with receipted_message_id and message_state TLVs, both directions."""
    ours = DeliverSm(
        seq,
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=source_addr,
        destination_addr="12123",
        esm_class=0x04,
        short_message=sm,
        # smpplib emits the TLVs in its own fixed order: message_state before receipted_message_id
        tlvs=(
            Tlv.uint8(TlvTag.MESSAGE_STATE, message_state),
            Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, receipt_id),
        ),
    )
    theirs = smpplib_parse(encode(ours))
    assert theirs.command == "deliver_sm" and theirs.sequence == seq
    assert (s(theirs.source_addr), s(theirs.destination_addr)) == (source_addr, "12123")
    assert theirs.esm_class == 0x04
    assert (theirs.short_message or b"") == sm
    assert theirs.message_state == message_state
    assert s(theirs.receipted_message_id) == receipt_id

    generated = smpplib_generate(
        "deliver_sm",
        sequence=seq,
        service_type="",
        source_addr_ton=1,
        source_addr_npi=1,
        source_addr=source_addr,
        dest_addr_ton=0,
        dest_addr_npi=0,
        destination_addr="12123",
        esm_class=0x04,
        protocol_id=0,
        priority_flag=0,
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=0,
        replace_if_present_flag=0,
        data_coding=0,
        sm_default_msg_id=0,
        short_message=sm,
        message_state=message_state,
        receipted_message_id=receipt_id,
    )
    assert decode(generated) == ours


# -- header-only PDUs --------------------------------------------------------------------


@CROSSCHECK
@given(seq=sequences)
def test_enquire_link_and_unbind(seq):
    """enquire_link and unbind are header-only on both sides."""
    for ours, name in ((EnquireLink(seq), "enquire_link"), (Unbind(seq), "unbind")):
        theirs = smpplib_parse(encode(ours))
        assert (theirs.command, theirs.sequence, theirs.status) == (name, seq, 0)
        assert decode(smpplib_generate(name, sequence=seq)) == ours
