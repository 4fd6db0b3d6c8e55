"""The Asterisk Gateway Interface over a socket (FastAGI), sans-IO.

Theory of operation
-------------------
Asterisk runs ``AGI(agi://host:4573/script,arg1,...)``: it connects to us and writes the
*environment*, one ``agi_name: value`` line per variable (``agi_network: yes``,
``agi_network_script: script``, ``agi_request``, ``agi_channel``, ``agi_language``,
``agi_type``, ``agi_uniqueid``, ``agi_version``, ``agi_callerid``, ``agi_calleridname``,
``agi_callingpres``, ``agi_callingani2``, ``agi_callington``, ``agi_callingtns``,
``agi_dnid``, ``agi_rdnis``, ``agi_context``, ``agi_extension``, ``agi_priority``,
``agi_enhanced``, ``agi_accountcode``, ``agi_threadid``, then ``agi_arg_1``...), ended by an
empty line (res/res_agi.c ``setup_env``).  From then on the script drives: it writes one
command per line and Asterisk answers each with one reply (grammar in `parse_agi_reply`).

Strictly one command at a time.  Asterisk does not queue commands: while STREAM FILE,
GET DATA or a SAY command plays it also watches the socket, and a new line arriving
*aborts* the playing command without any reply for it (``ast_waitstream_full`` returns 1,
"Stop this command, don't print a result line, as there is a new command").  So
`AgiSession.send_command` queues, and `data_to_send` releases the next line only when the
reply to the previous one has arrived.

Hang-up.  When the caller hangs up, Asterisk finishes the running command (its reply is
usually ``200 result=-1 ...``, which STREAM FILE also answers for a missing file: see
menus.CallFlow), writes the bare line ``HANGUP`` once (FastAGI only) and then
keeps the socket open in "dead" mode, where commands that need a live channel get ``511``,
until we close; some versions close at once.  `Hangup` is an event, not a reply: it does
not answer the outstanding command.  End of file is `ConnectionClosed`.

Limits.  A line longer than ``max_line_bytes`` or an environment of more than
``MAX_HEADER_LINES`` lines / ``MAX_HEADER_BYTES`` bytes is a `ProtocolError` and ends the
session rather than growing a buffer.  Commands we build are refused at
``MAX_COMMAND_BYTES`` because Asterisk would cut them in two.

What we do not support: SPEECH RECOGNIZE's result list (``text0="..."`` items with spaces);
we never send it.  The ``100 result=0 Trying...`` provisional line of old versions is
accepted and skipped.
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from types import MappingProxyType

from gateway.privacy import InvalidPhoneNumber, PhoneNumber, normalise_cn_mobile

__all__ = [
    "ALL_DIGITS",
    "MAX_COMMAND_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINES",
    "AgiReply",
    "AgiReplyError",
    "AgiSession",
    "AgiStatus",
    "ConnectionClosed",
    "Environment",
    "Hangup",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "SessionState",
    "answer",
    "caller_number",
    "channel_status",
    "exec_",
    "get_data",
    "hangup",
    "parse_agi_reply",
    "quote",
    "say_date",
    "say_digits",
    "say_number",
    "set_variable",
    "stream_file",
    "verbose",
    "wait_for_digit",
]

# Every DTMF key a caller can press on a phone keypad (A-D exist only on test sets).
ALL_DIGITS = "0123456789*#"

# res_agi.c reads each command with fgets into a buffer of AGI_BUF_LEN (2048) bytes: a
# longer line is read as two commands.  The newline counts.
MAX_COMMAND_BYTES = 2047
# setup_env writes 22 fixed variables plus agi_arg_1..agi_arg_127 (MAX_ARGS is 128), so
# 256 lines is more than a real Asterisk ever sends; 64 KiB bounds the same header in bytes.
MAX_HEADER_LINES = 256
MAX_HEADER_BYTES = 65_536
# The longest 520 usage text in res_agi.c is under 40 lines.
MAX_USAGE_LINES = 256


# ---------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------


class AgiStatus(IntEnum):
    """The three-digit code opening every reply line (res/res_agi.c)."""

    TRYING = 100  # provisional, old versions' EXEC
    SUCCESS = 200
    MEMORY_FAILURE = 503  # "503 result=-2 Memory allocation failure"
    INVALID_COMMAND = 510  # "510 Invalid or unknown command"
    DEAD_CHANNEL = 511  # "511 Command Not Permitted on a dead channel or intercept routine"
    USAGE = 520  # "520-Invalid command syntax.  Proper usage follows:" ... "520 End of proper usage."


class AgiReplyError(ValueError):
    """Text that is not an AGI reply (the peer broke the protocol)."""


@dataclass(frozen=True)
class AgiReply:
    """One reply of Asterisk to one command.

    `result` is the text after ``result=`` (``"49"``, ``"2026113"``, ``""``, ``"-1"``) or None
    for replies without one (510, 511, 520); `data` is the parenthesised word(s) other than
    ``timeout`` (``"dtmf"``, a GET VARIABLE value); `timeout` is True for ``(timeout)``;
    `endpos` is the sample offset STREAM FILE stopped at; `usage` holds the lines of a 520
    block between its first and last line; `text` is the human text of a non-200 line;
    `extra` any other ``key=value`` items, in order.
    """

    code: AgiStatus
    result: str | None = None
    data: str | None = None
    timeout: bool = False
    endpos: int | None = None
    usage: tuple[str, ...] = ()
    text: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """A 200 reply whose result is not -1 (for STREAM FILE, -1 is also a missing file)."""
        return self.code is AgiStatus.SUCCESS and self.result != "-1"

    @property
    def result_int(self) -> int:
        """The result as a number; raises AgiReplyError when it is not one."""
        try:
            return int(self.result or "")
        except ValueError:
            raise AgiReplyError("result is not a number") from None

    @property
    def digit(self) -> str | None:
        """The key pressed, for replies whose result is a character code (STREAM FILE,
        WAIT FOR DIGIT, SAY *); None for 0 (no key) and for failures."""
        if self.code is not AgiStatus.SUCCESS or not self.result or not _INT.fullmatch(self.result):
            return None
        value = int(self.result)
        if value <= 0 or value > 0x10FFFF:
            return None
        return chr(value)


@dataclass(frozen=True)
class Hangup:
    """The bare ``HANGUP`` line: the caller is gone (sent once, FastAGI only)."""


_INT = re.compile(r"-?[0-9]+")
_CODE = re.compile(r"([0-9]{3})([ -])(.*)", re.DOTALL)
_ITEM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


def parse_agi_reply(lines: Sequence[str]) -> AgiReply | Hangup:
    """Parse one reply of Asterisk (without line ends).

    The grammar (from res/res_agi.c; ``SP`` is one space)::

        reply        = hangup / result-line / error-line / usage-block
        hangup       = "HANGUP"
        result-line  = ("200" / "503" / "100") SP "result=" value [SP "(" data ")"] *(SP key "=" value)
        value        = *(any character but SP)            ; may be empty: "200 result= (timeout)"
        data         = "timeout" / any text               ; "(timeout)" sets .timeout
        key          = "endpos" / other name              ; endpos=N -> .endpos, others -> .extra
        error-line   = ("510" / "511" / "520") SP text    ; 520 alone: "Proper usage not available."
        usage-block  = "520-" text 1*(usage-line) "520" SP text
        usage-line   = any line not starting "520 "       ; -> .usage

    Examples: ``200 result=0 endpos=12345``, ``200 result=49 endpos=3200``,
    ``200 result=20261130001``, ``200 result=12 (timeout)``, ``200 result=-1``,
    ``200 result=1 (testvariable)``, ``503 result=-2 Memory allocation failure``,
    ``510 Invalid or unknown command``,
    ``511 Command Not Permitted on a dead channel or intercept routine``, and the block
    ``520-Invalid command syntax.  Proper usage follows:`` ... ``520 End of proper usage.``

    Raises AgiReplyError for anything else (and for an unknown code).
    """
    if not lines:
        raise AgiReplyError("no reply lines")
    first = lines[0]
    if first == "HANGUP":
        if len(lines) != 1:
            raise AgiReplyError("HANGUP is a line of its own")
        return Hangup()
    match = _CODE.fullmatch(first)
    if match is None:
        raise AgiReplyError("reply does not start with a three-digit code")
    try:
        code = AgiStatus(int(match[1]))
    except ValueError:
        raise AgiReplyError("unknown reply code") from None
    separator, rest = match[2], match[3]
    if separator == "-":
        return _parse_usage_block(code, rest, lines)
    if len(lines) != 1:
        raise AgiReplyError("only a 520- block spans several lines")
    if code in (AgiStatus.SUCCESS, AgiStatus.MEMORY_FAILURE, AgiStatus.TRYING):
        return _parse_result_line(code, rest)
    return AgiReply(code=code, text=rest)


def _parse_result_line(code: AgiStatus, rest: str) -> AgiReply:
    if code is not AgiStatus.SUCCESS:
        # "503 result=-2 Memory allocation failure", "100 result=0 Trying...": free text after.
        value, _, text = rest.partition(" ")
        if not value.startswith("result="):
            raise AgiReplyError("result line without result=")
        return AgiReply(code=code, result=value[len("result="):], text=text)
    result, data, items = _split_success(rest)
    timeout = data == "timeout"
    endpos: int | None = None
    extra: list[tuple[str, str]] = []
    for key, value in items:
        if key == "endpos":
            if not _INT.fullmatch(value):
                raise AgiReplyError("endpos is not a number")
            endpos = int(value)
        else:
            extra.append((key, value))
    return AgiReply(
        code=code,
        result=result,
        data=None if timeout else data,
        timeout=timeout,
        endpos=endpos,
        extra=tuple(extra),
    )


def _split_success(rest: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """``result=VALUE [(data)] *( key=value)`` -> (VALUE, data, items), in linear time.

    The data may hold spaces and parentheses (a GET VARIABLE value), so it ends at the
    *last* ")" that only key=value items follow.  Items are peeled off from the right
    until such a ")" is reached: each character is looked at a bounded number of times (a
    backtracking regex took seconds on a hostile line of a few KiB).
    """
    if not rest.startswith("result="):
        raise AgiReplyError("200 line without result=")
    body = rest[len("result="):]
    space = body.find(" ")
    result, remainder = (body, "") if space < 0 else (body[:space], body[space:])
    if any(c.isspace() for c in result):
        raise AgiReplyError("result value holds white space")
    has_data = remainder.startswith(" (")
    items: list[tuple[str, str]] = []
    end = len(remainder)
    data: str | None = None
    while end > 0:
        if has_data and end >= 3 and remainder[end - 1] == ")":
            data = remainder[2 : end - 1]
            break
        start = remainder.rfind(" ", 0, end)
        item = _ITEM.fullmatch(remainder, start + 1, end) if start >= 0 else None
        if item is None:
            raise AgiReplyError("200 line is not result=VALUE [(data)] [key=value...]")
        items.append((item[1], item[2]))
        end = start
    items.reverse()
    return result, data, items


def _parse_usage_block(code: AgiStatus, first_text: str, lines: Sequence[str]) -> AgiReply:
    if code is not AgiStatus.USAGE:
        raise AgiReplyError("only 520 opens a multi-line block")
    if len(lines) < 2:
        raise AgiReplyError("520- block without its closing line")
    last = lines[-1]
    if not last.startswith("520 "):
        raise AgiReplyError("520- block does not end with a '520 ' line")
    body = tuple(lines[1:-1])
    if any(line.startswith("520 ") for line in body):
        raise AgiReplyError("520- block closed twice")
    return AgiReply(code=code, text=first_text, usage=body)


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def quote(argument: str) -> str:
    """One argument as res_agi.c's parse_args reads it: in double quotes, with backslash
    before ``"`` and ``\\``.  Raises ValueError for line breaks and NUL, which would end or
    truncate the command line."""
    if any(c in argument for c in "\r\n\0"):
        raise ValueError("an AGI argument cannot hold a line break or NUL")
    return '"' + argument.replace("\\", "\\\\").replace('"', '\\"') + '"'


_BARE = re.compile(r"[A-Za-z0-9_/.\-:+]+")


def _word(argument: str) -> str:
    """A file or variable name: bare when it is a plain word, else quoted."""
    return argument if _BARE.fullmatch(argument) else quote(argument)


def _escape_digits(digits: str) -> str:
    if any(c not in ALL_DIGITS for c in digits):
        raise ValueError("escape digits must be among 0-9 * #")
    return quote(digits)


def answer() -> str:
    """ANSWER: answer the channel if it is not up yet.  result=0, or -1 on failure."""
    return "ANSWER"


def stream_file(name: str, escape_digits: str = "", sample_offset: int | None = None) -> str:
    """STREAM FILE: play a sound file (name without extension).

    A key among `escape_digits` stops playback; result is its character code, 0 when the
    file played to the end, -1 on hang-up *and* when the file does not exist (res_agi.c
    handle_streamfile answers ``200 result=-1 endpos=0`` when ast_openstream fails; measured
    on Asterisk 22.10.1); ``endpos`` is where it stopped.  Only the next command tells the
    two apart: on a channel that is gone it gets 511 (see menus.CallFlow).
    """
    line = f"STREAM FILE {_word(name)} {_escape_digits(escape_digits)}"
    return line if sample_offset is None else f"{line} {int(sample_offset)}"


def get_data(file: str, timeout_ms: int, max_digits: int) -> str:
    """GET DATA: play `file` ("" for none) and read up to `max_digits` keys, ``#`` ends.

    The first key may be pressed during the prompt and counts.  result is the digits
    (without ``#``), with ``(timeout)`` when the caller stopped typing for `timeout_ms`;
    -1 on hang-up.
    """
    if timeout_ms <= 0 or max_digits <= 0:
        raise ValueError("timeout and max_digits must be positive")
    return f"GET DATA {_word(file) if file else quote('')} {int(timeout_ms)} {int(max_digits)}"


def wait_for_digit(timeout_ms: int) -> str:
    """WAIT FOR DIGIT: result is the key's character code, 0 on timeout, -1 on hang-up."""
    return f"WAIT FOR DIGIT {int(timeout_ms)}"


def say_digits(digits: str, escape_digits: str = "") -> str:
    """SAY DIGITS: speak each digit ("2 0 2 6"); result as for STREAM FILE."""
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("SAY DIGITS takes ASCII digits")
    return f"SAY DIGITS {digits} {_escape_digits(escape_digits)}"


def say_number(number: int, escape_digits: str = "") -> str:
    """SAY NUMBER: speak a whole number in the channel's language; result as STREAM FILE."""
    return f"SAY NUMBER {int(number)} {_escape_digits(escape_digits)}"


def say_date(unix_seconds: int, escape_digits: str = "") -> str:
    """SAY DATE: speak the date of a Unix time (the Asterisk host's time zone)."""
    return f"SAY DATE {int(unix_seconds)} {_escape_digits(escape_digits)}"


def set_variable(name: str, value: str) -> str:
    """SET VARIABLE: set a channel variable for the dialplan; always result=1."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError("a channel variable name is letters, digits and _")
    return f"SET VARIABLE {name} {quote(value)}"


def exec_(application: str, arguments: str = "") -> str:
    """EXEC: run a dialplan application; result is what it returns, -2 if it is unknown."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", application):
        raise ValueError("an application name is letters, digits and _")
    return f"EXEC {application} {quote(arguments)}"


