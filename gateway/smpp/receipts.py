"""Delivery receipts: recognise them in deliver_sm/data_sm, parse them, match their ids.

Theory of operation
-------------------
SMPP 3.4 asks for a receipt with ``registered_delivery`` and delivers it as a
deliver_sm (or data_sm) whose ``esm_class`` bits 5-2 say "SMSC Delivery Receipt"
(0x04; we also accept 0x20, "Intermediate Delivery Notification", section 5.2.12).
The spec gives the receipt's *content* only as a non-normative example (Appendix B)::

    id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm
    stat:DDDDDDD err:E text: . . . . . . . . .

and adds the receipted_message_id, message_state and network_error_code TLVs
(sections 5.3.2.12, 5.3.2.35, 5.3.2.31).  Carriers vary: lower-case keys,
``submit_date``, seconds in the dates, missing fields, ids in hex when the
submit_sm_resp gave decimal (or the reverse), and TLVs without the text.  Hence:

* ``parse_receipt_text`` is a tolerant key/value scanner, not a fixed regex;
* ``receipt_from_deliver`` prefers the TLVs when present and falls back to the text;
* ``normalise_message_id`` converts a receipt's id into the form the carrier's
  submit_sm_resp used (per-carrier ``id_format``), and ``message_id_candidates``
  lists the forms a correlator may try when the format is not known.

Dates stay strings (``receipt_datetime`` parses them): the SMSC's time zone is not
in the receipt, so turning them into instants is the caller's decision.
"""

from __future__ import annotations

import re
import string
from datetime import datetime
from typing import Final, Literal

from gateway.records import hot_record
from gateway.smpp.pdu import DataSm, DeliverSm
from gateway.smpp.text import DATA_CODING_UCS2
from gateway.smpp.tlv import TlvTag, tlv_bytes, tlv_cstring, tlv_int

__all__ = [
    "ESM_CLASS_TYPE_MASK",
    "FINAL_STATES",
    "MESSAGE_STATE_NAMES",
    "ParsedReceipt",
    "ReceiptFields",
    "ReceiptParseError",
    "canonical_message_id",
    "is_receipt",
    "message_id_candidates",
    "normalise_message_id",
    "parse_receipt_text",
    "receipt_datetime",
    "receipt_from_deliver",
]

ESM_CLASS_TYPE_MASK: Final = 0x3C  # section 5.2.12, bits 5-2 of esm_class in deliver_sm
ESM_CLASS_SMSC_DELIVERY_RECEIPT: Final = 0x04
ESM_CLASS_INTERMEDIATE_NOTIFICATION: Final = 0x20

# Section 5.3.2.35, message_state values, named as receipts' stat field spells them
# (Appendix B); 0 is not assigned in 3.4 but 5.0 calls it SCHEDULED, some SMSCs send it.
MESSAGE_STATE_NAMES: Final[dict[int, str]] = {
    0: "SCHEDULED",
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
# States after which the SMSC will send nothing more for this message.
FINAL_STATES: Final = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "REJECTD"})

# Long spellings some SMSCs use in stat:, mapped to the Appendix B abbreviations.
_STAT_ALIASES: Final = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
    "EN_ROUTE": "ENROUTE",
}

# A key starts the text or follows whitespace; "submit date", "submit_date", "submitdate".
_KEY = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:",
    re.IGNORECASE,
)
_FIELD_NAMES: Final = {
    "id": "id",
    "sub": "sub",
    "dlvrd": "dlvrd",
    "submitdate": "submit_date",
    "donedate": "done_date",
    "stat": "stat",
    "err": "err",
    "text": "text",
}
_HEX_DIGITS = frozenset(string.hexdigits)
_DEC_DIGITS = frozenset(string.digits)
_MAX_CONVERTIBLE_ID_CHARS = 40  # beyond this an "id" is not a number; do not convert


class ReceiptParseError(ValueError):
    """A receipt (or what claims to be one) with neither an id nor a stat."""


@hot_record(slots=True)
class ReceiptFields:
    """The fields of a receipt's text (Appendix B); None where the text lacks one.

    ``stat`` is upper-cased and long spellings are abbreviated (DELIVERED -> DELIVRD);
    dates are the digits as sent (10 or 12 of them); ``id`` keeps its case.
    """

    id: str | None = None
    sub: str | None = None
    dlvrd: str | None = None
    submit_date: str | None = None
    done_date: str | None = None
    stat: str | None = None
    err: str | None = None
    text: str | None = None


@hot_record(slots=True)
class ParsedReceipt:
    """A delivery receipt taken from a deliver_sm or data_sm.

    ``message_id`` is as the receipt gave it (use ``normalise_message_id`` to match it
    with a submit_sm_resp).  ``stat`` is an Appendix B name (DELIVRD, UNDELIV, ...) or
    the carrier's own upper-cased code.  ``err`` is the text's err field, else the
    error code of network_error_code.  ``network_error_code`` is (network type, code).
    """

    message_id: str
    stat: str
    err: str = ""
    submit_date: str = ""
    done_date: str = ""
    network_error_code: tuple[int, int] | None = None
    text_fields: ReceiptFields | None = None

    @property
    def is_final(self) -> bool:
        return self.stat in FINAL_STATES


