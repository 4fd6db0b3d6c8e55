"""bench/cluster.py --quick on its single-Redis row with --slowlog: one `gateway run`, the
carrier simulator in its own process and one redis-server, 300 notifications.  No timing
is asserted: the run must lose nothing and name the scripts whose time it reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_cluster_bench_names_the_scripts_it_times() -> None:
    """Every notification reaches the carrier once, the account's limits hold, and SLOWLOG's
    script calls are reported under the names of their .lua files (the SHA1 the loader
    sends): the submit outcomes and receipts, the claim and the acceptance all ran; and the
    server's event-loop counters were read."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "cluster.py"), "--quick", "--rows", "single",
                             "--slowlog"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["benchmark"] == "cluster"
    [row] = report["runs"]
    assert row["row"] == "single" and row["messages"] == 300
    assert row["lost"] == 0 and row["duplicated"] == 0
    assert row["peak_binds_per_account"] <= row["max_binds"]
    answers = row["receipt_answer_ms"]  # the carrier's wait for each receipt's deliver_sm_resp
    assert answers["count"] > 0 and 0 < answers["p50_ms"] <= answers["p99_ms"] <= answers["max_ms"], answers
    scripts = row["masters_scripts_by_slowlog"]
    assert {"outcomes.lua", "claim.lua", "accept.lua"} <= scripts.keys(), scripts
    for name, figures in scripts.items():
        assert name.endswith(".lua"), f"a script call not matched to its file: {name}"
        assert figures["calls"] > 0 and figures["usec_per_call"] > 0
    assert any("scripts by SLOWLOG" in line and "outcomes.lua" in line for line in lines)
    # The event loops' counters come from the server's own process (its pid in INFO): it
    # read every request and wrote the AOF, so none of them can be zero.
    loops = row["masters_loop_per_message"]
    for counter in ("wakeups", "read_syscalls", "write_syscalls", "client_reads", "client_writes"):
        assert loops[counter] > 0, loops
    assert loops["write_syscalls"] > loops["client_writes"], "the AOF's writes are system calls too"


def test_cluster_bench_row_on_the_cluster_waits_for_ownership_and_loses_nothing() -> None:
    """The c1 row: one gateway on the 3-master Cluster.  The row starts sending once the
    process owns every partition (its owner names carry a run id, gateway0-3fa9c2: the
    bench matched them as bare consumer names and never saw ownership settle)."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "cluster.py"), "--quick", "--rows", "c1"],
                            cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    assert row["row"] == "c1" and row["lost"] == 0 and row["duplicated"] == 0, row
    assert row["ownership_settle_seconds"] >= 0, row


def test_cluster_idle_bench_measures_the_servers_and_an_idle_gateway() -> None:
    """bench/cluster_idle.py on one redis-server alone and with one idle gateway: the
    server alone runs no command but its timer still wakes it; the gateway's background
    loops add commands, wake-ups and CPU."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_idle.py"), "--rows", "single0,single",
                             "--seconds", "2", "--warmup-seconds", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "cluster_idle"
    alone, idle = report["runs"]
    assert (alone["row"], alone["gateways"], idle["row"], idle["gateways"]) == ("single0", 0, "single", 1)
    assert alone["commands_per_second"] < 1, alone["by_command_per_second"]
    assert alone["masters_loop_per_second"]["wakeups"] > 0  # serverCron, 10 per second by default
    assert idle["commands_per_second"] > 10, idle["by_command_per_second"]
    assert idle["masters_loop_per_second"]["wakeups"] > alone["masters_loop_per_second"]["wakeups"]
    assert idle["masters_loop_per_second"]["client_reads"] > alone["masters_loop_per_second"]["client_reads"]


@pytest.mark.slow
def test_cluster_soak_runs_a_round_of_faults_and_counts_everything() -> None:
    """bench/cluster_soak.py with one round on a real Cluster: a gateway SIGKILLed and
    started again, a slot migrated, a master SIGKILLed and rejoined as a replica; every
    notification counted and the invariants checked (its exit status says so)."""
    result = subprocess.run([sys.executable, str(REPO / "bench" / "cluster_soak.py"), "--n", "1500", "--rounds", "1",
                             "--account-tps", "600"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["benchmark"] == "cluster_soak" and report["ok"], report["broken"]
    faults = [f["fault"] for f in report["faults"]]
    assert "gateway0 SIGKILLed" in faults and "gateway0 started again" in faults, faults
    assert any(f.endswith("migrated") for f in faults) and any("master of partition" in f for f in faults), faults
    assert report["lost_otherwise"] == 0 and report["unexplained_duplicates"] == 0
    assert sum(report["states"].values()) == 1500
