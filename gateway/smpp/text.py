"""Message text for SMPP: GSM 03.38 / UCS2 encoding, splitting into parts, reassembly.

Theory of operation
-------------------
An SMS carries 140 octets of user data.  SMPP 3.4 (section 5.2.19) names the
alphabet in ``data_coding``; we send two:

* ``data_coding`` 0, the SMSC default alphabet, which we take to be GSM 03.38 (3GPP TS
  23.038 section 6.2.1): 160 septets.  Characters of the extension table (``{ } [ ] ~
  \\ | ^ €`` and form feed) are an escape (0x1B) plus a septet, so they cost 2.  SMPP
  does not say whether the SMSC expects one septet per octet ("unpacked", the usual
  case) or septets packed 8 to 7 octets as on the air interface; ``gsm7_packed`` picks.
* ``data_coding`` 8, UCS2, which we send as UTF-16-BE: 70 code units.  A character
  outside the BMP (emoji) is a surrogate pair and costs 2 units, as on a handset.

A longer text is split into parts that the handset joins again (3GPP TS 23.040
section 9.2.3.24.1), in one of four ways chosen per carrier:

``udh8``    a User Data Header in short_message, IE 0x00 with an 8-bit reference
            (6 octets: 67 UCS2 units or 153 septets per part), esm_class UDHI (0x40);
``udh16``   IE 0x08 with a 16-bit reference (7 octets: 66 units or 152 septets);
``sar``     no UDH; the SMSC builds it from the sar_msg_ref_num, sar_total_segments and
            sar_segment_seqnum TLVs (SMPP 3.4 section 5.3.2.22-24).  Same sizes as udh8,
            because that is what the SMSC will add;
``payload`` one submit_sm with an empty short_message and the whole text in the
            message_payload TLV (section 5.3.2.32); the SMSC splits.

Parts are cut on character boundaries only, so a surrogate pair or a GSM escape
sequence is never split.  A text that would need more than ``max_parts`` parts raises
``MessageTooLong``: we never silently cut a citizen's notification.

Inbound (MO, receipts, the simulator's view of our submits), ``decode_short_message``
strips a UDH and reports the concatenation IE; ``Reassembler`` joins parts (sans-IO:
time is a number passed in).  Inbound decoding never raises: a citizen's reply is
recorded even if the handset or SMSC encoded it oddly (undecodable octets become
U+FFFD, an unparseable UDH is treated as text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.records import hot_record
from gateway.smpp.pdu import DataSm, DeliverSm, SubmitSm
from gateway.smpp.tlv import Tlv, TlvTag, tlv_bytes, tlv_int

__all__ = [
    "DATA_CODING_DEFAULT",
    "DEFAULT_ALPHABETS",
    "DATA_CODING_UCS2",
    "ESM_CLASS_UDHI",
    "Concatenation",
    "ExpiredMessage",
    "MessagePart",
    "MessagePlan",
    "MessageTooLong",
    "NotGsm7Encodable",
    "Reassembler",
    "concatenation_from_tlvs",
    "decode_pdu_text",
    "decode_short_message",
    "gsm7_can_encode",
    "gsm7_decode",
    "gsm7_encode",
    "gsm7_pack",
    "gsm7_septet_count",
    "gsm7_unpack",
    "plan_message",
    "ucs2_unit_count",
]

DATA_CODING_DEFAULT: Final = 0x00  # SMSC default alphabet (GSM 03.38 here)
DATA_CODING_IA5: Final = 0x01
DATA_CODING_OCTET_UNSPECIFIED: Final = 0x02
DATA_CODING_LATIN1: Final = 0x03
DATA_CODING_BINARY: Final = 0x04
DATA_CODING_UCS2: Final = 0x08
# Not in SMPP 3.4; Chinese SMSCs use 15 for GB2312/GBK text (after CMPP's Msg_Fmt 15).
DATA_CODING_GBK: Final = 0x0F

ESM_CLASS_UDHI: Final = 0x40  # section 5.2.12: UDH Indicator

GSM7_SINGLE_SEPTETS: Final = 160
UCS2_SINGLE_UNITS: Final = 70
MAX_PAYLOAD_OCTETS: Final = 0xFFFF  # message_payload is a TLV: u16 length
MAX_PARTS: Final = 255  # the concatenation IE counts parts in one octet

Encoding = Literal["auto", "ucs2", "gsm7"]
ConcatenationMode = Literal["udh8", "udh16", "sar", "payload"]
# What data_coding 0 means inbound: GSM 03.38 per the spec, or ASCII/latin-1 as some
# Chinese SMSCs send it (read as GSM 03.38, '@' would become '¡' and '_' '§').
# What data_coding 0 ("SMSC default alphabet", section 5.2.19) means on a link: GSM 03.38
# per the spec and most SMSCs; some SMSCs and partner ESMEs put ASCII (IA5) or latin-1
# there instead, which read as GSM 03.38 turns @ $ _ into ¡ ¤ §.
DefaultAlphabet = Literal["gsm7", "ascii", "latin-1"]
DEFAULT_ALPHABETS: Final = ("gsm7", "ascii", "latin-1")

# -- GSM 03.38 ---------------------------------------------------------------------------

# 3GPP TS 23.038 section 6.2.1, septets 0x00..0x7F; 0x1B is the escape to the extension table.
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_GSM_BASIC) == 128
_GSM_ESCAPE = 0x1B
# Section 6.2.1.1, the default extension table.
_GSM_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

_ENCODE_TABLE: dict[int, str] = {
    ord(ch): chr(i) for i, ch in enumerate(_GSM_BASIC) if i != _GSM_ESCAPE
}
_ENCODE_TABLE.update({ord(ch): "\x1b" + chr(v) for ch, v in _GSM_EXTENSION.items()})
_DECODE_TABLE: dict[int, str] = {i: ch for i, ch in enumerate(_GSM_BASIC) if i != _GSM_ESCAPE}
_DECODE_EXTENSION: dict[int, str] = {v: ch for ch, v in _GSM_EXTENSION.items()}
_NOT_GSM = re.compile("[^" + re.escape("".join(chr(c) for c in _ENCODE_TABLE)) + "]")
_GSM_EXTENSION_CHARS = re.compile("[" + re.escape("".join(_GSM_EXTENSION)) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


class NotGsm7Encodable(ValueError):
    """``encoding="gsm7"`` was asked for a text with characters outside GSM 03.38."""


class MessageTooLong(ValueError):
    """The text needs more parts than allowed; ``reason`` says how many and why."""

    def __init__(self, reason: str, *, parts_needed: int, max_parts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts_needed = parts_needed
        self.max_parts = max_parts


def gsm7_can_encode(text: str) -> bool:
    """True if every character is in the GSM 03.38 default alphabet or its extension."""
    return _NOT_GSM.search(text) is None


def gsm7_septet_count(text: str) -> int:
    """Septets needed for ``text`` (extension characters count 2); text must be encodable."""
    return len(text) + len(_GSM_EXTENSION_CHARS.findall(text))


def ucs2_unit_count(text: str) -> int:
    """UTF-16 code units for ``text``: characters outside the BMP count 2."""
    return len(text) + len(_ASTRAL.findall(text))


def gsm7_encode(text: str) -> bytes:
    """GSM 03.38 septets, one per octet ("unpacked"); escapes as 0x1B + septet.

    Raises NotGsm7Encodable naming the first character that has no GSM 03.38 septet.
    """
    bad = _NOT_GSM.search(text)
    if bad is not None:
        raise NotGsm7Encodable(f"U+{ord(bad.group()):04X} at {bad.start()} is not in GSM 03.38")
    return text.translate(_ENCODE_TABLE).encode("latin-1")


def gsm7_decode(septets: bytes) -> str:
    """Text from unpacked septets (one per octet).

    An escape followed by a septet with no extension character decodes as that septet's
    basic character (23.038 section 6.2.1.1); a trailing lone escape becomes a space.
    Octets above 0x7F (not GSM) are read as their 7 low bits.
    """
    if any(b > 0x7F for b in septets):
        septets = bytes(b & 0x7F for b in septets)
    if b"\x1b" not in septets:
        return septets.decode("latin-1").translate(_DECODE_TABLE)
    out = []
    i, n = 0, len(septets)
    while i < n:
        s = septets[i]
        if s == _GSM_ESCAPE:
            if i + 1 >= n:
                out.append(" ")
                break
            nxt = septets[i + 1]
            out.append(_DECODE_EXTENSION.get(nxt) or _DECODE_TABLE.get(nxt, " "))
            i += 2
        else:
            out.append(_DECODE_TABLE[s])
            i += 1
    return "".join(out)


def gsm7_pack(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets 8-into-7 octets, least significant bit first (23.038 section 6.1.2.1.1).

    ``fill_bits`` zero bits come first, to align text after a UDH to a septet boundary.
    When 7 bits would be left over at the end, a CR septet pads them, so a receiver
    does not read the zero bits as '@'; and a wanted final CR that ends exactly on an
    octet boundary gets a second CR, so it is not taken for padding (section 6.1.2.3.1).
    """
    total_bits = fill_bits + 7 * len(septets)
    if total_bits % 8 == 1 or (total_bits % 8 == 0 and septets[-1:] == b"\r"):
        septets = septets + b"\r"
        total_bits += 7
    value = 0
    shift = fill_bits
    for s in septets:
        value |= (s & 0x7F) << shift
        shift += 7
    return value.to_bytes((total_bits + 7) // 8, "little")


def gsm7_unpack(octets: bytes, fill_bits: int = 0) -> bytes:
    """Septets (one per octet) from packed octets; inverse of ``gsm7_pack``.

    A final CR that ends exactly on an octet boundary is padding and is dropped; see
    ``gsm7_pack``.  (Encoders that pad with zero bits instead leave a trailing '@'.)
    """
    total_bits = 8 * len(octets) - fill_bits
    count = max(total_bits, 0) // 7
    value = int.from_bytes(octets, "little") >> fill_bits
    septets = bytes((value >> (7 * i)) & 0x7F for i in range(count))
    if count and total_bits == 7 * count and septets[-1] == 0x0D:
        septets = septets[:-1]
    return septets


# -- outbound: planning parts --------------------------------------------------------------


@hot_record(slots=True)
class MessagePart:
    """What one submit_sm carries; the link ORs its own esm_class mode bits in."""

    short_message: bytes
    esm_class: int
    data_coding: int
    tlvs: tuple[Tlv, ...] = ()


@hot_record(slots=True)
class MessagePlan:
    """The parts of one text, in order, all with the same ``data_coding``."""

    parts: tuple[MessagePart, ...]
    data_coding: int
    encoding: Literal["gsm7", "ucs2"]
    concatenation: ConcatenationMode | None  # None: a single part

    @property
    def parts_count(self) -> int:
        return len(self.parts)


def _per_part_limit(encoding: str, concatenation: str) -> int:
    if encoding == "ucs2":
        return 66 if concatenation == "udh16" else 67
    return 152 if concatenation == "udh16" else 153


def _split(text: str, limit: int, cost_pattern: re.Pattern[str]) -> list[str]:
    """Cut ``text`` into chunks of at most ``limit`` units; ``cost_pattern`` matches the
    characters that cost 2 units (surrogate pairs, GSM escapes) and are never cut."""
    if cost_pattern.search(text) is None:  # fast path: every character costs 1
        return [text[i : i + limit] for i in range(0, len(text), limit)]
    chunks: list[str] = []
    start, used = 0, 0
    for i, ch in enumerate(text):
        cost = 2 if cost_pattern.match(ch) else 1
        if used + cost > limit:
            chunks.append(text[start:i])
            start, used = i, 0
        used += cost
    chunks.append(text[start:])
    return chunks


def plan_message(
    text: str,
    *,
    encoding: Encoding = "auto",
    gsm7_packed: bool = False,
    concatenation: ConcatenationMode = "udh8",
    max_parts: int = MAX_PARTS,
    reference: int | None = None,
) -> MessagePlan:
    """Encode ``text`` and split it into submit_sm parts.

    Args:
        text: the whole message.
        encoding: "gsm7" (data_coding 0), "ucs2" (data_coding 8), or "auto": gsm7 when
            every character is in GSM 03.38, else ucs2.
        gsm7_packed: pack GSM septets 8-into-7 octets (for SMSCs that want air-interface
            format with data_coding 0); default one septet per octet.
        concatenation: how parts are linked, see the module docstring.
        max_parts: refuse texts needing more parts than this (1..255).
        reference: the concatenation reference shared by all parts; the low 8 bits are
            used with "udh8", 16 bits with "udh16" and "sar".  Required when the text
            needs more than one part (not with "payload").

    Raises:
        MessageTooLong: more than ``max_parts`` parts (or, with "payload", more than
            65535 octets).
        NotGsm7Encodable: encoding="gsm7" and the text has other characters.
        ValueError: bad arguments (unknown mode, no reference for a multi-part text).
    """
    if not 1 <= max_parts <= MAX_PARTS:
        raise ValueError(f"max_parts must be 1..255, not {max_parts}")
    if concatenation not in ("udh8", "udh16", "sar", "payload"):
        raise ValueError(f"unknown concatenation {concatenation!r}")
    if encoding == "auto":
        enc: Literal["gsm7", "ucs2"] = "gsm7" if gsm7_can_encode(text) else "ucs2"
    elif encoding in ("gsm7", "ucs2"):
        enc = encoding
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    data_coding = DATA_CODING_DEFAULT if enc == "gsm7" else DATA_CODING_UCS2
    if enc == "gsm7":
        septets = gsm7_encode(text)  # raises NotGsm7Encodable
        size, single_limit, cost_pattern = len(septets), GSM7_SINGLE_SEPTETS, _GSM_EXTENSION_CHARS
    else:
        size, single_limit, cost_pattern = ucs2_unit_count(text), UCS2_SINGLE_UNITS, _ASTRAL

    if concatenation == "payload":
        payload = _encode_chunk(text, enc, gsm7_packed, 0)
        if len(payload) > MAX_PAYLOAD_OCTETS:
            raise MessageTooLong(
                f"{len(payload)} octets exceed message_payload's 65535",
                parts_needed=2,
                max_parts=1,
            )
        part = MessagePart(b"", 0, data_coding, (Tlv(TlvTag.MESSAGE_PAYLOAD, payload),))
        return MessagePlan((part,), data_coding, enc, "payload")

    if size <= single_limit:
        if enc == "gsm7":
            sm = gsm7_pack(septets) if gsm7_packed else septets
        else:
            sm = text.encode("utf-16-be")
        part = MessagePart(sm, 0, data_coding)
        return MessagePlan((part,), data_coding, enc, None)

    limit = _per_part_limit(enc, concatenation)
    chunks = _split(text, limit, cost_pattern)
    total = len(chunks)
    if total > max_parts:
        unit = "septets" if enc == "gsm7" else "UCS2 units"
        raise MessageTooLong(
            f"{size} {unit} need {total} parts of {limit}, more than max_parts={max_parts}",
            parts_needed=total,
            max_parts=max_parts,
        )
    if reference is None:
        raise ValueError("a multi-part message needs a concatenation reference")

    parts = []
    if concatenation == "sar":
        ref_tlv = Tlv.uint16(TlvTag.SAR_MSG_REF_NUM, reference & 0xFFFF)
        total_tlv = Tlv.uint8(TlvTag.SAR_TOTAL_SEGMENTS, total)
        for seq, chunk in enumerate(chunks, 1):
            tlvs = (ref_tlv, total_tlv, Tlv.uint8(TlvTag.SAR_SEGMENT_SEQNUM, seq))
            parts.append(
                MessagePart(_encode_chunk(chunk, enc, gsm7_packed, 0), 0, data_coding, tlvs)
            )
    else:
        if concatenation == "udh8":
            head = bytes((5, 0x00, 3, reference & 0xFF, total))
        else:
            head = bytes((6, 0x08, 4, (reference >> 8) & 0xFF, reference & 0xFF, total))
        udh_octets = len(head) + 1
        fill_bits = (7 - (udh_octets * 8) % 7) % 7
        for seq, chunk in enumerate(chunks, 1):
            sm = head + bytes((seq,)) + _encode_chunk(chunk, enc, gsm7_packed, fill_bits)
            parts.append(MessagePart(sm, ESM_CLASS_UDHI, data_coding))
    return MessagePlan(tuple(parts), data_coding, enc, concatenation)


def _encode_chunk(chunk: str, enc: str, packed: bool, fill_bits: int) -> bytes:
    if enc == "ucs2":
        return chunk.encode("utf-16-be")
    septets = chunk.translate(_ENCODE_TABLE).encode("latin-1")
    return gsm7_pack(septets, fill_bits) if packed else septets


# -- inbound: decoding and reassembly --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Concatenation:
    """Which part of which message: from a UDH IE 0x00/0x08 or the sar_* TLVs."""

    reference: int
    total: int
    sequence: int  # 1-based


def _parse_udh(udh: bytes) -> Concatenation | None:
    """The concatenation IE of a UDH (without its length octet), or None."""
    i, n = 0, len(udh)
    found = None
    while i + 2 <= n:
        iei, length = udh[i], udh[i + 1]
        value = udh[i + 2 : i + 2 + length]
        if len(value) < length:
            break
        if iei == 0x00 and length == 3:
            found = Concatenation(value[0], value[1], value[2])
        elif iei == 0x08 and length == 4:
            found = Concatenation((value[0] << 8) | value[1], value[2], value[3])
        i += 2 + length
    return found


def _decode_text(
    data: bytes,
    data_coding: int,
    *,
    gsm7_packed: bool,
    default_alphabet: DefaultAlphabet = "gsm7",
    fill_bits: int = 0,
) -> str:
    if data_coding == DATA_CODING_UCS2:
        return data.decode("utf-16-be", "replace")
    if data_coding == DATA_CODING_DEFAULT and default_alphabet == "latin-1":
        return data.decode("latin-1")
    if data_coding == DATA_CODING_DEFAULT and default_alphabet == "ascii":
        return data.decode("ascii", "replace")
    if data_coding == DATA_CODING_DEFAULT or (data_coding & 0xF4) == 0xF0:
        # 0xF0-0xF3, 0xF8-0xFB: message class coding group with the GSM default alphabet.
        septets = gsm7_unpack(data, fill_bits) if gsm7_packed else data
        return gsm7_decode(septets)
    if data_coding == DATA_CODING_LATIN1:
        return data.decode("latin-1")
    if data_coding == DATA_CODING_IA5:
        return data.decode("ascii", "replace")
    if data_coding == DATA_CODING_GBK:
        return data.decode("gbk", "replace")
    # Binary (2, 4, 0xF4-0xFF) and alphabets we do not expect from Chinese handsets:
    # best effort, UTF-8 if it is valid UTF-8, else one character per octet.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_short_message(
    short_message: bytes,
    data_coding: int,
    esm_class: int,
    *,
    gsm7_packed: bool = False,
    default_alphabet: DefaultAlphabet = "gsm7",
) -> tuple[str, Concatenation | None]:
    """Text and concatenation info of an inbound short_message.

    With UDHI (esm_class 0x40) the UDH is stripped and its IE 0x00 or 0x08 reported.
    data_coding: 0 GSM 03.38 (unpacked unless ``gsm7_packed``; ASCII or latin-1 when
    ``default_alphabet`` says so, per carrier or partner account), 1 ASCII, 3 latin-1, 8 UCS2, 15 GBK; anything else
    best effort (see ``_decode_text``).  Never raises.
    """
    concat = None
    data = short_message
    fill_bits = 0
    if esm_class & ESM_CLASS_UDHI and short_message:
        udhl = short_message[0]
        if 1 + udhl <= len(short_message):
            concat = _parse_udh(short_message[1 : 1 + udhl])
            data = short_message[1 + udhl :]
            fill_bits = (7 - ((1 + udhl) * 8) % 7) % 7
    text = _decode_text(
        data,
        data_coding,
        gsm7_packed=gsm7_packed,
        default_alphabet=default_alphabet,
        fill_bits=fill_bits,
    )
    return text, concat


