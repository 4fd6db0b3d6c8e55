"""Two `gateway run` processes on one Redis and one carrier account; the host clock of one
of them is stepped a minute mid-run, as NTP steps a host that was a minute off (libfaketime
reading its offset from a file the test rewrites).

Before gateway/reactor.py the reactor's timers and the lease fences ran on that clock:
* stepped **forward** (the host was behind), every bind fence looked a minute old: the
  process unbound its live sessions with submits on the wire, 20 of 240 sent twice;
* stepped **back** (the host was ahead), every timer of the process waited a minute: its
  claimed submits stopped (waiting for a token), their leases ran out on Redis's clock
  and the other process sent them (40 of 240 counted as possible duplicates), and its
  unrenewed bind leases let the other process bind a 4th session against `max_binds` 3.

libfaketime is Debian's `faketime` package (installed by .ci/run as root); the test skips
without it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from tests.fleet import fleet_run as fleet
from tests.fleet.test_fleet_daemons import wait_for

STEP_SECONDS = 60  # twice the default in-flight lease; ten times the test's
LEASE_SECONDS = 6
BIND_LEASE_SECONDS = 3.0  # a bind lease not renewed for 3 s is another's: a stall shows within the run
MESSAGES = 240
# The carrier answers each submit after 0.5 s, so that submits are on the wire when the
# clock steps; 2 sessions of window 10 per process: about 40 submits/s each.
RESPONSE_LATENCY_SECONDS = 0.5
MAX_BINDS = 3  # 2 sessions per process: the process started second binds 1 and waits for the 4th


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[fleet.SimulatorProcess]:
    with fleet.answering_after(tmp_path / "sim", RESPONSE_LATENCY_SECONDS) as sim:
        yield sim


def set_clock(path: Path, offset_seconds: int) -> None:
    """What libfaketime adds to this host's clock, read again within a second; written
    whole (a half-written file reads as no offset)."""
    partial = path.with_suffix(".new")
    partial.write_text(f"{offset_seconds:+d}s\n")
    os.replace(partial, path)


def stepped_env(path: Path) -> dict[str, str]:
    return {"LD_PRELOAD": str(fleet.LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(path),
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.slow
@pytest.mark.timeout(240)
@fleet.needs_libfaketime
@pytest.mark.parametrize(("step", "was"), [(STEP_SECONDS, "behind Redis"), (-STEP_SECONDS, "ahead of Redis")],
                         ids=["forward", "back"])
def test_a_host_clock_stepped_a_minute_mid_run_keeps_its_binds_and_sends_nothing_twice(
        tmp_path: Path, redis_url: str, slow_simulator: fleet.SimulatorProcess, step: int, was: str) -> None:
    templates = fleet.write_templates(tmp_path)
    carrier = fleet.carrier_section(slow_simulator.smpp_port, link_tps=40, account_tps=1000, max_binds=MAX_BINDS,
                                    bind_lease_seconds=BIND_LEASE_SECONDS, window=10, sessions=2)
    push = {"templates_file": str(templates), "lease_seconds": LEASE_SECONDS, "max_in_flight": 40, "batch_size": 20}
    offset_file = tmp_path / "faketime.rc"
    set_clock(offset_file, -step)  # off by a minute until the step puts it right
    stepped = fleet.fleet_daemon(tmp_path / "stepped", redis_url, carrier, push, env=stepped_env(offset_file))
    steady = fleet.fleet_daemon(tmp_path / "steady", redis_url, carrier, push)
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)

    def binds() -> int:
        return int(slow_simulator.stats()["binds_by_system_id"].get(fleet.SYSTEM_ID, 0))

    def states() -> Counter[str | None]:
        return Counter(fleet.record_fields(client, MESSAGES, "step"))

    try:
        fleet.start_fleet([stepped])  # first: it holds 2 of the account's 3 binds
        wait_for(lambda: binds() == 2, "the stepped process bound twice")
        fleet.start_fleet([steady])
        wait_for(lambda: binds() == MAX_BINDS, "the other process bound once (its second session waits)")
        fleet.enqueue(client, MESSAGES, "step")
        wait_for(lambda: states()["submitted"] >= MESSAGES // 5, "a fifth submitted")
        set_clock(offset_file, 0)
        # registered_delivery 0: "submitted" is final here.  Well within the minute.
        wait_for(lambda: states()["submitted"] == MESSAGES, "every notification submitted", timeout_seconds=40)
        # Two bind leases more: a stalled renewal would have let the waiting session bind.
        time.sleep(2 * BIND_LEASE_SECONDS)

        copies = slow_simulator.copies()
        assert len(copies) == MESSAGES
        assert not {key: n for key, n in copies.items() if n > 1}, "sent more than once"
        duplicates = [n for n in fleet.record_fields(client, MESSAGES, "step", "possible_duplicates") if n]
        assert duplicates == [], "live submits taken for abandoned"
        assert slow_simulator.stats()["peak_binds_by_system_id"][fleet.SYSTEM_ID] == MAX_BINDS
        log = stepped.log_text()
        assert "not renewed in time" not in log and "lease is lost" not in log
        assert was in log  # the clock was off at start, and the process said so
        assert steady.log_text().count("bound (transceiver)") == 1  # its second session never bound
    finally:
        client.close()
        for daemon in (stepped, steady):
            daemon.stop()
