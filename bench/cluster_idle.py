"""What an idle gateway costs Redis: one `gateway run` process with no traffic, on the
3-master Redis Cluster (24 partitions, as bench/cluster.py) and on a single redis-server;
Redis commands per second by command and Redis CPU per second; a table, then one JSON line.

    .venv/bin/python bench/cluster_idle.py                  # 10 s per row
    .venv/bin/python bench/cluster_idle.py --seconds 5 --rows c1

Set-up: the rows of bench/cluster.py (its ``single`` and ``c1`` runs: carrier simulator,
one carrier account of 2 sessions), started and left alone until partition ownership has
settled, then ``--warmup-seconds`` more (start-up work: consumer groups, first claims);
then INFO commandstats and INFO cpu of every master are read before and after
``--seconds``.  The difference is what the gateway's background loops (intake reads, MO
reads, dispatch idle polls, ownership heartbeats, housekeeping, fleet status, TPS/bind
leases) cost while nothing happens: a fixed cost per second that bench/cluster.py's
per-message figures include over the seconds of a row.  The benchmark's own INFO reads
(one per master per sample) are left out of the counts.
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

from _common import machine, print_json_line, print_table, today  # noqa: E402

TOP_COMMANDS = 12  # the table shows the busiest; the JSON line has them all


def _stats(ports: list[int]) -> tuple[dict[str, int], float]:
    """Calls per command summed over the nodes, and their CPU seconds (user+sys)."""
    from gateway.store.local_cluster import command

    calls: dict[str, int] = {}
    cpu = 0.0
    for port in ports:
        for line in command(port, "info", "commandstats").splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, rest = line[len("cmdstat_"):].partition(":")
            fields = dict(item.split("=", 1) for item in rest.split(","))
            calls[name] = calls.get(name, 0) + int(fields["calls"])
        for line in command(port, "info", "cpu").splitlines():
            key, _, value = line.partition(":")
            if key in ("used_cpu_sys", "used_cpu_user"):
                cpu += float(value)
    return calls, cpu


async def one_row(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from cluster import _ownership_settled, _single_redis_run

    from tests.integration.cluster_run import ClusterRun

    carrier = {"tps_limit": 500, "sessions": 2, "account_tps": 1500, "max_binds": 6}
    if name == "single":
        run: Any = _single_redis_run(directory, gateways=1, carrier=carrier, push={})
    else:
        run = ClusterRun(directory, gateways=1, partitions=args.partitions, carrier=carrier, push={})
    async with run:
        await _ownership_settled(run, 1)
        await asyncio.sleep(args.warmup_seconds)
        if name == "single":
            masters = [run.server.port]
        else:
            masters = await asyncio.to_thread(run.cluster.master_ports)
        before, cpu_before = await asyncio.to_thread(_stats, masters)
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        after, cpu_after = await asyncio.to_thread(_stats, masters)
        elapsed = time.monotonic() - started
    # The two INFO reads per master of one sample: `info` counted once per node per sample.
    deltas = {c: after.get(c, 0) - before.get(c, 0) for c in after}
    deltas["info"] = deltas.get("info", 0) - 2 * len(masters)
    per_second = {c: round(d / elapsed, 1) for c, d in sorted(deltas.items(), key=lambda kv: -kv[1]) if d > 0}
    return {"row": name, "redis": "single" if name == "single" else "cluster",
            "partitions": 1 if name == "single" else args.partitions, "seconds": round(elapsed, 1),
            "commands_per_second": round(sum(deltas.values()) / elapsed, 1),
            "by_command_per_second": per_second,
            "redis_masters_cpu_ms_per_second": round((cpu_after - cpu_before) / elapsed * 1000, 2)}


async def main(args: argparse.Namespace) -> None:
    rows = []
    for name in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as directory:
            rows.append(await one_row(name, args, Path(directory)))
            print(f"cluster_idle: {name}: {rows[-1]['commands_per_second']} commands/s", file=sys.stderr)
    print_table(["row", "partitions", "seconds", "commands/s", "masters CPU ms/s", "busiest commands (calls/s)"],
                [[r["row"], r["partitions"], r["seconds"], r["commands_per_second"],
                  r["redis_masters_cpu_ms_per_second"],
                  " ".join(f"{c}={v}" for c, v in list(r["by_command_per_second"].items())[:TOP_COMMANDS])]
                 for r in rows])
    print_json_line({"benchmark": "cluster_idle", "date": today(), "machine": machine(),
                     "setup": {"gateways": 1, "traffic": "none", "seconds": args.seconds,
                               "warmup_seconds": args.warmup_seconds, "partitions": args.partitions},
                     "runs": rows})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row (10)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="seconds left alone after ownership settled, before measuring (3)")
    parser.add_argument("--rows", default="single,c1", help="rows: single (single redis-server), c1 (Cluster)")
    parser.add_argument("--partitions", type=int, default=24, help="push.partitions on the Cluster (24)")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    if unknown := [r for r in args.rows if r not in ("single", "c1")]:
        parser.error(f"unknown rows {unknown}; choose from single, c1")
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
