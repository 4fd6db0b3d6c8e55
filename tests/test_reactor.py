"""The daemon's reactor (gateway/reactor.py): its clock and timers do not move when the
host's clock is stepped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.reactor import SteadyClock
from tests.fleet.fleet_run import LIBFAKETIME, needs_libfaketime

REPO = Path(__file__).resolve().parent.parent


def test_steady_clock_reads_the_wall_clock_at_start_and_then_only_elapsed_time() -> None:
    wall, elapsed = [1_700_000_000.0], [500.0]
    clock = SteadyClock(wall=lambda: wall[0], elapsed=lambda: elapsed[0])
    assert clock.seconds() == 1_700_000_000.0
    elapsed[0] += 2.5
    wall[0] -= 60  # NTP steps the host back a minute
    assert clock.seconds() == 1_700_000_002.5
    wall[0] += 3600
    elapsed[0] += 1
    assert clock.seconds() == 1_700_000_003.5


# Run by a child whose host clock starts a minute ahead (libfaketime, read from a file).
# It sets a 1 s timer, has the file put the clock right (a step back of a minute) and
# says when the timer fired on the monotonic clock, and where the reactor's clock stood.
CHILD = textwrap.dedent("""
    import os, sys, time
    from gateway.commands import install_reactor
    reactor = install_reactor()
    offset_file = sys.argv[1]
    started = time.monotonic()
    assert abs(reactor.seconds() - time.time()) < 1.0, (reactor.seconds(), time.time())

    def step_back():
        with open(offset_file + ".new", "w") as f:
            f.write("+0s\\n")
        os.replace(offset_file + ".new", offset_file)
        # libfaketime reads the file again after a second: wait until the step shows.
        deadline = time.monotonic() + 10
        while time.time() - reactor.seconds() > 30 and time.monotonic() < deadline:
            pass

    def fired():
        print(f"fired {time.monotonic() - started:.2f} stepped {reactor.seconds() - time.time():.1f}", flush=True)
        reactor.stop()

    reactor.callLater(0, step_back)
    reactor.callLater(3.0, fired)
    reactor.run()
""")


@needs_libfaketime
def test_a_timer_set_before_the_host_clock_steps_back_a_minute_fires_on_time(tmp_path: Path) -> None:
    """Twisted's own asyncio reactor times callLater on time.time(): there this timer
    fired a minute late (every timer of the process waited out the step)."""
    offset_file = tmp_path / "faketime.rc"
    offset_file.write_text("+60s\n")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset_file),
           "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(offset_file)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the 3 s timer had not fired after 30 s: it was waiting out the step")
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:1] == ["fired"], done.stdout + done.stderr
    assert 2.9 <= float(words[1]) < 10.0  # on time, not a minute late
    # The reactor's clock kept the minute: it is steady, and the host's moved under it.
    assert abs(float(words[3]) - 60) < 5
