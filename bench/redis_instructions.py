"""Redis's work per notification in instructions, not seconds: the same push run at two
sizes with redis-server under Valgrind's callgrind, so that variants compare to 1 %.

    .venv/bin/python bench/redis_instructions.py                  # round 1, then this tree with push.events all, final, off
    .venv/bin/python bench/redis_instructions.py --variant work:all --variant HEAD~3:all
    .venv/bin/python bench/redis_instructions.py --variant work:all --redis-config 'hash-max-ziplist-value 64'
    .venv/bin/python bench/redis_instructions.py --quick          # 100 and 300 notifications, this tree only
    .venv/bin/python bench/redis_instructions.py --breakdown      # where they go, by function (needs symbols)
    .venv/bin/python bench/redis_instructions.py --process gateway --variant e922e5d --variant work
                                                                  # the gateway process's instructions instead

Why: this VM's speed drifts by up to 50 % within an hour (docs/benchmarks.md, tenth and
eleventh stops), so CPU-time comparisons of 5-10 % took rounds of alternating runs and
were still noise.  The instructions redis-server executes for the same work are the same
from run to run within about 1 % (2026-12-04: 709.9 and 711.2 thousand per notification in
two runs of one variant), whatever the machine is doing meanwhile.

Method: for each variant, bench/push_throughput.py ``--scenario chinese --skip-kannel``
(Chinese two-part notifications, receipt on part 1) runs at ``-n N1`` and at ``-n N2``
with $GATEWAY_REDIS_SERVER pointing at a wrapper that runs the redis-server binary under
``valgrind --tool=callgrind``; callgrind's total at the server's exit, for each run;
``(total(N2) - total(N1)) / (N2 - N1)`` is what one more notification costs, without the
fixed part (start-up, warm-up, the last seconds idle).  Under Valgrind the server runs
about 20 times slower, so the gateway's batches are full, as in push_throughput at full
speed (not as at a carrier's TPS, where batches hold a few notifications).

What it does not count: the kernel's side of Redis's CPU (the AOF's write(), socket reads
and writes: 9 % and a few by perf, fourth stop) and memory stalls (a listpack scan and a
hash-table lookup cost differently per instruction).  So it ranks code, and it measures
the ratio between two versions of the code; seconds on a given machine are still
push_throughput's.

``--process gateway`` counts the `gateway run` process instead (Python under callgrind,
about 40 times slower: 130-170 notifications/s here), with redis-server running natively.
Callgrind's instrumentation is off through start-up and warm-up and switched on
(``callgrind_control --instr=on``, push_throughput's BENCH_GATEWAY_MEASURE_START hook) when
the measured part begins: Python's imports instrumented took 25 s of a 30 s smoke run.  The
background loops run on wall time, so the longer run does more of them: two runs of one
variant differ by up to 1 % (round 1: 969.1, 974.4 and 976.6 thousand).  Callgrind sees the interpreter's C functions, not Python's, so there
is no breakdown: use ``push_throughput.py --profile-dir`` (py-spy) for where, this for how
much.  A revision whose push_throughput.py predates these hooks gets them patched into its
exported copy.

Variant: ``REV[:EVENTS[:ENGINE]]``.  REV ``work`` is this working tree; anything else is a
git revision exported (``git archive``) into a temporary directory and run with this venv.
EVENTS is ``push.events`` (all, final, off); without it the revision's default (round 1
has no such setting).  ENGINE is ``push.ledger_engine`` (scripts, steps; from 2026-12-06).

Output: a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from _common import machine, print_json_line, print_table, today  # noqa: E402

from gateway.store.embedded import find_redis_server  # noqa: E402

ROUND_1 = "e922e5d"  # round 1's landing, the issue's "today" (docs/benchmarks.md)
DEFAULT_VARIANTS = (ROUND_1, "work:all", "work:final", "work:off")
# A run under Valgrind: about 250 notifications/s here, plus start-up; 20 minutes is
# ten times what N2 = 3,000 takes.
RUN_TIMEOUT_SECONDS = 1200
# Functions whose inclusive instructions --breakdown reports (none of them recursive, so
# callgrind's inclusive figure is not counted twice): what a notification's share goes to.
BREAKDOWN = {
    "feedAppendOnlyFile": "writes fed to the AOF (formatting each command and argument)",
    "json_decode": "the scripts' JSON argument decoded (ledger.lua's header)",
    "luaArgsToRedisArgv": "redis.call arguments turned into Redis objects",
    "parseReply": "replies turned back into Lua values",
    "hsetCommand": "HSET",
    "hmgetCommand": "HMGET",
    "xaddCommand": "XADD",
    "zaddGenericCommand": "ZADD",
    "processMultibulkBuffer": "clients' requests parsed",
}


def parse_variant(text: str) -> tuple[str, str | None, str | None]:
    """REV[:EVENTS[:ENGINE]]: a revision, push.events, push.ledger_engine (scripts, steps)."""
    rev, _, rest = text.partition(":")
    events, _, engine = rest.partition(":")
    if events and events not in ("all", "final", "off"):
        raise argparse.ArgumentTypeError(f"{text}: push.events is all, final or off, not {events!r}")
    if engine and engine not in ("scripts", "steps"):
        raise argparse.ArgumentTypeError(f"{text}: push.ledger_engine is scripts or steps, not {engine!r}")
    return rev or "work", events or None, engine or None


def export_tree(rev: str, into: Path) -> Path:
    """This tree for ``work``, else `rev` exported with git archive (no .git, no venv)."""
    if rev == "work":
        return REPO
    tree = into / re.sub(r"[^\w.-]", "_", rev)
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def callgrind_command(directory: Path, *, instrumented_at_start: bool = True) -> str:
    """Valgrind's callgrind, counting instructions only, its profile in `directory`."""
    return (f"valgrind --tool=callgrind --cache-sim=no --branch-sim=no "
            f"{'' if instrumented_at_start else '--instr-atstart=no '}"
            f"--callgrind-out-file={directory}/callgrind.%p.out")


