"""An AMI server for tests, written from the Asterisk AMI documentation and main/manager.c.

What it does, each as Asterisk does it (docs.asterisk.org "AMI Actions"/"AMI Events";
main/manager.c ``authenticate``, ``action_challenge``, ``action_ping``,
``action_originate``, ``action_status``, ``action_coreshowchannels``):

* writes ``Asterisk Call Manager/<version>`` on connect;
* ``Login`` with Username/Secret, or ``Challenge`` (AuthType: MD5) then ``Login`` with
  AuthType: md5 and Key: md5(challenge + secret) in lowercase hex; a refused login gets
  ``Response: Error``/``Authentication failed`` and the session is closed (manager.c
  returns -1 from action_login).  The user's ``permit``/``deny`` ACL applies (last
  matching rule wins, as ast_apply_ha); actions before login get ``Permission denied``;
* write permission per action as registered in __init_manager: an action runs when the
  user's write classes share one class with the action's (Originate: originate; Status:
  system|call|reporting; CoreShowChannels: system|reporting; Ping, Login, Challenge,
  Logoff: none);
* events go to every logged-in session whose read classes include all of the event's
  classes (OriginateResponse, Newchannel, Newstate, Hangup: call; UserEvent: user;
  VarSet: dialplan; FullyBooted: system);
* ``Originate`` with Async answers ``Originate successfully queued`` and then plays the
  call scripted for the dialled number (`NumberScript`): events as Asterisk emits them,
  OriginateResponse carrying the Originate's ActionID, Reason being the last control
  frame (AST_CONTROL_*: 0 failed, 3 ringing = no answer, 4 answer, 5 busy, 8 congestion);
* ``Status`` (with ``Variables``) and ``CoreShowChannels`` list live channels as event
  lists (``EventList: start`` ... ``EventList: Complete``).

For tests it also records every action (``actions``) and every Originate
(``originates``) across sessions, can hold a call ringing until `proceed`, and can drop
the connection right after reading an Originate, before answering it.

Deviations: limits close the session instead of dropping long lines as manager.c does;
Timeout is not waited out (a scripted no-answer fails at once); no HTTP manager.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import md5
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from gateway.ivr.ami import (
    ASTERISK_MAX_HEADERS,
    ASTERISK_MAX_LINE_BYTES,
    AmiFraming,
    AmiMessage,
    AmiProtocolError,
    MessageKind,
    encode_message,
)

# Classes an action needs (any one of them), from __init_manager in main/manager.c.
ACTION_CLASSES: dict[str, frozenset[str]] = {
    "ping": frozenset(),
    "login": frozenset(),
    "challenge": frozenset(),
    "logoff": frozenset(),
    "originate": frozenset({"originate"}),
    "status": frozenset({"system", "call", "reporting"}),
    "coreshowchannels": frozenset({"system", "reporting"}),
    "hangup": frozenset({"system", "call"}),
    "userevent": frozenset({"user"}),
}


class Outcome(enum.Enum):
    ANSWER_HEARD = "answer_heard"  # answered; the dialplan signals REMINDER_HEARD=1; hangs up
    ANSWER_NOT_HEARD = "answer_not_heard"  # answered; hung up before the reminder was heard
    # Measured on Asterisk 22.10.1 (tests/asterisk): a callee that ends the call before
    # answering gives OriginateResponse Failure with Reason 0 and Uniqueid <unknown>; only
    # the channel's Hangup event, which comes first, tells why (its Cause).
    BUSY = "busy"  # Hangup Cause 17 (a PJSIP 486, Hangup(17)), then Failure, Reason 0
    NO_ANSWER = "no_answer"  # Hangup Cause 19 (Hangup(19), SIP 480), then Failure, Reason 0
    CONGESTION = "congestion"  # Hangup Cause 34, then Failure, Reason 0
    BUSY_SIGNAL = "busy_signal"  # Busy(): Hangup Cause 0, then Failure, Reason 5 (AST_CONTROL_BUSY)
    RING_TIMEOUT = "ring_timeout"  # still ringing at the Timeout (PJSIP CANCEL): Hangup Cause 19, Reason 3
    FAILED = "failed"  # Failure, Reason 0 (no channel could be requested; no Hangup)
    REJECT = "reject"  # Response: Error to the Originate itself: never placed


@dataclass
class NumberScript:
    outcome: Outcome = Outcome.ANSWER_HEARD
    drop_before_response: bool = False  # read the Originate, close the session, place the call anyway
    hold: str = ""  # "ringing" or "answered": stop there until AmiServer.proceed(number)
    heard_signal: str = "userevent"  # userevent, varset or both
    # The OriginateResponse goes out directly, the Hangup through Stasis: on a busy
    # Asterisk the Hangup can come second (unanswered outcomes only).
    hangup_after_response: bool = False


@dataclass
class AmiUser:
    secret: str
    read: frozenset[str]
    write: frozenset[str]
    acl: tuple[tuple[bool, ipaddress.IPv4Network], ...] = ()

    def permits(self, address: str) -> bool:
        allowed = True
        ip = ipaddress.ip_address(address)
        for permit, network in self.acl:
            if ip in network:
                allowed = permit
        return allowed


def _classes(text: str) -> frozenset[str]:
    names = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    if "all" in names:
        return frozenset({"system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf",
                          "reporting", "cdr", "dialplan", "originate", "agi", "cc", "aoc", "test", "security",
                          "message"})
    return names


def load_manager_conf(path: Path) -> tuple[dict[str, str], dict[str, AmiUser]]:
    """Read an Asterisk manager.conf: the [general] settings and one AmiUser per user section."""
    general: dict[str, str] = {}
    users: dict[str, AmiUser] = {}
    section = None
    settings: list[tuple[str, str]] = []

    def flush() -> None:
        if section is None:
            return
        if section == "general":
            general.update(settings)
            return
        values = dict(settings)
        acl = []
        for key, value in settings:
            if key in ("permit", "deny"):
                network, _, mask = value.partition("/")
                acl.append((key == "permit", ipaddress.IPv4Network(f"{network}/{mask or '32'}", strict=False)))
        users[section] = AmiUser(secret=values.get("secret", ""), read=_classes(values.get("read", "")),
                                 write=_classes(values.get("write", "")), acl=tuple(acl))

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and "]" in line:
            flush()
            section = line[1:line.index("]")].strip()
            settings = []
            continue
        key, sep, value = line.partition("=")
        if sep:
            settings.append((key.strip().lower(), value.lstrip(">").strip()))
    flush()
    return general, users


@dataclass
class Channel:
    name: str
    uniqueid: str
    number: str
    action_id: str
    context: str
    variables: dict[str, str]
    state: str = "Down"
    state_code: int = 0
    script: NumberScript = field(default_factory=NumberScript)
    assigned: bool = False  # the Originate named the Uniqueid (ChannelId)


_NUMBER = re.compile(r"(\d{5,})")


class AmiServer(Factory):
    """The server state shared by every session; see the module docstring."""

    def __init__(self, *, users: dict[str, AmiUser], clock: IReactorTime, version: str = "7.0.3") -> None:
        self.users = users
        self.clock = clock
        self.version = version
        self.scripts: dict[str, NumberScript] = {}
        self.actions: list[AmiMessage] = []
        self.originates: list[AmiMessage] = []
        self.channels: dict[str, Channel] = {}
        self.sessions: list[AmiSession] = []
        self._held: dict[str, Channel] = {}
        self._uniqueids = itertools.count(1)
        self._action_waiters: list[tuple[str, Deferred[AmiMessage]]] = []
        self._originate_waiters: list[tuple[int, Deferred[None]]] = []

    def buildProtocol(self, addr: IAddress) -> AmiSession:
        session = AmiSession(self, getattr(addr, "host", "127.0.0.1"))
        session.factory = self
        return session

    # --- for tests ---------------------------------------------------------------------

    def script(self, number: str, outcome: Outcome = Outcome.ANSWER_HEARD, **options: object) -> NumberScript:
        script = NumberScript(outcome=outcome, **options)  # type: ignore[arg-type]
        self.scripts[number] = script
        return script

    def originates_with(self, variable: str, value: str) -> list[AmiMessage]:
        """Every Originate received that set ``variable=value`` (duplicates count)."""
        return [o for o in self.originates if o.variables().get(variable) == value]

    def actions_named(self, name: str) -> list[AmiMessage]:
        return [a for a in self.actions if a.name.lower() == name.lower()]

    def wait_for_action(self, name: str) -> Deferred[AmiMessage]:
        """Fires with the next action named ``name`` after it has been answered."""
        waiter: Deferred[AmiMessage] = Deferred()
        self._action_waiters.append((name.lower(), waiter))
        return waiter

    def wait_for_originates(self, count: int) -> Deferred[None]:
        """Fires once ``count`` Originates in all have been received (at once if already)."""
        waiter: Deferred[None] = Deferred()
        self._originate_waiters.append((count, waiter))
        self._check_originates()
        return waiter

    def _check_originates(self) -> None:
        ready = [w for n, w in self._originate_waiters if len(self.originates) >= n]
        self._originate_waiters = [(n, w) for n, w in self._originate_waiters if len(self.originates) < n]
        for waiter in ready:
            waiter.callback(None)

    def held(self) -> list[str]:
        """Numbers whose calls are held, waiting for `proceed`."""
        return list(self._held)

    def proceed(self, number: str) -> None:
        """Let a held call continue with its scripted outcome."""
        channel = self._held.pop(number)
        self._finish_call(channel)

    def drop_sessions(self) -> None:
        for session in list(self.sessions):
            session.transport.loseConnection()  # type: ignore[union-attr]

    # --- events ------------------------------------------------------------------------

    def broadcast(self, classes: Iterable[str], headers: list[tuple[str, str]]) -> None:
        needed = frozenset(classes)
        event = [headers[0], ("Privilege", ",".join(sorted(needed)) + ",all"), *headers[1:]]
        for session in list(self.sessions):
            if session.user is not None and needed <= session.user.read:
                session.send(event)

    def _answered(self, name: str, message: AmiMessage) -> None:
        ready = [(n, w) for n, w in self._action_waiters if n == name]
        self._action_waiters = [(n, w) for n, w in self._action_waiters if n != name]
        for _, waiter in ready:
            waiter.callback(message)

    # --- calls -------------------------------------------------------------------------

    def place_call(self, action: AmiMessage, script: NumberScript, number: str) -> None:
        # ChannelId names the channel's Uniqueid (action_originate's assignedids).
        sequence = next(self._uniqueids)
        uniqueid = action.get("ChannelId") or f"1700000000.{sequence}"
        trunk = (action.get("Channel") or "").split("@")[-1] or "trunk"
        channel = Channel(
            name=f"PJSIP/{trunk}-{sequence:08x}", uniqueid=uniqueid, number=number,
            action_id=action.action_id or "", context=action.get("Context") or "",
            variables=action.variables(), script=script, assigned=bool(action.get("ChannelId")),
        )
        if script.outcome is Outcome.FAILED:
            self._originate_response(channel, success=False, reason="0")
            return
        self.channels[uniqueid] = channel
        self.broadcast({"call"}, [("Event", "Newchannel"), *self._snapshot(channel)])
        self._set_state(channel, "Ringing", 5)
        if script.hold == "ringing":
            self._held[number] = channel
            return
        self._finish_call(channel)

    def _finish_call(self, channel: Channel) -> None:
        outcome = channel.script.outcome
        if outcome in (Outcome.ANSWER_HEARD, Outcome.ANSWER_NOT_HEARD):
            if channel.state != "Up":
                self._set_state(channel, "Up", 6)
                self._originate_response(channel, success=True, reason="4")
                if channel.script.hold == "answered":
                    self._held[channel.number] = channel
                    return
            if outcome is Outcome.ANSWER_HEARD:
                notification_id = channel.variables.get("NOTIFICATION_ID", "")
                if channel.script.heard_signal in ("varset", "both"):
                    self.broadcast({"dialplan"}, [("Event", "VarSet"), *self._snapshot(channel),
                                                  ("Variable", "REMINDER_HEARD"), ("Value", "1")])
                if channel.script.heard_signal in ("userevent", "both"):
                    self.broadcast({"user"}, [("Event", "UserEvent"), *self._snapshot(channel),
                                              ("UserEvent", "ReminderHeard"),
                                              ("NOTIFICATION_ID", notification_id), ("REMINDER_HEARD", "1")])
            self._hangup(channel, "16", "Normal Clearing")
            return
        cause, text, reason = {
            Outcome.BUSY: ("17", "User busy", "0"),
            Outcome.NO_ANSWER: ("19", "User alerting, no answer", "0"),
            Outcome.CONGESTION: ("34", "Circuit/channel congestion", "0"),
            Outcome.BUSY_SIGNAL: ("0", "Unknown", "5"),
            Outcome.RING_TIMEOUT: ("19", "User alerting, no answer", "3"),
        }[outcome]
        if channel.script.hangup_after_response:
            self._originate_response(channel, success=False, reason=reason)
            self.clock.callLater(0.3, self._hangup, channel, cause, text)
            return
        self._hangup(channel, cause, text)
        self._originate_response(channel, success=False, reason=reason)

    def _snapshot(self, channel: Channel) -> list[tuple[str, str]]:
        return [("Channel", channel.name), ("ChannelState", str(channel.state_code)),
                ("ChannelStateDesc", channel.state), ("CallerIDNum", channel.number),
                ("CallerIDName", "<unknown>"), ("Context", channel.context), ("Exten", "s"),
                ("Priority", "1"), ("Uniqueid", channel.uniqueid), ("Linkedid", channel.uniqueid)]

    def _set_state(self, channel: Channel, state: str, code: int) -> None:
        channel.state, channel.state_code = state, code
        self.broadcast({"call"}, [("Event", "Newstate"), *self._snapshot(channel)])

    def _hangup(self, channel: Channel, cause: str, text: str) -> None:
        self.channels.pop(channel.uniqueid, None)
        self.broadcast({"call"}, [("Event", "Hangup"), *self._snapshot(channel), ("Cause", cause),
                                  ("Cause-txt", text)])

    def _originate_response(self, channel: Channel, *, success: bool, reason: str) -> None:
        headers = [
            ("Event", "OriginateResponse"), ("ActionID", channel.action_id),
            ("Response", "Success" if success else "Failure"), ("Channel", channel.name),
            ("Context", channel.context), ("Exten", "s"), ("Application", ""), ("Data", ""),
            # On failure Asterisk 22 echoes the ChannelId, or says <unknown> without one
            # (older versions <null>).
            ("Reason", reason), ("Uniqueid", channel.uniqueid if success or channel.assigned else "<unknown>"),
            ("CallerIDNum", channel.number), ("CallerIDName", "<unknown>"),
        ]
        self.broadcast({"call"}, headers)


class AmiSession(Protocol):
    """One manager session (mansession_session in manager.c)."""

    def __init__(self, server: AmiServer, peer_host: str) -> None:
        self.server = server
        self.peer_host = peer_host
        # Asterisk's own limits on what it reads: 1024-byte lines, 128 headers.
        self.framing = AmiFraming(expect_banner=False, max_headers=ASTERISK_MAX_HEADERS,
                                  max_message_bytes=ASTERISK_MAX_HEADERS * ASTERISK_MAX_LINE_BYTES)
        self.user: AmiUser | None = None
        self.username = ""
        self.challenge = ""
        self.closing = False

    def connectionMade(self) -> None:
        self.server.sessions.append(self)
        self.transport.write(f"Asterisk Call Manager/{self.server.version}\r\n".encode())  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.server.sessions:
            self.server.sessions.remove(self)

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.framing.receive_data(data)
        except AmiProtocolError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        for message in messages:
            if self.closing:
                return
            if message.kind is not MessageKind.ACTION:
                self.respond(message, "Error", "Missing action in request")
                continue
            self.server.actions.append(message)
            self.handle(message)
            self.server._answered(message.name.lower(), message)
            self.server._check_originates()

    def send(self, headers: list[tuple[str, str]]) -> None:
        if not self.closing:
            self.transport.write(encode_message(headers))  # type: ignore[union-attr]

    def respond(self, action: AmiMessage, status: str, message: str | None = None,
                *extra: tuple[str, str]) -> None:
        headers = [("Response", status)]
        if action.action_id is not None:
            headers.append(("ActionID", action.action_id))
        headers.extend(extra)
        if message is not None:
            headers.append(("Message", message))
        self.send(headers)

    def close(self) -> None:
        self.closing = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    # --- actions -----------------------------------------------------------------------

    def handle(self, action: AmiMessage) -> None:
        name = action.name.lower()
        if self.user is None and name not in ("login", "logoff", "challenge"):
            self.respond(action, "Error", "Permission denied")
            return
        needed = ACTION_CLASSES.get(name)
        if needed is None:
            self.respond(action, "Error", "Invalid/unknown command")
            return
        if needed and self.user is not None and not (needed & self.user.write):
            self.respond(action, "Error", "Permission denied")
            return
        getattr(self, f"action_{name}")(action)

    def action_ping(self, action: AmiMessage) -> None:
        self.respond(action, "Success", None, ("Ping", "Pong"), ("Timestamp", f"{self.server.clock.seconds():.6f}"))

    def action_logoff(self, action: AmiMessage) -> None:
        self.respond(action, "Goodbye", "Thanks for all the fish.")
        self.close()

    def action_challenge(self, action: AmiMessage) -> None:
        if (action.get("AuthType") or "").lower() != "md5":
            self.respond(action, "Error", "Must specify AuthType")
            return
        if not self.challenge:
            self.challenge = str(secrets.randbelow(2**31))
        self.respond(action, "Success", None, ("Challenge", self.challenge))

    def action_login(self, action: AmiMessage) -> None:
        username = action.get("Username") or ""
        user = self.server.users.get(username)
        ok = False
        if user is not None and user.permits(self.peer_host):
            if (action.get("AuthType") or "").lower() == "md5":
                key = action.get("Key") or ""
                expected = md5((self.challenge + user.secret).encode(), usedforsecurity=False).hexdigest()
                ok = bool(key and self.challenge) and key == expected
            else:
                ok = bool(user.secret) and action.get("Secret") == user.secret
        if not ok:
            self.respond(action, "Error", "Authentication failed")
            self.close()
            return
        self.user, self.username = user, username
        self.respond(action, "Success", "Authentication accepted")
        if "system" in user.read:  # type: ignore[union-attr]
            self.send([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Status", "Fully Booted")])

    def action_originate(self, action: AmiMessage) -> None:
        self.server.originates.append(action)
        if not action.get("Channel"):
            self.respond(action, "Error", "Channel not specified")
            return
        if not (action.get("Context") and action.get("Exten") and action.get("Priority")):
            self.respond(action, "Error", "Originate with 'Exten' requires 'Context' and 'Priority'")
            return
        match = _NUMBER.search(action.get("Channel") or "")
        number = match.group(1) if match else ""
        script = self.server.scripts.get(number, NumberScript())
        if script.drop_before_response:
            self.close()
        elif script.outcome is Outcome.REJECT:
            self.respond(action, "Error", "Originate failed")
            return
        else:
            self.respond(action, "Success", "Originate successfully queued")
        if script.outcome is not Outcome.REJECT:
            # The originate thread runs after the response went out (Async: true).
            self.server.clock.callLater(0, self.server.place_call, action, script, number)

    def action_status(self, action: AmiMessage) -> None:
        wanted = [v.strip() for v in (action.get("Variables") or "").split(",") if v.strip()]
        self.respond(action, "Success", "Channel status will follow", ("EventList", "start"))
        channels = list(self.server.channels.values())
        for channel in channels:
            headers = [("Event", "Status"), ("Privilege", "Call"), ("ActionID", action.action_id or ""),
                       *self.server._snapshot(channel), ("Type", "PJSIP"), ("Seconds", "1")]
            headers.extend(("Variable", f"{name}={channel.variables.get(name, '')}") for name in wanted)
            self.send(headers)
        self.send([("Event", "StatusComplete"), ("ActionID", action.action_id or ""), ("EventList", "Complete"),
                   ("ListItems", str(len(channels))), ("Items", str(len(channels)))])

    def action_coreshowchannels(self, action: AmiMessage) -> None:
        self.respond(action, "Success", "Channels will follow", ("EventList", "start"))
        channels = list(self.server.channels.values())
        for channel in channels:
            self.send([("Event", "CoreShowChannel"), ("ActionID", action.action_id or ""),
                       *self.server._snapshot(channel), ("Application", "AGI"), ("ApplicationData", ""),
                       ("Duration", "00:00:01"), ("BridgeId", "")])
        self.send([("Event", "CoreShowChannelsComplete"), ("ActionID", action.action_id or ""),
                   ("EventList", "Complete"), ("ListItems", str(len(channels)))])

    def action_hangup(self, action: AmiMessage) -> None:
        for channel in list(self.server.channels.values()):
            if channel.name == action.get("Channel"):
                self.server._hangup(channel, "16", "Normal Clearing")
                self.respond(action, "Success", "Channel Hungup")
                return
        self.respond(action, "Error", "No such channel")

    def action_userevent(self, action: AmiMessage) -> None:
        headers = [("Event", "UserEvent"), ("UserEvent", action.get("UserEvent") or "")]
        headers.extend((k, v) for k, v in action.headers if k.lower() not in ("action", "actionid", "userevent"))
        self.server.broadcast({"user"}, headers)
        self.respond(action, "Success", "Event Sent")


def listen(server: AmiServer, reactor: IReactorTCP) -> IListeningPort:
    """Listen on 127.0.0.1, a free port; ``.getHost().port`` tells which."""
    return reactor.listenTCP(0, server, interface="127.0.0.1")


def default_user(secret: str = "test-secret") -> AmiUser:
    """The gateway12123 user of dialplans/manager.conf, with a test secret."""
    conf = Path(__file__).resolve().parents[2] / "dialplans" / "manager.conf"
    _, users = load_manager_conf(conf)
    user = users["gateway12123"]
    return AmiUser(secret=secret, read=user.read, write=user.write, acl=user.acl)
