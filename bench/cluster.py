"""Notifications per second through 1, 2 and 3 `gateway run` processes on a 3-master Redis
Cluster (3 replicas), with the carrier simulator; a table, then one JSON line.

Each row starts a fresh cluster (gateway/store/local_cluster.py), the simulator (in this
process) and the gateways (push.partitions 16, one carrier account, 2 binds per process),
XADDs the workload of tests/integration/faults.py (codes, Chinese two-part cancellations,
Chinese two-part reminders: receipts on) to the partitions' intake streams, and waits
until every notification is final.  Columns:

* msg/s: notifications final (delivered) per second, from the first XADD to the last;
* CPU s per process: each gateway's user+system CPU over the run (/proc);
* Redis us/msg: CPU of all six redis-server nodes (INFO cpu, user+sys) per notification;
* peak submit/s: the highest number of submit_sm the simulator took in any 1 s window, for
  the account, against the TPS limit (carriers[].tps_limit per process; a fleet-wide
  limiter is w11-fleet's); peak binds: the most sessions the account held at once;
* lost, duplicated: as the fault suite counts them (none expected).

Usage: python bench/cluster.py [--quick] [-n N] [--processes 1,2,3] [--tps-limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import cpu_seconds, machine, print_json_line, print_table, today  # noqa: E402


def _redis_cpu(ports: list[int]) -> float:
    from gateway.store.local_cluster import command

    total = 0.0
    for port in ports:
        for line in command(port, "info", "cpu").splitlines():
            name, _, value = line.partition(":")
            if name in ("used_cpu_sys", "used_cpu_user"):
                total += float(value)
    return total


async def one_row(processes: int, n: int, tps_limit: int, directory: Path, wait_replicas: int = 0) -> dict[str, Any]:
    from tests.integration.cluster_run import ClusterRun
    from tests.integration.faults import CMCC_PREFIXES, workload

    async with ClusterRun(directory, gateways=processes, carrier={"tps_limit": tps_limit},
                          push={"intake_wait_replicas": wait_replicas}) as run:
        assert run.simulator is not None
        notifications = workload(f"b{processes}", n, CMCC_PREFIXES)
        ports = [node.port for node in run.cluster.nodes]
        pids = [d.process.pid for d in run.daemons if d.process is not None]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        redis_before = await asyncio.to_thread(_redis_cpu, ports)
        started = time.monotonic()
        await run.enqueue(notifications)
        await run.wait_settled(notifications, timeout_seconds=max(120.0, n / 20))
        elapsed = time.monotonic() - started
        cpu = [round(cpu_seconds(pid) - before, 2) for pid, before in zip(pids, cpu_before, strict=True)]
        redis_cpu = await asyncio.to_thread(_redis_cpu, ports) - redis_before
        tally = await run.tally(notifications)
        rates = run.simulator.rates.report()
        return {
            "processes": processes, "messages": n, "seconds": round(elapsed, 1),
            "throughput_per_second": round(tally.final / elapsed, 1),
            "gateway_cpu_seconds_each": cpu,
            "redis_cpu_seconds": round(redis_cpu, 2),
            "redis_usec_per_message": round(redis_cpu / n * 1e6, 1),
            "peak_submits_per_second": max(rates["peak_submits_per_second"].values(), default=0),
            "tps_limit_per_process": tps_limit,
            "peak_binds_per_account": max(rates["peak_binds_by_system_id"].values(), default=0),
            "intake_wait_replicas": wait_replicas, "lost": tally.lost, "duplicated": tally.duplicated,
            "unexplained_duplicates": tally.unexplained_duplicates,
        }


async def main(args: argparse.Namespace) -> None:
    rows = []
    for processes in args.processes:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
            row = await one_row(processes, args.messages, args.tps_limit, Path(directory), args.intake_wait_replicas)
            print(f"cluster: {processes} process(es): {row['throughput_per_second']}/s, "
                  f"lost {row['lost']}", file=sys.stderr)
            rows.append(row)
    base = rows[0]["throughput_per_second"] if rows else 0
    print_table(
        ["processes", "msgs", "msg/s", "vs 1", "CPU s per process", "Redis us/msg", "peak submit/s",
         "TPS limit/proc", "peak binds", "lost", "dup"],
        [[r["processes"], r["messages"], r["throughput_per_second"],
          round(r["throughput_per_second"] / base, 2) if base else "-",
          " ".join(str(c) for c in r["gateway_cpu_seconds_each"]), r["redis_usec_per_message"],
          r["peak_submits_per_second"], r["tps_limit_per_process"], r["peak_binds_per_account"],
          r["lost"], r["duplicated"]] for r in rows])
    print_json_line({"benchmark": "cluster", "date": today(), "machine": machine(),
                     "setup": {"cluster": "3 masters + 3 replicas, redis-server in cluster mode, appendonly everysec",
                               "partitions": 16, "sessions_per_process": 2, "window": 200,
                               "simulator": "in the benchmark process, receipts after 0.2 s",
                               "workload": "tests/integration/faults.py workload (1/3 codes, 2/3 two-part Chinese)"},
                     "runs": rows, "lost": sum(r["lost"] for r in rows)})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=6000, help="notifications per row (6,000)")
    parser.add_argument("--processes", default="1,2,3", help="rows: gateway processes (1,2,3)")
    parser.add_argument("--tps-limit", type=int, default=5000,
                        help="carriers[].tps_limit of each process (5,000: not the limit)")
    parser.add_argument("--intake-wait-replicas", type=int, default=0,
                        help="push.intake_wait_replicas of the gateways (0: no WAIT)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 notifications per row")
    args = parser.parse_args(argv)
    args.processes = [int(p) for p in args.processes.split(",") if p]
    if args.quick:
        args.messages = 600
    return args


def run(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import task

    from gateway.store.bridge import as_deferred

    task.react(lambda _reactor: as_deferred(main(args)))


if __name__ == "__main__":
    run()