def callgrind_wrapper(directory: Path, redis_server: str) -> Path:
    """A redis-server stand-in that execs the real one under callgrind (same pid, so the
    bench's own CPU and INFO readings still find it), its profile in `directory`."""
    wrapper = directory / "redis-server"
    wrapper.write_text(f"#!/bin/sh\nexec {callgrind_command(directory)} {redis_server} \"$@\"\n", encoding="utf-8")
    wrapper.chmod(0o755)
    return wrapper


# The line of push_throughput.py that starts the gateway, before the BENCH_GATEWAY_PREFIX hook.
_GATEWAY_POPEN = 'process = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config_path)],'


# Where the measured part begins, and the BENCH_GATEWAY_MEASURE_START hook put before it.
_PROFILER_START = "            profiler = start_profiler(gateways[0].pid,"
_MEASURE_START = ('            for _g in gateways if os.environ.get("BENCH_GATEWAY_MEASURE_START") else []:\n'
                  '                subprocess.run([*__import__("shlex").split(os.environ["BENCH_GATEWAY_MEASURE_START"]), '
                  'str(_g.pid)], check=True, capture_output=True, timeout=60)\n')


def ensure_gateway_prefix_hook(tree: Path) -> None:
    """Give an exported revision's push_throughput.py the BENCH_GATEWAY_PREFIX and
    BENCH_GATEWAY_MEASURE_START hooks."""
    bench = tree / "bench" / "push_throughput.py"
    text = bench.read_text(encoding="utf-8")
    if "BENCH_GATEWAY_MEASURE_START" in text:
        return
    if "BENCH_GATEWAY_PREFIX" not in text:
        if _GATEWAY_POPEN not in text or 'wait_until(ready, 60, ' not in text:
            raise RuntimeError(f"{bench}: cannot add the BENCH_GATEWAY_PREFIX hook (its gateway start differs)")
        text = text.replace(_GATEWAY_POPEN, _GATEWAY_POPEN.replace(
            "[sys.executable,", '[*__import__("shlex").split(os.environ.get("BENCH_GATEWAY_PREFIX", "")), sys.executable,'))
        text = text.replace("wait_until(ready, 60, ", "wait_until(ready, 600, ")
    if _PROFILER_START not in text:
        raise RuntimeError(f"{bench}: cannot add the BENCH_GATEWAY_MEASURE_START hook (no profiler start)")
    text = text.replace(_PROFILER_START, _MEASURE_START + _PROFILER_START)
    bench.write_text(text, encoding="utf-8")


