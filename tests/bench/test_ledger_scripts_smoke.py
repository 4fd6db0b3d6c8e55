"""bench/ledger_scripts.py --plain and --instructions, small: the four hot-path scripts on
a real redis-server, then the same commands (listed by MONITOR) replayed without Lua on a
fresh one, plain and atomic (WATCH, MULTI/EXEC).  Asserts what holds on any machine: the
replay is the record's own commands (the last notification ends delivered there too, else
the benchmark fails), the counts of commands per notification are the scripts' (three or
four each), the MONITOR lines are read back byte for byte, and counted in instructions
the three rank plain < atomic < scripts, with the steps below the scripts."""

from __future__ import annotations

import shutil

import pytest

from tests.bench.bench_modules import bench_module, run_bench


def test_monitor_line_arguments_are_unquoted_byte_for_byte() -> None:
    bench = bench_module("ledger_scripts")
    # As redis-server 7.0 prints them: UTF-8 and control bytes as \xHH, quotes and
    # backslashes escaped, a script's own call with "lua" as its client.
    line = (b'+1733356800.123456 [0 lua] "HSET" "12123:n:a b" "text" "\\xe4\\xbd\\xa0\\\\\\"q\\"" '
            b'"nl" "x\\ny\\r\\t\\a\\b" "empty" ""')
    assert bench._monitor_args(line) == [b"HSET", b"12123:n:a b", b"text", "你".encode() + b'\\"q"',
                                         b"nl", b"x\ny\r\t\a\b", b"empty", b""]
    assert bench._monitor_args(b'+1.0 [0 127.0.0.1:40000] "PING"') == [b"PING"]


def test_plain_replay_of_the_scripts_commands() -> None:
    lines, report = run_bench("ledger_scripts", "-n", "400", "--batch", "100", "--repeat", "1", "--plain",
                              timeout_seconds=300)
    assert "plain us/msg" in lines[0] and "plain/Lua" in lines[0] and "atomic/Lua" in lines[0]
    phases = report["phases"]
    # Per notification: accept HSET EXPIRE XADD; claim HMGET HSET XADD; submitted HMGET
    # HSET SET XADD; receipt HMGET HSET XADD; plus a few per batch (lanes, sequence, index).
    expected = {"accept": 3, "claim": 3, "submitted": 4, "receipt": 3}
    for name, per_notification in expected.items():
        assert per_notification <= phases[name]["plain_commands"] < per_notification + 0.2, (name, phases[name])
        assert phases[name]["plain_us"] > 0 and phases[name]["atomic_us"] > 0 and phases[name]["redis_us"] > 0
    assert report["total_plain_us"] == round(sum(p["plain_us"] for p in phases.values()), 1)
    assert report["total_atomic_us"] == round(sum(p["atomic_us"] for p in phases.values()), 1)


@pytest.mark.skipif(shutil.which("valgrind") is None,
                    reason="valgrind not installed (Debian package valgrind; .ci/run installs it as root)")
def test_instructions_rank_plain_below_atomic_below_the_scripts() -> None:
    """Counted, not timed, so the order holds on any machine: the same commands cost
    Redis fewer instructions without Lua around them, and WATCH, MULTI and EXEC add some
    back."""
    lines, report = run_bench("ledger_scripts", "--instructions", "--instructions-sizes", "100", "300", "--batch", "50")
    assert "instructions per notification" in lines[0]
    per = report["instructions_per_notification"]
    assert per.keys() == {"scripts", "steps", "fenced", "plain", "atomic"}
    for variant, (small, large) in report["instructions_total"].items():
        assert 0 < small < large, variant  # 200 more notifications cost the server more
    # Per notification: far above an idle server's difference, far below a runaway.
    assert all(100_000 < v < 5_000_000 for v in per.values()), per
    assert per["plain"] < per["atomic"] < per["scripts"], per
    # the scripts' logic in the gateway (gateway/push/steps/) spares Redis the interpreter
    assert per["steps"] < per["scripts"] and per["fenced"] < per["scripts"], per
    assert report["vs_scripts"]["scripts"] == 1.0


def test_the_steps_take_notifications_to_delivered() -> None:
    """--engine steps: the four phases run as steps (the bench fails unless the last
    notification ends delivered), and their figures are reported as the scripts' are."""
    _, report = run_bench("ledger_scripts", "-n", "400", "--batch", "100", "--repeat", "1", "--engine", "steps",
                          timeout_seconds=300)
    phases = report["phases"]
    assert all(phases[name]["redis_us"] > 0 for name in ("accept", "claim", "submitted", "receipt")), phases
    assert "evalsha" not in phases["claim"]["commands"] and phases["claim"]["commands"]["exec"]["calls"] > 0
