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

``--plain`` asks what the scripts' own commands cost without Lua around them: one more
pass runs under MONITOR, which lists every command the server executes, each
``redis.call`` of a script included, with its real arguments.  Each phase's commands, the
script calls themselves left out, are then sent to a fresh redis-server (same
persistence) as plain pipelined commands, a batch's worth per pipeline, and measured the
same way.  Two ways: ``plain``, each batch one pipeline (no atomicity at all: the floor
under any design that keeps this record, whatever runs its logic), and ``atomic``, as a
ledger without scripts would have to: per batch, WATCH every key the batch reads and read
them, then its writes between MULTI and EXEC.

``--engine steps`` runs the scripts' logic in this process instead (gateway/push/steps/:
reads, then the writes in one MULTI/EXEC).

``--instructions`` counts instead of timing (Valgrind's callgrind; VM drift moves CPU
time by tens of per cent within an hour, instruction counts by under 1 %): the scripts,
the steps (unfenced, and ``fenced`` under WATCH of an owner key), the plain replay and
the atomic replay, each on its own redis-server under callgrind at
two sizes (``--instructions-sizes``, after the same warm-up), the difference divided by
the notifications between them.  Prints that table instead of the timed one.

Output: a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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
from gateway.push.steps.driver import Fence  # noqa: E402
from gateway.store.embedded import RedisServerProcess, find_redis_server  # noqa: E402
from gateway.store.keys import Keys  # noqa: E402

PHASES = ("accept", "claim", "submitted", "receipt")
# What --plain leaves out of a phase's MONITOR listing: the script calls (their commands
# are listed one by one), the benchmark's own probes (INFO, CONFIG RESETSTAT) and the
# markers between phases (ECHO).
NOT_REPLAYED = {b"EVALSHA", b"EVAL", b"SCRIPT", b"INFO", b"CONFIG", b"ECHO", b"CLIENT", b"HELLO", b"PING"}
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


def _monitor_args(line: bytes) -> list[bytes]:
    r"""The arguments of one MONITOR line, ``+<time> [<db> <client>] "ARG" "ARG" ...``,
    each unquoted as Redis quotes it (sdscatrepr: \\ \" \n \r \t \a \b and \xHH)."""
    i = line.index(b"] ") + 2
    escapes = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8}
    args: list[bytes] = []
    while i < len(line):
        if line[i] != ord('"'):
            raise ValueError(f"MONITOR line not understood at {i}: {line[:80]!r}")
        i += 1
        arg = bytearray()
        while line[i] != ord('"'):
            c = line[i]
            if c == ord("\\"):
                e = line[i + 1]
                if e == ord("x"):
                    arg.append(int(line[i + 2:i + 4], 16))
                    i += 4
                    continue
                arg.append(escapes.get(e, e))
                i += 2
                continue
            arg.append(c)
            i += 1
        args.append(bytes(arg))
        i += 2  # the closing quote and the space after it
    return args


