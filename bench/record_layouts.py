"""What a columnar notification record would cost Redis, against the gateway's own.

    .venv/bin/python bench/record_layouts.py                  # 10,000 notifications, 3 runs, CPU time
    .venv/bin/python bench/record_layouts.py --instructions   # instructions (callgrind), ~10 min

Issue 11 asks for half of round 1's Redis CPU per Chinese notification.  The fifteenth
stop (docs/benchmarks.md) showed that the gateway's record, a hash per notification written
field by field, cannot get there however its steps are run: the writes and reads
themselves, without Lua, cost 0.60 of its scripts.  This bench measures the other way, a
record with fewer commands: per partition one hash of bodies (the request, written once,
opaque to Redis), one hash of mutable states (fixed fields joined by TAB, each state's
time kept), one hash for the message-id index and a sorted set of retention ends swept in
batches, so that each phase of a batch is a few variadic commands instead of a few per
notification.  The events stream is the gateway's (push.events all: an entry per state
change, the same fields).  Its scripts are bench/lua/columnar_*.lua, with the same
guarantees on the hot path as the gateway's (idempotent accept; claim only what is
queued, under a token; a submit recorded only for what is submitting; a receipt applied
only before a final state and only for the number it names).  It is not the gateway's
ledger: it has no retries, schedules, dead letters, voice, partners or early receipts.

A third layout, `owner` (bench/owner_record.py), keeps the columnar record and its keys
but has no Lua: the partition's owner reads, then writes in MULTI/EXEC under WATCH of the
partition's epoch, and receipts reach it through an inbox list.

Every layout takes N Chinese notifications (2 parts, receipt on part 1; bench/kannel_rate.py's
text) through accept, claim, submitted and receipt in batches of ``--batch``, each on its
own redis-server (append-only file fsynced every second, as in production), the gateway's
through `NotificationLedger` (bench/ledger_scripts.py's pass).  The columnar one then sweeps
its records as their retention ends would (the gateway's keys expire later, unmeasured);
so does the owner-written one.

Timed mode: redis-server CPU (user + system) per notification in each phase, the lowest of
``--repeat`` runs, Redis memory per notification after the receipts, and the caller's CPU
(this process: Python and redis-py) per notification, all phases together.
``--instructions``: instructions per notification from Valgrind's callgrind at two sizes
(the difference divided by the notifications between them), for the gateway's record and
the columnar and owner-written ones, each with and without its sweep.

Output: a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _common import machine, print_json_line, print_table, today  # noqa: E402
from kannel_rate import CHINESE_TEXT  # noqa: E402
from ledger_scripts import RETENTION, VALIDITY, WARM_UP, _aof_bytes, _cpu, _redis_server_binary  # noqa: E402
from ledger_scripts import _round as gateway_round  # noqa: E402
from owner_record import BucketedOwnerLedger, OwnerLedger  # noqa: E402

from gateway.push.state import NotificationLedger  # noqa: E402
from gateway.store.embedded import RedisServerProcess, find_redis_server  # noqa: E402
from gateway.store.keys import Keys  # noqa: E402
from gateway.store.scripts import lua_source  # noqa: E402
from gateway.store.service import make_client  # noqa: E402

PHASES = ("accept", "claim", "submitted", "receipt")
EVENTS_MAXLEN = 100_000  # the gateway's default push.events_maxlen
LEASE_SECONDS = 60
RECEIPT_TIMEOUT = 172_800  # the gateway's default push.receipt_timeout_seconds
CARRIER = "cmcc"
# lua_source finds bench/lua/<name> through a module "in" bench/.
_ANCHOR = str(BENCH / "record_layouts.py")


class ColumnarLedger:
    """The columnar record's four hot-path steps and its sweep, on one partition."""

    def __init__(self, redis: Any, events: str = "all", prefix: str = "12123:{p0}:") -> None:
        self.redis = redis
        self.maxlen, self.events_mode = str(EVENTS_MAXLEN), events
        self.body, self.state, self.index = prefix + "body", prefix + "state", prefix + "index"
        self.lane, self.sequence, self.expiry = prefix + "lane:normal", prefix + "lane-seq", prefix + "expiry"
        self.inflight, self.awaiting = prefix + "inflight", prefix + "awaiting-receipt"
        self.early, self.events = prefix + "early-receipts-parked", prefix + "events"
        self.prefix = prefix
        self._scripts = {name: redis.register_script(lua_source(_ANCHOR, f"columnar_{name}.lua"))
                         for name in ("accept", "claim", "submitted", "receipt", "sweep")}

    async def accept(self, items: list[dict[str, Any]], now: float) -> list[str]:
        """items: id, type, expires_at, to, fields (the request); returns the duplicates."""
        args: list[Any] = [f"{now:.3f}", self.maxlen, len(items)]
        for item in items:
            args += [item["id"], item["type"], f"{item['expires_at']:.3f}", "0", item["to"][-8:], "",
                     json.dumps(item["fields"], ensure_ascii=False, separators=(",", ":")),
                     f"{max(now, item['expires_at']) + RETENTION:.3f}"]
        return await self._scripts["accept"](
            keys=[self.body, self.state, self.lane, self.sequence, self.expiry, self.events],
            args=[json.dumps(args, ensure_ascii=False), self.events_mode])

    async def claim(self, n: int, now: float) -> list[tuple[str, int, dict[str, Any]]]:
        candidates = await self.redis.zrange(self.lane, 0, n - 1)
        if not candidates:
            return []
        token = uuid.uuid4().hex
        args = [f"{now:.3f}", LEASE_SECONDS, token, self.maxlen, len(candidates), *candidates]
        got = await self._scripts["claim"](
            keys=[self.body, self.state, self.lane, self.inflight, self.prefix + "claim:" + token, self.events],
            args=[json.dumps(args), self.events_mode])
        return [(notification_id, int(attempt), json.loads(body)) for notification_id, attempt, body in got]

    async def submitted(self, ops: list[tuple[str, list[str], int]], now: float) -> list[str]:
        """ops: (id, the parts' message ids, how many leading parts asked a receipt)."""
        args: list[Any] = [f"{now:.3f}", f"{now + RECEIPT_TIMEOUT:.3f}", self.maxlen, len(ops)]
        for notification_id, message_ids, receipt_parts in ops:
            args += [notification_id, CARRIER, len(message_ids), receipt_parts, *message_ids, *message_ids]
        return await self._scripts["submitted"](
            keys=[self.state, self.inflight, self.awaiting, self.index, self.early, self.events],
            args=[json.dumps(args), self.events_mode])

    async def receipts(self, receipts: list[tuple[str, str, str, str]], now: float) -> list[int]:
        """receipts: (message id, stat, err, the addresses' last digits); the index read
        first (one HMGET), as the gateway MGETs its index keys before its script."""
        entries = await self.redis.hmget(self.index, [f"{CARRIER}\0{m}" for m, _, _, _ in receipts])
        args: list[Any] = [f"{now:.3f}", self.maxlen, 0]
        for (_, stat, err, tails), entry in zip(receipts, entries, strict=True):
            if entry is None:
                continue  # the gateway would park it; every receipt here finds its notification
            notification_id, part = entry.rsplit(" ", 1)
            args += [notification_id, int(part), stat, err, tails]
            args[2] += 1
        return await self._scripts["receipt"](keys=[self.state, self.inflight, self.awaiting, self.events],
                                              args=[json.dumps(args), self.events_mode])

    async def sweep(self, up_to: float, limit: int) -> int:
        return await self._scripts["sweep"](keys=[self.body, self.state, self.index, self.expiry],
                                            args=[f"{up_to:.3f}", limit])

    async def state_of(self, notification_id: str) -> str | None:
        record = await self.redis.hget(self.state, notification_id)
        return None if record is None else record.split("\t", 1)[0]

    async def lane_length(self) -> int:
        return await self.redis.zcard(self.lane)


