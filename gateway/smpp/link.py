"""A carrier link: the gateway as ESME towards one carrier's SMSC (gateway.ports.CarrierLink).

Theory of operation
-------------------
A link is a MultiService of *bind slots*: ``sessions`` transceivers, or ``sessions``
pairs of transmitter + receiver (``bind_mode``).  Each slot is a ClientService whose
endpoint connects **and binds** before it hands the connection to the service, so
``whenConnected()`` yields a bound session and a refused bind counts as a failed
attempt.  (ClientService's own ``prepareConnection`` hook would do, but a connection
that closes while or after it failed reaches ClientService in a state with no
transition for it and raises ``NoTransition`` from ``connectionLost``; binding inside
the endpoint never shows ClientService a connection that is not bound.)  The retry
delay depends on why the last attempt failed: exponential backoff with jitter after a
network failure or a bind refused for another reason (ESME_RBINDFAIL, which many SMSCs
send while the previous session is not yet released), ``bind_rejected_retry_seconds``
after the SMSC refused our credentials (ESME_RINVPASWD, ESME_RINVSYSID), which is also
logged at error level: someone must fix the configuration.

``submit`` plans the text's parts (gateway.smpp.text) per the carrier's options and
puts them on a bounded FIFO.  The pump sends the head of the FIFO when the token bucket
(``tps_limit`` over all sessions) has a token and a bound transmitter has a free window
slot, round-robin over sessions.  Every part gets exactly one outcome from the session:

* submit_sm_resp ESME_ROK: the part's message id;
* another status, as the carrier's error-class table (gateway.smpp.status_classes) says:
  throttled (ESME_RTHROTTLED): the bucket slows down and the *same* part goes back to
  the head of the FIFO after a growing delay, at most ``max_throttle_retries`` times;
  temporary (ESME_RSYSERR, ESME_RMSGQFUL...): transient, the pipeline retries later;
  bind (ESME_RINVBNDSTS): the session is closed and binds again, the part fails as a
  lost link; permanent (the rest): the carrier refused it;
* no response in time, or the session closed first: unknown, possibly delivered.

A submit succeeds when every part has an id, and fails (``LinkSubmitFailed``, with the
ids of the parts that were accepted) as soon as a part fails and no other part is
still awaiting its response; its unsent parts are dropped.  Nothing is lost silently:
the session reports every outstanding request when a connection dies.

Inbound, on receiver and transceiver sessions, a deliver_sm/data_sm is a receipt
(gateway.smpp.receipts) or a citizen's message (MO); multi-part MOs are joined first.
deliver_sm_resp goes out only after the InboundSink's Deferred fired (checkpoint, then
acknowledge); when recording fails we answer ESME_RX_T_APPN so the SMSC retries later.
The parts of a multi-part MO are acknowledged together once the whole text is recorded.

``drain(timeout)`` refuses new submits and waits for those in flight; ``stopService``
drains, unbinds every session (waiting for unbind_resp, bounded) and then stops the
ClientServices.  A carrier's outbind on the listener is handed to ``accept_outbind``,
which binds as receiver over that connection.
"""

from __future__ import annotations

import hmac
import random
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import metrics
from gateway.config import CarrierConfig
from gateway.ports import (
    DeliveryReceipt,
    InboundSink,
    MobileOriginated,
    OutboundSms,
    SubmitAccepted,
    SubmitFailed,
)
from gateway.privacy import InvalidPhoneNumber, PhoneNumber
from gateway.smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CommandStatus,
    DataSm,
    DeliverSm,
    GenericNack,
    Pdu,
    PduEncodeError,
    SubmitSm,
    Unbind,
    status_name,
)
from gateway.smpp.protocol import BindRefused, ReassemblyTimer, SessionOwner, SmppProtocol
from gateway.smpp.receipts import ReceiptParseError, normalise_message_id, receipt_from_deliver
from gateway.smpp.session import (
    DEFAULT_MAX_PDU_BYTES,
    Event,
    LocalProtocolError,
    RequestAbandoned,
    RequestTimedOut,
    ResponseReceived,
    Role,
    SmppSession,
)
from gateway.smpp.status_classes import StatusClass, StatusClassifier
from gateway.smpp.text import (
    MessageTooLong,
    NotGsm7Encodable,
    Reassembler,
    decode_pdu_text,
    plan_message,
)
from gateway.smpp.throttle import TokenBucket
from gateway.smpp.times import absolute_time, relative_time

if TYPE_CHECKING:
    from gateway.fleet.account import AccountLimits

__all__ = ["CarrierLink", "LinkOptions", "LinkSubmitFailed"]

log = Logger()

# The SMSC refused who we are: retrying soon only fills its logs (and may lock us out).
# ESME_RBINDFAIL is not among them: many SMSCs answer it while the previous session is
# not yet released after a reconnect, so it gets the ordinary backoff.
REJECTED_BIND_STATUSES = frozenset({CommandStatus.ESME_RINVPASWD, CommandStatus.ESME_RINVSYSID})

_BIND_PDUS: dict[str, type[BindTransceiver] | type[BindTransmitter] | type[BindReceiver]] = {
    "transceiver": BindTransceiver,
    "transmitter": BindTransmitter,
    "receiver": BindReceiver,
}


