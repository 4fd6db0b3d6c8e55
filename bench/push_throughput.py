"""Notifications per second through one `gateway run`: XADD on ``12123:notify`` to the
carrier's submit_sm_resp, with full state tracking, receipts, and Kannel alongside.

    .venv/bin/python bench/push_throughput.py                 # every scenario, N=100,000, Kannel too
    .venv/bin/python bench/push_throughput.py --quick         # smoke run: 2,000 chinese, no Kannel
    .venv/bin/python bench/push_throughput.py -n 20000 --scenario chinese --scenario latency \
        --repeat 3 --skip-kannel --profile-dir /tmp/prof

Set-up (the benchmark's theory of operation)
--------------------------------------------
* redis-server (`RedisServerProcess`: append-only file, fsync every second, as in
  production) on a free port; FLUSHALL before each run;
* the carrier simulator in its own process (bench/run_simulator.py) with the flags of
  Kannel's half of the comparison (``--no-record-texts --receipt-delay 0.1
  --deliver-window 100``): it answers every submit_sm at once and sends a DELIVRD
  receipt per part 0.1 s later.  Its counters (``GET /`` on its stats port) tell when
  every message has reached the SMSC and every receipt has been acknowledged;
* the gateway in its own process, ``python -m gateway run`` with a generated config:
  that Redis, one carrier (``--sessions`` transceivers, ``--window`` each, tps_limit
  ``--tps-limit`` (100,000: no throttle), ``registered_delivery`` 1, or 0 for the no-receipt scenario), HTTP for
  /readyz, no SMPP listener, no FastAGI, no AMI, JSON logs at info level to a file.
  A fresh gateway per run, so its CPU and peak RSS are the run's;
* this process is the load: redis-py asyncio, XADD in pipelined batches of
  ``--batch`` entries, as fast as it can (throughput) or paced (latency).

Each request has ``type``, ``to`` (its own number, 138 + 8 digits) and ``params``, no
``id``: the intake then names it ``stream-<entry id>``, and the entry id's millisecond
part is the XADD time on Redis's clock (the same host clock as the gateway's).  The
texts are Kannel's (bench/kannel_rate.py) rendered from a generated templates file,
so both send the same bytes: 118 GSM characters in one part, or 92 Chinese characters
in two UCS2 parts; signatures "12123:" and "【12123】", no quiet hours.

Figures
-------
After the simulator has seen every message (and acknowledged every receipt), every
notification's hash is read back (HMGET state, parts, submit_started_at, submitted_at,
delivered_at).  **lost** = notifications not in their final state (``delivered``
with receipts, ``submitted`` without).

* **throughput**: N / (last ``submitted_at`` - first XADD): accepted -> submitted per
  second, what Kannel's ``messages_per_second`` measures at the simulator;
* **latency** (ms) from XADD to ``submit_started_at`` (claimed for submission; the
  submit_sm is written in the same reactor turn unless the window is full), to
  ``submitted_at`` (submit_sm_resp received and recorded) and to ``delivered_at``
  (every part's receipt recorded); p50 and p99, nearest rank.  In the as-fast-as-possible
  runs this is mostly queueing; the ``latency`` scenario paces XADD at ``--rate`` per
  second and relays the carrier connection through a `WireTap` in this process, which
  notes when each message's first submit_sm passes: **XADD -> wire**;
* gateway CPU seconds (user + system, /proc/PID/stat) from the first XADD until the
  simulator has seen everything, per 1,000 notifications; peak RSS (VmHWM); redis-server,
  simulator and load-generator CPU over the same span (they share the cores);
* **Redis per message** (a second table, and ``redis_per_message`` in the JSON line):
  redis-server CPU per notification, and each hot-path command's calls and µs per
  notification from ``INFO commandstats`` (CONFIG RESETSTAT at the start of the run;
  scripts' commands are counted inside EVALSHA as well).  Target: 0.085 ms per chinese
  notification (issue 11; bench/ledger_scripts.py splits it by script).

Scenarios (``--scenario``, repeatable; default all)
---------------------------------------------------
``ascii`` single-part GSM text with receipts · ``chinese`` two-part UCS2 with receipts ·
``mix`` like chinese, 10 % high priority (a one-part verification code), 60 % normal,
30 % bulk · ``ascii-norcpt`` single part, registered_delivery 0 · ``latency`` chinese
paced at ``--rate``/s for ``--latency-seconds`` · ``queued-1m`` ``--queued`` (1,000,000)
notifications accepted while the carrier link is down: gateway RSS with them queued ·
``two-processes`` chinese through two gateway processes sharing the consumer group,
against one.  With ``--tps-limit 1500`` (submit_sm per second, so 750 two-part
messages) each process's binds, not the machine's two cores, are the limit (a carrier's
per-connection flow control): what adding a process buys in production.

``--repeat R`` runs each throughput scenario R times and reports the median run (by
throughput).  Unless ``--skip-kannel`` (implied by ``--quick``), bench/vs_kannel.sh then
runs Kannel on the same machine with N messages per scenario (its own simulator, same
flags) and the ratios are printed: ascii ~ ascii-dlr, chinese and mix ~ chinese-dlr,
ascii-norcpt ~ ascii.

Output: a table, then one JSON line (keys: benchmark, date, machine, setup, runs[],
latency, queued, two_processes, kannel, targets, lost).  Exit status 1 when a
notification was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _common import (  # noqa: E402
    cpu_seconds,
    machine,
    peak_rss_bytes,
    percentile,
    print_json_line,
    print_table,
    rss_bytes,
    start_profiler,
    stop_profiler,
    system_cpu_seconds,
    terminate,
    today,
    wait_until,
)
from kannel_rate import ASCII_TEXT, CHINESE_TEXT, fetch_stats  # noqa: E402

from gateway.store.embedded import RedisServerProcess, free_port  # noqa: E402
from gateway.store.keys import Keys  # noqa: E402

THROUGHPUT_SCENARIOS = ("ascii", "chinese", "mix", "ascii-norcpt")
ALL_SCENARIOS = (*THROUGHPUT_SCENARIOS, "latency", "queued-1m", "two-processes")
# Our scenario -> Kannel's (bench/vs_kannel.sh labels).
KANNEL_SCENARIO = {"ascii": "ascii-dlr", "chinese": "chinese-dlr", "mix": "chinese-dlr", "ascii-norcpt": "ascii"}
SMSC_ACCOUNT = ("gwbench", "gwpass12")  # the password: at most 8 octets (SMPP 3.4 4.1.1)
TARGETS = {
    "chinese_per_second": 3000.0,
    "chinese_vs_kannel": 1.0,
    "ascii_norcpt_vs_kannel": 1.0,
    "p99_xadd_to_wire_ms": 50.0,
    "queued_1m_rss_mb": 300.0,
    "two_processes_ratio": 1.7,
    # issue 11: half of the 0.17 ms measured on 2026-12-02 (chinese, receipt on part 1)
    "chinese_redis_ms_per_message": 0.085,
}

# Kannel's texts (bench/kannel_rate.py) as templates: the same bytes on the wire.
ASCII_TEMPLATE = ASCII_TEXT.replace("2026-11-30 09:00", "{date} {time}")
ASCII_PARAMS = {"date": "2026-11-30", "time": "09:00"}
CHINESE_TEMPLATE = CHINESE_TEXT.replace("2026年11月30日", "{date}")
CHINESE_PARAMS = {"date": "2026年11月30日"}
CODE_TEMPLATE = "【12123】您的验证码为{code}，{minutes}分钟内有效。请勿将验证码告知他人。"
assert ASCII_TEMPLATE != ASCII_TEXT and CHINESE_TEMPLATE != CHINESE_TEXT


def templates_file(family: str) -> dict[str, Any]:
    """The generated templates: one signature per file, so one file per text family."""
    if family == "ascii":
        return {"signature": "12123:", "types": {
            "bench_ascii": {"text": ASCII_TEMPLATE, "params": ["date", "time"], "priority": "normal",
                            "quiet_hours": False, "validity": "1d"},
        }}
    common = {"params": ["date"], "quiet_hours": False, "validity": "1d"}
    return {"signature": "【12123】", "types": {
        "bench_chinese": {"text": CHINESE_TEMPLATE, "priority": "normal", **common},
        "bench_chinese_bulk": {"text": CHINESE_TEMPLATE, "priority": "bulk", **common},
        "bench_code": {"text": CODE_TEMPLATE, "params": ["code", "minutes"], "priority": "high",
                       "quiet_hours": False, "validity": "10m"},
    }}


@dataclass(frozen=True)
class Scenario:
    name: str
    family: str  # ascii | chinese
    receipts: bool
    # (type, params as JSON, share); shares add up to 1
    mix: tuple[tuple[str, str, float], ...]

    def request(self, index: int) -> tuple[str, str]:
        """(type, params JSON) of the index-th request: the mix spread evenly."""
        if len(self.mix) == 1:
            return self.mix[0][0], self.mix[0][1]
        slot = (index * 7919) % 100  # a permutation of 0..99 per 100 requests
        upto = 0.0
        for kind, params, share in self.mix:
            upto += share * 100
            if slot < upto:
                return kind, params
        return self.mix[-1][0], self.mix[-1][1]


def _json(params: dict[str, str]) -> str:
    return json.dumps(params, ensure_ascii=False, separators=(",", ":"))


ASCII_MIX = (("bench_ascii", _json(ASCII_PARAMS), 1.0),)
CHINESE_MIX = (("bench_chinese", _json(CHINESE_PARAMS), 1.0),)
SCENARIOS = {
    "ascii": Scenario("ascii", "ascii", True, ASCII_MIX),
    "chinese": Scenario("chinese", "chinese", True, CHINESE_MIX),
    "mix": Scenario("mix", "chinese", True, (
        ("bench_code", _json({"code": "482913", "minutes": "5"}), 0.10),
        ("bench_chinese", _json(CHINESE_PARAMS), 0.60),
        ("bench_chinese_bulk", _json(CHINESE_PARAMS), 0.30),
    )),
    "ascii-norcpt": Scenario("ascii-norcpt", "ascii", False, ASCII_MIX),
}
LANE_OF_TYPE = {"bench_code": "high", "bench_chinese": "normal", "bench_chinese_bulk": "bulk", "bench_ascii": "normal"}


# --------------------------------------------------------------------------------------
# processes: redis-server, the simulator, gateways
# --------------------------------------------------------------------------------------


@dataclass
class Simulator:
    process: subprocess.Popen[bytes]
    smpp_port: int
    stats_port: int
    pid: int

    def stop(self) -> None:
        terminate(self.process)


def start_simulator(workdir: Path) -> Simulator:
    ports_file = workdir / "sim.json"
    out = open(workdir / "simulator.out", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "run_simulator.py"), "--listen", "127.0.0.1:0",
         "--account", ":".join(SMSC_ACCOUNT), "--no-record-texts", "--receipt-delay", "0.1",
         "--deliver-window", "100", "--report-interval", "3600", "--stats-listen", "127.0.0.1:0",
         "--ports-file", str(ports_file)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
    )
    _CHILDREN.append(process)
    out.close()

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the simulator exited with {process.returncode}; see {workdir}/simulator.out")
        return ports_file.exists()

    wait_until(ready, 30, "the simulator's ports file")
    ports = json.loads(ports_file.read_text())
    return Simulator(process, ports["smpp_port"], ports["stats_port"], ports["pid"])


# Every child this process started, so that an interrupted run stops them all.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _stop_children() -> None:
    for process in reversed(_CHILDREN):
        terminate(process, 10)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process's main thread has spent runnable but waiting for a CPU
    (/proc/PID/schedstat, second field): the share of a busy machine it did not get."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    http_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        terminate(self.process)


@dataclass(frozen=True)
class GatewaySettings:
    sessions: int = 2
    window: int = 500
    receipts: bool = True
    carrier_port: int = 0
    push_batch_size: int = 0  # 0: the schema's default
    receipt_parts: str = "first"  # as Kannel asks: a receipt for part 1 of a long message
    tps_limit: int = 100_000  # per process: each has its own binds and its own bucket
    events: str = "all"  # push.events: all, final or off
    ledger_engine: str = "scripts"  # push.ledger_engine: scripts or steps


def gateway_config(redis_url: str, http_port: int, workdir: Path, templates_path: Path,
                   settings: GatewaySettings) -> dict[str, Any]:
    return {
        "redis": {"url": redis_url},
        "http": {"listen": f"127.0.0.1:{http_port}", "token": "bench"},
        "carriers": [{
            "name": "sim", "host": "127.0.0.1", "port": settings.carrier_port,
            "system_id": SMSC_ACCOUNT[0], "password": SMSC_ACCOUNT[1],
            "bind_mode": "transceiver", "sessions": settings.sessions, "window": settings.window,
            "tps_limit": settings.tps_limit, "registered_delivery": 1 if settings.receipts else 0,
            "receipt_parts": settings.receipt_parts,
            "reconnect_max_seconds": 2,
            "prefixes": ["13", "14", "15", "16", "17", "18", "19"],
        }],
        "smpp_server": {"enabled": False},
        "push": {
            "templates_file": str(templates_path),
            "daily_cap_bulk": 1000,  # the schema's maximum; every number gets one message anyway
            "quiet_hours": {"start": "00:00", "end": "00:00"},  # start == end: none
            **({"batch_size": settings.push_batch_size} if settings.push_batch_size else {}),
            "events": settings.events,
            "ledger_engine": settings.ledger_engine,
        },
        "ivr": {"fastagi": {"enabled": False}, "menus_file": str(REPO / "config" / "ivr.yaml"),
                "sounds_dir": str(workdir / "sounds")},
        "ami": {"enabled": False},
        "logging": {"format": "json", "level": "info"},
        "state_dir": str(workdir / "state"),
        "drain_timeout_seconds": 10,
    }


def start_gateway(workdir: Path, name: str, redis_url: str, family: str, settings: GatewaySettings,
                  wait_bound: bool = True) -> Gateway:
    templates_path = workdir / f"templates-{family}.yaml"
    if not templates_path.exists():
        templates_path.write_text(yaml.safe_dump(templates_file(family), allow_unicode=True), encoding="utf-8")
    http_port = free_port()
    config_path = workdir / f"gateway-{name}.yaml"
    config_path.write_text(yaml.safe_dump(gateway_config(redis_url, http_port, workdir, templates_path, settings),
                                          allow_unicode=True), encoding="utf-8")
    log_path = workdir / f"gateway-{name}.log"
    with open(log_path, "wb") as log_file:
        # BENCH_GATEWAY_PREFIX: a command the gateway runs under (bench/redis_instructions.py --process gateway
        # puts it under callgrind); the wait for it to be ready is then ten times as long.
        prefix = shlex.split(os.environ.get("BENCH_GATEWAY_PREFIX", ""))
        process = subprocess.Popen([*prefix, sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
                                   cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    _CHILDREN.append(process)
    gateway = Gateway(process, http_port, log_path)
    path = "/readyz" if wait_bound else "/healthz"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(ready, 600 if prefix else 60, f"the gateway's {path}")
    except BaseException:
        gateway.stop()
        raise
    return gateway


def measure_start(gateways: list[Gateway]) -> None:
    """Run $BENCH_GATEWAY_MEASURE_START with each gateway's pid when the measured part
    begins (bench/redis_instructions.py --process gateway: callgrind's instrumentation is
    switched on here, so start-up and warm-up run uninstrumented, about 5 times faster)."""
    command = shlex.split(os.environ.get("BENCH_GATEWAY_MEASURE_START", ""))
    for gateway in gateways if command else []:
        subprocess.run([*command, str(gateway.pid)], check=True, capture_output=True, timeout=60)


class WireTap:
    """A TCP relay between the gateway and the simulator that notes when each
    destination's first submit_sm passes (time.time(), this host's clock): the time "on
    the wire" without asking the simulator.  Only the latency scenario uses it; bytes
    are relayed unchanged, SMPP framing read from the 16-octet headers."""

    SUBMIT_SM = 0x00000004

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.first_seen: dict[str, float] = {}
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer, inspect=True), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inspect: bool = False) -> None:
        buffer = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                if inspect:
                    buffer = self._inspect(buffer + data, time.time())
            writer.close()
        except (ConnectionError, OSError):
            writer.close()

    def _inspect(self, data: bytes, now: float) -> bytes:
        pos = 0
        while len(data) - pos >= 16:
            length = int.from_bytes(data[pos:pos + 4], "big")
            if length < 16 or len(data) - pos < length:
                break
            if int.from_bytes(data[pos + 4:pos + 8], "big") == self.SUBMIT_SM:
                body = data[pos + 16:pos + length]
                # service_type, source ton/npi, source_addr, dest ton/npi, destination_addr
                at = body.index(b"\0") + 3
                at = body.index(b"\0", at) + 3
                destination = body[at:body.index(b"\0", at)].decode("ascii", "replace")
                self.first_seen.setdefault(destination, now)
            pos += length
        return data[pos:]


# --------------------------------------------------------------------------------------
# load and read-back
# --------------------------------------------------------------------------------------


def phone(index: int) -> str:
    return f"138{index % 100_000_000:08d}"


async def xadd_batch(redis: Any, keys: Keys, scenario: Scenario, first: int, count: int) -> list[str]:
    """XADD `count` requests in one pipeline; their entry ids."""
    stream = keys.notify_stream
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(first, first + count):
            kind, params = scenario.request(index)
            pipe.xadd(stream, {"type": kind, "to": phone(index), "params": params})
        return [str(entry) for entry in await pipe.execute()]


async def xadd_fast(redis: Any, keys: Keys, scenario: Scenario, first: int, count: int, batch: int) -> list[str]:
    """As fast as this process can: one pipeline of `batch` entries after another."""
    ids: list[str] = []
    for start in range(first, first + count, batch):
        ids += await xadd_batch(redis, keys, scenario, start, min(batch, first + count - start))
    return ids


async def xadd_paced(redis: Any, keys: Keys, scenario: Scenario, first: int, count: int,
                     rate: float, tick_seconds: float = 0.01) -> list[str]:
    """`rate` per second, a small pipeline every `tick_seconds` (absolute schedule: no drift)."""
    ids: list[str] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < count:
        due = min(count, int((loop.time() - start) * rate) + 1)
        if due > sent:
            ids += await xadd_batch(redis, keys, scenario, first + sent, due - sent)
            sent = due
        await asyncio.sleep(tick_seconds)
    return ids


def xadd_seconds(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


async def redis_command_stats(redis: Any) -> dict[str, tuple[float, int]]:
    """(microseconds, calls) per command since CONFIG RESETSTAT, most time first."""
    info = await redis.info("commandstats")
    stats = {name.removeprefix("cmdstat_"): (float(stat["usec"]), int(stat["calls"])) for name, stat in info.items()}
    return dict(sorted(stats.items(), key=lambda kv: -kv[1][0]))


async def sim_stats(simulator: Simulator) -> dict[str, Any]:
    return await fetch_stats(simulator.stats_port)


async def wait_simulator(simulator: Simulator, before: dict[str, Any], messages: int, receipts: bool,
                         timeout_seconds: float, producing: asyncio.Future[Any] | None = None,
                         poll_seconds: float = 0.05) -> tuple[dict[str, Any], bool]:
    """Poll until the simulator has `messages` more messages and (with receipts) every
    receipt it planned acknowledged: one per part, or one per message when only the
    first part asks (carriers[].receipt_parts); (last stats, complete)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        stats = await sim_stats(simulator)
        done_messages = stats["messages"] - before["messages"] >= messages
        planned = stats["receipts_scheduled"] - before["receipts_scheduled"]
        done_receipts = not receipts or (planned >= messages
                                         and stats["receipts_acked"] - before["receipts_acked"] >= planned)
        if done_messages and done_receipts and (producing is None or producing.done()):
            return stats, True
        if time.monotonic() > deadline:
            return stats, False
        await asyncio.sleep(poll_seconds)


