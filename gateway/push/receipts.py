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

Submits first: while the dispatcher has a backlog (its last claim came back full), a
receipt waits up to ``max_defer_seconds`` before it is recorded, so the CPU goes to
getting messages out; the carrier keeps the receipts meanwhile (its deliver_sm window
fills and it stops sending), exactly as when Redis is slow.  Nothing is acknowledged
before it is recorded, so a receipt held when the process dies is sent again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter
from twisted.internet.defer import Deferred

from gateway import metrics
from gateway.ports import DeliveryReceipt
from gateway.push.state import OutcomeWriter, op_receipt
from gateway.smpp.receipts import canonical_message_id, message_id_candidates

__all__ = ["ReceiptRecorder", "lookup_candidates"]

receipts_deferred = Counter(
    "gateway_push_receipts_deferred_total",
    "Receipts held back while the dispatcher had a backlog (submits first)",
    registry=metrics.REGISTRY,
)


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
    """Implements `InboundSink.record_receipt` (the MO half is gateway/push/mo.py).

    Args:
        writer: records the receipts.
        clock: IReactorTime (only used when deferring).
        busy: says whether submits are waiting (the dispatcher's backlog); None: never
            defer.
        max_defer_seconds: the longest a receipt waits while ``busy`` says so.
    """

    def __init__(self, writer: OutcomeWriter, clock: Any = None, *, busy: Callable[[], bool] | None = None,
                 max_defer_seconds: float = 0.0, poll_seconds: float = 0.05) -> None:
        self.writer = writer
        self.clock = clock
        self.busy = busy if max_defer_seconds > 0 else None
        self.max_defer_seconds = max_defer_seconds
        self.poll_seconds = poll_seconds
        # Counter children by (carrier, state): labels() costs more than the receipt's
        # own bookkeeping (it validates and locks on every call).
        self._counters: dict[tuple[str, str], Any] = {}
        self._held: list[tuple[tuple[Any, ...], Deferred[None]]] = []
        self._held_since = 0.0
        self._check_call: Any = None

    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]:
        candidates = lookup_candidates(receipt.message_id)
        state = receipt.state.strip().upper()
        key = (receipt.carrier, state)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.receipts.labels(*key)
        counter.inc()
        op = op_receipt(receipt.carrier, state, receipt.error_code, candidates)
        if self.busy is not None and self.busy():
            return self._hold(op)
        return self.writer.add(op, keep=False)

    @property
    def held(self) -> int:
        return len(self._held)

    def _hold(self, op: tuple[Any, ...]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self._held:
            self._held_since = self.clock.seconds()
        self._held.append((op, d))
        receipts_deferred.inc()
        if self._check_call is None:
            self._check_call = self.clock.callLater(self.poll_seconds, self._check)
        return d

    def _check(self) -> None:
        self._check_call = None
        waited = self.clock.seconds() - self._held_since
        if self.busy is not None and self.busy() and waited < self.max_defer_seconds:
            self._check_call = self.clock.callLater(self.poll_seconds, self._check)
            return
        self.release()

    def stop_deferring(self) -> None:
        """From now on record every receipt at once, the held ones too (stopping)."""
        self.busy = None
        self.release()

    def release(self) -> None:
        """Hand every held receipt to the writer now (the backlog is gone)."""
        if self._check_call is not None and self._check_call.active():
            self._check_call.cancel()
        self._check_call = None
        held, self._held = self._held, []
        for op, d in held:
            self.writer.add(op, keep=False).chainDeferred(d)