@dataclass(frozen=True)
class LinkOptions:
    """Link settings that are not per-carrier configuration (app.py may override)."""

    max_queued_parts: int = 20_000  # parts waiting for a window slot or a token
    throttle_retry_seconds: float = (
        1.0  # first resubmit delay after ESME_RTHROTTLED; grows linearly
    )
    max_throttle_retries: int = 5
    throttle_slow_down_factor: float = 0.5
    unbind_timeout_seconds: float = 5.0
    drain_timeout_seconds: float = 10.0
    # Parts of a citizen's long message arrive within a second; an SMSC waits tens of
    # seconds for deliver_sm_resp before resending, and we hold the parts' acks meanwhile.
    mo_reassembly_timeout_seconds: float = 20.0
    max_mo_reassemblies: int = 1_000
    max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES
    # PEM of the CA (or self-signed certificate) that signs the SMSC's TLS certificate;
    # empty: the system's trust store.  Carriers' private links often use a private CA.
    tls_trust_root_pem: str = ""


class LinkSubmitFailed(SubmitFailed):
    """SubmitFailed plus the carrier message ids of the parts that were accepted."""

    def __init__(
        self,
        reason: str,
        *,
        transient: bool,
        status: str = "",
        response_unknown: bool = False,
        link_down: bool = False,
        accepted_message_ids: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            reason, transient=transient, status=status, response_unknown=response_unknown,
            link_down=link_down,
        )
        self.accepted_message_ids = accepted_message_ids


class _Submit:
    """One OutboundSms being submitted."""

    __slots__ = ("deferred", "failure", "in_flight", "may_send", "message_ids", "receipt_from_last", "receipt_parts",
                 "remaining")

    def __init__(self, parts: int, may_send: Callable[[], bool] | None = None) -> None:
        self.deferred: Deferred[SubmitAccepted] = Deferred()
        self.message_ids: list[str | None] = [None] * parts
        self.remaining = parts  # parts without a message id
        self.in_flight = 0  # parts sent and not answered
        # [reason, transient, status, response_unknown, link_down]
        self.failure: list[Any] | None = None
        self.receipt_parts: int | None = None  # leading parts asking for a receipt (None: all)
        self.receipt_from_last = False  # the one part asking is the last (receipt_parts last)
        self.may_send = may_send  # OutboundSms.may_send, asked before the first part goes out


class _PartJob:
    """One submit_sm of a submit; the session's context for it (called with its outcome)."""

    __slots__ = ("attempts", "index", "link", "pdu", "protocol", "submit")

    def __init__(self, link: CarrierLink, submit: _Submit, index: int, pdu: SubmitSm) -> None:
        self.link = link
        self.submit = submit
        self.index = index
        self.pdu = pdu
        self.attempts = 0
        self.protocol: SmppProtocol | None = None  # the session it was last sent on

    def __call__(self, event: Event) -> None:
        self.link._part_settled(self, event)


