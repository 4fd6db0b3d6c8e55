"""Three `gateway run` processes, one Redis, one carrier account: the simulator meters the
account's submits per second and its binds, before and after one process is SIGKILLed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from tests.fleet.fleet_run import (
    SYSTEM_ID,
    SimulatorProcess,
    carrier_section,
    fleet_daemon,
    notification_fields,
    start_fleet,
    start_simulator,
    write_templates,
)
from tests.integration.daemon import Daemon

ACCOUNT_TPS = 300
LINK_TPS = 200  # two bound processes could send 400/s: only the account limit holds them
MAX_BINDS = 2
LEASE_SECONDS = 3.0
MESSAGES = 2_700  # about 9 s of sending at the account's rate


def wait_for(condition: Callable[[], Any], what: str, timeout_seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def carrier_bound(daemon: Daemon) -> bool:
    try:
        _, body = daemon.get("/readyz")
    except OSError:
        return False
    return isinstance(body, dict) and body.get("checks", {}).get("carrier_bound") is True


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = start_simulator(tmp_path / "sim")
    yield sim
    sim.stop()


def test_fleet_keeps_account_tps_and_binds_across_processes_and_a_sigkill(
        tmp_path: Path, redis_url: str, simulator: SimulatorProcess) -> None:
    """3 processes, account_tps 300 and max_binds 2: two bind, the third waits; no 1 s
    window at the SMSC above 315 submits; after SIGKILL of a bound process its lease
    expires and the third binds; binds never above 2."""
    templates = write_templates(tmp_path)
    carrier = carrier_section(simulator.smpp_port, link_tps=LINK_TPS, account_tps=ACCOUNT_TPS,
                              max_binds=MAX_BINDS, bind_lease_seconds=LEASE_SECONDS)
    push = {"templates_file": str(templates), "lease_seconds": 3, "max_in_flight": 40, "batch_size": 40,
            "retry_initial_seconds": 0.2}
    daemons = [fleet_daemon(tmp_path / f"gw{n}", redis_url, carrier, push) for n in range(3)]
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        start_fleet(daemons)
        wait_for(lambda: simulator.stats()["binds_by_system_id"].get(SYSTEM_ID) == MAX_BINDS, "two binds")
        time.sleep(LEASE_SECONDS)  # the third keeps asking meanwhile
        bound = [d for d in daemons if carrier_bound(d)]
        assert len(bound) == MAX_BINDS
        assert simulator.stats()["peak_binds_by_system_id"][SYSTEM_ID] == MAX_BINDS

        with client.pipeline(transaction=False) as pipe:
            for i in range(MESSAGES):
                pipe.xadd("12123:notify", notification_fields(i))
            pipe.execute()
        wait_for(lambda: simulator.stats()["accepted"] >= MESSAGES // 3, "a third sent")
        victim = bound[0]
        victim.kill()
        waiting = next(d for d in daemons if d not in bound)
        wait_for(lambda: carrier_bound(waiting), "the waiting process to bind", timeout_seconds=LEASE_SECONDS + 30)
        wait_for(lambda: simulator.stats()["accepted"] >= MESSAGES, "every message at the SMSC", timeout_seconds=90)

        stats = simulator.stats()
        windows = [count for _, count in stats["submits_per_second"][SYSTEM_ID]]
        assert stats["peak_submits_per_second"][SYSTEM_ID] <= ACCOUNT_TPS * 1.05, windows
        assert max(windows) >= ACCOUNT_TPS * 0.6, windows  # near the account's rate: the bound above was tested
        assert stats["peak_binds_by_system_id"][SYSTEM_ID] == MAX_BINDS
        assert stats["binds_by_system_id"][SYSTEM_ID] == MAX_BINDS

        for daemon in daemons:
            if daemon is victim:
                continue
            assert daemon.process is not None
            pid = daemon.process.pid
            daemon.stop()  # SIGTERM: unbind, and give the lease back at once
            seconds, micros = client.time()
            live = client.zrangebyscore("12123:{acct:cmcc}:binds", seconds * 1000 + micros // 1000, "+inf")
            assert not [holder for holder in live if f"-{pid}-" in holder], live
    finally:
        client.close()
        for daemon in daemons:
            daemon.stop()