def _normalise_stat(value: str) -> str:
    stat = value.strip().upper()
    return _STAT_ALIASES.get(stat, stat)


# The Appendix B layout exactly as written (single spaces, lower-case keys, every field
# in order), which almost every SMSC sends: one anchored match instead of the scanner's
# search at every position, about six times faster.  Values without whitespace cannot
# hold a key, so the scanner would split such a text the same way.
_APPENDIX_B = re.compile(
    r"id:(\S*) sub:(\S*) dlvrd:(\S*) submit date:(\S*) done date:(\S*) stat:(\S*) err:(\S*)"
    r"(?: text:(.*))?\Z",
    re.DOTALL,
)


def parse_receipt_text(text: str) -> ReceiptFields:
    """Parse "id:... sub:... dlvrd:... submit date:... done date:... stat:... err:... text:...".

    Keys and values may be in any case, in any order, with extra spaces; fields may be
    missing; "text:" takes the rest of the string.  Raises ReceiptParseError when neither
    id nor stat is present.
    """
    m = _APPENDIX_B.match(text)
    if m is None or not (m.group(1) or m.group(6)):
        return scan_receipt_text(text)
    id_, sub, dlvrd, submit_date, done_date, stat, err, rest = m.groups()
    rest = rest.strip() if rest is not None else None
    return ReceiptFields(
        id=id_ or None,
        sub=sub or None,
        dlvrd=dlvrd or None,
        submit_date=submit_date or None,
        done_date=done_date or None,
        stat=_normalise_stat(stat) if stat else None,
        err=err or None,
        text=rest or None,
    )


def scan_receipt_text(text: str) -> ReceiptFields:
    """`parse_receipt_text` for any layout: a tolerant key/value scanner."""
    matches = list(_KEY.finditer(text))
    found: dict[str, str] = {}
    for i, m in enumerate(matches):
        name = _FIELD_NAMES[m.group(1).lower().replace(" ", "").replace("_", "")]
        if name == "text":
            found.setdefault("text", text[m.end() :].strip())
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        found.setdefault(name, text[m.end() : end].strip())
    if not found.get("id") and not found.get("stat"):
        raise ReceiptParseError("receipt text has neither id nor stat")
    for date_field in ("submit_date", "done_date"):
        if date_field in found:
            found[date_field] = found[date_field].replace(" ", "")
    if "stat" in found:
        found["stat"] = _normalise_stat(found["stat"])
    return ReceiptFields(**{k: (v if v != "" else None) for k, v in found.items()})


def receipt_datetime(value: str) -> datetime | None:
    """A naive datetime from YYMMDDhhmm or YYMMDDhhmmss (years 2000-2099); None if invalid."""
    if not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        return datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M")
    except ValueError:
        return None


def is_receipt(pdu: DeliverSm | DataSm) -> bool:
    """True when esm_class says delivery receipt (or intermediate notification), or
    the receipted_message_id TLV is present."""
    kind = pdu.esm_class & ESM_CLASS_TYPE_MASK
    if kind in (ESM_CLASS_SMSC_DELIVERY_RECEIPT, ESM_CLASS_INTERMEDIATE_NOTIFICATION):
        return True
    return tlv_bytes(pdu.tlvs, TlvTag.RECEIPTED_MESSAGE_ID) is not None


def _receipt_texts(pdu: DeliverSm | DataSm) -> tuple[str, ...]:
    """The receipt's text as data_coding declares it, then (for UCS2) as ASCII/latin-1.

    SMSCs write receipts in ASCII whatever data_coding says, so only UCS2 is honoured
    (read as GSM 03.38, "submit_date" would become "submit§date").  Some SMSCs copy the
    submit's data_coding 8 into the receipt and still write Appendix B in ASCII: read
    as UTF-16 that gives no id and no stat, so the caller tries the latin-1 reading next.
    """
    payload = tlv_bytes(pdu.tlvs, TlvTag.MESSAGE_PAYLOAD) if pdu.tlvs else None
    if payload is None:
        payload = b"" if isinstance(pdu, DataSm) else pdu.short_message
    if pdu.data_coding == DATA_CODING_UCS2:
        return (payload.decode("utf-16-be", "replace"), payload.decode("latin-1"))
    return (payload.decode("latin-1"),)


def _parse_first_readable(texts: tuple[str, ...]) -> ReceiptFields | None:
    """The fields of the first text that names an id or a stat; None if none has text;
    ReceiptParseError when there was text but none of it could be read."""
    error: ReceiptParseError | None = None
    for text in texts:
        if not text.strip():
            continue
        try:
            return parse_receipt_text(text)
        except ReceiptParseError as e:
            error = error or e
    if error is not None:
        raise error
    return None


