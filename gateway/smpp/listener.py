"""The SMPP listener: partner ESMEs bind to the gateway; carriers may outbind to it.

Theory of operation
-------------------
One port (``SmppServerConfig.listen``; TLS when ``tls_certificate`` names a PEM with
certificate and key).  Every connection starts as an SMSC-side session that also
accepts ``outbind`` as its first request (see gateway.smpp.session):

* **Partner ESMEs** bind with an account's system_id and password.  Checks, in order:
  lock-out of the source address; system_id known (else ESME_RINVSYSID); source address
  in the account's ``allowed_networks`` (else ESME_RBINDFAIL, and a warning: we do not
  tell an outsider whether the password was right); password (else ESME_RINVPASWD);
  bind type allowed (else ESME_RBINDFAIL).  The first three failures count towards the
  address's lock-out: ``max_bind_failures`` within ``bind_failure_window_seconds`` lock
  it for ``lockout_seconds``, during which every bind gets ESME_RBINDFAIL and the
  connection is closed.  Bound, a partner submits with submit_sm or data_sm: the text
  is decoded (multi-part UDH/SAR submits are joined first) and handed to
  ``PartnerIntake.submit_from_partner``; submit_sm_resp carries the message id once the
  intake has recorded it (for a multi-part submit, every part is answered then, each with
  its own id in the account's ``message_id_format``; every part that asked for a receipt
  gets one).  query_sm, cancel_sm and replace_sm are answered from the state in Redis
  (``PartnerIntake.query_from_partner`` ...).  Beyond the account's
  ``tps_limit`` a submit gets ESME_RTHROTTLED.  Receipts go back as deliver_sm
  (``deliver_receipt``, the PartnerReceiptSink port) on a receiver or transceiver
  session of that partner.
* **Carriers** with ``accept_outbind`` connect and send outbind with their
  outbind_system_id/outbind_password; the connection is handed to that carrier's
  `CarrierLink`, which binds as receiver and takes deliver_sm as usual.  A wrong outbind
  counts as a failed bind of that address and closes the connection.

The lock-out counter lives in this process's memory (``BindFailureTracker``), not in
Redis: binds keep working (and failing) when Redis is down, the auth path has no
network round trip, and an attacker facing N gateway processes gets N times
``max_bind_failures`` guesses per window, which does not change the arithmetic of
guessing an 8-character password.  A restart forgets lock-outs; restarting takes longer
than the lock-out it would lift is worth to an attacker.

Limits against careless and hostile peers: at most ``max_connections`` connections are
open at once (bound or not); one more is closed as soon as it is accepted, before any
byte is read (SMPP has no answer to a connection, only to a bind).  An account has at
most ``accounts[].max_sessions`` sessions bound; one more bind, with the right password,
gets ESME_RBINDFAIL.  SMPP 3.4 (5.1.3) has no status for "too many sessions": RBINDFAIL
is its generic "Bind Failed"; ESME_RALYBND means *this* session is already bound and is
what the session table answers to a second bind on one connection.  A refusal for the
session cap does not count towards the address's lock-out: the password was right.
Backpressure (a peer that does not read) is the protocol's: see gateway.smpp.protocol.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import metrics
from gateway.config import PartnerAccount, SmppServerConfig, parse_listen
from gateway.connections import ClosedAtOnce, Networks, RefusalLog
from gateway.ports import PartnerIntake
from gateway.privacy import InvalidPhoneNumber, PhoneNumber
from gateway.smpp.link import CarrierLink
from gateway.smpp.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    CommandStatus,
    DataSm,
    DeliverSm,
    Outbind,
    Pdu,
    QuerySm,
    ReplaceSm,
    SubmitSm,
    Unbind,
    status_name,
)
from gateway.smpp.protocol import ReassemblyTimer, SessionOwner, SmppProtocol
from gateway.smpp.receipts import MESSAGE_STATE_NAMES
from gateway.smpp.session import Role, SmppSession
from gateway.smpp.text import Reassembler, decode_pdu_text
from gateway.smpp.throttle import TokenBucket
from gateway.smpp.times import absolute_time
from gateway.smpp.tlv import Tlv, TlvTag

__all__ = [
    "BindFailureTracker",
    "ListenerOptions",
    "NoReceiverBound",
    "ReceiptRefused",
    "SmppListener",
]

log = Logger()

_BIND_TYPES: Mapping[type, str] = {
    BindTransmitter: "transmitter",
    BindReceiver: "receiver",
    BindTransceiver: "transceiver",
}
_MESSAGE_STATES = {name: value for value, name in MESSAGE_STATE_NAMES.items()}
# What we answer to requests we accept in the bound state but do not implement.
_NOT_SUPPORTED = {
    "SubmitMulti": CommandStatus.ESME_RSUBMITFAIL,
}


class NoReceiverBound(Exception):
    """The partner has no receiver or transceiver session bound (or all windows are full)."""


class ReceiptRefused(Exception):
    """The partner answered the receipt's deliver_sm with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(status_name(status))
        self.status = status


