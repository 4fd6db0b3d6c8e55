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

import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smpp.pdu import (
    PDU_CLASSES,
    CommandId,
    CommandStatus,
    Pdu,
    PduDecodeError,
    decode,
    encode,
    is_response,
)

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