async def columnar_round(redis: Any, ledger: ColumnarLedger | OwnerLedger, tag: str, n: int, batch: int,
                         sweep: bool = True) -> dict[str, Any]:
    """One pass of n notifications through the four phases (and the sweep); each phase's
    figures, and Redis memory per notification before the sweep."""
    ids = [f"stream-{tag}-{k:07d}" for k in range(n)]
    claimed: list[tuple[str, int, dict[str, Any]]] = []

    def item(notification_id: str, k: int) -> dict[str, Any]:
        now = time.time()
        digits = f"138{k:08d}"
        return {"id": notification_id, "type": "exam_booked", "expires_at": now + VALIDITY, "to": digits,
                "fields": {"to": digits, "params": '{"date":"2026-11-30"}', "text": CHINESE_TEXT, "channel": "sms",
                           "expires_at": f"{now + VALIDITY:.3f}", "source": "stream", "type": "exam_booked",
                           "priority": "normal"}}

    async def accept() -> None:
        for start in range(0, n, batch):
            await ledger.accept([item(i, start + k) for k, i in enumerate(ids[start:start + batch])], time.time())

    async def claim() -> None:
        while len(claimed) < n:
            got = await ledger.claim(batch, time.time())
            if not got:
                raise RuntimeError(f"claimed {len(claimed)} of {n}")
            claimed.extend(got)

    async def submitted() -> None:
        for start in range(0, n, batch):
            await ledger.submitted([(c[0], [f"{c[0]}-a", f"{c[0]}-b"], 1) for c in claimed[start:start + batch]],
                                   time.time())

    async def receipt() -> None:
        for start in range(0, n, batch):
            await ledger.receipts([(f"{c[0]}-a", "DELIVRD", "000", c[2]["to"][-8:])
                                   for c in claimed[start:start + batch]], time.time())

    async def swept() -> None:
        while await ledger.sweep(float("inf"), batch):
            pass

    steps = [*zip(PHASES, (accept, claim, submitted, receipt), strict=True)] + ([("sweep", swept)] if sweep else [])
    out: dict[str, Any] = {}
    memory_before = (await redis.info("memory"))["used_memory"]
    for name, run in steps:
        if name == "sweep":
            state = await ledger.state_of(ids[-1])
            if state != "delivered":
                raise RuntimeError(f"{ids[-1]} ended {state!r}, not delivered")
            out["memory_bytes"] = round(((await redis.info("memory"))["used_memory"] - memory_before) / n)
        await redis.config_resetstat()
        before, aof_before = await _cpu(redis), await _aof_bytes(redis)
        client_before = time.process_time()
        await run()
        client = time.process_time() - client_before
        out[name] = {"redis_us": round(1e6 * (await _cpu(redis) - before) / n, 1),
                     "client_us": round(1e6 * client / n, 1),
                     # since the CONFIG RESETSTAT above
                     "bytes_in": round((await redis.info("stats"))["total_net_input_bytes"] / n),
                     "aof_bytes": round((await _aof_bytes(redis) - aof_before) / n)}
    return out