def callgrind_total(directory: Path) -> tuple[int, Path]:
    """The instruction total of the one profiled process (redis-server or the gateway) in `directory`."""
    [profile] = directory.glob("callgrind.*.out")
    match = re.search(r"^totals:\s+(\d+)", profile.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{profile}: no totals line (did redis-server exit cleanly?)")
    return int(match.group(1)), profile


def inclusive_by_function(profile: Path) -> dict[str, int]:
    """callgrind_annotate's inclusive instructions per function name."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--tree=none", "--auto=no", "--threshold=100",
                           str(profile)], capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+\S*?:?(\w+) \[", line)
        if match:
            found[match.group(2)] = found.get(match.group(2), 0) + int(match.group(1).replace(",", ""))
    return found


def run_push(tree: Path, events: str | None, n: int, directory: Path, redis_server: str,
             redis_config: list[str], process: str = "redis", engine: str | None = None) -> dict[str, Any]:
    """One push_throughput run of `n` notifications from `tree` with `process` (redis, the
    redis-server; gateway, the `gateway run`) under callgrind; its instruction total and
    what the run reported."""
    directory.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    if process == "gateway":
        # Start-up and warm-up uninstrumented (Python's imports under callgrind took 25 s
        # of a 30 s smoke run); instrumentation on when the measured part begins.
        env.update(GATEWAY_REDIS_SERVER=redis_server,
                   BENCH_GATEWAY_PREFIX=callgrind_command(directory, instrumented_at_start=False),
                   BENCH_GATEWAY_MEASURE_START="callgrind_control --instr=on")
    else:
        env["GATEWAY_REDIS_SERVER"] = str(callgrind_wrapper(directory, redis_server))
    command = [sys.executable, str(tree / "bench" / "push_throughput.py"), "--scenario", "chinese", "-n", str(n),
               "--warmup", "100", "--skip-kannel"]
    if events:
        command += ["--events", events]
    if engine:
        command += ["--ledger-engine", engine]
    for setting in redis_config:
        command += ["--redis-config", setting]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)
    (directory / "push_throughput.out").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        raise RuntimeError(f"push_throughput failed ({result.returncode}); see {directory}/push_throughput.out")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    total, profile = callgrind_total(directory)
    return {"instructions": total, "profile": profile, "lost": int(report.get("lost", 0)),
            "messages_per_second": report["runs"][0].get("throughput_per_second") if report.get("runs") else None}


def measure(rev: str, events: str | None, args: argparse.Namespace, work: Path, redis_server: str,
            engine: str | None = None) -> dict[str, Any]:
    tree = export_tree(rev, work / "trees")
    if args.process == "gateway" and rev != "work":
        ensure_gateway_prefix_hook(tree)
    label = ":".join(x for x in (rev, events or ("default" if engine else ""), engine or "") if x)
    slug = re.sub(r"[^\w.-]", "_", label)
    small = run_push(tree, events, args.n1, work / slug / str(args.n1), redis_server, args.redis_config, args.process,
                     engine)
    large = run_push(tree, events, args.n2, work / slug / str(args.n2), redis_server, args.redis_config, args.process,
                     engine)
    per = (large["instructions"] - small["instructions"]) / (args.n2 - args.n1)
    row: dict[str, Any] = {
        "variant": label, "rev": rev, "events": events or "default",
        "instructions_per_notification": round(per),
        "instructions_total": [small["instructions"], large["instructions"]],
        "lost": small["lost"] + large["lost"],
        "messages_per_second_under_valgrind": [small["messages_per_second"], large["messages_per_second"]],
    }
    if args.breakdown:
        before, after = inclusive_by_function(small["profile"]), inclusive_by_function(large["profile"])
        # None: the binary has no symbol for it (static in Debian's build, or inlined).
        row["breakdown"] = {name: round((after[name] - before.get(name, 0)) / (args.n2 - args.n1))
                            if name in after else None for name in BREAKDOWN}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", type=parse_variant, metavar="REV[:EVENTS[:ENGINE]]",
                        help=f"what to measure, in order; the first is the others' reference "
                             f"(default: {', '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--n1", type=int, default=1000, help="notifications of the smaller run (1,000)")
    parser.add_argument("--n2", type=int, default=3000, help="notifications of the larger run (3,000)")
    parser.add_argument("--quick", action="store_true", help="100 and 300 notifications; this tree, all and off")
    parser.add_argument("--redis-server", default=None, help="the binary to profile (default: as the gateway finds it)")
    parser.add_argument("--redis-config", action="append", default=[], metavar="'NAME VALUE'",
                        help="passed to push_throughput (a redis-server setting for every variant)")
    parser.add_argument("--breakdown", action="store_true",
                        help="instructions per notification in a few named functions (a binary with symbols)")
    parser.add_argument("--process", choices=("redis", "gateway"), default="redis",
                        help="whose instructions: redis-server's (default) or the gateway process's")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (profiles, trees, outputs)")
    args = parser.parse_args()
    if args.quick:
        args.n1, args.n2 = 100, 300
        args.variant = args.variant or [("work", "all", None), ("work", "off", None)]
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    if args.n2 <= args.n1 or args.n1 < 1:
        parser.error("--n2 must be larger than --n1, and --n1 at least 1")
    if args.breakdown and args.process == "gateway":
        parser.error("--breakdown names redis-server's C functions; for the gateway's Python use "
                     "push_throughput.py --profile-dir (py-spy)")
    missing = [tool for tool in ("valgrind", "callgrind_annotate") if shutil.which(tool) is None]
    if missing:
        print(f"redis_instructions: {' and '.join(missing)} not found (Debian: apt-get install valgrind)",
              file=sys.stderr)
        return 2
    redis_server = args.redis_server or find_redis_server()

    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    rows: list[dict[str, Any]] = []
    try:
        for rev, events, engine in variants:
            rows.append(measure(rev, events, args, work, redis_server, engine))
            print(f"redis_instructions: {rows[-1]['variant']}: {rows[-1]['instructions_per_notification']:,} "
                  f"instructions per notification", file=sys.stderr)
    finally:
        if args.keep:
            print(f"redis_instructions: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    reference = rows[0]["instructions_per_notification"]
    for row in rows:
        row["vs_first"] = round(row["instructions_per_notification"] / reference, 3) if reference else None
    headers = ["variant", "instructions per notification", "vs first", "lost", "msg/s under valgrind"]
    print_table(headers, [(r["variant"], f"{r['instructions_per_notification']:,}", f"{r['vs_first']:.3f}",
                           r["lost"], " / ".join(str(v) for v in r["messages_per_second_under_valgrind"]))
                          for r in rows])
    if args.breakdown:
        print()
        print_table(["function (inclusive)", "what", *[r["variant"] for r in rows]],
                    [(name, what, *["-" if r["breakdown"][name] is None else f"{r['breakdown'][name]:,}" for r in rows]) for name, what in BREAKDOWN.items()])
    print()
    print_json_line({
        "benchmark": "redis_instructions",
        "date": today(),
        "machine": machine(),
        "setup": {"process": args.process, "scenario": "chinese, 2 parts, receipt on part 1", "n1": args.n1, "n2": args.n2,
                  "redis_server": redis_server, "redis_config": args.redis_config,
                  "method": "callgrind totals, (N2 - N1) difference"},
        "runs": rows,
        "lost": sum(r["lost"] for r in rows),
    })
    return 1 if any(r["lost"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
