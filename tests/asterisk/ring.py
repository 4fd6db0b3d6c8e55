"""A real Asterisk 22 for the tests: unpacked, configured from dialplans/, started, driven.

The prebuilt Asterisk (README in the shared tool folder) is unpacked into a temporary
folder and started from a writable test root whose ``asterisk.conf`` points every
directory there and the module directory at the unpacked copy.  Its configuration is the
project's ``dialplans/`` with only what dialplans/README.md tells an operator to change:

* extensions.conf: the FastAGI address in ``AGI(agi://127.0.0.1:4573/...)``;
* manager.conf: the port (a free one) and the secret;
* pjsip.conf: the transport's bind address and port, and the carrier's address (the
  SIPp trunk on 127.0.0.1) in the aor contact, the identify match and from_domain.

The tests add beside it, and say so: a driver AMI user ``ring-driver`` (the gateway's user
has the least rights; the driver also reads ``agi`` and ``dialplan`` events and may send
PlayDTMF), and a context ``[ring-callees]`` of scripted citizens for reminders over Local
channels.  Nothing else of the project's files is touched.

`AmiDriver` is a small blocking AMI client of the tests' own (a reader thread collects
every event), independent of the gateway's client.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.store.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
ASTERISK_VERSION = "22.10.1"
TARBALL_NAME = f"asterisk-{ASTERISK_VERSION}-pjsip-bookworm-amd64.tar.xz"
DRIVER_USER = "ring-driver"
DRIVER_SECRET = "ring-driver-secret"


def find_tarball() -> Path | None:
    """The prebuilt Asterisk: $GATEWAY_ASTERISK_TARBALL, else shared/tools/asterisk beside
    a parent folder of the repository (../shared from main, ../../shared from a worktree)."""
    explicit = os.environ.get("GATEWAY_ASTERISK_TARBALL")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    for parent in REPO.parents:
        candidate = parent / "shared" / "tools" / "asterisk" / TARBALL_NAME
        if candidate.is_file():
            return candidate
    return None


def unpack(tarball: Path, into: Path) -> Path:
    """Unpack the tarball (about 0.7 s, 19 MB) and return the asterisk-22.10.1-pjsip folder."""
    with tarfile.open(tarball) as archive:
        archive.extractall(into, filter="tar")
    [top] = [p for p in into.iterdir() if p.is_dir() and p.name.startswith("asterisk-")]
    return top


def missing_libraries(install: Path) -> list[str]:
    """Shared libraries the binary cannot find (Debian runtime packages not installed)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(install / "lib"))
    out = subprocess.run(["ldd", str(install / "sbin" / "asterisk")], capture_output=True, text=True,
                         env=env, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def write_silent_wav(path: Path, seconds: float = 0.05) -> None:
    """An 8 kHz mono 16-bit WAV of silence: a placeholder prompt when espeak-ng/sox are absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))


def placeholder_prompts(sounds_dir: Path, menus_file: Path) -> int:
    """A silent WAV for every clip the menus can play (what `gateway prompts build` makes
    with espeak-ng and sox); returns how many."""
    from gateway.ivr.menus import load_menus

    book = load_menus(menus_file)
    count = 0
    for clip in book.all_clips():
        write_silent_wav(sounds_dir / book.sound_prefix / f"{clip.name}.wav")
        count += 1
    return count


def zone_with_local_hour(target_hours: Iterable[int], now: float) -> str:
    """An Etc/GMT zone whose local hour now is one of `target_hours` (offset within ±12 h)."""
    utc_hour = time.gmtime(now).tm_hour
    best = min(((t - utc_hour) % 24 for t in target_hours), key=lambda h: abs(h - 24 if h > 12 else h))
    offset = best - 24 if best > 12 else best
    # Etc/GMT-9 is nine hours *ahead* of UTC (POSIX signs); Etc/GMT-0 is written Etc/GMT.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def can_give_asterisk_a_host_zone() -> bool:
    """Asterisk reads the host's time zone from /etc/localtime only (not $TZ); as root a
    private mount namespace can show it another file there."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /etc/hostname /etc/hostname"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@dataclass
class AsteriskRing:
    """One Asterisk process on free ports with the project's dialplans."""

    install: Path
    root: Path
    sounds_dir: Path
    fastagi_port: int
    ami_secret: str
    sip_trunk_port: int = field(default_factory=free_port)  # where the SIPp "carrier" listens
    ami_port: int = field(default_factory=free_port)
    sip_port: int = field(default_factory=free_port)
    host_zone: str | None = None  # what /etc/localtime shows Asterisk (see can_give_asterisk_a_host_zone)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.time() when Asterisk was started

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "asterisk.conf"

    def _env(self) -> dict[str, str]:
        return dict(os.environ, LD_LIBRARY_PATH=str(self.install / "lib"))

    def configure(self) -> None:
        etc = self.root / "etc"
        dirs = {name: self.root / name for name in ("lib", "db", "keys", "spool", "run", "log", "agi", "data")}
        for path in (etc, *dirs.values()):
            path.mkdir(parents=True, exist_ok=True)
        documentation = dirs["data"] / "documentation"
        if not documentation.exists():
            # Without it Asterisk 22 exits with "Stasis initialization failed".
            documentation.symlink_to(self.install / "var" / "lib" / "asterisk" / "documentation")
        sounds = dirs["data"] / "sounds"
        sounds.mkdir(exist_ok=True)
        link = sounds / "12123"
        if not link.exists():
            link.symlink_to(self.sounds_dir / "12123")  # dialplans/README.md step 2
        (etc / "asterisk.conf").write_text(
            "[directories]\n"
            f"astetcdir => {etc}\n"
            f"astmoddir => {self.install / 'lib' / 'asterisk' / 'modules'}\n"
            f"astvarlibdir => {dirs['lib']}\nastdbdir => {dirs['db']}\nastkeydir => {dirs['keys']}\n"
            f"astdatadir => {dirs['data']}\nastagidir => {dirs['agi']}\nastspooldir => {dirs['spool']}\n"
            f"astrundir => {dirs['run']}\nastlogdir => {dirs['log']}\n"
            f"astsbindir => {self.install / 'sbin'}\n"
            "[options]\nnofork = yes\n", encoding="utf-8")
        # All 300 modules boot in under 2 s; the PostgreSQL ones would want libpq5.
        (etc / "modules.conf").write_text(
            "[modules]\nautoload = yes\nnoload => cdr_pgsql.so\nnoload => cel_pgsql.so\n"
            "noload => res_config_pgsql.so\n", encoding="utf-8")
        (etc / "logger.conf").write_text("[general]\n[logfiles]\nmessages.log => notice,warning,error,verbose\n",
                                         encoding="utf-8")
        dialplans = REPO / "dialplans"
        extensions = (dialplans / "extensions.conf").read_text(encoding="utf-8")
        extensions = extensions.replace("agi://127.0.0.1:4573/", f"agi://127.0.0.1:{self.fastagi_port}/")
        (etc / "extensions.conf").write_text(extensions + RING_CALLEES, encoding="utf-8")
        manager = (dialplans / "manager.conf").read_text(encoding="utf-8")
        manager = re.sub(r"(?m)^port = 5038$", f"port = {self.ami_port}", manager)
        manager = re.sub(r"(?m)^secret = .*$", f"secret = {self.ami_secret}", manager)
        (etc / "manager.conf").write_text(manager + DRIVER_MANAGER_USER, encoding="utf-8")
        pjsip = (dialplans / "pjsip.conf").read_text(encoding="utf-8")
        pjsip = pjsip.replace("bind = 0.0.0.0:5060", f"bind = 127.0.0.1:{self.sip_port}")
        pjsip = pjsip.replace("sip:198.51.100.20:5060", f"sip:127.0.0.1:{self.sip_trunk_port}")
        pjsip = pjsip.replace("198.51.100.20", "127.0.0.1")
        (etc / "pjsip.conf").write_text(pjsip, encoding="utf-8")
        shutil.copy(dialplans / "queues.conf", etc / "queues.conf")

    def start(self, timeout_seconds: float = 30.0) -> None:
        self.configure()
        log = (self.root / "log" / "console.txt").open("ab")
        command = [str(self.install / "sbin" / "asterisk"), "-C", str(self.conf), "-f", "-n"]
        if self.host_zone is not None:
            zone_file = Path("/usr/share/zoneinfo") / self.host_zone
            # unshare and sh exec: the process is Asterisk itself.
            command = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/localtime && exec "$@"',
                       str(zone_file), *command]
        self.started_at = time.time()
        self.process = subprocess.Popen(
            command,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env())
        log.close()
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"asterisk exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            done = subprocess.run([str(self.install / "sbin" / "asterisk"), "-C", str(self.conf), "-rx",
                                   "core waitfullybooted"], capture_output=True, env=self._env(), check=False)
            if done.returncode == 0 and b"fully booted" in done.stdout:
                return
            time.sleep(0.2)
        raise RuntimeError(f"asterisk did not boot in {timeout_seconds} s:\n{self.log_text()[-3000:]}")

    def cli(self, command: str) -> str:
        done = subprocess.run([str(self.install / "sbin" / "asterisk"), "-C", str(self.conf), "-rx", command],
                              capture_output=True, text=True, env=self._env(), timeout=30, check=False)
        return done.stdout

    def wait_trunk_reachable(self, timeout_seconds: float = 20.0) -> None:
        """Qualify the carrier trunk now and wait until its contact answers: pjsip.conf
        qualifies it every 30 s, and while it is marked unreachable (no SIPp listened at
        the last OPTIONS) Asterisk will not call out on it ("Could not create dialog")."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.cli("pjsip qualify carrier-trunk")
            time.sleep(0.3)
            contacts = self.cli("pjsip show contacts")
            if re.search(r"carrier-trunk/sip:\S+\s+\S+\s+Avail", contacts):
                return
        raise AssertionError(f"the carrier trunk did not become reachable:\n{self.cli('pjsip show contacts')}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.cli("core stop now")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        parts = []
        for name in ("console.txt", "messages.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)


# A test-only AMI user for the driver: the gateway's own user (manager.conf) stays as shipped.
DRIVER_MANAGER_USER = f"""