class MonitorCapture:
    """Every command the server runs while it is attached (MONITOR), split into phases by
    the ECHO markers the caller sends; read on its own connection as it comes, so that
    the server's output buffer for it stays small."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.phases: dict[str, list[list[bytes]]] = {}
        self._current: list[list[bytes]] = []
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._marked: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 24)
        self._writer.write(b"MONITOR\r\n")
        if await reader.readline() != b"+OK\r\n":
            raise RuntimeError("MONITOR refused")
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            args = _monitor_args(line.rstrip(b"\r\n"))
            if args[0].upper() == b"ECHO" and args[1].startswith(b"ledger-scripts-phase-"):
                name = args[1].decode().removeprefix("ledger-scripts-phase-")
                self.phases[name], self._current = self._current, []
                self._marked.setdefault(name, asyncio.Event()).set()
            elif args[0].upper() not in NOT_REPLAYED:
                self._current.append(args)

    async def mark(self, redis: Any, name: str) -> None:
        """End the phase `name`: everything listed before the marker belongs to it."""
        await redis.echo(f"ledger-scripts-phase-{name}")
        await asyncio.wait_for(self._marked.setdefault(name, asyncio.Event()).wait(), 60)

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._reader_task


# The commands a replayed phase reads with (the rest write), and which of their arguments
# are keys: what a ledger without scripts would WATCH before deciding, then write under
# MULTI/EXEC.
_ONE_KEY, _ALL_KEYS = slice(1, 2), slice(1, None)
READ_KEYS = {b"HMGET": _ONE_KEY, b"HGET": _ONE_KEY, b"MGET": _ALL_KEYS, b"EXISTS": _ALL_KEYS, b"ZMSCORE": _ONE_KEY,
             b"ZRANGE": _ONE_KEY, b"LRANGE": _ONE_KEY, b"LLEN": _ONE_KEY, b"GET": _ONE_KEY, b"TTL": _ONE_KEY,
             b"ZSCORE": _ONE_KEY}


async def _replay(port: int, phases: dict[str, list[list[bytes]]], n: int, batch: int,
                  atomic: bool = False) -> dict[str, float]:
    """Each phase's commands sent as plain pipelines of a batch's worth (as many
    notifications as a script call carries); redis-server CPU per notification.

    atomic: as a ledger without scripts would have to: per batch, one pipeline that
    WATCHes every key the batch reads and reads them, then one with the batch's writes
    between MULTI and EXEC (on the same connection: the pool holds one)."""
    redis = aioredis.Redis(port=port, max_connections=1)
    out: dict[str, float] = {}
    try:
        for name in PHASES:
            commands = phases[name]
            per_pipeline = max(1, len(commands) * batch // n)
            before = await _cpu(redis)
            for start in range(0, len(commands), per_pipeline):
                chunk = commands[start:start + per_pipeline]
                if not atomic:
                    pipe = redis.pipeline(transaction=False)
                    for args in chunk:
                        pipe.execute_command(*args)
                    await pipe.execute()
                    continue
                reads = [a for a in chunk if a[0].upper() in READ_KEYS]
                writes = [a for a in chunk if a[0].upper() not in READ_KEYS]
                watched: list[bytes] = []
                for a in reads:
                    watched.extend(a[READ_KEYS[a[0].upper()]])
                pipe = redis.pipeline(transaction=False)
                if watched:
                    pipe.execute_command(b"WATCH", *dict.fromkeys(watched))
                for a in reads:
                    pipe.execute_command(*a)
                await pipe.execute()
                pipe = redis.pipeline(transaction=False)
                pipe.execute_command(b"MULTI")
                for a in writes:
                    pipe.execute_command(*a)
                pipe.execute_command(b"EXEC")
                replies = await pipe.execute()
                if replies[-1] is None:
                    raise RuntimeError(f"{name}: EXEC aborted, a watched key changed (nothing else writes here)")
            out[name] = round(1e6 * (await _cpu(redis) - before) / n, 1)
    finally:
        await redis.aclose()
    return out


async def _capture(redis: Any, ledger: NotificationLedger, port: int, tag: str, n: int,
                   batch: int) -> dict[str, list[list[bytes]]]:
    """A pass of n notifications under MONITOR: each phase's commands."""
    monitor = MonitorCapture(port)
    await monitor.start()
    try:
        await _round(redis, ledger, tag, n, batch, monitor=monitor)
    finally:
        await monitor.stop()
    return monitor.phases


async def _replay_on_fresh_server(args: argparse.Namespace, phases: list[tuple[dict[str, list[list[bytes]]], int]],
                                  last_id: str, atomic: bool) -> dict[str, float]:
    """The phases replayed on a new redis-server, each (phases, n) in turn; the figures
    of the last; the last notification must end delivered there, as the scripts left it."""
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-plain-"))
    server = RedisServerProcess(data_dir, appendonly=not args.no_aof)
    server.start(timeout_seconds=60)  # under callgrind it takes seconds
    try:
        for commands, n in phases:
            figures = await _replay(server.port, commands, n, args.batch, atomic=atomic)
        check = aioredis.Redis(port=server.port, decode_responses=True)
        state = await check.hget(Keys().notification(last_id), "state")
        await check.aclose()
        if state != "delivered":
            raise RuntimeError(f"the replay left {last_id} {state!r}, not delivered")
    finally:
        server.stop(timeout_seconds=120)
        shutil.rmtree(data_dir, ignore_errors=True)
    return figures


async def _plain(args: argparse.Namespace, capture_redis: Any, ledger: NotificationLedger, port: int) -> dict[str, Any]:
    """--plain: a MONITORed pass, then its commands replayed without Lua on fresh servers,
    plain and atomic alternately."""
    phases = await _capture(capture_redis, ledger, port, "plain", args.messages, args.batch)
    commands = {name: round(len(phases[name]) / args.messages, 3) for name in PHASES}
    last_id = f"stream-plain-{args.messages - 1:07d}"
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "atomic": []}
    for _ in range(args.repeat):
        for mode in runs:
            runs[mode].append(await _replay_on_fresh_server(args, [(phases, args.messages)], last_id, mode == "atomic"))
    return {mode: {name: min(r[name] for r in mode_runs) for name in PHASES} for mode, mode_runs in runs.items()} | {
        "commands": commands}


@contextlib.contextmanager
def _redis_server_binary(path: Path) -> Any:
    """RedisServerProcess starts this binary meanwhile ($GATEWAY_REDIS_SERVER)."""
    before = os.environ.get("GATEWAY_REDIS_SERVER")
    os.environ["GATEWAY_REDIS_SERVER"] = str(path)
    try:
        yield
    finally:
        if before is None:
            del os.environ["GATEWAY_REDIS_SERVER"]
        else:
            os.environ["GATEWAY_REDIS_SERVER"] = before


