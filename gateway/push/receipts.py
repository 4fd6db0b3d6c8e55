"""Delivery receipts from the carrier links, recorded against their notifications.

Theory of operation
-------------------
A link hands each receipt to `ReceiptRecorder.record_receipt` (our half of
`gateway.ports.InboundSink`) and answers the deliver_sm only when the returned Deferred
fires, i.e. once the receipt is in Redis (checkpoint, then acknowledge).  Receipts that
arrive in the same reactor turn are applied by one Lua call (`OutcomeWriter`).

Correlation: the dispatcher stores every part's carrier message id in canonical form
(``gateway.smpp.receipts.canonical_message_id``: trimmed, lower case, no leading zeros)
under ``keys.message_id(carrier, id)``; a receipt is looked up under the canonical forms
of ``message_id_candidates`` (as is first, then the hex/decimal conversions some SMSCs
apply), first hit wins, unless the receipt carries a phone number (its source_addr, or
its destination_addr for SMSCs that swap them) and the hit's notification went to another
one: a decimal id is also valid hex, so a converted candidate can name another message
(when the receipt beat its own submit_sm_resp, it did: 12 of 60 early receipts with ids
from 1 applied to the wrong notification before 2026-12-05), and some SMSCs reuse ids.
Such a hit is passed over (`gateway12123_push_receipts_wrong_number_total`).  No hit:
the receipt arrived before we recorded the submit response, so it is parked under
``keys.early_receipt`` and applied when the message ids are recorded.

Multi-part messages are delivered when every part's receipt says DELIVRD, undeliverable
as soon as one part says UNDELIV, EXPIRED, REJECTD or DELETED.  ACCEPTD, ENROUTE and
UNKNOWN are noted on the part and change nothing else.  A receipt for a notification in
a final state changes nothing, so duplicates are harmless.

When Redis is unreachable the Deferred fails: the link then does not acknowledge, and
the carrier sends the receipt again later.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred

from gateway import metrics
from gateway.ports import DeliveryReceipt
from gateway.push.state import OutcomeWriter, op_receipt
from gateway.smpp.receipts import canonical_message_id, message_id_candidates

__all__ = ["ReceiptRecorder", "lookup_candidates", "number_tails"]

# As NUMBER_TAIL in gateway/push/lua/ledger.lua: a mobile number's last 8 digits are the
# same whether the SMSC writes it 138..., 86138..., +86138... or 008613...; shorter
# addresses (our short code 12123, an empty source_addr) name no handset.
NUMBER_TAIL = 8
_NOT_DIGITS = re.compile(r"\D+")
# What a written number may hold besides digits.  An address with anything else names no
# number to compare: SMSCs that mask the handset in receipts (138****5678, 86138xxxx5678)
# would otherwise leave a tail of other digits, and every receipt would be refused.
_NOT_A_NUMBER = re.compile(r"[^0-9+\- ().]")


def number_tails(*addresses: str) -> str:
    """The last NUMBER_TAIL digits of each address long enough to be a phone number,
    space separated, for the receipt ops' check (outcomes.lua); a masked address counts
    as none."""
    tails: list[str] = []
    for address in addresses:
        if _NOT_A_NUMBER.search(address):
            continue
        digits = _NOT_DIGITS.sub("", address)
        if len(digits) >= NUMBER_TAIL and digits[-NUMBER_TAIL:] not in tails:
            tails.append(digits[-NUMBER_TAIL:])
    return " ".join(tails)


_HEX = re.compile(r"[0-9a-f]{1,40}")
_DEC = re.compile(r"[0-9]{1,40}")


def lookup_candidates(message_id: str) -> tuple[str, ...]:
    """Canonical forms of a receipt's message id to look up, most likely first.

    The canonical forms of ``message_id_candidates`` (the id as is; its hex value read as
    decimal; its decimal value written in hex), computed directly: this runs for every
    receipt, and the general function's dedup over five spellings costs more than the
    lookup itself.  tests/push/test_receipts.py checks the two agree.
    """
    exact = canonical_message_id(message_id)
    if not _HEX.fullmatch(exact):
        if exact.isalnum() or not exact:
            return (exact,) if exact else ()
        # Odd ids (inner spaces, dashes): rare, so the general rules decide.
        general = [canonical_message_id(c) for c in message_id_candidates(message_id) if c]
        return tuple(dict.fromkeys([exact, *(g for g in general if g)]))
    out = [exact]
    from_hex = str(int(exact, 16))
    if from_hex != exact:
        out.append(from_hex)
    if _DEC.fullmatch(exact):
        to_hex = format(int(exact), "x")
        if to_hex not in out:
            out.append(to_hex)
    return tuple(out)


class ReceiptRecorder:
    """Implements `InboundSink.record_receipt` (the MO half is gateway/push/mo.py)."""

    def __init__(self, writer: OutcomeWriter) -> None:
        self.writer = writer
        # Counter children by (carrier, state): labels() costs more than the receipt's
        # own bookkeeping (it validates and locks on every call).
        self._counters: dict[tuple[str, str], Any] = {}

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        candidates = lookup_candidates(receipt.message_id)
        state = receipt.state.strip().upper()
        key = (receipt.carrier, state)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.receipts.labels(*key)
        counter.inc()
        op = op_receipt(receipt.carrier, state, receipt.error_code, candidates,
                        number_tails(receipt.source_addr, receipt.destination_addr))
        return self.writer.add(op, keep=False)
