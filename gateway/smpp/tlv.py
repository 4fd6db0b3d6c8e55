"""SMPP 3.4 optional parameters (TLVs): tags, one value type, and the stream codec.

Theory of operation
-------------------
SMPP 3.4 section 5.3 appends optional parameters to a PDU body as a sequence of
Tag (u16), Length (u16), Value (Length octets), all big-endian.  We keep them as an
ordered ``tuple[Tlv, ...]`` of raw values rather than a dict of decoded fields:

* order and duplicates survive a decode/encode round trip, so a relay or simulator
  re-encodes exactly what it received;
* unknown tags (vendor tags 0x1400-0x3FFF, SMPP 5.0 tags) are kept unchanged, as
  section 3.2.3 asks an ESME/SMSC to ignore, not reject, what it does not know;
* interpretation is lazy: the helpers ``tlv_int``, ``tlv_bytes`` and ``tlv_cstring``
  read the one or two TLVs a caller cares about.

Decoding does not check per-tag lengths (e.g. that ``sar_msg_ref_num`` is 2 octets);
``tlv_int`` reads any 1..8 octet big-endian integer.  Carriers get these sizes wrong
more often than one would hope and rejecting the whole PDU loses a receipt.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable

from gateway.records import hot_record

__all__ = [
    "Tlv",
    "TlvStreamError",
    "TlvTag",
    "decode_tlvs",
    "encode_tlvs",
    "tlv_bytes",
    "tlv_cstring",
    "tlv_int",
]


class TlvTag(enum.IntEnum):
    """Every optional parameter tag of SMPP 3.4 (section 5.3.2, table 5-9)."""

    DEST_ADDR_SUBUNIT = 0x0005
    DEST_NETWORK_TYPE = 0x0006
    DEST_BEARER_TYPE = 0x0007
    DEST_TELEMATICS_ID = 0x0008
    SOURCE_ADDR_SUBUNIT = 0x000D
    SOURCE_NETWORK_TYPE = 0x000E
    SOURCE_BEARER_TYPE = 0x000F
    SOURCE_TELEMATICS_ID = 0x0010
    QOS_TIME_TO_LIVE = 0x0017
    PAYLOAD_TYPE = 0x0019
    ADDITIONAL_STATUS_INFO_TEXT = 0x001D
    RECEIPTED_MESSAGE_ID = 0x001E
    MS_MSG_WAIT_FACILITIES = 0x0030
    PRIVACY_INDICATOR = 0x0201
    SOURCE_SUBADDRESS = 0x0202
    DEST_SUBADDRESS = 0x0203
    USER_MESSAGE_REFERENCE = 0x0204
    USER_RESPONSE_CODE = 0x0205
    SOURCE_PORT = 0x020A
    DESTINATION_PORT = 0x020B
    DEST_PORT = 0x020B  # alias: the spec's table says destination_port, many tools say dest_port
    SAR_MSG_REF_NUM = 0x020C
    LANGUAGE_INDICATOR = 0x020D
    SAR_TOTAL_SEGMENTS = 0x020E
    SAR_SEGMENT_SEQNUM = 0x020F
    SC_INTERFACE_VERSION = 0x0210
    CALLBACK_NUM_PRES_IND = 0x0302
    CALLBACK_NUM_ATAG = 0x0303
    NUMBER_OF_MESSAGES = 0x0304
    CALLBACK_NUM = 0x0381
    DPF_RESULT = 0x0420
    SET_DPF = 0x0421
    MS_AVAILABILITY_STATUS = 0x0422
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    DELIVERY_FAILURE_REASON = 0x0425
    MORE_MESSAGES_TO_SEND = 0x0426
    MESSAGE_STATE = 0x0427
    USSD_SERVICE_OP = 0x0501
    DISPLAY_TIME = 0x1201
    SMS_SIGNAL = 0x1203
    MS_VALIDITY = 0x1204
    ALERT_ON_MESSAGE_DELIVERY = 0x130C
    ITS_REPLY_TYPE = 0x1380
    ITS_SESSION_INFO = 0x1383


_KNOWN_TAGS = TlvTag._value2member_map_
_TLV_HEADER = struct.Struct(">HH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

MAX_TLV_VALUE_OCTETS = 0xFFFF  # the Length field is a u16


def _pack_int(s: struct.Struct, v: int) -> bytes:
    try:
        return s.pack(v)
    except struct.error as e:
        raise ValueError(f"{v!r} does not fit in {s.size} octet(s): {e}") from None


class TlvStreamError(ValueError):
    """The octets after the mandatory parameters are not a valid TLV sequence."""


@hot_record(slots=True)
class Tlv:
    """One optional parameter: a tag (``TlvTag`` when known, else a plain int) and raw value."""

    tag: int
    value: bytes

    @classmethod
    def uint8(cls, tag: int, v: int) -> Tlv:
        """A 1-octet integer TLV (e.g. ``message_state``, ``sar_total_segments``)."""
        return cls(tag, _pack_int(_U8, v))

    @classmethod
    def uint16(cls, tag: int, v: int) -> Tlv:
        """A 2-octet big-endian integer TLV (e.g. ``sar_msg_ref_num``, ``source_port``)."""
        return cls(tag, _pack_int(_U16, v))

    @classmethod
    def uint32(cls, tag: int, v: int) -> Tlv:
        """A 4-octet big-endian integer TLV (e.g. ``qos_time_to_live``)."""
        return cls(tag, _pack_int(_U32, v))

    @classmethod
    def cstring(cls, tag: int, s: str) -> Tlv:
        """A NUL-terminated latin-1 string TLV (e.g. ``receipted_message_id``)."""
        return cls(tag, s.encode("latin-1") + b"\0")


def encode_tlvs(tlvs: Iterable[Tlv]) -> bytes:
    """Serialise TLVs in the given order.

    Raises ValueError if a value is longer than 65535 octets.
    """
    pack = _TLV_HEADER.pack
    out = []
    for t in tlvs:
        value = t.value
        n = len(value)
        if n > MAX_TLV_VALUE_OCTETS:
            raise ValueError(f"TLV 0x{int(t.tag):04x} value is {n} octets, max 65535")
        out.append(pack(t.tag, n))
        out.append(value)
    return b"".join(out)


def decode_tlvs(data: bytes, pos: int, end: int) -> tuple[Tlv, ...]:
    """Parse ``data[pos:end]`` as a TLV sequence.

    Raises TlvStreamError if a TLV header or value runs past ``end``.
    """
    if pos == end:
        return ()
    unpack_from = _TLV_HEADER.unpack_from
    known = _KNOWN_TAGS
    out = []
    while pos < end:
        if end - pos < 4:
            raise TlvStreamError(f"{end - pos} stray octets where a TLV header was expected")
        tag, length = unpack_from(data, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise TlvStreamError(f"TLV 0x{tag:04x} length {length} runs past the PDU")
        out.append(Tlv(known.get(tag, tag), bytes(data[pos:stop])))  # type: ignore[arg-type]
        pos = stop
    return tuple(out)


def tlv_bytes(tlvs: Iterable[Tlv], tag: int) -> bytes | None:
    """The raw value of the first TLV with ``tag``, or None if absent."""
    for t in tlvs:
        if t.tag == tag:
            return t.value
    return None


def tlv_int(tlvs: Iterable[Tlv], tag: int) -> int | None:
    """The first TLV with ``tag`` read as a big-endian unsigned integer, or None if absent.

    Any value length is accepted (an empty value reads as 0); see the module docstring.
    """
    value = tlv_bytes(tlvs, tag)
    if value is None:
        return None
    return int.from_bytes(value, "big")


def tlv_cstring(tlvs: Iterable[Tlv], tag: int) -> str | None:
    """The first TLV with ``tag`` as a latin-1 string, up to the first NUL; None if absent.

    A missing terminating NUL is tolerated (some SMSCs omit it in receipted_message_id).
    """
    value = tlv_bytes(tlvs, tag)
    if value is None:
        return None
    nul = value.find(b"\0")
    if nul >= 0:
        value = value[:nul]
    return value.decode("latin-1")