def verbose(message: str, level: int = 1) -> str:
    """VERBOSE: a line on the Asterisk console at `level` (1-4); always result=1."""
    return f"VERBOSE {quote(message)} {int(level)}"


def channel_status() -> str:
    """CHANNEL STATUS: the channel's state (6 = up).  Needs a live channel: 511 when it is
    gone, so it tells a missing sound file from a hang-up (see menus.CallFlow)."""
    return "CHANNEL STATUS"


def hangup() -> str:
    """HANGUP (our command, not Asterisk's notification): hang up the channel; result=1."""
    return "HANGUP"


# ---------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------


class RemoteProtocolError(Exception):
    """The peer broke the protocol (raised inside the session, surfaced as the
    `ProtocolError` event, as h11 separates remote from local errors)."""


class LocalProtocolError(Exception):
    """We tried to break the protocol (a command before the environment, a line break in a
    command, a command after the session closed)."""


@dataclass(frozen=True, repr=False)
class Environment:
    """The ``agi_*`` variables Asterisk sent, names without the ``agi_`` prefix.

    Its repr names only the script and the unique id: the variables hold the caller id.
    """

    variables: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.variables.get(name, default)

    @property
    def network_script(self) -> str:
        """``agi_network_script``: the path after ``agi://host:port/`` (``12123``, ``notify``)."""
        return self.variables.get("network_script", "")

    @property
    def uniqueid(self) -> str:
        return self.variables.get("uniqueid", "")

    @property
    def channel(self) -> str:
        return self.variables.get("channel", "")

    @property
    def language(self) -> str:
        return self.variables.get("language", "")

    @property
    def arguments(self) -> tuple[str, ...]:
        """``agi_arg_1``, ``agi_arg_2``, ... in order (the AGI() application's arguments)."""
        found: list[str] = []
        n = 1
        while f"arg_{n}" in self.variables:
            found.append(self.variables[f"arg_{n}"])
            n += 1
        return tuple(found)

    @property
    def caller(self) -> PhoneNumber | None:
        """The caller id as a PhoneNumber (Chinese mobiles normalised), None when withheld."""
        return caller_number(self.variables.get("callerid", ""))

    def __repr__(self) -> str:
        return f"Environment(network_script={self.network_script!r}, uniqueid={self.uniqueid!r})"


