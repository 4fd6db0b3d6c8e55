"""Hostile and careless peers against a real `gateway run` subprocess (issue 12 items 3, 4).

The peers are raw sockets on 127.0.0.1; the gateway's memory is its VmRSS from
/proc/<pid>/status.

* SMPP backpressure: a peer that floods enquire_link and reads nothing is paused and then
  dropped after the drain timeout (the session's response timeout, 2 s here), bound or
  not, and the gateway's memory stays within the documented bounds (docs/smpp.md).
  Before the fix the same flood grew the gateway by ~1.6 MB/s, kept for ever.
* The carrier side: a link to an SMSC that floods it and reads nothing is dropped the
  same way and binds again.
* SMPP caps: ``accounts[].max_sessions`` answers one bind too many with ESME_RBINDFAIL;
  ``max_connections`` closes a connection over the cap at once and takes new ones again
  when one closes.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.embedded import free_port
from tests.integration.daemon import REPO, Daemon, write_config

SYSTEM_ID, PASSWORD = "flood", "secret1"
MAX_SESSIONS = 2
MAX_CONNECTIONS = 8
DRAIN_TIMEOUT_SECONDS = 2.0  # smpp_server.response_timeout_seconds below
MB = 1024 * 1024
# Loopback has all of 127/8: Asterisk "is" 127.0.0.2, a stranger 127.0.0.1.
ASTERISK_HOST = "127.0.0.2"
FASTAGI_MAX_CONNECTIONS = 3
HTTP_MAX_CONNECTIONS = 4
HTTP_IDLE_TIMEOUT_SECONDS = 2.0
ESME_RBINDFAIL = 0x0D


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("peer-limits")
    config = write_config(
        tmp,
        ivr={"fastagi": {"listen": f"127.0.0.1:{free_port()}", "allow": [f"{ASTERISK_HOST}/32"],
                         "max_connections": FASTAGI_MAX_CONNECTIONS, "reply_timeout_seconds": REPLY_TIMEOUT_SECONDS},
             "menus_file": str(REPO / "config" / "ivr.yaml")},
        http={"max_connections": HTTP_MAX_CONNECTIONS, "idle_timeout_seconds": HTTP_IDLE_TIMEOUT_SECONDS},
        smpp_server={
            "response_timeout_seconds": DRAIN_TIMEOUT_SECONDS,
            "max_connections": MAX_CONNECTIONS,
            "accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD, "max_sessions": MAX_SESSIONS}],
        },
    )
    daemon = Daemon(config, tmp / "gateway.log")
    daemon.start()
    try:
        daemon.wait_until("/healthz")
        yield daemon
    finally:
        daemon.stop()


def smpp_port(daemon: Daemon) -> int:
    return int(daemon.config["smpp_server"]["listen"].rsplit(":", 1)[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def bind_transceiver(sock: socket.socket, system_id: str = SYSTEM_ID, password: str = PASSWORD) -> int:
    """Send bind_transceiver; the command_status of the bind_transceiver_resp."""
    body = system_id.encode() + b"\0" + password.encode() + b"\0" + b"\0" + bytes([0x34, 0, 0]) + b"\0"
    sock.sendall(struct.pack(">IIII", 16 + len(body), 0x09, 0, 1) + body)
    header = read_exactly(sock, 16)
    length, command_id, status, _ = struct.unpack(">IIII", header)
    read_exactly(sock, length - 16)
    assert command_id == 0x80000009
    return int(status)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the gateway")
        data += chunk
    return data


def connect(daemon: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", smpp_port(daemon)), timeout=10)
    # A small receive buffer: the gateway's answers back up after a few KiB, as for a
    # peer whose reader is stuck.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def flood_until_closed(daemon: Daemon, socks: list[socket.socket], timeout_seconds: float) -> int:
    """Write enquire_link on every socket, read nothing, until the gateway has closed them
    all or the time is up; returns the peak RSS of the gateway meanwhile."""
    assert daemon.process is not None
    batch = b"".join(struct.pack(">IIII", 16, 0x15, 0, i + 2) for i in range(4096))
    for sock in socks:
        sock.setblocking(False)
    open_socks = set(socks)
    peak = rss_bytes(daemon.process.pid)
    deadline = time.monotonic() + timeout_seconds
    while open_socks and time.monotonic() < deadline:
        for sock in list(open_socks):
            try:
                while sock.send(batch) == len(batch):
                    pass
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                open_socks.discard(sock)
        peak = max(peak, rss_bytes(daemon.process.pid))
        time.sleep(0.01)
    assert not open_socks, f"{len(open_socks)} flooding connections still open after {timeout_seconds} s"
    return peak


def test_bound_peer_that_never_reads_is_dropped_with_memory_bounded(gateway: Daemon) -> None:
    """A bound partner flooding enquire_link without reading is dropped after the drain
    timeout; the gateway grows by less than 20 MB and gives it back."""
    assert gateway.process is not None
    baseline = rss_bytes(gateway.process.pid)
    sock = connect(gateway)
    assert bind_transceiver(sock) == 0
    peak = flood_until_closed(gateway, [sock], timeout_seconds=60)
    sock.close()
    assert peak - baseline < 20 * MB
    assert "took none of our output" in gateway.log_text()


def test_unbound_peers_that_never_read_are_dropped_with_memory_bounded(gateway: Daemon) -> None:
    """Connections that flood enquire_link before any bind are dropped too, each costing
    the gateway less than 5 MB while it lasts."""
    assert gateway.process is not None
    connections = 5
    baseline = rss_bytes(gateway.process.pid)
    socks = [connect(gateway) for _ in range(connections)]
    peak = flood_until_closed(gateway, socks, timeout_seconds=60)
    for sock in socks:
        sock.close()
    assert peak - baseline < 5 * MB * connections


def test_one_bind_over_max_sessions_is_refused_with_rbindfail(gateway: Daemon) -> None:
    """An account with max_sessions bound gets ESME_RBINDFAIL for one more bind, and binds
    again once one of its sessions has gone."""
    socks = [connect(gateway) for _ in range(MAX_SESSIONS + 1)]
    try:
        statuses = [bind_transceiver(sock) for sock in socks]
        assert statuses == [0] * MAX_SESSIONS + [ESME_RBINDFAIL]
        socks[0].close()
        deadline = time.monotonic() + 15
        while True:
            status = bind_transceiver(socks[-1])
            if status == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 0
    finally:
        for sock in socks:
            sock.close()


def test_connection_over_the_listener_cap_is_closed_and_the_listener_recovers(gateway: Daemon) -> None:
    """With max_connections open, one more connection is closed unread; after one closes,
    a new connection binds."""
    socks = [connect(gateway) for _ in range(MAX_CONNECTIONS)]
    try:
        # Every one of them is served (a bind is answered, refused or not).
        for sock in socks[:1]:
            assert bind_transceiver(sock) == 0
        extra = connect(gateway)
        extra.settimeout(10)
        assert extra.recv(16) == b""  # closed by the gateway, nothing sent
        extra.close()
        socks.pop().close()
        deadline = time.monotonic() + 15
        while True:
            late = connect(gateway)
            try:
                if bind_transceiver(late) == 0:
                    late.close()
                    break
            except ConnectionError:
                pass
            late.close()
            assert time.monotonic() < deadline, "the listener did not take a connection again"
            time.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()


# -- FastAGI and HTTP limits, file descriptors (item 4) ---------------------------------------

REPLY_TIMEOUT_SECONDS = 5.0
AGI_ENVIRONMENT = (b"agi_network: yes\nagi_network_script: 12123\nagi_request: agi://127.0.0.1/12123\n"
                   b"agi_channel: PJSIP/trunk-00000001\nagi_uniqueid: 1764460800.%d\n"
                   b"agi_callerid: 13800138000\n\n")


class LimitedDaemon(Daemon):
    """`gateway run` with RLIMIT_NOFILE lowered (systemd's LimitNOFILE, made small)."""

    fd_limit = 0

    def start(self) -> None:
        import os
        import resource
        import subprocess
        import sys

        limit = self.fd_limit

        def lower_fd_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=str(self.config_path.parent), preexec_fn=lower_fd_limit,
            )


