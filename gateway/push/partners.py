"""Partner ESMEs: their submits become notifications, their receipts go back to them.

Theory of operation
-------------------
The SMPP listener calls `PartnerGateway.submit_from_partner` (``ports.PartnerIntake``)
for each submit_sm of a bound partner.  The message becomes a notification of type
``partner_text`` with the partner's text as is (the partner signs its own: 【交管12123】
is for the traffic police's own notices, config/templates.yaml ``services``), held in
quiet hours like other non-urgent texts, accepted through the same `Intake.accept_many`
as every other door, so it is routed, throttled, retried and tracked like ours.  The
Deferred fires with the notification id only once it is recorded in Redis: that id goes
back in submit_sm_resp as the message_id.  A request the intake rejects fails the Deferred with
`PartnerSubmitRejected`, whose ``status`` suggests the submit_sm_resp command_status.

When a partner's message asked for a receipt (registered_delivery) and reaches a final
state, the ledger adds its id to ``keys.partner_receipts_pending`` in the same script.
`deliver_pending` then calls ``ports.PartnerReceiptSink.deliver_receipt`` (the
listener's deliver_sm to the partner's receiver bind) once for every part that asked for
a receipt, with that part's id, and removes the id once the partner acknowledged them
all; a partner without a receiver bind gets them on a later round (the service calls
`deliver_pending` periodically).

Partitions and several processes: the pending set is per partition
(``12123:{p<k>}:partner-receipts`` with ``push.partitions`` > 1, ``12123:partner-receipts``
with one), scored by when a receipt may be delivered.  A process claims receipts before
delivering them (gateway/push/lua/claim_partner_receipts.lua: score moved to the end of
the claim, ``claim_seconds``), so two processes with a bind of the same partner never
both deliver one; a receipt it could not deliver (no bind here) is given back at once;
the claim of a process that died runs out and another delivers it (a second delivery
only if the first deliver_sm went out and its removal was not recorded).  Every process
works every partition (`partitions`), since the partner's bind may be on any of them.

Message ids per account (``message_id_format``): ``hex32`` (the default) is the
notification id ``p<32 hex>``, part k of a multi-part submit ``<id>-<k>``.
``decimal10`` (``0000000042``) and ``hex8`` (``0000002A``) are for partners with
fixed-width parsers: a per-account counter (``keys.prefix + partner-msgid:<system_id>``,
INCRBY the number of parts) numbers the parts; the notification id is
``p.<system_id>.<part 1's id>`` and parts 2..n are found through alias keys
(``partner-part:<system_id>:<id>``, kept as long as the notification).  The counter wraps
after 10^10 / 2^32 messages, decades at partner volumes.

query_sm, cancel_sm and replace_sm (SMPP 3.4 sections 4.8-4.10) name a message by any of
its part ids; a partner only ever sees its own messages.  Cancel and replace apply only
while the message has not been handed to a carrier (queued or scheduled), checked and
written in one script (`NotificationLedger.change_if`): a cancelled message ends
``expired`` with ``cancelled_at`` (reported as DELETED), a replaced one keeps its place
with the new text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.fleet.clock import takeovers_held
from gateway.ports import PartnerMessageState, PartnerReceiptSink
from gateway.privacy import PhoneNumber
from gateway.push.intake import Intake, IntakeRequest
from gateway.push.state import FINAL_STATES, NotificationLedger
from gateway.smpp.text import decode_short_message
from gateway.store.bridge import as_deferred, wait_deferred
from gateway.store.scripts import register_lua

__all__ = ["MESSAGE_ID_FORMATS", "PartnerGateway", "PartnerMessageState", "PartnerSubmitRejected",
           "receipt_stat"]

MESSAGE_ID_FORMATS = ("hex32", "decimal10", "hex8")
_ID_WIDTH = {"decimal10": 10, "hex8": 8}
_ID_MODULUS = {"decimal10": 10**10, "hex8": 16**8}
_HEX32_ID = re.compile(r"^(p[0-9a-f]{32})(?:-\d{1,3})?$")
# States in which a message has not been handed to a carrier yet: cancel and replace apply.
CHANGEABLE_STATES = ("queued", "scheduled")
# SMPP 3.4 section 5.2.28 message_state of a notification state (DELETED for a cancel).
_MESSAGE_STATE = {"queued": 1, "scheduled": 1, "submitting": 1, "submitted": 1, "delivered": 2,
                  "expired": 3, "undeliverable": 5, "failed": 5, "unconfirmed": 7, "rejected": 8}


def _safe(system_id: str) -> str:
    # Notification ids allow A-Z a-z 0-9 . _ : @ + = -; system_ids may hold anything.
    return re.sub(r"[^A-Za-z0-9_-]", "_", system_id)

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
        return ("DELETED" if raw.get("cancelled_at") else "EXPIRED"), "000"
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
                 receipt_sink: PartnerReceiptSink | None = None, batch_size: int = 200,
                 claim_seconds: float = 60.0, partitions: Callable[[], Sequence[int]] | None = None) -> None:
        self.intake = intake
        self.ledger = ledger
        self.keys = ledger.keys
        self.clock = clock
        self.receipt_sink = receipt_sink
        self.batch_size = batch_size
        # How long a claimed receipt is this process's to deliver: a deliver_sm waits for
        # its response for at most the listener's response timeout (seconds), far less.
        self.claim_seconds = claim_seconds
        # The partitions whose owed receipts this process delivers: all of them, since
        # the partner's receiver bind may be on any process (not only the owner's).
        self.partitions: Callable[[], Sequence[int]] = partitions or (lambda: range(self.keys.partitions))
        self._claim_script = register_lua(ledger.redis, __file__, "claim_partner_receipts.lua")
        self._delivering: set[str] = set()

    def set_receipt_sink(self, sink: PartnerReceiptSink | None) -> None:
        self.receipt_sink = sink

    # -- submits -------------------------------------------------------------------------

    def submit_from_partner(self, system_id: str, destination: PhoneNumber, text: str,
                            registered_delivery: bool, *, receipt_parts: Sequence[bool] = (),
                            id_format: str = "hex32", data_coding: int = 0) -> Deferred[tuple[str, ...]]:
        """Record a partner's message; fires with the message id of every part (one for
        a single submit_sm).  receipt_parts: per part, whether it asked for a receipt
        (empty: one part, `registered_delivery`)."""
        return as_deferred(self._submit(system_id, destination, text, registered_delivery,
                                        tuple(receipt_parts), id_format, data_coding))

    async def _part_ids(self, system_id: str, parts: int, id_format: str) -> tuple[str, tuple[str, ...]]:
        """(notification id, the parts' message ids) in the account's format."""
        if id_format not in _ID_WIDTH:
            notification_id = f"p{uuid.uuid4().hex}"
            return notification_id, (notification_id, *(f"{notification_id}-{k}" for k in range(2, parts + 1)))
        last = await self.ledger.redis.incrby(f"{self.keys.prefix}partner-msgid:{_safe(system_id)}", parts)
        width, modulus = _ID_WIDTH[id_format], _ID_MODULUS[id_format]
        ids = tuple(format((last - parts + k) % modulus, f"0{width}{'d' if id_format == 'decimal10' else 'X'}")
                    for k in range(1, parts + 1))
        return f"p.{_safe(system_id)}.{ids[0]}", ids

    def _alias_key(self, system_id: str, message_id: str) -> str:
        return f"{self.keys.prefix}partner-part:{_safe(system_id)}:{message_id}"

    async def _submit(self, system_id: str, destination: PhoneNumber, text: str,
                      registered_delivery: bool, receipt_parts: tuple[bool, ...], id_format: str,
                      data_coding: int) -> tuple[str, ...]:
        asked = receipt_parts or (registered_delivery,)
        notification_id, part_ids = await self._part_ids(system_id, len(asked), id_format)
        receipt_ids = [part_id for part_id, wants in zip(part_ids, asked, strict=True) if wants]
        if len(part_ids) > 1 and id_format in _ID_WIDTH:
            # Written before the acceptance: an alias to a message that was then refused
            # names nothing and expires.
            async with self.ledger.redis.pipeline(transaction=False) as pipe:
                for part_id in part_ids[1:]:
                    pipe.set(self._alias_key(system_id, part_id), notification_id,
                             ex=self.ledger.retention_seconds * 2)
                await pipe.execute()
        request = IntakeRequest(
            fields={"id": notification_id, "type": "partner_text", "to": destination.digits,
                    "params": {"text": text}},
            source="partner",
            extra={"partner": system_id, "partner_receipt": "1" if receipt_ids else "0",
                   "partner_part_ids": " ".join(part_ids), "partner_receipt_ids": " ".join(receipt_ids),
                   # replace_sm carries no data_coding: its text is in the original's
                   "partner_data_coding": str(data_coding)},
        )
        [outcome] = await self.intake.accept_many([request])
        if outcome.state == "rejected":
            status = "ESME_RINVDSTADR" if "mobile number" in outcome.reason else "ESME_RSUBMITFAIL"
            raise PartnerSubmitRejected(outcome.reason, status)
        return part_ids

    # -- query_sm, cancel_sm, replace_sm (SMPP 3.4 sections 4.8-4.10) ------------------------

    async def _own(self, system_id: str, message_id: str) -> tuple[str, dict[str, str]] | None:
        """The notification a partner's message id (any part's) names, if it is theirs."""
        match = _HEX32_ID.match(message_id)
        candidates = [match.group(1)] if match else [f"p.{_safe(system_id)}.{message_id}"]
        if not match:
            alias = await self.ledger.redis.get(self._alias_key(system_id, message_id))
            if alias:
                candidates.append(alias)
        for notification_id in candidates:
            raw = await self.ledger.raw(notification_id)
            if raw and raw.get("partner") == system_id:
                return notification_id, raw
        return None

    def query_from_partner(self, system_id: str, message_id: str) -> Deferred[PartnerMessageState | None]:
        """The state query_sm reports, or None (unknown or another partner's: ESME_RQUERYFAIL)."""
        return as_deferred(self._query(system_id, message_id))

    async def _query(self, system_id: str, message_id: str) -> PartnerMessageState | None:
        found = await self._own(system_id, message_id)
        if found is None:
            return None
        _, raw = found
        state = raw.get("state", "")
        message_state = 4 if raw.get("cancelled_at") else _MESSAGE_STATE.get(state, 7)
        final_at = raw.get(f"{state}_at") if state in FINAL_STATES else None
        error = raw.get("receipt_error", "")
        return PartnerMessageState(message_state, float(final_at) if final_at else None,
                                   int(error) if error.isdigit() else 0)

    def cancel_from_partner(self, system_id: str, message_id: str) -> Deferred[bool]:
        """Cancel a message not yet handed to a carrier; False when unknown, another
        partner's, or already submitted or final (ESME_RCANCELFAIL)."""
        return as_deferred(self._cancel(system_id, message_id))

    async def _cancel(self, system_id: str, message_id: str) -> bool:
        found = await self._own(system_id, message_id)
        if found is None:
            return False
        now = self.clock.seconds()
        changed, _ = await self.ledger.change_if(
            found[0], CHANGEABLE_STATES, now=now, state="expired",
            cancelled_at=f"{now:.3f}", error="cancelled by the partner (cancel_sm)")
        return changed

    def replace_from_partner(self, system_id: str, message_id: str, short_message: bytes, *,
                             default_alphabet: str = "gsm7") -> Deferred[bool]:
        """Replace the text of a message not yet handed to a carrier (short_message in the
        original submit's data_coding, section 4.10.1); False when unknown, another
        partner's, or already submitted or final (ESME_RREPLACEFAIL).  Fails with
        PartnerSubmitRejected when the new text cannot be sent (too long, empty)."""
        return as_deferred(self._replace(system_id, message_id, short_message, default_alphabet))

    async def _replace(self, system_id: str, message_id: str, short_message: bytes, default_alphabet: str) -> bool:
        found = await self._own(system_id, message_id)
        if found is None:
            return False
        data_coding = int(found[1].get("partner_data_coding") or 0)
        text, _ = decode_short_message(short_message, data_coding, 0,
                                       default_alphabet=default_alphabet)  # type: ignore[arg-type]
        template = self.intake.templates().get("partner_text")
        if template is None or not text.strip():
            raise PartnerSubmitRejected("empty text or no partner_text template", "ESME_RREPLACEFAIL")
        now = self.clock.seconds()
        rendered = template.render({"text": text}, now=now)
        if len(rendered) > self.intake.max_text_chars:
            raise PartnerSubmitRejected("text too long", "ESME_RREPLACEFAIL")
        changed, _ = await self.ledger.change_if(
            found[0], CHANGEABLE_STATES, now=now, text=rendered, replaced_at=f"{now:.3f}")
        return changed

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
        now = self.clock.seconds()
        if ids is None:
            if takeovers_held(self.clock):
                return 0  # Redis's clock stepped forward: others' live claims look run out
            ids = []
            for k in self.partitions():  # one set per partition
                ids += await self.ledger.redis.zrangebyscore(
                    self.keys.partition(k).partner_receipts_pending, "-inf", repr(now), start=0, num=self.batch_size)
        ids = await self._claim([i for i in ids if i not in self._delivering], now)
        if not ids:
            return 0
        self._delivering.update(ids)
        undelivered: list[str] = []
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
                # Every part that asked for one gets its receipt, under its own id (a
                # record from before per-part ids: the notification id).
                receipt_ids = (raw.get("partner_receipt_ids") or notification_id).split()
                try:
                    for receipt_id in receipt_ids:
                        await wait_deferred(sink.deliver_receipt(raw["partner"], receipt_id, stat, err))
                except Exception as e:  # the partner has no receiver bind, or did not answer
                    log.info("receipt for partner {partner} not delivered yet: {error}",
                             partner=raw["partner"], error=type(e).__name__)
                    undelivered.append(notification_id)
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
            if undelivered:
                # Give the claims up at once: a process with the partner's bind (or our
                # next round) delivers them.
                await self._release(undelivered, now)

    def _by_partition(self, ids: list[str]) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for notification_id in ids:
            grouped.setdefault(self.keys.partition_of(notification_id), []).append(notification_id)
        return grouped

    async def _claim(self, ids: list[str], now: float) -> list[str]:
        """The ids claimed for this process (one script per partition; see
        gateway/push/lua/claim_partner_receipts.lua)."""
        claimed: list[str] = []
        for k, members in self._by_partition(ids).items():
            claimed += await self._claim_script(keys=[self.keys.partition(k).partner_receipts_pending],
                                                args=[repr(now), repr(now + self.claim_seconds), *members])
        return claimed

    async def _release(self, ids: list[str], now: float) -> None:
        for k, members in self._by_partition(ids).items():
            # XX: only what is still owed (not delivered by another process meanwhile).
            await self.ledger.redis.zadd(self.keys.partition(k).partner_receipts_pending,
                                         dict.fromkeys(members, now), xx=True)