READ_FIELDS = ("state", "parts", "type", "submit_started_at", "submitted_at", "delivered_at")


async def read_back(redis: Any, keys: Keys, ids: Sequence[str], chunk: int = 5000) -> list[list[str | None]]:
    rows: list[list[str | None]] = []
    for start in range(0, len(ids), chunk):
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id in ids[start:start + chunk]:
                pipe.hmget(keys.notification(f"stream-{entry_id}"), READ_FIELDS)
            rows += await pipe.execute()
    return rows


async def wait_final(redis: Any, keys: Keys, ids: Sequence[str], final: str,
                     timeout_seconds: float) -> list[list[str | None]]:
    """Read every hash until all are `final` (or the timeout passes); the last rows."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        rows = await read_back(redis, keys, ids)
        if all(row[0] == final for row in rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


def ms_percentiles(values: Sequence[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50) * 1000, 1), "p99": round(percentile(values, 99) * 1000, 1),
            "max": round(max(values) * 1000, 1) if values else float("nan"), "samples": len(values)}


def latencies(ids: Sequence[str], rows: Sequence[Sequence[str | None]],
              select: Callable[[Sequence[str | None]], bool] = lambda row: True,
              wire: Sequence[float | None] | None = None) -> dict[str, Any]:
    to_claim: list[float] = []
    to_submitted: list[float] = []
    to_delivered: list[float] = []
    to_wire: list[float] = []
    for k, (entry_id, row) in enumerate(zip(ids, rows, strict=True)):
        if not select(row):
            continue
        at = xadd_seconds(entry_id)
        for column, values in ((3, to_claim), (4, to_submitted), (5, to_delivered)):
            value = row[column]
            if value:
                values.append(float(value) - at)
        if wire is not None and wire[k] is not None:
            to_wire.append(wire[k] - at)  # type: ignore[operator]
    out = {"xadd_to_claim_ms": ms_percentiles(to_claim), "xadd_to_submitted_ms": ms_percentiles(to_submitted),
           "xadd_to_delivered_ms": ms_percentiles(to_delivered)}
    if wire is not None:
        out["xadd_to_wire_ms"] = ms_percentiles(to_wire)
    return out


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    redis_server: RedisServerProcess
    simulator: Simulator
    keys: Keys = field(default_factory=Keys)
    redis: Any = None

    async def connect(self) -> None:
        from gateway.store.service import make_client

        self.redis = make_client(self.redis_server.url)

    async def flush(self) -> None:
        await self.redis.flushall()

    def settings(self, scenario: Scenario, carrier_port: int | None = None) -> GatewaySettings:
        return GatewaySettings(sessions=self.args.sessions, window=self.args.window, receipts=scenario.receipts,
                               carrier_port=self.simulator.smpp_port if carrier_port is None else carrier_port,
                               push_batch_size=self.args.push_batch_size, receipt_parts=self.args.receipt_parts,
                               tps_limit=self.args.tps_limit, events=self.args.events,
                               ledger_engine=self.args.ledger_engine)

    def start_gateways(self, scenario: Scenario, label: str, processes: int,
                       carrier_port: int | None = None) -> list[Gateway]:
        gateways: list[Gateway] = []
        try:
            for k in range(processes):
                gateways.append(start_gateway(self.workdir, f"{label}-{k}", self.redis_server.url, scenario.family,
                                              self.settings(scenario, carrier_port)))
        except BaseException:
            for g in gateways:
                g.stop()
            raise
        return gateways

    async def measure(self, scenario: Scenario, label: str, n: int, *, processes: int = 1,
                      paced_rate: float = 0.0) -> dict[str, Any]:
        """One run on fresh gateway process(es): warm-up, then `n` notifications."""
        args = self.args
        await self.flush()
        tap = None
        if paced_rate:
            tap = WireTap(self.simulator.smpp_port)
            await tap.start()
        gateways = await asyncio.to_thread(self.start_gateways, scenario, label, processes,
                                           tap.port if tap else None)
        profiler = None
        try:
            final = "delivered" if scenario.receipts else "submitted"
            timeout = max(120.0, n / 300)
            # Warm-up: connections, imports, the first script loads; not measured.
            if args.warmup:
                before = await sim_stats(self.simulator)
                warm = await xadd_fast(self.redis, self.keys, scenario, 90_000_000, args.warmup, args.batch)
                _, complete = await wait_simulator(self.simulator, before, len(warm), scenario.receipts, timeout)
                await wait_final(self.redis, self.keys, warm, final, 30)
            measure_start(gateways)
            profiler = start_profiler(gateways[0].pid, args.profile_dir / f"push_{label}.txt" if args.profile_dir else None)
            load_average = os.getloadavg()[0]
            pids = [g.pid for g in gateways]
            cpu_before = [cpu_seconds(pid) for pid in pids]
            waited_before = [runqueue_wait_seconds(pid) for pid in pids]
            redis_pid = self.redis_server.process.pid  # type: ignore[union-attr]
            redis_cpu_before = cpu_seconds(redis_pid)
            redis_system_before = system_cpu_seconds(redis_pid)
            rewrite_cpu_before = cpu_seconds(redis_pid, children=True)
            own_before = cpu_seconds()
            await self.redis.config_resetstat()  # commandstats and total_forks from here
            stats_before = await sim_stats(self.simulator)
            started = time.time()
            if paced_rate:
                producing = asyncio.ensure_future(xadd_paced(self.redis, self.keys, scenario, 0, n, paced_rate))
            else:
                producing = asyncio.ensure_future(xadd_fast(self.redis, self.keys, scenario, 0, n, args.batch))
            stats_after, complete = await wait_simulator(self.simulator, stats_before, n, scenario.receipts,
                                                         timeout, producing)
            seen_at = time.time()
            cpu_after = [cpu_seconds(pid) for pid in pids]
            waited = sum(runqueue_wait_seconds(pid) - w for pid, w in zip(pids, waited_before, strict=True))
            redis_cpu = cpu_seconds(redis_pid) - redis_cpu_before
            redis_system = system_cpu_seconds(redis_pid) - redis_system_before
            own_cpu = cpu_seconds() - own_before
            ids = await producing
            command_stats = await redis_command_stats(self.redis)
            # AOF rewrites that started during the run (their forked child is counted once
            # it has ended and been reaped, so a rewrite still running is not in the CPU).
            aof_rewrites = (await self.redis.info("stats"))["total_forks"]  # counted from the RESETSTAT
            rewrite_cpu = cpu_seconds(redis_pid, children=True) - rewrite_cpu_before
            stop_profiler(profiler)
            profiler = None
            rows = await wait_final(self.redis, self.keys, ids, final, 30 if complete else 5)
            peak_rss = [peak_rss_bytes(pid) for pid in pids]
        finally:
            stop_profiler(profiler)
            for g in gateways:
                await asyncio.to_thread(g.stop)
            if tap is not None:
                await tap.stop()

        first_xadd = xadd_seconds(ids[0]) if ids else started
        submitted = [float(row[4]) for row in rows if row[4]]
        delivered = [float(row[5]) for row in rows if row[5]]
        lost = sum(1 for row in rows if row[0] != final)
        last_submitted = max(submitted) if submitted else seen_at
        gateway_cpu = sum(a - b for a, b in zip(cpu_after, cpu_before, strict=True))
        parts = stats_after["submit_sm"] - stats_before["submit_sm"]
        result: dict[str, Any] = {
            "scenario": scenario.name,
            "label": label,
            "processes": processes,
            "messages": n,
            "paced_rate": paced_rate or None,
            "receipts": scenario.receipts,
            "complete": complete and lost == 0,
            "lost": lost,
            "submit_sm": parts,
            "parts_per_message": round(parts / n, 3) if n else 0,
            "messages_at_simulator": stats_after["messages"] - stats_before["messages"],
            "duplicates_at_simulator": stats_after["duplicate_messages"] - stats_before["duplicate_messages"],
            "receipts_acked": stats_after["receipts_acked"] - stats_before["receipts_acked"],
            "throughput_per_second": round(n / (last_submitted - first_xadd), 1) if last_submitted > first_xadd else 0.0,
            "delivered_per_second": (round(len(delivered) / (max(delivered) - first_xadd), 1)
                                     if delivered and max(delivered) > first_xadd else None),
            "xadd_seconds": round(xadd_seconds(ids[-1]) - first_xadd, 2) if ids else 0.0,
            "wall_seconds": round(seen_at - started, 2),
            "gateway_cpu_seconds": round(gateway_cpu, 2),
            "gateway_cpu_seconds_each": [round(a - b, 2) for a, b in zip(cpu_after, cpu_before, strict=True)],
            "gateway_cpu_seconds_per_1000": round(gateway_cpu / n * 1000, 3) if n else 0.0,
            "gateway_peak_rss_mb": round(max(peak_rss) / 2**20, 1),
            "gateway_runqueue_wait_seconds": round(waited, 2),
            "redis_cpu_seconds": round(redis_cpu, 2),
            "redis_cpu_ms_per_message": round(redis_cpu / n * 1000, 3) if n else 0.0,
            # The kernel's part of it (socket reads and writes, the AOF's write()).
            "redis_system_ms_per_message": round(redis_system / n * 1000, 3) if n else 0.0,
            "redis_aof_rewrites": aof_rewrites,
            "redis_aof_rewrite_cpu_seconds": round(rewrite_cpu, 2),
            "simulator_cpu_seconds": round(stats_after["cpu_seconds"] - stats_before["cpu_seconds"], 2),
            "load_generator_cpu_seconds": round(own_cpu, 2),
            "load_average_before": round(load_average, 2),
            # Where redis-server's time went (commands called by scripts included).
            "redis_per_message": {name: {"usec": round(usec / n, 1), "calls": round(calls / n, 3)}
                                  for name, (usec, calls) in command_stats.items() if usec >= n / 10} if n else {},
        }
        wire = [tap.first_seen.get(phone(k)) for k in range(n)] if tap else None
        result.update(latencies(ids, rows, wire=wire))
        if len(scenario.mix) > 1:
            result["latency_by_lane"] = {
                lane: latencies(ids, rows, lambda row, lane=lane: LANE_OF_TYPE.get(row[2] or "") == lane)
                for lane in ("high", "normal", "bulk")
            }
        return result

    async def queued(self, n: int) -> dict[str, Any]:
        """RSS of a gateway holding `n` accepted notifications while its carrier is down."""
        await self.flush()
        scenario = SCENARIOS["chinese"]
        down_port = free_port()  # nothing listens there: the link never binds
        gateway = await asyncio.to_thread(
            start_gateway, self.workdir, "queued", self.redis_server.url, scenario.family,
            self.settings(scenario, carrier_port=down_port), False)
        try:
            rss_before = rss_bytes(gateway.pid)
            cpu_before = cpu_seconds(gateway.pid)
            started = time.monotonic()
            sent = 0
            samples: list[int] = []
            lane = self.keys.lane("normal")
            while sent < n:
                count = min(self.args.batch * 10, n - sent)
                await xadd_fast(self.redis, self.keys, scenario, sent, count, self.args.batch)
                sent += count
                samples.append(rss_bytes(gateway.pid))
            xadd_done = time.monotonic() - started
            while await self.redis.zcard(lane) < n:
                if time.monotonic() - started > max(600.0, n / 500):
                    break
                samples.append(rss_bytes(gateway.pid))
                await asyncio.sleep(0.5)
            accepted_in = time.monotonic() - started
            queued = await self.redis.zcard(lane)
            await asyncio.sleep(2.0)  # a few housekeeping ticks with everything queued
            rss_now = rss_bytes(gateway.pid)
            peak = peak_rss_bytes(gateway.pid)
            cpu = cpu_seconds(gateway.pid) - cpu_before
            info = await self.redis.info("memory")
        finally:
            await asyncio.to_thread(gateway.stop)
        return {
            "notifications": n,
            "queued": queued,
            "gateway_rss_mb_idle": round(rss_before / 2**20, 1),
            "gateway_rss_mb": round(rss_now / 2**20, 1),
            "gateway_peak_rss_mb": round(peak / 2**20, 1),
            "gateway_rss_mb_max_sampled": round(max(samples) / 2**20, 1) if samples else None,
            "xadd_seconds": round(xadd_done, 1),
            "accepted_within_seconds": round(accepted_in, 1),
            "accepted_per_second": round(queued / accepted_in, 1) if accepted_in else 0.0,
            "gateway_cpu_seconds": round(cpu, 1),
            "redis_used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
        }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with the range over all runs."""
    ranked = sorted(runs, key=lambda r: r["throughput_per_second"])
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["runs"] = len(runs)
    chosen["throughput_range"] = [ranked[0]["throughput_per_second"], ranked[-1]["throughput_per_second"]]
    chosen["lost_all_runs"] = sum(r["lost"] for r in runs)
    return chosen


