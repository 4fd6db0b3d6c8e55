"""Concurrent FastAGI calls walking the 12123 booking-status menu: calls per second and
the time from a caller's digit to the server's next command.

    .venv/bin/python bench/ivr_calls.py                  # 100 x 1,000 and 1,000 x 3,000 calls
    .venv/bin/python bench/ivr_calls.py --quick          # smoke run, a few seconds
    .venv/bin/python bench/ivr_calls.py --levels 500x2000 --profile-dir /tmp/prof
    .venv/bin/python bench/ivr_calls.py --levels 1000x2000 --pace-ms 1000   # prompts take time

Set-up (the benchmark's theory of operation):

* redis-server (`RedisServerProcess`, append-only file as in production) on a free
  port, loaded with the sample data (`load_sample`, six bookings of four callers);
* the gateway in its own process, ``python -m gateway run`` with a generated config
  where only Redis, FastAGI and HTTP (for /healthz and /metrics) are on: no carriers,
  ``push.enabled: false``, ``smpp_server.enabled: false``, JSON logs to a file.
  ``ivr.attempts_per_hour`` is raised to 1000, the schema's maximum: every lookup in
  the benchmark succeeds and is refunded, but calls of one caller overlap, and each
  holds one attempt for the moment between spending and refunding it;
* this process is the load: Twisted's default reactor (epoll) and the Asterisk-faithful
  client of tests/peers, so the client's CPU is not the server's.  Each of
  `concurrency` slots places calls one after another until `calls` are done; the
  slots' first calls are spread over ``--ramp-seconds`` (1 s).

The test peer answers every command at once (no audio time), so N concurrent calls are
N callers who never pause: a closed loop that keeps the server's one event loop busy
from about 50 calls on.  ``--pace-ms`` answers each command that much later, as if its
prompt played for that long, for a load closer to real calls.  ``--redis-max-connections``
raises the redis-py pool's limit (100 by default) through the URL's query string.

Each call is ``AGI(agi://.../12123)`` from a sample caller id, who presses 1 (exam
booking status), types one of their booking numbers and #, hears it read back, and
presses # to end; the server says goodbye and sends HANGUP.  A call that does not hear
its booking read back, is not hung up by the server, or fails, counts as an error.

Digit to command: the client notes the time when it hands the transport a reply that
consumed the caller's keys (``WAIT FOR DIGIT`` ``200 result=49``, ``GET DATA``
``200 result=20261128001``, ``WAIT FOR DIGIT`` ``200 result=35``) and the time the next
command line arrives.  So there are three samples per call: after "1" the server runs
``check_attempts`` (one Redis round trip: MGET), after the booking number
``booking_status`` (four in a row: the attempt counters' scripts in one pipeline, GET,
HGETALL with HGET, the counters' DECRs in one pipeline),
after "#" none.  It is measured on the client side, so it includes both event loops and
the sockets: what Asterisk would wait.  For comparison
the report also gives the server's own ``gateway12123_agi_step_seconds`` histogram (every
reply to the next command, taken inside the server) as the upper bound of the bucket
holding its p99.

Output: a table, then one JSON line (keys: benchmark, date, machine, setup, levels[];
each level: concurrency, calls, seconds, calls_per_second, digit_samples,
digit_to_command_ms {p50, p90, p99, max}, digit_to_command_ms_by_entry {after_1,
after_booking_number, after_hash: {p50, p99}}, connect_ms {p50, p99, max},
connects_over_asterisk_timeout (over res_agi.c's MAX_AGI_CONNECT, 2 s),
server_step_p99_le_ms, server_cpu_seconds, redis_cpu_seconds, client_cpu_seconds,
server_peak_rss_mb, load_average_before, errors, error_kinds).  The exit status is 1 if any call failed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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
    run_gateway,
    start_profiler,
    stop_profiler,
    terminate,
    today,
    wait_http_ok,
)

from gateway.store.embedded import RedisServerProcess, free_port  # noqa: E402

SCRIPT = "12123"
DEFAULT_LEVELS = "100x1000,1000x3000"
QUICK_LEVELS = "10x40,50x100"
WARMUP_CALLS = 50  # --quick: 10
DEFAULT_RAMP_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 120.0
ATTEMPTS_PER_HOUR = 1000  # IvrConfig.attempts_per_hour maximum
READBACK_CLIP = f"{SCRIPT}/booking_readback-1"  # the first clip of the booking read back
# The three digit samples of a call, in order, and the Redis work between each and the
# next command.
ENTRIES = ("after_1", "after_booking_number", "after_hash")
KEYS_PER_CALL = len(ENTRIES)
# res_agi.c MAX_AGI_CONNECT: Asterisk gives up a FastAGI connect after this long.
ASTERISK_CONNECT_TIMEOUT_SECONDS = 2.0


# --------------------------------------------------------------------------------------
# the server side: redis-server with the sample data, the gateway in its own process
# --------------------------------------------------------------------------------------


@dataclass
class Server:
    redis: RedisServerProcess
    gateway: subprocess.Popen[bytes]
    fastagi_port: int
    http_port: int
    log_path: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        terminate(self.gateway)
        self.redis.stop()


def sample_callers(redis_url: str) -> list[tuple[str, str]]:
    """Load the sample data; (booking number, phone on record) of every sample booking."""
    import asyncio

    from gateway.domain.sample import load_sample, sample_data
    from gateway.store.keys import Keys
    from gateway.store.service import make_client

    # The day `gateway seed` would use: bookings are dated from it.
    day = datetime.now(ZoneInfo("Asia/Shanghai")).date()

    async def load() -> None:
        client = make_client(redis_url)
        try:
            await load_sample(client, Keys(), today=day)
        finally:
            await client.aclose()

    asyncio.run(load())
    return [(b.booking_no, b.phone.digits) for b in sample_data(day).bookings]


def gateway_config(redis_url: str, fastagi_port: int, http_port: int, state_dir: Path) -> dict[str, Any]:
    """Only Redis, FastAGI and HTTP: the IVR's cost without the push pipeline's."""
    return {
        "redis": {"url": redis_url},
        "http": {"listen": f"127.0.0.1:{http_port}", "token": "bench"},
        "carriers": [],
        "smpp_server": {"enabled": False},
        "push": {"enabled": False, "templates_file": str(REPO / "config" / "templates.yaml")},
        "ivr": {
            # Above the largest level's concurrency: the benchmark measures calls, not the cap.
            "fastagi": {"listen": f"127.0.0.1:{fastagi_port}", "max_connections": 10_000},
            "menus_file": str(REPO / "config" / "ivr.yaml"),
            "sounds_dir": str(state_dir / "sounds"),
            "attempts_per_hour": ATTEMPTS_PER_HOUR,
            # Every check succeeds, but each holds its counters while in flight.
            "attempts_per_booking_per_day": 10_000, "attempts_per_caller_per_hour": 10_000,
            "enumeration_failures_per_minute": 1_000_000,
        },
        "ami": {"enabled": False},
        "logging": {"format": "json", "level": "info"},
        "state_dir": str(state_dir),
    }


def start_server(workdir: Path, redis_max_connections: int | None = None) -> tuple[Server, list[tuple[str, str]]]:
    """redis-server with the sample data, then the gateway; waits until it serves."""
    redis = RedisServerProcess(data_dir=workdir / "redis")
    redis.start()
    try:
        callers = sample_callers(redis.url)
        fastagi_port, http_port = free_port(), free_port()
        # redis-py reads pool options from the URL's query string.
        url = redis.url + (f"?max_connections={redis_max_connections}" if redis_max_connections else "")
        config_path = workdir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(gateway_config(url, fastagi_port, http_port, workdir)))
        log_path = workdir / "gateway.log"
        gateway = run_gateway(config_path, log_path)
    except BaseException:
        redis.stop()
        raise
    server = Server(redis, gateway, fastagi_port, http_port, log_path)
    try:
        # /healthz answers once the reactor runs, i.e. after every service started.
        wait_http_ok(gateway, f"http://127.0.0.1:{http_port}/healthz", log_path)
    except BaseException:
        server.stop()
        raise
    return server, callers


def step_p99_le_ms(before: str, after: str) -> float:
    """Upper bound (ms) of the gateway12123_agi_step_seconds bucket holding the p99 of the
    observations made between two /metrics scrapes; inf above the last bucket."""
    from prometheus_client.parser import text_string_to_metric_families

    def buckets(text: str) -> dict[float, float]:
        for family in text_string_to_metric_families(text):
            if family.name == "gateway12123_agi_step_seconds":
                return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
        return {}

    start, end = buckets(before), buckets(after)
    counts = sorted((le, end[le] - start.get(le, 0.0)) for le in end)
    if not counts or counts[-1][1] <= 0:
        return float("nan")
    total = counts[-1][1]
    return next(le for le, n in counts if n >= 0.99 * total) * 1000


# --------------------------------------------------------------------------------------
# the load: Asterisk-faithful callers
# --------------------------------------------------------------------------------------


def _caller_class(reactor: Any, pace_seconds: float) -> type:
    """TimedCaller, defined once the reactor is chosen (tests.peers imports Twisted)."""
    from time import perf_counter

    from twisted.internet.protocol import connectionDone

    from tests.peers.fastagi_client import AsteriskFastAgiClient

    class TimedCaller(AsteriskFastAgiClient):  # type: ignore[misc]
        """The test peer, timing each reply that carries the caller's keys to the next
        command line.  Only public behaviour is used: the keys still to type
        (`typing`, `inputs`) shrink when a reply consumed some.

        With `pace_seconds`, each command is answered that long after it arrived, as if
        its prompt played (or the caller typed) for that time.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.digit_to_command: list[float] = []
            self.connect_seconds = 0.0
            self.connect_started = perf_counter()
            self._input_sent_at: float | None = None
            self._paced: list[Any] = []

        def _keys_left(self) -> int:
            return len(self.typing) + sum(len(i.keys) for i in self.inputs)

        def connectionMade(self) -> None:
            self.connect_seconds = perf_counter() - self.connect_started
            super().connectionMade()

        def dataReceived(self, data: bytes) -> None:
            arrived = perf_counter()
            if self._input_sent_at is not None and b"\n" in data:
                self.digit_to_command.append(arrived - self._input_sent_at)
                self._input_sent_at = None
            if pace_seconds and b"\n" in data:
                self._paced = [c for c in self._paced if c.active()]
                self._paced.append(reactor.callLater(pace_seconds, self._handle_commands, data))
            else:
                self._handle_commands(data)

        def _handle_commands(self, data: bytes) -> None:
            keys_left = self._keys_left()
            super().dataReceived(data)
            if self._keys_left() < keys_left and not self.closed:
                # The reply is with the transport; the server's next command is awaited.
                self._input_sent_at = perf_counter()

        def connectionLost(self, reason: Any = connectionDone) -> None:
            for call in self._paced:
                if call.active():
                    call.cancel()
            super().connectionLost(reason)

    return TimedCaller


