"""Redis CPU per notification in each ledger script, without the gateway around it.

    .venv/bin/python bench/ledger_scripts.py                      # 10,000 notifications, 3 runs
    .venv/bin/python bench/ledger_scripts.py --events final --no-aof

Set-up: one redis-server (`RedisServerProcess`, append-only file fsynced every second as
in production, unless ``--no-aof``), a `NotificationLedger` on it, and N Chinese
notifications (bench/kannel_rate.py's text, a 2-part message asking a receipt for part 1,
as bench/push_throughput.py's chinese scenario) taken through the four scripts of the hot
path in batches of ``--batch``:

* **accept** (accept.lua): the record, its first state, lane, event;
* **claim** (claim.lua): queued -> submitting, lease, event;
* **submitted** (outcomes.lua, A op): the carrier's message ids, index entry, event;
* **receipt** (outcomes.lua, Y op after the MGET of the index): delivered, event.

Each phase is measured on its own (CONFIG RESETSTAT, then INFO cpu and commandstats
after): redis-server CPU (user + system) per notification, which includes what the
commands' own times do not (Lua, argument handling, the AOF record), and the commands
each script runs per notification.  A first round warms the server up; ``--repeat`` runs
and the lowest figure of each phase is kept (the machine is shared: the least disturbed
run is the closest to the cost).  CPU time, not wall time: the figure is what one Redis
core can carry.

Output: a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import redis.asyncio as aioredis  # noqa: E402
from _common import machine, print_json_line, print_table, today  # noqa: E402
from kannel_rate import CHINESE_TEXT  # noqa: E402

from gateway.push.state import AcceptItem, NotificationLedger, op_accepted, op_receipt  # noqa: E402
from gateway.store.embedded import RedisServerProcess  # noqa: E402
from gateway.store.keys import Keys  # noqa: E402

PHASES = ("accept", "claim", "submitted", "receipt")
RETENTION = 7 * 86_400
VALIDITY = 86_400


async def _cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _aof_bytes(redis: Any) -> int:
    """Bytes written to the append-only file so far (0 without one): what the AOF's
    formatting, write and later rewrite cost grows with."""
    info = await redis.info("persistence")
    return int(info.get("aof_current_size", 0))


async def _round(redis: Any, ledger: NotificationLedger, tag: str, n: int, batch: int) -> dict[str, Any]:
    """One pass of n notifications through the four phases; each phase's figures."""
    ids = [f"stream-{tag}-{k:07d}" for k in range(n)]
    claimed: list[Any] = []

    def item(notification_id: str, k: int) -> AcceptItem:
        now = time.time()
        digits = f"138{k:08d}"
        return AcceptItem(id=notification_id, type="exam_booked", disposition="queue", lane="normal",
                          fields={"to": digits, "params": '{"date":"2026-11-30"}',
                                  "text": CHINESE_TEXT, "channel": "sms", "expires_at": f"{now + VALIDITY:.3f}",
                                  "source": "stream"},
                          entry_id="", expires_at=now + VALIDITY)

    async def accept() -> None:
        for start in range(0, n, batch):
            await ledger.accept([item(i, start + k) for k, i in enumerate(ids[start:start + batch])], now=time.time())

    async def claim() -> None:
        while len(claimed) < n:
            got = await ledger.claim(batch, now=time.time(), lease_seconds=60, quiet_until=0)
            if not got:
                raise RuntimeError(f"claimed {len(claimed)} of {n}")
            claimed.extend(got)

    async def submitted() -> None:
        for start in range(0, n, batch):
            await ledger.apply([op_accepted(c.id, "cmcc", [f"{c.id}-a", f"{c.id}-b"], receipt_parts=1)
                                for c in claimed[start:start + batch]], now=time.time())

    async def receipt() -> None:
        for start in range(0, n, batch):
            await ledger.apply([op_receipt("cmcc", "DELIVRD", "000", [f"{c.id}-a"])
                                for c in claimed[start:start + batch]], now=time.time())

    out: dict[str, Any] = {}
    for name, run in zip(PHASES, (accept, claim, submitted, receipt), strict=True):
        await redis.config_resetstat()
        before, aof_before = await _cpu(redis), await _aof_bytes(redis)
        await run()
        cpu = await _cpu(redis) - before
        aof = await _aof_bytes(redis) - aof_before
        stats = await redis.info("commandstats")
        commands = {key.removeprefix("cmdstat_"): {"usec": round(v["usec"] / n, 2), "calls": round(v["calls"] / n, 3)}
                    for key, v in stats.items() if v["calls"] and key != "cmdstat_config|resetstat"}
        out[name] = {"redis_us": round(1e6 * cpu / n, 1), "aof_bytes": round(aof / n), "commands": commands}
    state = await redis.hget(ledger.keys.notification(ids[-1]), "state")
    if state != "delivered":
        raise RuntimeError(f"{ids[-1]} ended {state!r}, not delivered")
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-scripts-"))  # removed at the end: its AOF grows to ~100 MB
    server = RedisServerProcess(data_dir, appendonly=not args.no_aof)
    server.start()
    redis = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        ledger = NotificationLedger(redis, Keys(), RETENTION, events=args.events)
        await _round(redis, ledger, "warm", min(args.messages, 2000), args.batch)
        runs = [await _round(redis, ledger, f"r{r}", args.messages, args.batch) for r in range(args.repeat)]
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    best = {name: min((r[name] for r in runs), key=lambda p: p["redis_us"]) for name in PHASES}
    return {"benchmark": "ledger_scripts", "date": today(), "machine": machine(),
            "setup": {"messages": args.messages, "batch": args.batch, "events": args.events,
                      "aof": "no" if args.no_aof else "everysec", "repeat": args.repeat,
                      "message": "chinese, 2 parts, receipt on part 1"},
            "phases": best, "total_redis_us": round(sum(p["redis_us"] for p in best.values()), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000, help="notifications per run (10,000)")
    parser.add_argument("--batch", type=int, default=200, help="notifications per script call (200)")
    parser.add_argument("--events", choices=("all", "final", "off"), default="all", help="push.events (all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the lowest figure of each phase is kept (3)")
    parser.add_argument("--no-aof", action="store_true", help="redis-server without the append-only file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    rows = []
    for name in PHASES:
        phase = result["phases"][name]
        top = sorted(phase["commands"].items(), key=lambda kv: -kv[1]["usec"])
        rows.append((name, phase["redis_us"], phase["aof_bytes"], " ".join(f"{k} {v['calls']:g}x {v['usec']:.1f}us" for k, v in top[:6])))
    rows.append(("total", result["total_redis_us"], sum(p["aof_bytes"] for p in result["phases"].values()), ""))
    print_table(("phase", "Redis CPU us/msg", "AOF bytes/msg", "commands per msg (calls, usec; evalsha includes its commands)"), rows)
    print_json_line(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
