"""The SMPP 3.4 session state machine, sans-IO: bytes in, events out, time as a number.

Theory of operation
-------------------
SMPP 3.4 section 2.2 defines the session states OPEN (connected, not bound), BOUND_TX,
BOUND_RX, BOUND_TRX, UNBOUND (unbind exchanged) and CLOSED, plus OUTBOUND (2.2.1): the
SMSC connected to the ESME and sent ``outbind``; the ESME must now send bind_receiver.
A state is named after the *ESME's* bind on both sides of the connection, so an SMSC
session in BOUND_RX may send deliver_sm and an ESME session in BOUND_RX may receive it.

Which request may be sent or received in which state, by which role, is one table,
``TRANSITIONS`` (section 2.3, table 2-1, read as h11's ``_state.py`` reads RFC 7230):
``(state, role, command_id, direction) -> state after the exchange succeeds``.  A
missing entry *is* the answer: we refuse to send (``LocalProtocolError``) and we answer
an inbound request with ``ESME_RINVBNDSTS`` (``ESME_RALYBND`` for a bind in a bound
state; ``generic_nack`` for outbind and alert_notification, which have no response).
Responses are not in the table: a response is valid when it answers a request we sent
(matched by sequence_number), whatever the state.

The session does on its own what the spec leaves no choice about: it answers
enquire_link and unbind, sends enquire_link when no PDU has arrived for
``enquire_link_interval_seconds`` (and declares the link dead if that goes unanswered),
gives up requests unanswered after ``response_timeout_seconds`` (``RequestTimedOut``,
the window slot is freed), and nacks undecodable PDUs with the status the codec names
(``generic_nack``, or the request's own response when its command_id is known).
Everything else (submit_sm, deliver_sm, data_sm, binds on the SMSC side, outbind)
becomes ``PduReceived`` for the owner to ``respond()`` to.

Limits:

* ``command_length`` below 16 (the header) or above ``max_pdu_bytes`` means we lost the
  framing or the peer is hostile: we queue a generic_nack (ESME_RINVCMDLEN) and close
  at once, never buffering.  The receive buffer therefore never holds more than one
  incomplete PDU, i.e. at most ``max_pdu_bytes`` octets.  The default, 65,536, is 256
  times the largest submit_sm (254-octet short_message + header + addresses) and fits
  a 64 KB message_payload TLV; the config may lower it.
* At most ``window`` requests counted against the window (everything but enquire_link
  and unbind) may be outstanding; ``send`` raises ``WindowFull`` beyond that.
* A session that is neither bound nor binding for ``session_init_timeout_seconds``
  (5.0's session_init_timer; default: the response timeout) is closed.

Deviations from 3.4, each for interoperability:

* enquire_link is accepted in OPEN and OUTBOUND as SMPP 5.0 (section 2.4) allows; some
  ESMEs send one before their bind_resp arrives.
* bind_transceiver is accepted after outbind (5.0), besides 3.4's bind_receiver.
* A listener session (role SMSC, ``accept_outbind=True``) whose first request is
  outbind turns into the ESME side in OUTBOUND: the port that takes partners' binds
  also takes carriers' outbinds (2.2.1), and only the first PDU tells which.

Sequence numbers run 1..0x7FFFFFFF (section 5.1.2.2) and wrap.  ``send`` assigns them:
the PDU's own ``sequence_number`` is ignored and patched in the encoded header, which
spares a dataclass copy per submit on the hot path.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from gateway.records import hot_record
from gateway.smpp.pdu import (
    PDU_CLASSES,
    CommandId,
    CommandStatus,
    EnquireLink,
    GenericNack,
    Pdu,
    PduDecodeError,
    decode,
    encode,
    is_response,
    response_for,
)

__all__ = [
    "TRANSITIONS",
    "BindFailed",
    "BindSucceeded",
    "Direction",
    "Event",
    "LocalProtocolError",
    "PduReceived",
    "PeerProtocolError",
    "RequestAbandoned",
    "RequestTimedOut",
    "ResponseReceived",
    "Role",
    "SessionClosed",
    "SessionState",
    "SmppSession",
    "UnbindRequested",
    "WindowFull",
    "describe_diagram",
    "describe_transitions",
]

MAX_SEQUENCE_NUMBER: Final = 0x7FFFFFFF  # section 5.1.2.2
HEADER_LENGTH: Final = 16
DEFAULT_MAX_PDU_BYTES: Final = 65_536  # see the module docstring


class Role(enum.Enum):
    ESME = "ESME"
    SMSC = "SMSC"


class Direction(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"


class SessionState(enum.Enum):
    OPEN = "OPEN"
    OUTBOUND = "OUTBOUND"
    BOUND_TX = "BOUND_TX"
    BOUND_RX = "BOUND_RX"
    BOUND_TRX = "BOUND_TRX"
    UNBOUND = "UNBOUND"
    CLOSED = "CLOSED"


BOUND_STATES: Final = frozenset(
    {SessionState.BOUND_TX, SessionState.BOUND_RX, SessionState.BOUND_TRX}
)


def _build_transitions() -> dict[tuple[SessionState, Role, CommandId, Direction], SessionState]:
    s, c = SessionState, CommandId
    table: dict[tuple[SessionState, Role, CommandId, Direction], SessionState] = {}

    def allow(
        sender: Role | None,
        command: CommandId,
        states: tuple[SessionState, ...],
        after: SessionState | None = None,
    ) -> None:
        """``sender`` sends ``command`` in ``states`` (None: either side may send it)."""
        senders = (Role.ESME, Role.SMSC) if sender is None else (sender,)
        for state in states:
            for who in senders:
                receiver = Role.SMSC if who is Role.ESME else Role.ESME
                table[(state, who, command, Direction.SEND)] = after or state
                table[(state, receiver, command, Direction.RECEIVE)] = after or state

    bound = (s.BOUND_TX, s.BOUND_RX, s.BOUND_TRX)
    transmit = (s.BOUND_TX, s.BOUND_TRX)
    receive = (s.BOUND_RX, s.BOUND_TRX)
    allow(Role.ESME, c.BIND_TRANSMITTER, (s.OPEN,), s.BOUND_TX)
    allow(Role.ESME, c.BIND_RECEIVER, (s.OPEN, s.OUTBOUND), s.BOUND_RX)
    allow(Role.ESME, c.BIND_TRANSCEIVER, (s.OPEN, s.OUTBOUND), s.BOUND_TRX)  # 5.0 after outbind
    allow(Role.SMSC, c.OUTBIND, (s.OPEN,), s.OUTBOUND)
    allow(None, c.UNBIND, bound, s.UNBOUND)
    allow(None, c.ENQUIRE_LINK, (s.OPEN, s.OUTBOUND, *bound))  # OPEN/OUTBOUND: 5.0
    for command in (c.SUBMIT_SM, c.SUBMIT_MULTI, c.QUERY_SM, c.CANCEL_SM, c.REPLACE_SM):
        allow(Role.ESME, command, transmit)
    allow(Role.ESME, c.DATA_SM, transmit)
    allow(Role.SMSC, c.DATA_SM, receive)
    allow(Role.SMSC, c.DELIVER_SM, receive)
    allow(Role.SMSC, c.ALERT_NOTIFICATION, receive)
    return table


TRANSITIONS: Final = _build_transitions()


def _views(direction: Direction) -> dict[tuple[SessionState, Role], dict[int, SessionState]]:
    """TRANSITIONS sliced per (state, role) and keyed by the int command_id: the hot path
    then hashes one int per PDU instead of a tuple of Enums (Enum.__hash__ is Python code)."""
    views: dict[tuple[SessionState, Role], dict[int, SessionState]] = {
        (state, role): {} for state in SessionState for role in Role
    }
    for (state, role, command, key_direction), after in TRANSITIONS.items():
        if key_direction is direction:
            views[(state, role)][int(command)] = after
    return views


_SEND_VIEWS: Final = _views(Direction.SEND)
_RECEIVE_VIEWS: Final = _views(Direction.RECEIVE)

_BINDS: Final = frozenset(
    {CommandId.BIND_TRANSMITTER, CommandId.BIND_RECEIVER, CommandId.BIND_TRANSCEIVER}
)
# Requests that do not take a window slot: the window bounds the peer's work queue;
# liveness and teardown must get through when it is full.
_OUTSIDE_WINDOW: Final = frozenset({CommandId.ENQUIRE_LINK, CommandId.UNBIND})
_NO_RESPONSE: Final = frozenset({CommandId.OUTBIND, CommandId.ALERT_NOTIFICATION})


# -- errors -----------------------------------------------------------------------------


class LocalProtocolError(Exception):
    """We (the owner of the session) tried to do something SMPP does not allow now."""


class WindowFull(LocalProtocolError):
    """Every window slot holds an unanswered request; wait for a response or timeout."""


# -- events -----------------------------------------------------------------------------


@hot_record(slots=True)
class PduReceived:
    """A request the owner must answer with ``respond()`` (or, for outbind and
    alert_notification, act on): bind_* on the SMSC side, submit_sm, deliver_sm, ..."""

    pdu: Pdu


@hot_record(slots=True)
class ResponseReceived:
    """The response (or generic_nack) to a request we sent; its window slot is free."""

    sequence_number: int
    request: Pdu
    pdu: Pdu
    elapsed: float  # seconds since the request was queued
    context: Any = None  # what the owner passed to send()


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    """No response within response_timeout_seconds; the slot is free, the outcome unknown."""

    sequence_number: int
    request: Pdu
    context: Any = None


@dataclass(frozen=True, slots=True)
class RequestAbandoned:
    """The session closed while this request was unanswered; the outcome is unknown."""

    sequence_number: int
    request: Pdu
    context: Any = None


@dataclass(frozen=True, slots=True)
class BindSucceeded:
    """Our bind_* was accepted; ``state`` is the new bound state."""

    state: SessionState
    pdu: Pdu  # the bind_*_resp (system_id of the SMSC, sc_interface_version TLV)
    context: Any = None


@dataclass(frozen=True, slots=True)
class BindFailed:
    """Our bind_* was refused (``status``) or not answered in time (``status`` None)."""

    status: int | None
    pdu: Pdu | None = None
    context: Any = None


@dataclass(frozen=True, slots=True)
class UnbindRequested:
    """The peer sent unbind; we answered unbind_resp and the session is UNBOUND."""


@dataclass(frozen=True, slots=True)
class PeerProtocolError:
    """The peer sent something invalid; we queued a generic_nack or error response."""

    status: int
    sequence_number: int | None
    command_id: int | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session is CLOSED; the owner should flush data_to_send() and disconnect."""

    reason: str