@dataclass
class LevelResult:
    concurrency: int
    calls: int
    seconds: float = 0.0
    digit_to_command: list[float] = field(default_factory=list)
    by_entry: tuple[list[float], ...] = field(default_factory=lambda: tuple([] for _ in ENTRIES))
    connect: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    server_cpu_seconds: float = 0.0
    redis_cpu_seconds: float = 0.0
    client_cpu_seconds: float = 0.0
    server_step_p99_le_ms: float = float("nan")
    server_peak_rss_mb: float = 0.0
    load_average: float = float("nan")  # 1-minute load average when the level started

    def summary(self) -> dict[str, Any]:
        ms = [s * 1000 for s in self.digit_to_command]
        connect_ms = [s * 1000 for s in self.connect]
        return {
            "concurrency": self.concurrency,
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "calls_per_second": round(self.calls / self.seconds, 1) if self.seconds else 0.0,
            "digit_samples": len(ms),
            "digit_to_command_ms": {
                "p50": round(percentile(ms, 50), 2), "p90": round(percentile(ms, 90), 2),
                "p99": round(percentile(ms, 99), 2), "max": round(max(ms, default=float("nan")), 2),
            },
            "digit_to_command_ms_by_entry": {
                name: {"p50": round(percentile(v, 50) * 1000, 2), "p99": round(percentile(v, 99) * 1000, 2)}
                for name, v in zip(ENTRIES, self.by_entry, strict=True)
            },
            "connect_ms": {
                "p50": round(percentile(connect_ms, 50), 2), "p99": round(percentile(connect_ms, 99), 2),
                "max": round(max(connect_ms, default=float("nan")), 2),
            },
            # Calls that Asterisk would have failed ("FastAGI connection ... timed out").
            "connects_over_asterisk_timeout": sum(s > ASTERISK_CONNECT_TIMEOUT_SECONDS for s in self.connect),
            "server_step_p99_le_ms": self.server_step_p99_le_ms,
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "redis_cpu_seconds": round(self.redis_cpu_seconds, 2),
            "client_cpu_seconds": round(self.client_cpu_seconds, 2),
            "server_peak_rss_mb": round(self.server_peak_rss_mb, 1),
            "load_average_before": round(self.load_average, 2),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
        }


