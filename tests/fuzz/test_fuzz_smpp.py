"""Fuzzing the SMPP codec and session with hostile bytes.

The decoder is checked against a *reference* written here from SMPP v3.4 section 4 (the
body layout of every PDU) and the codec's documented status hints, not against its own
encoder: PDUs are built as raw octets from the spec table below, then truncated, mutated
and re-framed, and for every input ``decode`` must agree with the reference on success
versus failure and on the exact ``command_status`` it asks us to answer with.

The session is fed random streams (spec-built PDUs, mutated and truncated ones, unknown
command ids, garbage, absurd command_length values) in random chunkings.  Every complete
frame must get what the module docstring of gateway.smpp.session promises: the codec's
status in a generic_nack or the request's own response, a close for a command_length
outside 16..max_pdu_bytes, and the same bytes and events however the stream is cut.
"""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.smpp.pdu import (
    PDU_CLASSES,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    BindTransmitterResp,
    CommandId,
    CommandStatus,
    DeliverSm,
    EnquireLink,
    GenericNack,
    Outbind,
    Pdu,
    PduDecodeError,
    SubmitSm,
    decode,
    encode,
    is_response,
)
from gateway.smpp.session import (
    BindFailed,
    BindSucceeded,
    PduReceived,
    PeerProtocolError,
    RequestAbandoned,
    ResponseReceived,
    Role,
    SessionClosed,
    SessionState,
    SmppSession,
    UnbindRequested,
)
from tests.smpp import decode_all

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

S = CommandStatus
C = CommandId
_HEADER = struct.Struct(">IIII")


# -- the reference: SMPP 3.4 section 4 body layouts, written out from the spec ------------------


@dataclass(frozen=True)
class CStr:
    """C-Octet string of at most ``max_octets`` including the NUL; over-long -> ``status``."""

    max_octets: int
    status: CommandStatus


class U8:
    """One-octet integer."""


class ShortMessage:
    """sm_length (1 octet, 0..254) then that many octets (section 5.2.22)."""


class DestAddresses:
    """number_of_dests (<= 254), then per destination a dest_flag: 1 = SME address
    (ton, npi, destination_addr C21), 2 = distribution list (dl_name C21) (section 4.5.1)."""


class UnsuccessSmes:
    """no_unsuccess, then per entry ton, npi, destination_addr C21, error_status_code u32."""


Field = CStr | type[U8] | type[ShortMessage] | type[DestAddresses] | type[UnsuccessSmes]

_BIND = (
    CStr(16, S.ESME_RINVSYSID),  # system_id
    CStr(9, S.ESME_RINVPASWD),  # password
    CStr(13, S.ESME_RINVSYSTYP),  # system_type
    U8,  # interface_version
    U8,  # addr_ton
    U8,  # addr_npi
    CStr(41, S.ESME_RINVPARLEN),  # address_range (no dedicated status in table 5-2)
)
_SM_TAIL = (
    U8,  # esm_class
    U8,  # protocol_id
    U8,  # priority_flag
    CStr(17, S.ESME_RINVSCHED),  # schedule_delivery_time
    CStr(17, S.ESME_RINVEXPIRY),  # validity_period
    U8,  # registered_delivery
    U8,  # replace_if_present_flag
    U8,  # data_coding
    U8,  # sm_default_msg_id
    ShortMessage,
)
_SM = (
    CStr(6, S.ESME_RINVSERTYP),  # service_type
    U8,
    U8,
    CStr(21, S.ESME_RINVSRCADR),  # source_addr
    U8,
    U8,
    CStr(21, S.ESME_RINVDSTADR),  # destination_addr
    *_SM_TAIL,
)
_MESSAGE_ID = (CStr(65, S.ESME_RINVMSGID),)