Event = (
    PduReceived
    | ResponseReceived
    | RequestTimedOut
    | RequestAbandoned
    | BindSucceeded
    | BindFailed
    | UnbindRequested
    | PeerProtocolError
    | SessionClosed
)


@dataclass(slots=True)
class _Outstanding:
    request: Pdu
    sent_at: float
    deadline: float
    context: Any
    in_window: bool


# -- the session ------------------------------------------------------------------------


class SmppSession:
    """One SMPP connection's protocol state; see the module docstring.

    Args:
        role: which side of the connection we are.
        max_pdu_bytes: largest command_length accepted (see the module docstring).
        window: most outstanding requests (enquire_link and unbind not counted).
        response_timeout_seconds: a request unanswered this long is given up.
        enquire_link_interval_seconds: send enquire_link when nothing arrived for this long.
        session_init_timeout_seconds: close when not bound or binding for this long after
            opening (or after a failed bind); None: response_timeout_seconds.
        accept_outbind: a listener session (role SMSC) may become the ESME side when the
            first request is outbind.
        now: the time the connection opened.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_pdu_bytes: int = DEFAULT_MAX_PDU_BYTES,
        window: int = 10,
        response_timeout_seconds: float = 10.0,
        enquire_link_interval_seconds: float = 30.0,
        session_init_timeout_seconds: float | None = None,
        accept_outbind: bool = False,
        now: float = 0.0,
    ) -> None:
        if max_pdu_bytes < HEADER_LENGTH:
            raise ValueError("max_pdu_bytes below the 16-octet header")
        if window < 1:
            raise ValueError("window must be at least 1")
        self._role = role
        self._state = SessionState.OPEN
        self._may_send = _SEND_VIEWS[(self._state, role)]
        self._may_receive = _RECEIVE_VIEWS[(self._state, role)]
        self.max_pdu_bytes = max_pdu_bytes
        self.window = window
        self.response_timeout_seconds = response_timeout_seconds
        self.enquire_link_interval_seconds = enquire_link_interval_seconds
        self.session_init_timeout_seconds = (
            response_timeout_seconds
            if session_init_timeout_seconds is None
            else session_init_timeout_seconds
        )
        self._accept_outbind = accept_outbind and role is Role.SMSC
        self.close_reason = ""
        self._buffer = b""
        self._outgoing: list[bytes] = []
        # Insertion order is deadline order (one timeout for all), so the earliest
        # deadline is the first entry: O(1) timeouts, O(1) removal by sequence_number.
        self._outstanding: OrderedDict[int, _Outstanding] = OrderedDict()
        self._in_window = 0
        self._next_sequence = 1
        self._last_received = now
        self._init_deadline: float | None = now + self.session_init_timeout_seconds
        self._binding = False  # a bind_* is outstanding (ESME) or unanswered (SMSC)
        self._enquire_link_outstanding = False
        self._sent_counts: dict[int, int] = {}
        self._received_counts: dict[int, int] = {}

    # -- inspection -------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @state.setter
    def state(self, state: SessionState) -> None:
        self._state = state
        self._may_send = _SEND_VIEWS[(state, self._role)]
        self._may_receive = _RECEIVE_VIEWS[(state, self._role)]

    @property
    def role(self) -> Role:
        return self._role

    @role.setter
    def role(self, role: Role) -> None:
        self._role = role
        self.state = self._state  # refresh the table views

    @property
    def is_bound(self) -> bool:
        return self.state in BOUND_STATES

    @property
    def window_free(self) -> int:
        """Requests that may be sent now before WindowFull."""
        return self.window - self._in_window

    @property
    def outstanding_count(self) -> int:
        """Requests we sent that have no response yet (window and others)."""
        return len(self._outstanding)

    def can_send(self, command_id: CommandId) -> bool:
        """Whether the table allows us to send ``command_id`` in the current state."""
        return command_id in self._may_send

    def pdu_counts(self) -> tuple[dict[int, int], dict[int, int]]:
        """PDUs (sent, received) by command_id since the last call; resets the counts."""
        sent, received = self._sent_counts, self._received_counts
        self._sent_counts, self._received_counts = {}, {}
        return sent, received

    # -- sending --------------------------------------------------------------------------

    def send(self, pdu: Pdu, now: float, *, context: Any = None) -> int:
        """Queue request ``pdu``; returns the sequence_number assigned to it.

        ``context`` comes back in the event that settles the request (ResponseReceived,
        RequestTimedOut, RequestAbandoned, BindSucceeded, BindFailed).

        Raises:
            LocalProtocolError: the request is not allowed in this state (or is a
                response: use respond()), or a bind is already in progress.
            WindowFull: no free window slot.
            PduEncodeError: a field cannot be encoded.
        """
        command_id = pdu.command_id
        after = self._may_send.get(command_id)
        if after is None:
            raise LocalProtocolError(
                f"{command_id.name.lower()} may not be sent by the {self.role.value} "
                f"in {self.state.value}"
            )
        in_window = command_id not in _OUTSIDE_WINDOW
        if in_window and self._in_window >= self.window:
            raise WindowFull(f"{self._in_window} requests outstanding")
        is_bind = command_id in _BINDS
        if is_bind and self._binding:
            raise LocalProtocolError("a bind is already in progress")
        raw = encode(pdu)
        sequence_number = self._allocate_sequence_number()
        raw = raw[:12] + sequence_number.to_bytes(4, "big") + raw[16:]
        self._queue_raw(raw, command_id)
        if command_id in _NO_RESPONSE:
            # outbind: we (the SMSC) now wait for the ESME's bind_receiver.
            self.state = after
            return sequence_number
        self._outstanding[sequence_number] = _Outstanding(
            pdu, now, now + self.response_timeout_seconds, context, in_window
        )
        if in_window:
            self._in_window += 1
        if is_bind:
            self._binding = True
            self._init_deadline = None
        return sequence_number

    def respond(self, request: Pdu, status: int = CommandStatus.ESME_ROK, **fields: Any) -> None:
        """Queue the response to ``request`` (a PDU from PduReceived).

        An accepted bind_* (status ESME_ROK, SMSC role) moves the session to the bound
        state.  Responses after the session closed are dropped: the owner's work (a
        Redis write) may finish after the connection went away.

        Raises:
            LocalProtocolError: ``request`` has no response PDU (outbind, a response).
        """
        if self.state is SessionState.CLOSED:
            return
        try:
            response = response_for(request, status, **fields)
        except ValueError as e:
            raise LocalProtocolError(str(e)) from None
        command_id = request.command_id
        if command_id in _BINDS:
            self._binding = False
            after = self._may_receive.get(command_id)
            if status == CommandStatus.ESME_ROK and after is not None:
                self.state = after
                self._init_deadline = None
            elif not self.is_bound:
                # A refused bind restarts the session_init timer: the peer may try again.
                self._init_deadline = self._last_received + self.session_init_timeout_seconds
        self._queue_raw(encode(response), response.command_id)

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer since the last call (possibly b"")."""
        if not self._outgoing:
            return b""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def close(self, reason: str = "connection closed") -> list[Event]:
        """Move to CLOSED (the transport is gone or the owner hangs up).

        Returns SessionClosed, then RequestAbandoned for every unanswered request; an
        empty list if the session was already closed.
        """
        if self.state is SessionState.CLOSED:
            return []
        events: list[Event] = []
        self._close(reason, events)
        return events

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete, in order."""
        events: list[Event] = []
        if self.state is SessionState.CLOSED or not data:
            return events
        self._last_received = now
        if self._buffer:
            data = self._buffer + data
        end = len(data)
        pos = 0
        max_pdu_bytes = self.max_pdu_bytes
        while end - pos >= 4:
            length = int.from_bytes(data[pos : pos + 4], "big")
            if length < HEADER_LENGTH or length > max_pdu_bytes:
                sequence_number = (
                    int.from_bytes(data[pos + 12 : pos + 16], "big") if end - pos >= 16 else 0
                )
                self._queue_raw(
                    encode(GenericNack(sequence_number, CommandStatus.ESME_RINVCMDLEN)),
                    CommandId.GENERIC_NACK,
                )
                events.append(
                    PeerProtocolError(
                        CommandStatus.ESME_RINVCMDLEN,
                        sequence_number,
                        None,
                        f"command_length {length} outside 16..{max_pdu_bytes}",
                    )
                )
                self._close(f"command_length {length} outside 16..{max_pdu_bytes}", events)
                return events
            if end - pos < length:
                break
            self._handle_pdu(data[pos : pos + length], now, events)
            pos += length
            if self.state is SessionState.CLOSED:
                return events
        self._buffer = data[pos:] if pos < end else b""
        return events

    def _handle_pdu(self, raw: bytes, now: float, events: list[Event]) -> None:
        try:
            pdu = decode(raw)
        except PduDecodeError as e:
            self._reject_undecodable(e, events)
            return
        command_id = pdu.command_id
        counts = self._received_counts
        counts[command_id] = counts.get(command_id, 0) + 1
        if is_response(command_id):
            self._handle_response(pdu, now, events)
        else:
            self._handle_request(pdu, events)

    def _reject_undecodable(self, error: PduDecodeError, events: list[Event]) -> None:
        sequence_number = error.sequence_number or 0
        command_id = error.command_id
        answer: Pdu | None = None
        if command_id is not None and not is_response(command_id):
            known = CommandId._value2member_map_.get(command_id)
            if known is not None and known not in _NO_RESPONSE:
                # The request's own *_resp carries the status (5.1.3), e.g. a submit_sm
                # with an over-long source_addr gets submit_sm_resp ESME_RINVSRCADR.
                answer = response_for(PDU_CLASSES[command_id](sequence_number), error.status)
        if answer is None:
            answer = GenericNack(sequence_number, error.status)
        self._queue_raw(encode(answer), answer.command_id)
        events.append(
            PeerProtocolError(error.status, error.sequence_number, command_id, str(error))
        )

    def _handle_request(self, pdu: Pdu, events: list[Event]) -> None:
        command_id = pdu.command_id
        if (
            command_id is CommandId.OUTBIND
            and self._accept_outbind
            and self.state is SessionState.OPEN
        ):
            self.role = Role.ESME  # see "listener session" in the module docstring
            self._accept_outbind = False
        after = self._may_receive.get(command_id)
        if after is None or (command_id is CommandId.OUTBIND and self._bind_outstanding()):
            # An outbind while our own bind is in flight would leave the bind's response
            # with no state to land in: the peer is confused, refuse it.
            self._refuse(pdu, events)
            return
        self._accept_outbind = False  # only the first request may be an outbind
        if command_id is CommandId.ENQUIRE_LINK:
            self._queue_raw(encode(response_for(pdu)), CommandId.ENQUIRE_LINK_RESP)
            return
        if command_id is CommandId.UNBIND:
            self._queue_raw(encode(response_for(pdu)), CommandId.UNBIND_RESP)
            self.state = SessionState.UNBOUND
            events.append(UnbindRequested())
            return
        if command_id is CommandId.OUTBIND:
            self.state = after
            self._init_deadline = self._last_received + self.session_init_timeout_seconds
        elif command_id in _BINDS:
            if self._binding:
                self._refuse(pdu, events)
                return
            self._binding = True
            self._init_deadline = None
        events.append(PduReceived(pdu))

    def _bind_outstanding(self) -> bool:
        return any(p.request.command_id in _BINDS for p in self._outstanding.values())

    def _refuse(self, pdu: Pdu, events: list[Event]) -> None:
        command_id = pdu.command_id
        if command_id in _BINDS and (self.is_bound or self._binding):
            status = CommandStatus.ESME_RALYBND
        else:
            status = CommandStatus.ESME_RINVBNDSTS
        if command_id in _NO_RESPONSE:
            answer: Pdu = GenericNack(pdu.sequence_number, status)
        else:
            answer = response_for(pdu, status)
        self._queue_raw(encode(answer), answer.command_id)
        events.append(
            PeerProtocolError(
                status,
                pdu.sequence_number,
                command_id,
                f"{command_id.name.lower()} not allowed for the {self.role.value} in {self.state.value}",
            )
        )

    def _handle_response(self, pdu: Pdu, now: float, events: list[Event]) -> None:
        sequence_number = pdu.sequence_number
        pending = self._outstanding.get(sequence_number)
        if pending is None:
            return  # late (after its timeout) or never asked for: nothing waits for it
        request = pending.request
        command_id = pdu.command_id
        if (
            command_id != (request.command_id | 0x80000000)
            and command_id is not CommandId.GENERIC_NACK
        ):
            return  # a response to another command: leave the request to its timeout
        del self._outstanding[sequence_number]
        if pending.in_window:
            self._in_window -= 1
        request_id = request.command_id
        status = pdu.command_status
        if request_id is CommandId.ENQUIRE_LINK:
            self._enquire_link_outstanding = False
            return
        if request_id in _BINDS:
            self._binding = False
            if status == CommandStatus.ESME_ROK and command_id is not CommandId.GENERIC_NACK:
                self.state = _SEND_VIEWS[(self._state, self._role)][request_id]
                events.append(BindSucceeded(self.state, pdu, pending.context))
            else:
                self._init_deadline = now + self.session_init_timeout_seconds
                events.append(BindFailed(status, pdu, pending.context))
            return
        if request_id is CommandId.UNBIND:
            self.state = SessionState.UNBOUND
        events.append(
            ResponseReceived(sequence_number, request, pdu, now - pending.sent_at, pending.context)
        )

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When tick() must next be called, or None if nothing is timed."""
        if self.state is SessionState.CLOSED:
            return None
        deadline = self._init_deadline
        if self._outstanding:
            first = next(iter(self._outstanding.values())).deadline
            deadline = first if deadline is None else min(deadline, first)
        if self.state in BOUND_STATES and not self._enquire_link_outstanding:
            idle = self._last_received + self.enquire_link_interval_seconds
            deadline = idle if deadline is None else min(deadline, idle)
        return deadline

    def tick(self, now: float) -> list[Event]:
        """Fire what is due at ``now``: timeouts, enquire_link, session_init timer."""
        events: list[Event] = []
        if self.state is SessionState.CLOSED:
            return events
        outstanding = self._outstanding
        while outstanding:
            sequence_number, pending = next(iter(outstanding.items()))
            if pending.deadline > now:
                break
            del outstanding[sequence_number]
            if pending.in_window:
                self._in_window -= 1
            request_id = pending.request.command_id
            if request_id is CommandId.ENQUIRE_LINK:
                self._close("enquire_link unanswered: the link is dead", events)
                return events
            if request_id in _BINDS:
                self._binding = False
                events.append(BindFailed(None, None, pending.context))
                self._close("bind_resp not received in time", events)
                return events
            if request_id is CommandId.UNBIND:
                events.append(RequestTimedOut(sequence_number, pending.request, pending.context))
                self._close("unbind_resp not received in time", events)
                return events
            events.append(RequestTimedOut(sequence_number, pending.request, pending.context))
        if self._init_deadline is not None and now >= self._init_deadline and not self._binding:
            self._close("not bound within the session_init timeout", events)
            return events
        if (
            self.state in BOUND_STATES
            and not self._enquire_link_outstanding
            and now >= self._last_received + self.enquire_link_interval_seconds
        ):
            self.send(EnquireLink(0), now)
            self._enquire_link_outstanding = True
        return events

    # -- internals ------------------------------------------------------------------------

    def _allocate_sequence_number(self) -> int:
        sequence_number = self._next_sequence
        while True:
            self._next_sequence = (
                sequence_number + 1 if sequence_number < MAX_SEQUENCE_NUMBER else 1
            )
            if sequence_number not in self._outstanding:
                return sequence_number
            sequence_number = self._next_sequence

    def _queue_raw(self, raw: bytes, command_id: int) -> None:
        self._outgoing.append(raw)
        counts = self._sent_counts
        counts[command_id] = counts.get(command_id, 0) + 1

    def _close(self, reason: str, events: list[Event]) -> None:
        self.state = SessionState.CLOSED
        self.close_reason = reason
        self._buffer = b""
        self._init_deadline = None
        outstanding, self._outstanding = self._outstanding, OrderedDict()
        self._in_window = 0
        self._binding = False
        # SessionClosed first: an owner reacting to an abandoned request (resubmitting it
        # elsewhere) must already know that this session is gone.
        events.append(SessionClosed(reason))
        for sequence_number, pending in outstanding.items():
            if pending.request.command_id in _BINDS:
                events.append(BindFailed(None, None, pending.context))
            else:
                events.append(RequestAbandoned(sequence_number, pending.request, pending.context))