@dataclass(frozen=True)
class LoadOptions:
    pace_seconds: float = 0.0  # each command answered this long after it arrived
    ramp_seconds: float = 0.0  # the slots' first calls spread over this time


async def run_calls(reactor: Any, port: int, callers: list[tuple[str, str]], concurrency: int,
                    calls: int, result: LevelResult, options: LoadOptions) -> None:
    """`concurrency` slots placing calls back to back until `calls` have been placed."""
    from twisted.internet.defer import DeferredList, ensureDeferred
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory
    from twisted.internet.task import deferLater

    from tests.peers.fastagi_client import CallerInput

    timed_caller = _caller_class(reactor, options.pace_seconds)
    numbers = itertools.count()
    run_id = int(time.time())

    async def one_call(n: int) -> None:
        booking, phone = callers[n % len(callers)]
        client = timed_caller(
            SCRIPT, callerid=phone, uniqueid=f"{run_id}.{n}",
            inputs=[CallerInput("1"), CallerInput(booking + "#"), CallerInput("#")],
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=CALL_TIMEOUT_SECONDS)
        try:
            await endpoint.connect(Factory.forProtocol(lambda: client))
        except Exception as error:  # any failure to connect is this call's error
            result.errors[f"connect: {type(error).__name__}"] += 1
            return
        client.done.addTimeout(CALL_TIMEOUT_SECONDS, reactor)
        try:
            await client.done
        except Exception as error:
            result.errors[f"call: {type(error).__name__}"] += 1
            client.transport.abortConnection()
            return
        result.connect.append(client.connect_seconds)
        result.digit_to_command.extend(client.digit_to_command)
        if not any(p.what == READBACK_CLIP for p in client.played):
            last = client.played[-1].what if client.played else "nothing"
            result.errors[f"booking not read back (last heard {last})"] += 1
        elif not client.hung_up_by_script:
            result.errors["not hung up by the server"] += 1
        elif len(client.digit_to_command) != KEYS_PER_CALL:
            result.errors["digit timing missing"] += 1
        else:
            for samples, seconds in zip(result.by_entry, client.digit_to_command, strict=True):
                samples.append(seconds)

    async def slot(index: int) -> None:
        if options.ramp_seconds:
            await deferLater(reactor, options.ramp_seconds * index / concurrency)
        while (n := next(numbers)) < calls:
            await one_call(n)

    await DeferredList([ensureDeferred(slot(i)) for i in range(concurrency)])


