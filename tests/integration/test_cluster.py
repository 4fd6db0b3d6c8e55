"""Three `gateway run` processes on a real Redis Cluster (3 masters, 3 replicas) with the
carrier simulator, through a join and three faults in one run: a third gateway started
mid-run, a gateway SIGKILLed, a partition's slot migrated to another master, a master
SIGKILLed (its replica promoted)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError

from gateway.push.mo import CONSUMER_GROUP as MO_GROUP
from tests.aio import on_asyncio
from tests.integration.cluster_run import PARTITIONS, ClusterRun
from tests.integration.daemon import Daemon
from tests.integration.faults import CMCC_PREFIXES, workload
from tests.ops.fleet import wait_for


def fleet_view(daemon: Daemon) -> dict[str, Any]:
    code, body = daemon.get("/v1/carriers", token="test-token")
    assert code == 200, body
    return dict(body)

# The size.  The account's TPS is the limit (fleet-wide, GCRA in Redis): about
# 1.67 submit_sm per notification (two-part Chinese texts), so 20,000 take about 75 s of
# sending at 450/s; the whole test stays near 2 minutes on the loaded 2-core CI machine.
N = 20_000
ACCOUNT_TPS = 450
# Three processes with 2 sessions each want 6 binds: the account sells 5, so one process
# binds a single session until the SIGKILLed one's leases run out.
MAX_BINDS = 5
BIND_LEASE_SECONDS = 5.0
SYSTEM_ID = "gwcmcc"
FINAL = ("delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected")


@pytest.mark.slow
@pytest.mark.timeout(480)  # the wait for all 20,000 is bounded at 240 s; start and stop besides
@on_asyncio
async def test_three_gateways_through_a_sigkill_a_slot_migration_and_a_master_failover(tmp_path: Path) -> None:
    """20,000 notifications through 2 gateways; a third joins at 10 % and takes a share
    without any restart (its submits counted).  At 30 % gateway 0 is SIGKILLed and stays
    down (its leases run out, the other two take its work); at 50 % partition 3's slot
    migrates to another master (ASK/TRYAGAIN under way); at 70 % the master of partition
    5 is SIGKILLed and its replica promoted.  Every notification that still has a record
    is final with its reason, each duplicate at the carrier is a counted possible
    duplicate, nothing is left half done; what the failover lost (asynchronous
    replication: records, or receipts that end unconfirmed) is printed, as measured.
    The carrier (the simulator, 1 s windows) never sees the account above its TPS + 5 %
    nor above its binds; every surviving gateway still answers after the failover, shows
    the fleet in its status API and stops on SIGTERM."""
    carrier = {"tps_limit": 5000, "account_tps": ACCOUNT_TPS, "max_binds": MAX_BINDS,
               "bind_lease_seconds": BIND_LEASE_SECONDS}
    async with ClusterRun(tmp_path, gateways=2, carrier=carrier,
                          # a receipt recorded and acknowledged, then lost with the killed master,
                          # never comes again: such a notification ends unconfirmed after 20 s
                          push={"lease_seconds": 5, "max_in_flight": 300, "receipt_timeout_seconds": 20}) as run:
        assert run.simulator is not None
        notifications = workload("cl", N, CMCC_PREFIXES)
        moved: list[int] = []
        killed_masters: list[int] = []

        joining: list[asyncio.Future[object]] = []

        async def join() -> None:  # started, not awaited: the other faults go on meanwhile
            joining.append(asyncio.ensure_future(run.add_gateway()))

        async def kill_gateway() -> None:
            await run.kill_gateway(0)

        async def migrate() -> None:
            slot = key_slot(b"{p3}")
            target = next(port for port in run.cluster.master_ports() if port != run.cluster.owner_of(slot))
            moved.append(await asyncio.to_thread(run.cluster.migrate_slot, slot, target))

        async def kill_master() -> None:
            port = run.cluster.owner_of(key_slot(b"{p5}"))
            await asyncio.to_thread(run.cluster.kill, port)
            killed_masters.append(port)
            await asyncio.to_thread(run.cluster.wait_for_new_master_of, port)

        started = asyncio.get_running_loop().time()
        await run.enqueue(notifications)
        await run.wait_settled(notifications, timeout_seconds=240,
                               milestones=[(0.1, join), (0.3, kill_gateway), (0.5, migrate), (0.7, kill_master)])
        tally = await run.tally(notifications)
        tally.elapsed_seconds = asyncio.get_running_loop().time() - started
        await joining[0]
        lost_in_failover = tally.states.get("none", 0)
        joined_submits = await run.accepted_submits(run.daemons[2])
        rates = await asyncio.to_thread(run.simulator.stats)
        windows = [count for _, count in await asyncio.to_thread(run.simulator.windows, SYSTEM_ID)]
        peak_submits = rates["peak_submits_per_second"].get(SYSTEM_ID, 0)
        peak_binds = rates["peak_binds_by_system_id"].get(SYSTEM_ID, 0)
        print("cluster run:", json.dumps({
            "notifications": N, "delivered": tally.delivered, "lost_in_failover": lost_in_failover,
            "lost_otherwise": tally.lost - lost_in_failover, "duplicated": tally.duplicated,
            "possible_duplicates_counted": tally.possible_duplicates,
            "unexplained_duplicates": tally.unexplained_duplicates, "slot_keys_moved": moved,
            "submits_by_the_joined_gateway": joined_submits, "account_tps": ACCOUNT_TPS,
            "peak_submits_per_second": peak_submits, "max_binds": MAX_BINDS, "peak_binds": peak_binds,
            "states": tally.states, "seconds": round(tally.elapsed_seconds, 1), "submits_per_second": windows}))
        assert moved and moved[0] > 0 and killed_masters
        assert joined_submits > 0
        assert tally.lost == lost_in_failover, tally.line()
        assert tally.unexplained_duplicates == 0, tally.line()
        assert not {s for s in tally.states if s not in ("none", *FINAL)}, tally.line()
        assert await run.leftovers() == {"inflight": 0, "queued": 0, "scheduled": 0, "stream_entries": 0}
        # What the carrier metered: the account's TPS over the whole fleet in every 1 s
        # window, and its binds before and after the SIGKILL (peak over the run).
        assert peak_submits <= ACCOUNT_TPS * 1.05, windows
        assert max(windows) >= ACCOUNT_TPS * 0.5, windows  # the limit was what held the rate
        assert peak_binds == MAX_BINDS, rates

        # The survivors of the failover are alive: they answer, list the live fleet in the
        # status API (on a Cluster too) and stop on SIGTERM.
        survivors = run.live_daemons()
        assert len(survivors) == 2
        for daemon in survivors:
            assert await run.answers(daemon), daemon.log_path
        await asyncio.to_thread(
            wait_for, lambda: all(len(fleet_view(d)["processes"]) == 2 for d in survivors),
            "each survivor's /v1/carriers lists the two live processes")
        for daemon in survivors:
            assert await run.stop_gateway(daemon) is not None, f"{daemon.log_path} ignored SIGTERM"


@pytest.mark.slow
@on_asyncio
async def test_fleet_status_on_a_cluster_lists_every_process_and_sums_the_partitions(tmp_path: Path) -> None:
    """The console's figures on a Cluster: every process's /v1/overview lists both live
    processes, and the queues are summed over the 16 partitions (their keys on three
    masters).  The status loop's pipeline is cluster-safe: it used a keyless ECHO as a
    placeholder, which a Cluster pipeline refuses, so no process was ever listed."""
    async with ClusterRun(tmp_path, gateways=2) as run:
        now = time.time()
        dead = {part: part % 4 + 1 for part in range(0, PARTITIONS, 2)}  # 8 partitions, 1 or 3 each
        scheduled = {part: 2 for part in (1, 6, 11)}  # due tomorrow: no gateway touches them
        async with run.client.pipeline(transaction=False) as pipe:
            for part, count in dead.items():
                pipe.zadd(run.keys.partition(part).dead_letters, {f"dl-{part}-{k}": now for k in range(count)})
            for part, count in scheduled.items():
                pipe.zadd(run.keys.partition(part).scheduled, {f"sc-{part}-{k}": now + 86_400 for k in range(count)})
            await pipe.execute()

        def overview(daemon: Daemon) -> dict[str, Any]:
            code, body = daemon.get("/v1/overview", token="test-token")
            assert code == 200, body
            return dict(body)

        for daemon in run.daemons:
            body = await asyncio.to_thread(
                wait_for, lambda d=daemon: (lambda b: b if len(b["processes"]) == 2 else None)(overview(d)),
                "both processes in the overview")
            assert {p["pid"] for p in body["processes"]} == {d.process.pid for d in run.daemons if d.process}
            assert body["queues"]["dead_letters"] == sum(dead.values()) == 16
            assert body["queues"]["scheduled"] == sum(scheduled.values())
            assert body["carriers"]["cmcc"]["processes"] and body["carriers"]["cmcc"]["state"] == "bound"
        for daemon in run.daemons:
            assert "cluster mode" not in daemon.log_text(), daemon.log_path

        # Each process reads the MO streams of its partitions under its own consumer
        # name (push.consumer_name + "-mo"): with one name per host, a partition moving
        # between two processes there would hand one the MOs the other is answering.
        async def mo_consumers() -> set[str]:
            names: set[str] = set()
            for part in run.keys.all_partitions:
                try:
                    names |= {c["name"] for c in await run.client.xinfo_consumers(part.mo_stream, MO_GROUP)}
                except ResponseError:
                    pass  # no group yet: nobody has read this partition's MOs
            return names

        deadline = time.monotonic() + 30
        while await mo_consumers() != {"gateway0-mo", "gateway1-mo"} and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert await mo_consumers() == {"gateway0-mo", "gateway1-mo"}
