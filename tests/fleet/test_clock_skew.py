"""Two `gateway run` processes on one Redis, one of them on a host whose clock is a minute
ahead or behind (libfaketime): in-flight leases must mean the same time to both, or the
one ahead takes the other's submits for abandoned and sends them again (before
gateway/fleet/clock.py: 60 of 240 sent twice with one a minute ahead).

libfaketime is Debian's `faketime` package (installed by .ci/run as root); the test skips
without it.  The simulator answers each submit_sm after 1 s, so that each process always
has submits in flight when the other sweeps for expired leases.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from gateway.store.embedded import free_port
from tests.fleet.fleet_run import (
    SimulatorProcess,
    carrier_section,
    notification_fields,
    start_simulator,
    write_templates,
)
from tests.fleet.test_fleet_daemons import carrier_bound, wait_for
from tests.integration.daemon import Daemon, write_config

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), Path("/nonexistent/libfaketime.so.1"))
SKEW_SECONDS = 60  # twice the default lease (push.lease_seconds 30)
LEASE_SECONDS = 6  # leases swept every 2 s (a third of it): several sweeps while the messages are in flight
MESSAGES = 240
RESPONSE_LATENCY_SECONDS = 1.0


def skewed_env(seconds: int) -> dict[str, str]:
    # Monotonic time is left alone: only the wall clock (time.time, the reactor's seconds)
    # is off, as on a host whose NTP is broken.
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = start_simulator(tmp_path / "sim", "--latency", str(RESPONSE_LATENCY_SECONDS), record_texts=True)
    yield sim
    sim.stop()


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime not installed (Debian package faketime)")
@pytest.mark.parametrize(("skew", "said"), [(SKEW_SECONDS, "ahead of Redis"), (-SKEW_SECONDS, "behind Redis")],
                         ids=["ahead", "behind"])
def test_a_host_clock_a_minute_off_takes_no_live_submit_for_abandoned(
        tmp_path: Path, redis_url: str, slow_simulator: SimulatorProcess, skew: int, said: str) -> None:
    templates = write_templates(tmp_path)
    carrier = carrier_section(slow_simulator.smpp_port, link_tps=1000, account_tps=1000, max_binds=2, window=20)
    daemons = []
    for n, env in enumerate(({}, skewed_env(skew))):
        config = write_config(
            tmp_path / f"gw{n}", redis={"url": redis_url}, carriers=[carrier],
            smpp_server={"enabled": False, "listen": f"127.0.0.1:{free_port()}"},
            ivr={"fastagi": {"enabled": False}},
            push={"templates_file": str(templates), "lease_seconds": LEASE_SECONDS, "max_in_flight": 20,
                  "batch_size": 20})
        daemons.append(Daemon(config, tmp_path / f"gw{n}.log", env=env))
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            daemon.wait_until("/healthz", timeout_seconds=60)
            wait_for(lambda d=daemon: carrier_bound(d), "both processes bound")
        with client.pipeline(transaction=False) as pipe:
            for i in range(MESSAGES):
                pipe.xadd("12123:notify", notification_fields(i, tag="skew"))
            pipe.execute()

        def states() -> Counter[str]:
            with client.pipeline(transaction=False) as pipe:
                for i in range(MESSAGES):
                    pipe.hget(f"12123:notification:{{skew-{i}}}", "state")
                return Counter(pipe.execute())

        # registered_delivery 0: "submitted" is final here.
        wait_for(lambda: states()["submitted"] == MESSAGES, "every notification submitted", timeout_seconds=120)
        # Two more sweeps of each process: a late recovery would show now.
        time.sleep(2 * LEASE_SECONDS / 3 + 1)

        copies = slow_simulator.copies()
        sent_twice = {key: n for key, n in copies.items() if n > 1}
        assert len(copies) == MESSAGES
        assert not sent_twice, f"{len(sent_twice)} of {MESSAGES} sent more than once"
        with client.pipeline(transaction=False) as pipe:
            for i in range(MESSAGES):
                pipe.hget(f"12123:notification:{{skew-{i}}}", "possible_duplicates")
            assert not [n for n in pipe.execute() if n], "leases taken for abandoned"
        assert states() == Counter({"submitted": MESSAGES})
        # The process off said what it saw; the other had nothing to say.
        assert said in daemons[1].log_text()
        assert "Redis's clock" not in daemons[0].log_text()
    finally:
        client.close()
        for daemon in daemons:
            daemon.stop()
