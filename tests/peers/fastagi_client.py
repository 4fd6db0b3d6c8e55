"""A FastAGI client that behaves as Asterisk does, written from res/res_agi.c and the AGI
command documentation, for testing our FastAGI server over a real socket.

What it does, as Asterisk:

* connects and writes the environment (``agi_network: yes``, ``agi_network_script``, the
  ``setup_env`` variables, ``agi_arg_N``) and an empty line;
* reads one command per line, splits it with `parse_args` (res_agi.c's quoting rules),
  finds it by its words, and answers it: STREAM FILE ``200 result=<key code or 0>
  endpos=<n>``, GET DATA ``200 result=<digits>`` or ``200 result=<digits> (timeout)``,
  WAIT FOR DIGIT ``200 result=<key code or 0>``, SAY DIGITS/NUMBER/DATE like STREAM FILE
  without endpos, ANSWER ``200 result=0``, SET VARIABLE/VERBOSE ``200 result=1``, EXEC
  ``200 result=0`` (-2 for an unknown application), HANGUP ``200 result=1``; an unknown
  command gets ``510 Invalid or unknown command`` and a wrong number of arguments the
  multi-line ``520-`` usage block;
* plays the caller: `CallerInput` groups of keys, each typed either when the script asks
  for digits or, with ``barge_in``, during the next prompt that takes escape digits; keys
  typed fast keep arriving during the following commands (type-ahead); a key that is
  not an escape digit of the playing prompt is ignored, as ``ast_waitstream_full`` does;
* hangs up when told to (`hangup_at`): the running command ends as on a hang-up
  (``result=-1``), the line ``HANGUP`` follows, then either the socket closes or the
  channel stays "dead" and commands that need a live channel get ``511``;
* records what the caller heard (`played`), the channel variables, every command line.

It answers at once: no audio time passes, so tests run at socket speed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["AsteriskFastAgiClient", "CallerInput", "parse_args", "place_call"]

ESCAPE_ALL = "0123456789*#"
SAMPLES_PER_PROMPT = 12345  # endpos of a prompt played to its end
MAX_ARGS = 128  # res_agi.c


def parse_args(line: str) -> list[str]:
    """res_agi.c parse_args: double quotes group, a backslash makes the next character
    literal, spaces and tabs separate."""
    argv: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for c in line:
        if c == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
            continue
        if c in " \t" and not quoted and not escaped:
            if current is not None:
                argv.append("".join(current))
                current = None
            continue
        if c == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            if len(argv) >= MAX_ARGS - 1:
                break
            current = []
        current.append(c)
        escaped = False
    if current is not None:
        argv.append("".join(current))
    return argv


@dataclass
class CallerInput:
    """Keys the caller types in one go ("" = stays silent when asked)."""

    keys: str
    barge_in: bool = False


@dataclass
class Played:
    """One prompt or SAY command: what, and the key that cut it short (None: heard fully)."""

    command: str
    what: str
    interrupted_by: str | None


# Commands that need a live channel (res_agi.c: dead = 0 in the commands table).
_NEEDS_LIVE_CHANNEL = {
    ("answer",), ("stream", "file"), ("get", "data"), ("wait", "for", "digit"),
    ("say", "digits"), ("say", "number"), ("say", "date"), ("exec",),
}

_USAGE = {
    ("stream", "file"): " Usage: STREAM FILE <filename> <escape digits> [sample offset]",
    ("get", "data"): " Usage: GET DATA <file to be streamed> [timeout] [max digits]",
    ("wait", "for", "digit"): " Usage: WAIT FOR DIGIT <timeout>",
    ("say", "digits"): " Usage: SAY DIGITS <number> <escape digits>",
    ("say", "number"): " Usage: SAY NUMBER <number> <escape digits> [gender]",
    ("say", "date"): " Usage: SAY DATE <date> <escape digits>",
    ("set", "variable"): " Usage: SET VARIABLE <variablename> <value>",
    ("exec",): " Usage: EXEC <application> <options>",
    ("verbose",): " Usage: VERBOSE <message> <level>",
    ("hangup",): " Usage: HANGUP [<channelname>]",
    ("answer",): " Usage: ANSWER",
}


class AsteriskFastAgiClient(Protocol):
    def __init__(
        self,
        script: str,
        *,
        callerid: str = "13800138000",
        arguments: Sequence[str] = (),
        inputs: Sequence[CallerInput | str] = (),
        hangup_at: Callable[[int, str], bool] | None = None,
        close_on_hangup: bool = True,
        uniqueid: str = "1764460800.1",
        language: str = "zh",
        applications: Sequence[str] = ("Queue", "Wait", "Playback"),
    ) -> None:
        self.script = script
        self.callerid = callerid
        self.arguments = list(arguments)
        self.inputs = [i if isinstance(i, CallerInput) else CallerInput(i) for i in inputs]
        self.hangup_at = hangup_at
        self.close_on_hangup = close_on_hangup
        self.uniqueid = uniqueid
        self.language = language
        self.applications = set(applications)
        self.commands: list[str] = []
        self.played: list[Played] = []
        self.variables: dict[str, str] = {}
        self.executed: list[tuple[str, str]] = []
        self.replies: list[str] = []
        self.typing = ""  # keys typed and not yet consumed by a command
        self.dead = False  # the caller hung up
        self.hung_up_by_script = False
        self.closed = False
        self.done: Deferred[AsteriskFastAgiClient] = Deferred()
        self._buffer = b""

    # -- Twisted ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        env = [
            ("network", "yes"),
            ("network_script", self.script),
            ("request", f"agi://127.0.0.1/{self.script}"),
            ("channel", "PJSIP/carrier-00000001"),
            ("language", self.language),
            ("type", "PJSIP"),
            ("uniqueid", self.uniqueid),
            ("version", "20.5.0"),
            ("callerid", self.callerid or "unknown"),
            ("calleridname", "unknown"),
            ("callingpres", "0"),
            ("callingani2", "0"),
            ("callington", "0"),
            ("callingtns", "0"),
            ("dnid", "12123"),
            ("rdnis", "unknown"),
            ("context", "12123-inbound"),
            ("extension", "12123"),
            ("priority", "2"),
            ("enhanced", "0.0"),
            ("accountcode", ""),
            ("threadid", "140245522609920"),
        ]
        env += [(f"arg_{n}", value) for n, value in enumerate(self.arguments, 1)]
        self.transport.write(b"".join(f"agi_{k}: {v}\n".encode() for k, v in env) + b"\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer and not self.closed:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            self._execute(raw.decode("utf-8").rstrip("\r"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        if not self.done.called:
            self.done.callback(self)

    # -- the AGI command loop ---------------------------------------------------------

    def _send(self, *lines: str) -> None:
        self.replies.extend(lines)
        self.transport.write("".join(line + "\n" for line in lines).encode())  # type: ignore[union-attr]

    def _execute(self, line: str) -> None:
        index = len(self.commands)
        self.commands.append(line)
        argv = parse_args(line)
        words = tuple(a.lower() for a in argv)
        command = next((c for c in sorted(_USAGE, key=len, reverse=True) if words[: len(c)] == c), None)
        if command is None:
            self._send("510 Invalid or unknown command")
            return
        if self.dead and command in _NEEDS_LIVE_CHANNEL:
            self._send("511 Command Not Permitted on a dead channel or intercept routine")
            return
        hang_up_now = not self.dead and self.hangup_at is not None and self.hangup_at(index, line)
        handler = getattr(self, "_" + "_".join(command))
        reply = handler(argv, hang_up_now)
        if reply is None:
            self._usage(command)
            return
        self._send(reply)
        if hang_up_now:
            self._caller_hangs_up()
        elif command == ("hangup",) and len(argv) == 1:
            self.hung_up_by_script = True
            self._caller_hangs_up()

    def _usage(self, command: tuple[str, ...]) -> None:
        self._send("520-Invalid command syntax.  Proper usage follows:", _USAGE[command], "520 End of proper usage.")

    def _caller_hangs_up(self) -> None:
        self.dead = True
        self._send("HANGUP")
        if self.close_on_hangup:
            self.closed = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    # -- the caller's keys ------------------------------------------------------------

    def _start_typing(self, *, prompt: bool) -> None:
        """The caller starts the next group: during a prompt only if it barges in."""
        if self.typing or not self.inputs:
            return
        if prompt and not self.inputs[0].barge_in:
            return
        self.typing = self.inputs.pop(0).keys

    def _key_during_prompt(self, escape: str) -> str | None:
        """The key that stops a prompt; keys that are not escape digits are dropped."""
        if not escape:
            return None
        self._start_typing(prompt=True)
        while self.typing:
            key, self.typing = self.typing[0], self.typing[1:]
            if key in escape:
                return key
        return None

    # -- handlers: return the reply line, or None for the 520 usage block ---------------

    def _answer(self, argv: list[str], hang_up: bool) -> str | None:
        return "200 result=0" if len(argv) == 1 else None

    def _play(self, argv: list[str], what: str, escape: str, hang_up: bool, endpos: bool) -> str:
        if hang_up:
            self.played.append(Played(argv[0].upper(), what, None))
            return "200 result=-1 endpos=800" if endpos else "200 result=-1"
        key = self._key_during_prompt(escape)
        self.played.append(Played(" ".join(argv[:2]).upper(), what, key))
        code = ord(key) if key else 0
        return f"200 result={code} endpos={800 if key else SAMPLES_PER_PROMPT}" if endpos else f"200 result={code}"

    def _stream_file(self, argv: list[str], hang_up: bool) -> str | None:
        if not 4 <= len(argv) <= 5 or (len(argv) == 5 and not argv[4].lstrip("-").isdigit()):
            return None
        return self._play(argv, argv[2], argv[3], hang_up, endpos=True)

    def _say_digits(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) != 4 or not argv[2][:1].isdigit():
            return None
        return self._play(argv, argv[2], argv[3], hang_up, endpos=False)

    def _say_number(self, argv: list[str], hang_up: bool) -> str | None:
        if not 4 <= len(argv) <= 5 or not argv[2].lstrip("-").isdigit():
            return None
        return self._play(argv, argv[2], argv[3], hang_up, endpos=False)

    def _say_date(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) != 4 or not argv[2].isdigit():
            return None
        return self._play(argv, argv[2], argv[3], hang_up, endpos=False)

    def _wait_for_digit(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) != 4 or not argv[3].lstrip("-").isdigit():
            return None
        if hang_up:
            return "200 result=-1"
        self._start_typing(prompt=False)
        if not self.typing:
            return "200 result=0"
        key, self.typing = self.typing[0], self.typing[1:]
        return f"200 result={ord(key)}"

    def _get_data(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) < 3:
            return None
        max_digits = int(argv[4]) if len(argv) >= 5 and argv[4].isdigit() else 1024
        if hang_up:
            return "200 result=-1"
        if argv[2]:
            self.played.append(Played("GET DATA", argv[2], None))
        self._start_typing(prompt=False)
        digits = ""
        while self.typing:
            key, self.typing = self.typing[0], self.typing[1:]
            if key == "#":
                return f"200 result={digits}"
            digits += key
            if len(digits) >= max_digits:
                return f"200 result={digits}"
        return f"200 result={digits} (timeout)"

    def _set_variable(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) != 4:
            return None
        self.variables[argv[2]] = argv[3]
        return "200 result=1"

    def _exec(self, argv: list[str], hang_up: bool) -> str | None:
        if len(argv) < 2:
            return None
        self.executed.append((argv[1], argv[2] if len(argv) > 2 else ""))
        return "200 result=0" if argv[1] in self.applications else "200 result=-2"

    def _verbose(self, argv: list[str], hang_up: bool) -> str | None:
        return "200 result=1" if len(argv) >= 2 else None

    def _hangup(self, argv: list[str], hang_up: bool) -> str | None:
        return "200 result=1" if len(argv) <= 2 else None


def place_call(reactor: object, port: int, script: str, host: str = "127.0.0.1",
               **options: object) -> Deferred[AsteriskFastAgiClient]:
    """Connect a client to our FastAGI server; fires with it once the call's socket closed."""
    client = AsteriskFastAgiClient(script, **options)  # type: ignore[arg-type]
    endpoint = TCP4ClientEndpoint(reactor, host, port)

    def closed(_: object) -> Deferred[AsteriskFastAgiClient]:
        return client.done

    return endpoint.connect(Factory.forProtocol(lambda: client)).addCallback(closed)


@dataclass
class Transcript:
    """Helper for tests: the texts the caller heard, given the menus' clip names."""

    texts: dict[str, str] = field(default_factory=dict)

    def heard(self, client: AsteriskFastAgiClient, prefix: str = "12123/") -> str:
        return "".join(self.texts.get(p.what.removeprefix(prefix), f"[{p.what}]") for p in client.played)
