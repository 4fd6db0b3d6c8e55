"""Small helpers shared by the benchmarks in bench/.

A benchmark script puts bench/ on sys.path (running ``python bench/x.py`` does) and
imports ``_common``.  What is here:

* `percentile` (nearest rank, the usual definition for latency reports);
* CPU time and memory of a process from /proc (Linux), so a benchmark can charge the
  server process, redis-server and the load generator separately;
* `machine` and `today`: what a recorded figure needs next to it;
* the gateway as a child process: `run_gateway`, `wait_http_ok`, `terminate`, and
  py-spy on it (`start_profiler`, `stop_profiler`);
* the report: `print_table` for people and `print_json_line` (one line, prefixed by
  nothing, last on stdout) for tools and the smoke tests;
* `react_on_asyncio`: run a benchmark's coroutine on Twisted's asyncio reactor (the
  gateway's harnesses mix Deferreds and asyncio), and exit with its status.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "cpu_seconds",
    "machine",
    "peak_rss_bytes",
    "percentile",
    "print_json_line",
    "print_table",
    "rss_bytes",
    "run_gateway",
    "start_profiler",
    "stop_profiler",
    "terminate",
    "today",
    "wait_http_ok",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; NaN when empty.

    Nearest rank always answers a value that was measured (no interpolation), so a p99
    of 1,000 samples is the 990th smallest.
    """
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(pid: int | None = None, *, children: bool = False) -> float:
    """User plus system CPU seconds used so far by process `pid` (None: this process).

    Reads /proc/PID/stat (fields utime and stime, in clock ticks).  With `children`, the
    CPU of its children that have ended instead (cutime and cstime: redis-server's AOF
    rewrites run in a forked child).  Raises OSError when the process is gone.
    """
    if pid is None:
        times = os.times()
        return times.children_user + times.children_system if children else times.user + times.system
    with open(f"/proc/{pid}/stat") as f:
        # The command name in parentheses may contain spaces: split after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / _CLOCK_TICKS


def system_cpu_seconds(pid: int) -> float:
    """System (kernel) CPU seconds used so far by process `pid` (stime of /proc/PID/stat):
    with cpu_seconds, it splits a server's time between its own code and its syscalls."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / _CLOCK_TICKS


def _status_kib(pid: int | None, field: str) -> int:
    path = f"/proc/{'self' if pid is None else pid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of process `pid` now (VmRSS), in bytes."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int | None = None) -> int:
    """Highest resident set size of process `pid` so far (VmHWM), in bytes."""
    return _status_kib(pid, "VmHWM") * 1024


def machine() -> dict[str, Any]:
    """What the figures were measured on: usable cores, CPU model, kernel, Python."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu": model or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def today() -> str:
    """The local date, ISO format, for the record of a run."""
    return date.today().isoformat()


def wait_until(predicate: Callable[[], bool], timeout_seconds: float, what: str,
               interval_seconds: float = 0.05) -> None:
    """Poll `predicate` (blocking: before or after the reactor runs) until it is true;
    RuntimeError naming `what` after `timeout_seconds`."""
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {timeout_seconds:g} s")
        time.sleep(interval_seconds)


def run_gateway(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m gateway run -c CONFIG`` from the repository root, its output in `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )


def wait_http_ok(process: subprocess.Popen[bytes], url: str, log_path: Path,
                 timeout_seconds: float = 60.0) -> None:
    """Poll `url` until it answers 200; RuntimeError when `process` exits first (see
    `log_path`) or after `timeout_seconds`."""

    def ok() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(ok, timeout_seconds, url)


def terminate(process: subprocess.Popen[bytes], timeout_seconds: float = 30.0) -> None:
    """SIGTERM (the gateway drains and unbinds), SIGKILL if it is still there after
    `timeout_seconds`; nothing if it has exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_profiler(pid: int, output: Path | None, rate_hz: int = 200) -> subprocess.Popen[bytes] | None:
    """py-spy on process `pid` into `output` (raw collapsed stacks, for flamegraph.pl or a
    grep); None when `output` is None.  py-spy must be installed in the venv."""
    if output is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    profiler = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", str(rate_hz),
         "--format", "raw", "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches before the measured part starts
    return profiler


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None and profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        profiler.wait(60)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], file: TextIO = sys.stdout) -> None:
    """A plain text table, numbers right-aligned (floats with the digits they were given)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), file=file)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=file)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_json_line(record: dict[str, Any], file: TextIO = sys.stdout) -> None:
    """The machine-readable result: one JSON object on one line (NaN becomes null)."""
    print(json.dumps(_finite(record), ensure_ascii=False, separators=(",", ":")), file=file, flush=True)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def react_on_asyncio(main: Callable[[], Awaitable[int | None]]) -> None:
    """Install Twisted's asyncio reactor, run ``main()`` on it until it returns, then exit
    with the status it returned (None: 0); an exception is react's exit 1 with its
    traceback."""
    import asyncio

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import task

    from gateway.store.bridge import as_deferred

    status = [0]

    async def run() -> None:
        status[0] = await main() or 0

    try:
        task.react(lambda _reactor: as_deferred(run()))
    except SystemExit as e:  # react's own exit: 0 unless the run raised
        if e.code not in (0, None):
            raise
    sys.exit(status[0])
