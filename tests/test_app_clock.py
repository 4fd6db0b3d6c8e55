"""Every part that writes times other processes compare tells the time by the fleet clock
(gateway/fleet/clock.py): built from the shipped config, not started."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from twisted.internet import reactor

from gateway.app import build_gateway, service_named
from gateway.config import load_config
from gateway.fleet.clock import SYNC_INTERVAL_SECONDS, FleetClock

ROOT = Path(__file__).resolve().parents[1]


def test_the_parts_that_share_times_use_the_fleet_clock(tmp_path: Path) -> None:
    for name in ("gateway.yaml", "templates.yaml", "ivr.yaml"):
        shutil.copy(ROOT / "config" / name, tmp_path / name)
    config = load_config(tmp_path / "gateway.yaml", environ={})
    root = build_gateway(config, reactor)
    fleet = root.fleet_clock
    assert isinstance(fleet, FleetClock) and fleet.local is reactor
    # A step of Redis's clock is shared (the marker), and take-overs wait for the longest
    # lease processes take over from each other plus one measurement.
    assert fleet.step_key == "{12123:members}:clock-step"
    assert fleet.hold_seconds == max(config.push.lease_seconds, config.ami.call_slot_lease_seconds) + SYNC_INTERVAL_SECONDS
    assert service_named(root, "fleet-clock") is fleet
    push = root.push
    assert push.clock is fleet and push.dispatcher.clock is fleet
    assert push.ownership.clock is reactor  # its fence is a duration on this host
    assert service_named(root, "fastagi").clock is fleet  # type: ignore[union-attr]
    mo = service_named(root, "mo")
    assert mo._now == fleet.seconds  # type: ignore[union-attr]
    # Times of day that leave the process (validity_period, MO received_at, partner receipt
    # dates) are the fleet's; the links' timers and durations stay on the reactor.
    assert fleet.wall is time.time  # the host's wall clock, for the warning
    for link in root.carrier_links.values():
        assert link.wall_clock is fleet and link.clock is reactor  # type: ignore[attr-defined]
    listener = service_named(root, "smpp-listener")
    assert listener.wall_clock is fleet and listener.reactor is reactor  # type: ignore[union-attr]
    names = [service.name for service in root]
    # Started before every part that tells the time by it, stopped after them.
    assert names.index("fleet-clock") < min(names.index(n) for n in ("push", "mo", "fastagi", "fleet"))