; --- added by tests/asterisk/ring.py: the test driver (not part of a deployment) ---
[{DRIVER_USER}]
secret = {DRIVER_SECRET}
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
read = call,agi,dialplan,user,system
write = originate,call,reporting,system
"""

# Scripted citizens for reminders over Local channels (ami.trunk = Local/{number}@ring-callees):
# the number says what the callee does.
CALLEES = {
    "listener": "13800000001",  # answers and listens
    "cause17": "13800000017",  # Hangup(17): user busy, before answering
    "cause19": "13800000019",  # Hangup(19): no answer
    "cause21": "13800000021",  # Hangup(21): call rejected
    "cause34": "13800000034",  # Hangup(34): no circuit (congestion)
    "busy": "13800000005",  # Busy(): the busy signal, then cause 17
    "hangup-on-answer": "13800000002",  # answers, hangs up 0.3 s later
}
RING_CALLEES = f"""

; --- added by tests/asterisk/ring.py: scripted callees (not part of a deployment) ---
[ring-callees]
exten => {CALLEES["listener"]},1,Answer()
 same => n,Wait(60)
exten => {CALLEES["hangup-on-answer"]},1,Answer()
 same => n,Wait(0.3)
 same => n,Hangup()
exten => {CALLEES["cause17"]},1,Hangup(17)
exten => {CALLEES["cause19"]},1,Hangup(19)
exten => {CALLEES["cause21"]},1,Hangup(21)
exten => {CALLEES["cause34"]},1,Hangup(34)
exten => {CALLEES["busy"]},1,Busy()
"""


@dataclass
class AmiEvent:
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when the driver read it

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def name(self) -> str:
        return self.get("event")


class AmiDriver:
    """A blocking AMI client: actions answered in order, every event kept in `events`."""

    def __init__(self, port: int, username: str = DRIVER_USER, secret: str = DRIVER_SECRET) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._file = self._sock.makefile("rb")
        self._file.readline()  # banner
        self._sock.settimeout(None)
        self.events: list[AmiEvent] = []
        self._responses: dict[str, AmiEvent] = {}
        self._cond = threading.Condition()
        self._counter = 0
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="ami-driver", daemon=True)
        self._reader.start()
        reply = self.action("Login", Username=username, Secret=secret, Events="on")
        if reply.get("response").lower() != "success":
            raise RuntimeError(f"driver login refused: {reply.headers}")

    def _read(self) -> None:
        headers: dict[str, str] = {}
        try:
            for raw in self._file:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip().lower(), value.strip())
                    continue
                if not headers:
                    continue
                message = AmiEvent(headers)
                headers = {}
                with self._cond:
                    if "event" not in message.headers and message.get("actionid"):
                        self._responses[message.get("actionid")] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, name: str, **headers: str) -> str:
        with self._cond:
            self._counter += 1
            action_id = f"drv-{self._counter}"
        lines = [f"Action: {name}", f"ActionID: {action_id}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        return action_id

    def action(self, name: str, timeout_seconds: float = 15.0, **headers: str) -> AmiEvent:
        action_id = self.send(name, **headers)
        with self._cond:
            if not self._cond.wait_for(lambda: action_id in self._responses or self._closed, timeout_seconds):
                raise TimeoutError(f"no response to {name}")
            if action_id not in self._responses:
                raise ConnectionError("AMI driver session closed")
            return self._responses.pop(action_id)

    def wait_event(self, predicate: Callable[[AmiEvent], bool], timeout_seconds: float = 20.0,
                   start: int = 0) -> tuple[int, AmiEvent]:
        """The first event from index `start` on that satisfies `predicate`: (index, event)."""
        deadline = time.monotonic() + timeout_seconds
        with self._cond:
            index = start
            while True:
                while index < len(self.events):
                    if predicate(self.events[index]):
                        return index, self.events[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise TimeoutError("no matching AMI event")
                self._cond.wait(remaining)

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def close(self) -> None:
        try:
            self.send("Logoff")
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._reader.join(5)


@dataclass
class CallResult:
    """What the driver saw of one call into a context."""

    uniqueid: str
    events: list[AmiEvent]

    def agi_commands(self) -> list[str]:
        return [e.get("command") for e in self.events if e.name == "AGIExecStart"]

    def applications(self) -> list[str]:
        return [e.get("application") for e in self.events if e.name == "Newexten"]


_call_counter = 0


def place_call(driver: AmiDriver, exten: str, context: str, *, callerid: str = "", inputs: Iterable[str] = (),
               hangup_after_inputs: bool = False, timeout_seconds: float = 60.0) -> CallResult:
    """Call `exten@context` through a Local channel and type `inputs`, each after the AGI asks
    for input (AGIExecStart of GET DATA or WAIT FOR DIGIT on the ;2 leg); keys go in with
    PlayDTMF on the ;1 leg.  Returns when the ;2 leg has hung up (or, with
    `hangup_after_inputs`, hangs the call up once the last input has been asked for)."""
    global _call_counter
    _call_counter += 1
    tag = f"ring{os.getpid()}x{_call_counter}"
    first, second = f"{tag}-1", f"{tag}-2"
    start = driver.mark()
    headers = {"Channel": f"Local/{exten}@{context}", "Application": "Wait", "Data": "120",
               "ChannelId": first, "OtherChannelId": second, "Async": "true", "Timeout": "10000"}
    if callerid:
        headers["CallerID"] = f"<{callerid}>"
    reply = driver.action("Originate", **headers)
    assert reply.get("response") == "Success", reply.headers
    _, created = driver.wait_event(lambda e: e.name == "Newchannel" and e.get("uniqueid") == first, start=start)
    leg_one = created.get("channel")
    pending = list(inputs)
    index = start
    deadline = time.monotonic() + timeout_seconds
    while True:
        remaining = deadline - time.monotonic()
        index, event = driver.wait_event(
            lambda e: e.get("uniqueid") == second and (
                e.name == "Hangup" or (e.name == "AGIExecStart" and
                                       e.get("command").split(" ")[:2] in (["GET", "DATA"], ["WAIT", "FOR"]))),
            timeout_seconds=max(remaining, 0.1), start=index)
        index += 1
        if event.name == "Hangup":
            break
        if not pending:
            if hangup_after_inputs:
                driver.action("Hangup", Channel=leg_one)
            continue
        keys = pending.pop(0)
        for key in keys:
            driver.action("PlayDTMF", Channel=leg_one, Digit=key, Duration="120")
        if not pending and hangup_after_inputs:
            # Hang up mid-menu: after the last keys, once the AGI asks again.
            continue
    # The ;1 leg's Hangup follows; give the events a moment to arrive in order.
    driver.wait_event(lambda e: e.name == "Hangup" and e.get("uniqueid") == first, timeout_seconds=10, start=start)
    with driver._cond:
        events = [e for e in driver.events[start:] if e.get("uniqueid") in (first, second)]
    return CallResult(second, events)


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive UDP ports free on 127.0.0.1 (SIPp's media port N
    takes N..N+3: audio, RTCP, video, video RTCP)."""
    for _ in range(200):
        first = free_port()
        if first + count > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(one)
                one.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for one in sockets:
                one.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports")