def concatenation_from_tlvs(tlvs: Iterable[Tlv]) -> Concatenation | None:
    """Concatenation from sar_msg_ref_num / sar_total_segments / sar_segment_seqnum, if all present."""
    tlvs = tuple(tlvs)
    ref = tlv_int(tlvs, TlvTag.SAR_MSG_REF_NUM)
    total = tlv_int(tlvs, TlvTag.SAR_TOTAL_SEGMENTS)
    seq = tlv_int(tlvs, TlvTag.SAR_SEGMENT_SEQNUM)
    if ref is None or total is None or seq is None:
        return None
    return Concatenation(ref, total, seq)


def decode_pdu_text(
    pdu: SubmitSm | DeliverSm | DataSm,
    *,
    gsm7_packed: bool = False,
    default_alphabet: DefaultAlphabet = "gsm7",
) -> tuple[str, Concatenation | None]:
    """Text and concatenation of a submit_sm, deliver_sm or data_sm.

    message_payload, when present, wins over short_message (section 5.3.2.32 forbids
    both; we follow the TLV).  Concatenation comes from the UDH, else the sar_* TLVs.
    Never raises.
    """
    tlvs = pdu.tlvs
    payload = tlv_bytes(tlvs, TlvTag.MESSAGE_PAYLOAD) if tlvs else None
    if payload is None:
        payload = b"" if isinstance(pdu, DataSm) else pdu.short_message
    text, concat = decode_short_message(
        payload,
        pdu.data_coding,
        pdu.esm_class,
        gsm7_packed=gsm7_packed,
        default_alphabet=default_alphabet,
    )
    if concat is None and tlvs:
        concat = concatenation_from_tlvs(tlvs)
    return text, concat


