"""Two `gateway run` processes whose host name and pid are the same, as two containers on
one host with host networking (each gateway is pid 1 of its pid namespace), or two VMs
cloned from one image that started their services in the same order.  The names by which
live processes hold leases in Redis must still differ, or both hold one bind lease (and
the carrier's max_binds is exceeded), both own the same partitions, and their status
reports overwrite each other (before gateway/fleet/names.py: two binds against
max_binds 1)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

from tests.fleet.fleet_run import (
    SYSTEM_ID,
    SimulatorProcess,
    carrier_section,
    fleet_daemon,
    start_fleet,
    start_simulator,
    write_templates,
)
from tests.fleet.test_fleet_daemons import wait_for
from tests.integration.daemon import Daemon

# Each daemon is pid 1 of its own pid namespace (root only: CI runs as root).
PID_ONE = ["unshare", "--pid", "--fork", "--kill-child=SIGTERM"]


def _pid_namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*PID_ONE, "sh", "-c", "echo $$"], capture_output=True, text=True, timeout=10)
    return probe.stdout.strip() == "1"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorProcess]:
    sim = start_simulator(tmp_path / "sim")
    yield sim
    sim.stop()


@pytest.mark.skipif(not _pid_namespaces_available(), reason="needs root and unshare(1) for pid namespaces")
def test_two_processes_with_one_host_name_and_pid_hold_separate_leases(
        tmp_path: Path, redis_url: str, simulator: SimulatorProcess) -> None:
    templates = write_templates(tmp_path)
    carrier = carrier_section(simulator.smpp_port, link_tps=100, account_tps=100, max_binds=1,
                              bind_lease_seconds=3.0)
    push = {"templates_file": str(templates), "partitions": 4, "partition_lease_seconds": 2}
    daemons = [fleet_daemon(tmp_path / f"gw{n}", redis_url, carrier, push, launcher=PID_ONE) for n in range(2)]
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        start_fleet(daemons)
        wait_for(lambda: simulator.stats()["binds_by_system_id"].get(SYSTEM_ID), "a bind")
        # The second keeps asking for a lease meanwhile; with one name it would have it.
        time.sleep(3.0)
        stats = simulator.stats()
        assert stats["peak_binds_by_system_id"][SYSTEM_ID] == 1, stats["peak_binds_by_system_id"]
        holders = client.zrange("12123:{acct:cmcc}:binds", 0, -1)
        assert len(holders) == 1, holders
        # Two processes in the console, not one.
        wait_for(lambda: client.zcard("12123:procs") == 2, "two status reports", timeout_seconds=30)

        # Two members sharing the 4 partitions, 2 each (one name: both would own all 4).
        def owners() -> Counter[str]:
            return Counter(client.get(f"12123:{{p{k}}}:owner") for k in range(4))

        wait_for(lambda: sorted(owners().values()) == [2, 2], "the partitions shared", timeout_seconds=30)
        assert client.zcard("12123:members") == 2
    finally:
        client.close()
        for daemon in daemons:
            stop_in_namespace(daemon)


def stop_in_namespace(daemon: Daemon) -> None:
    """SIGTERM to the gateway itself: unshare(1) ignores it while it waits for its child;
    unshare exits with the gateway."""
    if daemon.process is None or daemon.process.poll() is not None:
        return
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        os.kill(int(pid), signal.SIGTERM)
    try:
        daemon.process.wait(30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()  # --kill-child: the gateway gets SIGTERM once unshare is gone
        daemon.process.wait()
