"""Soak: the fault scenarios of tests/integration/test_faults.py with more work.

    .venv/bin/python bench/soak.py                          # every scenario, default sizes
    .venv/bin/python bench/soak.py drops --n 100000         # one scenario, 100,000 notifications
    .venv/bin/python bench/soak.py kill9 redis --n 20000 --kills 10 --redis-restarts 5
    .venv/bin/python bench/soak.py kill9 --redis embedded   # SIGKILL with the daemon's own Redis

Each scenario runs the real daemon (`gateway run --log-format json`, its own process)
against in-process carrier simulators and a real redis-server, XADDs N notifications and
counts them once they are settled (tests/integration/faults.py has the harness and the
definitions of delivered, failed with a reason, unconfirmed, duplicated and lost).
Prints a table, then one JSON line (bench/_common.py); exits 1 when an invariant broke
(something lost, a copy without a response-unknown submit, a whole number or a traceback
in the log, a FastAGI call left open or unrecorded).  The configs, logs and Redis data
stay under ``--keep DIR`` if given; otherwise in a temporary directory that is removed
when every invariant held and kept, its path printed, when one broke.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _common import machine, print_json_line, print_table, react_on_asyncio, today  # noqa: E402

SCENARIOS = ("drops", "throttle", "kill9", "redis", "receipts", "down", "fastagi")
DEFAULT_N = {"drops": 20_000, "throttle": 2000, "kill9": 4000, "redis": 3000, "receipts": 3000, "down": 3000}


async def run_one(name: str, directory: Path, args: argparse.Namespace) -> Any:
    from tests.integration import faults

    n = args.n or DEFAULT_N.get(name, 0)
    # Generous: the slowest scenario (throttling at the AIMD floor) settles ~60/s here.
    timeout = args.timeout or 120 + n / 40
    if name == "drops":
        return await faults.scenario_link_drops(directory, n, drop_after_pdus=args.drop_after_pdus,
                                                timeout_seconds=timeout)
    if name == "throttle":
        return await faults.scenario_throttling(directory, n, throttle_rate=args.throttle_rate,
                                                timeout_seconds=timeout)
    if name == "kill9":
        return await faults.scenario_gateway_killed(directory, n, kills=args.kills, timeout_seconds=timeout,
                                                    redis=args.redis)
    if name == "redis":
        return await faults.scenario_redis_restart(directory, n, restarts=args.redis_restarts,
                                                   timeout_seconds=timeout)
    if name == "receipts":
        return await faults.scenario_odd_receipts(directory, n, receipt_rate=args.receipt_rate,
                                                  timeout_seconds=timeout, stray_receipts=args.stray_receipts,
                                                  early_receipts_max=args.early_receipts_max)
    if name == "down":
        return await faults.scenario_carrier_down(directory, n, timeout_seconds=timeout)
    return await faults.scenario_fastagi_hangups(directory, calls=args.calls)


async def soak(args: argparse.Namespace) -> int:
    from tests.integration.faults import CallsTally, violations

    # Without --keep the work directory goes when every invariant held: its Redis data and
    # logs are about 100 MB at the default sizes and grow with --n.  When one broke, it stays
    # for the logs, and its path is printed.
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="soak-"))
    results: list[Any] = []
    broken: dict[str, list[str]] = {}
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    for round_number in range(args.repeat):
        for name in args.scenarios:
            directory = base / f"{name}-{round_number}"
            result = await run_one(name, directory, args)
            print(result.line(), file=sys.stderr, flush=True)
            results.append((name, result))
            problems = violations(result)
            if problems:
                broken[f"{name}-{round_number}"] = problems

    rows = []
    for name, r in results:
        if isinstance(r, CallsTally):
            rows.append([name, r.calls, r.recorded, "-", "-", "-", "-", len(r.unrecorded) + r.unfinished,
                         round(r.elapsed_seconds, 1), "-", f"abrupt={r.abrupt} normal_call={r.normal_call_outcome}"])
        else:
            rate = r.accepted / r.elapsed_seconds if r.elapsed_seconds else 0.0
            faults = ", ".join(f"{k}={v}" for k, v in r.faults.items() if k != "restart_to_ready_seconds")
            rows.append([name, r.accepted, r.delivered, r.failed_total, r.unconfirmed, r.duplicated,
                         r.response_unknown, r.lost, round(r.elapsed_seconds, 1), round(rate, 1), faults])
    print_table(["scenario", "accepted", "delivered", "failed", "unconfirmed", "duplicated",
                 "response unknown", "lost", "seconds", "per s", "faults injected"], rows)
    if broken:
        for what, problems in broken.items():
            print(f"BROKEN {what}: {'; '.join(problems)}")
        print(f"soak: configs, logs and Redis data kept in {base}", file=sys.stderr)
    elif not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print_json_line({
        "benchmark": "soak", "date": today(), "machine": machine(), "load_average_before": load_before,
        "seconds": round(time.monotonic() - started, 1), "ok": not broken, "broken": broken,
        "results": [r.as_json() for _, r in results],
    })
    return 1 if broken else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--n", type=int, default=0, help="notifications per SMS scenario (default: the test sizes)")
    parser.add_argument("--calls", type=int, default=100, help="FastAGI calls")
    parser.add_argument("--repeat", type=int, default=1, help="run the list this many times")
    parser.add_argument("--drop-after-pdus", type=int, default=500)
    parser.add_argument("--throttle-rate", type=float, default=0.33)
    parser.add_argument("--receipt-rate", type=float, default=0.5)
    parser.add_argument("--stray-receipts", type=int, default=0,
                        help="receipts scenario: with each receipt, N of another account's")
    parser.add_argument("--early-receipts-max", type=int, default=1_000_000,
                        help="receipts scenario: push.early_receipts_max")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--redis", choices=("external", "embedded"), default="external",
                        help="kill9: an external redis-server, or the daemon's embedded one (taken over by the restart)")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds a scenario may take to settle")
    parser.add_argument("--keep", default="", metavar="DIR", help="keep configs, logs and Redis data under DIR")
    args = parser.parse_args()
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    args.scenarios = args.scenarios or list(SCENARIOS)

    react_on_asyncio(lambda: soak(args))


if __name__ == "__main__":
    main()
