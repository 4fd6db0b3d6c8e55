"""What idle gateways cost Redis: one or three `gateway run` processes with no traffic, on
the 3-master Redis Cluster (24 partitions, as bench/cluster.py) and on a single
redis-server, and the servers alone; Redis commands per second by command, Redis CPU per
second and the masters' event-loop wake-ups; a table, then one JSON line.

    .venv/bin/python bench/cluster_idle.py                  # 10 s per row, rows single and c1
    .venv/bin/python bench/cluster_idle.py --seconds 5 --rows c1
    .venv/bin/python bench/cluster_idle.py --rows single0,c0,single3,c3

Set-up: the rows of bench/cluster.py (its ``single``, ``single3``, ``c1`` and ``c3`` runs:
carrier simulator, one carrier account of 2 sessions per process; ``single0`` and ``c0``:
the Redis alone, to show what its own timers and the Cluster's bus cost), started and left alone until partition ownership has
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
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, print_json_line, print_table, react_on_asyncio, today  # noqa: E402

TOP_COMMANDS = 12  # the table shows the busiest; the JSON line has them all
# row: gateway processes, Redis (bench/cluster.py's rows of the same names)
ROWS = {"single": (1, "single"), "c1": (1, "cluster"), "single3": (3, "single"), "c3": (3, "cluster"),
        # no gateway: what the servers cost themselves (their timers; on the Cluster its bus)
        "single0": (0, "single"), "c0": (0, "cluster")}


@contextlib.asynccontextmanager
async def _servers_alone(redis_kind: str, directory: Path) -> AsyncIterator[list[int]]:
    """Only the Redis of a row, started as bench/cluster.py starts it; yields its masters."""
    from gateway.store.embedded import RedisServerProcess
    from gateway.store.local_cluster import LocalRedisCluster
    from tests.integration.cluster_run import PEERS_NICENESS

    server: Any = (RedisServerProcess(data_dir=directory / "redis") if redis_kind == "single"
                   else LocalRedisCluster(directory / "cluster", niceness=PEERS_NICENESS))
    await asyncio.to_thread(server.start)
    try:
        yield ([server.port] if redis_kind == "single" else await asyncio.to_thread(server.master_ports))
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def _row_running(name: str, args: argparse.Namespace, directory: Path) -> AsyncIterator[list[int]]:
    """The row's Redis and gateways, started and settled; yields the masters' ports."""
    from cluster import _ownership_settled, _single_redis_run

    from tests.integration.cluster_run import ClusterRun

    gateways, redis_kind = ROWS[name]
    if not gateways:
        async with _servers_alone(redis_kind, directory) as masters:
            await asyncio.sleep(args.warmup_seconds)
            yield masters
        return
    carrier = {"tps_limit": 500, "sessions": 2, "account_tps": 1500, "max_binds": 6}
    if redis_kind == "single":
        run: Any = _single_redis_run(directory, gateways=gateways, carrier=carrier, push={})
    else:
        run = ClusterRun(directory, gateways=gateways, partitions=args.partitions, carrier=carrier, push={})
    async with run:
        await _ownership_settled(run, gateways)
        await asyncio.sleep(args.warmup_seconds)
        yield [run.server.port] if redis_kind == "single" else await asyncio.to_thread(run.cluster.master_ports)


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
    from cluster import LOOP_COUNTERS, _loop_counters

    gateways, redis_kind = ROWS[name]
    async with _row_running(name, args, directory) as masters:
        before, cpu_before = await asyncio.to_thread(_stats, masters)
        loops_before = await asyncio.to_thread(_loop_counters, masters)
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        after, cpu_after = await asyncio.to_thread(_stats, masters)
        loops_after = await asyncio.to_thread(_loop_counters, masters)
        elapsed = time.monotonic() - started
    # The two INFO reads per master of one sample: `info` counted once per node per sample.
    deltas = {c: after.get(c, 0) - before.get(c, 0) for c in after}
    deltas["info"] = deltas.get("info", 0) - 2 * len(masters)
    per_second = {c: round(d / elapsed, 1) for c, d in sorted(deltas.items(), key=lambda kv: -kv[1]) if d > 0}
    return {"row": name, "gateways": gateways, "redis": redis_kind,
            "partitions": None if not gateways else 1 if redis_kind == "single" else args.partitions,
            "seconds": round(elapsed, 1),
            "masters_loop_per_second": {k: round((loops_after[k] - loops_before[k]) / elapsed, 1)
                                        for k in LOOP_COUNTERS},
            "commands_per_second": round(sum(deltas.values()) / elapsed, 1),
            "by_command_per_second": per_second,
            "redis_masters_cpu_ms_per_second": round((cpu_after - cpu_before) / elapsed * 1000, 2)}


async def main(args: argparse.Namespace) -> None:
    rows = []
    for name in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-idle-") as directory:
            rows.append(await one_row(name, args, Path(directory)))
            print(f"cluster_idle: {name}: {rows[-1]['commands_per_second']} commands/s", file=sys.stderr)
    print_table(["row", "gateways", "partitions", "seconds", "commands/s", "masters CPU ms/s", "wake-ups/s",
                 "busiest commands (calls/s)"],
                [[r["row"], r["gateways"], r["partitions"] or "-", r["seconds"], r["commands_per_second"],
                  r["redis_masters_cpu_ms_per_second"], r["masters_loop_per_second"]["wakeups"],
                  " ".join(f"{c}={v}" for c, v in list(r["by_command_per_second"].items())[:TOP_COMMANDS])]
                 for r in rows])
    print_json_line({"benchmark": "cluster_idle", "date": today(), "machine": machine(),
                     "setup": {"traffic": "none", "seconds": args.seconds,
                               "warmup_seconds": args.warmup_seconds, "partitions": args.partitions},
                     "runs": rows})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row (10)")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="seconds left alone after ownership settled, before measuring (3)")
    parser.add_argument("--rows", default="single,c1",
                        help="rows: single, single3 (1 or 3 gateways on a single redis-server), c1, c3 (on the Cluster), "
                        "single0, c0 (the servers alone)")
    parser.add_argument("--partitions", type=int, default=24, help="push.partitions on the Cluster (24)")
    args = parser.parse_args(argv)
    args.rows = [r for r in args.rows.split(",") if r]
    if unknown := [r for r in args.rows if r not in ROWS]:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args


def run(argv: list[str] | None = None) -> None:
    args = parse(argv)
    react_on_asyncio(lambda: main(args))


if __name__ == "__main__":
    run()
