"""Limits on who may connect and how many at once, shared by the listening servers
(SMPP listener, FastAGI, HTTP).

A server over its connection cap, or asked by an address outside its allowlist, still
accepts the TCP connection (the kernel already did) and closes it at once with
`ClosedAtOnce`, optionally after a short farewell (HTTP's 503).  Closing in
``buildProtocol`` by returning None would be Twisted's other way, but a TLS wrapping
factory wraps the None and fails.  `RefusalLog` counts refusals in
``gateway12123_connections_refused_total{server,reason}`` and warns at most once per
``interval_seconds`` with the count: a flood of connections must not become a flood of
log lines.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from gateway import metrics

__all__ = ["ClosedAtOnce", "Networks", "RefusalLog", "enable_keepalive", "enable_nodelay"]

log = Logger()

# TCP keepalive for connections whose peer may vanish without a FIN (a host that lost
# power, a NAT that forgot us): the first probe after this much silence, then one per
# interval, and the connection is dead after this many unanswered probes: ~90 s in all,
# against Linux's default of 2 h 11 min (tcp_keepalive_time 7200 s + 9 x 75 s).
KEEPALIVE_IDLE_SECONDS = 60
KEEPALIVE_INTERVAL_SECONDS = 10
KEEPALIVE_PROBES = 3


class ClosedAtOnce(Protocol):
    """A refused connection: ``farewell`` (if any) is written, then it is closed; nothing
    is read."""

    def __init__(self, farewell: bytes = b"") -> None:
        self._farewell = farewell

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._farewell:
            self.transport.write(self._farewell)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Ignored: the connection is closing."""


class RefusalLog:
    """Counts refused connections of one server; warns at most once per interval."""

    def __init__(self, server: str, clock: IReactorTime, *, interval_seconds: float = 10.0) -> None:
        self.server = server
        self._clock = clock
        self._interval_seconds = interval_seconds
        self._last_warning = float("-inf")
        self._since_warning: dict[str, int] = {}

    def refused(self, reason: str, detail: str) -> None:
        """One connection refused for ``reason`` (a metric label: ``max_connections``,
        ``not_allowed``); ``detail`` goes into the warning (a limit, an address)."""
        metrics.connections_refused.labels(self.server, reason).inc()
        self._since_warning[reason] = self._since_warning.get(reason, 0) + 1
        now = self._clock.seconds()
        if now - self._last_warning >= self._interval_seconds:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(self._since_warning.items()))
            log.warn("{server}: refused connections ({counts}); latest: {detail}",
                     server=self.server, counts=counts, detail=detail)
            self._last_warning = now
            self._since_warning = {}


class Networks:
    """A set of networks (CIDR strings) and the question whether an address is in one.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) count as their IPv4 address.
    Raises ValueError for a string that is not a network.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def enable_nodelay(transport: Any) -> None:
    """Send each write at once (TCP_NODELAY) on a request/response protocol such as SMPP.

    With Nagle's algorithm a PDU written while an earlier one is unacknowledged waits for
    the peer's ACK, which a busy peer delays by up to 40 ms (Linux's delayed ACK): submits
    then reach the carrier in bunches, and its per-second meter reads one second short and
    the next one over the rate.  Twisted already joins the writes of one reactor turn into
    one send, so this adds few packets.  TLS transports pass the call to their TCP one."""
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is None:  # not TCP (a test transport)
        return
    set_nodelay(True)


def enable_keepalive(transport: Any) -> None:
    """Switch TCP keepalive on for ``transport`` with the probe timing above (Linux names
    the per-socket options; elsewhere the system's timing applies)."""
    set_keepalive = getattr(transport, "setTcpKeepAlive", None)
    if set_keepalive is None:  # not TCP (a test transport)
        return
    set_keepalive(True)
    handle = transport.getHandle()
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
                          ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
                          ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, option):
            handle.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