def caller_number(raw: str) -> PhoneNumber | None:
    """``agi_callerid`` as a PhoneNumber: "unknown", "anonymous" and empty become None;
    +86/0086/86 and a trunk prefix 0 before a mobile number are removed."""
    text = unicodedata.normalize("NFKC", raw).strip()
    if not text or text.lower() in ("unknown", "anonymous", "restricted", "private"):
        return None
    candidate = text[1:] if re.fullmatch(r"01[3-9][0-9]{9}", text) else text
    try:
        return PhoneNumber(normalise_cn_mobile(candidate))
    except InvalidPhoneNumber:
        digits = re.sub(r"[^0-9]", "", text)
        return PhoneNumber(digits) if digits else None


@dataclass(frozen=True)
class Reply:
    """Asterisk's answer to `command` (the line we sent)."""

    command: str
    reply: AgiReply


@dataclass(frozen=True)
class ProtocolError:
    """The peer broke the protocol; the session is closed.  `reason` is safe to log."""

    reason: str


@dataclass(frozen=True)
class ConnectionClosed:
    """Asterisk closed the socket (end of file)."""


AgiEvent = Environment | Reply | Hangup | ProtocolError | ConnectionClosed


class SessionState(Enum):
    AWAITING_ENVIRONMENT = "awaiting environment"
    IDLE = "idle"  # no command outstanding
    AWAITING_REPLY = "awaiting reply"
    IN_USAGE_BLOCK = "in 520 usage block"
    CLOSED = "closed"


