"""The Appendix B fast path of `parse_receipt_text` reads every text exactly as the
tolerant scanner does (`scan_receipt_text`), errors included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.smpp.receipts import (
    ReceiptFields,
    ReceiptParseError,
    parse_receipt_text,
    scan_receipt_text,
)

# Values as SMSCs write them, plus the awkward ones: empty, spaces, colons, other keys,
# long spellings of stat, non-ASCII whitespace.
VALUE = st.one_of(
    st.sampled_from(["", "000", "001", "1795242505", "DELIVRD", "delivered", "UNDELIV", "x:y", "stat:DELIVRD",
                     "a b", " ", "id:7", "text:", "2611211234", "\u3000", "MK:0001"]),
    st.text(alphabet=st.sampled_from("0aZ: _\t\u3000stidex"), max_size=8),
)
TEXT = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["", " ", "您好", "id:5 stat:ok", " a \n b "]))


def appendix_b(values: list[str], text: str | None) -> str:
    keys = ("id", "sub", "dlvrd", "submit date", "done date", "stat", "err")
    out = " ".join(f"{k}:{v}" for k, v in zip(keys, values, strict=True))
    return out if text is None else f"{out} text:{text}"


def outcome(parse, text: str) -> ReceiptFields | str:
    try:
        return parse(text)
    except ReceiptParseError:
        return "ReceiptParseError"


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUE, min_size=7, max_size=7), TEXT)
def test_fast_path_matches_the_scanner(values: list[str], text: str | None) -> None:
    """Texts in (or nearly in) the Appendix B layout parse to the same fields, or raise
    the same error, on the fast path as in the tolerant scanner."""
    receipt = appendix_b(values, text)
    assert outcome(parse_receipt_text, receipt) == outcome(scan_receipt_text, receipt)


@pytest.mark.parametrize("receipt", [
    "id:42 sub:001 dlvrd:001 submit date:2611211234 done date:2611211235 stat:delivered err:000 text:hi",
    "id:42 sub:001 dlvrd:001 submit date:2611211234 done date:2611211235 stat:DELIVRD err:000",
    "id: sub: dlvrd: submit date: done date: stat: err: text:",
    "id:42 sub:001 dlvrd:001 submit date:26112112 34 done date:2611211235 stat:DELIVRD err:000",
    "ID:42 SUB:001 DLVRD:001 SUBMIT DATE:2611211234 DONE DATE:2611211235 STAT:DELIVRD ERR:000",
])
def test_known_layouts_match_the_scanner(receipt: str) -> None:
    """The layouts carriers send (and the degenerate all-empty one) agree with the scanner."""
    assert outcome(parse_receipt_text, receipt) == outcome(scan_receipt_text, receipt)


def test_fast_path_result() -> None:
    """An Appendix B text gives every field, stat abbreviated, the text stripped."""
    assert parse_receipt_text(
        "id:42 sub:001 dlvrd:001 submit date:2611211234 done date:2611211235 stat:Delivered err:000 text: hi "
    ) == ReceiptFields(id="42", sub="001", dlvrd="001", submit_date="2611211234", done_date="2611211235",
                       stat="DELIVRD", err="000", text="hi")
