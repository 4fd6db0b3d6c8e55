"""Soak on a Redis Cluster: three `gateway run` processes, the carrier simulator and a real
3-master Cluster (3 replicas) through several rounds of faults; a table, then one JSON line.

    .venv/bin/python bench/cluster_soak.py                          # 60,000 notifications, 3 rounds
    .venv/bin/python bench/cluster_soak.py --n 20000 --rounds 2
    .venv/bin/python bench/cluster_soak.py --intake-wait-replicas 1 # WAIT for a replica at intake
    .venv/bin/python bench/cluster_soak.py --delivery-wait-replicas 1  # and for receipts and MOs

Set-up: tests/integration/cluster_run.py's ClusterRun (24 partitions, one carrier account
of ``--account-tps`` across the fleet, 2 sessions per process, ``max_binds`` 6), the
workload of tests/integration/faults.py XADDed to the partitions' intake streams at the
start.  test_cluster.py puts each fault into one run once; here every round repeats
them, spread over the run by how many messages the carrier has:

* a gateway SIGKILLed (round r: gateway r mod 3), started again with its own config
  ``--restart-after`` seconds later (meanwhile the others take its partitions over);
* one partition's slot migrated to another master (ASK/TRYAGAIN while it moves);
* the master of another partition SIGKILLed, its replica promoted, then the killed node
  started again from its data directory: it rejoins as a replica, so that the next
  round's master has a replica to fail over to.

Then every notification is counted as the fault suite counts it (faults.py): final with
its reason, delivered ones received, duplicates explained by a counted possible
duplicate.  Redis replication is asynchronous: a record the killed master had not yet
sent to its replica is gone (``lost in failovers``, measured, as in test_cluster.py);
anything else lost, an unexplained duplicate, a notification left in a non-final state,
work left in a queue, the account's TPS exceeded by more than 5 % in a 1 s window or its
binds exceeded makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _common import machine, print_json_line, print_table, react_on_asyncio, today  # noqa: E402

from gateway.smpp.receipts import canonical_message_id  # noqa: E402

PROCESSES = 3
SESSIONS_PER_PROCESS = 2
PARTITIONS = 24
# The fault suite's limits: the carrier's 1 s windows may exceed the account's TPS by
# this much (the issue's), and every notification settles within this many seconds after
# the carrier has had the last one (receipts time out after 20 s, leases after 5 s).
WINDOW_OVER_LIMIT = 0.05
SETTLE_AFTER_SECONDS = 120.0


async def soak(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from redis.crc import key_slot

    from gateway.push.state import FINAL_STATES
    from tests.integration.cluster_run import SYSTEM_ID, ClusterRun
    from tests.integration.faults import CMCC_PREFIXES, workload

    carrier = {"tps_limit": 5000, "account_tps": args.account_tps,
               "max_binds": PROCESSES * SESSIONS_PER_PROCESS, "bind_lease_seconds": 5.0,
               "sessions": SESSIONS_PER_PROCESS}
    push = {"lease_seconds": args.lease_seconds, "max_in_flight": 300, "receipt_timeout_seconds": 20,
            "intake_wait_replicas": args.intake_wait_replicas, "delivery_wait_replicas": args.delivery_wait_replicas}
    faults: list[dict[str, Any]] = []

    async with ClusterRun(directory, gateways=PROCESSES, partitions=PARTITIONS, carrier=carrier, push=push) as run:
        assert run.simulator is not None
        notifications = workload("soak", args.n, CMCC_PREFIXES)
        restarts: list[asyncio.Future[None]] = []

        def at(fraction: float) -> str:
            return f"{round(fraction * 100)} %"

        def kill_gateway(index: int, fraction: float) -> Any:
            async def action() -> None:
                await run.kill_gateway(index)
                faults.append({"at": at(fraction), "fault": f"gateway{index} SIGKILLed"})

                async def back() -> None:
                    await asyncio.sleep(args.restart_after)
                    await run.restart_gateway(index)
                    faults.append({"fault": f"gateway{index} started again"})

                restarts.append(asyncio.ensure_future(back()))  # the next faults go on meanwhile
            return action

        def migrate(partition: int, fraction: float) -> Any:
            async def action() -> None:
                slot = key_slot(f"{{p{partition}}}".encode())
                source = run.cluster.owner_of(slot)
                target = next(port for port in run.cluster.master_ports() if port != source)
                moved = await asyncio.to_thread(run.cluster.migrate_slot, slot, target)
                faults.append({"at": at(fraction), "fault": f"slot of partition {partition} migrated",
                               "keys": moved})
            return action

        def kill_master(partition: int, fraction: float) -> Any:
            async def action() -> None:
                port = run.cluster.owner_of(key_slot(f"{{p{partition}}}".encode()))
                started = time.monotonic()
                await asyncio.to_thread(run.cluster.kill, port)
                await asyncio.to_thread(run.cluster.wait_for_new_master_of, port)
                promoted = time.monotonic() - started
                await asyncio.to_thread(run.cluster.restart, port)
                faults.append({"at": at(fraction), "fault": f"master of partition {partition} SIGKILLed",
                               "promoted_after_s": round(promoted, 1),
                               "rejoined_after_s": round(time.monotonic() - started, 1)})
            return action

        # Rounds spread between 10 % and 85 % of the messages at the carrier, the three
        # faults of a round a third of a round apart; partitions differ from round to round.
        milestones = []
        span = 0.75 / args.rounds
        for r in range(args.rounds):
            start = 0.10 + r * span
            milestones += [(start, kill_gateway(r % PROCESSES, start)),
                           (start + span / 3, migrate((7 * r + 3) % PARTITIONS, start + span / 3)),
                           (start + 2 * span / 3, kill_master((5 * r + 11) % PARTITIONS, start + 2 * span / 3))]
        started = time.monotonic()
        await run.enqueue(notifications)
        await run.wait_settled(notifications, milestones=milestones,
                               timeout_seconds=args.n * 1.67 / args.account_tps * 3 + SETTLE_AFTER_SECONDS)
        elapsed = time.monotonic() - started
        await asyncio.gather(*restarts)
        tally = await run.tally(notifications)
        leftovers = await run.leftovers()
        unconfirmed = await _unconfirmed(run, notifications)
        rates = await asyncio.to_thread(run.simulator.stats)
        windows = [count for _, count in await asyncio.to_thread(run.simulator.windows, SYSTEM_ID)]
        alive = [await run.answers(d) for d in run.daemons]
        stopped = [await run.stop_gateway(d) for d in run.live_daemons()]

    lost_in_failovers = tally.states.get("none", 0)
    peak = rates["peak_submits_per_second"].get(SYSTEM_ID, 0)
    peak_binds = rates["peak_binds_by_system_id"].get(SYSTEM_ID, 0)
    broken = []
    if tally.lost != lost_in_failovers:
        broken.append(f"lost otherwise than in a failover: {tally.lost - lost_in_failovers} "
                      f"(e.g. {tally.lost_examples})")
    if tally.unexplained_duplicates:
        broken.append(f"{tally.unexplained_duplicates} duplicates without a counted possible duplicate")
    if not_final := {s: c for s, c in tally.states.items() if s != "none" and s not in FINAL_STATES}:
        broken.append(f"not final: {not_final}")
    if any(leftovers.values()):
        broken.append(f"work left in Redis: {leftovers}")
    if peak > args.account_tps * (1 + WINDOW_OVER_LIMIT):
        broken.append(f"peak {peak} submit_sm/s over the account's {args.account_tps} + 5 %")
    if peak_binds > PROCESSES * SESSIONS_PER_PROCESS:
        broken.append(f"{peak_binds} binds over the account's {PROCESSES * SESSIONS_PER_PROCESS}")
    if not all(alive) or None in stopped:
        broken.append(f"gateways answering {alive}, exit codes on SIGTERM {stopped}")
    return {"notifications": args.n, "rounds": args.rounds, "seconds": round(elapsed, 1),
            "intake_wait_replicas": args.intake_wait_replicas,
            "delivery_wait_replicas": args.delivery_wait_replicas, "lease_seconds": args.lease_seconds,
            "account_tps": args.account_tps,
            "delivered": tally.delivered, "states": tally.states, "lost_in_failovers": lost_in_failovers,
            "lost_otherwise": tally.lost - lost_in_failovers, "duplicated": tally.duplicated,
            "possible_duplicates_counted": tally.possible_duplicates,
            "unexplained_duplicates": tally.unexplained_duplicates, "leftovers": leftovers,
            "unconfirmed": unconfirmed,
            "peak_submits_per_second": peak, "submits_per_second_windows": windows,
            "receipts_redelivered_by_the_carrier": rates.get("receipts_redelivered"), "peak_binds": peak_binds,
            "faults": faults,
            "broken": broken, "ok": not broken}


async def _unconfirmed(run: Any, notifications: list[Any]) -> dict[str, Any]:
    """The notifications that ended unconfirmed (no receipt within the receipt timeout):
    their errors and partitions, when they were submitted (5 s buckets from the first
    submit of the run) and, for those whose receipt came later, how late."""
    ids = [n.id for n in notifications]
    rows = await run.states(ids, ("state", "error", "late_receipt_at", "submitted_at", "carrier", "message_ids"))
    first_submit = min(float(row[3]) for row in rows if row[3])
    by_partition: dict[int, int] = {}
    errors: dict[str, int] = {}
    submitted: dict[int, int] = {}
    delays = []
    # Where each one's receipt went: its part 1's message-id index entry (lost with a
    # master?), the receipt parked as early (it came before an entry that never did).
    first_parts: list[tuple[str, str]] = []
    for notification_id, (state, error, late_receipt_at, submitted_at, carrier, message_ids) in zip(
            ids, rows, strict=True):
        if state != "unconfirmed":
            continue
        if carrier and message_ids:
            first_parts.append((carrier, canonical_message_id(message_ids.split()[0])))
        partition = run.keys.partition_of(notification_id)
        by_partition[partition] = by_partition.get(partition, 0) + 1
        errors[error or ""] = errors.get(error or "", 0) + 1
        if submitted_at:
            bucket = int((float(submitted_at) - first_submit) // 5 * 5)
            submitted[bucket] = submitted.get(bucket, 0) + 1
            if late_receipt_at:
                delays.append(float(late_receipt_at) - float(submitted_at))
    delays.sort()
    indexed = parked = 0
    if first_parts:
        client = run.client
        async with client.pipeline(transaction=False) as pipe:
            for carrier, message_id in first_parts:
                pipe.exists(run.keys.message_id(carrier, message_id))
                pipe.exists(run.keys.early_receipt(carrier, message_id))
            found = await pipe.execute()
        indexed, parked = sum(found[0::2]), sum(found[1::2])
    async with run.client.pipeline(transaction=False) as pipe:
        for part in run.keys.all_partitions:
            pipe.xlen(part.deferred_receipts)
        deferred_left = sum(await pipe.execute())
    return {"count": sum(by_partition.values()), "late_receipts": len(delays), "errors": errors,
            "index_entry_of_part_1": {"present": indexed, "missing": len(first_parts) - indexed},
            "receipt_parked_as_early": parked, "deferred_receipts_left": deferred_left,
            "by_partition": dict(sorted(by_partition.items())),
            "submitted_seconds_into_run": dict(sorted(submitted.items())),
            "late_receipt_after_submit_s": ({"min": round(delays[0], 1), "median": round(delays[len(delays) // 2], 1),
                                             "max": round(delays[-1], 1)} if delays else None)}


async def main(args: argparse.Namespace) -> int:
    if args.keep:  # configs, gateway logs, Redis data and nodes.conf stay for a look
        result = await soak(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-soak-") as directory:
            result = await soak(args, Path(directory))
    print_table(["fault", "at (messages at the carrier)", "figures"],
                [[f["fault"], f.get("at", ""), ", ".join(f"{k} {v}" for k, v in f.items() if k not in ("fault", "at"))]
                 for f in result["faults"]])
    print_table(["notifications", "seconds", "delivered", "lost in failovers", "lost otherwise", "duplicated",
                 "possible dup. counted", "unexplained dup.", "peak submit/s", "account TPS", "peak binds", "ok"],
                [[result["notifications"], result["seconds"], result["delivered"], result["lost_in_failovers"],
                  result["lost_otherwise"], result["duplicated"], result["possible_duplicates_counted"],
                  result["unexplained_duplicates"], result["peak_submits_per_second"], result["account_tps"],
                  result["peak_binds"], "yes" if result["ok"] else "NO"]])
    print("states:", json.dumps(result["states"]))
    print("unconfirmed:", json.dumps(result["unconfirmed"]))
    for problem in result["broken"]:
        print("BROKEN:", problem)
    print_json_line({"benchmark": "cluster_soak", "date": today(), "machine": machine(),
                     "setup": {"processes": PROCESSES, "partitions": PARTITIONS,
                               "cluster": "3 masters + 3 replicas, appendonly everysec",
                               "restart_after_seconds": args.restart_after}, **result})
    return 0 if result["ok"] else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000, help="notifications (60,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of faults (3)")
    parser.add_argument("--account-tps", type=int, default=1200,
                        help="the account's fleet-wide submit_sm/s (1,200: what this 2-core machine carries "
                             "through the Cluster with room to spare)")
    parser.add_argument("--restart-after", type=float, default=5.0,
                        help="seconds a SIGKILLed gateway stays down (5: one lease)")
    parser.add_argument("--intake-wait-replicas", type=int, default=0, choices=(0, 1),
                        help="push.intake_wait_replicas (0)")
    parser.add_argument("--delivery-wait-replicas", type=int, default=0, choices=(0, 1),
                        help="push.delivery_wait_replicas (0)")
    parser.add_argument("--lease-seconds", type=float, default=5.0,
                        help="push.lease_seconds (5: a killed gateway's claims come back soon; the default is 30)")
    parser.add_argument("--keep", default="", metavar="DIR",
                        help="run in DIR (new or empty) and keep configs, logs and Redis data there")
    args = parser.parse_args(argv)
    if args.n < 1000 or args.rounds < 1:
        parser.error("--n at least 1000, --rounds at least 1")
    return args


def run(argv: list[str] | None = None) -> None:
    args = parse(argv)
    react_on_asyncio(lambda: main(args))


if __name__ == "__main__":
    run()
