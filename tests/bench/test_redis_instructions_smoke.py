"""bench/redis_instructions.py --quick: the push benchmark twice per variant (100 and 300
notifications) with redis-server under Valgrind's callgrind.  The figures are counts, not
times, so this asserts what must hold between two variants whatever the machine does:
with ``push.events: off`` Redis executes fewer instructions per notification than with
``all`` (no event XADDs), and nothing is lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None,
                    reason="valgrind not installed (Debian package valgrind; .ci/run installs it as root)")
def test_instructions_per_notification_rank_events_all_above_off() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "redis_instructions.py"), "--quick"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "instructions per notification" in lines[0]
    report = json.loads(lines[-1])
    assert report["benchmark"] == "redis_instructions" and report["lost"] == 0
    runs = {run["variant"]: run for run in report["runs"]}
    assert runs.keys() == {"work:all", "work:off"}
    for run in runs.values():
        small, large = run["instructions_total"]
        assert 0 < small < large  # 200 more notifications cost the server more
        # Far above anything a notification could cost without its scripts running (an idle
        # server's difference), far below a runaway: the figure is per notification.
        assert 100_000 < run["instructions_per_notification"] < 5_000_000, run
    # The four events of `all` are XADDs with their AOF records: at least a tenth more.
    assert runs["work:off"]["instructions_per_notification"] < 0.9 * runs["work:all"]["instructions_per_notification"]
    assert runs["work:all"]["vs_first"] == 1.0


def test_a_bad_variant_is_refused_with_the_reason() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "redis_instructions.py"), "--variant", "work:some"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "push.events is all, final or off, not 'some'" in result.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None,
                    reason="valgrind not installed (Debian package valgrind; .ci/run installs it as root)")
def test_the_gateway_process_is_counted_per_notification() -> None:
    """--process gateway: the `gateway run` process under callgrind, redis-server native.
    Python runs the whole pipeline, so a notification costs the gateway more instructions
    than it costs Redis (about 1.2 million against 0.7 on 2026-12-04)."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "redis_instructions.py"), "--quick",
                             "--process", "gateway", "--variant", "work:all"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["setup"]["process"] == "gateway" and report["lost"] == 0
    [run] = report["runs"]
    small, large = run["instructions_total"]
    assert 0 < small < large
    assert 300_000 < run["instructions_per_notification"] < 10_000_000, run


def test_a_breakdown_of_the_gateway_is_refused_with_the_reason() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "redis_instructions.py"), "--process", "gateway",
                             "--breakdown"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "py-spy" in result.stderr
