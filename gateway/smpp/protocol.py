"""The Twisted shell around `SmppSession`, shared by carrier links and the listener.

It owns the transport, one IDelayedCall and the injected clock, and holds no protocol
rules: bytes go into the session, events come out and go to an *owner* (a link's
session record, the listener's partner connection) through small methods, and whatever
the session queued is written after each step.  A request may carry a callback in the
session's ``context``; the event that settles it (response, timeout, abandonment,
bind result) is handed to that callback instead of the owner, so the hot submit path
needs no Deferred and no lookup table besides the session's own window.

Backpressure: the protocol is the transport's streaming producer (IPushProducer).  When
the peer does not read and the transport's unsent output passes its buffer size (64 KiB,
``FileDescriptor.bufferSize``), the transport calls `pauseProducing` and we stop reading:
every request we would read asks for a response, so reading on would only grow the
output that nobody takes.  If the peer has not drained it within the drain timeout (by
default the session's response timeout: a peer that takes no bytes for that long could
not have answered a request either), the connection is aborted.  A session that closes
(``disconnect``) gets the same bound on its farewell: what is not taken within the drain
timeout is dropped with the connection.  So one connection holds at most one read
(64 KiB of requests) of answers beyond the transport's buffer, and for a bounded time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import metrics
from gateway.connections import enable_nodelay
from gateway.smpp.pdu import CommandId, CommandStatus, Pdu, PduEncodeError, status_name
from gateway.smpp.session import (
    BindFailed,
    BindSucceeded,
    Event,
    LocalProtocolError,
    PduReceived,
    PeerProtocolError,
    RequestAbandoned,
    RequestTimedOut,
    ResponseReceived,
    SessionClosed,
    SessionState,
    SmppSession,
    UnbindRequested,
)

__all__ = [
    "BindRefused",
    "RequestNotAnswered",
    "SessionOwner",
    "SmppProtocol",
]

log = Logger()

SettledCallback = Callable[[Event], None]

_PDU_COUNTERS: dict[tuple[str, int], Any] = {}


def _count_pdus(direction: str, counts: dict[int, int]) -> None:
    for command_id, n in counts.items():
        child = _PDU_COUNTERS.get((direction, command_id))
        if child is None:
            name = CommandId(command_id).name.lower()
            child = _PDU_COUNTERS[(direction, command_id)] = metrics.pdus.labels(direction, name)
        child.inc(n)


class RequestNotAnswered(Exception):
    """A request timed out or its session closed first; the outcome is unknown."""

    def __init__(self, event: RequestTimedOut | RequestAbandoned) -> None:
        super().__init__("timed out" if isinstance(event, RequestTimedOut) else "session closed")
        self.event = event


class BindRefused(Exception):
    """Our bind was refused (``status``) or not answered (``status`` None)."""

    def __init__(self, status: int | None) -> None:
        super().__init__(status_name(status) if status is not None else "no bind_resp")
        self.status = status


class SessionOwner:
    """What a `SmppProtocol` reports to; override what you need (defaults do nothing)."""

    def connection_made(self, protocol: SmppProtocol) -> None:
        """The transport is up; the session is OPEN."""

    def pdu_received(self, protocol: SmppProtocol, pdu: Pdu) -> None:
        """A request to answer with ``protocol.respond`` (or outbind/alert_notification)."""

    def unbind_requested(self, protocol: SmppProtocol) -> None:
        """The peer unbound; unbind_resp went out; the connection closes next."""

    def peer_protocol_error(self, protocol: SmppProtocol, event: PeerProtocolError) -> None:
        """The peer sent something invalid and was nacked (already logged at warn)."""

    def session_closed(self, protocol: SmppProtocol, reason: str) -> None:
        """The session is closed (called once); every request was settled before this."""

    def connection_lost(self, protocol: SmppProtocol, reason: Failure) -> None:
        """The transport is gone (after session_closed)."""


@implementer(IPushProducer)
class SmppProtocol(Protocol):
    """One SMPP connection.

    Args:
        session_factory: builds the session when the connection is made, given ``now``.
        owner: receives the events (may be replaced later: ``protocol.owner = ...``,
            as the listener does when a carrier's outbind hands the connection over).
        clock: the reactor's IReactorTime (a ``Clock`` in tests).
        label: names the connection in logs (carrier name, partner system_id).
        drain_timeout_seconds: how long a peer may leave our output unread (reading is
            paused meanwhile) before the connection is aborted; None: the session's
            response timeout.  See the module docstring.
    """

    def __init__(
        self,
        session_factory: Callable[[float], SmppSession],
        owner: SessionOwner,
        clock: IReactorTime,
        *,
        label: str = "",
        drain_timeout_seconds: float | None = None,
    ) -> None:
        self._session_factory = session_factory
        self.owner = owner
        self.clock = clock
        self.label = label
        self.session: SmppSession | None = None
        self._timer: IDelayedCall | None = None
        self._closed_reported = False
        self._disconnecting = False
        self._drain_timeout_seconds = drain_timeout_seconds
        self._drain_timer: IDelayedCall | None = None
        self.paused = False  # reading stopped: the peer does not take our output
        self._producing = False  # registered as the transport's producer

    # -- Twisted ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        enable_nodelay(self.transport)
        self.session = self._session_factory(self.clock.seconds())
        if self._drain_timeout_seconds is None:
            self._drain_timeout_seconds = self.session.response_timeout_seconds
        self.owner.connection_made(self)
        self.flush()

    # -- IPushProducer: the transport tells us when the peer stops taking our output ----

    def pauseProducing(self) -> None:
        """Our unsent output passed the transport's buffer size: stop reading requests."""
        if self.paused or self.transport is None:
            return
        self.paused = True
        cast(IPushProducer, self.transport).pauseProducing()
        self._arm_drain_timer()

    def resumeProducing(self) -> None:
        """The peer took our output: read again."""
        if not self.paused or self.transport is None:
            return
        self.paused = False
        self._cancel_drain_timer()
        if not self._disconnecting:
            cast(IPushProducer, self.transport).resumeProducing()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost follows."""

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        if not self._producing:
            # Registered at the first bytes, not in connectionMade: over TLS the handshake
            # is over by then, and TLS pauses its producer while the handshake holds our
            # writes back; stopping to read then would stall the handshake for ever.
            self._producing = True
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        events = session.receive_data(data, self.clock.seconds())
        if events:
            self._dispatch(events)
        self.flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._cancel_drain_timer()
        if self.session is not None:
            self._dispatch(self.session.close(f"connection lost: {reason.getErrorMessage()}"))
            self.session.data_to_send()  # nowhere to go
            self._report_counts()
        self.owner.connection_lost(self, reason)
        # The transport keeps its unsent output until it is freed; owners keep their
        # protocol in a reference cycle.  Let go of the transport now so that the bytes
        # a non-reading peer left behind go back at once, not at the next full GC pass.
        self.transport = None

    # -- for owners -----------------------------------------------------------------------

    @property
    def is_bound(self) -> bool:
        return self.session is not None and self.session.is_bound

    @property
    def window_free(self) -> int:
        return self.session.window_free if self.session is not None else 0

    def send_request(
        self, pdu: Pdu, on_settled: SettledCallback | None = None, *, flush: bool = True
    ) -> int:
        """Send request ``pdu``; ``on_settled(event)`` is called with the event that
        settles it.  With ``flush=False`` the caller calls ``flush()`` after a batch.

        Raises LocalProtocolError / WindowFull (see SmppSession.send); LocalProtocolError
        also when the connection is not up.
        """
        if self.session is None:
            raise LocalProtocolError("not connected")
        sequence_number = self.session.send(pdu, self.clock.seconds(), context=on_settled)
        if flush:
            self.flush()
        return sequence_number

    def request(self, pdu: Pdu) -> Deferred[Pdu]:
        """Send ``pdu`` and fire with its response PDU (a generic_nack included).

        Fails with RequestNotAnswered on timeout or close, BindRefused for a bind_*
        that was refused, LocalProtocolError when it cannot be sent now.
        """
        d: Deferred[Pdu] = Deferred()

        def settled(event: Event) -> None:
            if isinstance(event, ResponseReceived):
                d.callback(event.pdu)
            elif isinstance(event, BindSucceeded):
                d.callback(event.pdu)
            elif isinstance(event, BindFailed):
                d.errback(BindRefused(event.status))
            elif isinstance(event, (RequestTimedOut, RequestAbandoned)):
                d.errback(RequestNotAnswered(event))

        try:
            self.send_request(pdu, settled)
        except (LocalProtocolError, PduEncodeError) as e:
            return fail(e)
        return d

    def respond(self, request: Pdu, status: int = CommandStatus.ESME_ROK, **fields: Any) -> None:
        """Answer ``request`` (dropped quietly if the session has closed meanwhile)."""
        if self.session is None:
            return
        self.session.respond(request, status, **fields)
        self.flush()

    def disconnect(self) -> None:
        """Write what is queued, then close the connection; abort it if the peer has
        not taken the queued bytes within the drain timeout."""
        if self.transport is not None and not self._disconnecting:
            self._disconnecting = True
            if self._producing:
                # Done producing: a transport closes only once its producer is gone (a
                # paused one would be resumed instead of the connection being closed).
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()
            self._arm_drain_timer()

    def abort(self) -> None:
        """Close without waiting for queued data (a dead or hostile peer)."""
        if self.transport is not None:
            self._disconnecting = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def flush(self) -> None:
        """Write what the session queued, close when it is over, re-arm the timer."""
        session = self.session
        if session is None:
            return
        data = session.data_to_send()
        if data and self.transport is not None and not self._disconnecting:
            self.transport.write(data)
            self._report_counts()
        state = session.state
        if state is SessionState.UNBOUND or state is SessionState.CLOSED:
            if state is SessionState.CLOSED:
                self._report_closed(session.close_reason)
            self.disconnect()
        self._reschedule()

    # -- internals ------------------------------------------------------------------------

    def _arm_drain_timer(self) -> None:
        if self._drain_timer is None and self._drain_timeout_seconds is not None:
            self._drain_timer = self.clock.callLater(self._drain_timeout_seconds, self._not_drained)

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None

    def _not_drained(self) -> None:
        self._drain_timer = None
        if self.transport is None:
            return
        log.warn(
            "SMPP peer {peer} took none of our output for {seconds} s; connection aborted",
            peer=self.label,
            seconds=self._drain_timeout_seconds,
        )
        metrics.connections_refused.labels("smpp", "not_draining").inc()
        self.abort()

    def _report_counts(self) -> None:
        if self.session is None:
            return
        sent, received = self.session.pdu_counts()
        if sent:
            _count_pdus("out", sent)
        if received:
            _count_pdus("in", received)

    def _report_closed(self, reason: str) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self.owner.session_closed(self, reason)

    def _reschedule(self) -> None:
        session = self.session
        deadline = session.next_deadline() if session is not None else None
        timer = self._timer
        if deadline is None:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
            return
        # Keep an earlier timer: tick() at a time with nothing due is cheap, and most
        # deadlines only move later (traffic postpones enquire_link).
        if timer is not None and timer.active():
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        session = self.session
        if session is None:
            return
        events = session.tick(self.clock.seconds())
        if events:
            self._dispatch(events)
        self.flush()

    def _dispatch(self, events: list[Event]) -> None:
        owner = self.owner
        for event in events:
            cls = type(event)
            if cls is ResponseReceived or cls is RequestTimedOut or cls is RequestAbandoned:
                callback = event.context  # type: ignore[union-attr]
                if callback is not None:
                    callback(event)
            elif cls is PduReceived:
                owner.pdu_received(self, event.pdu)  # type: ignore[union-attr, arg-type]
            elif cls is BindSucceeded or cls is BindFailed:
                callback = event.context  # type: ignore[union-attr]
                if callback is not None:
                    callback(event)
            elif cls is PeerProtocolError:
                assert isinstance(event, PeerProtocolError)
                log.warn(
                    "SMPP peer {peer} sent an invalid PDU: answered {status} "
                    "(command_id {command_id}, sequence_number {sequence_number}): {detail}",
                    peer=self.label,
                    status=status_name(event.status),
                    command_id=f"0x{event.command_id:08x}" if event.command_id is not None else "-",
                    sequence_number=event.sequence_number,
                    detail=event.detail,
                )
                owner.peer_protocol_error(self, event)
            elif cls is UnbindRequested:
                owner.unbind_requested(self)
            elif cls is SessionClosed:
                self._report_closed(event.reason)  # type: ignore[union-attr]


class ReassemblyTimer:
    """The one timer that expires a `Reassembler`'s incomplete long messages.

    Shared by the carrier link (MO parts) and the listener (partners' submit parts): each
    keeps its own held PDUs and decides in `on_expired` what an incomplete message means.
    """

    def __init__(self, reassembler: Any, clock: IReactorTime, on_expired: Callable[[Any], None]) -> None:
        self._reassembler = reassembler
        self._clock = clock
        self._on_expired = on_expired
        self._call: IDelayedCall | None = None

    def schedule(self) -> None:
        """Arm the timer for the earliest deadline, unless it is armed already."""
        deadline = self._reassembler.next_deadline()
        if deadline is None or self._call is not None:
            return
        self._call = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), self._expire)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        for expired in self._reassembler.expire(self._clock.seconds()):
            self._on_expired(expired)
        self.schedule()