class _LineKind(Enum):
    EMPTY = "empty"
    HANGUP = "HANGUP"
    USAGE_START = "520-"
    USAGE_END = "520 "
    TEXT = "text"


# Which line is acceptable in which state, and what it does.  A missing entry is a
# protocol error (its message is the reason).  The environment is handled apart: every
# line there is "agi_name: value" until the empty line.
_TRANSITIONS: dict[tuple[SessionState, _LineKind], str] = {
    # Asterisk never sends a blank line after the environment; one carries nothing.
    (SessionState.IDLE, _LineKind.EMPTY): "ignore",
    (SessionState.AWAITING_REPLY, _LineKind.EMPTY): "ignore",
    (SessionState.IDLE, _LineKind.HANGUP): "hangup",
    (SessionState.AWAITING_REPLY, _LineKind.HANGUP): "hangup",
    (SessionState.AWAITING_REPLY, _LineKind.TEXT): "reply",
    (SessionState.AWAITING_REPLY, _LineKind.USAGE_END): "reply",
    (SessionState.AWAITING_REPLY, _LineKind.USAGE_START): "usage-start",
    (SessionState.IN_USAGE_BLOCK, _LineKind.TEXT): "usage-line",
    (SessionState.IN_USAGE_BLOCK, _LineKind.EMPTY): "usage-line",
    (SessionState.IN_USAGE_BLOCK, _LineKind.HANGUP): "usage-line",
    (SessionState.IN_USAGE_BLOCK, _LineKind.USAGE_START): "usage-line",
    (SessionState.IN_USAGE_BLOCK, _LineKind.USAGE_END): "usage-end",
}

