"""Notifications per second through 1, 2 and 3 `gateway run` processes on a 3-master Redis
Cluster (3 replicas), with the carrier TPS as the limit, against one process on a single
redis-server in the same run; a table, then one JSON line.

    .venv/bin/python bench/cluster.py                   # share 500 submit_sm/s per process, 3,000 per process per row
    .venv/bin/python bench/cluster.py --quick           # smoke run: 300 per process per row
    .venv/bin/python bench/cluster.py --share 0         # no TPS limit (5,000/s per process): what Redis and the cores carry
    .venv/bin/python bench/cluster.py --rows single,c1,c2,c3,shared3
    .venv/bin/python bench/cluster.py --rows single,single3,c3 --repeat 5   # medians of 5 rounds
    .venv/bin/python bench/cluster.py --rows single,c3 --slowlog   # where the masters' script time goes

Set-up (the benchmark's theory of operation)
--------------------------------------------
Each row starts a fresh Redis (tests/integration/cluster_run.py ClusterRun: a
LocalRedisCluster, append-only, or for the ``single`` row one plain redis-server), the
carrier simulator in its own process (bench/run_simulator.py, raised to nice -10 as
root; it meters submit_sm per second per account in whole seconds and binds per account) and P gateways with one carrier account of 2 sessions each:

* ``carriers[].tps_limit`` = ``--share`` (what one process's binds may send), the account's
  fleet-wide ``account_tps`` = 3 x share and ``max_binds`` = 6 (2 per process, 3 processes);
* the workload of tests/integration/faults.py (codes, Chinese two-part cancellations,
  Chinese two-part reminders: 1.67 submit_sm per notification, receipts on), ``-n`` per
  process, XADDed to the partitions' intake streams (or, row ``shared3``, all of it to the
  one shared ``12123:notify`` stream: what a core system that knows no partitions costs);
* ``--partitions`` 24: ownership hands out whole partitions (gateway/push/ownership.py), so
  the busiest of M processes holds ceil(P/M) of P; 24 splits evenly over 1, 2 and 3
  processes (16 over 3 is 6/6/4: the busiest has 37.5 % of the work, 2.67x at best);
* the XADDs start once every partition has an owner and each process holds its share
  (the time that takes after the last start is the row's ``settle s``).

Why a share of 500/s: the 2-core machine carries about 1,700 notifications/s through the
Cluster without a TPS limit (2,800 submit_sm/s); 3 x 500 = 1,500 submit_sm/s (900
notifications/s) leaves it room, so that the carrier TPS and not the cores is the limit
and the 3-process row can show the 3x the account allows.

Columns: msg/s (notifications per second from the first XADD until the carrier has had
every one; their final states are checked after the measurement, not polled during it),
submit/s (the simulator's mean over the whole seconds of the run), its ratio to the
1-process cluster row (target >= 2.7 at 3), each gateway's CPU seconds, Redis CPU per
notification of the masters and of all nodes (INFO cpu, user+sys), the highest submit_sm
in any 1 s window against the account's limit (target <= +5 %), the most binds held, how
long the carrier waited for each receipt's deliver_sm_resp (p50/p99 ms: what
``--delivery-wait-replicas 1`` adds to a carrier's window), lost and duplicated (as the fault suite counts them: none expected).  Last: the cluster's
Redis CPU per message against the single Redis row's (masters; target <= 1.15x), and
with row ``single3`` (3 processes on one redis-server, 1 partition, the account as for
c3) the same fleet on both: c3 / single3.  The 1-process single row runs on a quieter
machine than c3 (one gateway instead of three, one redis-server instead of six), and on
2 cores every command of a busier machine takes longer.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _common import cpu_seconds, machine, print_json_line, print_table, react_on_asyncio, today  # noqa: E402

SESSIONS_PER_PROCESS = 2
FLEET_PROCESSES = 3  # the account is sized for three processes' shares
ROWS = {"single": (1, "single", "partitions"), "single3": (3, "single", "partitions"),
        "c1": (1, "cluster", "partitions"),
        "c2": (2, "cluster", "partitions"), "c3": (3, "cluster", "partitions"),
        "shared3": (3, "cluster", "shared")}
# No owner key after this long: gateways that predate partition ownership (2.5 ticks of
# the default lease).
NO_OWNERSHIP_SECONDS = 5.0
# Receipts come 0.2 s after the submit (the simulator's delay): 1 s more covers their
# recording on a loaded machine without counting much idle time.
RECEIPTS_SECONDS = 1.0
TARGETS = {"ratio_at_3": 2.7, "window_over_limit": 0.05, "cluster_vs_single_redis_cpu": 1.15}


def _redis_cpu(ports: list[int]) -> float:
    from gateway.store.local_cluster import command

    total = 0.0
    for port in ports:
        for line in command(port, "info", "cpu").splitlines():
            name, _, value = line.partition(":")
            if name in ("used_cpu_sys", "used_cpu_user"):
                total += float(value)
    return total


def _loop_counters(ports: list[int]) -> dict[str, int]:
    """What the servers' event loops did, summed over the nodes: wake-ups (the main
    thread's voluntary context switches: each a sleep in epoll_wait ended by work or by the
    server's timer), preemptions (involuntary ones), read and write system calls
    (/proc/<pid>/io: clients, AOF, replication) and the client-socket reads and writes Redis
    counts itself (INFO stats; a replica is a client of its master).  A system call is dear
    on this VM (a PING costs the server 12 us of CPU): these counts show how much of a
    topology's CPU per notification is its loops' fixed cost rather than its scripts."""
    from gateway.store.local_cluster import command

    totals = {"wakeups": 0, "preemptions": 0, "read_syscalls": 0, "write_syscalls": 0,
              "client_reads": 0, "client_writes": 0}
    for port in ports:
        info = dict(line.split(":", 1) for line in command(port, "info", "all").splitlines()
                    if ":" in line and not line.startswith("#"))
        pid = int(info["process_id"])
        io = dict(line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        totals["wakeups"] += int(status["voluntary_ctxt_switches"])
        totals["preemptions"] += int(status["nonvoluntary_ctxt_switches"])
        totals["read_syscalls"] += int(io["syscr"])
        totals["write_syscalls"] += int(io["syscw"])
        totals["client_reads"] += int(info["total_reads_processed"])
        totals["client_writes"] += int(info["total_writes_processed"])
    return totals


LOOP_COUNTERS = ("wakeups", "preemptions", "read_syscalls", "write_syscalls", "client_reads", "client_writes")


def _commandstats(ports: list[int]) -> dict[str, tuple[int, int]]:
    """Per command (calls, usec) summed over the nodes (INFO commandstats)."""
    from gateway.store.local_cluster import command

    stats: dict[str, tuple[int, int]] = {}
    for port in ports:
        for line in command(port, "info", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_"):].partition(":")
                fields = dict(item.split("=", 1) for item in rest.split(","))
                calls, usec = stats.get(name, (0, 0))
                stats[name] = (calls + int(fields["calls"]), usec + int(fields["usec"]))
    return stats


def _script_figures(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                    n: int) -> dict[str, float]:
    """Commands and script calls (EVALSHA/EVAL) per notification, and the mean usec of a
    script call (commandstats' own timing: the script's body, not the I/O around it)."""
    delta = {c: (after[c][0] - before.get(c, (0, 0))[0], after[c][1] - before.get(c, (0, 0))[1]) for c in after}
    scripts = [delta[c] for c in ("evalsha", "eval") if c in delta]
    calls = sum(c for c, _ in scripts)
    busiest = sorted(delta.items(), key=lambda item: -item[1][1])[:8]
    return {"commands_per_message": round(sum(c for c, _ in delta.values()) / n, 2),
            "script_calls_per_message": round(calls / n, 2),
            "script_usec_per_call": round(sum(u for _, u in scripts) / calls, 1) if calls else 0.0,
            # the commands that took most of the masters' command time: calls and usec per notification
            "busiest": {c: [round(calls / n, 2), round(usec / n, 1)] for c, (calls, usec) in busiest}}


# SLOWLOG entries kept per master while --slowlog times a row: a c3 row of 9,000
# notifications logs about 25 commands each (scripts and the commands inside them) over
# three masters, about 75,000 per master; the cap bounds the servers' memory.
SLOWLOG_MAX_ENTRIES = 500_000


def _script_names() -> dict[str, str]:
    """SHA1 of every Lua script the gateway loads (gateway/**/lua/*.lua, helpers in front,
    as gateway/store/scripts.py sends them) -> its file name."""
    import hashlib

    from gateway.store.scripts import LuaFileError, lua_source

    names = {}
    for path in (REPO / "gateway").glob("**/lua/*.lua"):
        try:
            text = lua_source(str(path.parent.parent / "_.py"), path.name)
        except LuaFileError:
            continue
        names[hashlib.sha1(text.encode("utf-8")).hexdigest()] = path.name
    return names


def _slowlog_start(ports: list[int]) -> None:
    """Log every command on these nodes from now on (threshold 0)."""
    from gateway.store.local_cluster import command

    for port in ports:
        command(port, "config", "set", "slowlog-max-len", str(SLOWLOG_MAX_ENTRIES))
        command(port, "config", "set", "slowlog-log-slower-than", "0")
        command(port, "slowlog", "reset")


def _slowlog_scripts(ports: list[int], n: int) -> dict[str, dict[str, float]]:
    """Per script, from the nodes' SLOWLOGs: calls, mean usec per call and usec per
    notification.  SLOWLOG also logs each command a script runs, so durations are
    inflated by its own cost: compare shares, not absolute figures."""
    import redis

    names = _script_names()
    totals: dict[str, list[int]] = {}
    for port in ports:
        client = redis.Redis(port=port)
        try:
            client.config_set("slowlog-log-slower-than", "10000")
            for entry in client.slowlog_get(SLOWLOG_MAX_ENTRIES):
                words = entry["command"].split(b" ")
                if words[0].upper() != b"EVALSHA" or len(words) < 2:
                    continue
                name = names.get(words[1].decode(), words[1].decode()[:12])
                calls_usec = totals.setdefault(name, [0, 0])
                calls_usec[0] += 1
                calls_usec[1] += int(entry["duration"])
        finally:
            client.close()
    return {name: {"calls": calls, "usec_per_call": round(usec / calls, 1), "usec_per_message": round(usec / n, 1)}
            for name, (calls, usec) in sorted(totals.items(), key=lambda item: -item[1][1])}


def _single_redis_run(directory: Path, **options: Any) -> Any:
    """A ClusterRun on one plain redis-server (append-only) with 1 partition."""
    from gateway.store.embedded import RedisServerProcess, free_port
    from gateway.store.service import make_client
    from tests.integration.cluster_run import PASSWORD, PEERS_NICENESS, SYSTEM_ID, ClusterRun
    from tests.integration.daemon import Daemon, write_config
    from tests.integration.faults import CMCC_PREFIXES

    class SingleRedisRun(ClusterRun):
        def __init__(self) -> None:
            super().__init__(directory, partitions=1, **options)
            self.server = RedisServerProcess(data_dir=directory / "redis")

        async def _start(self) -> ClusterRun:
            self.directory.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self.server.start)
            self.simulator = await self.start_simulator()
            self.client = make_client(self.server.url)
            self.daemons = [self._daemon(k) for k in range(self.gateways)]
            await asyncio.gather(*(self.start_gateway(d) for d in self.daemons))
            return self

        def _daemon(self, k: int) -> Daemon:
            assert self.simulator is not None
            carrier = {"name": "cmcc", "host": "127.0.0.1", "port": self.simulator.smpp_port,
                       "system_id": SYSTEM_ID, "password": PASSWORD, "prefixes": list(CMCC_PREFIXES), **self.carrier}
            path = write_config(self.directory / f"gateway{k}", redis={"url": self.server.url}, carriers=[carrier],
                                push={**self.push, "consumer_name": f"gateway{k}"},
                                ivr={"fastagi": {"enabled": False, "listen": f"127.0.0.1:{free_port()}"}})
            return Daemon(path, self.directory / f"gateway{k}" / "gateway.log", extra_args=["--log-format", "json"],
                          niceness=PEERS_NICENESS)

        def _blocking(self) -> Any:
            """A blocking client of the one redis-server, for the harness's threads."""
            import redis

            if self._blocking_client is None:
                self._blocking_client = redis.Redis.from_url(self.server.url, decode_responses=True)
            return self._blocking_client

        async def __aexit__(self, *exc: Any) -> None:
            for daemon in self.daemons:
                if daemon.process is not None and daemon.process.poll() is None:
                    await asyncio.to_thread(daemon.stop, 30.0)
            if self.client is not None:
                await self.client.aclose()
            if self._blocking_client is not None:
                self._blocking_client.close()
            if self.simulator is not None:
                await asyncio.to_thread(self.simulator.stop)
            await asyncio.to_thread(self.server.stop)

    return SingleRedisRun()


async def _ownership_settled(run: Any, processes: int, timeout_seconds: float = 60.0) -> float:
    """Seconds until every partition has an owner, every process holds some and none more
    than its fair share ceil(P/M) (the state ownership converges to)."""
    keys = run.keys
    started = time.monotonic()
    if not keys.partitioned:
        return 0.0
    share = math.ceil(keys.partitions / processes)
    while time.monotonic() - started < timeout_seconds:
        owners = [await run.client.get(part.owner) for part in keys.all_partitions]
        # An owner is its consumer name and a run id (gateway0-3fa9c2: gateway/fleet/names.py).
        consumers = [owner.rsplit("-", 1)[0] for owner in owners if owner]
        counts = {f"gateway{k}": consumers.count(f"gateway{k}") for k in range(processes)}
        if None not in owners and max(counts.values()) <= share and min(counts.values()) > 0:
            return time.monotonic() - started
        if set(owners) == {None} and time.monotonic() - started > NO_OWNERSHIP_SECONDS:
            return -1.0  # gateways from before partition ownership (a before/after run)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"partition ownership did not settle within {timeout_seconds}s: {owners}")


async def _enqueue(run: Any, notifications: list[Any], shared: bool, batch: int = 1000) -> None:
    """XADD each notification to its partition's stream, or all to the shared one."""
    keys = run.keys
    for start in range(0, len(notifications), batch):
        async with run.client.pipeline(transaction=False) as pipe:
            for n in notifications[start:start + batch]:
                stream = keys.notify_stream if shared else keys.partition(keys.partition_of(n.id)).notify_stream
                pipe.xadd(stream, n.stream_fields())
            await pipe.execute()


def _mean_rate(windows: list[tuple[int, int]]) -> float:
    """Submits per second over the whole seconds between the first and the last (the
    partial first and last seconds left out when there are more than two)."""
    if len(windows) > 2:
        windows = windows[1:-1]
    if not windows:
        return 0.0
    span = windows[-1][0] - windows[0][0] + 1
    return sum(count for _, count in windows) / span


async def one_row(name: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from tests.integration.cluster_run import SYSTEM_ID, ClusterRun
    from tests.integration.faults import CMCC_PREFIXES, workload

    processes, redis_kind, intake = ROWS[name]
    share = args.share
    carrier: dict[str, Any] = {"tps_limit": share or 5000, "sessions": SESSIONS_PER_PROCESS}
    account_tps = share * FLEET_PROCESSES
    if share:
        carrier.update(account_tps=account_tps, max_binds=SESSIONS_PER_PROCESS * FLEET_PROCESSES)
    n = args.messages * processes
    push = {"intake_wait_replicas": args.intake_wait_replicas, "delivery_wait_replicas": args.delivery_wait_replicas}
    if redis_kind == "single":
        run = _single_redis_run(directory, gateways=processes, carrier=carrier, push=push)
    else:
        run = ClusterRun(directory, gateways=processes, partitions=args.partitions, carrier=carrier, push=push,
                         replicas_per_master=args.replicas, masters=args.masters)
    async with run:
        assert run.simulator is not None
        settle = await _ownership_settled(run, processes)
        notifications = workload(f"b{name}", n, CMCC_PREFIXES)
        if redis_kind == "single":
            ports = masters = [run.server.port]
        else:
            ports = [node.port for node in run.cluster.nodes]
            masters = await asyncio.to_thread(run.cluster.master_ports)
        pids = [d.process.pid for d in run.daemons if d.process is not None]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        redis_before = await asyncio.to_thread(_redis_cpu, ports)
        masters_before = await asyncio.to_thread(_redis_cpu, masters)
        stats_before = await asyncio.to_thread(_commandstats, masters)
        loops_before = await asyncio.to_thread(_loop_counters, masters)
        if args.slowlog:
            await asyncio.to_thread(_slowlog_start, masters)
        started = time.monotonic()
        received_before = await run.carrier_messages()
        await _enqueue(run, notifications, shared=intake == "shared")
        # Until the carrier has every message (counted in this process: polling Redis for
        # the states would add its own Redis CPU to the figures), then RECEIPTS_SECONDS for
        # the last receipts to be recorded; the states are checked after the measurement.
        deadline = started + max(120.0, n / 20)
        while await run.carrier_messages() - received_before < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        await asyncio.sleep(RECEIPTS_SECONDS)
        cpu = [round(cpu_seconds(pid) - before, 2) for pid, before in zip(pids, cpu_before, strict=True)]
        redis_cpu = await asyncio.to_thread(_redis_cpu, ports) - redis_before
        masters_cpu = await asyncio.to_thread(_redis_cpu, masters) - masters_before
        scripts = _script_figures(stats_before, await asyncio.to_thread(_commandstats, masters), n)
        loops_after = await asyncio.to_thread(_loop_counters, masters)
        slowlog = await asyncio.to_thread(_slowlog_scripts, masters, n) if args.slowlog else None
        await run.wait_settled(notifications, timeout_seconds=max(120.0, n / 20))
        tally = await run.tally(notifications)
        rates = await asyncio.to_thread(run.simulator.stats)
        windows = await asyncio.to_thread(run.simulator.windows, SYSTEM_ID)
        peak = max(rates["peak_submits_per_second"].values(), default=0)
        return {
            "row": name, "processes": processes, "redis": redis_kind, "intake": intake,
            "partitions": run.keys.partitions, "messages": n, "seconds": round(elapsed, 1),
            "ownership_settle_seconds": round(settle, 1),
            "throughput_per_second": round(n / elapsed, 1),
            "submits_per_second": round(_mean_rate(windows), 1),
            "gateway_cpu_seconds_each": cpu,
            "redis_cpu_seconds": round(redis_cpu, 2), "redis_masters_cpu_seconds": round(masters_cpu, 2),
            "redis_usec_per_message": round(redis_cpu / n * 1e6, 1),
            "redis_masters_usec_per_message": round(masters_cpu / n * 1e6, 1),
            **{f"masters_{k}": v for k, v in scripts.items()},
            "masters_scripts_by_slowlog": slowlog,
            "masters_loop_per_message": {k: round((loops_after[k] - loops_before[k]) / n, 2) for k in LOOP_COUNTERS},
            "peak_submits_per_second": peak,
            "tps_limit_per_process": share or 5000, "account_tps": account_tps if share else None,
            "peak_over_account_limit": round(peak / account_tps - 1, 3) if share else None,
            "peak_binds_per_account": max(rates["peak_binds_by_system_id"].values(), default=0),
            "max_binds": SESSIONS_PER_PROCESS * FLEET_PROCESSES if share else None,
            "intake_wait_replicas": args.intake_wait_replicas, "delivery_wait_replicas": args.delivery_wait_replicas,
            # deliver_sm -> deliver_sm_resp as the carrier saw it (what delivery_wait_replicas adds)
            "receipt_answer_ms": rates.get("deliver_sm_answer_times", {}).get("receipt"),
            "lost": tally.lost, "duplicated": tally.duplicated,
            "unexplained_duplicates": tally.unexplained_duplicates,
        }


def _answer_times(figures: dict[str, Any] | None) -> str:
    """"p50/p99" of the carrier's wait for a receipt's deliver_sm_resp, in ms."""
    return f"{figures['p50_ms']}/{figures['p99_ms']}" if figures else "-"


def _round_ratios(by_name: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Masters' CPU per notification of the cluster rows against the single rows of one
    round: c<k> against single, and c3 against single3 (the same fleet on both)."""
    def usec(name: str) -> float:
        return float(by_name[name]["redis_masters_usec_per_message"]) if name in by_name else 0.0

    ratios = {}
    if usec("single"):
        for name, r in by_name.items():
            if r["redis"] == "cluster":
                ratios[name] = round(usec(name) / usec("single"), 2)
    if usec("single3") and usec("c3"):
        ratios["c3_vs_single3"] = round(usec("c3") / usec("single3"), 2)
    return ratios


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of a row whose masters' CPU per notification is the median (the lower
    middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["redis_masters_usec_per_message"])
    return ordered[(len(ordered) - 1) // 2]


async def main(args: argparse.Namespace) -> None:
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(args.repeat):
        # Every other round in reverse order: this VM's speed drifts over minutes, and a
        # row always run first would always get the same share of the drift.
        order = args.rows if number % 2 == 0 else args.rows[::-1]
        by_name_of_round: dict[str, dict[str, Any]] = {}
        for name in order:
            with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
                row = await one_row(name, args, Path(directory))
                row["round"] = number + 1
                print(f"cluster: round {number + 1}: {name}: {row['throughput_per_second']} msg/s, "
                      f"{row['submits_per_second']} submit/s, masters {row['redis_masters_usec_per_message']} us "
                      f"per notification, lost {row['lost']}", file=sys.stderr)
                by_name_of_round[name] = row
        rounds.append(by_name_of_round)
    rows = [_median_run([r[name] for r in rounds]) for name in args.rows]
    by_name = {r["row"]: r for r in rows}
    base = by_name.get("c1", {}).get("submits_per_second") or 0
    print_table(
        ["row", "procs", "redis", "intake", "msgs", "settle s", "msg/s", "submit/s", "vs c1", "CPU s per process",
         "Redis us/msg masters", "all nodes", "peak submit/s", "account limit", "peak binds",
         "receipt answer ms p50/p99", "lost", "dup"],
        [[r["row"], r["processes"], r["redis"], r["intake"], r["messages"], r["ownership_settle_seconds"],
          r["throughput_per_second"], r["submits_per_second"],
          round(r["submits_per_second"] / base, 2) if base else "-",
          " ".join(str(c) for c in r["gateway_cpu_seconds_each"]), r["redis_masters_usec_per_message"],
          r["redis_usec_per_message"], r["peak_submits_per_second"], r["account_tps"] or "-",
          r["peak_binds_per_account"], _answer_times(r["receipt_answer_ms"]), r["lost"], r["duplicated"]]
         for r in rows])
    # Ratios within each round (rows run minutes apart, not hours), then their median.
    per_round = [_round_ratios(r) for r in rounds]
    ratios = {key: sorted(r[key] for r in per_round)[(len(per_round) - 1) // 2] for key in per_round[0]}
    if len(rounds) > 1:
        print(f"Each row: the median of {len(rounds)} rounds (masters us per notification: "
              + "; ".join(f"{name} " + ", ".join(str(r[name]["redis_masters_usec_per_message"]) for r in rounds)
                          for name in args.rows) + ")")

    def told(key: str) -> str:
        each = ", ".join(f"{r[key]}x" for r in per_round)
        return f"{ratios[key]}x" + (f" (median; rounds {each})" if len(per_round) > 1 else "")

    cluster_keys = [key for key in ratios if key != "c3_vs_single3"]
    if cluster_keys:
        print("Redis CPU per message, cluster masters / single Redis: "
              + ", ".join(f"{key} {told(key)}" for key in cluster_keys))
    # The same fleet on both: 3 processes at the same total rate load the 2 cores alike,
    # so what differs is Redis (the 1-process single row runs on a quieter machine).
    if "c3_vs_single3" in ratios:
        print(f"Same fleet (3 processes, same account): c3 / single3 {told('c3_vs_single3')}")
    print("Masters per notification (INFO commandstats): "
          + "; ".join(f"{r['row']} {r['masters_commands_per_message']} commands, "
                      f"{r['masters_script_calls_per_message']} script calls of "
                      f"{r['masters_script_usec_per_call']} us" for r in rows))
    for r in rows:
        print(f"  {r['row']} busiest (calls, usec per notification): "
              + ", ".join(f"{c} {v[0]} {v[1]}" for c, v in r["masters_busiest"].items()))
    print("Masters' event loops per notification (" + ", ".join(LOOP_COUNTERS).replace("_", " ") + "): "
          + "; ".join(f"{r['row']} " + ", ".join(str(r["masters_loop_per_message"][k]) for k in LOOP_COUNTERS)
                      for r in rows))
    for r in rows:
        if r["masters_scripts_by_slowlog"]:
            print(f"  {r['row']} scripts by SLOWLOG (calls, usec per call, usec per notification; inflated "
                  "by SLOWLOG, compare shares): " + ", ".join(
                      f"{name} {v['calls']} {v['usec_per_call']} {v['usec_per_message']}"
                      for name, v in r["masters_scripts_by_slowlog"].items()))
    c3 = by_name.get("c3")
    print_json_line({"benchmark": "cluster", "date": today(), "machine": machine(),
                     "setup": {"cluster": f"{args.masters} masters + {args.masters * args.replicas} replicas, redis-server in cluster mode, appendonly everysec",
                               "single": "one redis-server, appendonly everysec, 1 partition",
                               "partitions": args.partitions, "sessions_per_process": SESSIONS_PER_PROCESS,
                               "share_per_process": args.share, "messages_per_process": args.messages,
                               "simulator": "bench/run_simulator.py in its own process, receipts after 0.2 s",
                               "workload": "tests/integration/faults.py workload (1/3 codes, 2/3 two-part Chinese)"},
                     "targets": TARGETS, "runs": rows, "repeat": args.repeat,
                     "rounds": [list(r.values()) for r in rounds] if len(rounds) > 1 else None,
                     "ratios_per_round": per_round if len(rounds) > 1 else None,
                     "ratio_at_3": round(c3["submits_per_second"] / base, 2) if c3 and base else None,
                     "cluster_vs_single_redis_cpu": ratios,
                     "lost": sum(r["lost"] for r in rows)})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--messages", type=int, default=3000,
                        help="notifications per process per row (3,000: about 10 s at a share of 500 submit_sm/s)")
    parser.add_argument("--rows", default="single,c1,c2,c3,shared3",
                        help="rows: single (1 process, single redis-server), single3 (3 processes on it), "
                             "c1, c2, c3 (processes on the "
                             "Cluster), shared3 (3 processes, everything XADDed to the shared notify stream)")
    parser.add_argument("--share", type=int, default=500,
                        help="submit_sm/s of each process (carriers[].tps_limit); the account gets 3 x share "
                             "(account_tps) and 6 binds (max_binds); 0: no limit (tps_limit 5,000, no account limits)")
    parser.add_argument("--partitions", type=int, default=24, help="push.partitions on the Cluster (24)")
    parser.add_argument("--intake-wait-replicas", type=int, default=0,
                        help="push.intake_wait_replicas of the gateways (0: no WAIT)")
    parser.add_argument("--delivery-wait-replicas", type=int, default=0,
                        help="push.delivery_wait_replicas of the gateways (0: no WAIT)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="replicas per master of the Cluster (1; 0 shows what replication costs the masters)")
    parser.add_argument("--masters", type=int, choices=(1, 3), default=3,
                        help="masters of the Cluster (3; 1, with --replicas 0: cluster mode and partitions "
                             "without sharding, which separates their cost from three servers sharing the cores)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of all rows, every other one in reverse order; each row shows its median "
                             "run, each ratio the median of the rounds' ratios (1)")
    parser.add_argument("--slowlog", action="store_true",
                        help="time each Lua script on the masters by SLOWLOG (threshold 0): calls, usec per call "
                             "and per notification; SLOWLOG's own cost inflates the row's CPU figures")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 notifications per process per row")
    args = parser.parse_args(argv)
    if args.masters == 1 and args.replicas:
        parser.error("--masters 1 needs --replicas 0")
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {sorted(ROWS)}")
    if args.quick:
        args.messages = 300
    if args.partitions < 2:
        parser.error("--partitions: a Redis Cluster needs more than 1")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    assert math.isfinite(args.share)
    return args


def run(argv: list[str] | None = None) -> None:
    args = parse(argv)
    react_on_asyncio(lambda: main(args))


if __name__ == "__main__":
    run()