def run_kannel(n: int, repeat: int, workdir: Path) -> dict[str, Any]:
    """bench/vs_kannel.sh with N per scenario; its summary JSON (median runs)."""
    env = dict(os.environ, N=str(n), REPEAT=str(repeat), PYTHON=sys.executable)
    log_path = workdir / "vs_kannel.out"
    with open(log_path, "wb") as out:
        result = subprocess.run([str(BENCH / "vs_kannel.sh")], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, timeout=3600)
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"vs_kannel.sh exited with {result.returncode}; see {log_path}")
    summary = json.loads(lines[-1])
    return {r["scenario"]: r for r in summary["median"]}


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


async def run_all(bench: Bench, scenarios: list[str]) -> dict[str, Any]:
    args = bench.args
    await bench.connect()
    for setting in args.redis_config:
        name, _, value = setting.partition(" ")
        await bench.redis.config_set(name, value)
    out: dict[str, Any] = {"runs": [], "latency": None, "queued": None, "two_processes": None}
    medians: dict[str, dict[str, Any]] = {}
    try:
        for name in scenarios:
            if name in THROUGHPUT_SCENARIOS:
                runs = [await bench.measure(SCENARIOS[name], f"{name}-{k}", args.messages)
                        for k in range(args.repeat)]
                medians[name] = median_run(runs)
                out["runs"].append(medians[name])
                _progress(medians[name])
            elif name == "latency":
                n = int(args.rate * args.latency_seconds)
                runs = [await bench.measure(SCENARIOS["chinese"], f"latency-{k}", n, paced_rate=args.rate)
                        for k in range(args.repeat)]
                ranked = sorted(runs, key=lambda r: r["xadd_to_wire_ms"]["p99"])
                out["latency"] = dict(ranked[(len(ranked) - 1) // 2], runs=len(runs),
                                      p99_range_ms=[ranked[0]["xadd_to_wire_ms"]["p99"],
                                                    ranked[-1]["xadd_to_wire_ms"]["p99"]])
                _progress(out["latency"])
            elif name == "queued-1m":
                out["queued"] = await bench.queued(args.queued)
                print(f"push_throughput: queued {out['queued']}", file=sys.stderr, flush=True)
            elif name == "two-processes":
                one = medians.get("chinese")
                if one is None:
                    one = median_run([await bench.measure(SCENARIOS["chinese"], f"one-{k}", args.messages)
                                      for k in range(args.repeat)])
                two = median_run([await bench.measure(SCENARIOS["chinese"], f"two-{k}", args.messages, processes=2)
                                  for k in range(args.repeat)])
                _progress(two)
                out["two_processes"] = {
                    "scenario": "chinese", "one_per_second": one["throughput_per_second"],
                    "two_per_second": two["throughput_per_second"],
                    "ratio": round(two["throughput_per_second"] / one["throughput_per_second"], 2),
                    "two_run": two,
                }
    finally:
        await bench.redis.aclose()
    return out


def _progress(result: dict[str, Any]) -> None:
    print(f"push_throughput: {result['label']}: {result['throughput_per_second']:,.0f}/s, lost {result['lost']}, "
          f"p99 xadd->submitted {result['xadd_to_submitted_ms']['p99']} ms", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=100_000, help="notifications per run (100,000)")
    parser.add_argument("--scenario", action="append", choices=ALL_SCENARIOS,
                        help="run this scenario (repeatable; default: all)")
    parser.add_argument("--skip-kannel", action="store_true", help="do not run bench/vs_kannel.sh")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 notifications, scenario chinese, 200 warm-up, no Kannel")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is reported")
    parser.add_argument("--sessions", type=int, default=2, help="carrier transceiver sessions (2)")
    parser.add_argument("--window", type=int, default=500, help="window per session (500)")
    parser.add_argument("--batch", type=int, default=1000, help="XADD per pipeline (1,000)")
    parser.add_argument("--events", choices=("all", "final", "off"), default="all",
                        help="push.events: which state changes go to the events stream (all)")
    parser.add_argument("--ledger-engine", choices=("scripts", "steps"), default="scripts",
                        help="push.ledger_engine: the ledger's logic in Redis (scripts) or in the gateway (steps)")
    parser.add_argument("--push-batch-size", type=int, default=0,
                        help="push.batch_size in the gateway's config (default: the schema's)")
    parser.add_argument("--redis-config", action="append", default=[], metavar="'NAME VALUE'",
                        help="CONFIG SET on redis-server before the runs (repeatable)")
    parser.add_argument("--tps-limit", type=int, default=100_000,
                        help="carriers[].tps_limit of each gateway process (100,000: no throttle); "
                             "e.g. 1500 to measure two processes where each one's binds are the limit")
    parser.add_argument("--receipt-parts", choices=("first", "every"), default="first",
                        help="carriers[].receipt_parts: first (as Kannel asks, the default here) or every part")
    parser.add_argument("--warmup", type=int, default=2000, help="notifications before each measured run")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency scenario: XADD per second")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="latency scenario: duration")
    parser.add_argument("--queued", type=int, default=1_000_000, help="queued-1m scenario: notifications")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="record the gateway with py-spy during each measured run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, AOF)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = 2000 if args.messages == 100_000 else args.messages
        args.scenario = args.scenario or ["chinese"]
        args.warmup = min(args.warmup, 200)
        args.skip_kannel = True
    scenarios = [s for s in ALL_SCENARIOS if s in (args.scenario or ALL_SCENARIOS)]

    workdir = Path(tempfile.mkdtemp(prefix="bench-push-"))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    redis_server = RedisServerProcess(data_dir=workdir / "redis")
    redis_server.start()
    try:
        simulator = start_simulator(workdir)
        bench = Bench(args, workdir, redis_server, simulator)
        out = asyncio.run(run_all(bench, scenarios))
    finally:
        _stop_children()
        redis_server.stop()
    kannel: dict[str, Any] | None = None
    if not args.skip_kannel and any(s in KANNEL_SCENARIO for s in scenarios):
        print("push_throughput: running bench/vs_kannel.sh", file=sys.stderr, flush=True)
        kannel = run_kannel(args.messages, args.repeat, workdir)
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}", file=sys.stderr)

    rows = []
    for r in out["runs"]:
        k = kannel.get(KANNEL_SCENARIO[r["scenario"]]) if kannel else None
        r["kannel_messages_per_second"] = round(k["messages_per_second"], 1) if k else None
        r["vs_kannel"] = round(r["throughput_per_second"] / k["messages_per_second"], 2) if k else None
        rows.append(_row(r))
    if out["latency"]:
        rows.append(_row(out["latency"]))
    if out["two_processes"]:
        rows.append(_row(out["two_processes"]["two_run"]))
    print_table(("run", "msgs", "parts", "msg/s", "Kannel msg/s", "vs Kannel", "p50 ->claim ms", "p99 ->claim ms",
                 "p50 ->wire ms", "p99 ->wire ms", "p99 ->submitted ms", "p99 ->delivered ms", "CPU s/1000",
                 "peak RSS MB", "lost"), rows)
    print_redis_table(out["runs"])
    if out["queued"]:
        q = out["queued"]
        print(f"\n{q['queued']:,} queued with the carrier down: gateway RSS {q['gateway_rss_mb']} MB "
              f"(peak {q['gateway_peak_rss_mb']} MB), accepted at {q['accepted_per_second']:,.0f}/s")
    if out["two_processes"]:
        t = out["two_processes"]
        print(f"two gateway processes: {t['two_per_second']:,.0f}/s vs one {t['one_per_second']:,.0f}/s "
              f"= {t['ratio']}x")

    targets = evaluate_targets(out)
    lost = sum(r["lost_all_runs"] for r in out["runs"])
    lost += out["latency"]["lost"] if out["latency"] else 0
    lost += out["two_processes"]["two_run"]["lost_all_runs"] if out["two_processes"] else 0
    print_json_line({
        "benchmark": "push_throughput",
        "date": today(),
        "machine": machine(),
        "setup": {
            "gateway": "python -m gateway run (own process), one carrier, state tracking on",
            "sessions": args.sessions, "window": args.window, "tps_limit": args.tps_limit,
            "push_batch_size": args.push_batch_size or "default", "events": args.events, "ledger_engine": args.ledger_engine, "receipt_parts": args.receipt_parts,
            "redis": "redis-server, appendonly everysec, FLUSHALL per run",
            "simulator": "bench/run_simulator.py --no-record-texts --receipt-delay 0.1 --deliver-window 100",
            "load": f"this process, XADD pipelines of {args.batch}", "warmup": args.warmup,
            "repeat": args.repeat, "messages": args.messages,
        },
        "runs": out["runs"],
        "latency": out["latency"],
        "queued": out["queued"],
        "two_processes": out["two_processes"],
        "kannel": kannel,
        "targets": targets,
        "lost": lost,
    })
    return 1 if lost else 0


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["label"] if r.get("runs", 1) == 1 else f"{r['scenario']} (median of {r['runs']})",
            r["messages"], r["parts_per_message"], r["throughput_per_second"],
            r.get("kannel_messages_per_second") or "-", r.get("vs_kannel") or "-",
            r["xadd_to_claim_ms"]["p50"], r["xadd_to_claim_ms"]["p99"],
            r["xadd_to_wire_ms"]["p50"] if "xadd_to_wire_ms" in r else "-",
            r["xadd_to_wire_ms"]["p99"] if "xadd_to_wire_ms" in r else "-", r["xadd_to_submitted_ms"]["p99"],
            r["xadd_to_delivered_ms"]["p99"], r["gateway_cpu_seconds_per_1000"], r["gateway_peak_rss_mb"],
            r["lost"])


