"""Hostile and careless peers against a real `gateway run` subprocess (issue 12 items 3, 4).

The peers are raw sockets on 127.0.0.1; the gateway's memory is its VmRSS from
/proc/<pid>/status.

* SMPP backpressure: a peer that floods enquire_link and reads nothing is paused and then
  dropped after the drain timeout (the session's response timeout, 2 s here), bound or
  not, and the gateway's memory stays within the documented bounds (docs/smpp.md).
  Before the fix the same flood grew the gateway by ~1.6 MB/s, kept for ever.
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

from tests.integration.daemon import Daemon, write_config

SYSTEM_ID, PASSWORD = "flood", "secret1"
MAX_SESSIONS = 2
MAX_CONNECTIONS = 8
DRAIN_TIMEOUT_SECONDS = 2.0  # smpp_server.response_timeout_seconds below
MB = 1024 * 1024
ESME_RBINDFAIL = 0x0D


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("peer-limits")
    config = write_config(
        tmp,
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