# command_id -> (mandatory parameters, optional parameters allowed).  TLVs are allowed
# where 3.4 has them and, as the codec documents, on bind_*_resp, submit_sm_resp,
# submit_multi_resp, deliver_sm_resp and data_sm_resp.
SPEC: dict[CommandId, tuple[tuple[Field, ...], bool]] = {
    C.GENERIC_NACK: ((), False),
    C.BIND_RECEIVER: (_BIND, False),
    C.BIND_TRANSMITTER: (_BIND, False),
    C.BIND_TRANSCEIVER: (_BIND, False),
    C.BIND_RECEIVER_RESP: ((CStr(16, S.ESME_RINVSYSID),), True),
    C.BIND_TRANSMITTER_RESP: ((CStr(16, S.ESME_RINVSYSID),), True),
    C.BIND_TRANSCEIVER_RESP: ((CStr(16, S.ESME_RINVSYSID),), True),
    C.OUTBIND: ((CStr(16, S.ESME_RINVSYSID), CStr(9, S.ESME_RINVPASWD)), False),
    C.UNBIND: ((), False),
    C.UNBIND_RESP: ((), False),
    C.ENQUIRE_LINK: ((), False),
    C.ENQUIRE_LINK_RESP: ((), False),
    C.SUBMIT_SM: (_SM, True),
    C.SUBMIT_SM_RESP: (_MESSAGE_ID, True),
    C.DELIVER_SM: (_SM, True),
    C.DELIVER_SM_RESP: (_MESSAGE_ID, True),
    C.SUBMIT_MULTI: (
        (CStr(6, S.ESME_RINVSERTYP), U8, U8, CStr(21, S.ESME_RINVSRCADR), DestAddresses, *_SM_TAIL),
        True,
    ),
    C.SUBMIT_MULTI_RESP: ((CStr(65, S.ESME_RINVMSGID), UnsuccessSmes), True),
    C.DATA_SM: (
        (
            CStr(6, S.ESME_RINVSERTYP),
            U8,
            U8,
            CStr(65, S.ESME_RINVSRCADR),
            U8,
            U8,
            CStr(65, S.ESME_RINVDSTADR),
            U8,  # esm_class
            U8,  # registered_delivery
            U8,  # data_coding
        ),
        True,
    ),
    C.DATA_SM_RESP: (_MESSAGE_ID, True),
    C.QUERY_SM: ((CStr(65, S.ESME_RINVMSGID), U8, U8, CStr(21, S.ESME_RINVSRCADR)), False),
    C.QUERY_SM_RESP: ((CStr(65, S.ESME_RINVMSGID), CStr(17, S.ESME_RINVPARLEN), U8, U8), False),
    C.CANCEL_SM: (
        (
            CStr(6, S.ESME_RINVSERTYP),
            CStr(65, S.ESME_RINVMSGID),
            U8,
            U8,
            CStr(21, S.ESME_RINVSRCADR),
            U8,
            U8,
            CStr(21, S.ESME_RINVDSTADR),
        ),
        False,
    ),
    C.CANCEL_SM_RESP: ((), False),
    C.REPLACE_SM: (
        (
            CStr(65, S.ESME_RINVMSGID),
            U8,
            U8,
            CStr(21, S.ESME_RINVSRCADR),
            CStr(17, S.ESME_RINVSCHED),
            CStr(17, S.ESME_RINVEXPIRY),
            U8,  # registered_delivery
            U8,  # sm_default_msg_id
            ShortMessage,
        ),
        False,
    ),
    C.REPLACE_SM_RESP: ((), False),
    C.ALERT_NOTIFICATION: (
        (U8, U8, CStr(65, S.ESME_RINVSRCADR), U8, U8, CStr(65, S.ESME_RINVDSTADR)),
        True,
    ),
}


class _Refused(Exception):
    def __init__(self, status: CommandStatus) -> None:
        self.status = status


def _need(body: bytes, pos: int, octets: int) -> None:
    if pos + octets > len(body):
        raise _Refused(S.ESME_RINVCMDLEN)


def _cstring(body: bytes, pos: int, field: CStr) -> int:
    nul = body.find(b"\0", pos)
    if nul < 0:
        raise _Refused(S.ESME_RINVCMDLEN)  # no NUL: the string runs past the PDU
    if nul - pos + 1 > field.max_octets:
        raise _Refused(field.status)
    return nul + 1


def _reference_body(body: bytes, fields: tuple[Field, ...], tlvs: bool) -> None:
    """Walk ``body`` as the spec lays it out; raise _Refused(status) at the first fault."""
    pos = 0
    for field in fields:
        if isinstance(field, CStr):
            pos = _cstring(body, pos, field)
        elif field is U8:
            _need(body, pos, 1)
            pos += 1
        elif field is ShortMessage:
            _need(body, pos, 1)
            sm_length = body[pos]
            if sm_length > 254:
                raise _Refused(S.ESME_RINVMSGLEN)
            _need(body, pos + 1, sm_length)
            pos += 1 + sm_length
        elif field is DestAddresses:
            _need(body, pos, 1)
            count = body[pos]
            pos += 1
            if count > 254:
                raise _Refused(S.ESME_RINVNUMDESTS)
            for _ in range(count):
                _need(body, pos, 1)
                if body[pos] == 1:
                    _need(body, pos, 3)
                    pos = _cstring(body, pos + 3, CStr(21, S.ESME_RINVDSTADR))
                elif body[pos] == 2:
                    pos = _cstring(body, pos + 1, CStr(21, S.ESME_RINVDLNAME))
                else:
                    raise _Refused(S.ESME_RINVDESTFLAG)
        elif field is UnsuccessSmes:
            _need(body, pos, 1)
            count = body[pos]
            pos += 1
            for _ in range(count):
                _need(body, pos, 2)
                pos = _cstring(body, pos + 2, CStr(21, S.ESME_RINVDSTADR))
                _need(body, pos, 4)
                pos += 4
        else:  # pragma: no cover - a new field kind needs a branch here
            raise AssertionError(field)
    if not tlvs:
        if pos != len(body):
            raise _Refused(S.ESME_RINVCMDLEN)  # octets after the last mandatory parameter
        return
    while pos < len(body):  # section 3.2.3 / 5.3: Tag u16, Length u16, Value
        if len(body) - pos < 4:
            raise _Refused(S.ESME_RINVOPTPARSTREAM)
        (length,) = struct.unpack_from(">H", body, pos + 2)
        pos += 4 + length
        if pos > len(body):
            raise _Refused(S.ESME_RINVOPTPARSTREAM)


