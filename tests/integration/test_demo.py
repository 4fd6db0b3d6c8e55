"""`gateway demo` end to end as a subprocess (what `make demo` runs), on free ports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.store.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def demo_config(directory: Path) -> Path:
    """The committed config with every port moved to a free one."""
    config = yaml.safe_load((REPO / "config" / "gateway.yaml").read_text(encoding="utf-8"))
    config["http"]["listen"] = f"127.0.0.1:{free_port()}"
    config["smpp_server"]["listen"] = f"127.0.0.1:{free_port()}"
    config["ivr"]["fastagi"]["listen"] = f"127.0.0.1:{free_port()}"
    for carrier in config["carriers"]:
        carrier["port"] = free_port()
    config["push"]["templates_file"] = str(REPO / "config" / "templates.yaml")
    config["ivr"]["menus_file"] = str(REPO / "config" / "ivr.yaml")
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_demo_runs_every_part_and_exits_0(tmp_path: Path) -> None:
    """The demo delivers every notification type (or holds it for quiet hours), fails over
    from the downed carrier, cancels one booking by SMS and one by voice, and exits 0."""
    result = subprocess.run([sys.executable, "-m", "gateway", "demo", "-c", str(demo_config(tmp_path))],
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "notifications: 22" in out
    # New notice types with their rendered Chinese texts; a late confirmation flagged.
    assert "预约未成功：考试名额已满" in out and "【公安户政】" in out and "[late: sent at once" in out
    assert not re.search(r"\d{4}-\d{2}-\d{2}", out.split("some of the texts", 1)[1].split("2. a citizen", 1)[0])
    # Held notifications say until when (local time), never a bare "scheduled".
    assert " scheduled" not in out
    if "held for quiet hours 0" not in out:
        assert re.search(r"held until 08:00 \d{4}-\d{2}-\d{2} Asia/Shanghai", out)
    assert "SMS cancellation of" in out and "NOT DONE" not in out
    assert "failover:" in out and "failover: 0 " not in out
    assert "13800138000" not in out and "18612345678" not in out  # masked in the demo's output too
