"""bench/push_throughput.py --quick: the whole push benchmark (redis-server, the simulator
and `gateway run` in their own processes, XADD load) on 2,000 notifications.  No timing
is asserted: the run must complete, lose nothing and report every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RUN_KEYS = {
    "scenario", "messages", "lost", "complete", "submit_sm", "parts_per_message", "messages_at_simulator",
    "duplicates_at_simulator", "receipts_acked", "throughput_per_second", "delivered_per_second",
    "gateway_cpu_seconds", "gateway_cpu_seconds_per_1000", "gateway_peak_rss_mb", "redis_cpu_seconds",
    "simulator_cpu_seconds", "xadd_to_claim_ms", "xadd_to_submitted_ms", "xadd_to_delivered_ms",
    "kannel_messages_per_second", "vs_kannel",
}


def test_push_throughput_quick() -> None:
    """The quick run sends 2,000 two-part Chinese notifications through `gateway run`:
    every one delivered (lost 0, 4,000 submit_sm, one receipt per message as Kannel asks
    for them, no duplicate at the SMSC),
    every figure reported, the table before the JSON line."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "push_throughput.py"), "--quick"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert "msg/s" in lines[0]
    assert report["benchmark"] == "push_throughput"
    assert {"date", "machine", "setup", "runs", "latency", "queued", "two_processes", "kannel", "targets",
            "lost"} <= report.keys()
    assert report["lost"] == 0
    [run] = report["runs"]
    assert RUN_KEYS <= run.keys()
    assert run["scenario"] == "chinese"
    assert run["lost"] == 0 and run["complete"]
    assert run["messages"] == run["messages_at_simulator"] == 2000
    assert run["submit_sm"] == 4000 and run["receipts_acked"] == 2000  # receipt_parts "first"
    assert report["setup"]["receipt_parts"] == "first"
    assert run["duplicates_at_simulator"] == 0
    assert run["throughput_per_second"] > 0
    assert run["gateway_cpu_seconds"] > 0
    for figure in ("xadd_to_claim_ms", "xadd_to_submitted_ms", "xadd_to_delivered_ms"):
        assert run[figure]["samples"] == 2000
        assert 0 <= run[figure]["p50"] <= run[figure]["p99"]
    assert run["xadd_to_claim_ms"]["p99"] <= run["xadd_to_submitted_ms"]["p99"] <= run["xadd_to_delivered_ms"]["p99"]
