"""Asterisk Manager Interface (AMI) framing and action correlation, sans-IO.

Theory of operation
-------------------
AMI is a line protocol over TCP (Asterisk ``main/manager.c``; docs.asterisk.org, "AMI
Actions" / "AMI Events").  On connect the server writes one banner line,
``Asterisk Call Manager/<AMI version>\\r\\n``.  After that every message in either
direction is a block of ``Key: Value\\r\\n`` lines closed by an empty line:

* the client sends *actions* (``Action: Originate``), each with an ``ActionID`` that the
  server echoes in its *response* (``Response: Success|Error|Follows|Goodbye``);
* the server sends *events* (``Event: Hangup``) whenever it likes, interleaved with
  responses.  Events caused by an action (``OriginateResponse``) carry its ActionID too.
* list actions (``Status``, ``CoreShowChannels``) answer ``Response: Success`` with
  ``EventList: start``, then one event per item with the same ActionID, then an event
  with ``EventList: Complete``.

Header names are case-insensitive (Asterisk's ``astman_get_header`` uses strncasecmp)
and may repeat: ``Variable`` in Originate and Status, ``ChanVariable`` in events.  An
`AmiMessage` therefore keeps its headers as an ordered list of pairs; ``get`` gives the
first value and ``get_all`` every value.

What we support, and where we deviate:

* ``Response: Follows`` (the pre-Asterisk-14 ``Command`` output) has a free-text body
  that may contain empty lines; it ends at ``--END COMMAND--``.  We keep that body in
  `AmiMessage.body`.  A non-header line in any other message is kept there as well,
  rather than dropped, so nothing the peer said disappears silently.
* Lines may end in CRLF (what Asterisk writes) or a bare LF (hand-written peers).
* Every buffer is bounded (see the limits below).  A peer that exceeds them gets
  `AmiProtocolError` and the shell closes the connection; we never buffer without end.

`ActionCorrelator` is the other half: it maps ActionIDs of actions in flight to their
responses (and list events), reports actions unanswered within the response timeout,
and hands everything it does not consume back to the shell as an unsolicited event.
Time enters as a number (``now``); the shell owns the one timer.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ASTERISK_MAX_HEADERS",
    "ASTERISK_MAX_LINE_BYTES",
    "BANNER_PREFIX",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ActionCompleted",
    "ActionCorrelator",
    "ActionTimedOut",
    "AmiBanner",
    "AmiError",
    "AmiFraming",
    "AmiLocalProtocolError",
    "AmiMessage",
    "AmiProtocolError",
    "MessageKind",
    "encode_action",
    "encode_message",
]

BANNER_PREFIX = "Asterisk Call Manager/"

# Limits.  What Asterisk *accepts* is small: each action line is read into
# `char inbuf[1025]` (struct mansession_session in main/manager.c) and an action keeps at
# most AST_MAX_MANHEADERS = 128 headers (include/asterisk/manager.h).  The AMI server
# peer in tests/ uses exactly those numbers.
ASTERISK_MAX_LINE_BYTES = 1024
ASTERISK_MAX_HEADERS = 128
# What Asterisk *sends* has no such bound: events are built in a growable ast_str, and a
# Status reply with AllVariables, or any event when manager.conf lists `channelvars`,
# carries one header per variable.  The largest messages we expect (a Status event with
# our one variable, a Hangup) are about 1 KiB and 40 headers; 64 KiB and 1024 headers
# leave a wide margin and still bound what a confused or hostile peer can make us hold.
DEFAULT_MAX_MESSAGE_BYTES = 65_536
DEFAULT_MAX_HEADERS = 1024

_END_COMMAND = "--END COMMAND--"
_HEADER_NAME = re.compile(r"[A-Za-z0-9_\-]+\Z")


class AmiError(Exception):
    """Base class of AMI errors."""


class AmiProtocolError(AmiError):
    """The peer broke the protocol (bad banner, oversized message); close the connection."""


class AmiLocalProtocolError(AmiError):
    """We tried to send something AMI cannot carry (CR/LF in a value, a bad header name)."""


class MessageKind(enum.Enum):
    ACTION = "Action"
    RESPONSE = "Response"
    EVENT = "Event"
    UNKNOWN = ""


_KINDS = {"action": MessageKind.ACTION, "response": MessageKind.RESPONSE, "event": MessageKind.EVENT}


@dataclass(frozen=True, slots=True)
class AmiBanner:
    """The first line of a session: ``Asterisk Call Manager/<version>``."""

    version: str


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One action, response or event: ordered ``(name, value)`` pairs plus free text.

    The ``repr`` shows the kind, name, ActionID and header count only: header values
    carry channel names and caller ids, which hold phone numbers.
    """

    headers: tuple[tuple[str, str], ...]
    body: tuple[str, ...] = ()
    _index: dict[str, list[str]] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        index: dict[str, list[str]] = {}
        for name, value in self.headers:
            index.setdefault(name.lower(), []).append(value)
        object.__setattr__(self, "_index", index)

    @classmethod
    def build(cls, *pairs: tuple[str, str], **headers: str | Sequence[str]) -> AmiMessage:
        """A message from pairs and keyword headers (a list value repeats the header)."""
        return cls(tuple(pairs) + tuple(_pairs(headers)))

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` in order (empty list if absent)."""
        return list(self._index.get(name.lower(), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    @property
    def kind(self) -> MessageKind:
        if not self.headers:
            return MessageKind.UNKNOWN
        return _KINDS.get(self.headers[0][0].lower(), MessageKind.UNKNOWN)

    @property
    def name(self) -> str:
        """The action name, response status or event name (the first header's value)."""
        return self.headers[0][1] if self.headers else ""

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def variables(self, header: str = "Variable") -> dict[str, str]:
        """``NAME=value`` headers (Variable, ChanVariable) as a dict; later names win."""
        result: dict[str, str] = {}
        for item in self._index.get(header.lower(), ()):
            key, sep, value = item.partition("=")
            if sep:
                result[key] = value
        return result

    def is_event(self, name: str) -> bool:
        return self.kind is MessageKind.EVENT and self.name.lower() == name.lower()

    def __repr__(self) -> str:
        return (f"AmiMessage({self.kind.name} {self.name!r}, action_id={self.action_id!r}, "
                f"headers={len(self.headers)}, body_lines={len(self.body)})")


HeaderValues = Mapping[str, "str | Sequence[str]"] | Iterable[tuple[str, str]]


def _pairs(headers: HeaderValues) -> Iterable[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if isinstance(value, str):
            yield name, value
        else:
            for one in value:
                yield name, one


def encode_message(headers: HeaderValues) -> bytes:
    """Frame headers as one AMI message (``Key: Value`` CRLF lines, then an empty line).

    A value that is a list or tuple repeats the header once per item (``Variable``).
    Raises AmiLocalProtocolError for a header name that is not a token, or a CR or LF
    in a value: either would let text (a reminder, a caller id) inject other headers or
    a whole second action.
    """
    parts: list[str] = []
    for name, value in _pairs(headers):
        if not _HEADER_NAME.match(name):
            raise AmiLocalProtocolError(f"header name {name!r} is not a token")
        if "\r" in value or "\n" in value:
            raise AmiLocalProtocolError(f"CR or LF in the value of {name}")
        parts.append(f"{name}: {value}\r\n")
    if not parts:
        raise AmiLocalProtocolError("an AMI message needs at least one header")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


def encode_action(name: str, action_id: str | None, headers: HeaderValues = ()) -> bytes:
    """Frame ``Action: <name>``, ``ActionID`` (when given) and ``headers``; see encode_message."""
    first: list[tuple[str, str]] = [("Action", name)]
    if action_id is not None:
        first.append(("ActionID", action_id))
    return encode_message([*first, *_pairs(headers)])


class AmiFraming:
    """Bytes in, banner and messages out; one per connection and direction.

    ``expect_banner``: a client expects the server's banner line first; the server side
    of a connection does not.  ``max_message_bytes`` and ``max_headers`` bound one
    message (a message still being received counts); see the limits above.
    """

    def __init__(
        self,
        *,
        expect_banner: bool = True,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
    ) -> None:
        self.banner: AmiBanner | None = None
        self._awaiting_banner = expect_banner
        self._max_message_bytes = max_message_bytes
        self._max_headers = max_headers
        self._buffer = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._body: list[str] = []
        self._message_bytes = 0
        self._follows = False

    def receive_data(self, data: bytes) -> list[AmiBanner | AmiMessage]:
        """Feed bytes; return the banner and the messages they complete, in order.

        Raises AmiProtocolError when the banner is not Asterisk's or a message exceeds the
        limits; the framing is then unusable and the connection must be closed.
        """
        buffer = self._buffer
        buffer += data
        out: list[AmiBanner | AmiMessage] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._message_bytes += end + 1 - start
            if self._message_bytes > self._max_message_bytes:
                raise AmiProtocolError(f"message longer than {self._max_message_bytes} bytes")
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            item = self._line(line.decode("utf-8", "replace"))
            if item is not None:
                out.append(item)
        del buffer[:start]
        if self._message_bytes + len(buffer) > self._max_message_bytes:
            raise AmiProtocolError(f"message longer than {self._max_message_bytes} bytes")
        return out

    def _line(self, text: str) -> AmiBanner | AmiMessage | None:
        if self._awaiting_banner:
            self._awaiting_banner = False
            self._message_bytes = 0
            if not text.startswith(BANNER_PREFIX):
                raise AmiProtocolError("the peer did not start with the Asterisk Call Manager banner")
            self.banner = AmiBanner(version=text[len(BANNER_PREFIX):].strip())
            return self.banner
        if self._follows:
            if text.endswith(_END_COMMAND):
                # Old Asterisk glues the marker to the last output line when that line
                # has no newline of its own.
                if text[: -len(_END_COMMAND)]:
                    self._body.append(text[: -len(_END_COMMAND)])
                self._follows = False
            else:
                self._body.append(text)
            return None
        if not text:
            if not self._headers and not self._body:
                self._message_bytes = 0  # a stray empty line between messages counts for none
                return None
            return self._finish()
        name, sep, value = text.partition(":")
        if sep and not self._body and _HEADER_NAME.match(name):
            if len(self._headers) >= self._max_headers:
                raise AmiProtocolError(f"message with more than {self._max_headers} headers")
            self._headers.append((name, value[1:] if value.startswith(" ") else value))
            return None
        if self._is_follows():
            # First body line of a Follows response: from here only the marker ends it.
            self._follows = True
            return self._line(text)
        self._body.append(text)
        return None

    def _is_follows(self) -> bool:
        headers = self._headers
        return bool(headers) and headers[0][0].lower() == "response" and headers[0][1].strip().lower() == "follows"

    def _finish(self) -> AmiMessage:
        message = AmiMessage(tuple(self._headers), tuple(self._body))
        self._headers = []
        self._body = []
        self._message_bytes = 0
        return message


# ---------------------------------------------------------------------------------------
# Correlation
# ---------------------------------------------------------------------------------------

_SUCCESSFUL_RESPONSES = frozenset({"success", "follows", "goodbye"})


@dataclass(frozen=True, slots=True)
class ActionCompleted:
    """An action's response, with the events of a list action (Status, CoreShowChannels)."""

    action_id: str
    name: str
    response: AmiMessage
    events: tuple[AmiMessage, ...] = ()

    @property
    def success(self) -> bool:
        return (self.response.get("Response") or "").strip().lower() in _SUCCESSFUL_RESPONSES


@dataclass(frozen=True, slots=True)
class ActionTimedOut:
    """No response (or no end of the event list) within the response timeout."""

    action_id: str
    name: str


@dataclass(slots=True)
class _Pending:
    name: str
    deadline: float
    response: AmiMessage | None = None
    events: list[AmiMessage] = field(default_factory=list)


class ActionCorrelator:
    """ActionID -> action in flight; completes them from responses and list events.

    `start` registers an action just sent; `receive` takes every message from the
    server and returns ``(completed, consumed)``: ``completed`` when the message finished
    an action, ``consumed`` when it belonged to one (a response, or an event inside an
    event list).  Messages not consumed are the caller's unsolicited events (including
    OriginateResponse, which carries the Originate's ActionID but comes after its
    response).  `expire` reports actions past their deadline and forgets them.
    """

    def __init__(self, *, response_timeout_seconds: float, id_prefix: str = "") -> None:
        self._timeout = response_timeout_seconds
        self._prefix = id_prefix
        self._counter = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        # (deadline, ActionID) of every action started; entries of actions already
        # completed are dropped lazily when they reach the top.
        self._deadlines: list[tuple[float, str]] = []

    def next_action_id(self) -> str:
        """A fresh ActionID for this connection."""
        return f"{self._prefix}{next(self._counter)}"

    def start(self, action_id: str, name: str, *, now: float, timeout_seconds: float | None = None) -> None:
        """Register an action sent at ``now``; raises AmiLocalProtocolError if the id is in flight."""
        if action_id in self._pending:
            raise AmiLocalProtocolError(f"ActionID {action_id!r} is already in flight")
        timeout = self._timeout if timeout_seconds is None else timeout_seconds
        self._pending[action_id] = _Pending(name=name, deadline=now + timeout)
        heapq.heappush(self._deadlines, (now + timeout, action_id))

    def __contains__(self, action_id: object) -> bool:
        return action_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def receive(self, message: AmiMessage) -> tuple[ActionCompleted | None, bool]:
        """Match one message from the server; see the class docstring."""
        action_id = message.action_id
        if action_id is None:
            return None, False
        pending = self._pending.get(action_id)
        if pending is None:
            return None, False
        kind = message.kind
        if kind is MessageKind.RESPONSE and pending.response is None:
            if (message.get("EventList") or "").lower() == "start":
                pending.response = message
                return None, True
            del self._pending[action_id]
            return ActionCompleted(action_id, pending.name, message), True
        if kind is MessageKind.EVENT and pending.response is not None:
            if (message.get("EventList") or "").lower() == "complete":
                del self._pending[action_id]
                return ActionCompleted(action_id, pending.name, pending.response,
                                       tuple(pending.events)), True
            pending.events.append(message)
            return None, True
        return None, False

    def expire(self, now: float) -> list[ActionTimedOut]:
        """Forget and return the actions whose deadline is at or before ``now``."""
        late: list[ActionTimedOut] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, action_id = heapq.heappop(heap)
            pending = self._pending.get(action_id)
            if pending is not None and pending.deadline == deadline:
                del self._pending[action_id]
                late.append(ActionTimedOut(action_id, pending.name))
        return late

    def next_deadline(self) -> float | None:
        """When `expire` next has something to report (None: nothing in flight)."""
        heap = self._deadlines
        while heap:
            deadline, action_id = heap[0]
            pending = self._pending.get(action_id)
            if pending is not None and pending.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def forget(self, action_id: str) -> None:
        """Stop tracking one action (its caller gave up on it)."""
        self._pending.pop(action_id, None)

    def abandon_all(self) -> list[tuple[str, str]]:
        """Forget every action in flight (the connection is gone); ``(action_id, name)``."""
        abandoned = [(action_id, p.name) for action_id, p in self._pending.items()]
        self._pending.clear()
        self._deadlines.clear()
        return abandoned