def reference_status(data: bytes) -> CommandStatus | None:
    """What the codec must answer ``data`` with: None if it is a valid PDU, else the status."""
    if len(data) < 16:
        return S.ESME_RINVCMDLEN
    length, command_id, status, _ = _HEADER.unpack_from(data)
    if length != len(data):
        return S.ESME_RINVCMDLEN
    if command_id not in SPEC:
        return S.ESME_RINVCMDID
    fields, tlvs = SPEC[CommandId(command_id)]
    body = data[16:]
    if not body and status != 0 and is_response(command_id):
        return None  # an error response without a body (the codec's documented leniency)
    try:
        _reference_body(body, fields, tlvs)
    except _Refused as refused:
        return refused.status
    return None


def test_reference_covers_every_command_id() -> None:
    """The spec table here names exactly the command ids the codec knows."""
    assert set(SPEC) == set(PDU_CLASSES)


# -- building valid PDUs from the spec, as octets ----------------------------------------------


def _cstring_octets(field: CStr) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=field.max_octets - 1).map(lambda b: b.replace(b"\0", b"A") + b"\0")


_dest_address = st.one_of(
    st.tuples(st.binary(min_size=2, max_size=2), _cstring_octets(CStr(21, S.ESME_RINVDSTADR))).map(
        lambda t: b"\x01" + t[0] + t[1]
    ),
    _cstring_octets(CStr(21, S.ESME_RINVDLNAME)).map(lambda b: b"\x02" + b),
)
_unsuccess_sme = st.tuples(
    st.binary(min_size=2, max_size=2),
    _cstring_octets(CStr(21, S.ESME_RINVDSTADR)),
    st.binary(min_size=4, max_size=4),
).map(lambda t: b"".join(t))
_tlv = st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=24)).map(
    lambda t: struct.pack(">HH", t[0], len(t[1])) + t[1]
)


def _field_octets(field: Field) -> st.SearchStrategy[bytes]:
    if isinstance(field, CStr):
        return _cstring_octets(field)
    if field is U8:
        return st.binary(min_size=1, max_size=1)
    if field is ShortMessage:
        return st.binary(max_size=254).map(lambda b: bytes([len(b)]) + b)
    if field is DestAddresses:
        return st.lists(_dest_address, max_size=4).map(lambda ds: bytes([len(ds)]) + b"".join(ds))
    if field is UnsuccessSmes:
        return st.lists(_unsuccess_sme, max_size=4).map(lambda us: bytes([len(us)]) + b"".join(us))
    raise AssertionError(field)  # pragma: no cover


def body_octets(command_id: CommandId) -> st.SearchStrategy[bytes]:
    """A body that the spec accepts for ``command_id``."""
    fields, tlvs = SPEC[command_id]
    parts = [_field_octets(f) for f in fields]
    if tlvs:
        parts.append(st.lists(_tlv, max_size=3).map(b"".join))
    return st.tuples(*parts).map(b"".join)


def frame(command_id: int, status: int, sequence_number: int, body: bytes) -> bytes:
    return _HEADER.pack(16 + len(body), command_id, status, sequence_number) + body


_statuses = st.one_of(st.sampled_from(list(CommandStatus)), st.integers(0, 2**32 - 1))


