"""bench/ivr_calls.py --quick: the whole benchmark (redis-server, `gateway run` in its own
process, concurrent Asterisk-faithful calls) in a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

LEVEL_KEYS = {
    "concurrency", "calls", "seconds", "calls_per_second", "digit_samples", "digit_to_command_ms",
    "digit_to_command_ms_by_entry",
    "connect_ms", "connects_over_asterisk_timeout", "server_step_p99_le_ms", "server_cpu_seconds", "redis_cpu_seconds",
    "client_cpu_seconds", "server_peak_rss_mb", "load_average_before", "errors", "error_kinds",
}


def run_bench(script: str, *args: str, timeout_seconds: float = 120) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run a benchmark script; its result is the last stdout line, a JSON object."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout_seconds)
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr}"
    return result, json.loads(lines[-1])


def test_ivr_calls_quick() -> None:
    """The quick IVR run completes every call without an error, three timed digits per
    call, and reports every figure of each level (table first, JSON line last)."""
    result, report = run_bench("ivr_calls.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert report["benchmark"] == "ivr_calls"
    assert {"date", "machine", "setup", "levels"} <= report.keys()
    assert report["machine"]["cores"] >= 1
    assert [(level["concurrency"], level["calls"]) for level in report["levels"]] == [(10, 40), (50, 100)]
    for level in report["levels"]:
        assert LEVEL_KEYS <= level.keys()
        assert level["errors"] == 0, level["error_kinds"]
        assert level["digit_samples"] == 3 * level["calls"]
        assert {"p50", "p90", "p99", "max"} <= level["digit_to_command_ms"].keys()
        assert level["digit_to_command_ms_by_entry"].keys() == {"after_1", "after_booking_number", "after_hash"}
        assert level["digit_to_command_ms"]["p99"] > 0
        assert level["server_cpu_seconds"] > 0
    assert "p99 digit->cmd ms" in result.stdout.splitlines()[0]
