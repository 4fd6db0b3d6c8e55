"""A fleet for the tests and bench/fleet_limits.py: the carrier simulator in its own process
with its counters over HTTP, and `gateway run` configs that share one Redis and one account.

Everything here starts real processes on 127.0.0.1 with free ports; the caller stops them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.store.embedded import free_port
from tests.integration.daemon import Daemon, write_config

REPO = Path(__file__).resolve().parents[2]
SYSTEM_ID = "gw"
# Debian's faketime package: a process whose clock is off (`skewed_env`); tests skip without it.
LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), Path("/nonexistent/libfaketime.so.1"))
needs_libfaketime = pytest.mark.skipif(not LIBFAKETIME.exists(),
                                       reason="libfaketime not installed (Debian package faketime)")
PASSWORD = "pw"
TEMPLATE_TYPE = "fleet_check"


@dataclass
class SimulatorProcess:
    """bench/run_simulator.py: the SMSC, and GET / on its stats port for its report()."""

    process: subprocess.Popen[bytes]
    smpp_port: int
    stats_port: int

    def stats(self) -> dict[str, Any]:
        return self._get("/")  # type: ignore[no-any-return]

    def copies(self) -> dict[tuple[str, str], int]:
        """How often each (destination, text) arrived whole (texts recorded only)."""
        return {(destination, text): copies for destination, text, copies, _ in self._get("/messages")}

    def windows(self, system_id: str) -> list[tuple[int, int]]:
        """(Unix second, submits) of the system_id's kept 1 s windows, oldest first."""
        return [(second, count) for second, count in self._get("/windows").get(system_id, [])]

    def _get(self, path: str) -> Any:
        # 30 s: /messages of 20,000 messages is a few MB, served by a simulator that may be
        # sharing two loaded cores with a fleet.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}{path}", timeout=30) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_simulator(workdir: Path, *extra: str, system_id: str = SYSTEM_ID, password: str = PASSWORD,
                    record_texts: bool = False, niceness: int | None = None,
                    timeout_seconds: float = 30.0) -> SimulatorProcess:
    """The simulator with one account (`system_id`, `password`: the gateways' carrier
    section must use the same, or they never bind); `extra` arguments come last, so they
    override the defaults here.  `record_texts`: keep every whole message (for
    `SimulatorProcess.copies`); `niceness`: its CPU priority, absolute (None: inherited)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports_file = workdir / "sim-ports.json"
    ports_file.unlink(missing_ok=True)
    log = (workdir / "simulator.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "run_simulator.py"), "--listen", "127.0.0.1:0",
         "--account", f"{system_id}:{password}", *([] if record_texts else ["--no-record-texts"]),
         "--receipt-delay", "0.2",
         "--stats-listen", "127.0.0.1:0", "--ports-file", str(ports_file), "--report-interval", "3600", *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=None if niceness is None else functools.partial(os.setpriority, os.PRIO_PROCESS, 0, niceness))
    log.close()
    deadline = time.monotonic() + timeout_seconds
    while not ports_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"simulator did not start: {(workdir / 'simulator.log').read_text()}")
        time.sleep(0.05)
    ports = json.loads(ports_file.read_text())
    return SimulatorProcess(process, ports["smpp_port"], ports["stats_port"])


@contextlib.contextmanager
def answering_after(directory: Path, latency_seconds: float) -> Iterator[SimulatorProcess]:
    """The simulator answering each submit_sm after `latency_seconds` and keeping every
    text: a test's submits are in flight when it acts, and copies are counted."""
    sim = start_simulator(directory, "--latency", str(latency_seconds), record_texts=True)
    try:
        yield sim
    finally:
        sim.stop()


def enqueue(client: Any, count: int, tag: str) -> None:
    """`count` notifications (`notification_fields`) into the single intake stream, in one
    pipeline of the synchronous client."""
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.xadd("12123:notify", notification_fields(i, tag=tag))
        pipe.execute()


def record_fields(client: Any, count: int, tag: str, name: str = "state") -> list[str | None]:
    """Field `name` of the records of notifications `tag`-0 .. `tag`-(count-1) (one
    partition), in order."""
    with client.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.hget(f"12123:notification:{{{tag}-{i}}}", name)
        return list(pipe.execute())


def write_templates(directory: Path) -> Path:
    """One ASCII one-part type without quiet hours: one notification, one submit_sm."""
    path = directory / "fleet-templates.yaml"
    path.write_text(yaml.safe_dump({"signature": "12123:", "types": {TEMPLATE_TYPE: {
        "text": "12123: fleet check {n}", "params": ["n"], "priority": "normal",
        "quiet_hours": False, "validity": "1d"}}}), encoding="utf-8")
    return path


def carrier_section(smpp_port: int, *, link_tps: float, account_tps: float, max_binds: int,
                    bind_lease_seconds: float = 15.0, window: int = 4, sessions: int = 1) -> dict[str, Any]:
    return {
        "name": "cmcc", "host": "127.0.0.1", "port": smpp_port, "system_id": SYSTEM_ID, "password": PASSWORD,
        "prefixes": ["138"], "tps_limit": link_tps, "account_tps": account_tps, "max_binds": max_binds,
        "bind_lease_seconds": bind_lease_seconds, "window": window, "sessions": sessions,
        "registered_delivery": 0, "reconnect_initial_seconds": 0.2, "reconnect_max_seconds": 1.0,
    }


def notification_fields(index: int, tag: str = "f") -> dict[str, str]:
    return {"id": f"{tag}-{index}", "type": TEMPLATE_TYPE, "to": f"138{index % 100_000_000:08d}",
            "params": json.dumps({"n": str(index)}), "channel": "sms"}


def fleet_daemon(directory: Path, redis_url: str, carrier: dict[str, Any], push: dict[str, Any],
                 **daemon_options: Any) -> Daemon:
    """A `gateway run` of the fleet: the shared Redis, one carrier, no SMPP listener and no
    FastAGI; logs to `<directory>.log`.  `daemon_options`: Daemon's (env, launcher...)."""
    config = write_config(directory, redis={"url": redis_url}, carriers=[carrier],
                          smpp_server={"enabled": False, "listen": f"127.0.0.1:{free_port()}"},
                          ivr={"fastagi": {"enabled": False}}, push=push)
    return Daemon(config, directory.with_suffix(".log"), **daemon_options)


def start_fleet(daemons: list[Daemon]) -> None:
    """Start them all, then wait for each one's /healthz."""
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_until("/healthz", timeout_seconds=60)


def skewed_env(seconds: int) -> dict[str, str]:
    """The environment of a process whose wall clock (time.time, the reactor's seconds) is
    `seconds` off, as on a host whose NTP is broken; monotonic time is left alone."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