@st.composite
def spec_pdus(draw: st.DrawFn, command_ids: tuple[CommandId, ...] = tuple(SPEC)) -> bytes:
    """A valid PDU of a random type, as octets, built from the spec table (not our encoder)."""
    command_id = draw(st.sampled_from(command_ids))
    status = draw(_statuses) if is_response(command_id) else 0
    sequence_number = draw(st.integers(1, 0x7FFFFFFF))
    if is_response(command_id) and status != 0 and draw(st.booleans()):
        return frame(command_id, status, sequence_number, b"")  # bare error response
    return frame(command_id, status, sequence_number, draw(body_octets(command_id)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A spec-built PDU with a few octets overwritten, inserted or deleted; the
    command_length is usually patched to the new size so that the body is parsed."""
    data = bytearray(draw(spec_pdus()))
    for _ in range(draw(st.integers(1, 4))):
        low = draw(st.sampled_from([4] + [16] * 7))  # mostly the body; sometimes the header
        if len(data) <= low:
            data += draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(low, len(data) - 1))
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "nul", "ff", "unterminate"]))
        nuls = [i for i in range(16, len(data)) if data[i] == 0]
        if kind == "unterminate" and nuls:
            # Joining a C-Octet string to the next field makes it over-long (or unterminated).
            data[draw(st.sampled_from(nuls))] = ord("A")
        elif kind == "overwrite":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "nul":
            data[at] = 0
        else:
            data[at] = 0xFF
    if draw(st.integers(0, 9)) and len(data) >= 4:
        data[0:4] = len(data).to_bytes(4, "big")
    return bytes(data)


# -- decoder -----------------------------------------------------------------------------------


def check_decode(data: bytes) -> Pdu | None:
    """Decode ``data`` and assert the outcome the reference predicts; returns the PDU."""
    expected = reference_status(data)
    try:
        pdu = decode(data)
    except PduDecodeError as e:
        assert expected is not None, f"valid PDU refused: {e}"
        assert e.status == expected, (e.status, expected, str(e))
        assert isinstance(e.status, CommandStatus)
        if len(data) >= 16:
            _, command_id, _, sequence_number = _HEADER.unpack_from(data)
            assert (e.command_id, e.sequence_number) == (command_id, sequence_number)
        elif len(data) >= 8:
            assert e.command_id == int.from_bytes(data[4:8], "big")
        return None
    assert expected is None, f"decoded although the spec says {expected!r}: {pdu!r}"
    _, command_id, status, sequence_number = _HEADER.unpack_from(data)
    assert type(pdu) is PDU_CLASSES[command_id]
    assert (pdu.sequence_number, pdu.command_status) == (sequence_number, status)
    # What we decoded we can send again, and it reads back the same.
    wire = encode(pdu)
    assert decode(wire) == pdu
    assert wire == data or (status and is_response(command_id) and len(wire) == 16)
    return pdu


@FUZZ
@given(data=spec_pdus())
def test_spec_built_pdus_decode(data: bytes) -> None:
    """Every PDU laid out as SMPP 3.4 section 4 describes decodes, and re-encodes to the same octets."""
    assert check_decode(data) is not None


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_get_the_reference_status(data: bytes) -> None:
    """Random octets raise only PduDecodeError, with the status the spec reference names."""
    check_decode(data)


@FUZZ
@given(
    command_id=st.sampled_from(list(SPEC)),
    status=_statuses,
    sequence_number=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=300),
)
def test_known_header_random_body_gets_the_reference_status(
    command_id: CommandId, status: int, sequence_number: int, body: bytes
) -> None:
    """A well-framed header of a known command over a random body: the reference's status,
    and the header's command_id and sequence_number in the error."""
    check_decode(frame(command_id, status, sequence_number, body))


@FUZZ
@given(data=mutated())
def test_mutated_pdus_get_the_reference_status(data: bytes) -> None:
    """Valid PDUs with octets overwritten, inserted or deleted decode exactly when the
    spec allows, and otherwise name the field-specific status (RINVSRCADR, RINVMSGLEN, ...)."""
    check_decode(data)


@FUZZ
@given(data=spec_pdus(), cut=st.integers(0, 2000), patch_length=st.booleans())
def test_truncated_pdus_get_the_reference_status(data: bytes, cut: int, patch_length: bool) -> None:
    """A valid PDU cut short is ESME_RINVCMDLEN with its old command_length; with the
    command_length patched to the cut, the body is parsed and the reference decides."""
    cut = cut % len(data)
    short = bytearray(data[:cut])
    if patch_length and cut >= 4:
        short[0:4] = cut.to_bytes(4, "big")
    else:
        with pytest.raises(PduDecodeError) as e:
            decode(bytes(short))
        assert e.value.status == S.ESME_RINVCMDLEN
    check_decode(bytes(short))


def _minimal_field(field: Field) -> bytes:
    return (
        b"\0"
        if isinstance(field, CStr) or field in (ShortMessage, DestAddresses, UnsuccessSmes)
        else b"\7"
    )


_CSTRING_FIELDS = [
    (command_id, index)
    for command_id, (fields, _) in SPEC.items()
    for index, field in enumerate(fields)
    if isinstance(field, CStr)
]


@pytest.mark.parametrize(("command_id", "index"), _CSTRING_FIELDS)
def test_every_cstring_is_bounded_at_its_spec_maximum(command_id: CommandId, index: int) -> None:
    """Each C-Octet string of each PDU takes exactly its section-4 maximum (NUL included);
    one octet more is refused with that field's status, and no NUL at all is RINVCMDLEN."""
    fields, _ = SPEC[command_id]
    field = fields[index]
    assert isinstance(field, CStr)

    def body_with(value: bytes) -> bytes:
        return b"".join(value if i == index else _minimal_field(f) for i, f in enumerate(fields))

    longest = frame(command_id, 0, 3, body_with(b"7" * (field.max_octets - 1) + b"\0"))
    over = frame(command_id, 0, 3, body_with(b"7" * field.max_octets + b"\0"))
    # Every minimal field is one octet, so the body stops inside the unterminated string.
    unterminated = frame(command_id, 0, 3, body_with(b"777")[: index + 3])
    assert check_decode(longest) is not None
    with pytest.raises(PduDecodeError) as e:
        decode(over)
    assert e.value.status == field.status
    check_decode(over)
    with pytest.raises(PduDecodeError) as e:
        decode(unterminated)
    assert e.value.status == S.ESME_RINVCMDLEN


@settings(max_examples=100, deadline=None)
@given(
    command_id=st.integers(0, 2**32 - 1).filter(lambda c: c not in SPEC),
    body=st.binary(max_size=64),
)
def test_unknown_command_ids_are_rinvcmdid_whatever_the_body(command_id: int, body: bytes) -> None:
    """A command_id outside table 5-1 is ESME_RINVCMDID whatever follows the header."""
    with pytest.raises(PduDecodeError) as e:
        decode(frame(command_id, 0, 9, body))
    assert (e.value.status, e.value.command_id, e.value.sequence_number) == (
        S.ESME_RINVCMDID,
        command_id,
        9,
    )


def _peak_allocation(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _decode_quietly(data: bytes) -> None:
    try:
        decode(data)
    except PduDecodeError:
        pass


@pytest.mark.parametrize("announced", [17, 65_537, 2**20, 2**31, 2**32 - 1])
def test_oversized_command_length_allocates_nothing_for_it(announced: int) -> None:
    """A command_length far above the octets given is ESME_RINVCMDLEN, and decode does not
    allocate memory in proportion to the announced length."""
    data = _HEADER.pack(announced, C.SUBMIT_SM, 0, 5)
    with pytest.raises(PduDecodeError) as e:
        decode(data)
    assert e.value.status == S.ESME_RINVCMDLEN
    assert _peak_allocation(lambda: _decode_quietly(data)) < 16_384


# The worst bodies for memory per octet: every TLV empty (4 octets -> one Tlv object), every
# submit_multi destination a one-octet-name distribution list, every unsuccess_sme minimal.
_MAX_PDU_BYTES = 65_536
_WORST_CASES = {
    "empty tlvs": frame(
        C.DATA_SM_RESP, 0, 1, b"\0" + b"\x14\x01\x00\x00" * ((_MAX_PDU_BYTES - 17) // 4)
    ),
    "254 distribution lists": frame(
        C.SUBMIT_MULTI,
        0,
        1,
        b"\0\0\0\0" + bytes([254]) + b"\x02\0" * 254 + b"\0" * 10,
    ),
    "255 unsuccess_smes": frame(C.SUBMIT_MULTI_RESP, 0, 1, b"\0\xff" + b"\0\0\0\0\0\0\0" * 255),
    "64 KiB of no NUL": frame(C.SUBMIT_SM, 0, 1, b"A" * (_MAX_PDU_BYTES - 16)),
}


@pytest.mark.parametrize("name", list(_WORST_CASES))
def test_decode_memory_is_bounded_by_a_small_multiple_of_the_input(name: str) -> None:
    """Decoding the PDUs that make the most objects per octet holds at most ~40 bytes of
    Python objects per input octet (a 64 KiB PDU -> under 3 MiB), so max_pdu_bytes bounds
    what one PDU can cost."""
    data = _WORST_CASES[name]
    check_decode(data)
    peak = _peak_allocation(lambda: _decode_quietly(data))
    assert peak < 40 * len(data) + 65_536, (name, len(data), peak)


# -- session -----------------------------------------------------------------------------------

_NO_RESPONSE = (C.OUTBIND, C.ALERT_NOTIFICATION)


@dataclass(frozen=True)
class Scenario:
    """A session brought into some state through real PDUs, and the sequence numbers of
    the requests it has outstanding (so the stream can answer them)."""

    name: str
    session: SmppSession
    outstanding: tuple[tuple[int, CommandId], ...]


def _bind_smsc(session: SmppSession, bind: type[Pdu]) -> None:
    [event] = session.receive_data(encode(bind(7, system_id="gw", password="pw")), 0.0)
    assert isinstance(event, PduReceived)
    session.respond(event.pdu, system_id="smsc")


def _bind_esme(session: SmppSession, bind: type[Pdu]) -> None:
    seq = session.send(bind(0, system_id="gw", password="pw"), 0.0)
    response = PDU_CLASSES[bind.command_id | 0x80000000](seq, system_id="smsc")
    [event] = session.receive_data(encode(response), 0.0)
    assert isinstance(event, BindSucceeded)


def make_scenario(name: str, max_pdu_bytes: int) -> Scenario:
    options: dict[str, Any] = {
        "max_pdu_bytes": max_pdu_bytes,
        "window": 4,
        "response_timeout_seconds": 10.0,
        "enquire_link_interval_seconds": 30.0,
    }
    sent: list[tuple[int, CommandId]] = []
    if name == "smsc open":
        session = SmppSession(Role.SMSC, **options)
    elif name == "smsc listener (outbind accepted)":
        session = SmppSession(Role.SMSC, accept_outbind=True, **options)
    elif name == "smsc bound trx":
        session = SmppSession(Role.SMSC, **options)
        _bind_smsc(session, BindTransceiver)
        for _ in range(2):
            sent.append((session.send(DeliverSm(0, short_message=b"x"), 0.0), C.DELIVER_SM))
        sent.append((session.send(EnquireLink(0), 0.0), C.ENQUIRE_LINK))
    elif name in ("esme binding tx", "esme binding rx", "esme binding trx"):
        bind = {"tx": BindTransmitter, "rx": BindReceiver, "trx": BindTransceiver}[
            name.rsplit(" ", 1)[1]
        ]
        session = SmppSession(Role.ESME, **options)
        sent.append((session.send(bind(0, system_id="gw", password="pw"), 0.0), bind.command_id))
    elif name == "esme bound trx":
        session = SmppSession(Role.ESME, **options)
        _bind_esme(session, BindTransceiver)
        for _ in range(3):
            sent.append((session.send(SubmitSm(0, short_message=b"x"), 0.0), C.SUBMIT_SM))
        sent.append((session.send(EnquireLink(0), 0.0), C.ENQUIRE_LINK))
    else:  # pragma: no cover
        raise AssertionError(name)
    session.data_to_send()
    return Scenario(name, session, tuple(sent))


SCENARIOS = (
    "smsc open",
    "smsc listener (outbind accepted)",
    "smsc bound trx",
    "esme binding tx",
    "esme binding rx",
    "esme binding trx",
    "esme bound trx",
)

# The commands that move a session: they make up most of a protocol-shaped stream.
_PROTOCOL_COMMANDS = (
    C.BIND_TRANSMITTER,
    C.BIND_RECEIVER,
    C.BIND_TRANSCEIVER,
    C.OUTBIND,
    C.UNBIND,
    C.ENQUIRE_LINK,
    C.SUBMIT_SM,
    C.DELIVER_SM,
    C.DATA_SM,
    C.ALERT_NOTIFICATION,
    C.GENERIC_NACK,
)


@st.composite
def answers(draw: st.DrawFn, outstanding: tuple[tuple[int, CommandId], ...]) -> bytes:
    """A response (right type, wrong type or generic_nack) to one of our outstanding requests."""
    seq, request = draw(st.sampled_from(outstanding))
    command_id = draw(
        st.sampled_from([CommandId(request | 0x80000000)] * 3 + [C.GENERIC_NACK, C.SUBMIT_SM_RESP])
    )
    status = draw(st.one_of(st.just(0), _statuses))
    body = draw(body_octets(command_id)) if status == 0 or draw(st.booleans()) else b""
    return frame(command_id, status, seq, body)


@st.composite
def hostile_streams(draw: st.DrawFn, scenario: Scenario, max_pdu_bytes: int) -> bytes:
    """Frames of every kind, then maybe a stream-killer (absurd command_length or raw noise)."""
    kinds = [
        spec_pdus(_PROTOCOL_COMMANDS),
        spec_pdus(_PROTOCOL_COMMANDS),
        spec_pdus(),
        mutated(),
        spec_pdus()
        .map(lambda d: d[:-1] if len(d) > 16 else d + b"\0")
        .map(
            lambda d: len(d).to_bytes(4, "big") + d[4:]  # one octet short or long, re-framed
        ),
        st.tuples(
            st.integers(0, 2**32 - 1).filter(lambda c: c not in SPEC),
            st.binary(max_size=40),
        ).map(lambda t: frame(t[0], 0, 0x1234, t[1])),
    ]
    if scenario.outstanding:
        kinds += [answers(scenario.outstanding)] * 2
    frames = draw(st.lists(st.one_of(kinds), max_size=12))
    ending = draw(
        st.sampled_from(["none", "none", "absurd length", "noise", "oversized pdu", "partial"])
    )
    if ending == "absurd length":
        length = draw(st.one_of(st.integers(0, 15), st.integers(max_pdu_bytes + 1, 2**32 - 1)))
        frames.append(length.to_bytes(4, "big") + draw(st.binary(max_size=30)))
    elif ending == "noise":
        frames.append(draw(st.binary(min_size=1, max_size=40)))
    elif ending == "oversized pdu":
        frames.append(frame(C.SUBMIT_SM, 0, 0x4242, b"\0" * (max_pdu_bytes - 15)))
    elif ending == "partial":
        frames.append(draw(spec_pdus())[: draw(st.integers(1, 15))])
    return b"".join(frames)


def split_frames(data: bytes, max_pdu_bytes: int) -> tuple[list[bytes], bytes | None, bytes]:
    """How a conforming session frames ``data``: whole frames, then either the octets that
    hold an out-of-range command_length (the session must nack and close there) or None,
    and the incomplete tail it must keep buffered."""
    pos, frames = 0, []
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if length < 16 or length > max_pdu_bytes:
            return frames, data[pos:], b""
        if len(data) - pos < length:
            break
        frames.append(data[pos : pos + length])
        pos += length
    return frames, None, data[pos:]


def _summary(pdu: Pdu) -> tuple[int, int, int]:
    return (pdu.command_id, pdu.command_status, pdu.sequence_number)


def check_frame(
    frame_octets: bytes, events: list[Any], sent: list[Pdu], pdu_in: Pdu | None
) -> None:
    """What the session must do with one whole, in-range frame."""
    _, command_id, _, seq = _HEADER.unpack_from(frame_octets)
    expected_status = reference_status(frame_octets)
    if expected_status is not None:
        # Undecodable: the codec's status, in the request's own response when the request
        # has one (section 5.1.3), else in a generic_nack.
        if command_id in SPEC and not is_response(command_id) and command_id not in _NO_RESPONSE:
            answer = (command_id | 0x80000000, expected_status, seq)
        else:
            answer = (C.GENERIC_NACK, expected_status, seq)
        assert [_summary(p) for p in sent] == [answer]
        assert len(events) == 1 and isinstance(events[0], PeerProtocolError)
        assert (events[0].status, events[0].sequence_number, events[0].command_id) == (
            expected_status,
            seq,
            command_id,
        )
        return
    assert pdu_in is not None
    if is_response(command_id):
        assert sent == [], "a response is never answered"
        assert all(isinstance(e, ResponseReceived | BindSucceeded | BindFailed) for e in events), (
            events
        )
        assert len(events) <= 1
        return
    # A decodable request: handed to the owner, answered by the session itself, or refused.
    if not sent:
        assert events == [PduReceived(pdu_in)]
        return
    [answer_pdu] = sent
    assert answer_pdu.sequence_number == seq
    if answer_pdu.command_status == S.ESME_ROK:
        assert command_id in (C.ENQUIRE_LINK, C.UNBIND)
        assert answer_pdu.command_id == command_id | 0x80000000
        assert events == ([UnbindRequested()] if command_id == C.UNBIND else [])
    else:
        assert answer_pdu.command_status in (S.ESME_RINVBNDSTS, S.ESME_RALYBND)
        expected_id = C.GENERIC_NACK if command_id in _NO_RESPONSE else command_id | 0x80000000
        assert answer_pdu.command_id == expected_id
        assert len(events) == 1 and isinstance(events[0], PeerProtocolError)
        assert events[0].status == answer_pdu.command_status


def run_frame_by_frame(scenario: Scenario, stream: bytes) -> tuple[list[Any], bytes]:
    """Feed ``stream`` one frame at a time and check each frame's answer; returns all the
    events and bytes, for comparison with a randomly chunked run."""
    session = scenario.session
    max_pdu_bytes = session.max_pdu_bytes
    frames, killer, tail = split_frames(stream, max_pdu_bytes)
    all_events: list[Any] = []
    all_sent = b""
    for frame_octets in frames:
        events = session.receive_data(frame_octets, 1.0)
        sent = session.data_to_send()
        all_events += events
        all_sent += sent
        assert session.state is not SessionState.CLOSED, events
        pdu_in = None if reference_status(frame_octets) else decode(frame_octets)
        check_frame(frame_octets, events, decode_all(sent), pdu_in)
    if killer is not None:
        events = session.receive_data(killer, 1.0)
        sent = session.data_to_send()
        all_events += events
        all_sent += sent
        # Never buffered: a generic_nack ESME_RINVCMDLEN, then the session is closed.
        seq = int.from_bytes(killer[12:16], "big") if len(killer) >= 16 else 0
        assert [_summary(p) for p in decode_all(sent)] == [
            (C.GENERIC_NACK, S.ESME_RINVCMDLEN, seq)
        ]
        assert isinstance(events[0], PeerProtocolError)
        assert events[0].status == S.ESME_RINVCMDLEN
        assert isinstance(events[1], SessionClosed)
        assert all(isinstance(e, RequestAbandoned | BindFailed) for e in events[2:])
        assert len(events) == 2 + scenario.session.outstanding_count + len(events[2:]) - (
            scenario.session.outstanding_count
        )
        assert session.state is SessionState.CLOSED
        assert session.receive_data(b"\0\0\0\x10" * 8, 2.0) == []
        assert session.data_to_send() == b""
    elif tail:
        assert session.receive_data(tail, 1.0) == []
        assert session.data_to_send() == b""
    return all_events, all_sent


def _with_nack_sequence_zero(sent: bytes, events: list[Any]) -> tuple[bytes, list[Any]]:
    """The closing generic_nack and its PeerProtocolError with sequence_number 0."""
    fixed = [
        dataclasses.replace(e, sequence_number=0)
        if isinstance(e, PeerProtocolError) and e.command_id is None
        else e
        for e in events
    ]
    return sent[:-16] + encode(GenericNack(0, S.ESME_RINVCMDLEN)), fixed


@st.composite
def session_cases(draw: st.DrawFn) -> tuple[str, int, bytes, list[int]]:
    name = draw(st.sampled_from(SCENARIOS))
    max_pdu_bytes = draw(st.sampled_from([64, 300, 65_536]))
    stream = draw(hostile_streams(make_scenario(name, max_pdu_bytes), max_pdu_bytes))
    cuts = sorted(draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=10)))
    return name, max_pdu_bytes, stream, cuts


# A known session bug (see test_outbind_while_our_bind_is_outstanding_does_not_crash):
# streams that reach it are skipped here so that this test keeps guarding everything else.
# Set to False when that test starts passing.
SKIP_OUTBIND_WHILE_BINDING = False


def _reaches_outbind_while_binding(name: str, stream: bytes, max_pdu_bytes: int) -> bool:
    frames = split_frames(stream, max_pdu_bytes)[0]
    return name.startswith("esme binding") and any(
        f[4:8] == C.OUTBIND.to_bytes(4, "big") and reference_status(f) is None for f in frames
    )


@FUZZ
@given(case=session_cases())
def test_hostile_streams_get_the_documented_answers_in_any_chunking(
    case: tuple[str, int, bytes, list[int]],
) -> None:
    """Whatever arrives, in whatever chunks: no exception; each undecodable frame gets the
    codec's status (own *_resp or generic_nack); a command_length outside 16..max_pdu_bytes
    gets generic_nack ESME_RINVCMDLEN and a close; the bytes sent and the events are the
    same as when the stream arrives frame by frame."""
    name, max_pdu_bytes, stream, cuts = case
    assume(
        not SKIP_OUTBIND_WHILE_BINDING
        or not _reaches_outbind_while_binding(name, stream, max_pdu_bytes)
    )
    expected_events, expected_sent = run_frame_by_frame(make_scenario(name, max_pdu_bytes), stream)

    session = make_scenario(name, max_pdu_bytes).session
    events: list[Any] = []
    sent = b""
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += session.receive_data(stream[start:stop], 1.0)
        sent += session.data_to_send()
    if split_frames(stream, max_pdu_bytes)[1] is not None and sent != expected_sent:
        # The session closes as soon as it has read an out-of-range command_length; when
        # the chunk held fewer than 16 octets of that header it nacks sequence_number 0.
        assert sent[-16:] == encode(GenericNack(0, S.ESME_RINVCMDLEN))
        expected_sent, expected_events = _with_nack_sequence_zero(expected_sent, expected_events)
    assert sent == expected_sent
    assert events == expected_events


def test_outbind_while_our_bind_is_outstanding_does_not_crash() -> None:
    """An SMSC that sends outbind while our bind_transmitter is outstanding, then accepts the
    bind, gets no exception out of receive_data (found by the hostile-stream fuzz test)."""
    session = SmppSession(Role.ESME)
    seq = session.send(BindTransmitter(0, system_id="gw", password="pw"), 0.0)
    session.receive_data(encode(Outbind(1, system_id="smsc")), 1.0)
    events = session.receive_data(encode(BindTransmitterResp(seq, system_id="smsc")), 2.0)
    assert session.state in (SessionState.BOUND_TX, SessionState.CLOSED) or any(
        isinstance(e, PeerProtocolError | BindFailed) for e in events
    )


def _held_after(session: SmppSession, chunks: list[bytes]) -> int:
    """Most memory the session holds between receive_data calls (outputs drained)."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        held = 0
        for chunk in chunks:
            session.receive_data(chunk, 1.0)
            session.data_to_send()
            held = max(held, tracemalloc.get_traced_memory()[0] - baseline)
        return held
    finally:
        tracemalloc.stop()


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk_size", [1_000, 50_000, 1_000_000])
def test_session_holds_at_most_one_incomplete_pdu(chunk_size: int) -> None:
    """4 MiB of largest-allowed PDUs (unknown command ids, each nacked), in chunks that
    straddle PDU boundaries: between calls the session never holds more than one
    max_pdu_bytes PDU (plus small change)."""
    max_pdu_bytes = 65_536
    one = frame(0x00001234, 0, 1, b"\xa5" * (max_pdu_bytes - 16))
    stream = one * 64
    session = make_scenario("smsc open", max_pdu_bytes).session
    held = _held_after(session, _chunks(stream, chunk_size))
    assert session.state is not SessionState.CLOSED
    assert held < max_pdu_bytes + 16_384, held


def test_absurd_command_length_is_never_buffered() -> None:
    """A 4 GiB command_length followed by megabytes of data: the session closes at the
    header and holds none of what follows."""
    session = make_scenario("smsc open", 65_536).session
    stream = _HEADER.pack(2**32 - 1, C.SUBMIT_SM, 0, 1) + b"\0" * 4_000_000
    held = _held_after(session, _chunks(stream, 1_000_000))
    assert session.state is SessionState.CLOSED
    assert held < 16_384, held


def test_one_pdu_dribbled_one_octet_at_a_time_is_delivered() -> None:
    """A submit_sm that arrives one octet per receive_data call is still one PduReceived,
    and the session holds no more than the PDU meanwhile."""
    session = make_scenario("smsc bound trx", 65_536).session
    pdu = SubmitSm(77, source_addr="12123", short_message=b"\xa5" * 254)
    wire = encode(pdu)
    events: list[Any] = []
    for i in range(len(wire)):
        events += session.receive_data(wire[i : i + 1], 1.0)
    assert events == [PduReceived(pdu)]
