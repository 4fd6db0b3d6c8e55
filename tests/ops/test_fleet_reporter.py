"""FleetReporter.apply_control on a Clock with stand-in links (no I/O): which links it
stops, starts and isolates."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.task import Clock

from gateway.ops.fleet import FleetReporter
from gateway.store.keys import Keys


@dataclass
class StandInLink:
    """Just the CarrierLink surface the reporter touches."""

    name: str
    running: bool = True
    isolated: bool = False
    tps_limit: float = 100.0
    starts: int = 0
    config: object = field(default=None)

    def __post_init__(self) -> None:
        self.config = type("Config", (), {"tps_limit": 100.0})()

    def stopService(self) -> None:  # noqa: N802 - twisted API
        self.running = False

    def startService(self) -> None:  # noqa: N802 - twisted API
        self.running = True
        self.starts += 1

    def set_tps_limit(self, tps: float) -> None:
        self.tps_limit = tps


def reporter(*links: StandInLink) -> FleetReporter:
    fleet = FleetReporter(lambda: None, Keys(), {link.name: link for link in links}, Clock(), queue_gauges=False)
    fleet.running = 1
    return fleet


def test_operator_stop_start_isolate_and_tps() -> None:
    """stopped stops the link, absent starts it again, isolated isolates it, tps sets the rate."""
    link = StandInLink("cmcc")
    fleet = reporter(link)
    fleet.apply_control({"carrier:cmcc": "stopped"})
    assert not link.running
    fleet.apply_control({})
    assert link.running and link.starts == 1
    fleet.apply_control({"carrier:cmcc": "isolated", "tps:cmcc": "25"})
    assert link.isolated and link.tps_limit == 25.0
    fleet.apply_control({})
    assert not link.isolated and link.tps_limit == 100.0


def test_a_link_the_gateway_stops_is_not_started_again() -> None:
    """During the SIGTERM drain the links stop first; the reporter must not restart them."""
    link = StandInLink("cmcc")
    fleet = reporter(link)
    link.stopService()  # GatewayService's ordered stop
    fleet.apply_control({})
    assert not link.running and link.starts == 0
    fleet.running = 0
    fleet.apply_control({"carrier:cmcc": "stopped"})  # a stopped reporter changes nothing
    assert link.starts == 0
