"""Three `gateway run` processes on a real Redis Cluster (3 masters, 3 replicas) with the
carrier simulator, through a join and three faults in one run: a third gateway started
mid-run, a gateway SIGKILLed, a partition's slot migrated to another master, a master
SIGKILLed (its replica promoted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.aio import on_asyncio
from tests.integration.cluster_run import ClusterRun
from tests.integration.faults import CMCC_PREFIXES, workload

# Sized so that the run takes about a minute on the 2-core CI machine with 3 gateways,
# 6 redis-servers and the simulator sharing it (bench/cluster.py runs larger ones).
N = 3000
FINAL = ("delivered", "undeliverable", "unconfirmed", "expired", "failed", "rejected")


@pytest.mark.slow
@on_asyncio
async def test_three_gateways_through_a_sigkill_a_slot_migration_and_a_master_failover(tmp_path: Path) -> None:
    """3,000 notifications through 2 gateways; a third joins at 10 % and takes a share
    without any restart (its submits counted).  At 30 % gateway 0 is SIGKILLed and stays
    down (its leases run out, the other two take its work); at 50 % partition 3's slot
    migrates to another master (ASK/TRYAGAIN under way); at 70 % the master of partition
    5 is SIGKILLed and its replica promoted.  Every notification that still has a record
    is final with its reason, each duplicate at the carrier is a counted possible
    duplicate, nothing is left half done; what the failover lost (asynchronous
    replication: records, or receipts that end unconfirmed) is printed, as measured."""
    # 100 submit_sm/s per process (about 60 notifications) and at most 300 in flight, so
    # that the lanes keep a backlog while the third gateway starts (seconds on a loaded
    # machine) and the faults happen mid-run rather than after it.
    async with ClusterRun(tmp_path, gateways=2, carrier={"tps_limit": 100},
                          # a receipt recorded and acknowledged, then lost with the killed master,
                          # never comes again: such a notification ends unconfirmed after 20 s
                          push={"lease_seconds": 5, "max_in_flight": 300, "receipt_timeout_seconds": 20}) as run:
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
            run.cluster.kill(port)
            killed_masters.append(port)
            await asyncio.to_thread(run.cluster.wait_for_new_master_of, port)

        started = asyncio.get_running_loop().time()
        await run.enqueue(notifications)
        await run.wait_settled(notifications, timeout_seconds=150,
                               milestones=[(0.1, join), (0.3, kill_gateway), (0.5, migrate), (0.7, kill_master)])
        tally = await run.tally(notifications)
        tally.elapsed_seconds = asyncio.get_running_loop().time() - started
        await joining[0]
        lost_in_failover = tally.states.get("none", 0)
        joined_submits = await run.accepted_submits(run.daemons[2])
        print("cluster run:", json.dumps({
            "notifications": N, "delivered": tally.delivered, "lost_in_failover": lost_in_failover,
            "lost_otherwise": tally.lost - lost_in_failover, "duplicated": tally.duplicated,
            "possible_duplicates_counted": tally.possible_duplicates,
            "unexplained_duplicates": tally.unexplained_duplicates, "slot_keys_moved": moved,
            "submits_by_the_joined_gateway": joined_submits,
            "states": tally.states, "seconds": round(tally.elapsed_seconds, 1)}))
        assert moved and moved[0] > 0 and killed_masters
        assert joined_submits > 0
        assert tally.lost == lost_in_failover, tally.line()
        assert tally.unexplained_duplicates == 0, tally.line()
        assert not {s for s in tally.states if s not in ("none", *FINAL)}, tally.line()
        assert await run.leftovers() == {"inflight": 0, "queued": 0, "scheduled": 0, "stream_entries": 0}