async def _gateway_pass(redis: Any, tag: str, n: int, batch: int, events: str,
                        engine: str = "scripts") -> dict[str, Any]:
    ledger = NotificationLedger(redis, Keys(), RETENTION, events=events, engine=engine)
    memory_before = (await redis.info("memory"))["used_memory"]
    out = await gateway_round(redis, ledger, tag, n, batch)
    out["memory_bytes"] = round(((await redis.info("memory"))["used_memory"] - memory_before) / n)
    return out


# gateway-steps: the gateway's record written by its steps (gateway/push/steps/, no Lua)
LAYOUTS = ("gateway", "gateway-steps", "columnar", "columnar+sweep", "owner", "owner+sweep", "owner-buckets", "owner-buckets+sweep")
# owner-buckets: a bucket a minute, so that each holds thousands of records here as in
# production at peak (1,500/s on 16 partitions: about 5,600), not a listpack of a few hundred
BUCKET_SECONDS = 60
LISTPACK_ENTRIES = 64  # owner-buckets' redis-server: hashes beyond 64 fields are hash tables
# --breakdown: redis-server functions whose inclusive instructions are reported (none
# recursive): redis_instructions.BREAKDOWN's, the scripts whole (evalGenericCommand), each
# redis.call whole (luaRedisGenericCommand), and the sweep's HDEL.
BREAKDOWN_FUNCTIONS = ("evalGenericCommand", "luaRedisGenericCommand", "feedAppendOnlyFile", "json_decode",
                       "luaArgsToRedisArgv", "parseReply", "hsetCommand", "hmgetCommand", "xaddCommand",
                       "zaddGenericCommand", "zremCommand", "hdelCommand", "processMultibulkBuffer",
                       "execCommand", "hgetallCommand", "expireCommand", "setCommand", "queueMultiCommand")


