"""gateway.connections: the allowlist, the refusal log and TCP keepalive on a real socket."""

from __future__ import annotations

import socket

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher

from gateway import metrics
from gateway.connections import (
    KEEPALIVE_IDLE_SECONDS,
    KEEPALIVE_INTERVAL_SECONDS,
    KEEPALIVE_PROBES,
    ClosedAtOnce,
    Networks,
    RefusalLog,
    enable_keepalive,
)


class _SocketTransport:
    """What enable_keepalive needs of a TCP transport, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def setTcpKeepAlive(self, enabled: bool) -> None:  # noqa: N802 - Twisted's name
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(enabled))

    def getHandle(self) -> socket.socket:  # noqa: N802 - Twisted's name
        return self.sock


def test_keepalive_is_on_with_our_probe_timing() -> None:
    """A connection gets SO_KEEPALIVE with the first probe after 60 s, 3 probes 10 s apart."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        enable_keepalive(_SocketTransport(sock))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_SECONDS
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_INTERVAL_SECONDS
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES


def test_networks_allow_their_addresses_and_ipv4_mapped_ones() -> None:
    """An address in a listed network is allowed (IPv4-mapped IPv6 too), others and junk not."""
    networks = Networks(["127.0.0.0/8", "::1/128"])
    assert networks.allows("127.0.0.2") and networks.allows("::1") and networks.allows("::ffff:127.0.0.1")
    assert not networks.allows("10.0.0.1") and not networks.allows("not an address")


def test_refusals_are_counted_each_and_logged_once_per_interval() -> None:
    """Every refusal counts in the metric; the warning comes at most once per interval."""
    clock = Clock()
    refusals = RefusalLog("test-server", clock, interval_seconds=10)
    warnings: list[LogEvent] = []
    globalLogPublisher.addObserver(warnings.append)
    try:
        before = metrics.connections_refused.labels("test-server", "max_connections")._value.get()
        for _ in range(5):
            refusals.refused("max_connections", "3 open")
        clock.advance(10)
        refusals.refused("max_connections", "3 open")
    finally:
        globalLogPublisher.removeObserver(warnings.append)
    assert metrics.connections_refused.labels("test-server", "max_connections")._value.get() - before == 6
    assert len([e for e in warnings if e.get("server") == "test-server"]) == 2


def test_closed_at_once_writes_its_farewell_and_closes() -> None:
    """A refused connection gets the farewell bytes and is closed."""
    transport = StringTransport()
    ClosedAtOnce(b"busy").makeConnection(transport)
    assert transport.value() == b"busy" and transport.disconnecting