class _LinkSession(SessionOwner):
    """One connection of a link, as the owner of its SmppProtocol."""

    def __init__(self, link: CarrierLink, bind_type: str) -> None:
        self.link = link
        self.bind_type = bind_type
        self.can_transmit = bind_type != "receiver"
        self.can_receive = bind_type != "transmitter"
        self.protocol: SmppProtocol | None = None
        self.bound = False
        self.service_proxy: IProtocol | None = None  # ClientService's view, once bound
        self.lease_holder: str | None = None  # its bind lease (carriers[].max_binds)

    def pdu_received(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        self.link._inbound(protocol, pdu)

    def unbind_requested(self, protocol: SmppProtocol) -> None:
        self.link._session_down(self, "the SMSC sent unbind")

    def session_closed(self, protocol: SmppProtocol, reason: str) -> None:
        self.link._session_down(self, reason)

    def connection_lost(self, protocol: SmppProtocol, reason: Failure) -> None:
        self.link._session_down(self)
        proxy, self.service_proxy = self.service_proxy, None
        if proxy is not None:
            proxy.connectionLost(reason)  # ClientService reconnects


class _OneProtocolFactory(Factory):
    def __init__(self, protocol: SmppProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class _BoundHandle(Protocol):
    """What ClientService holds: a stand-in for a bound SmppProtocol (``.smpp``)."""

    smpp: SmppProtocol | None = None


@implementer(IStreamClientEndpoint)
class _BindingEndpoint:
    """Connects with ``endpoint`` and binds; fires only with a bound connection."""

    def __init__(self, link: CarrierLink, bind_type: str, endpoint: IStreamClientEndpoint,
                 slot_name: str = "") -> None:
        self.link = link
        self.bind_type = bind_type
        self.endpoint = endpoint
        self.slot_name = slot_name or bind_type
        self.last_bind_rejected = False
        self.last_lease_refused = False

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        leases = self.link.account.binds if self.link.account is not None else None
        if leases is None:
            return self._connect_and_bind(factory, None)
        # carriers[].max_binds: no lease, no connection (gateway/fleet/leases.py).
        holder = leases.holder(self.slot_name)
        inner: list[Deferred[IProtocol]] = []

        def cancel(_: Deferred[IProtocol]) -> None:
            if inner:
                inner[0].cancel()

        result: Deferred[IProtocol] = Deferred(cancel)

        def answered(granted: bool) -> None:
            if result.called:  # cancelled while asking
                if granted:
                    leases.release(holder)
                return
            if not granted:
                if not self.last_lease_refused:
                    log.info("carrier {carrier}: every bind of the account is leased (max_binds "
                             "{max_binds}); {slot} waits for a lease", carrier=self.link.carrier,
                             max_binds=self.link.config.max_binds, slot=self.slot_name)
                self.last_lease_refused = True
                result.errback(Failure(ConnectionRefusedError("no bind lease")))
                return
            self.last_lease_refused = False
            attempt = self._connect_and_bind(factory, holder)
            inner.append(attempt)
            attempt.chainDeferred(result)

        def broken(failure: Failure) -> None:
            log.failure("carrier {carrier}: asking for a bind lease failed", failure, carrier=self.link.carrier)
            answered(False)  # not bound; the slot asks again after its retry delay

        leases.acquire(holder).addCallbacks(answered, broken)
        return result

    def _connect_and_bind(self, factory: IProtocolFactory, lease_holder: str | None) -> Deferred[IProtocol]:
        link = self.link
        session = _LinkSession(link, self.bind_type)
        session.lease_holder = lease_holder
        protocol = link._new_protocol(session)
        connecting = self.endpoint.connect(_OneProtocolFactory(protocol))
        result: Deferred[IProtocol]

        def cancel(_: Deferred[IProtocol]) -> None:
            if not connecting.called:
                connecting.cancel()
            else:
                protocol.abort()

        result = Deferred(cancel)

        def bind(_: object) -> Deferred[Pdu]:
            return protocol.request(link._bind_pdu(self.bind_type))

        def bound(_: Pdu) -> None:
            self.last_bind_rejected = False
            if result.called:  # cancelled meanwhile (stopService)
                link._release_lease(session)
                protocol.disconnect()
                return
            transport = protocol.transport
            assert transport is not None  # bound: the connection is there
            handle = factory.buildProtocol(transport.getPeer())
            assert handle is not None
            handle.makeConnection(transport)
            session.service_proxy = handle
            link._session_bound(session)
            result.callback(handle)

        def failed(reason: Failure) -> None:
            self.last_bind_rejected = False
            if not reason.check(CancelledError):
                link.note_link_problem(_failure_summary(reason))
            if reason.check(BindRefused):
                status = cast(BindRefused, reason.value).status
                if status in REJECTED_BIND_STATUSES:
                    self.last_bind_rejected = True
                    log.error(
                        "carrier {carrier} refused our {bind_type} bind: {status}; check system_id "
                        "and password, retrying in {delay} s",
                        carrier=link.carrier,
                        bind_type=self.bind_type,
                        status=status_name(status),
                        delay=link.config.bind_rejected_retry_seconds,
                    )
                else:
                    log.warn(
                        "carrier {carrier} {bind_type} bind failed: {status}",
                        carrier=link.carrier,
                        bind_type=self.bind_type,
                        status=status_name(status) if status is not None else "no bind_resp",
                    )
            elif not reason.check(CancelledError):
                log.warn(
                    "carrier {carrier} {bind_type} connection failed: {error}",
                    carrier=link.carrier,
                    bind_type=self.bind_type,
                    error=reason.getErrorMessage(),
                )
            link._release_lease(session)
            protocol.disconnect()
            if not result.called:
                result.errback(reason)

        connecting.addCallback(bind).addCallbacks(bound, failed)
        return result

    def retry_delay(
        self, backoff: Callable[[int], float], jitter: Callable[[], float]
    ) -> Callable[[int], float]:
        def policy(attempt: int) -> float:
            if self.last_bind_rejected:
                return self.link.config.bind_rejected_retry_seconds + jitter()
            if self.last_lease_refused and self.link.account is not None:
                return self.link.account.bind_retry_seconds + jitter()
            return backoff(attempt)

        return policy


UNRECORDED_LOG_INTERVAL_SECONDS = 5.0


def _failure_summary(reason: Failure) -> str:
    """A short reason for the console and the fleet status (no reprs, no addresses)."""
    if reason.check(BindRefused):
        status = cast(BindRefused, reason.value).status
        return f"bind refused: {status_name(status) if status is not None else 'no bind_resp'}"
    return reason.getErrorMessage()[:200]


class CarrierLink(MultiService):
    """Binds to one carrier and submits to it; see the module docstring.

    Args:
        config: the carrier's section.
        inbound: where receipts and MOs go (recorded before deliver_sm_resp).
        reactor: IReactorTime (and IReactorTCP unless ``endpoint`` is given).
        endpoint: connect with this instead of host/port/tls from ``config`` (tests).
        options: settings that are not per carrier.
        jitter: random delay added to reconnect delays (seconds); tests pass ``lambda: 0``.
        account: the account's fleet-wide TPS and bind leases (gateway.fleet.account).
        wall_clock: the time of day for what leaves the process (an absolute
            validity_period, an MO's received_at): the fleet clock in the daemon, whose
            reactor tells elapsed time (gateway/reactor.py); ``reactor`` when not given.
    """

    def __init__(
        self,
        config: CarrierConfig,
        inbound: InboundSink,
        reactor: Any,
        *,
        wall_clock: Any = None,
        endpoint: IStreamClientEndpoint | None = None,
        options: LinkOptions = LinkOptions(),  # noqa: B008 - frozen
        jitter: Callable[[], float] = random.random,
        account: AccountLimits | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.account = account
        self._account_rate = account.rate if account is not None else None
        if account is not None and account.rate is not None:
            account.rate.on_slots = self._account_slots_arrived
        if account is not None and account.binds is not None:
            account.binds.on_lost = self._bind_lease_lost
        # Service.name doubles as the CarrierLink port's name: the service is the carrier.
        self.name = config.name
        self.carrier: str = config.name  # the same, typed (Service.name is Optional)
        self.prefixes = tuple(config.prefixes)
        # Routing (gateway.push.routing): failover policy, from the carrier's config.
        self.accepts_other_carriers = config.accepts_other_carriers
        self.failover_after_seconds = config.failover_after_seconds
        self.inbound = inbound
        self.clock: IReactorTime = reactor
        self.wall_clock: IReactorTime = wall_clock or reactor
        self.options = options
        self._transmitters: list[_LinkSession] = []
        self._receivers: list[_LinkSession] = []
        self._all_sessions: set[_LinkSession] = set()  # bound ones, any type
        self._outbind_sessions: set[_LinkSession] = set()
        self._queue: deque[_PartJob] = deque()
        self._round_robin = 0
        self._bucket = TokenBucket(
            config.tps_limit, max(1.0, config.tps_limit / 10), now=reactor.seconds()
        )
        self._pump_call: IDelayedCall | None = None
        self._retry_calls: set[IDelayedCall] = set()
        self._reference = random.randrange(0x10000)
        self._active_submits = 0
        self._holding = 0  # holding_submits() blocks open: submit() queues without pumping
        self._stopping = False
        self._drain_waiters: list[Deferred[None]] = []
        self._unrecorded = 0
        self._unrecorded_logged_at = float("-inf")
        self._bound_waiters: list[Deferred[None]] = []
        self._reassembler = Reassembler(
            timeout_seconds=options.mo_reassembly_timeout_seconds,
            max_pending=options.max_mo_reassemblies,
        )
        self._held_parts: dict[tuple[str, int, int], list[tuple[SmppProtocol, Pdu]]] = {}
        self._reassembly_timer = ReassemblyTimer(self._reassembler, reactor, self._mo_incomplete)
        self._hex_upper = False
        self._hex_width = 0
        self._response_counters: dict[int, Any] = {}
        self._fenced = metrics.submits_fenced.labels(config.name)
        self._status_classes = StatusClassifier(
            (override.status, override.treat_as) for override in config.error_classes
        )
        self._latency = metrics.submit_latency.labels(config.name)
        self.binding_endpoints: list[_BindingEndpoint] = []
        # Operations (gateway/ops/fleet.py): why the link is not bound, and since when.
        # isolated: bound and receiving receipts, but routing sends it nothing (Kannel's
        # "isolate"); set by the fleet-wide runtime control.
        self.isolated = False
        self.problem = ""
        self.state_since = reactor.seconds()

        inner = endpoint if endpoint is not None else self._make_endpoint(reactor)
        backoff = backoffPolicy(
            config.reconnect_initial_seconds, config.reconnect_max_seconds, jitter=jitter
        )
        bind_types = (
            ["transceiver"] if config.bind_mode == "transceiver" else ["transmitter", "receiver"]
        )
        for index in range(config.sessions):
            for bind_type in bind_types:
                binding = _BindingEndpoint(self, bind_type, inner, f"{config.name}-{bind_type}-{index}")
                self.binding_endpoints.append(binding)
                service = ClientService(
                    binding,
                    Factory.forProtocol(_BoundHandle),
                    retryPolicy=binding.retry_delay(backoff, jitter),
                    clock=reactor,
                )
                service.setName(f"{config.name}-{bind_type}-{index}")
                service.setServiceParent(self)

    def _make_endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, self.config.host, self.config.port, timeout=10
        )
        if self.config.tls:
            from twisted.internet import ssl

            trust_root = (
                ssl.Certificate.loadPEM(self.options.tls_trust_root_pem.encode("ascii"))
                if self.options.tls_trust_root_pem
                else None
            )
            tls_options = ssl.optionsForClientTLS(self.config.host, trustRoot=trust_root)
            endpoint = wrapClientTLS(tls_options, endpoint)
        return endpoint

    # -- CarrierLink port ---------------------------------------------------------------

    def is_bound(self) -> bool:
        if self.isolated:
            return False  # the router skips it, so traffic moves to the other carriers
        return self.sessions_bound() > 0

    def sessions_bound(self) -> int:
        """Bound sessions that can submit (isolated or not)."""
        return sum(1 for s in self._transmitters if s.protocol is not None and s.protocol.is_bound)

    def window_in_use(self) -> int:
        """Requests sent and not yet answered, over every bound session."""
        return sum(
            max(0, self.config.window - s.protocol.window_free)
            for s in self._transmitters
            if s.protocol is not None and s.protocol.is_bound
        )

    @property
    def tps_limit(self) -> float:
        return self._bucket.nominal_rate

    def set_tps_limit(self, tps: float) -> None:
        """Change the submit rate at run time (the fleet-wide control applies it)."""
        if tps > 0 and tps != self._bucket.nominal_rate:
            self._bucket = TokenBucket(tps, max(1.0, tps / 10), now=self.clock.seconds())

    def note_link_problem(self, reason: str) -> None:
        """A connect or bind attempt failed: the reason the console shows while down."""
        if not self.sessions_bound():
            self.problem = reason

    def when_bound(self) -> Deferred[None]:
        """Fires when a session that can submit is bound (at once if one is)."""
        if self.is_bound():
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._bound_waiters.append(waiter)
        return waiter

    def submit(self, sms: OutboundSms) -> Deferred[SubmitAccepted]:
        """Submit ``sms``; fires SubmitAccepted or fails with LinkSubmitFailed."""
        if self._stopping:
            return fail(LinkSubmitFailed("link stopping", transient=True, link_down=True))
        if not self.is_bound():
            return fail(LinkSubmitFailed("not bound", transient=True, link_down=True))
        config = self.config
        self._reference = (self._reference + 1) & 0xFFFF
        try:
            plan = plan_message(
                sms.text,
                encoding=config.encoding,  # type: ignore[arg-type]
                gsm7_packed=config.gsm7_packed,
                concatenation=config.concatenation,  # type: ignore[arg-type]
                max_parts=config.max_parts,
                reference=self._reference,
            )
        except MessageTooLong as e:
            return fail(
                LinkSubmitFailed(f"message too long: {e}", transient=False, status="too_long")
            )
        except NotGsm7Encodable as e:
            return fail(
                LinkSubmitFailed(
                    f"text not encodable: {e}", transient=False, status="not_encodable"
                )
            )
        parts = plan.parts
        if len(self._queue) + len(parts) > self.options.max_queued_parts:
            return fail(LinkSubmitFailed("local submit queue full", transient=True))
        registered_delivery = config.registered_delivery if sms.registered_delivery else 0
        source_addr = sms.source_addr or config.source_addr
        destination = sms.destination.digits
        validity_period = self._validity_period(sms.validity_seconds)
        priority_flag = config.priority_flag_high_lane if sms.lane == "high" else 0
        submit = _Submit(len(parts), sms.may_send)
        # receipt_parts first or last: only that part asks (the others 0)
        asking = 0 if config.receipt_parts == "first" else len(parts) - 1
        one_only = registered_delivery and config.receipt_parts != "every" and len(parts) > 1
        if one_only:
            submit.receipt_parts = 1
            submit.receipt_from_last = config.receipt_parts == "last"
        elif not registered_delivery:
            submit.receipt_parts = 0  # no receipt will come: nothing to index
        for index, part in enumerate(parts):
            pdu = SubmitSm(
                0,
                source_addr_ton=config.source_addr_ton,
                source_addr_npi=config.source_addr_npi,
                source_addr=source_addr,
                dest_addr_ton=config.dest_addr_ton,
                dest_addr_npi=config.dest_addr_npi,
                destination_addr=destination,
                esm_class=part.esm_class,
                priority_flag=priority_flag,
                validity_period=validity_period,
                registered_delivery=0 if one_only and index != asking else registered_delivery,
                data_coding=part.data_coding,
                short_message=part.short_message,
                tlvs=part.tlvs,
            )
            self._queue.append(_PartJob(self, submit, index, pdu))
        self._active_submits += 1
        if not self._holding:
            self._pump()
        return submit.deferred

    def _validity_period(self, validity_seconds: float | None) -> str:
        """validity_period (SMPP 3.4 section 7.1.1) for a message worthless in
        ``validity_seconds``, as the carrier wants it ("" when off or without a limit)."""
        mode = self.config.validity_period
        if validity_seconds is None or mode == "off":
            return ""
        if mode == "absolute":
            return absolute_time(self.wall_clock.seconds() + validity_seconds)
        return relative_time(validity_seconds)

    @contextmanager
    def holding_submits(self) -> Iterator[None]:
        """Submits made inside the block go out together when it ends: one write per
        session for a batch of messages instead of one per message (the dispatcher
        submits each claimed batch so)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self._pump()

    # -- the submit pump --------------------------------------------------------------------

    def _pump(self) -> None:
        if self._pump_call is not None:
            return  # waiting for a token; that call pumps
        queue = self._queue
        transmitters = self._transmitters
        if not queue or not transmitters:
            return
        now = self.clock.seconds()
        touched: list[SmppProtocol] = []
        count = len(transmitters)
        while queue:
            job = queue[0]
            if job.submit.failure is not None:
                queue.popleft()  # a sibling part failed: do not send the rest
                continue
            if job.index == 0 and job.submit.may_send is not None and not job.submit.may_send():
                # Its sender's claim ran out while it waited here (the process was paused,
                # or Redis away): another process may be sending it already.
                queue.popleft()
                self._fenced.inc()
                self._part_failed(job, "claim lease ran out before it was sent", transient=True, link_down=True)
                continue
            protocol = None
            for _ in range(count):
                self._round_robin = (self._round_robin + 1) % count
                candidate = transmitters[self._round_robin].protocol
                if candidate is not None and candidate.window_free > 0 and candidate.is_bound:
                    protocol = candidate
                    break
            if protocol is None:
                break  # every window is full: a response or timeout pumps again
            wait = self._bucket.take(now)
            if wait == 0 and self._account_rate is not None:
                wait = self._account_rate.take(now)  # the account's TPS over the fleet
                if wait > 0:
                    self._bucket.refund()
            if wait > 0:
                self._pump_call = self.clock.callLater(wait, self._pump_later)
                break
            queue.popleft()
            try:
                protocol.send_request(job.pdu, job, flush=False)
            except PduEncodeError as e:
                self._part_failed(
                    job, f"submit_sm not encodable: {e}", transient=False, status="not_encodable"
                )
                continue
            except LocalProtocolError:
                queue.appendleft(job)  # the session is going down; its close event follows
                break
            job.submit.in_flight += 1
            job.protocol = protocol
            if protocol not in touched:
                touched.append(protocol)
        for protocol in touched:
            protocol.flush()

    def _pump_later(self) -> None:
        self._pump_call = None
        self._pump()

    def _account_slots_arrived(self) -> None:
        """Send slots reserved for the account arrived: pump now rather than at the poll."""
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
            self._pump_call = None
        self._pump()

    def _release_lease(self, session: _LinkSession) -> None:
        holder, session.lease_holder = session.lease_holder, None
        if holder is not None and self.account is not None and self.account.binds is not None:
            self.account.binds.release(holder)

    @staticmethod
    def _disconnect_after_unbind(_: object, protocol: SmppProtocol) -> None:
        protocol.disconnect()

    def _bind_lease_lost(self, holder: str) -> None:
        """Our bind lease lapsed or could not be renewed: unbind that session (the
        ClientService then reconnects, which asks for a lease again)."""
        for session in list(self._all_sessions):
            if session.lease_holder == holder and session.protocol is not None:
                session.lease_holder = None
                protocol = session.protocol
                log.error("carrier {carrier}: unbinding {bind_type}, its bind lease is lost",
                          carrier=self.carrier, bind_type=session.bind_type)
                if protocol.is_bound:
                    d = protocol.request(Unbind(0))
                    d.addTimeout(min(1.0, self.options.unbind_timeout_seconds), self.clock)
                    d.addBoth(self._disconnect_after_unbind, protocol)
                else:
                    protocol.disconnect()

    def _part_settled(self, job: _PartJob, event: Event) -> None:
        submit = job.submit
        submit.in_flight -= 1
        cls = type(event)
        if cls is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            pdu = event.pdu
            status = pdu.command_status
            if status == CommandStatus.ESME_ROK and type(pdu) is GenericNack:
                status = CommandStatus.ESME_RUNKNOWNERR
            self._count_response(status, event.elapsed)
            if status == CommandStatus.ESME_ROK:
                message_id: str = pdu.message_id  # type: ignore[attr-defined]
                if self.config.message_id_format == "dec_to_hex":
                    self._learn_hex_form(message_id)
                submit.message_ids[job.index] = message_id
                submit.remaining -= 1
                if submit.failure is None:
                    if submit.remaining == 0:
                        self._active_submits -= 1
                        submit.deferred.callback(
                            SubmitAccepted(self.carrier, tuple(cast(list[str], submit.message_ids)),
                                           submit.receipt_parts, submit.receipt_from_last)
                        )  # type: ignore[arg-type]
                        self._check_drained()
                elif submit.in_flight == 0:
                    self._settle_failed(submit)
                self._pump()
                return
            status_class = self._status_classes.classify(status)
            if status_class is StatusClass.THROTTLED:
                self._bucket.slow_down(self.options.throttle_slow_down_factor, self.clock.seconds())
                job.attempts += 1
                if submit.failure is not None or job.attempts > self.options.max_throttle_retries:
                    self._part_failed(
                        job, "carrier keeps throttling", transient=True, status=status_name(status)
                    )
                else:
                    delay = self.options.throttle_retry_seconds * job.attempts
                    call = self.clock.callLater(delay, self._resubmit, job)
                    self._retry_calls.add(call)
            elif status_class is StatusClass.TEMPORARY:
                self._part_failed(
                    job, "carrier could not take it now", transient=True, status=status_name(status)
                )
            elif status_class is StatusClass.BIND:
                # The SMSC no longer treats this session as bound: rebind it, and retry
                # the message without spending an attempt (as for a lost link).
                log.warn(
                    "carrier {carrier} answered a submit with {status}: rebinding the session",
                    carrier=self.carrier,
                    status=status_name(status),
                )
                self._part_failed(
                    job, "session not bound at the SMSC", transient=True,
                    status=status_name(status), link_down=True,
                )
                if job.protocol is not None:
                    job.protocol.disconnect()
            else:
                self._part_failed(
                    job, "carrier refused the submit", transient=False, status=status_name(status)
                )
        elif cls is RequestTimedOut:
            self._part_failed(
                job, "submit_sm_resp not received in time", transient=True, response_unknown=True
            )
        elif cls is RequestAbandoned:
            self._part_failed(job, "link lost", transient=True, response_unknown=True, link_down=True)
        self._pump()

    def _resubmit(self, job: _PartJob) -> None:
        self._retry_calls = {c for c in self._retry_calls if c.active()}
        if job.submit.failure is not None:
            return
        if not self._transmitters:
            self._part_failed(job, "link lost", transient=True, link_down=True)
            return
        self._queue.appendleft(job)
        self._pump()

    def _part_failed(
        self,
        job: _PartJob,
        reason: str,
        *,
        transient: bool,
        status: str = "",
        response_unknown: bool = False,
        link_down: bool = False,
    ) -> None:
        submit = job.submit
        if submit.failure is None:
            submit.failure = [reason, transient, status, response_unknown, link_down]
        else:
            failure = submit.failure
            failure[1] = failure[1] and transient
            failure[3] = failure[3] or response_unknown
            failure[4] = failure[4] and link_down  # only when the link alone stopped it
        if submit.in_flight == 0 and not submit.deferred.called:
            self._settle_failed(submit)

    def _settle_failed(self, submit: _Submit) -> None:
        assert submit.failure is not None
        reason, transient, status, response_unknown, link_down = submit.failure
        self._active_submits -= 1
        submit.deferred.errback(
            LinkSubmitFailed(
                reason,
                transient=transient,
                status=status,
                response_unknown=response_unknown,
                link_down=link_down,
                accepted_message_ids=tuple(m for m in submit.message_ids if m is not None),
            )
        )
        self._check_drained()

    def _fail_queued(self, reason: str) -> None:
        """Fail every submit with parts still waiting in the FIFO (never sent: no
        duplicates) because the link went away (lost or stopping)."""
        queue, self._queue = self._queue, deque()
        for job in queue:
            if job.submit.failure is None:
                self._part_failed(job, reason, transient=True, link_down=True)

    def _count_response(self, status: int, elapsed: float) -> None:
        counter = self._response_counters.get(status)
        if counter is None:
            counter = self._response_counters[status] = metrics.submit_responses.labels(
                self.carrier, status_name(status)
            )
        counter.inc()
        self._latency.observe(elapsed)

    # -- sessions ---------------------------------------------------------------------------

    def _new_protocol(self, session: _LinkSession) -> SmppProtocol:
        config = self.config
        options = self.options

        def new_session(now: float) -> SmppSession:
            return SmppSession(
                Role.ESME,
                max_pdu_bytes=options.max_pdu_bytes,
                window=config.window,
                response_timeout_seconds=config.response_timeout_seconds,
                enquire_link_interval_seconds=config.enquire_link_interval_seconds,
                now=now,
            )

        protocol = SmppProtocol(new_session, session, self.clock, label=self.carrier)
        session.protocol = protocol
        return protocol

    def _bind_pdu(self, bind_type: str) -> Pdu:
        config = self.config
        return _BIND_PDUS[bind_type](
            0,
            system_id=config.system_id,
            password=config.password.reveal(),
            system_type=config.system_type,
        )

    def _session_bound(self, session: _LinkSession) -> None:
        session.bound = True
        if not self._all_sessions:
            self.state_since = self.clock.seconds()
        self.problem = ""
        self._all_sessions.add(session)
        if session.can_transmit:
            self._transmitters.append(session)
        if session.can_receive:
            self._receivers.append(session)
        metrics.binds_up.labels(self.carrier, session.bind_type).inc()
        log.info(
            "carrier {carrier} bound ({bind_type})",
            carrier=self.carrier,
            bind_type=session.bind_type,
        )
        if session.can_transmit and self._bound_waiters:
            waiters, self._bound_waiters = self._bound_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        self._pump()

    def _session_down(self, session: _LinkSession, reason: str = "") -> None:
        if not session.bound:
            return
        session.bound = False
        self._release_lease(session)
        self._all_sessions.discard(session)
        self._outbind_sessions.discard(session)
        if session in self._transmitters:
            self._transmitters.remove(session)
        if session in self._receivers:
            self._receivers.remove(session)
        metrics.binds_up.labels(self.carrier, session.bind_type).dec()
        if not self._all_sessions:
            self.state_since = self.clock.seconds()
            self.problem = "stopped" if self._stopping else (reason or "connection lost")
        if self._stopping:
            log.info(
                "carrier {carrier} session closed ({bind_type})",
                carrier=self.carrier,
                bind_type=session.bind_type,
            )
        else:
            log.error(
                "carrier {carrier} lost a bound {bind_type} session: {reason}",
                carrier=self.carrier,
                bind_type=session.bind_type,
                reason=reason or "connection lost",
            )
        if not self._transmitters:
            self._fail_queued("link lost")

    # -- outbind ----------------------------------------------------------------------------

    def outbind_matches(self, system_id: str, password: str) -> bool:
        """Whether an outbind's credentials are this carrier's (config defaults applied)."""
        config = self.config
        if not config.accept_outbind:
            return False
        expected_id = config.outbind_system_id or config.system_id
        expected_password = config.outbind_password.reveal() or config.password.reveal()
        same_id = hmac.compare_digest(system_id.encode("latin-1"), expected_id.encode("latin-1"))
        same_password = hmac.compare_digest(
            password.encode("latin-1"), expected_password.encode("latin-1")
        )
        return same_id and same_password

    def accept_outbind(self, protocol: SmppProtocol) -> Deferred[None]:
        """Take over a listener connection on which this carrier sent outbind: bind as
        receiver with our credentials, then handle deliver_sm as on any receiver."""
        session = _LinkSession(self, "receiver")
        session.protocol = protocol
        protocol.owner = session
        protocol.label = self.carrier

        def bound(_: Pdu) -> None:
            self._outbind_sessions.add(session)
            self._session_bound(session)

        def failed(reason: Failure) -> None:
            log.error(
                "carrier {carrier} outbind: our bind_receiver failed: {error}",
                carrier=self.carrier,
                error=reason.getErrorMessage(),
            )
            protocol.disconnect()

        return protocol.request(self._bind_pdu("receiver")).addCallbacks(bound, failed)

    # -- inbound ----------------------------------------------------------------------------

    def _inbound(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        if not isinstance(pdu, DeliverSm | DataSm):
            return  # alert_notification: nothing to answer, nothing we use
        try:
            receipt = receipt_from_deliver(pdu)
        except ReceiptParseError as e:
            # Neither the declared data_coding nor ASCII/latin-1 gave an id or a stat.  A
            # temporary error makes the SMSC send it again (perhaps readable after a fix
            # on its side); a permanent one loses it, and the notification ends
            # unconfirmed.  The carrier's config says which it can live with.
            status = (
                CommandStatus.ESME_RX_T_APPN
                if self.config.unreadable_receipt_resend
                else CommandStatus.ESME_RX_P_APPN
            )
            log.warn(
                "carrier {carrier} sent an unreadable receipt (sequence_number {sequence_number}, "
                "data_coding {data_coding}): {error}; answered {status}",
                carrier=self.carrier,
                sequence_number=pdu.sequence_number,
                data_coding=pdu.data_coding,
                error=str(e),
                status=status.name,
            )
            protocol.respond(pdu, status)
            return
        if receipt is not None:
            record = DeliveryReceipt(
                carrier=self.carrier,
                message_id=self._normalise_message_id(receipt.message_id),
                state=receipt.stat,
                error_code=receipt.err,
                submit_date=receipt.submit_date,
                done_date=receipt.done_date,
                source_addr=pdu.source_addr,
                destination_addr=pdu.destination_addr,
            )
            self._ack_when_recorded(
                maybeDeferred(self.inbound.record_receipt, record), [(protocol, pdu)], "receipt"
            )
            return
        self._mobile_originated(protocol, pdu)

    def _mobile_originated(self, protocol: SmppProtocol, pdu: DeliverSm | DataSm) -> None:
        text, concatenation = decode_pdu_text(
            pdu,
            gsm7_packed=self.config.gsm7_packed,
            default_alphabet=self.config.data_coding_0_alphabet,  # type: ignore[arg-type]
        )
        held: list[tuple[SmppProtocol, Pdu]] = [(protocol, pdu)]
        if concatenation is not None and concatenation.total > 1:
            source = pdu.source_addr
            try:
                whole = self._reassembler.add(source, concatenation, text, now=self.clock.seconds())
            except ValueError:
                whole = text  # an impossible part number: take the part as a message
            else:
                key = (source, concatenation.reference, concatenation.total)
                self._held_parts.setdefault(key, []).append((protocol, pdu))
                if whole is None:
                    self._reassembly_timer.schedule()
                    return
                held = self._held_parts.pop(key)
            text = whole
        self._record_mo(pdu.source_addr, pdu.destination_addr, text, held, {})

    def _record_mo(
        self,
        source_addr: str,
        destination_addr: str,
        text: str,
        held: list[tuple[SmppProtocol, Pdu]],
        extra: dict[str, str],
    ) -> None:
        try:
            source = PhoneNumber.cn_mobile(source_addr)
        except InvalidPhoneNumber:
            source = PhoneNumber(source_addr)
        message = MobileOriginated(
            carrier=self.carrier,
            source=source,
            destination=destination_addr,
            text=text,
            received_at=self.wall_clock.seconds(),
            extra=extra,
        )
        self._ack_when_recorded(maybeDeferred(self.inbound.record_mo, message), held, "MO")

    def _ack_when_recorded(
        self, recorded: Deferred[None], held: list[tuple[SmppProtocol, Pdu]], kind: str
    ) -> None:
        # Bound methods with arguments, not closures: this runs for every receipt.
        recorded.addCallbacks(
            self._acknowledge, self._not_recorded, callbackArgs=(held,), errbackArgs=(held,)
        ).addErrback(self._answering_failed, kind)

    @staticmethod
    def _acknowledge(_: object, held: list[tuple[SmppProtocol, Pdu]]) -> None:
        for protocol, pdu in held:
            protocol.respond(pdu)

    def _not_recorded(self, reason: Failure, held: list[tuple[SmppProtocol, Pdu]]) -> None:
        # While Redis is away every receipt fails alike: one line per interval, counted.
        self._unrecorded += 1
        now = self.clock.seconds()
        if now - self._unrecorded_logged_at >= UNRECORDED_LOG_INTERVAL_SECONDS:
            log.error(
                "carrier {carrier}: could not record {count} receipts/MOs ({error}); "
                "answered ESME_RX_T_APPN, the SMSC will redeliver",
                carrier=self.carrier,
                count=self._unrecorded,
                error=reason.getErrorMessage(),
            )
            self._unrecorded = 0
            self._unrecorded_logged_at = now
        for protocol, pdu in held:
            protocol.respond(pdu, CommandStatus.ESME_RX_T_APPN)

    def _answering_failed(self, failure: Failure, kind: str) -> None:
        log.failure("carrier {carrier}: answering a {kind}", failure, carrier=self.carrier, kind=kind)

    def _mo_incomplete(self, expired: Any) -> None:
        """A long MO whose parts stopped coming: record what arrived, marked incomplete."""
        held = self._held_parts.pop((expired.source, expired.reference, expired.total), [])
        if not held:
            return
        extra = {"incomplete": f"{len(expired.parts)}/{expired.total}"}
        first = cast(DeliverSm, held[0][1])
        self._record_mo(expired.source, first.destination_addr, expired.partial_text(), held, extra)

    def _normalise_message_id(self, raw: str) -> str:
        return normalise_message_id(
            raw,
            id_format=self.config.message_id_format,  # type: ignore[arg-type]
            hex_upper=self._hex_upper,
            hex_width=self._hex_width,
        )

    def _learn_hex_form(self, message_id: str) -> None:
        # dec_to_hex: receipts say 12345678, submit_sm_resp said "00BC614E": copy its
        # case and zero padding so the normalised id is the exact submit_sm_resp string.
        if message_id:
            self._hex_upper = any("A" <= c <= "F" for c in message_id)
            self._hex_width = len(message_id) if message_id[0] == "0" else 0

    # -- lifecycle ----------------------------------------------------------------------------

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def drain(self, timeout: float) -> Deferred[None]:
        """Refuse new submits and fire when every submit in flight has settled, or after
        ``timeout`` seconds, when submits still waiting to be sent fail (transient)."""
        self._stopping = True
        if self._active_submits == 0:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._drain_waiters.append(waiter)

        def timed_out() -> None:
            if not waiter.called:
                log.warn(
                    "carrier {carrier}: {count} submits still in flight after the drain timeout",
                    carrier=self.carrier,
                    count=self._active_submits,
                )
                self._fail_queued("link stopping")
                # Failing the queued submits may have settled the drain already
                # (_check_drained fired this waiter when none was on the wire).
                if not waiter.called:
                    self._drain_waiters.remove(waiter)
                    waiter.callback(None)

        call = self.clock.callLater(timeout, timed_out)

        def stop_timer(result: None) -> None:
            if call.active():
                call.cancel()
            return result

        return waiter.addBoth(stop_timer)

    def _check_drained(self) -> None:
        if self._active_submits == 0 and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def unbind_all(self, timeout: float) -> Deferred[None]:
        """Unbind every bound session; fires when all answered or ``timeout`` passed."""
        pending = []
        for session in list(self._all_sessions):
            protocol = session.protocol
            if protocol is None or not protocol.is_bound:
                continue
            d = protocol.request(Unbind(0))
            d.addTimeout(timeout, self.clock)
            pending.append(d)
        return DeferredList(pending, consumeErrors=True).addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        """Drain, unbind, then stop reconnecting and close every connection."""
        self._stopping = True

        def stop_children(_: object) -> Deferred[Any]:
            for call in (self._pump_call, *self._retry_calls):
                if call is not None and call.active():
                    call.cancel()
            self._pump_call = None
            self._reassembly_timer.cancel()
            self._retry_calls.clear()
            for session in list(self._outbind_sessions):
                if session.protocol is not None:
                    session.protocol.disconnect()
            return maybeDeferred(MultiService.stopService, self)

        d = self.drain(self.options.drain_timeout_seconds)
        d.addCallback(lambda _: self.unbind_all(self.options.unbind_timeout_seconds))
        d.addCallback(stop_children)
        if self.account is not None and self.account.binds is not None:
            binds = self.account.binds
            d.addCallback(lambda _: binds.release_all())  # another process may bind at once
        d.addCallback(lambda _: None)
        return d
