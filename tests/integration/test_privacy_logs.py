"""A daemon run that handles phone and ID numbers leaves none of them whole in its logs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gateway.domain.sample import SAMPLE_CALLER, SAMPLE_CALLER_UNICOM, SAMPLE_ID_NUMBERS
from gateway.store.embedded import free_port
from tests.integration.daemon import Daemon, write_config


def test_logs_never_hold_a_whole_phone_or_id_number(tmp_path: Path) -> None:
    """Notifications, a rejection, citizens' messages and a partner error all pass through the
    daemon; its JSON log then contains no sample phone or ID number in full."""
    smsc_port = free_port()
    carrier = {"name": "cmcc", "host": "127.0.0.1", "port": smsc_port, "system_id": "gw", "password": "pw",
               "prefixes": ["13", "14", "15", "16", "17", "18", "19"], "enquire_link_interval_seconds": 5}
    config = write_config(tmp_path, carriers=[carrier])
    simulator = subprocess.Popen(
        [sys.executable, "-m", "gateway", "smsc-sim", "--listen", f"127.0.0.1:{smsc_port}", "--account", "gw:pw",
         "--receipt-delay", "0.05", "--mo", f"{SAMPLE_CALLER}:CXYY", "--mo", f"{SAMPLE_CALLER_UNICOM}:查询记分",
         "--mo", f"{SAMPLE_CALLER}:QXYY 20991231001"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = Daemon(config, tmp_path / "gateway.log", extra_args=["--log-format", "json", "--log-level", "debug"])
    daemon.start()
    try:
        daemon.wait_until("/readyz", timeout_seconds=30)
        seeded = subprocess.run([sys.executable, "-m", "gateway", "seed", "-c", str(config), "--sample"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert seeded.returncode == 0, seeded.stderr
        code, body = daemon.post("/v1/notifications", [
            {"type": "verification_code", "to": SAMPLE_CALLER, "params": {"code": "123456", "minutes": "5"}},
            {"type": "verification_code", "to": "+86" + SAMPLE_CALLER_UNICOM, "params": {"code": "654321", "minutes": "5"}},
            {"type": "no_such_type", "to": SAMPLE_CALLER, "params": {}},
            {"type": "verification_code", "to": "02512345678901", "params": {"code": "1", "minutes": "5"}},
        ])
        assert code == 202, body
        time.sleep(3)  # let the MOs, replies and receipts go through
        status, _ = daemon.get("/metrics")
        assert status == 200
    finally:
        daemon.terminate()
        simulator.terminate()
        simulator.wait(10)
    log = daemon.log_text()
    assert "carrier cmcc bound" in log  # the run did real work
    for whole in (SAMPLE_CALLER, SAMPLE_CALLER_UNICOM, "02512345678901", *SAMPLE_ID_NUMBERS.values()):
        assert whole not in log, f"{whole[:3]}… appears whole in the log"