@dataclass(frozen=True)
class ListenerOptions:
    """Listener settings that are not in SmppServerConfig (app.py may override)."""

    unbind_timeout_seconds: float = 5.0
    # Partner multi-part submits: the parts come back to back; a partner that sends part 1
    # and never part 2 gets ESME_RSUBMITFAIL for part 1 after this.
    reassembly_timeout_seconds: float = 30.0
    max_reassemblies: int = 10_000
    # Receipts name the submit date; remember it (and the addresses) for this many ids.
    remembered_submits: int = 100_000
    receipt_timezone: str = "Asia/Shanghai"
    max_tracked_addresses: int = 10_000


class BindFailureTracker:
    """Failed binds per source address, and lock-outs; sans-IO (time passed in).

    ``failed`` returns True when this failure locked the address.  At most
    ``max_addresses`` addresses are tracked; beyond that the oldest is forgotten (a
    flood of spoofed-looking sources must not grow memory without bound).
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        lockout_seconds: float,
        *,
        max_addresses: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.lockout_seconds = lockout_seconds
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def is_locked(self, address: str, now: float) -> bool:
        until = self._locked_until.get(address)
        if until is None:
            return False
        if now >= until:
            del self._locked_until[address]
            return False
        return True

    def failed(self, address: str, now: float) -> bool:
        times = self._failures.get(address)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            times = self._failures[address] = deque(maxlen=self.max_failures)
        else:
            self._failures.move_to_end(address)
        times.append(now)
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked_until[address] = now + self.lockout_seconds
            del self._failures[address]
            return True
        return False

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


@dataclass
class _Account:
    config: PartnerAccount
    networks: Networks
    bucket: TokenBucket

    def allows(self, host: str) -> bool:
        return self.networks.allows(host)


class _Connection(SessionOwner):
    """One connection to the listener, until it is bound (partner) or handed over (outbind)."""

    def __init__(self, listener: SmppListener) -> None:
        self.listener = listener
        self.protocol: SmppProtocol | None = None
        self.address = ""
        self.system_id = ""
        self.bind_type = ""

    def connection_made(self, protocol: SmppProtocol) -> None:
        self.protocol = protocol
        peer = protocol.transport.getPeer()  # type: ignore[union-attr]
        self.address = getattr(peer, "host", str(peer))
        self.listener._connections.add(protocol)

    def pdu_received(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        listener = self.listener
        cls = type(pdu)
        if cls is SubmitSm or cls is DataSm:
            listener._partner_submit(self, protocol, pdu)  # type: ignore[arg-type]
        elif cls in _BIND_TYPES:
            listener._bind(self, protocol, pdu)
        elif cls is Outbind:
            listener._outbind(self, protocol, pdu)  # type: ignore[arg-type]
        elif cls is QuerySm or cls is CancelSm or cls is ReplaceSm:
            listener._partner_request(self, protocol, pdu)  # type: ignore[arg-type]
        else:
            protocol.respond(pdu, _NOT_SUPPORTED.get(cls.__name__, CommandStatus.ESME_RINVCMDID))

    def session_closed(self, protocol: SmppProtocol, reason: str) -> None:
        self.listener._partner_gone(self, protocol)

    def connection_lost(self, protocol: SmppProtocol, reason: Failure) -> None:
        self.listener._connections.discard(protocol)
        self.listener._partner_gone(self, protocol)
        self.protocol = None  # break the cycle protocol <-> owner at once


class SmppListener(Service):
    """The SMPP port; also the PartnerReceiptSink.  See the module docstring.

    Args:
        config: the smpp_server section.
        partner_intake: where partners' messages go.
        carrier_links: carrier name -> link, for outbinds (only carriers with
            accept_outbind are considered).
        reactor: IReactorTCP + IReactorTime (+ IReactorSSL with a certificate).
        certificate_path: the PEM file (config.tls_certificate resolved against the config
            file's folder); None: ``config.tls_certificate`` as given.
        options: settings that are not in the config.
        wall_clock: the time of day of receipts' submit and done dates: the fleet clock in
            the daemon, whose reactor tells elapsed time (gateway/reactor.py); ``reactor``
            when not given.
    """

    name = "smpp-listener"

    def __init__(
        self,
        config: SmppServerConfig,
        partner_intake: PartnerIntake,
        carrier_links: Mapping[str, CarrierLink],
        reactor: Any,
        *,
        certificate_path: str | Path | None = None,
        options: ListenerOptions = ListenerOptions(),  # noqa: B008 - frozen
        wall_clock: Any = None,
    ) -> None:
        self.config = config
        self.intake = partner_intake
        self.carrier_links = dict(carrier_links)
        self.reactor = reactor
        self.wall_clock = wall_clock or reactor
        self.options = options
        self.certificate_path = (
            certificate_path if certificate_path is not None else config.tls_certificate
        )
        now = reactor.seconds()
        self._accounts = {
            account.system_id: _Account(
                account,
                Networks(account.allowed_networks),
                TokenBucket(account.tps_limit, max(1.0, account.tps_limit), now=now),
            )
            for account in config.accounts
        }
        self._failures = BindFailureTracker(
            config.max_bind_failures,
            config.bind_failure_window_seconds,
            config.lockout_seconds,
            max_addresses=options.max_tracked_addresses,
        )
        self._connections: set[SmppProtocol] = set()
        self.open_connections = 0  # accepted and not yet lost, outbinds handed over included
        self._sessions_per_account: dict[str, int] = {}
        self._refusals = RefusalLog("SMPP listener", reactor)
        self._receivers: dict[str, list[SmppProtocol]] = {}
        self._round_robin = 0
        self._reassembler = Reassembler(
            timeout_seconds=options.reassembly_timeout_seconds, max_pending=options.max_reassemblies
        )
        self._held_parts: dict[tuple[str, int, int], list[tuple[SmppProtocol, Pdu, int]]] = {}
        self._reassembly_timer = ReassemblyTimer(self._reassembler, reactor, self._submit_incomplete)
        self._submits: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        self._timezone = ZoneInfo(options.receipt_timezone)
        self._accept_outbind = any(
            link.config.accept_outbind for link in self.carrier_links.values()
        )
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    # -- service --------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        host, port = parse_listen(self.config.listen)
        if self.certificate_path:
            from twisted.internet import ssl

            pem = Path(self.certificate_path).read_text(encoding="ascii")
            options = ssl.PrivateCertificate.loadPEM(pem).options()
            endpoint: Any = SSL4ServerEndpoint(self.reactor, port, options, interface=host)
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, port, interface=host)
        self._listening = endpoint.listen(_ListenerFactory(self))

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            log.info(
                "SMPP listener on {address} ({tls})",
                address=port.getHost(),
                tls="TLS" if self.certificate_path else "plain TCP",
            )
            return port

        def not_listening(reason: Failure) -> Failure:
            log.failure(
                "SMPP listener could not listen on {listen}", reason, listen=self.config.listen
            )
            return reason

        self._listening.addCallback(listening)
        self._listening.addErrback(not_listening)

    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port (for tests on port 0: ``port.getHost().port``)."""
        if self._listening is None:
            return fail(RuntimeError("not started"))
        d: Deferred[IListeningPort] = Deferred()

        def relay(port: IListeningPort) -> IListeningPort:
            d.callback(port)
            return port

        self._listening.addCallback(relay)
        return d

    def partners_bound(self) -> int:
        """Partner sessions bound now (the fleet status shows it)."""
        return sum(1 for p in self._connections if p.is_bound and isinstance(p.owner, _Connection)
                   and p.owner.system_id)

    def stopService(self) -> Deferred[None]:
        """Stop listening, unbind partners (bounded), close every connection."""
        super().stopService()
        self._reassembly_timer.cancel()
        port, self.port = self.port, None
        stopping: Deferred[Any] = (
            maybeDeferred(port.stopListening) if port is not None else succeed(None)  # type: ignore[call-overload]
        )
        unbinds = []
        for protocol in list(self._connections):
            if protocol.is_bound and isinstance(protocol.owner, _Connection):
                d = protocol.request(Unbind(0))
                d.addTimeout(self.options.unbind_timeout_seconds, self.reactor)
                unbinds.append(d)
        done = DeferredList([stopping, *unbinds], consumeErrors=True)

        def close_all(_: object) -> None:
            for protocol in list(self._connections):
                if isinstance(protocol.owner, _Connection):
                    protocol.disconnect()

        return done.addCallback(close_all)

    def _new_protocol(self) -> SmppProtocol:
        config = self.config

        def new_session(now: float) -> SmppSession:
            return SmppSession(
                Role.SMSC,
                max_pdu_bytes=config.max_pdu_bytes,
                window=config.window,
                response_timeout_seconds=config.response_timeout_seconds,
                enquire_link_interval_seconds=config.enquire_link_interval_seconds,
                accept_outbind=self._accept_outbind,
                now=now,
            )

        return _ListenerProtocol(self, new_session, _Connection(self), self.reactor, label="listener")

    def _accept(self) -> bool:
        """Whether one more connection fits under max_connections (counts it if so)."""
        if self.open_connections < self.config.max_connections:
            self.open_connections += 1
            return True
        self._refusals.refused("max_connections", f"{self.config.max_connections} open")
        return False

    # -- binds ------------------------------------------------------------------------------

    def _bind(self, connection: _Connection, protocol: SmppProtocol, pdu: Pdu) -> None:
        assert isinstance(pdu, BindTransmitter | BindReceiver | BindTransceiver)
        now = self.reactor.seconds()
        address = connection.address
        bind_type = _BIND_TYPES[type(pdu)]
        system_id = pdu.system_id
        if self._failures.is_locked(address, now):
            log.warn(
                "SMPP bind from locked-out address {address} (system_id {system_id}) refused",
                address=address,
                system_id=system_id,
            )
            protocol.respond(pdu, CommandStatus.ESME_RBINDFAIL)
            protocol.disconnect()
            return
        account = self._accounts.get(system_id)
        status: CommandStatus | None = None
        counts = True
        if account is None:
            status = CommandStatus.ESME_RINVSYSID
        elif not account.allows(address):
            status = CommandStatus.ESME_RBINDFAIL
        elif not hmac.compare_digest(
            pdu.password.encode("latin-1"), account.config.password.reveal().encode("latin-1")
        ):
            status = CommandStatus.ESME_RINVPASWD
        elif bind_type not in account.config.allowed_bind_types:
            status, counts = CommandStatus.ESME_RBINDFAIL, False
        elif self._sessions_per_account.get(system_id, 0) >= account.config.max_sessions:
            status, counts = CommandStatus.ESME_RBINDFAIL, False
            metrics.connections_refused.labels("smpp", "max_sessions").inc()
        if status is not None:
            locked = counts and self._failures.failed(address, now)
            log.warn(
                "SMPP {bind_type} bind refused for system_id {system_id} from {address}: {status}{locked}",
                bind_type=bind_type,
                system_id=system_id,
                address=address,
                status=status.name,
                locked="; address locked out" if locked else "",
            )
            protocol.respond(pdu, status)
            return
        self._failures.succeeded(address)
        protocol.respond(pdu, system_id=self.config.system_id)
        connection.system_id = system_id
        connection.bind_type = bind_type
        self._sessions_per_account[system_id] = self._sessions_per_account.get(system_id, 0) + 1
        protocol.label = system_id
        if bind_type != "transmitter":
            self._receivers.setdefault(system_id, []).append(protocol)
        log.info(
            "partner {system_id} bound as {bind_type} from {address}",
            system_id=system_id,
            bind_type=bind_type,
            address=address,
        )

    def _outbind(self, connection: _Connection, protocol: SmppProtocol, pdu: Outbind) -> None:
        now = self.reactor.seconds()
        address = connection.address
        if not self._failures.is_locked(address, now):
            for link in self.carrier_links.values():
                if link.outbind_matches(pdu.system_id, pdu.password):
                    log.info(
                        "carrier {carrier} outbind from {address}",
                        carrier=link.name,
                        address=address,
                    )
                    self._connections.discard(protocol)
                    link.accept_outbind(protocol)
                    return
            self._failures.failed(address, now)
        log.warn(
            "SMPP outbind refused for system_id {system_id} from {address}",
            system_id=pdu.system_id,
            address=address,
        )
        protocol.disconnect()

    def _partner_gone(self, connection: _Connection, protocol: SmppProtocol) -> None:
        receivers = self._receivers.get(connection.system_id)
        if receivers and protocol in receivers:
            receivers.remove(protocol)
            if not receivers:
                del self._receivers[connection.system_id]
        if connection.bind_type:
            remaining = self._sessions_per_account.get(connection.system_id, 1) - 1
            if remaining > 0:
                self._sessions_per_account[connection.system_id] = remaining
            else:
                self._sessions_per_account.pop(connection.system_id, None)
            log.info(
                "partner {system_id} {bind_type} session closed",
                system_id=connection.system_id,
                bind_type=connection.bind_type,
            )
            connection.bind_type = ""

    # -- partners' submits --------------------------------------------------------------------

    def _partner_submit(
        self, connection: _Connection, protocol: SmppProtocol, pdu: SubmitSm | DataSm
    ) -> None:
        account = self._accounts.get(connection.system_id)
        if account is None:  # cannot happen: the table admits submits only when bound
            protocol.respond(pdu, CommandStatus.ESME_RINVBNDSTS)
            return
        now = self.reactor.seconds()
        if account.bucket.take(now) > 0:
            protocol.respond(pdu, CommandStatus.ESME_RTHROTTLED)
            return
        try:
            destination = PhoneNumber.cn_mobile(pdu.destination_addr)
        except InvalidPhoneNumber:
            protocol.respond(pdu, CommandStatus.ESME_RINVDSTADR)
            return
        text, concatenation = decode_pdu_text(
            pdu, default_alphabet=account.config.data_coding_0_alphabet  # type: ignore[arg-type]
        )
        held: list[tuple[SmppProtocol, Pdu, int]] = [(protocol, pdu, 1)]
        if concatenation is not None and concatenation.total > 1:
            key_source = f"{connection.system_id}\0{pdu.source_addr}\0{pdu.destination_addr}"
            try:
                whole = self._reassembler.add(key_source, concatenation, text, now=now)
            except ValueError:
                protocol.respond(pdu, CommandStatus.ESME_RINVESMCLASS)
                return
            key = (key_source, concatenation.reference, concatenation.total)
            self._held_parts.setdefault(key, []).append((protocol, pdu, concatenation.sequence))
            if whole is None:
                self._reassembly_timer.schedule()
                return
            held = self._held_parts.pop(key)
            text = whole
        # Every part that asks for a receipt gets one under its own id (Kannel asks on
        # the first part only, and gets one receipt).
        asked: dict[int, bool] = {}
        for _, part, sequence in held:  # a part sent twice asks if either copy did
            wants = bool(part.registered_delivery & 0x03)  # type: ignore[attr-defined]
            asked[sequence] = asked.get(sequence, False) or wants
        receipt_parts = [asked.get(k, False) for k in range(1, max(asked) + 1)]
        recorded = maybeDeferred(
            self.intake.submit_from_partner,
            connection.system_id,
            destination,
            text,
            any(receipt_parts),
            receipt_parts=receipt_parts,
            id_format=account.config.message_id_format,
            data_coding=pdu.data_coding,
        )

        def accepted(part_ids: tuple[str, ...]) -> None:
            for part_id in part_ids:
                self._remember_submit(part_id, pdu.source_addr, pdu.destination_addr, self.wall_clock.seconds())
            for part_protocol, part_pdu, sequence in held:
                part_protocol.respond(part_pdu, message_id=part_ids[sequence - 1])

        def not_accepted(reason: Failure) -> None:
            log.error(
                "partner {system_id}: submit not recorded ({error}); answered ESME_RSYSERR",
                system_id=connection.system_id,
                error=reason.getErrorMessage(),
            )
            for part_protocol, part_pdu, _ in held:
                part_protocol.respond(part_pdu, CommandStatus.ESME_RSYSERR)

        recorded.addCallbacks(accepted, not_accepted).addErrback(
            lambda f: log.failure(
                "partner {system_id}: answering a submit", f, system_id=connection.system_id
            )
        )

    def _partner_request(
        self, connection: _Connection, protocol: SmppProtocol, pdu: QuerySm | CancelSm | ReplaceSm
    ) -> None:
        """query_sm, cancel_sm, replace_sm (SMPP 3.4 sections 4.8-4.10), answered from
        the state in Redis; a message of another partner is as unknown as none."""
        account = self._accounts.get(connection.system_id)
        failure_status = {
            QuerySm: CommandStatus.ESME_RQUERYFAIL,
            CancelSm: CommandStatus.ESME_RCANCELFAIL,
            ReplaceSm: CommandStatus.ESME_RREPLACEFAIL,
        }[type(pdu)]
        if account is None or not pdu.message_id:
            # cancel_sm by service_type/source/destination (no message_id) is not offered
            protocol.respond(pdu, failure_status)
            return
        system_id = connection.system_id
        if isinstance(pdu, QuerySm):
            d: Deferred[Any] = maybeDeferred(self.intake.query_from_partner, system_id, pdu.message_id)
        elif isinstance(pdu, CancelSm):
            d = maybeDeferred(self.intake.cancel_from_partner, system_id, pdu.message_id)
        else:
            d = maybeDeferred(
                self.intake.replace_from_partner, system_id, pdu.message_id, pdu.short_message,
                default_alphabet=account.config.data_coding_0_alphabet,
            )

        def answer(result: Any) -> None:
            if isinstance(pdu, QuerySm):
                if result is None:
                    protocol.respond(pdu, failure_status)
                    return
                protocol.respond(
                    pdu,
                    message_id=pdu.message_id,
                    final_date=absolute_time(result.final_date) if result.final_date else "",
                    message_state=result.message_state,
                    error_code=min(255, result.error_code),
                )
            elif result:
                protocol.respond(pdu)
            else:
                protocol.respond(pdu, failure_status)

        def failed(reason: Failure) -> None:
            log.warn(
                "partner {system_id}: {command} not answered from Redis ({error})",
                system_id=system_id,
                command=type(pdu).__name__,
                error=reason.getErrorMessage(),
            )
            protocol.respond(pdu, failure_status)

        d.addCallbacks(answer, failed).addErrback(
            lambda f: log.failure("partner {system_id}: answering a request", f, system_id=system_id)
        )

    def _submit_incomplete(self, expired: Any) -> None:
        """A partner's long submit whose parts stopped coming: refuse the parts held."""
        for protocol, pdu, _ in self._held_parts.pop((expired.source, expired.reference, expired.total), []):
            protocol.respond(pdu, CommandStatus.ESME_RSUBMITFAIL)

    def _remember_submit(
        self, message_id: str, source_addr: str, destination_addr: str, now: float
    ) -> None:
        submits = self._submits
        submits[message_id] = (source_addr, destination_addr, now)
        if len(submits) > self.options.remembered_submits:
            submits.popitem(last=False)

    # -- receipts to partners (PartnerReceiptSink) ---------------------------------------------

    def deliver_receipt(
        self, system_id: str, message_id: str, state: str, error_code: str
    ) -> Deferred[None]:
        """Send a receipt as deliver_sm to a receiver/transceiver session of ``system_id``.

        Fires when the partner answered deliver_sm_resp ESME_ROK; fails with
        NoReceiverBound (none bound, or every window full), ReceiptRefused (the partner's
        error status) or RequestNotAnswered (the pipeline keeps the receipt and retries).
        """
        receivers = self._receivers.get(system_id)
        protocol = None
        if receivers:
            count = len(receivers)
            for _ in range(count):
                self._round_robin = (self._round_robin + 1) % count
                candidate = receivers[self._round_robin]
                if candidate.is_bound and candidate.window_free > 0:
                    protocol = candidate
                    break
        if protocol is None:
            return fail(NoReceiverBound(system_id))
        now = self.wall_clock.seconds()
        source_addr, destination_addr, submitted_at = self._submits.get(message_id, ("", "", now))
        text = (
            f"id:{message_id} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} "
            f"submit date:{self._receipt_date(submitted_at)} done date:{self._receipt_date(now)} "
            f"stat:{state} err:{error_code.zfill(3) if error_code.isdigit() else error_code or '000'} text:"
        )
        pdu = DeliverSm(
            0,
            # A receipt travels back: from the handset to the partner's address.
            source_addr=destination_addr,
            destination_addr=source_addr,
            esm_class=0x04,
            short_message=text.encode("latin-1", "replace"),
            tlvs=(
                Tlv.cstring(TlvTag.RECEIPTED_MESSAGE_ID, message_id),
                Tlv.uint8(
                    TlvTag.MESSAGE_STATE, _MESSAGE_STATES.get(state, _MESSAGE_STATES["UNKNOWN"])
                ),
            ),
        )
        answered = protocol.request(pdu)  # window_free was checked: no WindowFull here

        def check(response: Pdu) -> None:
            if response.command_status != CommandStatus.ESME_ROK:
                raise ReceiptRefused(response.command_status)

        return answered.addCallback(check)

    def _receipt_date(self, timestamp: float) -> str:
        return datetime.fromtimestamp(timestamp, self._timezone).strftime("%y%m%d%H%M")


class _ListenerProtocol(SmppProtocol):
    """A listener connection: counted from accept to loss, whoever owns it by then."""

    def __init__(self, listener: SmppListener, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener: SmppListener | None = listener

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.open_connections -= 1
        super().connectionLost(reason)


class _ListenerFactory(Factory):
    def __init__(self, listener: SmppListener) -> None:
        self.listener = listener

    def buildProtocol(self, addr: Any) -> Protocol:
        if not self.listener._accept():
            return ClosedAtOnce()
        return self.listener._new_protocol()
