"""The daemon's reactor: Twisted on asyncio, with its time on a clock that does not step.

Twisted's reactors tell time with ``time.time()``: every ``callLater`` is a moment on the
host's wall clock.  When that clock is stepped (NTP correcting a host that was off, an
operator's ``date -s``, a VM's clock reset on resume) every timer moves with it:

* stepped **back** a minute, every pending timer waits a minute more.  The process stops
  sending (its submits wait for a token that comes from a timer), stops renewing its bind,
  partition and in-flight leases, and stops checking their fences, while the leases run
  out on Redis's clock: other processes take its binds and resend its claimed submits
  (tests/fleet/test_clock_step.py: 20 of 400 claimed submits stuck for the minute and
  counted as possible duplicates);
* stepped **forward** a minute, every fence looks a minute older than it is: the process
  unbinds its live sessions with submits on the wire, and those are sent again (17 of
  400 sent twice).

`SteadyAsyncioReactor` keeps Twisted's asyncio reactor and changes only its clock:
``seconds()`` is the wall clock read once at start plus the time elapsed since on
``CLOCK_BOOTTIME``.  That clock never steps, and unlike ``CLOCK_MONOTONIC`` it counts time
the host spent suspended, so a lease fence measured on it never outlives the lease in
Redis.  On a host whose clock is right it reads what ``time.time()`` reads (NTP slews
both alike); it differs only by the steps made since start.  Times other processes
compare come from the fleet clock (gateway/fleet/clock.py), which corrects this clock to
Redis's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from twisted.internet.asyncioreactor import AsyncioSelectorReactor

__all__ = ["SteadyAsyncioReactor", "SteadyClock", "install_steady_asyncio_reactor"]

# CLOCK_BOOTTIME is Linux's (the daemon's platform); elsewhere the monotonic clock, which
# does not count a suspend.
_ELAPSED_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class SteadyClock:
    """Unix seconds that never step: the wall clock at creation plus the elapsed time.

    Args:
        wall: the wall clock read once (``time.time``).
        elapsed: a clock that only moves forward (``CLOCK_BOOTTIME``).
    """

    def __init__(self, wall: Any = time.time, elapsed: Any = None) -> None:
        self._elapsed = elapsed or (lambda: time.clock_gettime(_ELAPSED_CLOCK))
        self._origin = wall() - self._elapsed()

    def seconds(self) -> float:
        return self._origin + self._elapsed()


class SteadyAsyncioReactor(AsyncioSelectorReactor):
    """Twisted's asyncio reactor whose ``seconds()`` (and so every timer) is a `SteadyClock`."""

    def __init__(self, eventloop: asyncio.AbstractEventLoop | None = None) -> None:
        self._steady = SteadyClock()
        super().__init__(eventloop)

    def seconds(self) -> float:
        return self._steady.seconds()


def install_steady_asyncio_reactor(eventloop: asyncio.AbstractEventLoop) -> Any:
    """Install a `SteadyAsyncioReactor` on `eventloop` as the global reactor (as
    ``twisted.internet.asyncioreactor.install`` does for Twisted's own)."""
    from twisted.internet.main import installReactor

    if "twisted.internet.reactor" in sys.modules:
        raise RuntimeError("a reactor is already installed")
    reactor = SteadyAsyncioReactor(eventloop)
    installReactor(reactor)
    return reactor