WARM_UP = 500  # notifications through every phase before each measured pass


async def _instructions(args: argparse.Namespace) -> dict[str, Any]:
    """--instructions: redis-server instructions per notification for the scripts and
    for their commands replayed plain and atomic (module docstring)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("ledger_scripts: --instructions needs valgrind (Debian package valgrind)")
    from redis_instructions import callgrind_total, callgrind_wrapper

    redis_server = find_redis_server()
    sizes = args.instructions_sizes
    work = Path(tempfile.mkdtemp(prefix="ledger-instr-"))
    try:
        # The commands of a warm-up and of each size, on plain servers (MONITOR makes
        # the server slower, not its commands different).
        captures: dict[int, list[tuple[dict[str, list[list[bytes]]], int]]] = {}
        for n in sizes:
            server = RedisServerProcess(work / f"capture-{n}", appendonly=not args.no_aof)
            server.start()
            redis = aioredis.Redis(port=server.port, decode_responses=True)
            try:
                ledger = NotificationLedger(redis, Keys(), RETENTION, events=args.events)
                warm = await _capture(redis, ledger, server.port, "warm", WARM_UP, args.batch)
                captures[n] = [(warm, WARM_UP), (await _capture(redis, ledger, server.port, "plain", n, args.batch), n)]
            finally:
                await redis.aclose()
                server.stop()
        totals: dict[str, list[int]] = {"scripts": [], "steps": [], "fenced": [], "plain": [], "atomic": []}
        for variant, counted in totals.items():
            for n in sizes:
                directory = work / f"{variant}-{n}"
                directory.mkdir()
                with _redis_server_binary(callgrind_wrapper(directory, redis_server)):
                    if variant in ("scripts", "steps", "fenced"):
                        server = RedisServerProcess(directory / "data", appendonly=not args.no_aof)
                        server.start(timeout_seconds=60)
                        redis = aioredis.Redis(port=server.port, decode_responses=True)
                        try:
                            ledger = _ledger(redis, args.events, variant)
                            if variant == "fenced":
                                await redis.set(OWNER_KEY, "bench")
                            await _round(redis, ledger, "warm", WARM_UP, args.batch)
                            await _round(redis, ledger, "plain", n, args.batch)
                        finally:
                            await redis.aclose()
                            server.stop(timeout_seconds=120)  # callgrind writes its profile at exit
                    else:
                        await _replay_on_fresh_server(args, captures[n], f"stream-plain-{n - 1:07d}",
                                                      variant == "atomic")
                counted.append(callgrind_total(directory)[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = sizes
    per = {variant: (t[1] - t[0]) / (large - small) for variant, t in totals.items()}
    return {"benchmark": "ledger_scripts", "date": today(), "machine": machine(),
            "setup": {"sizes": list(sizes), "warm_up": WARM_UP, "batch": args.batch, "events": args.events,
                      "aof": "no" if args.no_aof else "everysec", "redis_server": redis_server,
                      "message": "chinese, 2 parts, receipt on part 1"},
            "instructions_per_notification": {v: round(x) for v, x in per.items()},
            "vs_scripts": {v: round(x / per["scripts"], 3) for v, x in per.items()},
            "instructions_total": totals}


# The owner key the fenced variant's steps WATCH (the partition's, in the gateway).
OWNER_KEY = "12123:bench-owner"


def _ledger(redis: Any, events: str, variant: str) -> NotificationLedger:
    """scripts; steps (unfenced); fenced: steps under WATCH of an owner key naming this process."""
    if variant == "fenced":
        return NotificationLedger(redis, Keys(), RETENTION, events=events, engine="steps",
                                  step_fence=lambda keys: Fence(OWNER_KEY, "bench"))
    return NotificationLedger(redis, Keys(), RETENTION, events=events, engine=variant)


async def _round(redis: Any, ledger: NotificationLedger, tag: str, n: int, batch: int,
                 monitor: MonitorCapture | None = None) -> dict[str, Any]:
    """One pass of n notifications through the four phases; each phase's figures.  With a
    monitor, each phase ends with its marker."""
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
        client_before = time.process_time()
        await run()
        client = time.process_time() - client_before
        cpu = await _cpu(redis) - before
        aof = await _aof_bytes(redis) - aof_before
        if monitor is not None:
            await monitor.mark(redis, name)
        stats = await redis.info("commandstats")
        commands = {key.removeprefix("cmdstat_"): {"usec": round(v["usec"] / n, 2), "calls": round(v["calls"] / n, 3)}
                    for key, v in stats.items() if v["calls"] and key != "cmdstat_config|resetstat"}
        out[name] = {"redis_us": round(1e6 * cpu / n, 1), "client_us": round(1e6 * client / n, 1),
                     "bytes_in": round((await redis.info("stats"))["total_net_input_bytes"] / n),  # since RESETSTAT
                     "aof_bytes": round(aof / n), "commands": commands}
    state = await redis.hget(ledger.keys.notification(ids[-1]), "state")
    if state != "delivered":
        raise RuntimeError(f"{ids[-1]} ended {state!r}, not delivered")
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.instructions:
        return await _instructions(args)
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-scripts-"))  # removed at the end: its AOF grows to ~100 MB
    server = RedisServerProcess(data_dir, appendonly=not args.no_aof)
    server.start()
    redis = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        ledger = NotificationLedger(redis, Keys(), RETENTION, events=args.events, engine=args.engine)
        await _round(redis, ledger, "warm", min(args.messages, 2000), args.batch)
        runs = [await _round(redis, ledger, f"r{r}", args.messages, args.batch) for r in range(args.repeat)]
        plain = await _plain(args, redis, ledger, server.port) if args.plain else None
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    best = {name: min((r[name] for r in runs), key=lambda p: p["redis_us"]) for name in PHASES}
    if plain is not None:
        for name in PHASES:
            best[name]["plain_us"] = plain["plain"][name]
            best[name]["atomic_us"] = plain["atomic"][name]
            best[name]["plain_commands"] = plain["commands"][name]
    result = {"benchmark": "ledger_scripts", "date": today(), "machine": machine(),
            "setup": {"messages": args.messages, "batch": args.batch, "events": args.events,
                      "aof": "no" if args.no_aof else "everysec", "repeat": args.repeat,
                      "message": "chinese, 2 parts, receipt on part 1"},
            "phases": best, "total_redis_us": round(sum(p["redis_us"] for p in best.values()), 1)}
    if plain is not None:
        result["setup"]["plain"] = "MONITOR pass replayed as pipelines without Lua (plain; atomic: WATCH + MULTI/EXEC)"
        result["total_plain_us"] = round(sum(plain["plain"].values()), 1)
        result["total_atomic_us"] = round(sum(plain["atomic"].values()), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10_000, help="notifications per run (10,000)")
    parser.add_argument("--batch", type=int, default=200, help="notifications per script call (200)")
    parser.add_argument("--events", choices=("all", "final", "off"), default="all", help="push.events (all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the lowest figure of each phase is kept (3)")
    parser.add_argument("--no-aof", action="store_true", help="redis-server without the append-only file")
    parser.add_argument("--engine", choices=("scripts", "steps"), default="scripts",
                        help="the ledger's scripts in Redis, or their steps in this process (gateway/push/steps/)")
    parser.add_argument("--plain", action="store_true",
                        help="also replay each phase's commands as plain pipelines, without Lua")
    parser.add_argument("--instructions", action="store_true",
                        help="count redis-server instructions (callgrind) for the scripts, plain and atomic replays")
    parser.add_argument("--instructions-sizes", type=int, nargs=2, default=(1000, 3000), metavar=("N1", "N2"),
                        help="--instructions: the two pass sizes (1,000 and 3,000)")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    if args.instructions:
        per, ratio = result["instructions_per_notification"], result["vs_scripts"]
        print_table(("variant", "instructions per notification (thousands)", "vs scripts"),
                    [(v, f"{per[v] / 1000:.1f}", f"{ratio[v]:.3f}") for v in per])
        print_json_line(result)
        return 0
    rows = []
    plain = "total_plain_us" in result
    for name in PHASES:
        phase = result["phases"][name]
        top = sorted(phase["commands"].items(), key=lambda kv: -kv[1]["usec"])
        extra = (phase["plain_us"], f"{phase['plain_us'] / phase['redis_us']:.2f}", phase["atomic_us"],
                 f"{phase['atomic_us'] / phase['redis_us']:.2f}") if plain else ()
        rows.append((name, phase["redis_us"], *extra, phase["aof_bytes"],
                     " ".join(f"{k} {v['calls']:g}x {v['usec']:.1f}us" for k, v in top[:6])))
    total_extra = (result["total_plain_us"], f"{result['total_plain_us'] / result['total_redis_us']:.2f}",
                   result["total_atomic_us"], f"{result['total_atomic_us'] / result['total_redis_us']:.2f}") if plain else ()
    rows.append(("total", result["total_redis_us"], *total_extra,
                 sum(p["aof_bytes"] for p in result["phases"].values()), ""))
    headers = ("phase", "Redis CPU us/msg", *(("plain us/msg", "plain/Lua", "atomic us/msg", "atomic/Lua") if plain else ()), "AOF bytes/msg",
               "commands per msg (calls, usec; evalsha includes its commands)")
    print_table(headers, rows)
    print_json_line(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
