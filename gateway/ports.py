"""The seams between the gateway's parts, as typing Protocols and plain data.

SMPP links (gateway/smpp/link.py) do not know about notifications, and the push pipeline
(gateway/push/) does not know about PDUs.  They meet here:

* the pipeline hands an `OutboundSms` to a `CarrierLink`'s `submit`, which splits and
  encodes it per the carrier's options, submits every part (throttled, windowed) and fires
  with a `SubmitAccepted` (one carrier message id per part) or fails with `SubmitFailed`
  (`transient` says whether the same message may be retried);
* a link hands every delivery receipt and every citizen's message (MO) to the
  `InboundSink` and sends deliver_sm_resp only after the returned Deferred fires, i.e.
  after the receipt or MO is recorded in Redis (checkpoint, then acknowledge).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred

from gateway.privacy import PhoneNumber
from gateway.records import hot_record


@hot_record
class OutboundSms:
    """One text to one citizen; the link decides parts and encoding."""

    reference: str  # notification id (or a partner's message id); never logged with text
    destination: PhoneNumber
    text: str
    source_addr: str | None = None  # None: the carrier's configured source (12123)
    registered_delivery: bool = True
    # Seconds until the text is worthless (a code after its 10 minutes), counted when it
    # is handed to the link: the link may pass it on as validity_period, so that a
    # store-and-forward SMSC drops it instead of delivering it late.  None: no limit.
    validity_seconds: float | None = None
    lane: str = "normal"  # high, normal or bulk: the link may map it to priority_flag
    # Asked by the link just before it sends the first part: False once the sender may no
    # longer send it (the claim's lease has run out, so another process may have taken
    # it: sending would be the second copy).  None: always.
    may_send: Callable[[], bool] | None = None


@hot_record
class SubmitAccepted:
    carrier: str
    message_ids: tuple[str, ...]  # one per part, in part order
    # How many leading parts asked for a receipt (None: every part; 0: none, so the
    # message stays submitted); delivery is judged on those parts' receipts only.
    receipt_parts: int | None = None
    # The one part that asked is the last, not the first (carriers[].receipt_parts last).
    receipt_from_last: bool = False


class SubmitFailed(Exception):
    """A submit that did not get a carrier message id.

    transient=True: throttled, queue full, timeout (state "unknown"), link lost; retry.
    transient=False: the carrier refused this message (bad destination, too long, ...).
    `response_unknown` is True when a submit_sm went out but no response came back
    (timeout or link loss): a retry may then duplicate it, and the pipeline counts that.
    `link_down` is True when the link went away (lost, not bound, stopping): that says
    nothing about this message, so the pipeline does not spend one of its attempts.
    """

    def __init__(
        self, reason: str, *, transient: bool, status: str = "", response_unknown: bool = False,
        link_down: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.status = status
        self.response_unknown = response_unknown
        self.link_down = link_down


@hot_record
class DeliveryReceipt:
    carrier: str
    message_id: str  # normalised as the submit_sm_resp gave it (see smpp.receipts)
    state: str  # DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, ACCEPTD, UNKNOWN, ENROUTE
    error_code: str = ""
    submit_date: str = ""
    done_date: str = ""
    # The deliver_sm's addresses: source_addr is the handset the message went to (SMPP 3.4
    # 4.6.1), destination_addr our sender; some SMSCs swap them.  Checked against the
    # notification's number, never logged.
    source_addr: str = ""
    destination_addr: str = ""


@dataclass(frozen=True)
class MobileOriginated:
    carrier: str
    source: PhoneNumber  # the citizen
    destination: str  # 12123 (possibly with a sub-code)
    text: str
    received_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


class CarrierLink(Protocol):
    name: str
    prefixes: tuple[str, ...]

    def is_bound(self) -> bool: ...

    def submit(self, sms: OutboundSms) -> Deferred[SubmitAccepted]: ...


class InboundSink(Protocol):
    def record_receipt(self, receipt: DeliveryReceipt) -> Deferred[None]: ...

    def record_mo(self, message: MobileOriginated) -> Deferred[None]: ...


class PartnerIntake(Protocol):
    """The pipeline's door for partner ESMEs that submit over the listener.

    `submit_from_partner` records the message as a notification (type ``partner_text``,
    the partner's text as is) and fires with the message id of every part (in the
    account's ``id_format``) that go back in the parts' submit_sm_resp; the message then
    goes through routing, throttling and tracking.  `query_from_partner`,
    `cancel_from_partner` and `replace_from_partner` serve query_sm, cancel_sm and
    replace_sm from the state in Redis (gateway/push/partners.py).
    """

    def submit_from_partner(
        self,
        system_id: str,
        destination: PhoneNumber,
        text: str,
        registered_delivery: bool,
        *,
        receipt_parts: Sequence[bool] = (),
        id_format: str = "hex32",
        data_coding: int = 0,
    ) -> Deferred[tuple[str, ...]]: ...

    def query_from_partner(self, system_id: str, message_id: str) -> Deferred[PartnerMessageState | None]: ...

    def cancel_from_partner(self, system_id: str, message_id: str) -> Deferred[bool]: ...

    def replace_from_partner(
        self, system_id: str, message_id: str, short_message: bytes, *, default_alphabet: str = "gsm7"
    ) -> Deferred[bool]: ...


@dataclass(frozen=True)
class PartnerMessageState:
    """What query_sm answers (SMPP 3.4 section 4.8.2): message_state (5.2.28), final_date
    (Unix seconds, None while not final) and error_code (the receipt's err, else 0)."""

    message_state: int
    final_date: float | None
    error_code: int


class PartnerReceiptSink(Protocol):
    """The listener's door for receipts owed to a partner bound as receiver/transceiver.

    The pipeline calls it when a partner's message reaches a final state; it fires once
    the partner acknowledged the deliver_sm (or fails when no receiver bind is up, and the
    pipeline keeps the receipt in Redis to retry)."""

    def deliver_receipt(self, system_id: str, message_id: str, state: str, error_code: str) -> Deferred[None]: ...
