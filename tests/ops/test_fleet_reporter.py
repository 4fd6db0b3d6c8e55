"""FleetReporter.apply_control on a Clock with stand-in links (no I/O): which links it
stops, starts and isolates."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.task import Clock

from gateway.ops.fleet import FleetReporter, clock_attention
from gateway.store.keys import Keys
from tests.aio import on_asyncio


@dataclass
class StandInLink:
    """Just the CarrierLink surface the reporter touches."""

    name: str
    running: bool = True
    isolated: bool = False
    tps_limit: float = 100.0
    starts: int = 0
    config: object = field(default=None)
    account: object = None  # gateway.fleet.account.AccountLimits when account_tps is set

    def __post_init__(self) -> None:
        self.config = type("Config", (), {"tps_limit": 100.0, "account_tps": 0.0})()

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


def test_tps_on_an_account_carrier_sets_the_fleet_wide_account_rate() -> None:
    """With account_tps the operator's TPS is the account's rate over the fleet; the
    per-process bucket stays as configured, and absent restores account_tps."""
    from gateway.fleet.account import AccountLimits
    from gateway.fleet.tps import AccountRateLimiter, account_key

    clock = Clock()
    rate = AccountRateLimiter(None, account_key("12123:", "cmcc"), 300.0, clock, account="cmcc")
    link = StandInLink("cmcc", account=AccountLimits(rate=rate))
    link.config = type("Config", (), {"tps_limit": 100.0, "account_tps": 300.0})()
    fleet = reporter(link)
    fleet.apply_control({"tps:cmcc": "120"})
    assert rate.account_tps == 120.0 and rate.reservations.max_batch == 6
    assert link.tps_limit == 100.0
    fleet.apply_control({})
    assert rate.account_tps == 300.0


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


@on_asyncio
async def test_partitioned_queue_gauges_are_read_every_ten_seconds_not_every_report(redis_url: str) -> None:
    """The queue gauges cost ~13 commands per partition: partitioned, the reporter reads
    them with the first report and then every QUEUE_GAUGES_PARTITIONED_SECONDS; with one
    partition with every report, as before (a real redis-server, the reporter on a Clock)."""
    from redis.asyncio import Redis

    from gateway import metrics
    from gateway.ops.fleet import QUEUE_GAUGES_PARTITIONED_SECONDS

    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        for keys in (Keys(partitions=4), Keys()):
            await redis.flushall()
            clock = Clock()
            clock.advance(1_000_000)
            fleet = FleetReporter(lambda: redis, keys, {}, clock, process_id="gw-test")
            fleet.running = 1
            await fleet.report_once(redis)
            assert metrics.dead_letters._value.get() == 0
            await redis.zadd(keys.partition(keys.partitions - 1).dead_letters, {"n-1": clock.seconds()})
            clock.advance(2.0)
            await fleet.report_once(redis)
            assert metrics.dead_letters._value.get() == (0 if keys.partitioned else 1)
            clock.advance(QUEUE_GAUGES_PARTITIONED_SECONDS)
            await fleet.report_once(redis)
            assert metrics.dead_letters._value.get() == 1
    finally:
        await redis.aclose()


@on_asyncio
async def test_the_start_is_told_on_the_fleet_clock_measured_after_it(redis_url: str) -> None:
    """On a host a minute ahead, the reporter is built before the fleet clock's first
    measurement: its report still gives the start on Redis's clock (the console's uptime
    right), with the uptime counted on the host's clock."""
    import json
    import time

    from redis.asyncio import Redis

    from gateway.fleet.clock import FleetClock

    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        host = Clock()
        host.advance(time.time() + 60)
        fleet_clock = FleetClock(redis, Keys().partition_members, host)
        reporter = FleetReporter(lambda: redis, Keys(), {}, fleet_clock, process_id="gw-ahead")
        reporter.running = 1
        host.advance(5)  # up for 5 s when the clock measures
        assert await fleet_clock.sync_once()
        await reporter.report_once(redis)
        report = json.loads(await redis.get(Keys().process_status("gw-ahead")))
        assert abs(report["reported_at"] - time.time()) < 1
        assert abs(report["reported_at"] - report["started_at"] - 5) < 0.01
    finally:
        await redis.aclose()


def test_a_links_since_is_told_on_the_fleet_clock() -> None:
    """A link keeps when its state changed on its reactor's clock, which in the daemon
    tells elapsed time and not the time of day (gateway/reactor.py): the report gives it
    on the fleet's clock, the one the console compares it with."""
    host = Clock()
    host.advance(1_000.0)  # the reactor's clock: any origin

    @dataclass
    class BoundLink(StandInLink):
        clock: Clock = field(default_factory=lambda: host)
        state_since: float = 0.0
        problem: str = ""

        def sessions_bound(self) -> int:
            return 1

        def window_in_use(self) -> int:
            return 0

    link = BoundLink("cmcc", state_since=host.seconds())
    link.config = type("Config", (), {"tps_limit": 100.0, "account_tps": 0.0, "sessions": 1, "window": 10})()
    host.advance(42)  # bound for 42 s
    fleet_now = 1_800_000_000.0
    report = reporter(link).snapshot(fleet_now)
    assert report["carriers"]["cmcc"]["state"] == "bound"
    assert report["carriers"]["cmcc"]["since"] == fleet_now - 42


def test_a_process_clock_is_named_only_when_an_operator_should_act() -> None:
    """`gateway carriers` and the console name a process whose take-overs are held or whose
    host's clock is a second or more off Redis's; a process in time, or one that reported
    no clock (an older version), is not named."""
    assert clock_attention(None) is None
    assert clock_attention({"host_offset_seconds": 0.4, "takeovers_held": None}) is None
    assert clock_attention({"host_offset_seconds": -60.0, "takeovers_held": None}) == \
        "host clock 60.0 s ahead of Redis's (fix its NTP)"
    assert clock_attention({"host_offset_seconds": 2.5, "takeovers_held": None}) == \
        "host clock 2.5 s behind Redis's (fix its NTP)"
    assert clock_attention({"host_offset_seconds": None, "takeovers_held": "starting"}) == \
        "take-overs held: starting (until its clock has settled, about 5 s)"
    assert clock_attention({"host_offset_seconds": 0.0, "takeovers_held": "redis_clock_stepped"}) == \
        "take-overs held: Redis's clock stepped forward"