async def _pass(layout: str, redis: Any, tag: str, n: int, batch: int, events: str) -> dict[str, Any]:
    if layout in ("gateway", "gateway-steps"):
        return await _gateway_pass(redis, tag, n, batch, events, "steps" if layout == "gateway-steps" else "scripts")
    if layout.startswith("owner"):
        options = {"retention": RETENTION, "events_maxlen": EVENTS_MAXLEN, "lease_seconds": LEASE_SECONDS,
                   "receipt_timeout": RECEIPT_TIMEOUT}
        if layout.startswith("owner-buckets"):
            # Its id and index shards hold tens of thousands of entries each in production
            # (hash tables), a few hundred here: kept out of the listpack encoding, whose
            # every lookup scans the hash (HMGET 60.5 against 5.3 thousand instructions per
            # notification at the default 512, events all), as production would configure it.
            await redis.config_set("hash-max-listpack-entries", LISTPACK_ENTRIES)
            owner: OwnerLedger = BucketedOwnerLedger(redis, events, bucket_seconds=BUCKET_SECONDS, **options)
        else:
            owner = OwnerLedger(redis, events, **options)
        await owner.take()
        try:
            return await columnar_round(redis, owner, tag, n, batch, sweep=layout.endswith("+sweep"))
        finally:
            await owner.close()
    return await columnar_round(redis, ColumnarLedger(redis, events), tag, n, batch, sweep=layout.endswith("+sweep"))


async def _timed(args: argparse.Namespace) -> dict[str, Any]:
    """Each layout on its own server, runs alternating; the lowest figure of each phase."""
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "columnar+sweep": [], "owner+sweep": [],
                                             "owner-buckets+sweep": []}
    work = Path(tempfile.mkdtemp(prefix="record-layouts-"))
    try:
        servers, clients = {}, {}
        for layout in runs:
            servers[layout] = RedisServerProcess(work / layout.replace("+", "-"), appendonly=not args.no_aof)
            servers[layout].start()
            # the gateway's own client (hiredis packing, gateway/store/packing.py) for every layout
            clients[layout] = make_client(f"redis://127.0.0.1:{servers[layout].port}")
            await _pass(layout, clients[layout], "warm", min(args.messages, 2000), args.batch, args.events)
        for r in range(args.repeat):
            for layout in runs:
                runs[layout].append(await _pass(layout, clients[layout], f"r{r}", args.messages, args.batch,
                                                          args.events))
    finally:
        for layout in list(clients):
            await clients[layout].aclose()
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    best: dict[str, dict[str, Any]] = {}
    for layout, layout_runs in runs.items():
        phases = [p for p in (*PHASES, "sweep") if p in layout_runs[0]]
        best[layout] = {p: min(r[p]["redis_us"] for r in layout_runs) for p in phases}
        best[layout]["memory_bytes"] = min(r["memory_bytes"] for r in layout_runs)
        # what the caller spent (Python, redis-py), every phase together: the logic moved out of Redis
        best[layout]["client_us"] = min(round(sum(r[p]["client_us"] for p in phases), 1) for r in layout_runs)
        # what the caller sent Redis (the events as commands, not made inside a script)
        best[layout]["bytes_to_redis"] = min(sum(r[p]["bytes_in"] for p in phases) for r in layout_runs)
    return {"mode": "cpu_time", "redis_us_per_notification": best}