_HEADER_LINE = re.compile(r"agi_([a-z0-9_]+):(?: (.*))?", re.DOTALL)


def _kind(line: str) -> _LineKind:
    if not line:
        return _LineKind.EMPTY
    if line == "HANGUP":
        return _LineKind.HANGUP
    if line.startswith("520-"):
        return _LineKind.USAGE_START
    if line.startswith("520 "):
        return _LineKind.USAGE_END
    return _LineKind.TEXT


class AgiSession:
    """One FastAGI connection seen from the script's side: bytes in, events out.

    >>> session = AgiSession()
    >>> session.receive_data(b"agi_network: yes\\nagi_network_script: 12123\\n\\n")
    [Environment(network_script='12123', uniqueid='')]
    >>> session.send_command(answer()); session.data_to_send()
    b'ANSWER\\n'
    >>> session.receive_data(b"200 result=0\\n")
    [Reply(command='ANSWER', reply=AgiReply(code=<AgiStatus.SUCCESS: 200>, result='0', ...))]
    """

    def __init__(self, *, max_line_bytes: int = 8192) -> None:
        # max_line_bytes: FastAgiConfig.max_line_bytes.  The longest reply res_agi.c builds
        # is GET FULL VARIABLE's (a 4096-byte value in parentheses); 8192 leaves room.
        self._max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._state = SessionState.AWAITING_ENVIRONMENT
        self._header: dict[str, str] = {}
        self._header_lines = 0
        self._header_bytes = 0
        self._usage: list[str] = []
        self._queue: deque[str] = deque()
        self._outstanding: str | None = None
        self._out = bytearray()
        self.environment: Environment | None = None
        self.hung_up = False

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def outstanding(self) -> str | None:
        """The command whose reply we are waiting for."""
        return self._outstanding

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[AgiEvent]:
        """Feed bytes from Asterisk; ``b""`` means end of file.  Returns the events."""
        if self._state is SessionState.CLOSED:
            return []
        events: list[AgiEvent] = []
        if not data:
            self._state = SessionState.CLOSED
            events.append(ConnectionClosed())
            return events
        self._buffer += data
        while self._state is not SessionState.CLOSED:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self._max_line_bytes:
                    self._fail(events, f"line longer than {self._max_line_bytes} bytes")
                break
            if end > self._max_line_bytes:
                self._fail(events, f"line longer than {self._max_line_bytes} bytes")
                break
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            line = raw.decode("utf-8", "replace")
            if line.endswith("\r"):
                line = line[:-1]
            try:
                self._on_line(line, len(raw) + 1, events)
            except RemoteProtocolError as e:
                self._fail(events, str(e))
        return events

    def _fail(self, events: list[AgiEvent], reason: str) -> None:
        self._state = SessionState.CLOSED
        self._buffer.clear()
        self._queue.clear()
        events.append(ProtocolError(reason))

    def _on_line(self, line: str, size: int, events: list[AgiEvent]) -> None:
        if self._state is SessionState.AWAITING_ENVIRONMENT:
            self._on_header_line(line, size, events)
            return
        kind = _kind(line)
        step = _TRANSITIONS.get((self._state, kind))
        if step is None:
            raise RemoteProtocolError(f"unexpected {kind.value} line while {self._state.value}")
        if step == "ignore":
            return
        if step == "hangup":
            if not self.hung_up:
                self.hung_up = True
                events.append(Hangup())
        elif step == "reply":
            self._deliver([line], events)
        elif step == "usage-start":
            self._usage = [line]
            self._state = SessionState.IN_USAGE_BLOCK
        elif step == "usage-line":
            if len(self._usage) > MAX_USAGE_LINES:
                raise RemoteProtocolError(f"520 usage block longer than {MAX_USAGE_LINES} lines")
            self._usage.append(line)
        elif step == "usage-end":
            self._usage.append(line)
            lines, self._usage = self._usage, []
            self._deliver(lines, events)

    def _on_header_line(self, line: str, size: int, events: list[AgiEvent]) -> None:
        if line == "":
            self.environment = Environment(MappingProxyType(dict(self._header)))
            self._state = SessionState.IDLE
            events.append(self.environment)
            return
        self._header_lines += 1
        self._header_bytes += size
        if self._header_lines > MAX_HEADER_LINES or self._header_bytes > MAX_HEADER_BYTES:
            raise RemoteProtocolError("AGI environment too large")
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise RemoteProtocolError("environment line is not 'agi_name: value'")
        self._header[match[1]] = match[2] or ""

    def _deliver(self, lines: list[str], events: list[AgiEvent]) -> None:
        try:
            parsed = parse_agi_reply(lines)
        except AgiReplyError as e:
            raise RemoteProtocolError(f"bad reply: {e}") from None
        assert isinstance(parsed, AgiReply)  # HANGUP never reaches here (table)
        if parsed.code is AgiStatus.TRYING:
            self._state = SessionState.AWAITING_REPLY
            return
        command = self._outstanding
        assert command is not None
        self._outstanding = None
        self._state = SessionState.IDLE
        events.append(Reply(command, parsed))
        self._release()

    # -- output -----------------------------------------------------------------------

    def send_command(self, command: str) -> None:
        """Queue one command line (without newline); it goes out when the previous one is
        answered.  Raises LocalProtocolError before the environment, after the session
        closed, and for lines Asterisk would mis-read."""
        if self._state is SessionState.AWAITING_ENVIRONMENT:
            raise LocalProtocolError("a command before the AGI environment was received")
        if self._state is SessionState.CLOSED:
            raise LocalProtocolError("the session is closed")
        if any(c in command for c in "\r\n\0") or not command.strip():
            raise LocalProtocolError("a command is one non-empty line")
        if len(command.encode("utf-8")) + 1 > MAX_COMMAND_BYTES:
            raise LocalProtocolError(f"command longer than {MAX_COMMAND_BYTES} bytes")
        self._queue.append(command)
        self._release()

    def _release(self) -> None:
        if self._outstanding is None and self._queue and self._state is SessionState.IDLE:
            command = self._queue.popleft()
            self._outstanding = command
            self._state = SessionState.AWAITING_REPLY
            self._out += command.encode("utf-8") + b"\n"

    def data_to_send(self) -> bytes:
        """Bytes to write to Asterisk now (possibly empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        """We are done (or the transport went away): nothing more is sent or parsed."""
        self._state = SessionState.CLOSED
        self._queue.clear()
        self._buffer.clear()
