"""Fleet-wide carrier limits: 1, 2 and 3 `gateway run` processes sharing one Redis and one
carrier account whose TPS is the limit, metered at the carrier simulator.

    .venv/bin/python bench/fleet_limits.py                 # share 1,500/s per process, 10 s a row
    .venv/bin/python bench/fleet_limits.py --quick         # share 300/s, 3 s a row (the smoke test)
    .venv/bin/python bench/fleet_limits.py --redis-url redis://127.0.0.1:7000/0   # an existing Redis

Set-up (the benchmark's theory of operation)
--------------------------------------------
* redis-server (`RedisServerProcess`, append-only as in production) on a free port, or
  ``--redis-url``; FLUSHALL before each row;
* the carrier simulator in its own process (bench/run_simulator.py ``--no-record-texts``,
  no receipts asked), a fresh one per row so that its peaks are the row's.  It meters
  what a carrier meters: submits per second per system_id in whole seconds of its clock,
  and binds per system_id (``SubmitRateWindows`` in gateway/smpp/simulator.py);
* P gateway processes (P = 1, 2, 3) with one carrier section each: ``tps_limit`` =
  ``--share`` (what one process's binds may send), ``account_tps`` = 3 x share (the
  account's contract, fleet-wide), ``max_binds`` = 3 (one transceiver per process), one-part
  ASCII without receipts (the cheapest message: the limits, not the two cores, should
  bind), ``push.max_in_flight`` 2 x share so that every process has work;
* this process is the load: XADD ``share x P x --seconds`` notifications in pipelined
  batches as soon as every gateway is bound.

Figures per row: **throughput** (messages at the simulator / seconds from its first to its
last, polled every 50 ms), its ratio to one process (target >= 2.7x at 3), the **highest
submits in any 1 s window** at the simulator against the account's TPS (target <= +5 %),
the **most binds** the account held at once (never above max_binds), and CPU seconds of
each gateway and of redis-server.  A table, then one JSON line.

``measure_row`` and ``window_peaks`` are importable (bench/cluster.py may run the same
rows against a Redis Cluster by passing its seed URL).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _common import cpu_seconds, machine, print_json_line, print_table, terminate, today, wait_until  # noqa: E402

from gateway.store.embedded import RedisServerProcess, free_port  # noqa: E402
from tests.fleet.fleet_run import SimulatorProcess  # noqa: E402
from tests.fleet.fleet_run import start_simulator as start_fleet_simulator  # noqa: E402

__all__ = ["measure_row", "window_peaks"]

SYSTEM_ID, PASSWORD = "fleet", "secret"
TEMPLATE_TYPE = "fleet_bench"
TARGETS = {"ratio_at_3": 2.7, "window_over_limit": 0.05}


def start_simulator(workdir: Path) -> SimulatorProcess:
    """The tests' metered simulator (tests/fleet/fleet_run.py) with this bench's account."""
    return start_fleet_simulator(workdir, system_id=SYSTEM_ID, password=PASSWORD)


def window_peaks(stats: dict[str, Any], system_id: str = SYSTEM_ID) -> dict[str, Any]:
    """From a simulator report: the highest submits in a 1 s window, the windows, and the
    most and current binds of ``system_id``."""
    return {
        "peak_window": stats.get("peak_submits_per_second", {}).get(system_id, 0),
        "windows": [count for _, count in stats.get("submits_per_second", {}).get(system_id, [])],
        "peak_binds": stats.get("peak_binds_by_system_id", {}).get(system_id, 0),
        "binds": stats.get("binds_by_system_id", {}).get(system_id, 0),
    }


def gateway_config(redis_url: str, smpp_port: int, http_port: int, workdir: Path, templates: Path, *,
                   link_tps: int, account_tps: int, max_binds: int) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "http": {"listen": f"127.0.0.1:{http_port}", "token": "bench"},
        "carriers": [{
            "name": "fleet", "host": "127.0.0.1", "port": smpp_port, "system_id": SYSTEM_ID,
            "password": PASSWORD, "prefixes": ["138"], "window": 50, "registered_delivery": 0,
            "tps_limit": link_tps, "account_tps": account_tps, "max_binds": max_binds,
            "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 2,
        }],
        "smpp_server": {"enabled": False},
        # About 0.1 s of a process's share in flight: each process claims small batches, so
        # the work spreads over the processes instead of the first one claiming most of it.
        "push": {"templates_file": str(templates), "max_in_flight": max(20, link_tps // 10), "batch_size": 100,
                 "quiet_hours": {"start": "00:00", "end": "00:00"}},
        "ivr": {"fastagi": {"enabled": False}, "menus_file": str(REPO / "config" / "ivr.yaml"),
                "sounds_dir": str(workdir / "sounds")},
        "ami": {"enabled": False},
        "logging": {"format": "json", "level": "info"},
        "state_dir": str(workdir / "state"),
        "drain_timeout_seconds": 5,
    }


def _ready(process: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"a gateway exited with {process.returncode}; see {log}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def account_metrics(http_port: int) -> dict[str, float]:
    """The fleet limiter's counters from a gateway's /metrics (summed over labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out = {"slots_spent": 0.0, "slots_dropped": 0.0, "reservations": 0.0}
    for line in text.splitlines():
        if line.startswith("gateway12123_account_slots_total{"):
            key = "slots_spent" if 'outcome="spent"' in line else "slots_dropped"
            out[key] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("gateway12123_account_reservations_total{"):
            out["reservations"] += float(line.rsplit(" ", 1)[1])
    return out


def xadd_all(redis_url: str, count: int, batch: int = 1000) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        for first in range(0, count, batch):
            with client.pipeline(transaction=False) as pipe:
                for i in range(first, min(count, first + batch)):
                    pipe.xadd("12123:notify", {"type": TEMPLATE_TYPE, "to": f"138{i:08d}",
                                               "params": json.dumps({"n": str(i)})})
                pipe.execute()
    finally:
        client.close()


def measure_row(redis_url: str, workdir: Path, processes: int, *, share: int, seconds: float,
                redis_pid: int | None = None, max_processes: int = 3, link_factor: float = 1.0,
                fleet_limits: bool = True, account_tps: int = 0) -> dict[str, Any]:
    """One row: ``processes`` gateways on ``redis_url``; the account's TPS is
    ``share * max_processes``, each process's binds may send ``share * link_factor``
    (above 1: only the account's limit holds the fleet).  ``fleet_limits`` False leaves
    account_tps and max_binds out of the config (the baseline).  Returns the row's figures."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    account_tps = account_tps or share * max_processes
    link_tps = int(share * link_factor)
    messages = int(min(account_tps, link_tps * processes) * seconds)
    templates = workdir / "templates.yaml"
    templates.write_text(yaml.safe_dump({"signature": "12123:", "types": {TEMPLATE_TYPE: {
        "text": "12123: fleet benchmark message {n}", "params": ["n"], "priority": "normal",
        "quiet_hours": False, "validity": "1d"}}}), encoding="utf-8")
    simulator = start_simulator(workdir)
    gateways: list[tuple[subprocess.Popen[bytes], int, Path]] = []
    try:
        for k in range(processes):
            port = free_port()
            config = workdir / f"gateway-{processes}-{k}.yaml"
            config.write_text(yaml.safe_dump(gateway_config(
                redis_url, simulator.smpp_port, port, workdir, templates, link_tps=link_tps,
                account_tps=account_tps if fleet_limits else 0,
                max_binds=max_processes if fleet_limits else 0)), encoding="utf-8")
            log = workdir / f"gateway-{processes}-{k}.log"
            with open(log, "wb") as out:
                gateways.append((subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)],
                                                  cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT), port, log))
        for process, port, log in gateways:
            wait_until(lambda p=process, q=port, lg=log: _ready(p, q, lg), 90, "a gateway to bind")  # type: ignore[misc]
        cpu_before = [cpu_seconds(p.pid) for p, _, _ in gateways]
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        xadd_all(redis_url, messages)
        first_at = last_at = 0.0
        deadline = time.monotonic() + seconds * 4 + 60
        while time.monotonic() < deadline:
            accepted = simulator.stats()["accepted"]
            now = time.monotonic()
            if accepted and not first_at:
                first_at = now
            if accepted >= messages:
                last_at = now
                break
            time.sleep(0.05)
        stats = simulator.stats()
        limiter = {"slots_spent": 0.0, "slots_dropped": 0.0, "reservations": 0.0}
        for _, port, _ in gateways:
            for key, value in account_metrics(port).items():
                limiter[key] += value
        cpu = [round(cpu_seconds(p.pid) - before, 2) for (p, _, _), before in zip(gateways, cpu_before, strict=True)]
        redis_cpu = round(cpu_seconds(redis_pid) - redis_before, 2) if redis_pid else None
    finally:
        for process, _, _ in gateways:
            terminate(process)
        simulator.stop()
    peaks = window_peaks(stats)
    elapsed = (last_at - first_at) if last_at else float("nan")
    return {
        "processes": processes,
        "messages": messages,
        "at_simulator": stats["accepted"],
        "complete": bool(last_at),
        "throughput_per_second": round(stats["accepted"] / elapsed, 1) if last_at and elapsed > 0 else None,
        "account_tps": account_tps,
        "link_tps": link_tps,
        "fleet_limits": fleet_limits,
        "peak_window": peaks["peak_window"],
        "peak_window_over_limit": round(peaks["peak_window"] / account_tps - 1, 4),
        "windows": peaks["windows"],
        "peak_binds": peaks["peak_binds"],
        "max_binds": max_processes,
        "gateway_cpu_seconds": cpu,
        # Counted at each reservation: the slots of the last one are not in yet.
        "reservations": int(limiter["reservations"]),
        "reservations_per_1000_submits": round(1000 * limiter["reservations"] / stats["accepted"], 1)
        if stats["accepted"] else None,
        "slots_dropped": int(limiter["slots_dropped"]),
        "redis_cpu_seconds": redis_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=int, default=1500, help="submit_sm/s of one process's binds (tps_limit); "
                        "the account's TPS is three shares")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per row, at the row's full rate")
    parser.add_argument("--processes", default="1,2,3", help="rows, e.g. 1,2,3")
    parser.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    parser.add_argument("--quick", action="store_true", help="share 300/s, 3 s a row")
    parser.add_argument("--account-tps", type=int, default=0,
                        help="the account's TPS (default three shares); far above: the limiter runs but never binds")
    parser.add_argument("--without-limits", action="store_true",
                        help="the same rows without account_tps and max_binds (the baseline: per-link limits only)")
    parser.add_argument("--no-account-row", action="store_true",
                        help="skip the last row (3 processes whose links could send twice their share)")
    args = parser.parse_args(argv)
    if args.quick:
        args.share, args.seconds = 300, 3.0
    rows_wanted = [int(p) for p in args.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        server = None
        redis_url, redis_pid = args.redis_url, None
        if not redis_url:
            server = RedisServerProcess(data_dir=workdir / "redis")
            server.start()
            redis_url = server.url
            redis_pid = server.process.pid if server.process is not None else None
        try:
            most = max(3, max(rows_wanted))
            rows = [measure_row(redis_url, workdir, p, share=args.share, seconds=args.seconds,
                                redis_pid=redis_pid, max_processes=most, fleet_limits=not args.without_limits,
                                account_tps=args.account_tps)
                    for p in rows_wanted]
            if not args.no_account_row:
                # The same fleet with links that could send twice their share: now the
                # account's TPS alone holds it (the GCRA slots, not the per-link buckets).
                rows.append(measure_row(redis_url, workdir, most, share=args.share, seconds=args.seconds,
                                        redis_pid=redis_pid, max_processes=most, link_factor=2.0,
                                        fleet_limits=not args.without_limits))
        finally:
            if server is not None:
                server.stop()
    one = next((r["throughput_per_second"] for r in rows if r["processes"] == 1 and r["link_tps"] == args.share), None)
    for row in rows:
        t = row["throughput_per_second"]
        row["ratio_to_one"] = round(t / one, 2) if one and t else None
    print_table(
        ["processes", "link TPS", "msg/s", "x one", "account TPS", "peak 1 s window", "over limit", "most binds",
         "Redis calls/1000", "slots dropped", "gateway CPU s", "redis CPU s"],
        [(r["processes"], r["link_tps"], r["throughput_per_second"], r["ratio_to_one"], r["account_tps"], r["peak_window"],
          f"{r['peak_window_over_limit'] * 100:+.1f} %", f"{r['peak_binds']}/{r['max_binds']}",
          r["reservations_per_1000_submits"], r["slots_dropped"],
          " ".join(str(c) for c in r["gateway_cpu_seconds"]), r["redis_cpu_seconds"]) for r in rows])
    at_three = next((r for r in rows if r["processes"] == 3 and r["link_tps"] == args.share), None)
    targets = {
        "ratio_at_3": {"target": TARGETS["ratio_at_3"], "value": at_three and at_three["ratio_to_one"],
                       "met": bool(at_three and at_three["ratio_to_one"]
                                   and at_three["ratio_to_one"] >= TARGETS["ratio_at_3"])},
        "window_over_limit": {"target": TARGETS["window_over_limit"],
                              "value": max(r["peak_window_over_limit"] for r in rows),
                              "met": all(r["peak_window_over_limit"] <= TARGETS["window_over_limit"] for r in rows)},
        "binds": {"met": all(r["peak_binds"] <= r["max_binds"] for r in rows)},
    }
    print_json_line({"benchmark": "fleet_limits", "date": today(), "machine": machine(),
                     "setup": {"share": args.share, "seconds": args.seconds, "redis_url_given": bool(args.redis_url),
                               "fleet_limits": not args.without_limits},
                     "rows": rows, "targets": targets})
    return 0 if all(r["complete"] for r in rows) and targets["binds"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