async def _instructions(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("record_layouts: --instructions needs valgrind (Debian package valgrind)")
    from redis_instructions import callgrind_total, callgrind_wrapper, inclusive_by_function

    redis_server = find_redis_server()
    small, large = args.instructions_sizes
    layouts = args.layouts or LAYOUTS
    totals: dict[str, list[int]] = {layout: [] for layout in layouts}
    functions: dict[str, list[dict[str, int]]] = {layout: [] for layout in layouts}
    work = Path(tempfile.mkdtemp(prefix="record-layouts-instr-"))
    try:
        for layout in layouts:
            for n in (small, large):
                directory = work / f"{layout.replace('+', '-')}-{n}"
                directory.mkdir()
                with _redis_server_binary(callgrind_wrapper(directory, redis_server)):
                    server = RedisServerProcess(directory / "data", appendonly=not args.no_aof)
                    server.start(timeout_seconds=60)  # under callgrind it takes seconds
                    redis = make_client(f"redis://127.0.0.1:{server.port}")
                    try:
                        await _pass(layout, redis, "warm", args.warm_up, args.batch, args.events)
                        await _pass(layout, redis, "plain", n, args.batch, args.events)
                    finally:
                        await redis.aclose()
                        server.stop(timeout_seconds=120)  # callgrind writes its profile at exit
                total, profile = callgrind_total(directory)
                totals[layout].append(total)
                if args.breakdown:
                    functions[layout].append(inclusive_by_function(profile))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = {layout: (t[1] - t[0]) / (large - small) for layout, t in totals.items()}
    out = {"mode": "instructions", "instructions_per_notification": {k: round(v) for k, v in per.items()},
           "vs_gateway": {k: round(v / per["gateway"], 3) for k, v in per.items()},
           "instructions_total": totals, "sizes": [small, large], "warm_up": args.warm_up}
    if args.breakdown:
        out["breakdown"] = {layout: {name: round((f[1].get(name, 0) - f[0].get(name, 0)) / (large - small))
                                     for name in BREAKDOWN_FUNCTIONS}
                            for layout, f in functions.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000, help="notifications per run (10,000)")
    parser.add_argument("--batch", type=int, default=200, help="notifications per script call (200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the lowest figure of each phase is kept (3)")
    parser.add_argument("--events", choices=("all", "final", "off"), default="all",
                        help="push.events for both records: all (the default), final or off")
    parser.add_argument("--no-aof", action="store_true", help="redis-server without the append-only file")
    parser.add_argument("--instructions", action="store_true", help="count redis-server instructions (callgrind)")
    parser.add_argument("--breakdown", action="store_true",
                        help="--instructions: where they go, by redis-server function (callgrind_annotate)")
    parser.add_argument("--warm-up", type=int, default=WARM_UP,
                        help=f"--instructions: notifications through every phase before each counted pass ({WARM_UP})")
    parser.add_argument("--instructions-sizes", type=int, nargs=2, default=(1000, 3000), metavar=("N1", "N2"),
                        help="--instructions: the two pass sizes (1,000 and 3,000)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, metavar="LAYOUT",
                        help="--instructions: these layouts only (gateway first: the others are shown against it)")
    args = parser.parse_args(argv)
    measured = asyncio.run(_instructions(args) if args.instructions else _timed(args))
    result = {"benchmark": "record_layouts", "date": today(), "machine": machine(),
              "setup": {"batch": args.batch, "events": args.events, "aof": "no" if args.no_aof else "everysec",
                        "redis_server": find_redis_server(), "message": "chinese, 2 parts, receipt on part 1",
                        **({} if args.instructions else {"messages": args.messages, "repeat": args.repeat})},
              **measured}
    if args.instructions:
        per, ratio = result["instructions_per_notification"], result["vs_gateway"]
        print_table(("record", "Redis instructions per notification (thousands)", "vs the gateway's"),
                    [(k, f"{per[k] / 1000:.1f}", f"{ratio[k]:.3f}") for k in per])
        if args.breakdown:
            by = result["breakdown"]
            print_table(("function (inclusive, thousands per notification)", *by),
                        [(name, *(f"{by[layout][name] / 1000:.1f}" for layout in by)) for name in next(iter(by.values()))])
    else:
        best = result["redis_us_per_notification"]
        rows = []
        for layout, figures in best.items():
            total = sum(v for k, v in figures.items() if k in (*PHASES, "sweep"))
            rows.append((layout, *(figures.get(p, "") for p in (*PHASES, "sweep")), round(total, 1),
                         figures["memory_bytes"], figures["client_us"], figures["bytes_to_redis"]))
        print_table(("record", *(f"{p} us" for p in PHASES), "sweep us", "total us", "memory bytes/notification",
                     "client us", "bytes to redis"), rows)
    print_json_line(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