@dataclass
class Sipp:
    """One SIPp process (Debian's sip-tester) running a scenario file from tests/asterisk/sipp/."""

    scenario: str
    local_port: int
    remote: str | None = None
    extra: list[str] = field(default_factory=list)
    # A client places one call and exits.  A trunk (server) runs until stopped: Asterisk
    # qualifies the carrier's contact with OPTIONS every 30 s (pjsip.conf), which SIPp
    # answers (-aa) but counts as a call, so "-m 1" could end it before the INVITE.
    calls: int | None = 1
    workdir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["sipp", "-sf", str(REPO / "tests" / "asterisk" / "sipp" / self.scenario), "-i", "127.0.0.1",
                "-p", str(self.local_port or free_port()), "-aa", "-nostdin", "-trace_err",
                "-mp", str(free_udp_ports(4)), "-timeout", "60s", "-timeout_error"]
        if self.calls is not None:
            args += ["-m", str(self.calls)]
        if self.remote:
            args.append(self.remote)
        args += self.extra
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, cwd=str(self.workdir) if self.workdir else None)

    def wait(self, timeout_seconds: float = 60.0) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout_seconds)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def errors(self) -> str:
        """SIPp's error log and stderr (for assertion messages)."""
        text = ""
        if self.workdir is not None:
            for path in sorted(self.workdir.glob("*errors.log")):
                text += path.read_text(errors="replace")[-3000:]
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read().decode(errors="replace")[-2000:]
        return text
