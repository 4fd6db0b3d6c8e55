"""Partner ESMEs: their submits become notifications, their receipts go back to them.

Theory of operation
-------------------
The SMPP listener calls `PartnerGateway.submit_from_partner` (``ports.PartnerIntake``)
for each submit_sm of a bound partner.  The message becomes a notification of type
``partner_text`` with the partner's text as is (signed with 【交管12123】 when the partner
did not sign it), accepted through the same `Intake.accept_many` as every other door,
so it is routed, throttled, retried and tracked like ours.  The Deferred fires with the
notification id only once it is recorded in Redis: that id goes back in submit_sm_resp
as the message_id.  A request the intake rejects fails the Deferred with
`PartnerSubmitRejected`, whose ``status`` suggests the submit_sm_resp command_status.

When a partner's message asked for a receipt (registered_delivery) and reaches a final
state, the ledger adds its id to ``keys.partner_receipts_pending`` in the same script.
`deliver_pending` then calls ``ports.PartnerReceiptSink.deliver_receipt`` (the
listener's deliver_sm to the partner's receiver bind) and removes the id once the
partner acknowledged it; a partner without a receiver bind gets it on a later round
(the service calls `deliver_pending` periodically).
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.ports import PartnerReceiptSink
from gateway.privacy import PhoneNumber
from gateway.push.intake import Intake, IntakeRequest
from gateway.push.state import NotificationLedger
from gateway.store.bridge import as_deferred, wait_deferred

__all__ = ["PartnerGateway", "PartnerSubmitRejected", "receipt_stat"]

log = Logger()


class PartnerSubmitRejected(Exception):
    """The intake refused a partner's message; `reason` says why, `status` what to answer."""

    def __init__(self, reason: str, status: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def receipt_stat(raw: dict[str, str]) -> tuple[str, str]:
    """The receipt (stat, err) a partner gets for a notification in a final state."""
    state = raw.get("state", "")
    if state == "delivered":
        return "DELIVRD", raw.get("receipt_error", "000") or "000"
    if state == "undeliverable":
        return raw.get("receipt_state") or "UNDELIV", raw.get("receipt_error", "") or "000"
    if state == "expired":
        return "EXPIRED", "000"
    if state == "unconfirmed":
        return "UNKNOWN", "000"  # submitted; the carrier never said what became of it
    if state == "rejected":
        return "REJECTD", "000"
    return "UNDELIV", "000"  # failed: never reached the citizen's network


class PartnerGateway:
    """Implements ``ports.PartnerIntake``; owes partners their receipts.

    Args:
        intake: the shared acceptance.
        ledger: for reading final states.
        clock: IReactorTime.
        receipt_sink: the listener's ``PartnerReceiptSink`` (may be set later with
            `set_receipt_sink`, the listener being built after the pipeline).
    """

    def __init__(self, intake: Intake, ledger: NotificationLedger, clock: Any, *,
                 receipt_sink: PartnerReceiptSink | None = None, batch_size: int = 200) -> None:
        self.intake = intake
        self.ledger = ledger
        self.keys = ledger.keys
        self.clock = clock
        self.receipt_sink = receipt_sink
        self.batch_size = batch_size
        self._delivering: set[str] = set()

    def set_receipt_sink(self, sink: PartnerReceiptSink | None) -> None:
        self.receipt_sink = sink

    # -- submits -------------------------------------------------------------------------

    def submit_from_partner(self, system_id: str, destination: PhoneNumber, text: str,
                            registered_delivery: bool) -> Deferred[str]:
        return as_deferred(self._submit(system_id, destination, text, registered_delivery))

    async def _submit(self, system_id: str, destination: PhoneNumber, text: str,
                      registered_delivery: bool) -> str:
        notification_id = f"p{uuid.uuid4().hex}"
        request = IntakeRequest(
            fields={"id": notification_id, "type": "partner_text", "to": destination.digits,
                    "params": {"text": text}},
            source="partner",
            extra={"partner": system_id, "partner_receipt": "1" if registered_delivery else "0"},
        )
        [outcome] = await self.intake.accept_many([request])
        if outcome.state == "rejected":
            status = "ESME_RINVDSTADR" if "mobile number" in outcome.reason else "ESME_RSUBMITFAIL"
            raise PartnerSubmitRejected(outcome.reason, status)
        return notification_id

    # -- receipts owed -------------------------------------------------------------------

    def on_partner_final(self, ids: list[str]) -> None:
        """The ledger's hook: these partner messages just reached a final state."""
        if self.receipt_sink is None:
            return
        as_deferred(self.deliver_pending(ids)).addErrback(
            lambda f: log.failure("delivering partner receipts failed", f))

    async def deliver_pending(self, ids: list[str] | None = None) -> int:
        """Deliver owed receipts (the given ids, or the oldest pending); returns how many went."""
        sink = self.receipt_sink
        if sink is None:
            return 0
        if ids is None:
            ids = []
            for part in self.keys.all_partitions:  # one set per partition
                ids += await self.ledger.redis.zrange(part.partner_receipts_pending, 0, self.batch_size - 1)
        ids = [i for i in ids if i not in self._delivering]
        if not ids:
            return 0
        self._delivering.update(ids)
        try:
            async with self.ledger.redis.pipeline(transaction=False) as pipe:
                for notification_id in ids:
                    pipe.hgetall(self.keys.notification(notification_id))
                records = await pipe.execute()
            delivered: list[str] = []
            stale: list[str] = []
            for notification_id, raw in zip(ids, records, strict=True):
                if not raw or not raw.get("partner"):
                    stale.append(notification_id)
                    continue
                stat, err = receipt_stat(raw)
                try:
                    await wait_deferred(sink.deliver_receipt(raw["partner"], notification_id, stat, err))
                except Exception as e:  # the partner has no receiver bind, or did not answer
                    log.info("receipt for partner {partner} not delivered yet: {error}",
                             partner=raw["partner"], error=type(e).__name__)
                    continue
                delivered.append(notification_id)
            done = delivered + stale
            by_partition: dict[int, list[str]] = {}
            for notification_id in done:
                by_partition.setdefault(self.keys.partition_of(notification_id), []).append(notification_id)
            for partition, members in by_partition.items():
                await self.ledger.redis.zrem(self.keys.partition(partition).partner_receipts_pending, *members)
            return len(delivered)
        finally:
            self._delivering.difference_update(ids)