# The commands of the hot path, as columns of the redis_per_message table.
REDIS_TABLE_COMMANDS = ("evalsha", "hset", "hmget", "xadd", "expire", "set", "zadd", "xdel")


def print_redis_table(runs: Sequence[dict[str, Any]]) -> None:
    """redis-server CPU per message (INFO cpu) and, per command, calls and µs per message
    (INFO commandstats: the commands scripts call are counted inside evalsha too, and
    these µs are wall time, so they grow when the machine is loaded)."""
    rows = []
    for r in runs:
        stats = r.get("redis_per_message") or {}
        cells = [f"{stats[c]['calls']:g} / {stats[c]['usec']:.1f}" if c in stats else "-" for c in REDIS_TABLE_COMMANDS]
        rows.append((r["label"], r.get("redis_cpu_ms_per_message", "-"), *cells))
    print()
    print_table(("run", "Redis CPU ms/msg", *(f"{c} calls / us" for c in REDIS_TABLE_COMMANDS)), rows)


def evaluate_targets(out: dict[str, Any]) -> dict[str, Any]:
    """Each target with its figure and whether it is met (None: not measured)."""
    by = {r["scenario"]: r for r in out["runs"]}
    result: dict[str, Any] = {}

    def put(name: str, value: float | None, ok: bool | None) -> None:
        result[name] = {"target": TARGETS[name], "value": value, "met": ok}

    chinese = by.get("chinese")
    put("chinese_per_second", chinese and chinese["throughput_per_second"],
        chinese["throughput_per_second"] >= TARGETS["chinese_per_second"] if chinese else None)
    put("chinese_vs_kannel", chinese and chinese.get("vs_kannel"),
        chinese["vs_kannel"] >= 1.0 if chinese and chinese.get("vs_kannel") else None)
    norcpt = by.get("ascii-norcpt")
    put("ascii_norcpt_vs_kannel", norcpt and norcpt.get("vs_kannel"),
        norcpt["vs_kannel"] >= 1.0 if norcpt and norcpt.get("vs_kannel") else None)
    latency = out["latency"]
    p99 = latency.get("xadd_to_wire_ms", latency["xadd_to_submitted_ms"])["p99"] if latency else None
    put("p99_xadd_to_wire_ms", p99, p99 < TARGETS["p99_xadd_to_wire_ms"] if p99 is not None else None)
    queued = out["queued"]
    rss = queued["gateway_rss_mb"] if queued else None
    put("queued_1m_rss_mb", rss, rss < TARGETS["queued_1m_rss_mb"] if rss is not None else None)
    redis_ms = chinese.get("redis_cpu_ms_per_message") if chinese else None
    put("chinese_redis_ms_per_message", redis_ms,
        redis_ms <= TARGETS["chinese_redis_ms_per_message"] if redis_ms else None)
    two = out["two_processes"]
    put("two_processes_ratio", two and two["ratio"], two["ratio"] >= TARGETS["two_processes_ratio"] if two else None)
    return result


if __name__ == "__main__":
    sys.exit(main())