def describe_transitions() -> str:
    """TRANSITIONS as the Markdown table in docs/smpp-session.md (one row per command)."""
    states = [s for s in SessionState if s is not SessionState.CLOSED]
    commands = sorted({key[2] for key in TRANSITIONS}, key=lambda c: c.value)
    lines = [
        "| command | sent by | " + " | ".join(s.value for s in states) + " |",
        "|---|---|" + "---|" * len(states),
    ]
    for command in commands:
        for sender in Role:
            cells = []
            for state in states:
                after = TRANSITIONS.get((state, sender, command, Direction.SEND))
                if after is None:
                    cells.append("")
                elif after is state:
                    cells.append("yes")
                else:
                    cells.append("-> " + after.value)
            if any(cells):
                lines.append(
                    f"| {command.name.lower()} | {sender.value} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


def describe_diagram() -> str:
    """The state changes of TRANSITIONS as a Mermaid state diagram."""
    edges: dict[tuple[SessionState, SessionState], set[str]] = {}
    for (state, role, command, direction), after in TRANSITIONS.items():
        if after is not state and direction is Direction.SEND:
            edges.setdefault((state, after), set()).add(f"{command.name.lower()} ({role.value})")
    lines = ["stateDiagram-v2", "    [*] --> OPEN: connect"]
    for (state, after), labels in sorted(
        edges.items(), key=lambda e: (e[0][0].value, e[0][1].value)
    ):
        lines.append(f"    {state.value} --> {after.value}: " + ", ".join(sorted(labels)))
    lines.append("    UNBOUND --> CLOSED: disconnect")
    lines.append("    CLOSED --> [*]")
    return "\n".join(lines) + "\n"