def fastagi_port(daemon: Daemon) -> int:
    return int(daemon.config["ivr"]["fastagi"]["listen"].rsplit(":", 1)[1])


def agi_call(daemon: Daemon, n: int, source: str = "127.0.0.1") -> socket.socket:
    """A FastAGI connection from ``source`` that sent its environment (and will answer nothing)."""
    sock = socket.create_connection(("127.0.0.1", fastagi_port(daemon)), timeout=10, source_address=(source, 0))
    sock.sendall(AGI_ENVIRONMENT % n)
    return sock


def first_line(sock: socket.socket) -> bytes:
    """The first line the server sent, or b"" when it closed (or reset) the connection."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.fixture
def fd_limited_gateway(tmp_path: Path) -> Iterator[LimitedDaemon]:
    config = write_config(
        tmp_path,
        ivr={"fastagi": {"listen": f"127.0.0.1:{free_port()}", "max_connections": 1000,
                         "reply_timeout_seconds": REPLY_TIMEOUT_SECONDS}},
        smpp_server={"accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD}]},
    )
    daemon = LimitedDaemon(config, tmp_path / "gateway.log")
    daemon.fd_limit = 96
    daemon.start()
    try:
        daemon.wait_until("/healthz")
        yield daemon
    finally:
        daemon.stop()


def test_exhausted_file_descriptors_keep_serving_and_recover(fd_limited_gateway: LimitedDaemon) -> None:
    """Under a lowered fd limit, FastAGI peers that send an environment and never answer
    take every descriptor: what is open keeps working, and when the reply timeout has
    dropped them (the peers never close), /readyz and the SMPP listener take new
    connections again.  Before the reply timeout they held their descriptors for ever."""
    import http.client

    daemon = fd_limited_gateway
    assert daemon.process is not None
    http_host, http_port_text = daemon.config["http"]["listen"].rsplit(":", 1)
    kept = http.client.HTTPConnection(http_host, int(http_port_text), timeout=10)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read()
    calls = [agi_call(daemon, n) for n in range(daemon.fd_limit + 20)]
    try:
        answered = [first_line(sock) for sock in calls]
        assert answered.count(b"ANSWER\n") > daemon.fd_limit // 2
        assert any(line != b"ANSWER\n" for line in answered), "the descriptors were never exhausted"
        # What is open keeps working.
        kept.request("GET", "/healthz")
        response = kept.getresponse()
        assert response.status == 200
        response.read()
        # The silent calls are ended by the reply timeout; the gateway is reachable again.
        deadline = time.monotonic() + REPLY_TIMEOUT_SECONDS + 30
        while True:
            try:
                code, _ = daemon.get("/readyz")
                if code in (200, 503):  # answered (not ready: there is no carrier)
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "/readyz did not answer again"
            time.sleep(0.2)
        sock = socket.create_connection(("127.0.0.1", smpp_port(daemon)), timeout=10)
        try:
            assert bind_transceiver(sock) == 0
        finally:
            sock.close()
        assert "no reply to ANSWER" in daemon.log_text()
    finally:
        for sock in calls:
            sock.close()
    assert daemon.process.poll() is None


def test_fastagi_from_outside_the_allowlist_is_closed_unread(gateway: Daemon) -> None:
    """A FastAGI connection from an address outside ivr.fastagi.allow is closed without
    a command; one from the allowed address is served."""
    stranger = agi_call(gateway, 1, source="127.0.0.1")
    asterisk = agi_call(gateway, 2, source=ASTERISK_HOST)
    try:
        assert first_line(stranger) == b""
        assert first_line(asterisk) == b"ANSWER\n"
    finally:
        stranger.close()
        asterisk.close()
    assert "is not in ivr.fastagi.allow" in gateway.log_text()


def test_fastagi_call_over_the_cap_is_closed_and_the_server_recovers(gateway: Daemon) -> None:
    """With max_connections calls open, one more gets the apology and is closed; after one
    ends, a new call is served again."""
    calls = [agi_call(gateway, n, source=ASTERISK_HOST) for n in range(FASTAGI_MAX_CONNECTIONS)]
    try:
        assert [first_line(sock) for sock in calls] == [b"ANSWER\n"] * FASTAGI_MAX_CONNECTIONS
        extra = agi_call(gateway, 99, source=ASTERISK_HOST)
        # Refused with the apology for the caller, then closed (a bare close would end
        # Asterisk's AGI() as SUCCESS and the caller would be hung up without a word).
        assert first_line(extra) == b"EXEC Playback 12123/system_error\n"
        assert first_line(extra) == b""
        extra.close()
        calls.pop().close()
        deadline = time.monotonic() + 15
        while True:
            late = agi_call(gateway, 100, source=ASTERISK_HOST)
            line = first_line(late)
            late.close()
            if line == b"ANSWER\n":
                break
            assert time.monotonic() < deadline, "no call was served again"
            time.sleep(0.2)
    finally:
        for sock in calls:
            sock.close()


def test_silent_fastagi_peer_is_dropped_after_the_reply_timeout(gateway: Daemon) -> None:
    """A peer that sends its environment and never answers ANSWER is dropped after
    reply_timeout_seconds (before: held for ever)."""
    sock = agi_call(gateway, 7, source=ASTERISK_HOST)
    try:
        assert first_line(sock) == b"ANSWER\n"
        sock.settimeout(REPLY_TIMEOUT_SECONDS + 20)
        started = time.monotonic()
        assert first_line(sock) == b""  # closed (aborted) by the gateway
        assert time.monotonic() - started >= REPLY_TIMEOUT_SECONDS - 1
    finally:
        sock.close()


def http_connect(daemon: Daemon) -> socket.socket:
    host, port = daemon.config["http"]["listen"].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_http_over_the_cap_gets_503_and_idle_connections_are_closed(gateway: Daemon) -> None:
    """With max_connections idle HTTP connections open, one more gets 503 with Retry-After;
    the idle ones are closed after idle_timeout_seconds and /healthz answers again."""
    idle = [http_connect(gateway) for _ in range(HTTP_MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all (each counts when accepted)
        extra = http_connect(gateway)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while chunk := extra.recv(4096):
            response += chunk
        extra.close()
        assert response.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in response.lower()
        for sock in idle:
            sock.settimeout(HTTP_IDLE_TIMEOUT_SECONDS + 20)
            assert sock.recv(16) == b""  # closed by the server's idle timeout
    finally:
        for sock in idle:
            sock.close()
    code, body = gateway.get("/healthz")
    assert code == 200


# -- the carrier side: an SMSC that floods the link and never reads -------------------------


def test_carrier_link_to_an_smsc_that_never_reads_is_dropped_and_rebinds(tmp_path: Path) -> None:
    """A carrier SMSC that accepts the bind, then floods enquire_link and reads nothing: the
    link pauses, aborts after the drain timeout (response_timeout_seconds) and binds again;
    the gateway's memory stays within 20 MB."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(30)
    port = server.getsockname()[1]
    config = write_config(tmp_path, carriers=[{
        "name": "flooder", "host": "127.0.0.1", "port": port, "system_id": "gw", "password": "pw",
        "prefixes": ["138"], "response_timeout_seconds": DRAIN_TIMEOUT_SECONDS,
        "reconnect_initial_seconds": 0.5, "reconnect_max_seconds": 1,
    }])
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        daemon.wait_until("/healthz")
        assert daemon.process is not None
        baseline = rss_bytes(daemon.process.pid)
        smsc, _ = server.accept()
        smsc.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        header = read_exactly(smsc, 16)
        length, command_id, _, sequence = struct.unpack(">IIII", header)
        read_exactly(smsc, length - 16)
        assert command_id == 0x09  # bind_transceiver
        body = b"SMSC\0"
        smsc.sendall(struct.pack(">IIII", 16 + len(body), 0x80000009, 0, sequence) + body)
        peak = flood_until_closed(daemon, [smsc], timeout_seconds=60)
        smsc.close()
        assert peak - baseline < 20 * MB
        assert "took none of our output" in daemon.log_text()
        again, _ = server.accept()  # the link binds again
        again.close()
    finally:
        daemon.stop()
        server.close()
