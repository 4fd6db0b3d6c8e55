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
apply), first hit wins.  No hit: the receipt arrived before we recorded the submit
response, so it is parked under ``keys.early_receipt`` and applied when the message ids
are recorded.

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

__all__ = ["ReceiptRecorder", "lookup_candidates"]


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
        op = op_receipt(receipt.carrier, state, receipt.error_code, candidates)
        return self.writer.add(op, keep=False)