@dataclass(frozen=True, slots=True)
class ExpiredMessage:
    """A message whose parts did not all arrive in time; ``parts`` maps sequence -> text."""

    source: str
    reference: int
    total: int
    parts: dict[int, str]
    first_seen: float

    def partial_text(self) -> str:
        """The parts that arrived, in order (a gap is not marked)."""
        return "".join(self.parts[k] for k in sorted(self.parts))


@dataclass(slots=True)
class _Pending:
    first_seen: float
    parts: dict[int, str] = field(default_factory=dict)


class Reassembler:
    """Join concatenated parts per (source, reference, total); sans-IO.

    ``add`` returns the whole text when the last missing part arrives.  A repeated part
    (an SMSC retransmission) replaces the earlier copy.  Groups older than
    ``timeout_seconds`` are removed by ``expire(now)``, which returns them so the caller
    can still record what arrived; ``next_deadline()`` says when to call it.  At most
    ``max_pending`` groups are held: beyond that the oldest is evicted and returned by
    the next ``expire``.  ``now`` is any monotonic clock in seconds.
    """

    def __init__(self, *, timeout_seconds: float = 300.0, max_pending: int = 10_000) -> None:
        self.timeout_seconds = timeout_seconds
        self.max_pending = max_pending
        self._pending: dict[tuple[str, int, int], _Pending] = {}  # insertion = age order
        self._evicted: list[ExpiredMessage] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, source: str, part: Concatenation, text: str, *, now: float) -> str | None:
        """Record one part; the joined text if the message is now complete, else None.

        Raises ValueError if ``part`` is impossible (total 0, sequence outside 1..total);
        the caller should then treat the text as a message on its own.
        """
        if part.total < 1 or not 1 <= part.sequence <= part.total:
            raise ValueError(f"part {part.sequence} of {part.total} is impossible")
        if part.total == 1:
            return text
        key = (source, part.reference, part.total)
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                old_key = next(iter(self._pending))
                self._evicted.append(self._expired(old_key, self._pending.pop(old_key)))
            pending = self._pending[key] = _Pending(now)
        pending.parts[part.sequence] = text
        if len(pending.parts) < part.total:
            return None
        del self._pending[key]
        return "".join(pending.parts[i] for i in range(1, part.total + 1))

    def next_deadline(self) -> float | None:
        """When the oldest pending group expires, or None if nothing is pending."""
        if self._evicted:
            return float("-inf")
        for pending in self._pending.values():
            return pending.first_seen + self.timeout_seconds
        return None

    def expire(self, now: float) -> list[ExpiredMessage]:
        """Remove and return the groups first seen ``timeout_seconds`` or more before ``now``."""
        out, self._evicted = self._evicted, []
        cutoff = now - self.timeout_seconds
        while self._pending:
            key = next(iter(self._pending))
            pending = self._pending[key]
            if pending.first_seen > cutoff:
                break
            del self._pending[key]
            out.append(self._expired(key, pending))
        return out

    @staticmethod
    def _expired(key: tuple[str, int, int], pending: _Pending) -> ExpiredMessage:
        source, reference, total = key
        return ExpiredMessage(source, reference, total, dict(pending.parts), pending.first_seen)
