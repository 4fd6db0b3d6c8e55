"""A small fleet for the operations tests: one real redis-server, the carrier simulator
(`gateway smsc-sim`) as a subprocess, and `gateway run` processes sharing that Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.store.embedded import free_port
from tests.integration.daemon import Daemon, _send, write_config

TOKEN = "test-token"
PREFIXES = ["13", "14", "15", "16", "17", "18", "19"]


class Simulator:
    """The carrier SMSC simulator on a fixed port, which can be stopped and started again."""

    def __init__(self, port: int, *extra: str) -> None:
        self.port = port
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "smsc-sim", "--listen", f"127.0.0.1:{self.port}", "--account", "gw:pw",
             "--receipt-delay", "0.05", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class Fleet:
    redis_url: str
    simulator: Simulator
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def first(self) -> Daemon:
        return self.daemons[0]

    def call(self, method: str, path: str, payload: Any = None, *, token: str | None = TOKEN,
             daemon: Daemon | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        target = daemon or self.first
        data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        request = urllib.request.Request(target.http_base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        return _send(request, token, timeout_seconds=15)

    def cli(self, *args: str, input_text: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args[:1], "-c", str(self.first.config_path),
                               *args[1:]], capture_output=True, text=True, timeout=60, input=input_text,
                              cwd=self.first.config_path.parent, env={**os.environ, **(env or {})})


def wait_for(condition: Callable[[], Any], what: str, timeout_seconds: float = 30.0) -> Any:
    """Poll `condition` until it returns something true; its value."""
    deadline = time.monotonic() + timeout_seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_seconds} s (last: {last!r})")


def carrier_view(fleet: Fleet, name: str = "cmcc", daemon: Daemon | None = None) -> dict[str, Any]:
    code, body = fleet.call("GET", "/v1/carriers", daemon=daemon)
    assert code == 200, body
    return body["carriers"][name]


@contextmanager
def running_fleet(tmp_path: Path, redis_url: str, processes: int = 2, extra_carriers: tuple[dict[str, Any], ...] = (),
                  started_path: str = "/readyz", **config: Any) -> Iterator[Fleet]:
    """`processes` gateway processes on one Redis and one simulated carrier ``cmcc``."""
    port = free_port()
    simulator = Simulator(port)
    simulator.start()
    fleet = Fleet(redis_url, simulator)
    carrier = {"name": "cmcc", "host": "127.0.0.1", "port": port, "system_id": "gw", "password": "pw",
               "prefixes": PREFIXES, "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1,
               "enquire_link_interval_seconds": 5, "tps_limit": 200}
    try:
        for index in range(processes):
            directory = tmp_path / f"gw{index}"
            path = write_config(directory, redis={"url": redis_url}, carriers=[carrier, *extra_carriers],
                                push={"templates_file": str(Path(__file__).resolve().parents[2] / "config" / "templates.yaml"),
                                      "quiet_hours": {"start": "00:00", "end": "00:00"}},
                                **config)
            daemon = Daemon(path, directory / "gateway.log")
            daemon.start()
            fleet.daemons.append(daemon)
        for daemon in fleet.daemons:
            daemon.wait_until(started_path, timeout_seconds=40)
        wait_for(lambda: len(fleet.call("GET", "/v1/carriers")[1].get("processes", [])) == processes,
                 "every process reports its status")
        yield fleet
    finally:
        for daemon in fleet.daemons:
            daemon.stop()
        simulator.stop()