async def run_levels(reactor: Any, server: Server, callers: list[tuple[str, str]],
                     levels: list[tuple[int, int]], options: LoadOptions, profile_dir: Path | None,
                     warmup_calls: int = WARMUP_CALLS) -> list[LevelResult]:
    pid, redis_pid = server.gateway.pid, server.redis.process.pid  # type: ignore[union-attr]
    # Warm-up: the first calls load the Lua script into Redis and open the pool's connections.
    await run_calls(reactor, server.fastagi_port, callers, 10, warmup_calls, LevelResult(10, warmup_calls),
                    LoadOptions())
    results = []
    for concurrency, calls in levels:
        # Other work on the machine shows here (the figures are only as quiet as it was).
        result = LevelResult(concurrency, calls, load_average=os.getloadavg()[0])
        output = profile_dir / f"ivr_calls_c{concurrency}.txt" if profile_dir else None
        profiler = start_profiler(pid, output, rate_hz=250)
        metrics_before = server.metrics_text()
        cpu = (cpu_seconds(pid), cpu_seconds(redis_pid), cpu_seconds())
        started = time.perf_counter()
        await run_calls(reactor, server.fastagi_port, callers, concurrency, calls, result, options)
        result.seconds = time.perf_counter() - started
        result.server_cpu_seconds = cpu_seconds(pid) - cpu[0]
        result.redis_cpu_seconds = cpu_seconds(redis_pid) - cpu[1]
        result.client_cpu_seconds = cpu_seconds() - cpu[2]
        result.server_peak_rss_mb = peak_rss_bytes(pid) / 1e6
        result.server_step_p99_le_ms = step_p99_le_ms(metrics_before, server.metrics_text())
        stop_profiler(profiler)
        results.append(result)
    return results



# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_levels(text: str) -> list[tuple[int, int]]:
    """``"100x1000,1000x3000"`` -> [(100, 1000), (1000, 3000)] (concurrency x calls)."""
    levels = []
    for item in text.split(","):
        concurrency, _, calls = item.strip().partition("x")
        levels.append((int(concurrency), int(calls)))
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--levels", default=None,
                        help=f"concurrency x calls, comma separated (default {DEFAULT_LEVELS})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_LEVELS}")
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="record the gateway with py-spy (pip install py-spy) during each level")
    parser.add_argument("--pace-ms", type=float, default=0.0,
                        help="answer each command this long after it arrives, as if its prompt played "
                             "(default 0: at once, as the test peer does)")
    parser.add_argument("--ramp-seconds", type=float, default=DEFAULT_RAMP_SECONDS,
                        help="spread the slots' first calls over this time (0: all connect at once)")
    parser.add_argument("--redis-max-connections", type=int, default=None,
                        help="add ?max_connections=N to the gateway's redis.url (default: redis-py's pool "
                             "default of 100)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, AOF)")
    args = parser.parse_args(argv)
    levels = parse_levels(args.levels or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS))
    options = LoadOptions(pace_seconds=args.pace_ms / 1000, ramp_seconds=args.ramp_seconds)

    workdir = Path(tempfile.mkdtemp(prefix="bench-ivr-"))
    server, callers = start_server(workdir, args.redis_max_connections)
    results: list[LevelResult] = []
    try:
        from twisted.internet import reactor
        from twisted.internet.defer import ensureDeferred

        failure: list[Any] = []

        def go() -> None:
            d = ensureDeferred(run_levels(reactor, server, callers, levels, options, args.profile_dir,
                                          10 if args.quick else WARMUP_CALLS))
            d.addCallback(results.extend)
            d.addErrback(failure.append)
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(go)
        reactor.run()
        if failure:
            failure[0].raiseException()
    finally:
        server.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for r in results:
        s = r.summary()
        rows.append((s["concurrency"], s["calls"], s["calls_per_second"], s["digit_to_command_ms"]["p50"],
                     s["digit_to_command_ms"]["p99"], s["server_cpu_seconds"], s["redis_cpu_seconds"],
                     s["client_cpu_seconds"], s["errors"]))
    print_table(("concurrency", "calls", "calls/s", "p50 digit->cmd ms", "p99 digit->cmd ms",
                 "server CPU s", "redis CPU s", "client CPU s", "errors"), rows)
    print_json_line({
        "benchmark": "ivr_calls",
        "date": today(),
        "machine": machine(),
        "setup": {
            "server": "python -m gateway run (own process): redis + fastagi + http only",
            "client": "this process, Twisted default reactor, tests/peers AsteriskFastAgiClient",
            "redis": "redis-server, appendonly everysec, sample data",
            "attempts_per_hour": ATTEMPTS_PER_HOUR,
            "attempts_per_booking_per_day": 10_000, "attempts_per_caller_per_hour": 10_000,
            "enumeration_failures_per_minute": 1_000_000,
            "redis_max_connections": args.redis_max_connections,
            "pace_ms": args.pace_ms,
            "ramp_seconds": args.ramp_seconds,
            "call": "1, <booking>#, # (status by booking number)",
        },
        "levels": [r.summary() for r in results],
    })
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