def receipt_from_deliver(pdu: DeliverSm | DataSm) -> ParsedReceipt | None:
    """The receipt carried by ``pdu``, or None if it is not a receipt (e.g. an MO).

    receipted_message_id and message_state TLVs win over the text's id and stat.
    Raises ReceiptParseError for a receipt with no id at all (neither TLV nor text) or
    with no state at all.
    """
    if not is_receipt(pdu):
        return None
    tlvs = pdu.tlvs
    tlv_id = tlv_cstring(tlvs, TlvTag.RECEIPTED_MESSAGE_ID) if tlvs else None
    tlv_state = tlv_int(tlvs, TlvTag.MESSAGE_STATE) if tlvs else None
    network_error = tlv_bytes(tlvs, TlvTag.NETWORK_ERROR_CODE) if tlvs else None

    fields: ReceiptFields | None = None
    try:
        fields = _parse_first_readable(_receipt_texts(pdu))
    except ReceiptParseError:
        if not tlv_id:
            raise
    message_id = tlv_id.strip() if tlv_id else (fields.id if fields else None)
    if not message_id:
        raise ReceiptParseError("receipt without receipted_message_id or id:")
    if tlv_state is not None:
        stat = MESSAGE_STATE_NAMES.get(tlv_state, f"STATE_{tlv_state}")
    elif fields is not None and fields.stat:
        stat = fields.stat
    else:
        raise ReceiptParseError("receipt without message_state or stat:")

    network_error_code = None
    if network_error is not None and len(network_error) == 3:
        network_error_code = (network_error[0], int.from_bytes(network_error[1:], "big"))
    err = (fields.err if fields and fields.err else None) or (
        f"{network_error_code[1]:03d}" if network_error_code else ""
    )
    return ParsedReceipt(
        message_id=message_id,
        stat=stat,
        err=err,
        submit_date=(fields.submit_date or "") if fields else "",
        done_date=(fields.done_date or "") if fields else "",
        network_error_code=network_error_code,
        text_fields=fields,
    )


# -- message id formats ------------------------------------------------------------------


def _is_hex(s: str) -> bool:
    return bool(s) and len(s) <= _MAX_CONVERTIBLE_ID_CHARS and _HEX_DIGITS.issuperset(s)


def _is_dec(s: str) -> bool:
    return bool(s) and len(s) <= _MAX_CONVERTIBLE_ID_CHARS and _DEC_DIGITS.issuperset(s)


def canonical_message_id(raw: str) -> str:
    """Whitespace trimmed, lower-cased, leading zeros stripped ("0" stays "0").

    Store submit_sm_resp ids under this form and look receipts up by
    ``message_id_candidates``: case and zero-padding differences then never matter.
    """
    s = raw.strip().lower()
    stripped = s.lstrip("0")
    return stripped if stripped or not s else "0"


def normalise_message_id(
    raw: str,
    *,
    id_format: Literal["as_is", "hex_to_dec", "dec_to_hex"] = "as_is",
    hex_upper: bool = False,
    hex_width: int = 0,
) -> str:
    """A receipt's message id in the form the carrier's submit_sm_resp gave it.

    Args:
        raw: the id from the receipt (TLV or text).
        id_format: "as_is" (only whitespace trimmed); "hex_to_dec" for carriers whose
            receipts carry hex ids while submit_sm_resp gave decimal; "dec_to_hex" for
            the reverse.
        hex_upper, hex_width: for "dec_to_hex", the case and zero-padded width that
            submit_sm_resp uses (e.g. ``hex_upper=True, hex_width=8`` -> "00BC614E").

    An id that is not a number in the expected base is returned trimmed, unchanged.
    """
    s = raw.strip()
    if id_format == "as_is":
        return s
    if id_format == "hex_to_dec":
        return str(int(s, 16)) if _is_hex(s) else s
    if id_format == "dec_to_hex":
        if not _is_dec(s):
            return s
        return format(int(s), f"0{hex_width}{'X' if hex_upper else 'x'}")
    raise ValueError(f"unknown id_format {id_format!r}")


def message_id_candidates(raw: str) -> tuple[str, ...]:
    """Forms of a receipt id a correlator should try, most likely first, no duplicates.

    As is; lower-cased; lower-cased without leading zeros (``canonical_message_id``);
    then, if all hex digits, its decimal value; if all decimal digits, its hex value
    (lower and upper case).  An id made of decimal digits is also valid hex, so the
    conversions may name another message: try them only after the exact forms fail, and
    prefer a per-carrier ``id_format`` where the carrier's habit is known.
    """
    s = raw.strip()
    out: list[str] = [s, s.lower(), canonical_message_id(s)]
    if _is_hex(s):
        out.append(str(int(s, 16)))
    if _is_dec(s):
        value = int(s)
        out.append(format(value, "x"))
        out.append(format(value, "X"))
    return tuple(dict.fromkeys(c for c in out if c))
