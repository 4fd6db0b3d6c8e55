"""SIGHUP reloads templates and voice menus without dropping a call or a bind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.store.embedded import free_port
from tests.integration.daemon import REPO, Daemon, write_config

NEW_TYPE = """
  reload_probe:
    text: "【交管12123】重新加载测试{n}"
    params: [n]
    priority: high
    quiet_hours: false
    validity: 1h
"""


def agi_call_start(port: int) -> tuple[socket.socket, str]:
    """Open a FastAGI call as Asterisk does and read the first command."""
    call = socket.create_connection(("127.0.0.1", port), timeout=10)
    env = {"agi_network": "yes", "agi_network_script": "12123", "agi_request": "agi://127.0.0.1/12123",
           "agi_channel": "PJSIP/carrier-00000001", "agi_uniqueid": "1764460800.9", "agi_callerid": "13800138000",
           "agi_language": "zh", "agi_type": "PJSIP", "agi_version": "20.5.0"}
    call.sendall(b"".join(f"{k}: {v}\n".encode() for k, v in env.items()) + b"\n")
    return call, read_line(call)


def read_line(call: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = call.recv(1)
        if not chunk:
            raise ConnectionError("the server closed the call")
        data += chunk
    return data.decode().strip()


def enqueue_probe(daemon: Daemon, n: int) -> dict:
    code, body = daemon.post("/v1/notifications", {"type": "reload_probe", "to": "13800138000", "params": {"n": str(n)}})
    assert code == (202 if body.get("accepted") else 422), body  # 422: wholly rejected
    return body


def test_sighup_reloads_templates_and_menus_keeping_calls_and_binds(tmp_path: Path) -> None:
    """After SIGHUP a new template type is accepted, a call in progress carries on, the
    carrier stays bound; a broken templates file on the next SIGHUP keeps the old set."""
    templates = tmp_path / "templates.yaml"
    shutil.copy(REPO / "config" / "templates.yaml", templates)
    smsc_port = free_port()
    carrier = {"name": "cmcc", "host": "127.0.0.1", "port": smsc_port, "system_id": "gw", "password": "pw",
               "prefixes": ["13"]}
    config = write_config(tmp_path, carriers=[carrier], push={"templates_file": str(templates)})
    simulator = subprocess.Popen([sys.executable, "-m", "gateway", "smsc-sim", "--listen", f"127.0.0.1:{smsc_port}",
                                  "--account", "gw:pw"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = Daemon(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        daemon.wait_until("/readyz", timeout_seconds=30)
        before = enqueue_probe(daemon, 1)
        assert "unknown type" in str(before)  # not a type yet
        agi_port = int(yaml.safe_load(config.read_text())["ivr"]["fastagi"]["listen"].rsplit(":", 1)[1])
        call, first_command = agi_call_start(agi_port)

        templates.write_text(templates.read_text(encoding="utf-8") + NEW_TYPE, encoding="utf-8")
        assert daemon.process is not None
        os.kill(daemon.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "templates and menus reloaded" not in daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "templates and menus reloaded" in daemon.log_text()
        assert "unknown type" not in str(enqueue_probe(daemon, 2))

        call.sendall(b"200 result=0\n")  # the call started before SIGHUP goes on
        assert read_line(call), f"no command after {first_command!r}"
        call.close()

        templates.write_text("types: [broken\n", encoding="utf-8")
        os.kill(daemon.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not reloaded" not in daemon.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "configuration not reloaded, keeping the old one" in daemon.log_text()
        assert "unknown type" not in str(enqueue_probe(daemon, 3))  # the old (reloaded) set is kept
        assert daemon.log_text().count("carrier cmcc bound") == 1  # never re-bound: the bind stayed up
        assert daemon.get("/readyz")[0] == 200
    finally:
        daemon.terminate()
        simulator.terminate()
        simulator.wait(10)
